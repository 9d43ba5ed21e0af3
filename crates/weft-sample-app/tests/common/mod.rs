//! Helpers shared by the integration tests: a server on an ephemeral port and
//! HTTP/1.1 and h2c clients.

#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use weft_sample_app::{AppConfig, AppError, serve_http};

/// Hang guard for single requests; never used to assert speed.
pub(crate) const HANG_GUARD: Duration = Duration::from_secs(30);

/// Which protocol a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    /// HTTP/1.1.
    H1,
    /// HTTP/2 with prior knowledge over cleartext.
    H2c,
}

/// Both protocols, for tests that must pass on each.
pub(crate) const PROTOS: [Proto; 2] = [Proto::H1, Proto::H2c];

impl Proto {
    pub(crate) fn version(self) -> Version {
        match self {
            Proto::H1 => Version::HTTP_11,
            Proto::H2c => Version::HTTP_2,
        }
    }
}

/// A client of `proto` with request body type `B`.
pub(crate) fn client_with<B>(proto: Proto) -> Client<HttpConnector, B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = Client::builder(TokioExecutor::new());
    if proto == Proto::H2c {
        builder.http2_only(true);
    }
    builder.build_http()
}

/// A client of `proto` sending buffered bodies.
pub(crate) fn client(proto: Proto) -> Client<HttpConnector, Full<Bytes>> {
    client_with(proto)
}

/// A sample app running on `127.0.0.1:<ephemeral>`.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AppError>>,
}

impl TestServer {
    /// Binds the listener, then spawns `serve_http`: connecting works at once.
    pub(crate) async fn start(config: AppConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_http(listener, config, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            task,
        }
    }

    pub(crate) fn uri(&self, path: &str) -> Uri {
        format!("http://{}{}", self.addr, path)
            .parse()
            .expect("valid uri")
    }

    /// Triggers shutdown without waiting for it.
    pub(crate) fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Whether `serve_http` has returned.
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Triggers shutdown and waits (generously) for `serve_http` to return.
    pub(crate) async fn stop(mut self) -> Result<(), AppError> {
        self.trigger_shutdown();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("serve_http did not return after shutdown")
            .expect("server task panicked")
    }
}

/// Waits until connecting to `addr` is refused, i.e. the server has closed
/// its listener. No sleeping: the server task only needs to be scheduled.
pub(crate) async fn wait_until_refused(addr: SocketAddr) {
    for _ in 0..10_000 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{addr} still accepts connections after shutdown");
}

/// Sends `req` and collects the whole response body.
pub(crate) async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (http::response::Parts, Bytes) {
    let response: Response<_> = tokio::time::timeout(HANG_GUARD, client.request(req))
        .await
        .expect("request hung")
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(HANG_GUARD, body.collect())
        .await
        .expect("body hung")
        .expect("body failed")
        .to_bytes();
    (parts, body)
}

/// `GET uri`, returning the response parts and body.
pub(crate) async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
) -> (http::response::Parts, Bytes) {
    let req = Request::get(uri)
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(client, req).await
}

/// A request body fed chunk by chunk from the test, to observe streaming.
#[derive(Debug)]
pub(crate) struct ChunkBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChunkBody {
    /// A body and the sender for its chunks; dropping the sender ends the body.
    pub(crate) fn new() -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Self { rx })
    }
}

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}
