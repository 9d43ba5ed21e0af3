//! Splicing a plain byte stream (a workload's TCP connection) to an HBONE
//! tunnel's HTTP/2 stream without copying on the tunnel's side.
//!
//! [`copy::bidirectional`](crate::copy::bidirectional) moves bytes through
//! a buffer between any two streams; between a socket and an [`H2Stream`]
//! that costs two extra copies per byte (into HTTP/2's frames on the way
//! out, out of them on the way in). Here each direction hands `h2` the
//! chunks it owns instead:
//!
//! - **into the tunnel**: once reads fill their buffer (a bulk flow), the
//!   socket is read into a fresh chunk (its size growing as in `copy`),
//!   which is frozen and queued as DATA as it is, split only when the
//!   peer's window is smaller; small reads go through a pooled buffer and
//!   are copied out, so a read that finds nothing allocates nothing;
//! - **out of the tunnel**: each received DATA frame's bytes are written
//!   to the socket straight from the frame, and the window is given back
//!   once they are written.
//!
//! A direction holds a chunk only while its bytes are in flight, so an
//! idle tunnel holds no buffer here either. End of stream is passed on
//! both ways (a read of 0 ends the HTTP/2 stream; the stream's end shuts
//! the socket's write half), and the splice ends when both directions
//! have, or — with a grace period — that long after the tunnel's side
//! ended, so a caller that never finishes cannot hold a tunnel the far
//! side closed.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::buffers;
use crate::copy::{INITIAL_BUFFER, MAX_BUFFER};
use crate::stream::H2Stream;

/// Reads and writes one direction makes in one poll before it yields.
const STEPS_PER_POLL: usize = 32;

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spliced {
    /// Bytes from the plain side into the tunnel.
    pub sent: u64,
    /// Bytes from the tunnel to the plain side.
    pub received: u64,
    /// The tunnel's side ended and the plain side did not finish within
    /// the grace period.
    pub cut: bool,
}

/// Copies between `plain` and `tunnel` both ways until both directions
/// end; with `grace`, at most that long after the tunnel's side ended.
/// The first error ends the splice.
pub async fn splice<P>(
    plain: &mut P,
    tunnel: &mut H2Stream,
    grace: Option<Duration>,
) -> io::Result<Spliced>
where
    P: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Up::default();
    let mut down = Down::default();
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        if !up.finished && up.poll(cx, &mut *plain, tunnel)?.is_ready() {
            up.finished = true;
        }
        if !down.finished && down.poll(cx, tunnel, &mut *plain)?.is_ready() {
            down.finished = true;
        }
        let mut cut = false;
        if up.finished && down.finished {
            return Poll::Ready(Ok(Spliced {
                sent: up.copied,
                received: down.copied,
                cut,
            }));
        }
        if let Some(grace) = grace.filter(|_| down.read_done) {
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)));
            cut = timer.as_mut().poll(cx).is_ready();
        }
        if cut {
            return Poll::Ready(Ok(Spliced {
                sent: up.copied,
                received: down.copied,
                cut,
            }));
        }
        Poll::Pending
    })
    .await
}

/// The plain side into the tunnel.
struct Up {
    /// Read, not yet queued on the stream.
    pending: Bytes,
    /// The size of the next read's chunk.
    size: usize,
    read_done: bool,
    copied: u64,
    finished: bool,
}

impl Default for Up {
    fn default() -> Self {
        Up {
            pending: Bytes::new(),
            size: INITIAL_BUFFER,
            read_done: false,
            copied: 0,
            finished: false,
        }
    }
}

impl Up {
    fn poll<P>(
        &mut self,
        cx: &mut Context<'_>,
        plain: &mut P,
        tunnel: &mut H2Stream,
    ) -> Poll<io::Result<()>>
    where
        P: AsyncRead + Unpin + ?Sized,
    {
        for _ in 0..STEPS_PER_POLL {
            if self.pending.is_empty() && !self.read_done {
                let n = ready!(self.poll_read(cx, plain))?;
                if n == 0 {
                    self.read_done = true;
                } else if n >= self.size {
                    self.size = (self.size * 2).min(MAX_BUFFER);
                }
            }
            while !self.pending.is_empty() {
                let granted = ready!(tunnel.poll_send_capacity(cx, self.pending.len()))?;
                let chunk = if granted >= self.pending.len() {
                    std::mem::take(&mut self.pending)
                } else {
                    self.pending.split_to(granted)
                };
                self.copied += chunk.len() as u64;
                tunnel.send(chunk)?;
            }
            if self.read_done {
                ready!(Pin::new(&mut *tunnel).poll_shutdown(cx))?;
                return Poll::Ready(Ok(()));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Up {
    /// Reads the next chunk into `pending`. A flow that has only moved
    /// small reads so far reads into a pooled buffer and copies the few
    /// bytes out (a read that finds nothing allocates nothing); once reads
    /// fill their buffer, each read gets a chunk of its own that is handed
    /// to `h2` as it is.
    fn poll_read<P>(&mut self, cx: &mut Context<'_>, plain: &mut P) -> Poll<io::Result<usize>>
    where
        P: AsyncRead + Unpin + ?Sized,
    {
        if self.size <= INITIAL_BUFFER {
            let mut buf = buffers::take(INITIAL_BUFFER);
            let mut read = ReadBuf::new(&mut buf);
            let polled = Pin::new(&mut *plain).poll_read(cx, &mut read);
            let n = read.filled().len();
            if let Poll::Ready(Ok(())) = polled {
                self.pending = Bytes::copy_from_slice(&buf[..n]);
            }
            buffers::give(buf);
            return polled.map_ok(|()| n);
        }
        let mut chunk = BytesMut::with_capacity(self.size);
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut *plain),
            cx,
            &mut chunk
        ))?;
        self.pending = chunk.freeze();
        Poll::Ready(Ok(n))
    }
}

/// The tunnel to the plain side.
#[derive(Default)]
struct Down {
    /// Received, not yet written.
    pending: Bytes,
    /// The stream ended.
    read_done: bool,
    need_flush: bool,
    copied: u64,
    finished: bool,
}

impl Down {
    fn poll<P>(
        &mut self,
        cx: &mut Context<'_>,
        tunnel: &mut H2Stream,
        plain: &mut P,
    ) -> Poll<io::Result<()>>
    where
        P: AsyncWrite + Unpin + ?Sized,
    {
        for _ in 0..STEPS_PER_POLL {
            if self.pending.is_empty() && !self.read_done {
                match tunnel.poll_chunk(cx) {
                    Poll::Ready(Ok(Some(data))) => self.pending = data,
                    Poll::Ready(Ok(None)) => self.read_done = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(Pin::new(&mut *plain).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while !self.pending.is_empty() {
                let n = ready!(Pin::new(&mut *plain).poll_write(cx, &self.pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pending.advance(n);
                self.copied += n as u64;
                tunnel.release(n);
                self.need_flush = true;
            }
            // An empty slice still holds the frame's whole read buffer.
            self.pending = Bytes::new();
            if self.read_done {
                ready!(Pin::new(&mut *plain).poll_flush(cx))?;
                ready!(Pin::new(&mut *plain).poll_shutdown(cx))?;
                return Poll::Ready(Ok(()));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Both ends of one HTTP/2 stream over an in-memory connection.
    async fn stream_pair() -> (H2Stream, H2Stream) {
        let (near, far) = tokio::io::duplex(256 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = crate::conn::server_builder()
                .handshake::<_, Bytes>(far)
                .await
                .expect("server handshake");
            let (request, mut respond) = conn.accept().await.expect("a stream").expect("stream");
            let send = respond
                .send_response(http::Response::new(()), false)
                .expect("response");
            let stream = H2Stream::new(send, request.into_body());
            // Keep driving the connection.
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            stream
        });
        let (client, conn) = crate::conn::client_builder()
            .handshake::<_, Bytes>(near)
            .await
            .expect("client handshake");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .expect("request");
        let (response, send) = client.send_request(request, false).expect("send");
        let far_end = server.await.expect("server task");
        let response = response.await.expect("response");
        (H2Stream::new(send, response.into_body()), far_end)
    }

    #[tokio::test]
    async fn bulk_and_small_writes_arrive_intact_both_ways_with_half_close() {
        let (mut tunnel, mut far) = stream_pair().await;
        let (mut app, mut plain) = tokio::io::duplex(64 * 1024);
        let splice = tokio::spawn(async move { splice(&mut plain, &mut tunnel, None).await });
        // The app sends 3 MB (reads fill their buffers: the chunked path)
        // and ends; the far side gets it all, answers, and ends too.
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            app.write_all(b"hi").await?;
            app.write_all(&data).await?;
            app.shutdown().await?;
            let mut answer = Vec::new();
            app.read_to_end(&mut answer).await?;
            Ok::<_, io::Error>(answer)
        });
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.expect("far side reads");
        assert_eq!(&got[..2], b"hi");
        assert!(got[2..] == expected[..], "the spliced bytes differ");
        far.write_all(b"bye").await.expect("far side writes");
        far.shutdown().await.expect("far side ends");
        assert_eq!(writer.await.expect("writer").expect("app"), b"bye");
        let done = splice.await.expect("splice task").expect("splice");
        assert_eq!((done.sent, done.received, done.cut), (3_000_002, 3, false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_never_finishes_is_cut_a_grace_period_after_the_tunnel_ends() {
        let (mut tunnel, mut far) = stream_pair().await;
        // The caller's side stays open and silent.
        let (_app, mut plain) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let splice = tokio::spawn(async move {
            splice(&mut plain, &mut tunnel, Some(Duration::from_secs(2))).await
        });
        far.write_all(b"last words").await.expect("far side writes");
        far.shutdown().await.expect("far side ends");
        let done = splice.await.expect("splice task").expect("splice");
        assert!(done.cut);
        assert_eq!(done.received, 10);
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test]
    async fn an_idle_splice_holds_no_chunk() {
        let (mut tunnel, mut far) = stream_pair().await;
        let (mut app, mut plain) = tokio::io::duplex(1024);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (mut up, mut down) = (Up::default(), Down::default());
        app.write_all(b"ping").await.expect("app writes");
        far.write_all(b"pong").await.expect("far side writes");
        let mut got = [0u8; 4];
        // Poll until both small messages have passed.
        for _ in 0..100 {
            let _ = up.poll(&mut cx, &mut plain, &mut tunnel);
            let _ = down.poll(&mut cx, &mut tunnel, &mut plain);
            if down.copied == 4 && up.copied == 4 {
                break;
            }
            tokio::task::yield_now().await;
        }
        far.read_exact(&mut got).await.expect("far side reads");
        assert_eq!(&got, b"ping");
        app.read_exact(&mut got).await.expect("app reads");
        assert_eq!(&got, b"pong");
        assert!(up.pending.is_empty() && down.pending.is_empty());
        assert_eq!(tunnel.unreleased, 0, "the window was given back");
        assert_eq!(up.size, INITIAL_BUFFER, "small reads do not grow the chunk");
    }
}
