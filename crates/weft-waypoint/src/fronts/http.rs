//! Fronts hand requests to the engine. This one is a plain HTTP listener
//! (HTTP/1.1 and h2c on one port) with no admission limits: tests and
//! `bench/l7`'s engine hop use it. Idle HTTP/1.1 connections are parked
//! as on the gateway's listeners ([`crate::fronts::downstream`]).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::fronts::admission::{Activity, Tracked};
use crate::fronts::downstream::{self, Ended, Protocols, Reply};

/// Serves `engine` on `listener` until `shutdown` resolves.
pub async fn serve_http(
    listener: TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let protocols = Arc::new(Protocols::default());
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
        let (engine, protocols) = (engine.clone(), protocols.clone());
        tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let requests = activity.clone();
            let handle = move |mut request: http::Request<hyper::body::Incoming>| -> Reply {
                let in_flight = requests.request();
                request
                    .extensions_mut()
                    .insert(crate::engine::PeerAddr(peer));
                let engine = engine.clone();
                Box::pin(async move {
                    let response = engine.handle(request).await;
                    Ok(response.map(|b| Tracked::new(b, in_flight)))
                })
            };
            let never = std::future::pending::<()>();
            let grace = std::time::Duration::ZERO;
            if let Ended::Closed(Some(e)) =
                downstream::serve(stream, handle, &protocols, &activity, never, grace).await
            {
                tracing::debug!(%peer, error = %e, "downstream connection ended");
            }
        });
    }
}
