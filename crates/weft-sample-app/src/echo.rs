//! Raw TCP echo mode.

use std::future::Future;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::error::AppError;
use crate::listener::{ConnGuard, accept_loop};

/// Serves raw TCP echo on `listener` until `shutdown` resolves: every byte read
/// from a connection is written back, and once the client half-closes (EOF)
/// the server finishes writing and closes its side too.
///
/// After `shutdown` resolves the listener is closed, so new connections are
/// refused; echo has no way to ask a client to leave, so this returns once the
/// connections already open have been closed by their clients. Wrap the call
/// in a timeout if that must be bounded.
pub async fn serve_tcp_echo(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    let addr = listener.local_addr().map_err(AppError::Listener)?;
    tracing::info!(%addr, "sample app serving TCP echo");
    accept_loop(listener, shutdown, "tcp-echo", |stream, peer, guard| {
        tokio::spawn(echo_connection(stream, peer, guard));
    })
    .await;
    Ok(())
}

async fn echo_connection(mut stream: TcpStream, peer: std::net::SocketAddr, guard: ConnGuard) {
    let (mut reader, mut writer) = stream.split();
    match tokio::io::copy(&mut reader, &mut writer).await {
        Ok(bytes) => {
            if let Err(error) = writer.shutdown().await {
                tracing::debug!(%peer, %error, "echo: shutting down the write side failed");
            }
            tracing::debug!(%peer, bytes, "echo connection finished");
        }
        Err(error) => tracing::debug!(%peer, %error, "echo connection failed"),
    }
    drop(guard);
}
