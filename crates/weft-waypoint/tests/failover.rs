//! Scenario 3 at L7: the waypoint runs in zone a; B has one endpoint in
//! zone a and one in zone b. When zone a's endpoint fails, outlier
//! detection ejects it and traffic moves to zone b; when it recovers,
//! traffic comes back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use weft_sample_app::AppConfig;
use weft_waypoint::engine::lb::{Balancer, Endpoint, Locality, OutlierDetection};
use weft_waypoint::engine::retry::{RetryOn, RetryPolicy};
use weft_waypoint::engine::route::{Backend, Route};
use weft_waypoint::{Cluster, Config, Engine, Metrics};

/// Starts the sample app named `name` on `addr`; the sender stops it.
async fn app(addr: &str, name: &str, fail_ratio: f64) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let bound = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let config = AppConfig {
        name: name.into(),
        fail_ratio,
        ..AppConfig::default()
    };
    tokio::spawn(weft_sample_app::serve_http(listener, config, async move {
        let _ = stopped.await;
    }));
    (bound, stop)
}

/// (status, the app that answered).
async fn call(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
) -> (u16, String) {
    let response = client
        .get(format!("http://{addr}/").parse().expect("uri"))
        .await
        .expect("response");
    let status = response.status().as_u16();
    let app = response
        .headers()
        .get("x-weft-app")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let _ = response.into_body().collect().await;
    (status, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_zone_is_ejected_and_traffic_returns_after_recovery() {
    let (a_addr, stop_a) = app("127.0.0.1:0", "zone-a", 1.0).await;
    let (b_addr, _stop_b) = app("127.0.0.1:0", "zone-b", 0.0).await;
    let balancer = Balancer::new(
        vec![
            Endpoint::new(a_addr, Locality::parse("eu/a").expect("locality")),
            Endpoint::new(b_addr, Locality::parse("eu/b").expect("locality")),
        ],
        Locality::parse("eu/a").expect("locality"),
        Some(OutlierDetection {
            consecutive_5xx: Some(3),
            consecutive_gateway_errors: None,
            base_ejection_time: Duration::from_secs(1),
            max_ejection_percent: 100,
        }),
    );
    let config = Config {
        routes: vec![Route {
            name: "b".into(),
            matches: vec![],
            backends: vec![Backend {
                service: "shop/b".into(),
                weight: 1,
            }],
            timeout: Some(Duration::from_secs(5)),
            retry: Some(RetryPolicy {
                attempts: 2,
                retry_on: RetryOn::parse("5xx").expect("retryOn"),
                ..RetryPolicy::default()
            }),
            ..Route::default()
        }],
        clusters: HashMap::from([(
            "shop/b".to_owned(),
            Arc::new(Cluster::with_balancer("shop/b", balancer)),
        )]),
        ..Config::default()
    };
    let engine = Arc::new(Engine::new(config, Metrics::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let waypoint = listener.local_addr().expect("addr");
    tokio::spawn(weft_waypoint::fronts::http::serve_http(
        listener,
        engine,
        std::future::pending(),
    ));
    let client = Client::builder(TokioExecutor::new()).build_http();

    // Zone a fails every request: after three failures it is ejected and
    // zone b serves everything.
    let mut served = Vec::new();
    for _ in 0..30 {
        served.push(call(&client, waypoint).await);
    }
    let tail = &served[10..];
    assert!(
        tail.iter().all(|(s, app)| *s == 200 && app == "zone-b"),
        "traffic did not move to zone b: {served:?}"
    );

    // Zone a recovers (a healthy instance on the same address): once its
    // ejection ends, traffic comes back to the caller's zone.
    stop_a.send(()).expect("stop zone a");
    let mut recovered = None;
    for attempt in 0..100 {
        match TcpListener::bind(a_addr).await {
            Ok(l) => {
                drop(l);
                recovered = Some(app(&a_addr.to_string(), "zone-a", 0.0).await);
                break;
            }
            Err(_) if attempt < 99 => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("zone a's address never freed: {e}"),
        }
    }
    let _a = recovered.expect("zone a restarted");
    let started = std::time::Instant::now();
    loop {
        let (status, app) = call(&client, waypoint).await;
        assert_eq!(status, 200);
        if app == "zone-a" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "traffic never came back to zone a"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        let (status, app) = call(&client, waypoint).await;
        assert_eq!(
            (status, app.as_str()),
            (200, "zone-a"),
            "traffic stays local"
        );
    }
}
