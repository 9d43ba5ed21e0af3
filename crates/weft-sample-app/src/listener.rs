//! The accept loop shared by both modes, and graceful-shutdown bookkeeping.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Pause after an accept error that is not about one connection (e.g. EMFILE),
/// so that a persistent condition does not turn the loop into a busy spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Held by every connection task. Dropping it tells the server the connection
/// is done; [`ConnGuard::shutdown_requested`] resolves once the server is
/// shutting down.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    rx: watch::Receiver<()>,
}

impl ConnGuard {
    /// Resolves when the server starts shutting down (cancel safe).
    pub(crate) async fn shutdown_requested(&mut self) {
        // An error means the server future was dropped: treat that as shutdown too.
        let _ = self.rx.changed().await;
    }
}

/// Accepts connections until `shutdown` resolves, handing each to
/// `on_connection` together with a [`ConnGuard`]. Then closes the listener
/// (new connections are refused), signals shutdown to every guard and waits
/// until all guards are dropped.
///
/// Accept errors never end the loop: they are logged, and errors that are not
/// tied to a single connection (such as running out of file descriptors) cause
/// a short back-off.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    mode: &'static str,
    mut on_connection: F,
) where
    F: FnMut(TcpStream, SocketAddr, ConnGuard),
{
    let (tx, _) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
                    }
                    on_connection(stream, peer, ConnGuard { rx: tx.subscribe() });
                }
                Err(error) if is_connection_error(&error) => {
                    tracing::debug!(mode, %error, "accept failed for one connection");
                }
                Err(error) => {
                    tracing::warn!(
                        mode,
                        %error,
                        backoff_ms = ACCEPT_BACKOFF.as_millis() as u64,
                        "accept failed (out of file descriptors?); backing off"
                    );
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let open = tx.receiver_count();
    tracing::info!(
        mode,
        open_connections = open,
        "shutting down; draining connections"
    );
    tx.send_replace(());
    tx.closed().await;
    tracing::info!(mode, "all connections closed");
}

/// Errors that concern only the connection being accepted; the listener is fine.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_accept_errors() {
        assert!(is_connection_error(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        // EMFILE ("too many open files") is a listener-wide condition.
        assert!(!is_connection_error(&io::Error::from_raw_os_error(24)));
    }
}
