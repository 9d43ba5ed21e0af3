//! Double HBONE: an end-to-end HBONE tunnel carried inside another, as
//! Istio ambient crosses networks. The caller's node opens the outer
//! tunnel to the destination network's east-west gateway (mTLS with the
//! gateway, `CONNECT <service host>:<port>`); inside it, a second mTLS
//! session — the caller's workload identity against the destination
//! workload's — and a second `CONNECT` with the same authority. The
//! gateway terminates only the outer one: it learns who connects and to
//! which service, and forwards the inner bytes, which it cannot read, to
//! an endpoint's node.
//!
//! The inner session is one TLS connection and one HTTP/2 connection per
//! tunnel (nothing to pool: each outer stream ends at one endpoint).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;
use weft_ca::TrustBundle;
use weft_ca::tls::{CertSource, client_config};
use weft_core::Identity;

use crate::HANDSHAKE_TIMEOUT;
use crate::client::HboneError;
use crate::stream::H2Stream;

/// An end-to-end tunnel inside an outer one.
pub struct Nested {
    io: H2Stream,
}

impl std::fmt::Debug for Nested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nested")
    }
}

/// Opens the inner tunnel over `outer` (an open outer tunnel through the
/// gateway at `via`): mTLS presenting `cert`, accepting only `expected`
/// (the identities of the service's endpoints over there), then
/// `CONNECT target` with `headers`.
pub async fn open<IO>(
    outer: IO,
    via: SocketAddr,
    cert: Arc<dyn CertSource>,
    bundle: TrustBundle,
    expected: Vec<Identity>,
    target: &str,
    headers: HeaderMap,
) -> Result<Nested, HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let inner = |reason: String, status: Option<StatusCode>| HboneError::Inner {
        via,
        target: target.to_owned(),
        reason,
        status,
    };
    let uri: http::Uri = target
        .parse()
        .map_err(|_| HboneError::InvalidTarget(target.to_owned()))?;
    let config = client_config(Some(cert), bundle, expected)?;
    // The name is not checked (the SPIFFE identity is); it only has to be
    // a valid one.
    let name = ServerName::try_from("hbone.inner").map_err(|e| inner(e.to_string(), None))?;
    let tls = within(
        TlsConnector::from(Arc::new(config)).connect(name, outer),
        HANDSHAKE_TIMEOUT,
    )
    .await
    .map_err(|e| inner(format!("mTLS handshake: {e}"), None))?;
    let (sender, mut connection) = within(
        async {
            crate::conn::client_builder()
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(std::io::Error::other)
        },
        HANDSHAKE_TIMEOUT,
    )
    .await
    .map_err(|e| inner(format!("HTTP/2: {e}"), None))?;
    // Ends when the tunnel's stream is done and dropped (or the peer goes).
    tokio::spawn(async move {
        let keepalive = crate::conn::keepalive(connection.ping_pong());
        tokio::select! {
            result = &mut connection => if let Err(e) = result {
                tracing::debug!(%via, error = %e, "inner HBONE connection ended");
            },
            () = keepalive => {}
        }
    });
    let mut request = Request::new(());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    let (response, send) = within(
        async {
            let mut sender = sender.ready().await.map_err(std::io::Error::other)?;
            let (response, send) = sender
                .send_request(request, false)
                .map_err(std::io::Error::other)?;
            Ok((response.await.map_err(std::io::Error::other)?, send))
        },
        HANDSHAKE_TIMEOUT,
    )
    .await
    .map_err(|e| inner(format!("CONNECT: {e}"), None))?;
    if response.status() != StatusCode::OK {
        return Err(inner(
            format!("refused with {}", response.status()),
            Some(response.status()),
        ));
    }
    Ok(Nested {
        io: H2Stream::new(send, response.into_body()),
    })
}

/// `f` within `limit`, a timeout being an error like the others.
async fn within<T>(
    f: impl std::future::Future<Output = std::io::Result<T>>,
    limit: Duration,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

impl Nested {
    /// Splices `plain` (a caller's connection) to this tunnel both ways.
    pub async fn splice<P>(
        &mut self,
        plain: &mut P,
        grace: Option<Duration>,
    ) -> std::io::Result<crate::splice::Spliced>
    where
        P: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        crate::splice::splice(plain, &mut self.io, grace).await
    }
}

/// The far side of a connection: a tunnel to the endpoint's node, or an
/// end-to-end tunnel inside one to an east-west gateway.
#[derive(Debug)]
pub enum Far {
    /// A single tunnel.
    Tunnel(crate::Tunnel),
    /// A tunnel inside a tunnel.
    Nested(Nested),
}

impl Far {
    /// Splices `plain` to this tunnel both ways (see
    /// [`crate::Tunnel::splice`]).
    pub async fn splice<P>(
        &mut self,
        plain: &mut P,
        grace: Option<Duration>,
    ) -> std::io::Result<crate::splice::Spliced>
    where
        P: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        match self {
            Far::Tunnel(t) => t.splice(plain, grace).await,
            Far::Nested(n) => n.splice(plain, grace).await,
        }
    }
}

impl AsyncRead for Far {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Far::Tunnel(t) => Pin::new(t).poll_read(cx, buf),
            Far::Nested(n) => Pin::new(n).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Far {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Far::Tunnel(t) => Pin::new(t).poll_write(cx, buf),
            Far::Nested(n) => Pin::new(n).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Far::Tunnel(t) => Pin::new(t).poll_flush(cx),
            Far::Nested(n) => Pin::new(n).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Far::Tunnel(t) => Pin::new(t).poll_shutdown(cx),
            Far::Nested(n) => Pin::new(n).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for Nested {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Nested {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
