//! Routing features through the engine, against the sample app (routes
//! match the app's own paths: `/echo` aborts, `/ip` is delayed, `/headers`
//! is mirrored): a 90/10
//! canary split, header-match routing, fault injection (abort and delay),
//! mirroring, redirects, rewrites and header changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use weft_sample_app::AppConfig;
use weft_waypoint::engine::route::{
    Backend, Fault, HeaderChanges, HeaderMatch, Mirror, PathMatch, Redirect, Rewrite, Route,
    RouteMatch, ValueMatch,
};
use weft_waypoint::{Cluster, Config, Engine, Metrics};

async fn app(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = AppConfig {
        name: name.into(),
        ..AppConfig::default()
    };
    tokio::spawn(weft_sample_app::serve_http(
        listener,
        config,
        std::future::pending(),
    ));
    addr
}

/// A server that counts requests and remembers the last host header.
async fn counter() -> (SocketAddr, Arc<AtomicUsize>, Arc<std::sync::Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (count, host) = (Arc::new(AtomicUsize::new(0)), Arc::default());
    let (c, h): (Arc<AtomicUsize>, Arc<std::sync::Mutex<String>>) =
        (count.clone(), Arc::clone(&host));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (c, h) = (c.clone(), h.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        c.fetch_add(1, Ordering::SeqCst);
                        if let Some(v) = req.headers().get("host").and_then(|v| v.to_str().ok()) {
                            *h.lock().expect("lock") = v.to_owned();
                        }
                        async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"shadow"),
                            )))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, count, host)
}

fn to(service: &str, weight: u32) -> Backend {
    Backend {
        service: service.into(),
        weight,
    }
}

fn prefix(p: &str) -> Vec<RouteMatch> {
    vec![RouteMatch {
        path: Some(PathMatch::Prefix(p.into())),
        ..RouteMatch::default()
    }]
}

struct Harness {
    addr: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
    mirrored: Arc<AtomicUsize>,
    mirror_host: Arc<std::sync::Mutex<String>>,
}

impl Harness {
    async fn start() -> Harness {
        let (v1, v2) = (app("v1").await, app("v2").await);
        let (shadow, mirrored, mirror_host) = counter().await;
        let routes = vec![
            Route {
                name: "canary-by-header".into(),
                matches: vec![RouteMatch {
                    headers: vec![HeaderMatch {
                        name: "x-canary".into(),
                        value: ValueMatch::Exact("always".into()),
                    }],
                    ..RouteMatch::default()
                }],
                backends: vec![to("v2", 1)],
                ..Route::default()
            },
            Route {
                name: "abort".into(),
                matches: prefix("/echo"),
                backends: vec![to("v1", 1)],
                fault: Some(Fault {
                    abort: Some((50.0, 418)),
                    delay: None,
                }),
                ..Route::default()
            },
            Route {
                name: "delay".into(),
                matches: prefix("/ip"),
                backends: vec![to("v1", 1)],
                fault: Some(Fault {
                    delay: Some((100.0, Duration::from_millis(200))),
                    abort: None,
                }),
                ..Route::default()
            },
            Route {
                name: "mirror".into(),
                matches: prefix("/headers"),
                backends: vec![to("v1", 1)],
                mirror: Some(Mirror {
                    service: "shadow".into(),
                    percent: 100.0,
                }),
                ..Route::default()
            },
            Route {
                name: "moved".into(),
                matches: prefix("/old-site"),
                redirect: Some(Redirect {
                    scheme: Some("https".into()),
                    host: Some("example.com".into()),
                    port: None,
                    path: Some("/new".into()),
                    status: 301,
                }),
                ..Route::default()
            },
            Route {
                name: "api".into(),
                matches: prefix("/api"),
                backends: vec![to("v1", 1)],
                rewrite: Some(Rewrite {
                    prefix: Some(("/api".into(), "/".into())),
                    ..Rewrite::default()
                }),
                request_headers: HeaderChanges {
                    add: vec![("x-added-by-route".into(), "yes".into())],
                    ..HeaderChanges::default()
                },
                response_headers: HeaderChanges {
                    set: vec![("x-route".into(), "api".into())],
                    ..HeaderChanges::default()
                },
                ..Route::default()
            },
            Route {
                name: "split".into(),
                backends: vec![to("v1", 90), to("v2", 10)],
                ..Route::default()
            },
        ];
        let clusters = [("v1", v1), ("v2", v2), ("shadow", shadow)]
            .into_iter()
            .map(|(n, a)| (n.to_owned(), Arc::new(Cluster::new(n, vec![a]))))
            .collect::<HashMap<_, _>>();
        let engine = Arc::new(Engine::new(
            Config {
                routes,
                clusters,
                ..Config::default()
            },
            Metrics::default(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(weft_waypoint::fronts::http::serve_http(
            listener,
            engine,
            std::future::pending(),
        ));
        Harness {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            mirrored,
            mirror_host,
        }
    }

    /// (status, headers, body).
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
        let mut req = http::Request::get(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = self
            .client
            .request(req.body(Empty::new()).expect("request"))
            .await
            .expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (
            parts.status.as_u16(),
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    async fn app_of(&self, path: &str, headers: &[(&str, &str)]) -> String {
        let (_, h, _) = self.get(path, headers).await;
        h.get("x-weft-app")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_split_is_ninety_ten() {
    let h = Harness::start().await;
    let n = 3000;
    let mut canary = 0;
    for _ in 0..n {
        if h.app_of("/", &[]).await == "v2" {
            canary += 1;
        }
    }
    let share = f64::from(canary) / f64::from(n);
    // 3 000 draws at 10 %: one standard deviation is 0.55 %.
    assert!((share - 0.10).abs() < 0.025, "canary share {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_match_routes_to_the_canary() {
    let h = Harness::start().await;
    for _ in 0..50 {
        assert_eq!(h.app_of("/", &[("x-canary", "always")]).await, "v2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay_by_percentage() {
    let h = Harness::start().await;
    let n = 1000;
    let mut aborted = 0;
    for _ in 0..n {
        match h.get("/echo", &[]).await.0 {
            418 => aborted += 1,
            200 => {}
            other => panic!("unexpected {other}"),
        }
    }
    let share = f64::from(aborted) / f64::from(n);
    assert!((share - 0.5).abs() < 0.06, "abort share {share}");
    let started = Instant::now();
    let (status, _, _) = h.get("/ip", &[]).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_requests_reach_the_shadow_and_do_not_change_the_answer() {
    let h = Harness::start().await;
    for _ in 0..50 {
        let (status, headers, _) = h.get("/headers", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(
            headers.get("x-weft-app").map(|v| v.as_bytes()),
            Some(&b"v1"[..])
        );
    }
    let started = Instant::now();
    while h.mirrored.load(Ordering::SeqCst) < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "mirror copies missing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.mirrored.load(Ordering::SeqCst), 50);
    let host = h.mirror_host.lock().expect("lock").clone();
    assert!(host.ends_with("-shadow"), "{host}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_rewrites() {
    let h = Harness::start().await;
    let (status, headers, _) = h.get("/old-site/page?q=1", &[]).await;
    assert_eq!(status, 301);
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some("https://example.com/new?q=1")
    );
    // /api/status/202 is forwarded as /status/202, which answers 202.
    let (status, headers, _) = h.get("/api/status/202", &[]).await;
    assert_eq!(status, 202);
    assert_eq!(
        headers.get("x-route").and_then(|v| v.to_str().ok()),
        Some("api")
    );
    // The request header the route added reached the app.
    let (status, _, body) = h.get("/api/headers", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("x-added-by-route"), "{body}");
}
