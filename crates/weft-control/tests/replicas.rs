//! Several control plane replicas on one cluster (the fake API server;
//! the client is the real kube-rs): they share one CA through the
//! `cacerts` Secret, elect one leader with a Lease — only it writes
//! statuses — and when the leader dies the other takes over within the
//! lease time, while a proxy that was connected to the dead one resumes
//! on the survivor with only the difference pushed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::transport::Endpoint;
use weft_control::Options;
use weft_control::kubernetes::KubeSource;
use weft_kube::leader::Election;
use weft_kube_fake::FakeApiServer;
use weft_xds::proto::discovery::Node;

mod common;
use common::ads::AdsSession;
use common::{namespace, object_until, pod, service, virtual_service};

const LEASE: Duration = Duration::from_secs(2);

async fn replica(fake: &FakeApiServer, dir: &std::path::Path, name: &str) -> weft_control::Running {
    let client = kube::Client::try_from(kube::Config::new(fake.url().parse().expect("url")))
        .expect("client");
    let mut source = KubeSource::new(client, format!("kubernetes {}", fake.url()));
    source.ca_secret = Some("cacerts".into());
    source.election = Some(Election {
        duration: LEASE,
        retry: Duration::from_millis(100),
        ..Election::new("weft-system", "weft-control", name)
    });
    weft_control::start(Options {
        kubernetes: Some(source),
        ..Options::ephemeral(dir.join("none"), dir.join("ca"))
    })
    .await
    .expect("control plane")
}

fn holder(fake: &FakeApiServer) -> Option<String> {
    fake.get(
        "coordination.k8s.io/v1",
        "Lease",
        "weft-system",
        "weft-control",
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

async fn holder_within(fake: &FakeApiServer, limit: Duration, want: Option<&str>) -> String {
    let started = Instant::now();
    loop {
        if let Some(h) = holder(fake)
            && want.is_none_or(|w| w == h)
        {
            return h;
        }
        assert!(
            started.elapsed() < limit,
            "lease holder {:?}, want {want:?}",
            holder(fake)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn described(status: &Value) -> bool {
    status["status"]["validationMessages"]
        .as_array()
        .is_some_and(|m| !m.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_ca_elect_one_writer_and_hand_over_when_it_dies() {
    let fake = FakeApiServer::start().await.expect("fake API server");
    fake.apply(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "weft-system"}}),
    );
    fake.apply(namespace("shop", true));
    fake.apply(service(80));
    fake.apply(pod("reviews-1", "127.0.3.1", true));
    fake.apply(virtual_service(json!({"prefix": "/v1", "exact": "/v1"})));
    let tmp = tempfile::tempdir().expect("tempdir");

    let a = replica(&fake, &tmp.path().join("a"), "a").await;
    let b = replica(&fake, &tmp.path().join("b"), "b").await;

    // One CA: the first replica stored a new root in the Secret, the
    // second signs with it too; its key is on disk 0600.
    let secret = fake
        .get("v1", "Secret", "weft-system", "cacerts")
        .expect("the cacerts Secret");
    assert!(secret["data"]["ca-key.pem"].is_string(), "{secret}");
    let root_a = std::fs::read(&a.root_cert).expect("root a");
    assert_eq!(root_a, std::fs::read(&b.root_cert).expect("root b"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join("b/ca/ca-key.pem"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the CA key is private: {mode:o}");

    // One leader writes the bad object's status.
    let leader = holder_within(&fake, LEASE * 2, None).await;
    object_until(
        &fake,
        ("networking.istio.io/v1", "VirtualService", "reviews"),
        "the VirtualService's status",
        described,
    )
    .await;
    let (leader_run, survivor, survivor_name) = if leader == "a" {
        (a, b, "b")
    } else {
        (b, a, "a")
    };

    // A proxy on the leader holds the workload configuration.
    let node = Node {
        id: "node~127.0.1.1~node-1.weft-system~weft-system.svc.cluster.local".into(),
        ..Default::default()
    };
    let channel = |addr: std::net::SocketAddr| {
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy()
    };
    let types = [weft_xds::ADDRESS_TYPE];
    let mut session = AdsSession::open(
        channel(leader_run.xds_addr),
        &[],
        node.clone(),
        &types,
        Default::default(),
    )
    .await
    .expect("stream to the leader");
    let first = session.next().await;
    assert!(
        first.resources.iter().any(|r| r.name.contains("reviews-1")),
        "{:?}",
        first.resources.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    let held = session.held.clone();
    drop(session);

    // The leader dies; the cluster changes meanwhile.
    leader_run.stop().await;
    let died = Instant::now();
    fake.apply(pod("reviews-2", "127.0.3.2", true));
    fake.apply(virtual_service(json!({"prefix": "/v1"})));

    // The survivor leads within the lease time and writes the status.
    holder_within(&fake, LEASE * 3, Some(survivor_name)).await;
    object_until(
        &fake,
        ("networking.istio.io/v1", "VirtualService", "reviews"),
        "the fixed VirtualService's status, by the new leader",
        |o| o["status"]["conditions"][0]["status"] == "True" && !described(o),
    )
    .await;
    assert!(
        died.elapsed() < LEASE * 3,
        "status writing moved after {:?}",
        died.elapsed()
    );

    // The proxy resumes on the survivor: only what changed comes.
    let mut resumed = AdsSession::open(channel(survivor.xds_addr), &[], node, &types, held.clone())
        .await
        .expect("stream to the survivor");
    let delta = resumed.next().await;
    let before = &held[weft_xds::ADDRESS_TYPE];
    assert!(
        delta.resources.iter().any(|r| r.name.contains("reviews-2")),
        "{delta:?}"
    );
    for r in &delta.resources {
        assert_ne!(
            before.get(&r.name),
            Some(&r.version),
            "{} was resent unchanged",
            r.name
        );
    }
    assert!(delta.removed_resources.is_empty(), "{delta:?}");
    assert!(
        delta.resources.len() < before.len(),
        "{} resources sent for one new pod",
        delta.resources.len()
    );
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cacerts_secret_whose_key_is_not_its_certificates_is_refused() {
    // Two roots; the Secret pairs one's certificate with the other's key
    // (a mistake, or someone with write access to the namespace).
    let tmp = tempfile::tempdir().expect("tempdir");
    let made = |dir: &str| {
        let dir = tmp.path().join(dir);
        weft_ca::Authority::load_or_create(&weft_ca::CaOptions {
            dir: dir.clone(),
            trust_domain: "cluster.local".into(),
            workload_ttl: Duration::from_secs(3600),
        })
        .expect("root");
        (
            std::fs::read_to_string(dir.join("root-cert.pem")).expect("cert"),
            std::fs::read_to_string(dir.join("root-key.pem")).expect("key"),
        )
    };
    let (cert, _) = made("one");
    let (_, other_key) = made("two");
    let fake = FakeApiServer::start().await.expect("fake API server");
    fake.apply(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "cacerts", "namespace": "weft-system"},
        "data": {
            "ca-cert.pem": b64(&cert), "ca-key.pem": b64(&other_key),
            "cert-chain.pem": b64(&cert), "root-cert.pem": b64(&cert)}}),
    );
    let client = kube::Client::try_from(kube::Config::new(fake.url().parse().expect("url")))
        .expect("client");
    let mut source = KubeSource::new(client, format!("kubernetes {}", fake.url()));
    source.ca_secret = Some("cacerts".into());
    let refused = weft_control::start(Options {
        kubernetes: Some(source),
        ..Options::ephemeral(tmp.path().join("none"), tmp.path().join("ca"))
    })
    .await
    .expect_err("a mismatched CA must not start signing");
    let message = refused.to_string();
    assert!(
        message.contains("ca-cert.pem") && message.contains("does not belong"),
        "{message}"
    );
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
