//! Scenario 1 of DESIGN.md, against real sockets: A calls B through the
//! engine with up to 3 retries, a 0.5 s per-try timeout, a 2 s overall
//! timeout and a retry budget of 20 % of the request rate plus a floor of
//! 1 retry per second (10 s window). B is the sample app, failing a share
//! of its requests or hanging.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use weft_sample_app::AppConfig;
use weft_waypoint::engine::budget::RateBudget;
use weft_waypoint::engine::retry::{RetryOn, RetryPolicy};
use weft_waypoint::engine::route::{Backend, Route};
use weft_waypoint::{Cluster, Config, Engine, Metrics};

const SERVICE: &str = "shop/b";
const RATIO: f64 = 0.2;
const FLOOR_PER_SECOND: f64 = 1.0;
const WINDOW: Duration = Duration::from_secs(10);

async fn app_b(fail_ratio: f64, latency: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = AppConfig {
        name: "b".into(),
        fail_ratio,
        latency,
        ..AppConfig::default()
    };
    tokio::spawn(weft_sample_app::serve_http(
        listener,
        config,
        std::future::pending(),
    ));
    addr
}

/// The waypoint in front of B, as scenario 1 configures it.
async fn waypoint(b: SocketAddr) -> (SocketAddr, Metrics) {
    let mut cluster = Cluster::new(SERVICE, vec![b]);
    cluster.rate_budget = Some(RateBudget::new(RATIO, FLOOR_PER_SECOND, WINDOW));
    let config = Config {
        routes: vec![Route {
            name: "a-to-b".into(),
            matches: vec![],
            backends: vec![Backend {
                service: SERVICE.into(),
                weight: 1,
            }],
            timeout: Some(Duration::from_secs(2)),
            retry: Some(RetryPolicy {
                attempts: 3,
                per_try_timeout: Some(Duration::from_millis(500)),
                retry_on: RetryOn::parse("5xx,reset,connect-failure").expect("retryOn"),
                ..RetryPolicy::default()
            }),
            ..Route::default()
        }],
        clusters: HashMap::from([(SERVICE.to_owned(), Arc::new(cluster))]),
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
    (addr, metrics)
}

/// `n` GETs, `concurrency` at a time: (status, duration) of each.
async fn load(addr: SocketAddr, n: usize, concurrency: usize) -> Vec<(u16, Duration)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next) = (client.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let started = Instant::now();
                let response = client
                    .get(format!("http://{addr}/").parse().expect("uri"))
                    .await
                    .expect("the waypoint always answers");
                let status = response.status().as_u16();
                let _ = response.into_body().collect().await;
                out.push((status, started.elapsed()));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all
}

fn success_rate(results: &[(u16, Duration)]) -> f64 {
    results.iter().filter(|(s, _)| *s == 200).count() as f64 / results.len() as f64
}

/// The most retries the budget can grant to `requests` within one window.
fn budget_cap(requests: usize) -> f64 {
    RATIO * requests as f64 + FLOOR_PER_SECOND * WINDOW.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_failures_are_retried_well_inside_the_budget() {
    let (addr, metrics) = waypoint(app_b(0.05, Duration::ZERO).await).await;
    let n = 2000;
    let results = load(addr, n, 16).await;
    let (retries, exhausted, _) = metrics.resilience(SERVICE);
    // Each request fails only if all 4 tries fail: 0.05^4 ≈ 6e-6.
    let rate = success_rate(&results);
    assert!(rate >= 0.998, "success rate {rate}");
    let ratio = retries as f64 / n as f64;
    assert!(
        (0.03..0.08).contains(&ratio),
        "retries per request {ratio} (expected ≈ 0.053)"
    );
    assert_eq!(exhausted, 0, "the budget was never the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_failing_retries_are_capped_by_the_budget() {
    let (addr, metrics) = waypoint(app_b(0.5, Duration::ZERO).await).await;
    let n = 2000;
    let started = Instant::now();
    let results = load(addr, n, 16).await;
    let elapsed = started.elapsed();
    let (retries, exhausted, _) = metrics.resilience(SERVICE);
    // Within one window the cap is ratio × requests + floor; a longer run
    // gets one floor per window.
    let windows = (elapsed.as_secs_f64() / WINDOW.as_secs_f64())
        .ceil()
        .max(1.0);
    let cap = RATIO * n as f64 + FLOOR_PER_SECOND * WINDOW.as_secs_f64() * windows;
    assert!(
        retries as f64 <= cap,
        "{retries} retries for {n} requests exceed the budget ({cap})"
    );
    assert!(exhausted > 0, "the budget must have been the limit");
    // What the budget buys: half the originals succeed, and half of the
    // retries that were granted.
    let expected = (0.5 * n as f64 + 0.5 * retries as f64) / n as f64;
    let rate = success_rate(&results);
    // Every attempt is a coin toss: four standard deviations of the sum.
    let tolerance = 4.0 * (0.25 * (n as f64 + retries as f64)).sqrt() / n as f64;
    assert!(
        (rate - expected).abs() < tolerance,
        "success rate {rate}, budgeted retries buy {expected} ± {tolerance}"
    );
    assert!(
        rate < 0.5 + 0.5 * budget_cap(n) / n as f64 + tolerance,
        "more success than the budget allows: {rate}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_is_not_hammered() {
    let (addr, metrics) = waypoint(app_b(1.0, Duration::ZERO).await).await;
    let n = 1000;
    let results = load(addr, n, 16).await;
    let (retries, exhausted, _) = metrics.resilience(SERVICE);
    assert_eq!(success_rate(&results), 0.0);
    assert!(
        results.iter().all(|(s, _)| *s == 503),
        "the original failure is returned"
    );
    assert!(
        retries as f64 <= budget_cap(n),
        "{retries} retries for {n} requests: B was hammered"
    );
    // Without a budget it would be 3 retries per request.
    assert!(retries < 3 * n as u64 / 4, "{retries}");
    assert!(exhausted > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_tries_are_cut_and_no_request_outlives_the_overall_timeout() {
    let (addr, metrics) = waypoint(app_b(0.0, Duration::from_secs(30)).await).await;
    // Three callers, well inside the budget's floor: each try is cut at
    // 0.5 s and retried, until the 2 s overall timeout ends the request.
    let results = load(addr, 3, 3).await;
    let (retries, _, try_timeouts) = metrics.resilience(SERVICE);
    for (status, took) in &results {
        assert_eq!(*status, 504, "a hung upstream is a gateway timeout");
        assert!(
            (Duration::from_millis(1900)..=Duration::from_millis(2300)).contains(took),
            "{took:?}: the overall timeout is 2 s"
        );
    }
    assert!(try_timeouts >= 9, "{try_timeouts}: every 0.5 s try was cut");
    assert!(retries >= 9, "{retries}: three retries per request");
    // Twenty more at once: the budget runs out, so many give up sooner,
    // and none outlives 2 s.
    let results = load(addr, 20, 20).await;
    for (status, took) in &results {
        assert_eq!(*status, 504);
        assert!(*took <= Duration::from_millis(2300), "{took:?}");
        assert!(
            *took >= Duration::from_millis(450),
            "{took:?}: cut before 0.5 s"
        );
    }
    let (_, exhausted, _) = metrics.resilience(SERVICE);
    assert!(exhausted > 0, "the budget bounded the retries");
}

/// A chunked request body (no length given) of `size` bytes.
fn chunked(size: usize) -> http_body_util::StreamBody<chunks::Chunks> {
    http_body_util::StreamBody::new(chunks::Chunks::new(size))
}

/// A stream of 1 KiB data frames.
mod chunks {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::Frame;

    pub(crate) struct Chunks {
        left: usize,
    }

    impl Chunks {
        pub(crate) fn new(size: usize) -> Self {
            Chunks { left: size }
        }
    }

    impl tokio_stream::Stream for Chunks {
        type Item = Result<Frame<Bytes>, std::convert::Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            let n = self.left.min(1024);
            self.left -= n;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chunked_bodies_are_replayed_large_ones_sent_once_and_intact() {
    // A failing B: small bodies are retried, large ones are not.
    let (failing, metrics) = waypoint(app_b(1.0, Duration::ZERO).await).await;
    let client: Client<_, http_body_util::StreamBody<chunks::Chunks>> =
        Client::builder(TokioExecutor::new()).build_http();
    let post = |addr: SocketAddr, size| {
        http::Request::post(format!("http://{addr}/echo"))
            .body(chunked(size))
            .expect("request")
    };
    let r = client
        .request(post(failing, 4 * 1024))
        .await
        .expect("response");
    assert_eq!(r.status(), 503);
    let (retries, _, _) = metrics.resilience(SERVICE);
    assert_eq!(retries, 3, "a 4 KiB chunked body is replayed");
    let r = client
        .request(post(failing, 200 * 1024))
        .await
        .expect("response");
    assert_eq!(r.status(), 503);
    let (after, _, _) = metrics.resilience(SERVICE);
    assert_eq!(after, retries, "a 200 KiB body is sent once");
    // A healthy B echoes a large chunked body byte for byte.
    let (healthy, _) = waypoint(app_b(0.0, Duration::ZERO).await).await;
    let r = client
        .request(post(healthy, 200 * 1024))
        .await
        .expect("response");
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body.len(), 200 * 1024);
    assert!(body.iter().all(|b| *b == b'x'));
}
