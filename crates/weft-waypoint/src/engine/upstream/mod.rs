//! How the engine reaches endpoints: an HTTP/1.1 client (reused
//! connections, [`h1`]) and an HTTP/2 client (one multiplexed connection per
//! endpoint, [`H2Pool`]) over one connector — plain TCP here, HBONE
//! tunnels from the fronts ([`Upstream::over`] takes any connector), or any
//! other [`Transport`] (tests answer without sockets).
//!
//! The engine hands over a request whose URI names the endpoint
//! (`http://{ip:port}{path}`) and whose `Host` header names the service.
//! HTTP/1.1 sends that as is (origin form, `Host` kept). HTTP/2 has no
//! `Host` line: the request carries `:authority`, which must be the
//! service's host as the client asked for it, never the endpoint's address
//! (a backend, or another weft, compares the two and refuses a request
//! where they disagree): the endpoint picks the connection, the `Host`
//! header becomes `:authority`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

mod common;
mod h1;

pub use common::{Body, BodyError, Connector, SendError, boxed};
use common::{connect, endpoint_of};
use h1::H1Pool;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A response on its way.
pub type ResponseFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, SendError>> + Send>>;

/// Something that sends a request to the endpoint its URI names.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` (URI `http://{endpoint}{path}`) over HTTP/2 when
    /// `http2`, else HTTP/1.1.
    fn send(&self, request: Request<Body>, http2: bool) -> ResponseFuture;
}

/// The engine's way to its endpoints.
#[derive(Clone)]
pub struct Upstream(Arc<dyn Transport>);

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

impl Upstream {
    /// Plain TCP clients over `connector`.
    pub fn plain(connector: HttpConnector) -> Self {
        Upstream::over(connector)
    }

    /// HTTP/1.1 and HTTP/2 clients over `connector` (plain TCP, HBONE).
    pub fn over<C: Connector>(connector: C) -> Self {
        Upstream(Arc::new(Clients::new(connector)))
    }

    /// Any other transport.
    pub fn custom(transport: impl Transport) -> Self {
        Upstream(Arc::new(transport))
    }

    /// Sends `request` (URI `http://{endpoint}{path}`) over HTTP/2 when
    /// `http2`, else HTTP/1.1.
    pub fn request(&self, request: Request<Body>, http2: bool) -> ResponseFuture {
        self.0.send(request, http2)
    }
}

/// HTTP/1.1 and HTTP/2 clients over one connector.
#[derive(Clone, Debug)]
pub struct Clients<C> {
    h1: H1Pool<C>,
    h2: H2Pool<C>,
}

impl<C: Connector> Clients<C> {
    fn new(connector: C) -> Self {
        Clients {
            h1: H1Pool::new(connector.clone()),
            h2: H2Pool {
                connector,
                conns: Arc::default(),
            },
        }
    }
}

impl<C: Connector> Transport for Clients<C> {
    fn send(&self, request: Request<Body>, http2: bool) -> ResponseFuture {
        if http2 {
            let pool = self.h2.clone();
            Box::pin(async move { pool.send(request).await.map(|r| r.map(boxed)) })
        } else {
            let pool = self.h1.clone();
            Box::pin(async move { pool.send(request).await })
        }
    }
}

/// One HTTP/2 connection per endpoint, shared by all requests to it;
/// a closed one is replaced on the next request.
#[derive(Clone)]
struct H2Pool<C> {
    connector: C,
    conns: Arc<Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>>,
}

impl<C> std::fmt::Debug for H2Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool").finish_non_exhaustive()
    }
}

impl<C: Connector> H2Pool<C> {
    async fn send(&self, mut request: Request<Body>) -> Result<Response<Incoming>, SendError> {
        let endpoint = endpoint_of(&request)?;
        h2_form(&mut request);
        let mut sender = self.sender(endpoint).await?;
        sender.ready().await?;
        Ok(sender.send_request(request).await?)
    }

    /// The open connection to `endpoint`, or a new one.
    async fn sender(&self, endpoint: SocketAddr) -> Result<http2::SendRequest<Body>, SendError> {
        let open = self
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&endpoint)
            .filter(|s| !s.is_closed())
            .cloned();
        if let Some(sender) = open {
            return Ok(sender);
        }
        let io = connect(&self.connector, endpoint).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(format!("{endpoint}: HTTP/2 handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "HTTP/2 upstream connection ended");
            }
        });
        let mut conns = self
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        conns.retain(|_, s| !s.is_closed());
        conns.insert(endpoint, sender.clone());
        Ok(sender)
    }
}

/// Rewrites an endpoint-addressed request into the form HTTP/2 sends: the
/// URI's authority (`:authority`) is the `Host` header, which is removed.
/// Without a usable `Host` the endpoint stays the authority.
fn h2_form(request: &mut Request<Body>) {
    let Some(host) = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
    else {
        return;
    };
    let mut parts = request.uri().clone().into_parts();
    parts.authority = Some(host);
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
        request.headers_mut().remove(http::header::HOST);
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<Body> {
        let mut r = Request::builder().uri(uri);
        if let Some(h) = host {
            r = r.header("host", h);
        }
        let empty = http_body_util::Empty::<bytes::Bytes>::new();
        r.body(empty.map_err(|never| match never {}).boxed())
            .expect("request")
    }

    #[test]
    fn http2_carries_the_service_host_as_authority() {
        let cases = [
            // (uri, host, want uri, host header left)
            (
                "http://10.0.0.5:8080/a?b=1",
                Some("shop.example"),
                "http://shop.example/a?b=1",
                false,
            ),
            (
                "http://10.0.0.5:8080/",
                Some("reviews.shop:9080"),
                "http://reviews.shop:9080/",
                false,
            ),
            (
                "http://10.0.0.5:8080/x",
                None,
                "http://10.0.0.5:8080/x",
                false,
            ),
            // Not an authority: left as is (the engine refused such hosts
            // long before; this is the last line).
            (
                "http://10.0.0.5:8080/x",
                Some("a b"),
                "http://10.0.0.5:8080/x",
                true,
            ),
        ];
        for (uri, host, want, host_left) in cases {
            let mut r = request(uri, host);
            h2_form(&mut r);
            assert_eq!(r.uri().to_string(), want, "{uri} {host:?}");
            assert_eq!(
                r.headers().contains_key("host"),
                host_left,
                "{uri} {host:?}"
            );
        }
    }
}
