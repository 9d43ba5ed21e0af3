//! A client that behaves as Istio's ztunnel does towards istiod (read
//! from istio/ztunnel: `src/xds/client.rs`, `src/identity/caclient.rs`,
//! `src/tls/control.rs`, `src/identity/auth.rs`): TLS 1.3 with AES-GCM
//! only, ALPN `h2`, no client certificate, the server checked by DNS
//! name (`istiod.istio-system.svc`) against the mesh root — never by
//! SPIFFE ID; `authorization: Bearer <service-account token>` and
//! `clusterid` on every call; certificates asked for with
//! `ImpersonatedIdentity`, 24 h, and the answer checked (leaf first, a
//! root after it, the leaf's URI SAN the identity asked for); delta xDS
//! with its node id and metadata, Address then Authorization, wildcard.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use weft_ca::proto::IstioCertificateRequest;
use weft_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use weft_xds::proto::discovery::Node;

use super::ads::AdsSession;

/// The name ztunnel expects the control plane's certificate to carry.
pub(crate) const ISTIOD: &str = "istiod.istio-system.svc";

/// One ztunnel: where it runs and what it presents.
pub(crate) struct Ztunnel {
    /// The control plane's 15012.
    pub(crate) address: SocketAddr,
    /// The name the server must prove.
    pub(crate) server_name: String,
    /// `root-cert.pem` (the `istio-ca-root-cert` ConfigMap).
    pub(crate) roots: Vec<CertificateDer<'static>>,
    /// The projected service-account token (`istio-token`), if any.
    pub(crate) token: Option<String>,
    /// `POD_NAME`, `POD_NAMESPACE`, `NODE_NAME`, `INSTANCE_IP`.
    pub(crate) pod: (String, String, String, String),
}

impl Ztunnel {
    /// The TLS channel ztunnel builds (hyper-rustls, h2 only).
    pub(crate) fn channel(&self) -> Channel {
        let mut roots = rustls::RootCertStore::empty();
        for r in &self.roots {
            roots.add(r.clone()).expect("root");
        }
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites.retain(|s| {
            matches!(
                s.suite(),
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                    | rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
            )
        });
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let address = self.address;
        let name = ServerName::try_from(self.server_name.clone()).expect("DNS name");
        Endpoint::from_shared(format!("https://{}", self.server_name))
            .expect("endpoint")
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let connector = connector.clone();
                let name = name.clone();
                async move {
                    let tcp = TcpStream::connect(address).await?;
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
    }

    /// `authorization` and `clusterid`, as on every ztunnel call.
    pub(crate) fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("clusterid", "Kubernetes".to_owned())];
        if let Some(t) = &self.token {
            h.push(("authorization", format!("Bearer {t}")));
        }
        h
    }

    /// ztunnel's node: id and metadata.
    pub(crate) fn node(&self) -> Node {
        let (name, ns, node, ip) = &self.pod;
        let field = |v: &str| prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(v.to_owned())),
        };
        Node {
            id: format!("ztunnel~{ip}~{name}.{ns}~{ns}.svc.cluster.local"),
            metadata: Some(prost_types::Struct {
                fields: [
                    ("NAME", name.as_str()),
                    ("NAMESPACE", ns.as_str()),
                    ("INSTANCE_IPS", ip.as_str()),
                    ("NODE_NAME", node.as_str()),
                    ("CLUSTER_ID", "Kubernetes"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), field(v)))
                .collect(),
            }),
            ..Default::default()
        }
    }

    /// A certificate for `identity` (a pod on this node), checked as
    /// ztunnel checks it; the refusal's message otherwise.
    pub(crate) async fn certificate(&self, identity: &str) -> Result<Vec<String>, String> {
        let id: weft_core::Identity = identity.parse().expect("identity");
        let csr = weft_ca::KeyAndCsr::generate(&id).expect("csr");
        let metadata = prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(identity.to_owned())),
                },
            )]
            .into(),
        };
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.csr_pem.clone(),
            validity_duration: 86_400,
            metadata: Some(metadata),
        });
        for (name, value) in self.headers() {
            request
                .metadata_mut()
                .insert(name, value.parse().expect("header"));
        }
        let chain = IstioCertificateServiceClient::new(self.channel())
            .create_certificate(request)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner()
            .cert_chain;
        assert!(
            chain.len() >= 2,
            "a leaf and a root: {} entries",
            chain.len()
        );
        let leaf = weft_ca::cert::certs_from_pem(chain[0].as_bytes(), "leaf").expect("leaf PEM");
        let info = weft_ca::cert::CertInfo::parse(&leaf[0]).expect("leaf");
        assert_eq!(info.uris.first().map(String::as_str), Some(identity));
        Ok(chain)
    }

    /// The config stream, as ztunnel opens it, resuming from `held`.
    pub(crate) async fn subscribe(
        &self,
        held: super::ads::Held,
    ) -> Result<AdsSession, tonic::Status> {
        AdsSession::open(
            self.channel(),
            &self.headers(),
            self.node(),
            &[weft_xds::ADDRESS_TYPE, weft_xds::AUTHORIZATION_TYPE],
            held,
        )
        .await
    }
}
