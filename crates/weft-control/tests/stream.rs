//! The config stream end to end over real gRPC: initial snapshot, edits
//! within a second, broken edits rejected with the previous state kept,
//! removals, NACKs, and a control plane restart after which the subscriber
//! keeps its state and receives only the difference.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use weft_control::{Options, Running};
use weft_xds::client::{ClientOptions, ClientState, Transport, XdsClient};
use weft_xds::proto::workload::{Address, address::Type};
use weft_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE, GATEWAY_TYPE};

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo")
}

struct Env {
    _tmp: tempfile::TempDir,
    config: PathBuf,
    ca: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = tmp.path().join("config");
        std::fs::create_dir_all(&config).expect("mkdir");
        for f in ["mesh.yaml", "services.yaml", "workloads.yaml"] {
            std::fs::copy(demo().join(f), config.join(f)).expect("copy demo");
        }
        let ca = tmp.path().join("ca");
        Env {
            _tmp: tmp,
            config,
            ca,
        }
    }

    fn options(&self, xds: &str) -> Options {
        Options {
            xds_addr: xds.parse().expect("addr"),
            ..Options::ephemeral(self.config.clone(), self.ca.clone())
        }
    }

    fn write(&self, file: &str, text: &str) {
        // Write then rename, as editors and `git checkout` do.
        let tmp = self.config.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.config.join(file)).expect("rename");
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.config.join(file)).expect("read")
    }
}

fn subscribe(addr: SocketAddr, reject: Arc<AtomicBool>) -> XdsClient {
    let decode = weft_xds::decode_validator();
    XdsClient::start(
        Transport::Plaintext(addr),
        ClientOptions {
            node_id: "node-1".into(),
            types: vec![ADDRESS_TYPE.into(), AUTHORIZATION_TYPE.into()],
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            validator: Arc::new(move |type_url, body| {
                decode(type_url, body)?;
                if reject.load(Ordering::SeqCst) {
                    let address =
                        Address::decode(body.value.as_slice()).map_err(|e| e.to_string())?;
                    if let Some(Type::Workload(w)) = address.r#type
                        && w.name.starts_with("reject")
                    {
                        return Err(format!(
                            "workload {} is not acceptable to this proxy",
                            w.name
                        ));
                    }
                }
                Ok(())
            }),
        },
    )
}

async fn wait_for(
    client: &XdsClient,
    limit: Duration,
    what: &str,
    done: impl Fn(&ClientState) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut rx = client.watch();
    let result = tokio::time::timeout(limit, rx.wait_for(|s| done(s))).await;
    assert!(
        result.is_ok(),
        "{what}: not reached within {limit:?}; state: {:?}",
        client.state()
    );
    start.elapsed()
}

fn addresses(state: &ClientState) -> Vec<String> {
    state
        .resources
        .get(ADDRESS_TYPE)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut conn = TcpStream::connect(addr).expect("connect");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    conn.read_to_string(&mut out).expect("read");
    out
}

async fn wait_status(running: &Running, rejected: bool) {
    let start = Instant::now();
    while running.config.status().last_attempt_rejected != rejected {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "config status never became rejected={rejected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_stream_to_subscribers() {
    let env = Env::new();
    let running = weft_control::start(env.options("127.0.0.1:0"))
        .await
        .expect("control plane starts");
    let reject = Arc::new(AtomicBool::new(false));
    let client = subscribe(running.xds_addr, reject.clone());

    // Initial snapshot: 4 service hostnames and 8 workloads (a waypoint among them).
    wait_for(&client, Duration::from_secs(5), "initial sync", |s| {
        s.synced
    })
    .await;
    let state = client.state();
    assert_eq!(addresses(&state).len(), 12, "{:?}", addresses(&state));
    assert!(addresses(&state).contains(&"billing/payments.billing.svc.cluster.local".to_owned()));
    assert!(addresses(&state).contains(&"weft/shop/frontend-1".to_owned()));
    let first_version = state.version.clone();

    // An edit reaches the subscriber within a second, and only what changed is sent.
    let workloads = env.read("workloads.yaml");
    env.write(
        "workloads.yaml",
        &workloads.replace("127.0.2.30", "127.0.2.31"),
    );
    let took = wait_for(&client, Duration::from_secs(5), "edit", |s| {
        s.version != first_version
    })
    .await;
    assert!(took < Duration::from_secs(1), "edit took {took:?}");
    let state = client.state();
    assert_eq!(
        state.last_response.get(ADDRESS_TYPE),
        Some(&(1, 0)),
        "only the edited workload is sent"
    );
    let body = &state.resources[ADDRESS_TYPE]["weft/shop/loadgen"].body;
    let Some(Type::Workload(loadgen)) = Address::decode(body.value.as_slice())
        .expect("decode")
        .r#type
    else {
        panic!("loadgen is a workload")
    };
    assert_eq!(loadgen.addresses, vec![vec![127, 0, 2, 31]]);

    // A broken edit is rejected: the subscriber keeps the previous state.
    let version_before = client.state().version.clone();
    env.write("broken.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bad, namespace: shop}\nspec:\n  hosts: [bad.shop]\n  ports: [{name: http, number: 70000}]\n");
    wait_status(&running, true).await;
    let status = http_get(running.monitoring_addr, "/debug/config-status");
    assert!(status.contains("70000 is not a valid port"), "{status}");
    let metrics = http_get(running.metrics_addr, "/metrics");
    assert!(
        metrics.contains("weft_config_rejected_total{kind=\"configuration\"} 1"),
        "{metrics}"
    );
    assert_eq!(client.state().version, version_before);
    assert_eq!(addresses(&client.state()).len(), 12);

    // Fixing it applies again; then a removal arrives as a removal.
    std::fs::remove_file(env.config.join("broken.yaml")).expect("rm");
    wait_status(&running, false).await;
    let without_loadgen = workloads
        .split("\n---\n")
        .filter(|doc| !doc.contains("name: loadgen"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    env.write("workloads.yaml", &without_loadgen);
    wait_for(&client, Duration::from_secs(5), "removal", |s| {
        !addresses(s).contains(&"weft/shop/loadgen".to_owned())
    })
    .await;
    assert_eq!(
        client.state().last_response.get(ADDRESS_TYPE),
        Some(&(0, 1))
    );

    // A workload this proxy cannot accept is NACKed; it keeps its state.
    reject.store(true, Ordering::SeqCst);
    let before = client.state();
    env.write("extra.yaml", "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: reject-me, namespace: shop, annotations: {weft.dev/client-only: \"true\"}}\nspec: {address: 127.0.2.40}\n");
    wait_for(&client, Duration::from_secs(5), "NACK", |s| s.nacks == 1).await;
    assert_eq!(addresses(&client.state()), addresses(&before));
    let start = Instant::now();
    loop {
        let metrics = http_get(running.metrics_addr, "/metrics");
        if metrics.contains(
            "weft_xds_nacks_total{type_url=\"type.googleapis.com/istio.workload.Address\"} 1",
        ) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "NACK not counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once acceptable again, the next change delivers it (the NACKed
    // resource is resent, not forgotten).
    reject.store(false, Ordering::SeqCst);
    env.write("extra2.yaml", "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: late, namespace: shop, annotations: {weft.dev/client-only: \"true\"}}\nspec: {address: 127.0.2.41}\n");
    wait_for(&client, Duration::from_secs(5), "resend after NACK", |s| {
        addresses(s).contains(&"weft/shop/reject-me".to_owned())
            && addresses(s).contains(&"weft/shop/late".to_owned())
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_and_resyncs_only_the_difference() {
    let env = Env::new();
    let running = weft_control::start(env.options("127.0.0.1:0"))
        .await
        .expect("start");
    let addr = running.xds_addr;
    let client = subscribe(addr, Arc::new(AtomicBool::new(false)));
    wait_for(&client, Duration::from_secs(5), "initial sync", |s| {
        s.synced
    })
    .await;
    let held = client.state();

    // The control plane goes away: the proxy keeps everything.
    running.stop().await;
    wait_for(&client, Duration::from_secs(5), "disconnect noticed", |s| {
        !s.connected
    })
    .await;
    assert_eq!(client.state().resources, held.resources);

    // While it is down, one workload changes; it comes back on the same address.
    let workloads = env.read("workloads.yaml");
    env.write(
        "workloads.yaml",
        &workloads.replace("127.0.2.30", "127.0.2.32"),
    );
    let running = weft_control::start(env.options(&addr.to_string()))
        .await
        .expect("restart");
    wait_for(&client, Duration::from_secs(10), "resync", |s| {
        s.connected
            && s.resources[ADDRESS_TYPE]["weft/shop/loadgen"].version
                != held.resources[ADDRESS_TYPE]["weft/shop/loadgen"].version
    })
    .await;
    // Only the difference came back: one changed workload, nothing removed.
    assert_eq!(
        client.state().last_response.get(ADDRESS_TYPE),
        Some(&(1, 0))
    );
    assert_eq!(addresses(&client.state()).len(), 12);
    running.stop().await;
}

/// Kubernetes ConfigMap mounts swap a `..data` symlink to replace every
/// file at once; the swap is one change.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_style_symlink_swap_is_applied() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    // Lay the config dir out as a ConfigMap mount: files -> ..data/files.
    let v1 = env.config.join("..v1");
    std::fs::create_dir_all(&v1).expect("mkdir");
    for f in ["mesh.yaml", "services.yaml", "workloads.yaml"] {
        std::fs::rename(env.config.join(f), v1.join(f)).expect("move");
        symlink(Path::new("..data").join(f), env.config.join(f)).expect("link");
    }
    symlink("..v1", env.config.join("..data")).expect("link data");
    let running = weft_control::start(env.options("127.0.0.1:0"))
        .await
        .expect("start");
    let client = subscribe(running.xds_addr, Arc::new(AtomicBool::new(false)));
    wait_for(&client, Duration::from_secs(5), "initial sync", |s| {
        s.synced
    })
    .await;
    assert_eq!(addresses(&client.state()).len(), 12);

    // The next version drops loadgen; swap atomically.
    let v2 = env.config.join("..v2");
    std::fs::create_dir_all(&v2).expect("mkdir");
    for f in ["mesh.yaml", "services.yaml"] {
        std::fs::copy(v1.join(f), v2.join(f)).expect("copy");
    }
    let workloads = std::fs::read_to_string(v1.join("workloads.yaml")).expect("read");
    let without: Vec<&str> = workloads
        .split("\n---\n")
        .filter(|d| !d.contains("name: loadgen"))
        .collect();
    std::fs::write(v2.join("workloads.yaml"), without.join("\n---\n")).expect("write");
    symlink("..v2", env.config.join("..data_tmp")).expect("link");
    std::fs::rename(env.config.join("..data_tmp"), env.config.join("..data")).expect("swap");
    wait_for(&client, Duration::from_secs(5), "swap applied", |s| {
        addresses(s).len() == 11
    })
    .await;
    running.stop().await;
}

/// On the mTLS port the config stream needs a client certificate: a node
/// with its node certificate subscribes; a client without one is refused.
/// Gateway configurations (with their private keys) go only to identities
/// of the gateway's namespace, never over plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_config_stream_requires_a_certificate() {
    use weft_ca::authz::{control_identity, node_identity};
    use weft_ca::client::{GrpcCaClient, NodeCredential};
    use weft_ca::tls::client_config;
    use weft_ca::{CertManager, ManagerOptions, TrustBundle};

    let env = Env::new();
    std::fs::copy(demo().join("gateway.yaml"), env.config.join("gateway.yaml")).expect("copy");
    let tokens = env.config.parent().expect("tmp").join("tokens");
    std::fs::write(&tokens, "node-1 node-1-bootstrap-token-0000\n").expect("tokens");
    let mut options = env.options("127.0.0.1:0");
    options.bootstrap_tokens = Some(tokens);
    let running = weft_control::start(options).await.expect("start");
    let root =
        weft_ca::cert::certs_from_pem(&std::fs::read(&running.root_cert).expect("root"), "root")
            .expect("pem");
    let bundle = TrustBundle::new(root).expect("bundle");
    let control = control_identity("cluster.local").expect("id");

    // node-1 gets its node certificate with its bootstrap token.
    let ca = GrpcCaClient::new(
        running.tls_addr,
        bundle.clone(),
        control.clone(),
        NodeCredential::Token("node-1-bootstrap-token-0000".into()),
    )
    .expect("ca client");
    let certs = CertManager::new(Arc::new(ca), ManagerOptions::default());
    let me = node_identity("cluster.local", "node-1").expect("id");
    certs.fetch(&me).await.expect("node certificate");

    let tls = |cert| {
        Arc::new(client_config(cert, bundle.clone(), vec![control.clone()]).expect("tls config"))
    };
    let xds = |transport| {
        XdsClient::start(
            transport,
            ClientOptions {
                node_id: "node-1".into(),
                types: vec![ADDRESS_TYPE.into(), GATEWAY_TYPE.into()],
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
                validator: weft_xds::decode_validator(),
            },
        )
    };
    let with_cert = xds(Transport::Tls(
        running.tls_addr.into(),
        tls(Some(certs.source(&me))),
    ));
    wait_for(&with_cert, Duration::from_secs(5), "sync over mTLS", |s| {
        s.synced
    })
    .await;
    assert_eq!(addresses(&with_cert.state()).len(), 13);

    let without = xds(Transport::Tls(running.tls_addr.into(), tls(None)));
    wait_for(&without, Duration::from_secs(5), "refusal", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("needs a client certificate"))
    })
    .await;
    assert!(without.state().resources.is_empty());

    // Gateway configurations carry private keys: the plaintext stream and
    // identities of other namespaces (node-1's is weft-system's) get none;
    // the gateway's own workload (shop/edge, on node-1) gets its Gateway.
    let gateways = |s: &ClientState| {
        s.resources
            .get(GATEWAY_TYPE)
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(gateways(&with_cert.state()).is_empty());
    let plaintext = xds(Transport::Plaintext(running.xds_addr));
    wait_for(&plaintext, Duration::from_secs(5), "plaintext sync", |s| {
        s.synced
    })
    .await;
    assert_eq!(addresses(&plaintext.state()).len(), 13);
    assert!(gateways(&plaintext.state()).is_empty());
    let edge = weft_core::Identity::new("cluster.local", "shop", "edge").expect("id");
    certs.fetch(&edge).await.expect("the gateway's certificate");
    let gateway = xds(Transport::Tls(
        running.tls_addr.into(),
        tls(Some(certs.source(&edge))),
    ));
    wait_for(&gateway, Duration::from_secs(5), "gateway sync", |s| {
        s.synced
    })
    .await;
    assert_eq!(gateways(&gateway.state()), ["shop/edge"]);
    running.stop().await;
}

/// Waypoints subscribe to weft's own per-service L7 view: hostnames and
/// each port's protocol, which the Workload API does not carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoints_receive_l7_services() {
    use weft_xds::proto::weft::{L7Service, Protocol};
    let env = Env::new();
    let running = weft_control::start(env.options("127.0.0.1:0"))
        .await
        .expect("start");
    let client = XdsClient::start(
        Transport::Plaintext(running.xds_addr),
        ClientOptions {
            node_id: "waypoint-shop".into(),
            types: vec![weft_xds::L7_SERVICE_TYPE.into()],
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            validator: weft_xds::decode_validator(),
        },
    );
    wait_for(&client, Duration::from_secs(5), "sync", |s| s.synced).await;
    let state = client.state();
    let held = &state.resources[weft_xds::L7_SERVICE_TYPE];
    let names: Vec<&str> = held.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "billing/payments",
            "shop/frontend",
            "shop/orders",
            "shop/reviews"
        ]
    );
    let payments =
        L7Service::decode(held["billing/payments"].body.value.as_slice()).expect("decode");
    assert_eq!(payments.hostnames, ["payments.billing.svc.cluster.local"]);
    assert_eq!(payments.ports.len(), 1);
    assert_eq!(
        (
            payments.ports[0].number,
            payments.ports[0].protocol,
            payments.ports[0].target_port
        ),
        (80, Protocol::Http as i32, 8080)
    );
    running.stop().await;
}
