//! One downstream HTTP connection, from its first byte to its end, on the
//! gateway's listeners and the plain HTTP front.
//!
//! The first bytes tell the protocol: the HTTP/2 connection preface means
//! HTTP/2 with prior knowledge (h2c, or h2 inside TLS), served by hyper as
//! it is; anything else is HTTP/1.1. hyper holds an 8 KiB read buffer and
//! an 8 KiB header write buffer for as long as an HTTP/1.1 connection
//! lives, busy or idle. So an HTTP/1.1 connection is *parked* as soon as
//! it has answered its requests and waits for the next head: hyper is
//! asked to finish (which closes only an idle connection, and tells the
//! client nothing, since no response is being written), taken apart, and
//! the socket waits for its next byte holding no buffer at all (over TLS,
//! one byte is read through rustls, which may hold decrypted bytes the
//! socket no longer shows). That byte
//! starts a fresh hyper connection, with whatever hyper had already read
//! put back in front of the socket. An idle keep-alive connection costs
//! its socket and one small task, and the memory of connections comes
//! from requests in flight, not from connections open, as in HAProxy and
//! nginx. The price is a hyper connection set up per request on a busy
//! keep-alive connection (`bench/l7` measures it).
//!
//! Only a hyper connection that has answered a request is parked: before
//! its first request hyper would take the ask to finish as "answer this
//! one with `Connection: close`". A request head that had arrived in part
//! when the connection was parked is handed to the next hyper connection
//! at once, which is not parked before it answers, so a client that stalls
//! mid-head still meets hyper's header timeout (restarted once, when the
//! head's first bytes came).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::engine::upstream::Body;
use crate::fronts::admission::{Activity, Tracked};

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What serving one request returns: a response whose body keeps the
/// request in flight ([`Activity`]) until it is sent.
pub type Reply = Pin<Box<dyn Future<Output = Result<Response<Tracked<Body>>, Infallible>> + Send>>;

/// A transport that can wait for its next bytes holding no buffer.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would not block: bytes, the end of the stream or
    /// an error. `Some(byte)`: the transport had to read to know, and this
    /// is the byte it read (it goes in front of the next read).
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<u8>>>;
}

impl Transport for TcpStream {
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<u8>>> {
        self.poll_read_ready(cx).map_ok(|()| None)
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<u8>>> {
        // rustls may hold decrypted bytes the socket no longer shows, so
        // the socket's readiness is not enough: read one byte through TLS.
        let mut one = [0u8; 1];
        let mut buf = ReadBuf::new(&mut one);
        match Pin::new(self).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().first().copied())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The protocol settings of one listener.
#[derive(Clone, Debug)]
pub struct Protocols {
    /// HTTP/1.1.
    pub h1: http1::Builder,
    /// HTTP/2.
    pub h2: http2::Builder<TokioExecutor>,
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols {
            h1: http1::Builder::new(),
            h2: http2::Builder::new(TokioExecutor::new()),
        }
    }
}

/// How a downstream connection ended.
#[derive(Debug)]
pub enum Ended<W> {
    /// The client closed it, or HTTP ended it (`Connection: close`,
    /// HTTP/1.0, a refused request head, a protocol error), with the error
    /// if there was one.
    Closed(Option<Box<dyn std::error::Error + Send + Sync>>),
    /// `stop` resolved first, with this; the connection was finished
    /// gracefully (requests in flight answered within the grace period).
    Stopped(W),
}

/// Serves `io` until it ends or `stop` resolves; `handle` answers each
/// request, and `activity` is how this connection tells it is idle.
pub async fn serve<T, F, W>(
    mut io: T,
    handle: F,
    protocols: &Protocols,
    activity: &Activity,
    stop: impl Future<Output = W>,
    grace: Duration,
) -> Ended<W>
where
    T: Transport,
    F: Fn(Request<Incoming>) -> Reply + Clone + Send + Sync + Unpin + 'static,
{
    let mut stop = std::pin::pin!(stop);
    let mut head = [0u8; PREFACE.len()];
    let mut got = 0;
    let h2 = loop {
        let read = tokio::select! {
            biased;
            w = &mut stop => return Ended::Stopped(w),
            r = io.read(&mut head[got..]) => r,
        };
        match read {
            Ok(0) => return Ended::Closed(None),
            Ok(n) => got += n,
            Err(e) => return Ended::Closed(Some(e.into())),
        }
        if head[..got] != PREFACE[..got] {
            break false;
        }
        if got == PREFACE.len() {
            break true;
        }
    };
    let io = Prefixed {
        front: Bytes::copy_from_slice(&head[..got]),
        io,
    };
    if h2 {
        serve_h2(io, handle, protocols, stop, grace).await
    } else {
        serve_h1(io, handle, protocols, activity, stop, grace).await
    }
}

async fn serve_h2<T, F, W>(
    io: Prefixed<T>,
    handle: F,
    protocols: &Protocols,
    mut stop: Pin<&mut impl Future<Output = W>>,
    grace: Duration,
) -> Ended<W>
where
    T: Transport,
    F: Fn(Request<Incoming>) -> Reply + Clone + Send + Sync + Unpin + 'static,
{
    // Boxed, so that the tasks of HTTP/1.1 connections do not keep room
    // for it.
    let mut conn = Box::pin(
        protocols
            .h2
            .serve_connection(TokioIo::new(io), service_fn(handle)),
    );
    tokio::select! {
        biased;
        r = conn.as_mut() => Ended::Closed(r.err().map(Into::into)),
        w = stop.as_mut() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(grace, conn).await;
            Ended::Stopped(w)
        }
    }
}

async fn serve_h1<T, F, W>(
    io: Prefixed<T>,
    handle: F,
    protocols: &Protocols,
    activity: &Activity,
    mut stop: Pin<&mut impl Future<Output = W>>,
    grace: Duration,
) -> Ended<W>
where
    T: Transport,
    F: Fn(Request<Incoming>) -> Reply + Clone + Send + Sync + Unpin + 'static,
{
    let mut io = io;
    loop {
        // Parked only once it has answered a request (see the module's
        // comment).
        let before = activity.requests();
        // Boxed, so that a parked connection's task does not keep room for
        // it.
        let mut conn = Box::new(
            protocols
                .h1
                .serve_connection(TokioIo::new(io), service_fn(handle.clone())),
        );
        let mut parking = false;
        loop {
            // `Ready(None)`: it has answered and waits for the next head.
            let polled = std::future::poll_fn(|cx| match conn.poll_without_shutdown(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending if !parking && activity.requests() > before && activity.idle() => {
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            });
            tokio::select! {
                biased;
                r = polled => match r {
                    None => {
                        Pin::new(&mut *conn).graceful_shutdown();
                        parking = true;
                    }
                    Some(Err(e)) => return Ended::Closed(Some(e.into())),
                    Some(Ok(())) if parking => break,
                    Some(Ok(())) => {
                        // HTTP ended the connection; hyper left the socket
                        // to us.
                        let mut io = conn.into_parts().io.into_inner();
                        let _ = tokio::time::timeout(grace, io.shutdown()).await;
                        return Ended::Closed(None);
                    }
                },
                w = stop.as_mut() => {
                    Pin::new(&mut *conn).graceful_shutdown();
                    let finished = tokio::time::timeout(
                        grace,
                        std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)),
                    )
                    .await;
                    if let Ok(Ok(())) = finished {
                        let mut io = conn.into_parts().io.into_inner();
                        let _ = tokio::time::timeout(grace, io.shutdown()).await;
                    }
                    return Ended::Stopped(w);
                }
            }
        }
        let http1::Parts {
            io: tokio_io,
            read_buf,
            ..
        } = conn.into_parts();
        let mut inner = tokio_io.into_inner();
        if !read_buf.is_empty() {
            // Read by hyper, not yet a whole request head: it goes first.
            inner.put_back(read_buf);
        } else if inner.front.is_empty() {
            // Parked: nothing held but the socket (an empty `read_buf`
            // still holds hyper's whole buffer).
            drop(read_buf);
            tokio::select! {
                biased;
                w = stop.as_mut() => return Ended::Stopped(w),
                r = std::future::poll_fn(|cx| inner.io.poll_wake(cx)) => match r {
                    Ok(None) => {}
                    Ok(Some(byte)) => inner.put_back(Bytes::copy_from_slice(&[byte])),
                    Err(e) => return Ended::Closed(Some(e.into())),
                }
            }
        }
        io = inner;
    }
}

/// A transport with bytes put back in front of it.
struct Prefixed<T> {
    front: Bytes,
    io: T,
}

impl<T> Prefixed<T> {
    /// Puts `bytes` (read before what is still in front) back in front.
    fn put_back(&mut self, bytes: Bytes) {
        self.front = if self.front.is_empty() {
            bytes
        } else {
            let mut both = BytesMut::with_capacity(bytes.len() + self.front.len());
            both.extend_from_slice(&bytes);
            both.extend_from_slice(&self.front);
            both.freeze()
        };
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.front.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.front.len().min(buf.remaining());
        buf.put_slice(&self.front[..n]);
        self.front.advance(n);
        if self.front.is_empty() {
            // Give the allocation back.
            self.front = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::Full;
    use tokio::net::TcpListener;

    use super::*;
    use crate::engine::upstream::boxed;

    /// Answers "ok" to every request, counting it in `activity`.
    fn ok(
        activity: Arc<Activity>,
    ) -> impl Fn(Request<Incoming>) -> Reply + Clone + Send + Sync + Unpin + 'static {
        move |_req: Request<Incoming>| -> Reply {
            let in_flight = activity.request();
            Box::pin(async move {
                let body = boxed(Full::new(Bytes::from_static(b"ok")));
                Ok(Response::new(Tracked::new(body, in_flight)))
            })
        }
    }

    /// Serves every connection on a loopback listener, answering "ok" to
    /// each request; hyper's HTTP/1.1 header timeout is `header_timeout`.
    async fn server(header_timeout: Duration) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let mut protocols = Protocols::default();
        protocols
            .h1
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout);
        let protocols = Arc::new(protocols);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.expect("accept");
                let protocols = protocols.clone();
                tokio::spawn(async move {
                    let activity = Arc::new(Activity::new());
                    let handle = ok(activity.clone());
                    let never = std::future::pending::<()>();
                    serve(stream, handle, &protocols, &activity, never, Duration::ZERO).await
                });
            }
        });
        addr
    }

    /// Reads one response (head and a content-length body); `None` when
    /// the server closed the connection first.
    async fn response(stream: &mut (impl AsyncRead + Unpin)) -> Option<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    return Some(text);
                }
            }
        }
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: app\r\n\r\n";

    #[tokio::test]
    async fn a_parked_connection_holds_a_small_task() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let tcp = TcpStream::connect(listener.local_addr().expect("local address"))
            .await
            .expect("connect");
        let activity = Activity::new();
        let handle = move |_req: Request<Incoming>| -> Reply { unreachable!() };
        let protocols = Protocols::default();
        let never = std::future::pending::<()>();
        let task = serve(tcp, handle, &protocols, &activity, never, Duration::ZERO);
        // hyper's connections are boxed while they serve; what stays is
        // the socket, the state of this loop and the caller's closure.
        let size = std::mem::size_of_val(&task);
        assert!(size < 1024, "a connection's task takes {size} bytes");
    }

    #[tokio::test]
    async fn an_idle_connection_is_parked_and_serves_again() {
        // Unparked, hyper would close the idle connection when its header
        // timer (running while it waits for a head) fires at 300 ms.
        let addr = server(Duration::from_millis(300)).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(GET).await.expect("write");
        let first = response(&mut c).await.expect("first response");
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(!first.to_ascii_lowercase().contains("connection: close"));
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.write_all(GET).await.expect("write");
        let second = response(&mut c).await.expect("a parked connection answers");
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    }

    #[tokio::test]
    async fn a_tls_connection_is_parked_and_serves_again() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let server_tls = rustls::ServerConfig::builder_with_provider(weft_ca::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
            )
            .expect("server TLS");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let tls = acceptor.accept(tcp).await.expect("handshake");
            let activity = Arc::new(Activity::new());
            let mut protocols = Protocols::default();
            protocols
                .h1
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_millis(300));
            let never = std::future::pending::<()>();
            let handle = ok(activity.clone());
            serve(tls, handle, &protocols, &activity, never, Duration::ZERO).await
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let client_tls = rustls::ClientConfig::builder_with_provider(weft_ca::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut c = tokio_rustls::TlsConnector::from(Arc::new(client_tls))
            .connect(name, tcp)
            .await
            .expect("client handshake");
        // Two requests in one write: the second waits in rustls or in
        // hyper when the first is answered.
        let mut two = GET.to_vec();
        two.extend_from_slice(GET);
        c.write_all(&two).await.expect("write");
        c.flush().await.expect("flush");
        let (mut all, mut buf) = (Vec::new(), [0u8; 1024]);
        while String::from_utf8_lossy(&all).matches("\r\n\r\nok").count() < 2 {
            let n = c.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&all));
            all.extend_from_slice(&buf[..n]);
        }
        // Past hyper's header timeout: answered only if it was parked.
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.write_all(GET).await.expect("write");
        c.flush().await.expect("flush");
        let got = response(&mut c)
            .await
            .expect("a parked TLS connection answers");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }

    #[tokio::test]
    async fn heads_split_across_a_park_keep_the_connection() {
        let addr = server(Duration::from_secs(5)).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        // A request and the start of the next in one write: hyper has read
        // part of a head when the connection parks, and hands it back.
        let mut first = GET.to_vec();
        first.extend_from_slice(&GET[..20]);
        c.write_all(&first).await.expect("write");
        response(&mut c).await.expect("first response");
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.write_all(&GET[20..]).await.expect("write");
        // Then a head split after a park: a fresh hyper connection reads
        // its start.
        for split in [true, false] {
            let got = response(&mut c).await.expect("the split request answered");
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
            assert!(
                !got.to_ascii_lowercase().contains("connection: close"),
                "{got}"
            );
            if split {
                tokio::time::sleep(Duration::from_millis(100)).await;
                c.write_all(&GET[..20]).await.expect("write");
                tokio::time::sleep(Duration::from_millis(300)).await;
                c.write_all(&GET[20..]).await.expect("write");
            }
        }
        c.write_all(GET).await.expect("write");
        response(&mut c).await.expect("still open");
    }

    #[tokio::test]
    async fn a_stalled_head_still_meets_the_header_timeout() {
        let addr = server(Duration::from_millis(300)).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(GET).await.expect("write");
        response(&mut c).await.expect("first response");
        c.write_all(&GET[..20]).await.expect("write");
        // Parking must not restart hyper's timer forever.
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            let mut buf = [0u8; 256];
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a stalled head kept the connection open");
    }

    #[tokio::test]
    async fn pipelined_requests_and_connection_close() {
        let addr = server(Duration::from_secs(5)).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let mut two = GET.to_vec();
        two.extend_from_slice(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
        c.write_all(&two).await.expect("write");
        let mut all = String::new();
        c.read_to_string(&mut all).await.expect("read");
        assert_eq!(all.matches("HTTP/1.1 200").count(), 2, "{all}");
    }

    #[tokio::test]
    async fn http2_with_prior_knowledge() {
        let addr = server(Duration::from_secs(5)).await;
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        for _ in 0..2 {
            let request = Request::get("http://app/")
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("request");
            let response = sender.send_request(request).await.expect("h2 request");
            assert_eq!(response.status(), 200);
            assert_eq!(response.version(), http::Version::HTTP_2);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn stop_closes_a_parked_connection() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let handle = ok(activity.clone());
            let stop = async move {
                let _ = rx.await;
                "told"
            };
            let protocols = Protocols::default();
            serve(stream, handle, &protocols, &activity, stop, Duration::ZERO).await
        });
        c.write_all(GET).await.expect("write");
        response(&mut c).await.expect("first response");
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(()).expect("stop");
        assert!(matches!(
            server.await.expect("server task"),
            Ended::Stopped("told")
        ));
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.expect("read");
        assert!(rest.is_empty());
    }
}
