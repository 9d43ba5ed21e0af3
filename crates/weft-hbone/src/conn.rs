//! What both ends of an HBONE connection share: the HTTP/2 settings (as
//! ztunnel's, with hyper's limits on headers and reset streams) and the
//! keepalive that closes a connection whose peer stopped answering.

use std::time::Duration;

use crate::{CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_FRAME, STREAM_WINDOW};

/// The largest header block either side accepts (a CONNECT needs a few
/// hundred bytes; 16 KiB as hyper's default).
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams a client may open at once on one server connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 200;
/// Bytes queued per stream for sending before a writer waits.
pub const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams this side may reset for protocol errors before the connection
/// is closed (hyper's default: a peer provoking resets forever is cut).
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The server side's HTTP/2 settings.
pub fn server_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
    b
}

/// The client side's HTTP/2 settings.
pub fn client_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
    b
}

/// Pings the peer every [`KEEPALIVE_INTERVAL`] and returns when one ping
/// goes unanswered for [`KEEPALIVE_TIMEOUT`] (or pings cannot be sent):
/// the caller then drops the connection. Runs beside the connection's own
/// polling, which is what receives the answers.
pub async fn keepalive(ping: Option<h2::PingPong>) {
    keepalive_every(ping, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT).await;
}

async fn keepalive_every(ping: Option<h2::PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut ping) = ping else {
        // Pings were taken elsewhere: nothing to watch.
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HBONE keepalive ping failed");
                return;
            }
            Err(_) => {
                tracing::info!(timeout = ?timeout, "HBONE peer did not answer a keepalive ping; closing the connection");
                return;
            }
        }
    }
}
