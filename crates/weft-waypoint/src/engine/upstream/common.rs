//! What both HTTP clients of the engine share: the body type, the error
//! of a send, the connector bound, and how a connection to one endpoint
//! is opened.

use std::net::SocketAddr;

use http::{Request, Uri};
use hyper_util::client::legacy::connect::Connect;

/// Why a body could not be read, whatever produced it.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body, whatever produced it.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BodyError>;

/// Any body, boxed as a [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BodyError>,
{
    use http_body_util::BodyExt;
    body.map_err(Into::into).boxed()
}

/// Why a request got no response from an endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No connection to the endpoint could be made.
    #[error("connect: {0}")]
    Connect(String),
    /// The connection (HTTP/1.1) or stream (HTTP/2) failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl SendError {
    /// Whether the endpoint was never reached (retry policies' `connect-failure`).
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// A connector both clients can use.
pub trait Connector:
    Connect
    + tower_service::Service<
        Uri,
        Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        Future: Send,
        Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Connector for T where
    T: Connect
        + tower_service::Service<
            Uri,
            Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
            Future: Send,
            Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The endpoint a request's URI (`http://{ip:port}{path}`) names.
pub(crate) fn endpoint_of(request: &Request<Body>) -> Result<SocketAddr, SendError> {
    request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse().ok())
        .ok_or_else(|| SendError::Connect(format!("{} is not an ip:port", request.uri())))
}

/// A new connection to `endpoint` through `connector`.
pub(crate) async fn connect<C: Connector>(
    connector: &C,
    endpoint: SocketAddr,
) -> Result<C::Response, SendError> {
    let uri: Uri = format!("http://{endpoint}")
        .parse()
        .map_err(|e| SendError::Connect(format!("{endpoint}: {e}")))?;
    let mut connector = connector.clone();
    std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connector, cx))
        .await
        .map_err(|e| SendError::Connect(format!("{endpoint}: {}", e.into())))?;
    tower_service::Service::call(&mut connector, uri)
        .await
        .map_err(|e| SendError::Connect(format!("{endpoint}: {}", e.into())))
}
