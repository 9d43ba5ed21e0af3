//! A whole local mesh in one process: control plane, two node proxies and
//! sample apps on loopback addresses, as `weft up` runs them. Traffic from
//! an app's outbound listener reaches another app through HBONE mTLS;
//! when the caller's locality loses its endpoint, traffic fails over to the
//! other zone, and comes back when the endpoint recovers (scenario 3 at L4).

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use weft_control::Options;
use weft_node::NodeOptions;
use weft_sample_app::AppConfig;

async fn get(addr: &str, path: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut out))
        .await
        .map_err(|_| "response timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if out.is_empty() {
        return Err("connection closed without a response".into());
    }
    Ok(out)
}

/// Polls until `get` answers with something containing `needle`.
async fn until(addr: &str, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        match get(addr, "/").await {
            Ok(r) if r.contains(needle) => return r,
            other => assert!(
                start.elapsed() < limit,
                "{addr}: no answer with {needle:?} within {limit:?}; last: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request on an open connection; reads exactly one response.
async fn request_on(conn: &mut TcpStream, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    conn.write_all(
        format!("GET / HTTP/1.1\r\nhost: test\r\nconnection: {connection}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length || n == 0 {
                return text;
            }
        }
        if n == 0 {
            return text;
        }
    }
}

enum Socks {
    Host(&'static str, u16),
    Ip([u8; 4], u16),
}

/// A GET through a SOCKS5 proxy; returns the HTTP response, or "SOCKS reply N".
async fn socks_get(proxy: &str, target: Socks) -> String {
    match socks_connect(proxy, target).await {
        Ok(mut conn) => request_on(&mut conn, true).await,
        Err(reply) => format!("SOCKS reply {reply}"),
    }
}

/// A connection through a SOCKS5 proxy, or the failing reply code.
async fn socks_connect(proxy: &str, target: Socks) -> Result<TcpStream, u8> {
    let mut conn = TcpStream::connect(proxy).await.expect("connect to SOCKS");
    conn.write_all(&[5, 1, 0]).await.expect("greeting");
    let mut choice = [0u8; 2];
    conn.read_exact(&mut choice).await.expect("method");
    assert_eq!(choice, [5, 0]);
    let mut request = vec![5, 1, 0];
    match target {
        Socks::Host(host, port) => {
            request.push(3);
            request.push(host.len() as u8);
            request.extend_from_slice(host.as_bytes());
            request.extend_from_slice(&port.to_be_bytes());
        }
        Socks::Ip(ip, port) => {
            request.push(1);
            request.extend_from_slice(&ip);
            request.extend_from_slice(&port.to_be_bytes());
        }
    }
    conn.write_all(&request).await.expect("request");
    let mut reply = [0u8; 10];
    conn.read_exact(&mut reply).await.expect("reply");
    if reply[1] != 0 {
        return Err(reply[1]);
    }
    Ok(conn)
}

struct App {
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

async fn app(addr: &str, name: &str, locality: &str) -> App {
    let listener = TcpListener::bind(addr).await.expect("bind app");
    let config = AppConfig {
        name: name.into(),
        locality: locality.into(),
        ..AppConfig::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        weft_sample_app::serve_http(listener, config, async {
            let _ = stopped.await;
        })
        .await
        .expect("app");
    });
    App { stop, done }
}

impl App {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_over_mtls_and_fails_over_between_zones() {
    // Logs help when this fails: RUST_LOG=weft_node=debug cargo test -p weft-node
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().expect("tempdir");
    // A copy of the demo, so the test can add a policy while the mesh runs.
    let demo = tmp.path().join("config");
    std::fs::create_dir_all(&demo).expect("mkdir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    for f in [
        "mesh.yaml",
        "services.yaml",
        "workloads.yaml",
        "gateway.yaml",
    ] {
        std::fs::copy(source.join(f), demo.join(f)).expect("copy demo");
    }
    let tokens = tmp.path().join("tokens");
    std::fs::write(
        &tokens,
        "node-1 node-1-token-0123456789\nnode-2 node-2-token-0123456789\n",
    )
    .expect("tokens");
    let control = weft_control::start(Options {
        bootstrap_tokens: Some(tokens),
        ..Options::ephemeral(demo.clone(), tmp.path().join("ca"))
    })
    .await
    .expect("control plane");
    let roots =
        weft_ca::cert::certs_from_pem(&std::fs::read(&control.root_cert).expect("root"), "root")
            .expect("pem");
    let node = |n: u8| NodeOptions {
        attach_socket: None,
        state_dir: None,
        node: format!("node-{n}"),
        trust_domain: "cluster.local".into(),
        xds_addr: Some(control.xds_addr),
        ca_addr: control.tls_addr.into(),
        roots: roots.clone(),
        token: format!("node-{n}-token-0123456789").into(),
        admin_addr: format!("127.0.{n}.1:0").parse().expect("addr"),
        metrics_addr: format!("127.0.{n}.1:0").parse().expect("addr"),
        connect_timeout: Duration::from_secs(1),
    };
    let node1 = weft_node::start(node(1)).await.expect("node-1");
    let node2 = weft_node::start(node(2)).await.expect("node-2");

    let orders = app("127.0.1.11:8080", "orders", "eu-west/eu-west-1a").await;
    let pay_a = app("127.0.1.20:8080", "payments", "eu-west/eu-west-1a").await;
    let pay_b = app("127.0.2.20:8080", "payments", "eu-west/eu-west-1b").await;

    // Readiness: node-2 serves payments-1b's HBONE port once it holds its
    // certificate and the config.
    let start = Instant::now();
    while TcpStream::connect("127.0.2.20:15008").await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node-2 never opened payments-1b's HBONE listener"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // frontend (node-1) → orders through its outbound listener.
    let r = until(
        "127.0.1.10:9001",
        "x-weft-app: orders",
        Duration::from_secs(10),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // orders (node-1, zone 1a) → payments: the same-zone endpoint serves.
    until(
        "127.0.1.11:9001",
        "x-weft-locality: eu-west/eu-west-1a",
        Duration::from_secs(10),
    )
    .await;
    for _ in 0..10 {
        let r = get("127.0.1.11:9001", "/").await.expect("request");
        assert!(r.contains("x-weft-locality: eu-west/eu-west-1a"), "{r}");
    }

    // Zone 1a's payments goes down: traffic moves to zone 1b at once.
    pay_a.stop().await;
    for _ in 0..10 {
        let r = get("127.0.1.11:9001", "/")
            .await
            .expect("request after failover");
        assert!(r.contains("x-weft-locality: eu-west/eu-west-1b"), "{r}");
    }

    // It comes back: traffic returns to zone 1a once the backoff passes.
    let pay_a = app("127.0.1.20:8080", "payments", "eu-west/eu-west-1a").await;
    until(
        "127.0.1.11:9001",
        "x-weft-locality: eu-west/eu-west-1a",
        Duration::from_secs(15),
    )
    .await;

    // SOCKS5 at the caller's own address, by hostname and by virtual IP.
    let r = socks_get(
        "127.0.1.10:15080",
        Socks::Host("payments.billing.svc.cluster.local", 80),
    )
    .await;
    assert!(r.contains("x-weft-app: payments"), "{r}");
    let r = socks_get("127.0.1.10:15080", Socks::Ip([240, 240, 0, 11], 80)).await;
    assert!(r.contains("x-weft-app: orders"), "{r}");
    let r = socks_get("127.0.1.10:15080", Socks::Host("nowhere.example", 80)).await;
    assert_eq!(r, "SOCKS reply 2", "unknown hostnames are refused");
    // An address outside the registry passes through (the demo's Mesh says
    // ALLOW_ANY): here, an app no ServiceEntry describes.
    let outsider = app("127.0.3.99:8080", "outsider", "").await;
    let r = socks_get("127.0.1.10:15080", Socks::Ip([127, 0, 3, 99], 8080)).await;
    assert!(r.contains("x-weft-app: outsider"), "{r}");
    outsider.stop().await;
    // ...and is labelled as Istio labels unknown destinations, never with
    // an address split on its dots.
    let passthrough = get(&node1.metrics_addr.to_string(), "/metrics")
        .await
        .expect("node-1 metrics");
    assert!(
        passthrough
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("source_workload=\"frontend-1\"")
                && l.contains("destination_service=\"unknown\"")
                && l.contains("destination_service_name=\"unknown\"")
                && l.contains("destination_service_namespace=\"unknown\"")
                && l.contains("connection_security_policy=\"none\"")),
        "no passthrough metric labelled unknown:\n{passthrough}"
    );
    assert!(
        !passthrough.contains("destination_service_name=\"127\""),
        "{passthrough}"
    );
    // A mesh workload by its own address (not the service's VIP) goes over
    // HBONE like a captured connection: payments-1b's node reports it as
    // mutual TLS from frontend.
    let r = socks_get("127.0.1.10:15080", Socks::Ip([127, 0, 2, 20], 8080)).await;
    assert!(r.contains("x-weft-locality: eu-west/eu-west-1b"), "{r}");
    let dest_side = get(&node2.metrics_addr.to_string(), "/metrics")
        .await
        .expect("node-2 metrics");
    assert!(
        dest_side
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("source_workload=\"frontend-1\"")
                && l.contains("destination_workload=\"payments-1b\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")),
        "node-2 did not see frontend's SOCKS5 connection over mutual TLS:\n{dest_side}"
    );
    // weft's own ports on the host's loopback are never passthrough targets
    // (refused as "not allowed", before any connection is tried).
    for port in [15000, 15010, 15012, 15014, 15020] {
        let r = socks_get("127.0.1.10:15080", Socks::Ip([127, 0, 0, 1], port)).await;
        assert_eq!(r, "SOCKS reply 2", "127.0.0.1:{port} must be refused");
    }
    // The gateway `edge` (127.0.1.50, on node-1) opens its own listeners:
    // its node offers no SOCKS5 or HBONE there, so nothing on the host can
    // borrow the gateway's identity.
    for port in [15080, 15008] {
        assert!(
            TcpStream::connect(("127.0.1.50", port)).await.is_err(),
            "node-1 must not listen on the gateway's address, port {port}"
        );
    }

    // An open connection from frontend to payments, allowed so far...
    let mut open_conn = socks_connect(
        "127.0.1.10:15080",
        Socks::Host("payments.billing.svc.cluster.local", 80),
    )
    .await
    .expect("SOCKS connect");
    let r = request_on(&mut open_conn, false).await;
    assert!(r.contains("x-weft-app: payments"), "{r}");

    // Restrict payments' callers to orders: frontend is refused (401 at the
    // destination node → SOCKS "general failure"), orders still gets through.
    std::fs::write(
        demo.join("policy.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: payments-callers, namespace: billing}\nspec:\n  selector: {matchLabels: {app: payments}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/shop/sa/orders]}\n",
    )
    .expect("write policy");
    let start = Instant::now();
    loop {
        let r = socks_get(
            "127.0.1.10:15080",
            Socks::Host("payments.billing.svc.cluster.local", 80),
        )
        .await;
        if r == "SOCKS reply 1" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the policy never took effect: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = get("127.0.1.11:9001", "/")
        .await
        .expect("orders → payments");
    assert!(
        r.contains("x-weft-app: payments"),
        "orders must still be allowed: {r}"
    );
    let denials = get(&node1.metrics_addr.to_string(), "/metrics")
        .await
        .expect("metrics");
    assert!(
        denials
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/frontend\"")
                && l.contains("response_flags=\"DENY\"")),
        "the denial is not counted:\n{denials}"
    );
    std::fs::remove_file(demo.join("policy.yaml")).expect("rm policy");

    // What the nodes hold is visible on their admin ports.
    let dump = get(&node1.admin_addr.to_string(), "/config_dump")
        .await
        .expect("config dump");
    assert!(dump.contains("weft/billing/payments-1b"), "{dump}");
    let certs = get(&node1.admin_addr.to_string(), "/certs")
        .await
        .expect("certs");
    assert!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/orders"),
        "{certs}"
    );
    assert!(
        certs.contains("spiffe://cluster.local/ns/weft-system/sa/weft-node.node-1"),
        "{certs}"
    );

    // Istio-standard TCP metrics on both sides of the hop.
    let source_side = get(&node1.metrics_addr.to_string(), "/metrics")
        .await
        .expect("node-1 metrics");
    let line = source_side
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_closed_total{")
                && l.contains("reporter=\"source\"")
                && l.contains("source_workload=\"orders-1\"")
                && l.contains("destination_workload=\"payments-1b\"")
                && l.contains("destination_service=\"payments.billing.svc.cluster.local\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
        })
        .unwrap_or_else(|| {
            panic!("no source-side metric for orders → payments-1b:\n{source_side}")
        });
    let closed: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("count");
    assert!(closed >= 10, "{line}");
    let dest_side = get(&node2.metrics_addr.to_string(), "/metrics")
        .await
        .expect("node-2 metrics");
    assert!(
        dest_side
            .lines()
            .any(|l| l.starts_with("istio_tcp_received_bytes_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/orders\"")
                && l.contains("source_workload=\"orders-1\"")
                && !l.ends_with(" 0")),
        "no destination-side bytes on node-2:\n{dest_side}"
    );

    // Graceful drain: the open connection finishes its work, new ones are refused.
    let mut held = TcpStream::connect("127.0.1.10:9001")
        .await
        .expect("connect");
    let first = request_on(&mut held, false).await;
    assert!(first.contains("x-weft-app: orders"), "{first}");
    let draining = tokio::spawn(node1.drain(Duration::from_secs(20)));
    let start = Instant::now();
    while TcpStream::connect("127.0.1.10:9001").await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "node-1 kept accepting while draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = request_on(&mut held, true).await;
    assert!(
        second.contains("x-weft-app: orders"),
        "the open connection was cut: {second}"
    );
    drop(held);
    let left = tokio::time::timeout(Duration::from_secs(10), draining)
        .await
        .expect("drain ends once the last connection closes")
        .expect("join");
    assert_eq!(left, 0);

    for a in [orders, pay_a, pay_b] {
        a.stop().await;
    }
    node2.stop();
    control.stop().await;
}
