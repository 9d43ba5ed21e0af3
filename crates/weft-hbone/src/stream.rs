//! One HBONE tunnel as a byte stream: an HTTP/2 stream's two halves
//! (`h2`'s [`SendStream`] and [`RecvStream`]) behind `AsyncRead` and
//! `AsyncWrite`.
//!
//! Tunnels sit on the `h2` crate directly rather than on hyper's upgrade
//! machinery: a tunnel is then one task (its splice) and these two
//! handles, with no per-stream task, channel or boxed upgrade beside it,
//! which is what lets a node hold many thousands of idle tunnels for a
//! few KiB each.
//!
//! Flow control: received data is handed back to the peer's window as
//! soon as it is read out of a frame, as ztunnel and hyper do; writes ask
//! for window capacity and send at most what they are given, so a slow
//! reader on the far side slows the writer here (no unbounded buffering).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An HTTP/2 stream carrying a tunnel's bytes both ways.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// The rest of the last received frame, not yet read (its window
    /// already given back).
    pending: Bytes,
    /// Received bytes handed out by [`H2Stream::poll_chunk`] whose window
    /// has not been given back yet ([`H2Stream::release`]).
    pub(crate) unreleased: usize,
    /// End of stream was sent.
    sent_end: bool,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("pending", &self.pending.len())
            .field("sent_end", &self.sent_end)
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    /// The tunnel over an accepted or answered stream.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            unreleased: 0,
            sent_end: false,
        }
    }

    /// Window to send up to `wanted` bytes: how many may be sent now.
    pub(crate) fn poll_send_capacity(
        &mut self,
        cx: &mut Context<'_>,
        wanted: usize,
    ) -> Poll<io::Result<usize>> {
        self.send.reserve_capacity(wanted);
        match self.send.poll_capacity(cx) {
            Poll::Ready(Some(Ok(0))) => {
                // Capacity was taken back (the window shrank): ask again.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Some(Ok(n))) => Poll::Ready(Ok(n)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(broken(e))),
            Poll::Ready(None) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            // No window yet; a peer that resets the stream meanwhile ends
            // the wait.
            Poll::Pending => match self.send.poll_reset(cx) {
                Poll::Ready(Ok(reason)) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("tunnel reset by the peer ({reason})"),
                ))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(broken(e))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// Queues `data` (within the capacity granted) as DATA, as it is.
    pub(crate) fn send(&mut self, data: Bytes) -> io::Result<()> {
        self.send.send_data(data, false).map_err(broken)
    }

    /// The next received chunk, whole (`None` at the end of the stream),
    /// for a splice that writes frames straight out: its window is given
    /// back with [`H2Stream::release`] once used.
    pub(crate) fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            // Left over by an AsyncRead user: already given back.
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        match ready!(self.recv.poll_data(cx)) {
            Some(Ok(data)) => {
                self.unreleased += data.len();
                Poll::Ready(Ok(Some(data)))
            }
            Some(Err(e)) => Poll::Ready(io_error(e).map_or(Ok(None), Err)),
            None => Poll::Ready(Ok(None)),
        }
    }

    /// Gives `n` bytes of received window back to the peer.
    pub(crate) fn release(&mut self, n: usize) {
        let n = n.min(self.unreleased);
        if n > 0 {
            self.unreleased -= n;
            let _ = self.recv.flow_control().release_capacity(n);
        }
    }
}

/// An `h2` error while sending, as an I/O error.
fn broken(e: h2::Error) -> io::Error {
    io_error(e).unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())
}

/// An `h2` error as an I/O error; a stream the peer ended with `NO_ERROR`
/// or `CANCEL` is `None` (an end of stream, not a failure).
fn io_error(e: h2::Error) -> Option<io::Error> {
    if matches!(e.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) {
        return None;
    }
    Some(if e.is_io() {
        e.into_io().unwrap_or_else(|| io::ErrorKind::Other.into())
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    })
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Give the window back now: the bytes are ours.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(io_error(e).map_or(Ok(()), Err)),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        if this.pending.is_empty() {
            // An empty slice would still hold the frame's read buffer.
            this.pending = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_send_capacity(cx, buf.len()))?.min(buf.len());
        this.send(Bytes::copy_from_slice(&buf[..n]))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes frames out as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.sent_end {
            this.sent_end = true;
            this.send.send_data(Bytes::new(), true).map_err(broken)?;
        }
        Poll::Ready(Ok(()))
    }
}
