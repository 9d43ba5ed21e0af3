//! # weft-testkit
//!
//! What weft's integration tests keep building: a mesh in one process — a
//! control plane on ephemeral loopback ports over a YAML configuration,
//! and node proxies `node-1`, `node-2`, … on 127.0.N.1 with their
//! bootstrap tokens — and sample apps on chosen addresses. Test support
//! only, never part of the product.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

/// A control plane and node proxies over one configuration.
pub struct TestMesh {
    /// The running control plane.
    pub control: weft_control::Running,
    /// Node proxies, `node-1` first.
    pub nodes: Vec<weft_node::NodeProxy>,
    /// The roots proxies trust.
    pub roots: Vec<CertificateDer<'static>>,
    _tmp: tempfile::TempDir,
}

impl std::fmt::Debug for TestMesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestMesh")
            .field("control", &self.control.xds_addr)
            .finish_non_exhaustive()
    }
}

/// Node N's bootstrap token.
pub fn token(n: u8) -> String {
    format!("node-{n}-token-0123456789")
}

/// How to start a [`TestMesh`] beyond its configuration.
pub struct Setup {
    /// How many nodes (`node-1` … `node-N`).
    pub nodes: u8,
    /// Node N's metrics address (default: an ephemeral port on 127.0.N.1).
    pub node_metrics: fn(u8) -> SocketAddr,
    /// Changes to the control plane's options.
    pub control: Box<dyn FnOnce(&mut weft_control::Options)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            nodes: 1,
            node_metrics: |n| SocketAddr::from(([127, 0, n, 1], 0)),
            control: Box::new(|_| {}),
        }
    }
}

impl TestMesh {
    /// A control plane over `yaml` and `nodes` node proxies.
    pub async fn start(yaml: &str, nodes: u8) -> TestMesh {
        TestMesh::start_with(
            yaml,
            Setup {
                nodes,
                ..Setup::default()
            },
        )
        .await
    }

    /// As [`TestMesh::start`], set up as `setup` says.
    pub async fn start_with(yaml: &str, setup: Setup) -> TestMesh {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("config");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("mesh.yaml"), yaml).expect("config");
        let tokens = tmp.path().join("tokens");
        let lines: String = (1..=setup.nodes)
            .map(|n| format!("node-{n} {}\n", token(n)))
            .collect();
        std::fs::write(&tokens, lines).expect("tokens");
        let mut options = weft_control::Options {
            bootstrap_tokens: Some(tokens),
            ..weft_control::Options::ephemeral(dir, tmp.path().join("ca"))
        };
        (setup.control)(&mut options);
        let control = weft_control::start(options).await.expect("control plane");
        let roots = weft_ca::cert::certs_from_pem(
            &std::fs::read(&control.root_cert).expect("root"),
            "root",
        )
        .expect("pem");
        let mut nodes = Vec::new();
        for n in 1..=setup.nodes {
            nodes.push(
                weft_node::start(weft_node::NodeOptions {
                    attach_socket: None,
                    state_dir: None,
                    node: format!("node-{n}"),
                    trust_domain: "cluster.local".into(),
                    xds_addr: Some(control.xds_addr),
                    ca_addr: control.tls_addr.into(),
                    roots: roots.clone(),
                    token: token(n).into(),
                    admin_addr: SocketAddr::from(([127, 0, n, 1], 0)),
                    metrics_addr: (setup.node_metrics)(n),
                    connect_timeout: Duration::from_secs(1),
                })
                .await
                .expect("node"),
            );
        }
        TestMesh {
            control,
            nodes,
            roots,
            _tmp: tmp,
        }
    }

    /// The configuration file the control plane watches (rewrite it to
    /// change the configuration).
    pub fn config_file(&self) -> std::path::PathBuf {
        self._tmp.path().join("config").join("mesh.yaml")
    }

    /// Stops the nodes, then the control plane.
    pub async fn stop(self) {
        for n in self.nodes {
            n.stop();
        }
        self.control.stop().await;
    }
}

/// The sample app `name` on `addr`.
pub async fn app(addr: &str, name: &str) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind app {addr}: {e}"));
    tokio::spawn(weft_sample_app::serve_http(
        listener,
        weft_sample_app::AppConfig {
            name: name.into(),
            ..weft_sample_app::AppConfig::default()
        },
        std::future::pending(),
    ));
}
