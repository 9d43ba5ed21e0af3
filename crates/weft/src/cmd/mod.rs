//! One module per subcommand, plus what several share.

pub(crate) mod authz;
pub(crate) mod certs;
pub(crate) mod config_dump;
pub(crate) mod control;
pub(crate) mod graph;
pub(crate) mod install;
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

/// The certificates of a PEM file.
pub(crate) fn read_roots(
    path: &std::path::Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    weft_ca::cert::certs_from_pem(&pem, &path.display().to_string()).map_err(|e| e.to_string())
}

/// A multi-threaded runtime, or a message saying why there is none.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// A client of the cluster: a kubeconfig's, or the one this runs in
/// (in-cluster config, else `$KUBECONFIG` or `~/.kube/config`); and what
/// to call it in logs.
pub(crate) async fn kube_client(
    kubeconfig: Option<&std::path::Path>,
) -> Result<(kube::Client, String), String> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("the kubeconfig {} cannot be used: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no cluster to read (not in one, and no kubeconfig): {e}"))?,
    };
    let origin = format!("kubernetes {}", config.cluster_url);
    let client =
        kube::Client::try_from(config).map_err(|e| format!("cannot reach the cluster: {e}"))?;
    Ok((client, origin))
}
