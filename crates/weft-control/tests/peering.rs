//! Two control planes peering over real mTLS, each with its own CA, both
//! intermediates of one shared root: cluster east learns west's exported
//! services and endpoints (and only the namespaces exported to it), keeps
//! them when west's control plane stops and reports them stale, and when
//! west returns the stream resumes with only the differences. A caller
//! that is not a peer's control plane reads nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use weft_control::{Options, Running};
use weft_xds::proto::workload::{Address, Workload, address::Type};
use weft_xds::{ADDRESS_TYPE, ClientOptions, EXPORT_TYPE, Transport, XdsClient};

const TD: &str = "cluster.local";

/// A cluster's configuration directory and CA.
struct Cluster {
    config: PathBuf,
    ca: PathBuf,
}

impl Cluster {
    fn new(base: &Path, root: &Path, name: &str) -> Self {
        let ca = base.join(format!("{name}-ca"));
        weft_ca::authority::create_intermediate(root, &ca, TD, name, Duration::from_secs(86400))
            .expect("intermediate");
        let config = base.join(format!("{name}-config"));
        std::fs::create_dir_all(&config).expect("mkdir");
        Cluster { config, ca }
    }

    fn write(&self, file: &str, text: &str) {
        let tmp = self.config.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.config.join(file)).expect("rename");
    }

    async fn start(&self, tls: Option<std::net::SocketAddr>) -> Running {
        let mut options = Options::ephemeral(self.config.clone(), self.ca.clone());
        if let Some(tls) = tls {
            options.tls_addr = tls;
        }
        weft_control::start(options).await.expect("control plane")
    }
}

const EAST_WEST: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: east-west, namespace: weft-system, labels: {topology.istio.io/network: net-west}}
spec:
  gatewayClassName: weft-east-west
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: east-west, namespace: weft-system}
spec: {address: 192.0.2.10, serviceAccount: east-west, labels: {weft.dev/gateway: \"true\", weft.dev/node: node-1}}
";

fn mesh(cluster: &str, network: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: mesh}}\nspec: {{cluster: {cluster}, network: {network}}}\n"
    )
}

fn remote(name: &str, address: &str, exported: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: RemoteCluster\nmetadata: {{name: {name}}}\nspec: {{address: \"{address}\", exportedNamespaces: [{exported}], staleAfter: 1s}}\n"
    )
}

/// A service `name` in `ns` and its endpoints, as ServiceEntry and
/// WorkloadEntries.
fn service(ns: &str, name: &str, endpoints: &[(&str, &str)], labels: &str) -> String {
    let mut out = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}{labels}}}\nspec:\n  hosts: [{name}.{ns}.svc.cluster.local]\n  addresses: [10.96.0.{}]\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  workloadSelector: {{labels: {{app: {name}}}}}\n",
        name.len()
    );
    for (w, ip) in endpoints {
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {w}, namespace: {ns}}}\nspec: {{address: {ip}, labels: {{app: {name}, weft.dev/node: node-1}}}}\n"
        ));
    }
    out
}

/// The workload `uid` in `running`'s served addresses, if any.
fn served(running: &Running, uid: &str) -> Option<Workload> {
    let set = running.config.resources().borrow().clone();
    let entry = set.of(ADDRESS_TYPE)?.get(uid)?.clone();
    match Address::decode(entry.body.value.as_slice()).ok()?.r#type {
        Some(Type::Workload(w)) => Some(w),
        _ => None,
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_of(running: &Running, cluster: &str) -> Option<weft_control::imports::RemoteStatus> {
    running
        .config
        .status()
        .remote_clusters
        .into_iter()
        .find(|r| r.cluster == cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_share_exported_endpoints_and_survive_an_outage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    weft_ca::authority::create_shared_root(&root, TD).expect("root");
    let east = Cluster::new(tmp.path(), &root, "east");
    let west = Cluster::new(tmp.path(), &root, "west");

    // East first, peering with nobody yet.
    east.write("mesh.yaml", &mesh("east", "net-east"));
    east.write(
        "reviews.yaml",
        &service("shop", "reviews", &[("reviews-east", "10.1.0.5")], ""),
    );
    let east_cp = east.start(None).await;

    // West exports shop (not billing, not its cluster-local ledger) to east.
    west.write("mesh.yaml", &mesh("west", "net-west"));
    west.write(
        "reviews.yaml",
        &service("shop", "reviews", &[("reviews-west", "10.2.0.5")], ""),
    );
    west.write(
        "ledger.yaml",
        &service(
            "shop",
            "ledger",
            &[("ledger-west", "10.2.0.6")],
            ", labels: {weft.dev/cluster-local: \"true\"}",
        ),
    );
    west.write(
        "billing.yaml",
        &service("billing", "pay", &[("pay-west", "10.2.0.7")], ""),
    );
    west.write(
        "peer.yaml",
        &remote("east", &east_cp.tls_addr.to_string(), "shop"),
    );
    west.write("east-west.yaml", EAST_WEST);
    let west_cp = west.start(None).await;
    let west_tls = west_cp.tls_addr;

    // East peers with west: west's reviews endpoint joins east's service.
    east.write("peer.yaml", &remote("west", &west_tls.to_string(), "shop"));
    until("east imports west's reviews endpoint", || {
        served(&east_cp, "remote/west/shop/reviews-west").is_some()
    })
    .await;
    let w = served(&east_cp, "remote/west/shop/reviews-west").expect("imported");
    assert_eq!(w.cluster_id, "west");
    assert_eq!(w.network, "net-west");
    // Reached through west's east-west gateway, which east knows (and
    // whose identity it can check) though its namespace is not exported.
    let gateway = w.network_gateway.expect("network gateway");
    assert_eq!(gateway.hbone_mtls_port, 15008);
    let gw = served(&east_cp, "remote/west/weft-system/east-west").expect("gateway imported");
    assert_eq!(gw.addresses, [vec![192, 0, 2, 10]]);
    assert_eq!(gw.service_account, "east-west");
    assert_eq!(
        w.services.keys().collect::<Vec<_>>(),
        ["shop/reviews.shop.svc.cluster.local"]
    );
    let local = served(&east_cp, "weft/shop/reviews-east").expect("east's own");
    assert_eq!(
        (local.cluster_id.as_str(), local.network.as_str()),
        ("east", "net-east")
    );
    // Only what west exports to east.
    assert!(served(&east_cp, "remote/west/shop/ledger-west").is_none());
    assert!(served(&east_cp, "remote/west/billing/pay-west").is_none());
    // West follows east too (peering is mutual; east exports shop to it).
    until("west imports east's reviews endpoint", || {
        served(&west_cp, "remote/east/shop/reviews-east").is_some()
    })
    .await;
    // The status is refreshed every second, apart from the import.
    until("east reports west connected, with what it exports", || {
        status_of(&east_cp, "west")
            .is_some_and(|s| s.connected && !s.stale && (s.services, s.endpoints) == (1, 1))
    })
    .await;

    // A caller that is no peer's control plane reads nothing exported,
    // even naming a peer's cluster.
    {
        let bundle = weft_ca::TrustBundle::new(
            weft_ca::cert::certs_from_pem(
                &std::fs::read(root.join("root-cert.pem")).expect("root"),
                "root-cert.pem",
            )
            .expect("pem"),
        )
        .expect("bundle");
        let config = weft_ca::tls::client_config(
            None,
            bundle,
            vec![weft_ca::authz::control_identity(TD).expect("id")],
        )
        .expect("tls");
        let client = XdsClient::start(
            Transport::Tls(west_tls.into(), Arc::new(config)),
            ClientOptions {
                node_id: "remote-cluster~east".into(),
                types: vec![EXPORT_TYPE.into()],
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
                validator: weft_xds::decode_validator(),
            },
        );
        let mut states = client.watch();
        let state = tokio::time::timeout(
            Duration::from_secs(10),
            states.wait_for(|s| s.synced || s.last_error.is_some()),
        )
        .await
        .expect("answered")
        .expect("state")
        .clone();
        let held = state.resources.get(EXPORT_TYPE).map_or(0, |r| r.len());
        assert_eq!(held, 0, "an anonymous caller read exports: {state:?}");
    }

    // West's control plane stops: east keeps west's endpoints, and says
    // they are stale once staleAfter (1s) passes.
    west_cp.stop().await;
    until("east reports west stale", || {
        status_of(&east_cp, "west").is_some_and(|s| !s.connected && s.stale)
    })
    .await;
    assert!(served(&east_cp, "remote/west/shop/reviews-west").is_some());

    // West returns with one more endpoint: the stream resumes and sends
    // only that.
    west.write(
        "reviews.yaml",
        &service(
            "shop",
            "reviews",
            &[("reviews-west", "10.2.0.5"), ("reviews-west-2", "10.2.0.8")],
            "",
        ),
    );
    let west_cp = west.start(Some(west_tls)).await;
    until("east imports west's new endpoint", || {
        served(&east_cp, "remote/west/shop/reviews-west-2").is_some()
    })
    .await;
    until(
        "east reports west connected again, with both endpoints",
        || status_of(&east_cp, "west").is_some_and(|s| s.connected && !s.stale && s.endpoints == 2),
    )
    .await;
    let status = status_of(&east_cp, "west").expect("status");
    assert_eq!(
        status.last_update,
        Some((1, 0)),
        "only the difference: {status:?}"
    );

    // East stops peering: west's endpoints leave east's addresses.
    std::fs::remove_file(east.config.join("peer.yaml")).expect("rm");
    until("east forgets west", || {
        served(&east_cp, "remote/west/shop/reviews-west").is_none()
    })
    .await;
    west_cp.stop().await;
    east_cp.stop().await;
}
