//! `weft up examples/demo` without root: the whole demo mesh starts, traffic
//! flows from an app's outbound listener to another app over mTLS, and
//! SIGTERM stops everything.

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Up, http_get};

fn get(addr: &str) -> std::io::Result<String> {
    http_get(addr, "/", "")
}

fn get_path(addr: &str, path: &str) -> std::io::Result<String> {
    http_get(addr, path, "")
}

#[test]
fn up_runs_the_demo_mesh() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let mut guard = Up::start(
        &demo,
        &["--scrape-interval", "500ms", "--background-load", "5"],
    );
    let printed = guard.printed.clone();
    assert!(
        printed.contains("spiffe://cluster.local/ns/billing/sa/payments"),
        "{printed}"
    );
    // The console is the summary: the table, addresses, ready. The log
    // stream goes to one file per process.
    assert!(
        printed.lines().count() <= 30,
        "{} console lines:\n{printed}",
        printed.lines().count()
    );
    let errors = guard.console_errors();
    assert!(
        !errors.contains(" INFO "),
        "info lines reached the console:\n{errors}"
    );
    let logs = guard.state().join("logs");
    let own = std::fs::read_to_string(logs.join("weft-up.log")).expect("weft-up.log");
    assert!(
        own.contains("configuration applied") || own.contains(" INFO "),
        "{own}"
    );
    for app in ["shop-frontend-1.log", "billing-payments-1b.log"] {
        assert!(logs.join(app).exists(), "no {app} in {}", logs.display());
    }

    // frontend → orders and orders → payments through the node proxies.
    let start = Instant::now();
    let response = loop {
        match get("127.0.1.10:9001") {
            Ok(r) if r.contains("x-weft-app: orders") => break r,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "no answer from orders: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let payments = get("127.0.1.11:9001").expect("orders → payments");
    assert!(payments.contains("x-weft-app: payments"), "{payments}");
    // frontend → reviews goes through the waypoint, which counts it at L7.
    let reviews = get("127.0.1.10:9002").expect("frontend → reviews");
    assert!(reviews.contains("x-weft-app: reviews"), "{reviews}");
    let metrics = get_path("127.0.1.40:15020", "/metrics").expect("waypoint metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"waypoint\"")
                && l.contains("reviews.shop.svc.cluster.local")),
        "{metrics}"
    );
    // Outside traffic enters through the gateway and reaches frontend.
    let edge = get("127.0.1.50:8080").expect("gateway → frontend");
    assert!(edge.contains("x-weft-app: frontend"), "{edge}");
    // Its partner API takes the demo's API key, and only that.
    let no_key = get_path("127.0.1.50:8080", "/partner/headers").expect("gateway");
    assert!(no_key.starts_with("HTTP/1.1 401"), "{no_key}");
    let keyed = http_get(
        "127.0.1.50:8080",
        "/partner/headers",
        "x-api-key: demo-key\r\n",
    )
    .expect("gateway");
    assert!(
        keyed.starts_with("HTTP/1.1 200")
            && keyed.contains("\"x-weft-api-client\":\"demo-partner\""),
        "{keyed}"
    );

    // The background load makes a living graph at once: the dashboard's
    // address is printed, and its API shows the demo's calls.
    assert!(
        printed.contains("dashboard: http://127.0.0.1:15014/"),
        "{printed}"
    );
    let wanted = [
        "frontend.shop.svc.cluster.local->orders.shop.svc.cluster.local",
        "orders.shop.svc.cluster.local->payments.billing.svc.cluster.local",
        "frontend.shop.svc.cluster.local->reviews.shop.svc.cluster.local",
        "edge->frontend.shop.svc.cluster.local",
    ];
    let start = Instant::now();
    loop {
        let graph = get_path("127.0.0.1:15014", "/api/graph?window=1m").unwrap_or_default();
        let body = graph.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let all = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["links"].as_array().cloned())
            .unwrap_or_default();
        let links: Vec<String> = all
            .iter()
            .map(|l| {
                format!(
                    "{}->{}",
                    l["from"].as_str().unwrap_or(""),
                    l["to"].as_str().unwrap_or("")
                )
            })
            .collect();
        // The gateway's refusal of the keyless partner call counts as a
        // denied call to frontend (not to an unknown service).
        let refusal_counted = all.iter().any(|l| {
            l["from"] == "edge"
                && l["to"] == "frontend.shop.svc.cluster.local"
                && l["denied"].as_f64().unwrap_or(0.0) >= 1.0
        });
        if refusal_counted && wanted.iter().all(|w| links.iter().any(|l| l == w)) {
            // Every call is attributed to a service, the waypoint's and
            // the gateway's direct tunnels to endpoints and refusals
            // included.
            assert!(!links.iter().any(|l| l.ends_with("->unknown")), "{links:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the graph never showed the demo's calls; it has {links:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // SIGTERM stops the mesh, apps included.
    let pid = guard.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = guard.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    // It says what it stopped.
    let said = guard.rest();
    for line in [
        "stopped node node-1",
        "stopped waypoint shop/shop-waypoint",
        "stopped gateway shop/edge",
        "app(s): billing/payments-1a",
        "weft up: done",
    ] {
        assert!(said.contains(line), "{line:?} not in:\n{said}");
    }
    let start = Instant::now();
    while TcpStream::connect("127.0.1.11:8080").is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the orders app outlived weft up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
