//! The engine's HTTP/1.1 connections to its endpoints, kept open and
//! reused: per endpoint, a stack of idle connections (the most recently
//! used on top, so the hot ones stay warm and the rest age out).
//!
//! A connection goes back on the stack when the response body it carried
//! has ended, from inside that body ([`Reusable`]): no task is spawned and
//! no lock taken per request beyond one push and one pop. hyper-util's
//! pooled client, which this replaces for HTTP/1.1, spawns a task per
//! request to wait for the connection to become ready again; in a bare
//! hyper hop that task and its pool bookkeeping were about a fifth of the
//! user CPU per request (docs/benchmarks.md).
//!
//! Limits: at most [`MAX_IDLE_PER_ENDPOINT`] idle connections per
//! endpoint (a connection returned past it is closed), and an idle
//! connection older than [`IDLE_TIMEOUT`] is closed when the stack is
//! next touched. A request that found its pooled connection closed before
//! a byte of it was written moves to the next one, or a new one; once
//! written, a failure is the request's (the retry policy decides).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::common::{Body, Connector, SendError, boxed, connect, endpoint_of};

/// Idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// How long a connection may sit idle before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a request waits for a pooled connection that is still
/// finishing its previous exchange before it gives up on it.
const READY_WAIT: Duration = Duration::from_millis(100);

/// Reused HTTP/1.1 connections over one connector.
#[derive(Clone)]
pub(crate) struct H1Pool<C> {
    connector: C,
    idle: Arc<Idle>,
}

impl<C> std::fmt::Debug for H1Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool").finish_non_exhaustive()
    }
}

/// The idle connections, per endpoint, oldest first.
#[derive(Default)]
struct Idle(Mutex<HashMap<SocketAddr, VecDeque<Parked>>>);

/// A connection waiting for its next request.
struct Parked {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl Parked {
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, VecDeque<Parked>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently parked usable connection to `endpoint`.
    fn take(&self, endpoint: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self.lock();
        let stack = idle.get_mut(&endpoint)?;
        while let Some(parked) = stack.pop_back() {
            if parked.usable(now) {
                return Some(parked.sender);
            }
        }
        None
    }

    /// Parks `sender` for the next request to `endpoint`, closing the
    /// stale ones at the bottom; past the limit it is closed instead.
    fn park(&self, endpoint: SocketAddr, sender: http1::SendRequest<Body>) {
        let now = Instant::now();
        let mut idle = self.lock();
        let stack = idle.entry(endpoint).or_default();
        while stack.front().is_some_and(|p| !p.usable(now)) {
            stack.pop_front();
        }
        if stack.len() < MAX_IDLE_PER_ENDPOINT {
            stack.push_back(Parked { sender, since: now });
        }
    }

    /// Idle connections to `endpoint` (tests).
    #[cfg(test)]
    fn count(&self, endpoint: SocketAddr) -> usize {
        self.lock().get(&endpoint).map_or(0, VecDeque::len)
    }
}

impl<C: Connector> H1Pool<C> {
    pub(crate) fn new(connector: C) -> Self {
        H1Pool {
            connector,
            idle: Arc::default(),
        }
    }

    /// Sends `request` (URI `http://{endpoint}{path}`, `Host` the
    /// service) in origin form on an idle connection to the endpoint, or
    /// a new one.
    pub(crate) async fn send(
        &self,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let endpoint = endpoint_of(&request)?;
        origin_form(&mut request, endpoint);
        while let Some(mut sender) = self.idle.take(endpoint) {
            if !sender.is_ready() {
                match tokio::time::timeout(READY_WAIT, sender.ready()).await {
                    Ok(Ok(())) => {}
                    // Closed, or still busy (a request body the endpoint
                    // stopped reading): leave it.
                    _ => continue,
                }
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.reusable(endpoint, sender, response)),
                Err(mut e) => match e.take_message() {
                    // Closed before a byte was written: the next one.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(endpoint).await?;
        let response = sender.send_request(request).await?;
        Ok(self.reusable(endpoint, sender, response))
    }

    /// A new connection to `endpoint`, its task spawned.
    async fn connect(&self, endpoint: SocketAddr) -> Result<http1::SendRequest<Body>, SendError> {
        let io = connect(&self.connector, endpoint).await?;
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| SendError::Connect(format!("{endpoint}: HTTP/1.1 handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "HTTP/1.1 upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// `response`, whose body parks `sender` once it has ended.
    fn reusable(
        &self,
        endpoint: SocketAddr,
        sender: http1::SendRequest<Body>,
        response: Response<Incoming>,
    ) -> Response<Body> {
        response.map(|body| {
            let mut body = Reusable {
                body,
                back: Some((self.idle.clone(), endpoint, sender)),
            };
            if http_body::Body::is_end_stream(&body.body) {
                body.give_back();
            }
            boxed(body)
        })
    }
}

/// The request as HTTP/1.1 sends it to an endpoint: the path and query
/// alone on the request line (origin form), and a `Host` header (the
/// service's, as the engine set it; the endpoint's when there is none).
fn origin_form(request: &mut Request<Body>, endpoint: SocketAddr) {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    if let Ok(origin) = path.parse::<Uri>() {
        *request.uri_mut() = origin;
    }
    if !request.headers().contains_key(http::header::HOST)
        && let Ok(host) = HeaderValue::from_str(&endpoint.to_string())
    {
        request.headers_mut().insert(http::header::HOST, host);
    }
}

/// A response body that parks its connection once it has ended. Dropped
/// before its end, the connection is not reused (hyper closes it).
struct Reusable {
    body: Incoming,
    back: Option<(Arc<Idle>, SocketAddr, http1::SendRequest<Body>)>,
}

impl Reusable {
    fn give_back(&mut self) {
        if let Some((idle, endpoint, sender)) = self.back.take() {
            idle.park(endpoint, sender);
        }
    }
}

impl http_body::Body for Reusable {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// A backend answering `/N` with N bytes, counting the connections it
    /// accepted; `/close` answers with `Connection: close`.
    async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let path = req.uri().path().trim_start_matches('/').to_owned();
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let mut response = Response::builder().header("x-host", host);
                        let size = if path == "close" {
                            response = response.header("connection", "close");
                            0
                        } else {
                            path.parse::<usize>().unwrap_or(0)
                        };
                        response.body(http_body_util::Full::new(bytes::Bytes::from(vec![
                            b'x';
                            size
                        ])))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn pool() -> H1Pool<HttpConnector> {
        H1Pool::new(HttpConnector::new())
    }

    fn get(endpoint: SocketAddr, path: &str, host: Option<&str>) -> Request<Body> {
        let mut r = Request::builder().uri(format!("http://{endpoint}{path}"));
        if let Some(h) = host {
            r = r.header("host", h);
        }
        r.body(boxed(http_body_util::Empty::<bytes::Bytes>::new()))
            .expect("request")
    }

    async fn body_len(response: Response<Body>) -> usize {
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .len()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_has_ended() {
        let (addr, accepted) = backend().await;
        let pool = pool();
        for size in [0, 10, 100_000, 0, 5] {
            let response = pool
                .send(get(addr, &format!("/{size}"), Some("svc.example")))
                .await
                .expect("send");
            assert_eq!(response.headers()["x-host"], "svc.example");
            assert_eq!(body_len(response).await, size);
            assert_eq!(pool.idle.count(addr), 1, "after /{size}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_their_own_connections_and_all_park() {
        let (addr, accepted) = backend().await;
        let pool = pool();
        let held: Vec<_> =
            futures::future::join_all((0..3).map(|_| pool.send(get(addr, "/100000", None)))).await;
        // Bodies not read yet: nothing parked.
        assert_eq!(pool.idle.count(addr), 0);
        for response in held {
            let response = response.expect("send");
            assert_eq!(response.headers()["x-host"], addr.to_string().as_str());
            assert_eq!(body_len(response).await, 100_000);
        }
        assert_eq!(pool.idle.count(addr), 3);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_does_not_park_its_connection() {
        let (addr, accepted) = backend().await;
        let pool = pool();
        let response = pool.send(get(addr, "/100000", None)).await.expect("send");
        drop(response);
        assert_eq!(pool.idle.count(addr), 0);
        let response = pool.send(get(addr, "/1", None)).await.expect("send");
        assert_eq!(body_len(response).await, 1);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_endpoint_closed_is_replaced() {
        let (addr, accepted) = backend().await;
        let pool = pool();
        let response = pool.send(get(addr, "/close", None)).await.expect("send");
        assert_eq!(body_len(response).await, 0);
        // Parked, but closing: the next request must not fail on it.
        for _ in 0..3 {
            let response = pool.send(get(addr, "/2", None)).await.expect("send");
            assert_eq!(body_len(response).await, 2);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_connect_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let e = pool()
            .send(get(addr, "/", None))
            .await
            .expect_err("nothing listens");
        assert!(e.is_connect(), "{e}");
    }

    #[tokio::test]
    async fn an_idle_connection_past_the_timeout_is_not_handed_out() {
        let (addr, _) = backend().await;
        let pool = pool();
        let fresh = pool.connect(addr).await.expect("connect");
        let stale = pool.connect(addr).await.expect("connect");
        let now = Instant::now();
        let Some(long_ago) = now.checked_sub(IDLE_TIMEOUT) else {
            return; // a machine up for less than the timeout
        };
        pool.idle.lock().entry(addr).or_default().extend([
            Parked {
                sender: fresh,
                since: now,
            },
            Parked {
                sender: stale,
                since: long_ago,
            },
        ]);
        // The stale one is on top; it is passed over for the fresh one.
        assert!(pool.idle.take(addr).is_some());
        assert!(pool.idle.take(addr).is_none());
    }
}
