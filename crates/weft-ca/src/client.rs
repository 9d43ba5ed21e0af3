//! The certificate service client a node proxy uses: gRPC over weft's mTLS
//! to `weft control`, authenticated by a bootstrap token or the node's
//! certificate, asking on behalf of workloads with `ImpersonatedIdentity`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use weft_core::Identity;

use crate::cert::certs_from_pem;
use crate::manager::{CaClient, FetchError, SignFuture};
use crate::proto::IstioCertificateRequest;
use crate::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::service::IMPERSONATED_IDENTITY;
use crate::tls::{self, CertSource, TrustBundle};

/// How long one certificate request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How a node proves who it is to the CA.
#[derive(Clone)]
pub enum NodeCredential {
    /// A bootstrap token (local mode).
    Token(String),
    /// The node's certificate.
    Certificate(Arc<dyn CertSource>),
}

impl std::fmt::Debug for NodeCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeCredential::Token(_) => f.write_str("Token(…)"),
            NodeCredential::Certificate(_) => f.write_str("Certificate"),
        }
    }
}

/// A [`CaClient`] speaking `istio.v1.auth.IstioCertificateService` to
/// `weft control`.
#[derive(Clone, Debug)]
pub struct GrpcCaClient {
    channel: Channel,
    address: SocketAddr,
    token: Option<String>,
}

/// The client could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the certificate service client: {0}")]
pub struct ClientError(String);

impl GrpcCaClient {
    /// A client of the CA at `address` whose server certificate must prove
    /// `server` and chain to `bundle`. Connects lazily, so a CA that is down
    /// now does not stop the proxy from starting.
    pub fn new(
        address: SocketAddr,
        bundle: TrustBundle,
        server: Identity,
        credential: NodeCredential,
    ) -> Result<Self, ClientError> {
        let (cert, token) = match credential {
            NodeCredential::Token(t) => (None, Some(t)),
            NodeCredential::Certificate(c) => (Some(c), None),
        };
        let config = tls::client_config(cert, bundle, vec![server])
            .map_err(|e| ClientError(e.to_string()))?;
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| ClientError(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT);
        let channel = tls_channel(endpoint, address, Arc::new(config));
        Ok(GrpcCaClient {
            channel,
            address,
            token,
        })
    }
}

/// The certificate manager of a proxy (node or waypoint) that proves
/// itself to the control plane's CA at `address` with its node's bootstrap
/// token, and expects the CA to prove the control plane's identity.
/// Certificates are kept in `store`, when given (see
/// [`crate::ManagerOptions::store`]).
pub fn token_cert_manager(
    address: SocketAddr,
    bundle: TrustBundle,
    trust_domain: &str,
    token: String,
    store: Option<std::path::PathBuf>,
) -> Result<crate::CertManager, ClientError> {
    let control =
        crate::authz::control_identity(trust_domain).map_err(|e| ClientError(e.to_string()))?;
    let store = store.map(|dir| crate::manager::CertStore {
        dir,
        trust: bundle.clone(),
    });
    let ca = GrpcCaClient::new(address, bundle, control, NodeCredential::Token(token))?;
    Ok(crate::CertManager::new(
        Arc::new(ca),
        crate::ManagerOptions {
            store,
            ..crate::ManagerOptions::default()
        },
    ))
}

/// A lazily connecting gRPC channel to `address` over weft mTLS (`config`
/// decides which identity the server must prove).
pub fn tls_channel(
    endpoint: Endpoint,
    address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Channel {
    let connector = TlsConnector::from(config);
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(address).await?;
            tcp.set_nodelay(true)?;
            let tls = connector
                .connect(ServerName::IpAddress(address.ip().into()), tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    }))
}

impl CaClient for GrpcCaClient {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> SignFuture<'a> {
        Box::pin(async move {
            let mut request = tonic::Request::new(IstioCertificateRequest {
                csr: csr_pem.to_owned(),
                validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                metadata: Some(Struct {
                    fields: BTreeMap::from([(
                        IMPERSONATED_IDENTITY.to_owned(),
                        Value {
                            kind: Some(Kind::StringValue(identity.to_string())),
                        },
                    )]),
                }),
            });
            if let Some(token) = &self.token {
                let value = format!("Bearer {token}").parse().map_err(|_| {
                    FetchError("bootstrap token has characters not allowed in a header".into())
                })?;
                request.metadata_mut().insert("authorization", value);
            }
            let response = IstioCertificateServiceClient::new(self.channel.clone())
                .create_certificate(request)
                .await
                .map_err(|status| {
                    FetchError(format!(
                        "certificate service at {} answered {:?}: {}",
                        self.address,
                        status.code(),
                        status.message()
                    ))
                })?
                .into_inner();
            let mut chain = Vec::new();
            for pem in &response.cert_chain {
                chain.extend(
                    certs_from_pem(pem.as_bytes(), "certificate service response")
                        .map_err(|e| FetchError(e.to_string()))?,
                );
            }
            Ok(chain)
        })
    }
}
