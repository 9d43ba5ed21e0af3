//! Circuit breaking: with at most N requests in flight to a service,
//! request N+1 fails at once with 503 and response flag `UO`, measured by
//! the engine's own duration histogram (within its 100 ms bucket: far below
//! the 30 s the held requests take, with room for a loaded CI machine).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use weft_sample_app::AppConfig;
use weft_waypoint::engine::Breaker;
use weft_waypoint::engine::route::{Backend, Route};
use weft_waypoint::{Cluster, Config, Engine, Metrics};

const MAX: usize = 5;

async fn hanging_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = AppConfig {
        latency: Duration::from_secs(30),
        ..AppConfig::default()
    };
    tokio::spawn(weft_sample_app::serve_http(
        listener,
        config,
        std::future::pending(),
    ));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_n_plus_one_overflows_at_once() {
    let mut cluster = Cluster::new("shop/b", vec![hanging_app().await]);
    cluster.breaker = Breaker::new(MAX, 0);
    let cluster = Arc::new(cluster);
    let config = Config {
        routes: vec![Route {
            name: "b".into(),
            matches: vec![],
            backends: vec![Backend {
                service: "shop/b".into(),
                weight: 1,
            }],
            timeout: Some(Duration::from_secs(20)),
            retry: None,
            ..Route::default()
        }],
        clusters: HashMap::from([("shop/b".to_owned(), cluster.clone())]),
        ..Config::default()
    };
    let metrics = Metrics::default();
    let engine = Arc::new(Engine::new(config, metrics.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(weft_waypoint::fronts::http::serve_http(
        listener,
        engine,
        std::future::pending(),
    ));

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{addr}/").parse().expect("uri");
    let mut hanging = Vec::new();
    for _ in 0..MAX {
        let (client, uri) = (client.clone(), uri.clone());
        hanging.push(tokio::spawn(async move { client.get(uri).await }));
    }
    // Readiness: all N hold a slot.
    let start = std::time::Instant::now();
    while cluster.breaker.in_flight(MAX) < MAX {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "requests never in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let response = client.get(uri.clone()).await.expect("response");
    assert_eq!(response.status(), 503);
    let text = metrics.encode();
    let overflowed_fast = text.lines().any(|l| {
        l.starts_with("istio_request_duration_milliseconds_bucket{")
            && l.contains("response_flags=\"UO\"")
            && l.contains("le=\"100.0\"")
            && l.ends_with(" 1")
    });
    assert!(overflowed_fast, "no UO request within 100 ms:\n{text}");
    for h in hanging {
        h.abort();
    }
}
