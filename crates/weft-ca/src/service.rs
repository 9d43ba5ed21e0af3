//! The gRPC certificate service (`istio.v1.auth.IstioCertificateService/CreateCertificate`)
//! served over weft's mutual TLS, as `weft control` runs it on port 15012.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prost_types::value::Kind;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};
use weft_core::Identity;
use weft_core::model::Snapshot;

use crate::authn::Authenticator;
pub use crate::authn::PeerInfo;
use crate::authority::Authority;
use crate::authz::{BootstrapTokens, authorize};
use crate::cert::to_pem;
use crate::proto::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::proto::{IstioCertificateRequest, IstioCertificateResponse};
use crate::review::TokenReviewer;
use crate::tls;

/// Metadata key a node proxy sets to ask on behalf of a workload.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Signs CSRs for authorized callers.
pub struct CertificateService {
    authority: Arc<Authority>,
    registry: Arc<ArcSwap<Snapshot>>,
    authn: Authenticator,
}

impl CertificateService {
    /// A service signing with `authority`, authorizing against the
    /// registry's current snapshot and the bootstrap `tokens`.
    pub fn new(
        authority: Arc<Authority>,
        registry: Arc<ArcSwap<Snapshot>>,
        tokens: BootstrapTokens,
    ) -> Self {
        CertificateService {
            authority,
            authn: Authenticator::new(registry.clone(), tokens),
            registry,
        }
    }

    /// Also accepts bearer tokens `reviewer` vouches for (Kubernetes
    /// service-account tokens); `node_agent` is the node agent's
    /// (namespace, service account).
    pub fn with_reviewer(
        mut self,
        reviewer: Arc<dyn TokenReviewer>,
        node_agent: (String, String),
    ) -> Self {
        self.authn = self.authn.with_reviewer(reviewer, node_agent);
        self
    }

    /// Who the service takes callers to be (shared with the config
    /// stream on the same port).
    pub fn authenticator(&self) -> Authenticator {
        self.authn.clone()
    }
}

/// The identity a request asks for: the impersonated identity when set,
/// else the CSR's one URI SAN.
fn wanted_identity(request: &IstioCertificateRequest) -> Result<Identity, Status> {
    let impersonated = request
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        });
    if let Some(id) = impersonated {
        return id.parse().map_err(|e| {
            Status::invalid_argument(format!("metadata {IMPERSONATED_IDENTITY}: {e}"))
        });
    }
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&request.csr).map_err(|e| {
        Status::invalid_argument(format!("certificate signing request is invalid: {e}"))
    })?;
    let uris: Vec<String> = csr
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            rcgen::SanType::URI(uri) => Some(uri.as_str().to_owned()),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => one
            .parse()
            .map_err(|e| Status::invalid_argument(format!("CSR URI SAN: {e}"))),
        _ => Err(Status::invalid_argument(format!(
            "CSR must carry exactly one spiffe:// URI SAN, found {uris:?}"
        ))),
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let started = Instant::now();
        let caller = self
            .authn
            .caller(request.extensions().get::<PeerInfo>(), request.metadata())
            .await;
        let body = request.into_inner();
        let wanted = wanted_identity(&body)?;
        if let Err(denied) = authorize(&self.registry.load(), &caller, &wanted) {
            tracing::warn!(?caller, identity = %wanted, reason = %denied, "certificate request refused");
            return Err(Status::permission_denied(denied.0));
        }
        let ttl = u64::try_from(body.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let chain = self
            .authority
            .sign_csr(&body.csr, &wanted, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(?caller, identity = %wanted, took = ?started.elapsed(), "certificate issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain.iter().map(to_pem).collect(),
        }))
    }
}

/// A server-side TLS connection carrying its [`PeerInfo`] into requests.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The certificate service could not be served.
#[derive(Debug, thiserror::Error)]
#[error("certificate service stopped: {0}")]
pub struct ServeError(#[from] tonic::transport::Error);

/// Accepts TLS connections on `listener` as a stream tonic can serve.
/// Handshakes run concurrently and are bounded by [`HANDSHAKE_TIMEOUT`], so
/// a slow or hostile client cannot stall others. The accept loop ends when
/// the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: ServerConfig,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, io::Error>>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed on the control plane TLS port");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let identity =
                            tls::peer_identity(stream.get_ref().1.peer_certificates()).ok();
                        let _ = tx
                            .send(Ok(TlsConn {
                                stream,
                                info: PeerInfo { remote, identity },
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Serves only the certificate service on `listener` with TLS `config`
/// until `shutdown` (the control plane adds its other services beside it).
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    service: CertificateService,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(tls_incoming(listener, config), shutdown)
        .await?;
    Ok(())
}

impl CertificateService {
    /// The tonic service to add to a server.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }
}
