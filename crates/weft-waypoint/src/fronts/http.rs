//! Fronts hand requests to the engine. This one is a plain HTTP listener
//! (HTTP/1.1 and h2c on one port): the ingress gateway's insecure listener
//! and the benchmarks use it; the waypoint's HBONE front comes next.

use std::future::Future;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

use crate::engine::Engine;

/// Serves `engine` on `listener` until `shutdown` resolves.
pub async fn serve_http(
    listener: TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let engine = engine.clone();
        tokio::spawn(async move {
            let service = service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(crate::engine::PeerAddr(peer));
                let engine = engine.clone();
                async move { Ok::<_, std::convert::Infallible>(engine.handle(request).await) }
            });
            if let Err(e) = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "downstream connection ended");
            }
        });
    }
}
