//! The certificate service client a node proxy uses: gRPC over weft's mTLS
//! to `weft control`, authenticated by a bootstrap token or the node's
//! certificate, asking on behalf of workloads with `ImpersonatedIdentity`.
//!
//! The control plane is reached at a [`ControlAddr`]: an address, or (in
//! a cluster) a host name such as `weft-control.weft-system.svc:15012`,
//! resolved at every connection. A [`Token`] is a string, or a file read
//! at every request (Kubernetes rotates projected service-account tokens
//! in place).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
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

/// Where the control plane listens: a socket address, or a host name and
/// port resolved at every connection (so a Service recreated with a new
/// IP is followed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlAddr {
    host: String,
    port: u16,
}

impl ControlAddr {
    /// The addresses it resolves to now.
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{self} resolves to no address"),
                )
            })
    }
}

impl From<SocketAddr> for ControlAddr {
    fn from(a: SocketAddr) -> Self {
        ControlAddr {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl std::fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for ControlAddr {
    type Err = String;

    /// `host:port`, `a.b.c.d:port` or `[v6]:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a.into());
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected host:port"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{s:?}: the port {port:?} is not a number 0-65535"))?;
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(format!("{s:?}: {host:?} is not a host name"));
        }
        Ok(ControlAddr {
            host: host.to_owned(),
            port,
        })
    }
}

/// A bearer token: given, or read from a file at every use.
#[derive(Clone)]
pub enum Token {
    /// The token itself.
    Value(String),
    /// A file holding it (a projected service-account token).
    File(PathBuf),
}

impl From<String> for Token {
    fn from(t: String) -> Self {
        Token::Value(t)
    }
}

impl From<&str> for Token {
    fn from(t: &str) -> Self {
        Token::Value(t.to_owned())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Value(_) => f.write_str("Token(…)"),
            Token::File(p) => write!(f, "Token({})", p.display()),
        }
    }
}

impl Token {
    /// The token now (a file is read again, whitespace trimmed).
    pub fn current(&self) -> Result<String, String> {
        match self {
            Token::Value(t) => Ok(t.clone()),
            Token::File(p) => std::fs::read_to_string(p)
                .map(|t| t.trim().to_owned())
                .map_err(|e| format!("cannot read the token file {}: {e}", p.display())),
        }
    }

    /// The `authorization: Bearer …` value.
    pub fn header(&self) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, String> {
        format!("Bearer {}", self.current()?)
            .parse()
            .map_err(|_| "the token has characters not allowed in a header".to_owned())
    }
}

/// How a node proves who it is to the CA.
#[derive(Clone)]
pub enum NodeCredential {
    /// A bootstrap token (local mode) or a service-account token.
    Token(Token),
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
    address: ControlAddr,
    token: Option<Token>,
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
        address: impl Into<ControlAddr>,
        bundle: TrustBundle,
        server: Identity,
        credential: NodeCredential,
    ) -> Result<Self, ClientError> {
        let (cert, token) = match credential {
            NodeCredential::Token(t) => (None, Some(t)),
            NodeCredential::Certificate(c) => (Some(c), None),
        };
        let address = address.into();
        let config = tls::client_config(cert, bundle, vec![server])
            .map_err(|e| ClientError(e.to_string()))?;
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| ClientError(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT);
        let channel = tls_channel(endpoint, address.clone(), Arc::new(config));
        Ok(GrpcCaClient {
            channel,
            address,
            token,
        })
    }
}

/// The certificate manager of a proxy (node or waypoint) that proves
/// itself to the control plane's CA at `address` with a token (its node's
/// bootstrap token, or its service-account token), and expects the CA to
/// prove the control plane's identity. Certificates are kept in `store`,
/// when given (see [`crate::ManagerOptions::store`]).
pub fn token_cert_manager(
    address: impl Into<ControlAddr>,
    bundle: TrustBundle,
    trust_domain: &str,
    token: impl Into<Token>,
    store: Option<std::path::PathBuf>,
) -> Result<crate::CertManager, ClientError> {
    let control =
        crate::authz::control_identity(trust_domain).map_err(|e| ClientError(e.to_string()))?;
    let store = store.map(|dir| crate::manager::CertStore {
        dir,
        trust: bundle.clone(),
    });
    let ca = GrpcCaClient::new(
        address,
        bundle,
        control,
        NodeCredential::Token(token.into()),
    )?;
    Ok(crate::CertManager::new(
        Arc::new(ca),
        crate::ManagerOptions {
            store,
            ..crate::ManagerOptions::default()
        },
    ))
}

/// A lazily connecting gRPC channel to `address` over weft mTLS (`config`
/// decides which identity the server must prove; the name connected to
/// is not what is checked).
pub fn tls_channel(
    endpoint: Endpoint,
    address: ControlAddr,
    config: Arc<rustls::ClientConfig>,
) -> Channel {
    let connector = TlsConnector::from(config);
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let connector = connector.clone();
        let address = address.clone();
        async move {
            let address = address.resolve().await?;
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
                let value = token.header().map_err(FetchError)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_addresses_parse_as_operators_write_them() {
        for (text, shown) in [
            ("127.0.0.1:15012", Ok("127.0.0.1:15012")),
            ("[::1]:15012", Ok("[::1]:15012")),
            (
                "weft-control.weft-system.svc:15012",
                Ok("weft-control.weft-system.svc:15012"),
            ),
            ("weft-control", Err("expected host:port")),
            ("weft-control:http", Err("is not a number")),
            ("weft control:15012", Err("is not a host name")),
            (":15012", Err("is not a host name")),
        ] {
            let parsed = text.parse::<ControlAddr>().map(|a| a.to_string());
            match (parsed, shown) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(e), Err(part)) => assert!(e.contains(part), "{text}: {e}"),
                (got, want) => panic!("{text}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_host_name_is_resolved_when_connecting() {
        let a: ControlAddr = "localhost:15012".parse().expect("parse");
        let resolved = a.resolve().await.expect("localhost resolves");
        assert!(resolved.ip().is_loopback() && resolved.port() == 15012);
        let t = Token::File("/nonexistent/token".into());
        assert!(
            t.current()
                .expect_err("no file")
                .contains("/nonexistent/token")
        );
    }
}
