//! The service graph: who calls whom, how often, how well, computed from
//! what the proxies counted over a window — as a pure function of the
//! counter increases, so the embedded aggregator (differences between two
//! scrapes of each proxy) and a Prometheus (`increase(…[window])`) feed it
//! alike.
//!
//! An edge is (caller, callee service). A call is seen by several
//! proxies; each edge takes the best-placed reporter that saw it —
//! `waypoint`, then `destination`, then `source` — and request-level
//! (`istio_requests_total`) data wins over connection-level
//! (`istio_tcp_connections_opened_total`), so nothing is counted twice.
//! A call refused by policy (response flags `DENY`, `RBAC`, `UAEX`) is
//! counted as denied.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::promtext::Sample;

/// Requests, by their labels.
pub const REQUESTS: &str = crate::names::REQUESTS_TOTAL;
/// Request latency histogram buckets.
pub const DURATION_BUCKETS: &str = crate::names::REQUEST_DURATION_BUCKET;
/// TCP connections opened.
pub const TCP_OPENED: &str = crate::names::TCP_OPENED_TOTAL;

/// Whether a family feeds the graph (the aggregator keeps only these).
pub fn wanted(name: &str) -> bool {
    matches!(name, REQUESTS | DURATION_BUCKETS | TCP_OPENED)
}

/// One caller → service edge: per caller, callee and the clusters each
/// is in (a call from another cluster is its own edge).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    /// The caller: its canonical service (else workload), `unknown` for
    /// callers without an identity.
    pub source: String,
    /// The caller's namespace.
    pub source_namespace: String,
    /// The caller's cluster (`unknown` when not known).
    pub source_cluster: String,
    /// The callee: the service hostname.
    pub destination: String,
    /// The cluster of the endpoints that answered (`unknown` when not
    /// known).
    pub destination_cluster: String,
    /// `http`, `grpc` or `tcp` (connections, not requests).
    pub protocol: String,
    /// Requests (or connections) in the window.
    pub requests: f64,
    /// Per second.
    pub rate: f64,
    /// Server errors (5xx) or failed connections.
    pub errors: f64,
    /// `errors / requests`.
    pub error_ratio: f64,
    /// Calls that went through.
    pub allowed: f64,
    /// Calls refused by policy.
    pub denied: f64,
    /// Whether every call was mutual TLS.
    pub mtls: bool,
    /// Median latency (ms), request-level edges with requests only.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency (ms).
    pub p99_ms: Option<f64>,
    /// Which reporter's view this is.
    pub reporter: String,
}

fn reporter_rank(r: &str) -> u8 {
    match r {
        "waypoint" => 3,
        "destination" => 2,
        "source" => 1,
        _ => 0,
    }
}

fn caller(s: &Sample) -> (String, String) {
    let name = [
        s.label("source_canonical_service"),
        s.label("source_workload"),
    ]
    .into_iter()
    .find(|v| !v.is_empty() && *v != "unknown")
    .unwrap_or("unknown");
    let ns = match s.label("source_workload_namespace") {
        "" => "unknown",
        ns => ns,
    };
    (name.to_owned(), ns.to_owned())
}

fn denied_flag(flags: &str) -> bool {
    flags
        .split(',')
        .any(|f| matches!(f, "DENY" | "RBAC" | "UAEX"))
}

/// Caller, its namespace, its cluster, callee, callee's cluster.
type Key = (String, String, String, String, String);

fn label_or_unknown(s: &Sample, name: &str) -> String {
    match s.label(name) {
        "" => "unknown".to_owned(),
        v => v.to_owned(),
    }
}

#[derive(Default)]
struct Acc {
    protocol: String,
    requests: f64,
    errors: f64,
    denied: f64,
    plaintext: f64,
    buckets: BTreeMap<u64, f64>,
    rank: u8,
    reporter: String,
}

/// The edges for counter increases `deltas` over `seconds`, sorted by
/// caller then callee. Edges with nothing in the window are left out.
pub fn edges(deltas: &[Sample], seconds: f64) -> Vec<Edge> {
    let seconds = seconds.max(f64::MIN_POSITIVE);
    let mut l7: BTreeMap<Key, Acc> = BTreeMap::new();
    let mut l4: BTreeMap<Key, Acc> = BTreeMap::new();
    for s in deltas {
        let table = match s.name.as_str() {
            REQUESTS | DURATION_BUCKETS => &mut l7,
            TCP_OPENED => &mut l4,
            _ => continue,
        };
        let (source, source_namespace) = caller(s);
        let key = (
            source,
            source_namespace,
            label_or_unknown(s, "source_cluster"),
            label_or_unknown(s, "destination_service"),
            label_or_unknown(s, "destination_cluster"),
        );
        let rank = reporter_rank(s.label("reporter"));
        let acc = table.entry(key).or_default();
        // A better-placed reporter replaces what a worse one counted.
        if rank > acc.rank {
            *acc = Acc {
                rank,
                reporter: s.label("reporter").to_owned(),
                ..Acc::default()
            };
        } else if rank < acc.rank {
            continue;
        }
        if s.name == DURATION_BUCKETS {
            let le = match s.label("le") {
                "+Inf" => u64::MAX,
                le => le.parse::<f64>().map_or(u64::MAX, |v| (v * 1000.0) as u64),
            };
            *acc.buckets.entry(le).or_default() += s.value;
            continue;
        }
        acc.requests += s.value;
        let flags = s.label("response_flags");
        if denied_flag(flags) {
            acc.denied += s.value;
        } else if s.name == REQUESTS {
            if s.label("response_code").starts_with('5') {
                acc.errors += s.value;
            }
        } else if flags != "-" && !flags.is_empty() {
            acc.errors += s.value;
        }
        if s.label("connection_security_policy") != "mutual_tls" {
            acc.plaintext += s.value;
        }
        acc.protocol = match s.name.as_str() {
            REQUESTS => s.label("request_protocol").to_owned(),
            _ => "tcp".to_owned(),
        };
    }
    for (key, acc) in l4 {
        l7.entry(key).or_insert(acc);
    }
    l7.into_iter()
        .filter(|(_, a)| a.requests > 0.0)
        .map(
            |((source, source_namespace, source_cluster, destination, destination_cluster), a)| {
                let quantile = |q| quantile(&a.buckets, q);
                Edge {
                    source,
                    source_namespace,
                    source_cluster,
                    destination,
                    destination_cluster,
                    protocol: if a.protocol.is_empty() {
                        "http".into()
                    } else {
                        a.protocol
                    },
                    rate: a.requests / seconds,
                    error_ratio: a.errors / a.requests,
                    allowed: a.requests - a.denied,
                    mtls: a.plaintext == 0.0,
                    p50_ms: quantile(0.5),
                    p99_ms: quantile(0.99),
                    requests: a.requests,
                    errors: a.errors,
                    denied: a.denied,
                    reporter: a.reporter,
                }
            },
        )
        .collect()
}

/// The `q` quantile of cumulative histogram buckets (upper bound in µs →
/// count), interpolated linearly inside the bucket, as Prometheus'
/// `histogram_quantile` does.
pub fn quantile(buckets: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let total = *buckets.get(&u64::MAX).or_else(|| buckets.values().last())?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for (&le, &count) in buckets {
        if count >= rank {
            if le == u64::MAX {
                return Some(lower_bound);
            }
            let upper = le as f64 / 1000.0;
            let inside = count - lower_count;
            let fraction = if inside > 0.0 {
                (rank - lower_count) / inside
            } else {
                1.0
            };
            return Some(lower_bound + (upper - lower_bound) * fraction);
        }
        lower_bound = le as f64 / 1000.0;
        lower_count = count;
    }
    Some(lower_bound)
}

/// Counter increases between two scrapes of one proxy: `newer − older`
/// per series (a series whose value went down was reset: its newer value
/// is the increase). Only the families the graph uses.
pub fn increases(older: &[Sample], newer: &[Sample]) -> Vec<Sample> {
    increases_of(older, newer, wanted)
}

/// As [`increases`], for the families `keep` names.
pub fn increases_of(
    older: &[Sample],
    newer: &[Sample],
    keep: impl Fn(&str) -> bool,
) -> Vec<Sample> {
    let before: BTreeMap<(&str, &BTreeMap<String, String>), f64> = older
        .iter()
        .filter(|s| keep(&s.name))
        .map(|s| ((s.name.as_str(), &s.labels), s.value))
        .collect();
    newer
        .iter()
        .filter(|s| keep(&s.name))
        .filter_map(|s| {
            let old = before
                .get(&(s.name.as_str(), &s.labels))
                .copied()
                .unwrap_or(0.0);
            let delta = if s.value >= old {
                s.value - old
            } else {
                s.value
            };
            (delta > 0.0).then(|| Sample {
                value: delta,
                ..s.clone()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }

    fn req(reporter: &str, from: &str, to: &str, code: &str, flags: &str, n: f64) -> Sample {
        s(
            REQUESTS,
            &[
                ("reporter", reporter),
                ("source_canonical_service", from),
                ("source_workload_namespace", "shop"),
                ("destination_service", to),
                ("response_code", code),
                ("response_flags", flags),
                ("request_protocol", "http"),
                ("connection_security_policy", "mutual_tls"),
            ],
            n,
        )
    }

    fn tcp(reporter: &str, from: &str, to: &str, flags: &str, mtls: &str, n: f64) -> Sample {
        s(
            TCP_OPENED,
            &[
                ("reporter", reporter),
                ("source_workload", from),
                ("source_workload_namespace", "shop"),
                ("destination_service", to),
                ("response_flags", flags),
                ("connection_security_policy", mtls),
            ],
            n,
        )
    }

    #[test]
    fn edges_take_the_best_view_and_count_denials() {
        let deltas = vec![
            // frontend → reviews: the waypoint's view wins over the nodes'.
            req("waypoint", "frontend", "reviews", "200", "-", 90.0),
            req("waypoint", "frontend", "reviews", "503", "-", 10.0),
            tcp("source", "frontend", "reviews", "-", "mutual_tls", 100.0),
            // orders → payments at L4: destination's view; one denied caller.
            tcp("destination", "orders", "payments", "-", "mutual_tls", 30.0),
            tcp("source", "orders", "payments", "-", "mutual_tls", 31.0),
            tcp(
                "destination",
                "intruder",
                "payments",
                "DENY",
                "mutual_tls",
                5.0,
            ),
            // A plaintext caller.
            tcp("destination", "legacy", "payments", "-", "none", 2.0),
            // Waypoint denials.
            req("waypoint", "bot", "reviews", "403", "RBAC", 4.0),
        ];
        let edges = edges(&deltas, 10.0);
        let find = |from: &str, to: &str| {
            edges
                .iter()
                .find(|e| e.source == from && e.destination == to)
                .unwrap_or_else(|| panic!("{from} -> {to} in {edges:?}"))
        };
        let fr = find("frontend", "reviews");
        assert_eq!((fr.requests, fr.rate, fr.error_ratio), (100.0, 10.0, 0.1));
        assert_eq!(
            (fr.protocol.as_str(), fr.reporter.as_str()),
            ("http", "waypoint")
        );
        let op = find("orders", "payments");
        assert_eq!(
            (op.requests, op.protocol.as_str(), op.denied),
            (30.0, "tcp", 0.0)
        );
        let ip = find("intruder", "payments");
        assert_eq!((ip.denied, ip.allowed, ip.errors), (5.0, 0.0, 0.0));
        assert!(!find("legacy", "payments").mtls);
        assert!(op.mtls);
        assert_eq!(find("bot", "reviews").denied, 4.0);
        assert_eq!(edges.len(), 5);
    }

    #[test]
    fn calls_to_another_cluster_are_their_own_edge() {
        let across = |reporter: &str, to_cluster: &str, n: f64| {
            let mut t = tcp(reporter, "frontend", "reviews", "-", "mutual_tls", n);
            t.labels.insert("source_cluster".into(), "east".into());
            t.labels
                .insert("destination_cluster".into(), to_cluster.into());
            t
        };
        let deltas = vec![
            across("source", "east", 8.0),
            across("destination", "east", 8.0),
            // East's node saw 2 calls to west; west's node too.
            across("source", "west", 2.0),
            across("destination", "west", 2.0),
        ];
        let edges = edges(&deltas, 10.0);
        let found: Vec<(&str, &str, f64, &str)> = edges
            .iter()
            .map(|e| {
                (
                    e.source_cluster.as_str(),
                    e.destination_cluster.as_str(),
                    e.requests,
                    e.reporter.as_str(),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                ("east", "east", 8.0, "destination"),
                ("east", "west", 2.0, "destination")
            ]
        );
        // Without cluster labels: `unknown`, one edge.
        let plain = super::edges(&[tcp("source", "a", "b", "-", "mutual_tls", 1.0)], 1.0);
        assert_eq!(
            (
                plain[0].source_cluster.as_str(),
                plain[0].destination_cluster.as_str()
            ),
            ("unknown", "unknown")
        );
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let buckets: BTreeMap<u64, f64> = [
            (1_000, 50.0),
            (10_000, 90.0),
            (100_000, 100.0),
            (u64::MAX, 100.0),
        ]
        .into();
        let p50 = quantile(&buckets, 0.5).expect("p50");
        assert!((p50 - 1.0).abs() < 1e-9, "{p50}");
        let p99 = quantile(&buckets, 0.99).expect("p99");
        assert!((p99 - 91.0).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&BTreeMap::new(), 0.5), None);
    }

    #[test]
    fn increases_handle_resets_and_new_series() {
        let old = vec![
            req("waypoint", "a", "b", "200", "-", 10.0),
            req("waypoint", "a", "c", "200", "-", 50.0),
        ];
        let new = vec![
            req("waypoint", "a", "b", "200", "-", 15.0),
            req("waypoint", "a", "c", "200", "-", 3.0),
            req("waypoint", "x", "b", "200", "-", 2.0),
            s("process_cpu_seconds_total", &[], 9.0),
        ];
        let values: Vec<f64> = increases(&old, &new).iter().map(|s| s.value).collect();
        assert_eq!(values, [5.0, 3.0, 2.0]);
    }
}
