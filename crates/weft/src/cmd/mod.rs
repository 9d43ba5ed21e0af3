//! One module per subcommand, plus what several share.

pub(crate) mod certs;
pub(crate) mod config_dump;
pub(crate) mod control;
pub(crate) mod node;
pub(crate) mod run;
pub(crate) mod sample_app;
pub(crate) mod up;
pub(crate) mod validate;
pub(crate) mod waypoint;

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down: no new connections, draining open ones");
}

/// A multi-threaded runtime, or a message saying why there is none.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the async runtime: {e}"))
}
