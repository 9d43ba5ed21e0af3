//! Target (b): weft's L7 engine as one plain HTTP hop, the way the
//! gateway's HTTP listener runs it, on one thread: one route to the
//! backend with a retry policy (2 retries on 5xx, reset or connect
//! failure, 1 s per try) and a 2 s timeout, the same the peers get.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use weft_waypoint::engine::retry::{RetryOn, RetryPolicy};
use weft_waypoint::engine::route::{Backend, Route};
use weft_waypoint::{Cluster, Config, Engine, Metrics};

const SERVICE: &str = "bench/app";

/// Serves on `listen`, forwarding to `upstream`, until killed. Prints
/// `ready` once it listens.
pub(crate) fn run(listen: SocketAddr, upstream: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = Config {
            routes: vec![Route {
                name: "bench".into(),
                matches: vec![],
                backends: vec![Backend {
                    service: SERVICE.into(),
                    weight: 1,
                }],
                timeout: Some(Duration::from_secs(2)),
                retry: Some(RetryPolicy {
                    attempts: 2,
                    per_try_timeout: Some(Duration::from_secs(1)),
                    retry_on: RetryOn::parse("5xx,reset,connect-failure")
                        .map_err(|e| anyhow::anyhow!("retryOn: {e}"))?,
                    ..RetryPolicy::default()
                }),
                ..Route::default()
            }],
            clusters: HashMap::from([(
                SERVICE.to_owned(),
                Arc::new(Cluster::new(SERVICE, vec![upstream])),
            )]),
            ..Config::default()
        };
        let engine = Arc::new(Engine::new(config, Metrics::default()));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("ready");
        weft_waypoint::fronts::http::serve_http(listener, engine, std::future::pending()).await;
        Ok(())
    })
}
