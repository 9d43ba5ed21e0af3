//! Who calls whom: the control plane's aggregation of the proxies'
//! metrics, for `weft graph` and the dashboard.
//!
//! Embedded default: every scrape target (a proxy's `/metrics`) is
//! fetched every interval; the families the graph and the service pages
//! use are kept for a rolling window ([`KEEP`]). A graph over a window is
//! the counter increases between the scrape at (or just before) the
//! window's start and the latest one, per target, fed to
//! [`weft_telemetry::graph::edges`]. A target that does not answer, or
//! answers something that is not Prometheus text, is marked stale with
//! the reason; its earlier scrapes still count, and nothing else is
//! affected.
//!
//! With a Prometheus ([`Source::Prometheus`]) the same edges are computed
//! from `increase(…[window])` queries instead.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::time::Instant;
use weft_telemetry::graph::{self, Edge};
use weft_telemetry::promtext::{self, Sample};

/// How much history is kept (the longest window that can be asked for).
pub const KEEP: Duration = Duration::from_secs(15 * 60);
/// Longest a scrape may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest metrics page read.
pub const MAX_PAGE: usize = 16 * 1024 * 1024;

/// One proxy to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// A name for humans (`node-1`, `shop/shop-waypoint`).
    pub name: String,
    /// Its metrics address (`/metrics` is fetched).
    pub addr: SocketAddr,
}

impl std::str::FromStr for Target {
    type Err = String;

    /// `name=ip:port`, or just `ip:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, addr) = s.split_once('=').unwrap_or((s, s));
        let addr = addr
            .parse()
            .map_err(|e| format!("{addr:?} is not an ip:port: {e}"))?;
        Ok(Target {
            name: name.to_owned(),
            addr,
        })
    }
}

/// Where the graph's numbers come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Scrape these proxies.
    Scrape(Vec<Target>),
    /// Ask this Prometheus (`http://host:9090`).
    Prometheus(String),
}

/// How a scrape target is doing.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetStatus {
    /// Its name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Its last scrape failed or is too old.
    pub stale: bool,
    /// Why, when stale.
    pub error: Option<String>,
    /// Seconds since its last good scrape.
    pub last_ok_seconds_ago: Option<f64>,
}

/// A graph over a window.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The window asked for, in seconds.
    pub window_seconds: f64,
    /// The time the numbers actually cover (at most the window; less
    /// while history is short).
    pub covered_seconds: f64,
    /// The edges.
    pub edges: Vec<Edge>,
    /// Every scrape target and its state (empty with Prometheus).
    pub targets: Vec<TargetStatus>,
    /// Latest value of every kept gauge and counter that is not a graph
    /// family (certificate expiry, authorization decisions), for service
    /// pages: `(name, labels, value)`.
    #[serde(skip)]
    pub latest: Vec<Sample>,
    /// Increases of `weft_authz_decisions_total` over the window.
    #[serde(skip)]
    pub decisions: Vec<Sample>,
}

struct Scrape {
    at: Instant,
    samples: Arc<Vec<Sample>>,
}

#[derive(Default)]
struct History {
    scrapes: VecDeque<Scrape>,
    error: Option<String>,
    last_ok: Option<Instant>,
    /// When the last attempt failed, if it did.
    last_failure: Option<Instant>,
    /// Failed attempts in a row.
    failures: u32,
}

/// Failed scrapes in a row before a target that has never answered is
/// warned about (proxies start after the control plane).
const QUIET_STARTUP_FAILURES: u32 = 3;

/// Authorization decisions by policy (service pages show them).
const DECISIONS: &str = weft_telemetry::names::AUTHZ_DECISIONS_TOTAL;

/// Families kept besides the graph's.
fn kept(name: &str) -> bool {
    graph::wanted(name) || name == weft_telemetry::names::CERT_EXPIRY_SECONDS || name == DECISIONS
}

/// The aggregator.
pub struct Aggregator {
    source: Source,
    interval: Duration,
    history: Mutex<HashMap<String, History>>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why a scrape or a query failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// No answer, or not 200.
    #[error("{0}")]
    Unreachable(String),
    /// Not Prometheus text (or not Prometheus' JSON).
    #[error("not understood: {0}")]
    Garbage(String),
}

impl Aggregator {
    /// An aggregator over `source`, scraping every `interval`.
    pub fn new(source: Source, interval: Duration) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(SCRAPE_TIMEOUT));
        Arc::new(Aggregator {
            source,
            interval,
            history: Mutex::default(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Scrapes every interval until aborted (nothing to do with
    /// Prometheus).
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            if matches!(this.source, Source::Prometheus(_)) {
                return;
            }
            let mut tick = tokio::time::interval(this.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.scrape_all().await;
            }
        })
    }

    /// Scrapes every target once (concurrently) and records the results.
    pub async fn scrape_all(&self) {
        let Source::Scrape(targets) = &self.source else {
            return;
        };
        let mut running = tokio::task::JoinSet::new();
        for target in targets.iter().cloned() {
            let client = self.client.clone();
            running.spawn(async move {
                let result = scrape(&client, &target).await;
                (target, result)
            });
        }
        let mut results = Vec::new();
        while let Some(done) = running.join_next().await {
            if let Ok(r) = done {
                results.push(r);
            }
        }
        let now = Instant::now();
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (target, result) in results {
            let h = history.entry(target.name.clone()).or_default();
            match result {
                Ok(samples) => {
                    // A proxy that answers after not answering has just
                    // (re)started: its counters were zero when it last
                    // did not answer, so what it counted since is counted.
                    if let Some(down) = h.last_failure.take() {
                        h.scrapes.push_back(Scrape {
                            at: down,
                            samples: Arc::default(),
                        });
                    }
                    h.scrapes.push_back(Scrape {
                        at: now,
                        samples: Arc::new(samples),
                    });
                    h.error = None;
                    h.last_ok = Some(now);
                    h.failures = 0;
                }
                Err(e) => {
                    h.failures += 1;
                    if h.last_ok.is_some() && h.failures == 1 {
                        tracing::warn!(target = %target.name, addr = %target.addr, error = %e, "scrape failed; target marked stale");
                    } else if h.last_ok.is_none() && h.failures == QUIET_STARTUP_FAILURES {
                        tracing::warn!(target = %target.name, addr = %target.addr, error = %e, "target has not answered {QUIET_STARTUP_FAILURES} scrapes since the control plane started; marked stale");
                    } else if h.last_ok.is_none() && h.failures == 1 {
                        tracing::debug!(target = %target.name, addr = %target.addr, error = %e, "target not answering yet");
                    }
                    h.error = Some(e.to_string());
                    h.last_failure = Some(now);
                }
            }
            while h
                .scrapes
                .front()
                .is_some_and(|s| now.duration_since(s.at) > KEEP + self.interval)
            {
                h.scrapes.pop_front();
            }
        }
    }

    /// The graph over the last `window`.
    pub async fn report(&self, window: Duration) -> Result<Report, ObserveError> {
        match &self.source {
            Source::Scrape(targets) => Ok(self.report_from_history(targets, window)),
            Source::Prometheus(url) => self.report_from_prometheus(url, window).await,
        }
    }

    fn report_from_history(&self, targets: &[Target], window: Duration) -> Report {
        let now = Instant::now();
        let history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut deltas = Vec::new();
        let mut latest = Vec::new();
        let mut covered: f64 = 0.0;
        let mut statuses = Vec::new();
        for target in targets {
            let h = history.get(&target.name);
            let stale_after = self.interval * 3;
            let last_ok = h.and_then(|h| h.last_ok);
            let error = h.and_then(|h| h.error.clone());
            let too_old = last_ok.is_none_or(|t| now.duration_since(t) > stale_after);
            statuses.push(TargetStatus {
                name: target.name.clone(),
                address: target.addr.to_string(),
                stale: error.is_some() || too_old,
                error: error.or_else(|| too_old.then(|| "no scrape yet".to_owned())),
                last_ok_seconds_ago: last_ok.map(|t| now.duration_since(t).as_secs_f64()),
            });
            let Some(h) = h else { continue };
            let Some(newest) = h.scrapes.back() else {
                continue;
            };
            let start = now.checked_sub(window).unwrap_or(now);
            // The last scrape at or before the window's start, else the
            // oldest one held.
            let base = h
                .scrapes
                .iter()
                .rev()
                .find(|s| s.at <= start)
                .or_else(|| h.scrapes.front());
            latest.extend(
                newest
                    .samples
                    .iter()
                    .filter(|s| !graph::wanted(&s.name))
                    .cloned(),
            );
            if let Some(base) = base
                && base.at < newest.at
            {
                covered = covered.max(newest.at.duration_since(base.at).as_secs_f64());
                deltas.extend(graph::increases_of(&base.samples, &newest.samples, |n| {
                    graph::wanted(n) || n == DECISIONS
                }));
            }
        }
        let decisions: Vec<Sample> = deltas
            .iter()
            .filter(|s| s.name == DECISIONS)
            .cloned()
            .collect();
        Report {
            window_seconds: window.as_secs_f64(),
            covered_seconds: covered,
            edges: graph::edges(&deltas, covered),
            targets: statuses,
            latest,
            decisions,
        }
    }

    async fn report_from_prometheus(
        &self,
        url: &str,
        window: Duration,
    ) -> Result<Report, ObserveError> {
        let range = format!("{}s", window.as_secs().max(1));
        let mut deltas = Vec::new();
        for (name, family) in [
            (graph::REQUESTS, graph::REQUESTS),
            (graph::DURATION_BUCKETS, graph::DURATION_BUCKETS),
            (graph::TCP_OPENED, graph::TCP_OPENED),
            (DECISIONS, DECISIONS),
        ] {
            let query = format!("increase({family}[{range}])");
            let body = fetch(
                &self.client,
                &format!(
                    "{}/api/v1/query?query={}",
                    url.trim_end_matches('/'),
                    percent_encode(&query)
                ),
            )
            .await?;
            deltas.extend(prometheus_vector(&body, name)?);
        }
        let decisions = deltas
            .iter()
            .filter(|s| s.name == DECISIONS)
            .cloned()
            .collect();
        Ok(Report {
            window_seconds: window.as_secs_f64(),
            covered_seconds: window.as_secs_f64(),
            edges: graph::edges(&deltas, window.as_secs_f64()),
            targets: Vec::new(),
            latest: Vec::new(),
            decisions,
        })
    }
}

/// One GET, bounded in time and size.
async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &str,
) -> Result<Bytes, ObserveError> {
    let unreachable = |e: &dyn std::fmt::Display| ObserveError::Unreachable(e.to_string());
    let uri: http::Uri = uri.parse().map_err(|e| unreachable(&e))?;
    let response = tokio::time::timeout(SCRAPE_TIMEOUT, client.get(uri))
        .await
        .map_err(|_| unreachable(&format!("no answer within {SCRAPE_TIMEOUT:?}")))?
        .map_err(|e| unreachable(&e))?;
    if !response.status().is_success() {
        return Err(unreachable(&format!("answered {}", response.status())));
    }
    let body = tokio::time::timeout(
        SCRAPE_TIMEOUT,
        Limited::new(response.into_body(), MAX_PAGE).collect(),
    )
    .await
    .map_err(|_| unreachable(&"the body did not arrive in time"))?
    .map_err(|e| ObserveError::Garbage(e.to_string()))?;
    Ok(body.to_bytes())
}

/// One proxy's kept samples.
async fn scrape(
    client: &Client<HttpConnector, Empty<Bytes>>,
    target: &Target,
) -> Result<Vec<Sample>, ObserveError> {
    let body = fetch(client, &format!("http://{}/metrics", target.addr)).await?;
    let text = std::str::from_utf8(&body).map_err(|e| ObserveError::Garbage(e.to_string()))?;
    let samples = promtext::parse(text).map_err(|e| ObserveError::Garbage(e.to_string()))?;
    Ok(samples.into_iter().filter(|s| kept(&s.name)).collect())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Samples from a Prometheus instant-vector answer, named `name`.
pub fn prometheus_vector(body: &[u8], name: &str) -> Result<Vec<Sample>, ObserveError> {
    let garbage = |why: &str| ObserveError::Garbage(format!("Prometheus answer: {why}"));
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| garbage(&e.to_string()))?;
    if v["status"] != "success" {
        return Err(garbage(&format!("status {} ({})", v["status"], v["error"])));
    }
    let results = v["data"]["result"]
        .as_array()
        .ok_or_else(|| garbage("no data.result"))?;
    let mut out = Vec::new();
    for r in results {
        let labels = r["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let value = r["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| garbage("a sample without a value"))?;
        if value > 0.0 && value.is_finite() {
            out.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
    }
    Ok(out)
}

/// Parses a window such as `30s`, `5m`, `1h` (at most [`KEEP`]).
pub fn parse_window(s: &str) -> Result<Duration, String> {
    let d = weft_core::duration::parse(s)?;
    if d.is_zero() || d > KEEP {
        return Err(format!(
            "{s:?}: a window is between 1s and {}m",
            KEEP.as_secs() / 60
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answers_become_samples() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"source_workload":"a","destination_service":"b"},"value":[1,"12.5"]},
            {"metric":{"source_workload":"c"},"value":[1,"0"]}]}}"#;
        let samples = prometheus_vector(body, graph::REQUESTS).expect("vector");
        assert_eq!(samples.len(), 1, "zero increases are dropped");
        assert_eq!(samples[0].value, 12.5);
        for bad in [&b"<html>"[..], br#"{"status":"error","error":"bad query"}"#] {
            assert!(prometheus_vector(bad, "x").is_err());
        }
        assert_eq!(percent_encode("increase(a[5m])"), "increase%28a%5B5m%5D%29");
        assert!(parse_window("5m").is_ok() && parse_window("2h").is_err());
        let t: Target = "node-1=127.0.1.1:15020".parse().expect("target");
        assert_eq!(t.name, "node-1");
    }

    /// A proxy that answers garbage, one that vanishes, and one that
    /// works: the graph comes from the one that works; the others are
    /// stale with their reasons.
    #[tokio::test]
    async fn stale_targets_do_not_break_the_graph() {
        let page = |n: u64| {
            format!(
                "# TYPE istio_requests counter\nistio_requests_total{{reporter=\"waypoint\",source_canonical_service=\"fe\",source_workload_namespace=\"shop\",destination_service=\"b\",response_code=\"200\",response_flags=\"-\",request_protocol=\"http\",connection_security_policy=\"mutual_tls\"}} {n}\n# EOF\n"
            )
        };
        let count = Arc::new(std::sync::atomic::AtomicU64::new(10));
        let good = serve(count.clone(), page).await;
        let garbage = serve(Arc::default(), |_| "<html>oops</html>".to_owned()).await;
        let vanished: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let agg = Aggregator::new(
            Source::Scrape(vec![
                Target {
                    name: "good".into(),
                    addr: good,
                },
                Target {
                    name: "garbage".into(),
                    addr: garbage,
                },
                Target {
                    name: "vanished".into(),
                    addr: vanished,
                },
            ]),
            Duration::from_millis(100),
        );
        agg.scrape_all().await;
        count.store(40, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        agg.scrape_all().await;
        let report = agg.report(Duration::from_secs(60)).await.expect("report");
        assert_eq!(report.edges.len(), 1, "{report:?}");
        assert_eq!(report.edges[0].requests, 30.0);
        let status = |name: &str| {
            report
                .targets
                .iter()
                .find(|t| t.name == name)
                .cloned()
                .expect("target")
        };
        assert!(!status("good").stale);
        assert!(status("garbage").stale);
        assert!(
            status("garbage")
                .error
                .unwrap_or_default()
                .contains("not understood")
        );
        assert!(status("vanished").stale);
    }

    /// A proxy that starts after the aggregator: what it counted before
    /// its first answer still counts (its counters were zero while it did
    /// not answer).
    #[tokio::test]
    async fn a_proxy_that_starts_late_is_counted_from_zero() {
        let page = |n: u64| {
            format!(
                "istio_requests_total{{reporter=\"waypoint\",source_canonical_service=\"fe\",source_workload_namespace=\"shop\",destination_service=\"b\",response_code=\"403\",response_flags=\"RBAC\"}} {n}\n"
            )
        };
        let late: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let agg = Aggregator::new(
            Source::Scrape(vec![Target {
                name: "late".into(),
                addr: late,
            }]),
            Duration::from_millis(100),
        );
        agg.scrape_all().await;
        let listener = tokio::net::TcpListener::bind(late).await.expect("rebind");
        serve_on(
            listener,
            Arc::new(std::sync::atomic::AtomicU64::new(7)),
            page,
        );
        agg.scrape_all().await;
        let report = agg.report(Duration::from_secs(60)).await.expect("report");
        assert_eq!(report.edges.len(), 1, "{report:?}");
        assert_eq!(
            (report.edges[0].requests, report.edges[0].denied),
            (7.0, 7.0)
        );
    }

    async fn serve(
        count: Arc<std::sync::atomic::AtomicU64>,
        body: impl Fn(u64) -> String + Send + Sync + 'static,
    ) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        serve_on(listener, count, body);
        addr
    }

    fn serve_on(
        listener: tokio::net::TcpListener,
        count: Arc<std::sync::atomic::AtomicU64>,
        body: impl Fn(u64) -> String + Send + Sync + 'static,
    ) {
        let body = Arc::new(body);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (count, body) = (count.clone(), body.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let text = body(count.load(std::sync::atomic::Ordering::SeqCst));
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(Bytes::from(text)),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    }
}
