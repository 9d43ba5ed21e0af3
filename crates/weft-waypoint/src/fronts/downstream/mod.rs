//! One downstream HTTP connection, from its first byte to its end, on the
//! gateway's listeners and the plain HTTP front.
//!
//! The first bytes tell the protocol: the HTTP/2 connection preface means
//! HTTP/2 with prior knowledge (h2c, or h2 inside TLS), served by hyper as
//! it is; anything else is HTTP/1.1. hyper holds an 8 KiB read buffer and
//! an 8 KiB header write buffer for as long as an HTTP/1.1 connection
//! lives, busy or idle. So an HTTP/1.1 connection is *parked* once it has
//! answered its requests and no next head has come for a short while
//! ([`Protocols::warm`], 50 ms by default: a busy keep-alive connection
//! keeps its hyper connection from one request to the next, an idle one
//! lets go of it soon): hyper is
//! asked to finish (which closes only an idle connection, and tells the
//! client nothing, since no response is being written), taken apart, and
//! the socket waits for its next byte holding no buffer at all (over TLS,
//! one byte is read through rustls, which may hold decrypted bytes the
//! socket no longer shows). That byte
//! starts a fresh hyper connection, with whatever hyper had already read
//! put back in front of the socket. An idle keep-alive connection costs
//! its socket and one small task, and the memory of connections comes
//! from requests in flight, not from connections open, as in HAProxy and
//! nginx. The price is a hyper connection set up again for each request
//! that comes after a pause longer than the warm time, and, while a
//! connection is warm, one timer that looks at it once per warm time (not
//! one per request): it parks between one and two warm times after its
//! last request.
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

/// How long an HTTP/1.1 connection that has answered stays warm for its
/// next request before it is parked, by default.
pub const WARM: Duration = Duration::from_millis(50);

/// The protocol settings of one listener.
#[derive(Clone, Debug)]
pub struct Protocols {
    /// HTTP/1.1.
    pub h1: http1::Builder,
    /// HTTP/2.
    pub h2: http2::Builder<TokioExecutor>,
    /// How long an HTTP/1.1 connection that has answered keeps its hyper
    /// connection (and buffers) waiting for the next request before it is
    /// parked; zero parks at once. Keep it below hyper's header timeout,
    /// which runs while a warm connection waits.
    pub warm: Duration,
}

impl Default for Protocols {
    fn default() -> Self {
        Protocols {
            h1: http1::Builder::new(),
            h2: http2::Builder::new(TokioExecutor::new()),
            warm: WARM,
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
        // While it waits warm: the requests it had started when it went
        // idle (stale once more came: the timer looks again), and the
        // timer that parks it if none comes.
        let mut warm_at: Option<u64> = None;
        let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            // `Ready(None)`: it has answered and waits for the next head.
            let polled = std::future::poll_fn(|cx| match conn.poll_without_shutdown(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending
                    if !parking
                        && warm_at.is_none()
                        && activity.requests() > before
                        && activity.idle() =>
                {
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            });
            let cooled = async {
                match timer.as_mut() {
                    Some(t) => t.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                r = polled => match r {
                    None if protocols.warm.is_zero() => {
                        Pin::new(&mut *conn).graceful_shutdown();
                        parking = true;
                    }
                    None => {
                        warm_at = Some(activity.requests());
                        let deadline = tokio::time::Instant::now() + protocols.warm;
                        match timer.as_mut() {
                            Some(t) => t.as_mut().reset(deadline),
                            None => timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                        }
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
                () = cooled, if warm_at.is_some() && !parking => {
                    let requests = activity.requests();
                    match warm_at {
                        // No request came while it was warm: parked.
                        Some(at) if at == requests && activity.idle() => {
                            Pin::new(&mut *conn).graceful_shutdown();
                            parking = true;
                        }
                        // Requests came and went: warm again from now.
                        _ if activity.idle() => {
                            warm_at = Some(requests);
                            if let Some(t) = timer.as_mut() {
                                t.as_mut()
                                    .reset(tokio::time::Instant::now() + protocols.warm);
                            }
                        }
                        // One is in flight: warm again once it is answered.
                        _ => warm_at = None,
                    }
                }
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
        drop(timer);
        activity.park();
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
mod tests;
