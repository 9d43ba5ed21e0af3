//! Shared test helpers: a CA in a temporary directory, certificates with
//! chosen validity, and a tiny mTLS echo over real TCP sockets.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use weft_ca::authority::Validity;
use weft_ca::tls::{self, CertSource, Fixed, SpiffeClientVerifier};
use weft_ca::{Authority, CaOptions, TrustBundle};
use weft_core::Identity;

pub fn id(td: &str, ns: &str, sa: &str) -> Identity {
    Identity::new(td, ns, sa).expect("valid identity")
}

pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub authority: Arc<Authority>,
}

impl TestCa {
    pub fn new(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let authority = Authority::load_or_create(&CaOptions {
            dir: dir.path().join("ca"),
            trust_domain: trust_domain.into(),
            workload_ttl: Duration::from_secs(3600),
        })
        .expect("CA starts");
        TestCa {
            dir,
            authority: Arc::new(authority),
        }
    }

    pub fn root(&self) -> CertificateDer<'static> {
        self.authority.trust_bundle()[0].clone()
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(vec![self.root()]).expect("bundle")
    }

    /// A key and a certificate chain for `identity` with explicit validity.
    pub fn issue(&self, identity: &Identity, validity: Validity) -> Issued {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let chain = self
            .authority
            .issue(&key, identity, validity)
            .expect("issued");
        Issued { key, chain }
    }

    pub fn issue_valid(&self, identity: &Identity) -> Issued {
        self.issue(identity, Validity::from_now(Duration::from_secs(3600)))
    }
}

pub struct Issued {
    pub key: KeyPair,
    pub chain: Vec<CertificateDer<'static>>,
}

impl Issued {
    pub fn source(&self) -> Arc<dyn CertSource> {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let signing = tls::provider()
            .key_provider
            .load_private_key(der)
            .expect("signing key");
        Arc::new(Fixed(Arc::new(CertifiedKey::new(
            self.chain.clone(),
            signing,
        ))))
    }
}

pub fn ago(secs: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(secs)
}

pub fn from_now(secs: u64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(secs)
}

/// An mTLS echo server; returns its address. Each connection reports the
/// client identity it saw on `seen` (or the handshake error).
pub async fn echo_server(
    cert: Arc<dyn CertSource>,
    verifier: SpiffeClientVerifier,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>,
) {
    let config = tls::server_config(cert, verifier).expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let who = tls::peer_identity(tls.get_ref().1.peer_certificates())
                            .map(|i| i.to_string())
                            .map_err(|e| e.to_string());
                        let _ = tx.send(who);
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = tls.shutdown().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Connects with mTLS, sends a message, reads the echo; returns the server
/// identity seen.
pub async fn echo_client(
    addr: SocketAddr,
    cert: Option<Arc<dyn CertSource>>,
    bundle: TrustBundle,
    expected: Vec<Identity>,
) -> Result<String, String> {
    let config = tls::client_config(cert, bundle, expected).map_err(|e| e.to_string())?;
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let server = tls::peer_identity(tls.get_ref().1.peer_certificates())
        .map_err(|e| e.to_string())?
        .to_string();
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    if &buf != b"ping" {
        return Err(format!("bad echo {buf:?}"));
    }
    Ok(server)
}

/// Polls `done` every 20 ms until it holds; fails the test after `limit`.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
