//! `weft graph`: who calls whom, from the control plane's aggregation —
//! edges with caller, callee, rate, error ratio, p50/p99 latency, mutual
//! TLS, allowed and denied counts. `weft graph --to payments` answers
//! "which services call payments?" in one command.

use std::net::SocketAddr;
use std::process::ExitCode;

use serde_json::Value;

/// Flags of `weft graph`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Only edges into this service (hostname, or its first label).
    #[arg(long, conflicts_with = "from")]
    to: Option<String>,
    /// Only edges out of this caller (its canonical name or service).
    #[arg(long)]
    from: Option<String>,
    /// The window, e.g. `30s`, `5m` (at most 15m).
    #[arg(long, default_value = "5m")]
    window: String,
    /// `table`, `json` or `dot` (Graphviz).
    #[arg(long, default_value = "table", value_parser = ["table", "json", "dot"])]
    output: String,
    /// The control plane's monitoring address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    control: SocketAddr,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let path = format!("/api/graph?window={}", args.window);
    let body =
        match super::runtime().and_then(|rt| rt.block_on(super::certs::get(args.control, &path))) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("weft graph: {e}");
                return ExitCode::from(2);
            }
        };
    let graph: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("weft graph: the control plane's answer is not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let links = select(&graph, args.to.as_deref(), args.from.as_deref());
    let stale: Vec<String> = graph["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["stale"] == true)
        .map(|t| {
            format!(
                "{} ({})",
                t["name"].as_str().unwrap_or("?"),
                t["error"].as_str().unwrap_or("stale")
            )
        })
        .collect();
    match args.output.as_str() {
        "json" => println!(
            "{}",
            serde_json::json!({
                "window_seconds": graph["window_seconds"],
                "covered_seconds": graph["covered_seconds"],
                "edges": links,
                "stale": stale,
            })
        ),
        "dot" => print!("{}", dot(&links)),
        _ => {
            print!("{}", table(&links));
            println!(
                "\n{} edges over {:.0}s",
                links.len(),
                graph["covered_seconds"].as_f64().unwrap_or(0.0)
            );
            if !stale.is_empty() {
                println!(
                    "stale proxies (their numbers may be missing): {}",
                    stale.join(", ")
                );
            }
        }
    }
    ExitCode::SUCCESS
}

/// Whether `name` names `host`: equal, or its first label.
fn names(name: &str, host: &str) -> bool {
    host == name || host.split('.').next() == Some(name)
}

/// The links that pass the filters.
fn select(graph: &Value, to: Option<&str>, from: Option<&str>) -> Vec<Value> {
    graph["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            let dest = l["destination"].as_str().unwrap_or("");
            let (src, src_node) = (
                l["source"].as_str().unwrap_or(""),
                l["from"].as_str().unwrap_or(""),
            );
            to.is_none_or(|t| names(t, dest)) && from.is_none_or(|f| src == f || names(f, src_node))
        })
        .cloned()
        .collect()
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |n| format!("{n:.digits$}"))
}

/// The caller's and callee's clusters, when the link goes from one known
/// cluster to another.
fn crossing(l: &Value) -> Option<(&str, &str)> {
    fn known(c: &Value) -> Option<&str> {
        c.as_str().filter(|c| !c.is_empty() && *c != "unknown")
    }
    let (from, to) = (
        known(&l["source_cluster"])?,
        known(&l["destination_cluster"])?,
    );
    (from != to).then_some((from, to))
}

/// The east-west gateway a link passes, `namespace/name@cluster`.
fn via(l: &Value) -> Option<String> {
    let g = l["gateway"].as_object()?;
    Some(format!(
        "{}@{}",
        g.get("name").and_then(Value::as_str).unwrap_or("?"),
        g.get("cluster").and_then(Value::as_str).unwrap_or("?")
    ))
}

fn table(links: &[Value]) -> String {
    // Clusters and gateways only when some link crosses clusters.
    let across = links.iter().any(|l| crossing(l).is_some());
    let mut header = vec![
        "CALLER", "CALLEE", "PROTO", "RATE/S", "ERR%", "P50MS", "P99MS", "MTLS", "ALLOWED",
        "DENIED",
    ];
    if across {
        header.push("VIA");
    }
    let rows: Vec<Vec<String>> = links
        .iter()
        .map(|l| {
            let (from, to) = match crossing(l) {
                Some((from, to)) => (format!("@{from}"), format!("@{to}")),
                None => (String::new(), String::new()),
            };
            let mut row = vec![
                format!(
                    "{}.{}{from}",
                    l["source"].as_str().unwrap_or("?"),
                    l["source_namespace"].as_str().unwrap_or("?")
                ),
                format!("{}{to}", l["destination"].as_str().unwrap_or("?")),
                l["protocol"].as_str().unwrap_or("?").to_owned(),
                num(&l["rate"], 2),
                l["error_ratio"]
                    .as_f64()
                    .map_or("-".into(), |r| format!("{:.1}", r * 100.0)),
                num(&l["p50_ms"], 1),
                num(&l["p99_ms"], 1),
                if l["mtls"] == true { "yes" } else { "no" }.to_owned(),
                num(&l["allowed"], 0),
                num(&l["denied"], 0),
            ];
            if across {
                row.push(via(l).unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
            + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn dot(links: &[Value]) -> String {
    let mut out =
        String::from("digraph weft {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for l in links {
        let from = l["from"].as_str().unwrap_or("?");
        let to = l["to"].as_str().unwrap_or("?");
        let denied = l["denied"].as_f64().unwrap_or(0.0);
        let crossed = match (crossing(l), via(l)) {
            (Some((from, to)), Some(g)) => format!("{from} → {to} via {g}, "),
            (Some((from, to)), None) => format!("{from} → {to}, "),
            _ => String::new(),
        };
        let label = format!(
            "{crossed}{}/s, {:.1}% err{}{}",
            num(&l["rate"], 2),
            l["error_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            if l["mtls"] == true { ", mTLS" } else { "" },
            if denied > 0.0 {
                format!(", {denied:.0} denied")
            } else {
                String::new()
            }
        );
        let color = if denied > 0.0 {
            ", color=red, fontcolor=red"
        } else {
            ""
        };
        out.push_str(&format!("  {from:?} -> {to:?} [label={label:?}{color}];\n"));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_formats() {
        let graph = serde_json::json!({"links": [
            {"from": "orders.shop.svc.cluster.local", "to": "payments.billing.svc.cluster.local",
             "source": "orders", "source_namespace": "shop",
             "destination": "payments.billing.svc.cluster.local", "protocol": "tcp",
             "rate": 2.0, "error_ratio": 0.0, "mtls": true, "allowed": 20.0, "denied": 0.0},
            {"from": "intruder", "to": "payments.billing.svc.cluster.local",
             "source": "intruder", "source_namespace": "shop",
             "destination": "payments.billing.svc.cluster.local", "protocol": "tcp",
             "rate": 0.5, "error_ratio": 0.0, "mtls": true, "allowed": 0.0, "denied": 5.0},
            {"from": "frontend.shop.svc.cluster.local", "to": "orders.shop.svc.cluster.local",
             "source": "frontend", "source_namespace": "shop",
             "destination": "orders.shop.svc.cluster.local", "protocol": "http",
             "rate": 1.0, "error_ratio": 0.1, "p50_ms": 1.5, "p99_ms": 9.0, "mtls": true,
             "allowed": 10.0, "denied": 0.0}
        ]});
        assert_eq!(select(&graph, Some("payments"), None).len(), 2);
        assert_eq!(select(&graph, None, Some("frontend")).len(), 1);
        assert_eq!(select(&graph, None, Some("orders")).len(), 1);
        let t = table(&select(&graph, Some("payments"), None));
        assert!(t.starts_with("CALLER"), "{t}");
        assert!(t.contains("intruder.shop") && t.contains("  5\n"), "{t}");
        let d = dot(&select(&graph, None, None));
        assert!(
            d.contains("\"intruder\" -> \"payments.billing.svc.cluster.local\""),
            "{d}"
        );
        assert!(d.contains("color=red"), "{d}");
        assert!(
            !t.contains("VIA"),
            "no cluster column within a cluster: {t}"
        );
    }

    #[test]
    fn links_across_clusters_name_the_clusters_and_the_gateway() {
        let graph = serde_json::json!({"links": [
            {"from": "frontend", "to": "reviews.shop.svc.cluster.local",
             "source": "frontend", "source_namespace": "shop", "source_cluster": "east",
             "destination": "reviews.shop.svc.cluster.local", "destination_cluster": "west",
             "gateway": {"name": "weft-system/east-west", "cluster": "west", "address": "10.0.0.2:15008"},
             "protocol": "tcp", "rate": 2.0, "error_ratio": 0.0, "mtls": true,
             "allowed": 20.0, "denied": 0.0},
            {"from": "frontend", "to": "reviews.shop.svc.cluster.local",
             "source": "frontend", "source_namespace": "shop", "source_cluster": "east",
             "destination": "reviews.shop.svc.cluster.local", "destination_cluster": "east",
             "gateway": null, "protocol": "tcp", "rate": 8.0, "error_ratio": 0.0, "mtls": true,
             "allowed": 80.0, "denied": 0.0}
        ]});
        let t = table(&select(&graph, None, None));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("VIA"), "{t}");
        assert!(
            lines[1].starts_with("frontend.shop@east")
                && lines[1].contains("reviews.shop.svc.cluster.local@west")
                && lines[1].ends_with("weft-system/east-west@west"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("frontend.shop ") && lines[2].ends_with('-'),
            "{t}"
        );
        let d = dot(&select(&graph, None, None));
        assert!(
            d.contains("east → west via weft-system/east-west@west"),
            "{d}"
        );
    }
}
