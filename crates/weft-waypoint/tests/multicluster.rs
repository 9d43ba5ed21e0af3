//! Two clusters in one process, each with its own control plane (its CA
//! an intermediate of one shared root), node proxy and workloads, on
//! separate loopback ranges: east (127.0.1.x, network net-east) and west
//! (127.0.3.x, net-west, with its east-west gateway). East's `frontend`
//! calls `reviews`, which has endpoints in both clusters:
//!
//! - calls stay in east while east's endpoint answers;
//! - when it stops, calls cross to west through west's east-west gateway
//!   (double HBONE) with no failed call, and come back when it returns;
//! - west's node sees east's `frontend` by its own identity (and its
//!   cluster, in `source_cluster`): an
//!   `AuthorizationPolicy` in west admitting only it refuses another
//!   caller from east;
//! - west's control plane stopped: east keeps using west's last known
//!   endpoint (the gateway still runs) and reports it stale (the stream
//!   resuming with only the differences is `weft-control/tests/peering.rs`).
//!
//! A second test (127.0.6.x and 127.0.7.x) puts `reviews` behind a
//! waypoint in east, which reaches west's endpoint through the same kind
//! of gateway when east's stops.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_testkit::{Setup, TestMesh};
use weft_waypoint::fronts::setup::WaypointOptions;

const TD: &str = "cluster.local";

/// East: `frontend` at `<net>.110` calling `reviews` (labelled
/// `labels`), its endpoint `reviews-east` at `<net>.112`, peering with
/// west; then `extra`.
fn east_config(
    net: &str,
    vip: &str,
    west_control: SocketAddr,
    labels: &str,
    extra: &str,
) -> String {
    format!(
        r#"
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{cluster: east, network: net-east}}
---
apiVersion: weft.dev/v1alpha1
kind: RemoteCluster
metadata: {{name: west}}
spec: {{address: "{west_control}", exportedNamespaces: [shop], staleAfter: 1s}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: shop, labels: {{{labels}}}}}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [{vip}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{name: http, number: 80, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: frontend
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9002=reviews.shop.svc.cluster.local:80"
spec:
  address: {net}.110
  serviceAccount: frontend
  labels: {{app: frontend, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-east, namespace: shop}}
spec:
  address: {net}.112
  serviceAccount: reviews
  labels: {{app: reviews, weft.dev/node: node-1}}
{extra}"#
    )
}

/// The first test's extra caller in east.
const INTRUDER: &str = r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: intruder
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9003=reviews.shop.svc.cluster.local:80"
spec:
  address: 127.0.1.111
  serviceAccount: intruder
  labels: {app: intruder, weft.dev/node: node-1}
"#;

/// The waypoint test's east: `reviews`' waypoint, which ejects an
/// endpoint after one connect failure and retries a request whose
/// connection failed or was reset.
const WAYPOINT: &str = r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-waypoint, namespace: shop}
spec:
  address: 127.0.6.140
  serviceAccount: reviews-waypoint
  labels: {weft.dev/waypoint: "true", weft.dev/node: node-1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutiveGatewayErrors: 1, baseEjectionTime: 2s, maxEjectionPercent: 100}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
  - route: [{destination: {host: reviews.shop.svc.cluster.local}}]
    retries: {attempts: 2, retryOn: "reset,connect-failure,refused-stream"}
"#;

/// West: `reviews-west` at `<net>.112` admitting only `principal`, the
/// east-west gateway at `<net>.200`, peering with east.
fn west_config(net: &str, vip: &str, east_control: SocketAddr, principal: &str) -> String {
    format!(
        r#"
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{cluster: west, network: net-west}}
---
apiVersion: weft.dev/v1alpha1
kind: RemoteCluster
metadata: {{name: east}}
spec: {{address: "{east_control}", exportedNamespaces: [shop]}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [{vip}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{name: http, number: 80, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-west, namespace: shop}}
spec:
  address: {net}.112
  serviceAccount: reviews
  labels: {{app: reviews, weft.dev/node: node-1}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-from-one-caller, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{principals: [cluster.local/ns/shop/sa/{principal}]}}}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: east-west, namespace: weft-system, labels: {{topology.istio.io/network: net-west}}}}
spec:
  gatewayClassName: weft-east-west
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: east-west, namespace: weft-system}}
spec:
  address: {net}.200
  serviceAccount: east-west
  labels: {{weft.dev/gateway: "true", weft.dev/node: node-1}}
"#
    )
}

/// A free loopback port (bound and released).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// The sample app `name` on `addr` until the returned sender is dropped.
async fn app(addr: &str, name: &str) -> tokio::sync::oneshot::Sender<()> {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind app {addr}: {e}"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(weft_sample_app::serve_http(
        listener,
        weft_sample_app::AppConfig {
            name: name.into(),
            ..weft_sample_app::AppConfig::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));
    stop
}

/// Waits (at most 10 s) until nothing accepts connections at `addr`: an
/// app told to stop has closed its listener.
async fn until_refused(addr: &str) {
    let started = std::time::Instant::now();
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{addr} still accepts connections after its app was stopped"
        );
        tokio::task::yield_now().await;
    }
}

/// Which app answered a call through `addr`, if any did.
async fn call(addr: &str) -> Option<String> {
    let attempt = async {
        let mut conn = TcpStream::connect(addr).await.ok()?;
        conn.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        conn.read_to_string(&mut out).await.ok()?;
        let line = out.lines().find(|l| l.starts_with("x-weft-app: "))?;
        Some(line.trim_start_matches("x-weft-app: ").to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// Calls until `app` answers (at most 20 s); returns the calls that got
/// no answer at all on the way.
async fn until_served_by(addr: &str, app: &str) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut failed = 0;
    loop {
        match call(addr).await {
            Some(a) if a == app => return failed,
            Some(_) => {}
            None => failed += 1,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{app} never answered through {addr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/metrics` of a proxy.
async fn scrape(addr: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("metrics");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n")
        .await
        .expect("ask");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    out
}

fn remote_status(mesh: &TestMesh, cluster: &str) -> Option<weft_control::imports::RemoteStatus> {
    mesh.control
        .config
        .status()
        .remote_clusters
        .into_iter()
        .find(|r| r.cluster == cluster)
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cluster_ca(base: &Path, root: &Path, name: &str) -> std::path::PathBuf {
    let dir = base.join(format!("{name}-ca"));
    weft_ca::authority::create_intermediate(root, &dir, TD, name, Duration::from_secs(86400))
        .expect("intermediate");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_over_to_another_cluster_through_its_east_west_gateway() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    weft_ca::authority::create_shared_root(&root, TD).expect("root");
    let (east_ca, west_ca) = (
        cluster_ca(tmp.path(), &root, "east"),
        cluster_ca(tmp.path(), &root, "west"),
    );
    let (east_tls, west_tls, west_xds) = (free_port(), free_port(), free_port());

    let west = TestMesh::start_with(
        &west_config("127.0.3", "240.240.9.2", east_tls, "frontend"),
        Setup {
            control: Box::new(move |o| {
                o.ca_dir = west_ca;
                o.tls_addr = west_tls;
                o.xds_addr = west_xds;
            }),
            ..Setup::default()
        },
    )
    .await;
    let west_options = WaypointOptions {
        wasm: Default::default(),
        name: "weft-system/east-west".into(),
        node: "node-1".into(),
        trust_domain: TD.into(),
        ca_addr: west.control.tls_addr.into(),
        roots: west.roots.clone(),
        token: weft_testkit::token(1).into(),
        metrics_addr: "127.0.3.200:0".parse().expect("addr"),
        connect_timeout: Duration::from_secs(1),
        jwks_roots: Vec::new(),
        connections: Default::default(),
    };
    let gateway = weft_waypoint::fronts::gateway::start(west_options)
        .await
        .expect("east-west gateway");
    assert_eq!(
        gateway.listening(),
        [(
            "mesh".to_owned(),
            "127.0.3.200:15008".parse().expect("addr")
        )]
    );
    let east = TestMesh::start_with(
        &east_config("127.0.1", "240.240.9.1", west_tls, "", INTRUDER),
        Setup {
            control: Box::new(move |o| {
                o.ca_dir = east_ca;
                o.tls_addr = east_tls;
            }),
            ..Setup::default()
        },
    )
    .await;
    let _west_app = app("127.0.3.112:8080", "reviews-west").await;
    let east_app = app("127.0.1.112:8080", "reviews-east").await;

    // East learns west's endpoint (and west's gateway) from west.
    until("east imports west's reviews", || {
        remote_status(&east, "west").is_some_and(|s| s.connected && s.endpoints == 1)
    })
    .await;

    // Calls stay in east while east's endpoint answers (once the node has
    // opened frontend's outbound listener).
    let frontend = "127.0.1.110:9002";
    until_served_by(frontend, "reviews-east").await;
    for _ in 0..10 {
        assert_eq!(call(frontend).await.as_deref(), Some("reviews-east"));
    }

    // East's endpoint stops: calls cross to west, none fails.
    drop(east_app);
    until_refused("127.0.1.112:8080").await;
    let mut failed = 0;
    for _ in 0..20 {
        match call(frontend).await.as_deref() {
            Some("reviews-west") => {}
            other => {
                failed += 1;
                eprintln!("call answered by {other:?}");
            }
        }
    }
    assert_eq!(failed, 0, "calls failed while crossing to west");

    // West admits only east's frontend: another caller from east is
    // refused by west's node, which sees the caller's own identity.
    assert_eq!(call("127.0.1.111:9003").await, None);
    let metrics = scrape(west.nodes[0].metrics_addr).await;
    let opened = |principal: &str, flags: &str| {
        metrics.lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains(&format!("response_flags=\"{flags}\""))
                && l.contains(&format!(
                    "source_principal=\"spiffe://cluster.local/ns/shop/sa/{principal}\""
                ))
                && l.contains("destination_workload=\"reviews-west\"")
                && l.contains("source_cluster=\"east\"")
                && l.contains("destination_cluster=\"west\"")
        })
    };
    assert!(
        opened("frontend", "-"),
        "west's node admitted east's frontend:\n{metrics}"
    );
    assert!(
        opened("intruder", "DENY"),
        "west's node refused another caller:\n{metrics}"
    );
    assert!(
        !opened("intruder", "-"),
        "west's node admitted another caller:\n{metrics}"
    );

    // East's endpoint returns: calls come back once its failure mark
    // expires.
    let east_app = app("127.0.1.112:8080", "reviews-east").await;
    assert_eq!(until_served_by(frontend, "reviews-east").await, 0);
    drop(east_app);
    assert_eq!(until_served_by(frontend, "reviews-west").await, 0);

    // West's control plane stops: east keeps west's endpoint, and says it
    // is stale; the gateway and west's node keep serving.
    let west_control = west.control;
    west_control.stop().await;
    until("east reports west stale", || {
        remote_status(&east, "west").is_some_and(|s| !s.connected && s.stale)
    })
    .await;
    for _ in 0..5 {
        assert_eq!(call(frontend).await.as_deref(), Some("reviews-west"));
    }

    gateway.stop();
    for n in west.nodes {
        n.stop();
    }
    east.stop().await;
}

/// A waypoint in east sends `reviews`' requests to east's endpoint while
/// it answers, and across to west's through west's east-west gateway
/// (double HBONE from the waypoint) when it stops — with no failed
/// request beyond the retry policy (a request on a connection east's
/// endpoint closed, or failing to connect, is retried and the endpoint
/// ejected); west's node sees the waypoint's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_sends_across_networks_through_the_east_west_gateway() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    weft_ca::authority::create_shared_root(&root, TD).expect("root");
    let (east_ca, west_ca) = (
        cluster_ca(tmp.path(), &root, "east"),
        cluster_ca(tmp.path(), &root, "west"),
    );
    let (east_tls, west_tls, west_xds) = (free_port(), free_port(), free_port());
    let west = TestMesh::start_with(
        &west_config("127.0.7", "240.240.9.12", east_tls, "reviews-waypoint"),
        Setup {
            control: Box::new(move |o| {
                o.ca_dir = west_ca;
                o.tls_addr = west_tls;
                o.xds_addr = west_xds;
            }),
            ..Setup::default()
        },
    )
    .await;
    let options = |name: &str, mesh: &TestMesh, metrics: &str| WaypointOptions {
        wasm: Default::default(),
        name: name.into(),
        node: "node-1".into(),
        trust_domain: TD.into(),
        ca_addr: mesh.control.tls_addr.into(),
        roots: mesh.roots.clone(),
        token: weft_testkit::token(1).into(),
        metrics_addr: metrics.parse().expect("addr"),
        connect_timeout: Duration::from_secs(1),
        jwks_roots: Vec::new(),
        connections: Default::default(),
    };
    let gateway = weft_waypoint::fronts::gateway::start(options(
        "weft-system/east-west",
        &west,
        "127.0.7.200:0",
    ))
    .await
    .expect("east-west gateway");
    let east = TestMesh::start_with(
        &east_config(
            "127.0.6",
            "240.240.9.11",
            west_tls,
            "istio.io/use-waypoint: reviews-waypoint",
            WAYPOINT,
        ),
        Setup {
            control: Box::new(move |o| {
                o.ca_dir = east_ca;
                o.tls_addr = east_tls;
            }),
            ..Setup::default()
        },
    )
    .await;
    let waypoint = weft_waypoint::fronts::waypoint::start(options(
        "shop/reviews-waypoint",
        &east,
        "127.0.6.140:0",
    ))
    .await
    .expect("waypoint");
    let _west_app = app("127.0.7.112:8080", "reviews-west").await;
    let east_app = app("127.0.6.112:8080", "reviews-east").await;
    until("east imports west's reviews", || {
        remote_status(&east, "west").is_some_and(|s| s.connected && s.endpoints == 1)
    })
    .await;

    let frontend = "127.0.6.110:9002";
    until_served_by(frontend, "reviews-east").await;
    for _ in 0..10 {
        assert_eq!(call(frontend).await.as_deref(), Some("reviews-east"));
    }
    // East's endpoint stops taking connections; the one the waypoint
    // holds may still answer a request before it closes.
    drop(east_app);
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(call(frontend).await);
    }
    assert!(
        answers.iter().all(Option::is_some),
        "requests failed while crossing to west: {answers:?}"
    );
    assert!(
        answers[5..]
            .iter()
            .all(|a| a.as_deref() == Some("reviews-west")),
        "requests did not cross to west: {answers:?}"
    );
    let metrics = scrape(west.nodes[0].metrics_addr).await;
    assert!(
        metrics.lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("response_flags=\"-\"")
                && l.contains(
                    "source_principal=\"spiffe://cluster.local/ns/shop/sa/reviews-waypoint\"",
                )
                && l.contains("source_cluster=\"east\"")
        }),
        "west's node admitted east's waypoint:\n{metrics}"
    );

    waypoint.stop();
    gateway.stop();
    for n in west.nodes {
        n.stop();
    }
    west.control.stop().await;
    east.stop().await;
}
