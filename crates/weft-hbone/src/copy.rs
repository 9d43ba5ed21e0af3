//! Copying bytes both ways between two connections, with buffers that are
//! borrowed only while bytes pass and grow only for bulk flows.
//!
//! A node proxy may hold many thousands of tunnels, and most carry small
//! requests and responses or sit idle. So a direction holds no buffer
//! while it waits: it takes one from this thread's [`buffers`] pool just
//! before it reads and gives it back as soon as everything read has been
//! written out (a read that finds nothing to read returns it at once).
//! Buffers start at [`INITIAL_BUFFER`] bytes; a read that fills the whole
//! buffer means more is waiting, and the direction asks for twice the size
//! (up to [`MAX_BUFFER`]) next time. Bulk transfers reach large HTTP/2
//! frames and full TLS records within a few reads. The size a direction
//! asks for does not shrink again: a connection that carried bulk data
//! once is likely to again.
//!
//! Semantics match `tokio::io::copy_bidirectional`: when one side ends, the
//! other side's write half is shut down, and the copy finishes when both
//! directions have; the first error ends it.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::buffers;

/// Bytes each direction's first buffer has.
pub const INITIAL_BUFFER: usize = buffers::MIN;
/// The most a direction's buffer grows to.
pub const MAX_BUFFER: usize = buffers::MAX;
/// Reads and writes one direction makes in one poll before it yields, so a
/// connection whose both sides are always ready cannot starve the others.
const STEPS_PER_POLL: usize = 32;

/// One direction's progress, and its buffer while it holds bytes.
struct Direction {
    /// Borrowed from the pool while bytes are in it; empty otherwise.
    buf: Vec<u8>,
    /// The buffer size the next read asks for.
    size: usize,
    /// Written out up to here.
    start: usize,
    /// Read in up to here.
    end: usize,
    read_done: bool,
    need_flush: bool,
    copied: u64,
    finished: bool,
}

impl Direction {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            size: INITIAL_BUFFER,
            start: 0,
            end: 0,
            read_done: false,
            need_flush: false,
            copied: 0,
            finished: false,
        }
    }

    /// Returns the buffer to the pool once nothing in it waits to be
    /// written.
    fn release_if_empty(&mut self) {
        if self.start == self.end && !self.buf.is_empty() {
            buffers::give(std::mem::take(&mut self.buf));
            (self.start, self.end) = (0, 0);
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
        writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let poll = self.poll_steps(cx, reader, writer);
        // Whatever happened, a buffer with nothing left in it goes back.
        self.release_if_empty();
        poll
    }

    fn poll_steps<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        for _ in 0..STEPS_PER_POLL {
            if self.start == self.end && !self.read_done {
                if self.buf.len() != self.size {
                    buffers::give(std::mem::take(&mut self.buf));
                    self.buf = buffers::take(self.size);
                }
                let mut read = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        self.read_done = n == 0;
                        if n == self.buf.len() {
                            self.size = (self.size * 2).min(MAX_BUFFER);
                        }
                        (self.start, self.end) = (0, n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read now: push out what was written.
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.start < self.end {
                let n = ready!(
                    writer
                        .as_mut()
                        .poll_write(cx, &self.buf[self.start..self.end])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.copied += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                return Poll::Ready(Ok(self.copied));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Copies `a`'s reads to `b` and `b`'s reads to `a` until both reach end
/// of stream, shutting down each writer after its reader ends. Returns the
/// bytes copied from `a` to `b` and from `b` to `a`.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::new();
    let mut b_to_a = Direction::new();
    poll_fn(|cx| {
        if !a_to_b.finished {
            ready_or_skip(&mut a_to_b, cx, &mut *a, &mut *b)?;
        }
        if !b_to_a.finished {
            ready_or_skip(&mut b_to_a, cx, &mut *b, &mut *a)?;
        }
        if a_to_b.finished && b_to_a.finished {
            Poll::Ready(Ok((a_to_b.copied, b_to_a.copied)))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Polls one direction, marking it finished when it completes.
fn ready_or_skip<R, W>(
    direction: &mut Direction,
    cx: &mut Context<'_>,
    reader: &mut R,
    writer: &mut W,
) -> io::Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    if let Poll::Ready(result) = direction.poll_copy(cx, Pin::new(reader), Pin::new(writer)) {
        result?;
        direction.finished = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_half_closes() -> io::Result<()> {
        let (mut client, mut near) = tokio::io::duplex(64 * 1024);
        let (mut far, mut server) = tokio::io::duplex(64 * 1024);
        let copy = tokio::spawn(async move { bidirectional(&mut near, &mut far).await });
        client.write_all(b"ping").await?;
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await?;
        assert_eq!(&got, b"ping");
        server.write_all(b"pong!").await?;
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await?;
        assert_eq!(&got, b"pong!");
        // The client finishes first: the server sees end of stream, can
        // still answer, and the copy ends when it finishes too.
        client.shutdown().await?;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await?;
        assert!(rest.is_empty());
        server.write_all(b"late").await?;
        server.shutdown().await?;
        let mut late = Vec::new();
        client.read_to_end(&mut late).await?;
        assert_eq!(late, b"late");
        assert_eq!(copy.await.expect("copy task")?, (4, 9));
        Ok(())
    }

    #[tokio::test]
    async fn bulk_data_arrives_intact_and_grows_the_buffer() -> io::Result<()> {
        let (mut client, mut near) = tokio::io::duplex(256 * 1024);
        let (mut far, mut server) = tokio::io::duplex(256 * 1024);
        let copy = tokio::spawn(async move { bidirectional(&mut near, &mut far).await });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&data).await?;
            client.shutdown().await?;
            Ok::<_, io::Error>(client)
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await?;
        assert!(got == expected, "the copied bytes differ");
        server.shutdown().await?;
        drop(writer.await.expect("writer task")?);
        assert_eq!(copy.await.expect("copy task")?, (3_000_000, 0));
        Ok(())
    }

    #[test]
    fn a_full_read_doubles_the_buffer_up_to_the_maximum() {
        let mut d = Direction::new();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut sizes = Vec::new();
        // A reader that always fills the buffer; a writer that takes all.
        let mut reader = tokio::io::repeat(7);
        let mut writer = tokio::io::sink();
        for _ in 0..10 {
            let _ = d.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut writer));
            sizes.push(d.size);
        }
        assert_eq!(sizes.last(), Some(&MAX_BUFFER));
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]));
        // A small read does not grow it.
        let mut d = Direction::new();
        let mut small: &[u8] = b"tiny";
        let _ = d.poll_copy(&mut cx, Pin::new(&mut small), Pin::new(&mut writer));
        assert_eq!(d.size, INITIAL_BUFFER);
    }

    /// A reader with nothing to read yet.
    struct Idle;
    impl AsyncRead for Idle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    /// A writer that takes nothing yet.
    struct Stuck;
    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_waiting_direction_holds_no_buffer_and_one_with_bytes_in_flight_keeps_its() {
        std::thread::spawn(|| {
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            // Bytes copied, then nothing more to read: the buffer is back in
            // the pool, and the next direction on this thread gets it.
            let mut d = Direction::new();
            let mut reader = tokio::io::AsyncReadExt::chain(&b"hello"[..], Idle);
            let mut out = Vec::new();
            let poll = d.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut out));
            assert!(poll.is_pending());
            assert_eq!(out, b"hello");
            assert_eq!(d.buf.capacity(), 0, "an idle direction holds no buffer");
            assert_eq!(buffers::kept_bytes(), INITIAL_BUFFER);
            // A writer that cannot take the bytes yet: they stay in the
            // direction's own buffer, which the pool no longer has.
            let mut d = Direction::new();
            let mut reader: &[u8] = b"waiting";
            let poll = d.poll_copy(&mut cx, Pin::new(&mut reader), Pin::new(&mut Stuck));
            assert!(poll.is_pending());
            assert_eq!(&d.buf[d.start..d.end], b"waiting");
            assert_eq!(buffers::kept_bytes(), 0);
        })
        .join()
        .expect("copy thread");
    }

    #[tokio::test]
    async fn an_error_on_either_side_ends_the_copy() {
        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            }
        }
        impl AsyncWrite for Broken {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let (_client, mut near) = tokio::io::duplex(1024);
        let result = bidirectional(&mut near, &mut Broken).await;
        assert_eq!(
            result.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }
}
