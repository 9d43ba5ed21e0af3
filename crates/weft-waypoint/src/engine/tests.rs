//! Table tests of the engine's phases, without sockets: requests are
//! `Request<Full<Bytes>>`, tries go to a [`Transport`] that answers from a
//! script and records what it was sent.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::*;
use crate::engine::retry::{RetryOn, RetryPolicy};
use crate::engine::route::{Backend, Fault, Redirect, Rewrite, Route};
use crate::engine::tries::full;
use crate::engine::upstream::{ResponseFuture, SendError, Transport};
use crate::policy::ratelimit::{LocalCounts, RateLimiter, Rule, Store};

/// What a scripted endpoint answers.
#[derive(Clone)]
enum Answer {
    Status(u16),
    ConnectError,
}

/// What a scripted endpoint saw: endpoint, path and query, `Host`.
type Seen = (SocketAddr, String, Option<String>);
/// Run on each send (a test changes the configuration mid-request).
type Hook = Box<dyn FnMut() + Send>;

/// A transport that answers from a script, records each request's
/// endpoint and path, and may run a hook on each send.
#[derive(Clone, Default)]
struct Scripted {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    on_send: Arc<Mutex<Option<Hook>>>,
}

impl Scripted {
    fn answering(answers: &[Answer]) -> Scripted {
        let s = Scripted::default();
        s.answers
            .lock()
            .expect("lock")
            .extend(answers.iter().cloned());
        s
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Transport for Scripted {
    fn send(&self, request: Request<Body>, _http2: bool) -> ResponseFuture {
        let endpoint: SocketAddr = request
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse().ok())
            .expect("endpoint-addressed request");
        let host = request
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        self.seen.lock().expect("lock").push((endpoint, path, host));
        if let Some(hook) = self.on_send.lock().expect("lock").as_mut() {
            hook();
        }
        let answer = self
            .answers
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(Answer::Status(200));
        Box::pin(async move {
            match answer {
                Answer::Status(code) => {
                    let mut r = Response::new(full("from upstream"));
                    *r.status_mut() = StatusCode::from_u16(code).expect("status");
                    Ok(r)
                }
                Answer::ConnectError => Err(SendError::Connect("refused".into())),
            }
        })
    }
}

const A: &str = "10.0.0.1:8080";
const B: &str = "10.0.0.2:8080";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// A route named `r` to cluster `c`, no retries unless set.
fn route() -> Route {
    Route {
        name: "r".into(),
        backends: vec![Backend {
            service: "c".into(),
            weight: 1,
        }],
        ..Route::default()
    }
}

fn config_with(route: Route, endpoint: &str) -> Config {
    config_of(route, Cluster::new("c", vec![addr(endpoint)]))
}

/// `route` to cluster `c`.
fn config_of(route: Route, cluster: Cluster) -> Config {
    Config {
        routes: vec![route],
        clusters: HashMap::from([("c".to_owned(), Arc::new(cluster))]),
        ..Config::default()
    }
}

fn engine(config: Config, transport: &Scripted) -> Engine {
    Engine::with_upstream(
        config,
        crate::telemetry::metrics::Metrics::default(),
        Upstream::custom(transport.clone()),
    )
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", "shop.example")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// The response flags the engine's metrics recorded for its requests.
fn flags(engine: &Engine) -> Vec<String> {
    engine
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with(weft_telemetry::names::REQUESTS_TOTAL))
        .filter_map(|l| l.split("response_flags=\"").nth(1)?.split('"').next())
        .map(str::to_owned)
        .collect()
}

fn retrying(attempts: u32, on: &str) -> Option<RetryPolicy> {
    Some(RetryPolicy {
        attempts,
        retry_on: RetryOn::parse(on).expect("retry_on"),
        base: Duration::from_millis(1),
        max: Duration::from_millis(1),
        ..RetryPolicy::default()
    })
}

/// Phases that answer by themselves: (what, route, request path,
/// status, flags, tries sent upstream).
#[tokio::test]
async fn phases_that_answer() {
    type Case = (&'static str, Route, &'static str, u16, &'static str, usize);
    let cases: Vec<Case> = vec![
        ("plain request", route(), "/a", 200, "-", 1),
        (
            "no route matches",
            Route {
                matches: vec![crate::engine::route::RouteMatch {
                    path: Some(crate::engine::route::PathMatch::Exact("/only".into())),
                    ..Default::default()
                }],
                ..route()
            },
            "/other",
            404,
            "NR",
            0,
        ),
        (
            "injected abort",
            Route {
                fault: Some(Fault {
                    delay: None,
                    abort: Some((100.0, 418)),
                }),
                ..route()
            },
            "/a",
            418,
            "FI",
            0,
        ),
        (
            "redirect",
            Route {
                redirect: Some(Redirect {
                    scheme: Some("https".into()),
                    host: None,
                    port: None,
                    path: Some("/new".into()),
                    status: 301,
                }),
                ..route()
            },
            "/a?x=1",
            301,
            "-",
            0,
        ),
        (
            "no such cluster",
            Route {
                backends: vec![Backend {
                    service: "missing".into(),
                    weight: 1,
                }],
                ..route()
            },
            "/a",
            503,
            "UH",
            0,
        ),
        (
            "a rewrite that cannot be built is the proxy's fault",
            Route {
                rewrite: Some(Rewrite {
                    full_path: Some("/bad path".into()),
                    ..Rewrite::default()
                }),
                ..route()
            },
            "/a",
            500,
            "-",
            0,
        ),
        (
            "a delay is kept when the upstream then fails",
            Route {
                fault: Some(Fault {
                    delay: Some((100.0, Duration::from_millis(1))),
                    abort: None,
                }),
                ..route()
            },
            "/fail",
            503,
            "UF,DI",
            1,
        ),
    ];
    for (what, route, path, status, flag, tries) in cases {
        let answers = if path == "/fail" {
            vec![Answer::ConnectError]
        } else {
            vec![Answer::Status(200)]
        };
        let transport = Scripted::answering(&answers);
        let engine = engine(config_with(route, A), &transport);
        let response = engine.handle(get(path)).await;
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(flags(&engine), [flag], "{what}");
        assert_eq!(transport.seen().len(), tries, "{what}");
        if status == 301 {
            assert_eq!(
                response.headers()["location"],
                "https://shop.example/new?x=1",
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn receive_refuses_hosts_that_disagree_and_strips_internal_headers() {
    let transport = Scripted::answering(&[]);
    let mut config = config_with(route(), A);
    config.internal_headers = vec![http::HeaderName::from_static("x-weft-tier")];
    let engine = engine(config, &transport);
    let mismatched = Request::builder()
        .uri("http://other.example/a")
        .header("host", "shop.example")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(engine.handle(mismatched).await.status(), 400);
    assert_eq!(flags(&engine), ["DPE"]);
    let forged = Request::builder()
        .uri("/a")
        .header("host", "shop.example")
        .header("x-weft-tier", "gold")
        .header("connection", "close")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (_, mut parts, settled) = engine.receive(
        &engine.current(),
        None,
        forged.map(crate::engine::upstream::boxed),
    );
    assert!(settled.is_ok());
    assert!(!parts.headers().contains_key("x-weft-tier"));
    assert!(!parts.headers().contains_key("connection"));
    assert_eq!(
        parts.headers_mut().remove("host").expect("host"),
        "shop.example"
    );
}

#[tokio::test]
async fn route_phase_refuses_targets_it_does_not_serve() {
    let transport = Scripted::answering(&[]);
    let engine = engine(config_with(route(), A), &transport);
    let response = engine.handle_for(Some("shop/unknown:80"), get("/a")).await;
    assert_eq!(response.status(), 404);
    assert_eq!(flags(&engine), ["NR"]);
}

#[tokio::test]
async fn authenticate_and_authorize_refuse() {
    use crate::policy::jwt::{Authenticator, JwtRule, KeySource};
    let transport = Scripted::answering(&[]);
    let mut config = config_with(route(), A);
    config.authn.insert(
        String::new(),
        Arc::new(Authenticator::new(vec![JwtRule {
            issuer: "https://issuer.example".into(),
            audiences: Vec::new(),
            keys: KeySource::inline(&serde_json::json!({"keys": []})),
            locations: Vec::new(),
            forward_original_token: false,
            claim_to_headers: Vec::new(),
        }])),
    );
    let deny = weft_core::l7::L7Authz {
        policy: "shop/no-admin".into(),
        action: weft_core::l7::AuthzAction::Deny,
        dry_run: false,
        rules: vec![weft_core::l7::L7AuthzRule {
            to: vec![weft_core::l7::L7Operation {
                paths: vec!["/admin*".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        provider: None,
    };
    config.authz.insert(String::new(), Arc::new(vec![deny]));
    let engine = engine(config, &transport);
    // (what, path, bearer token, status)
    let cases = [
        ("no token, allowed path", "/a", None, 200),
        ("bad token", "/a", Some("not.a.token"), 401),
        ("no token, denied path", "/admin/x", None, 403),
    ];
    for (what, path, token, status) in cases {
        let mut request = get(path);
        if let Some(t) = token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        assert_eq!(
            engine.handle(request).await.status().as_u16(),
            status,
            "{what}"
        );
    }
    let mut seen = flags(&engine);
    seen.sort();
    assert_eq!(seen, ["-", "-", "RBAC"], "401 carries no flag, 403 RBAC");
    assert_eq!(
        transport.seen().len(),
        1,
        "refused requests never go upstream"
    );
}

#[tokio::test]
async fn rate_limit_refuses_with_headers() {
    let transport = Scripted::answering(&[]);
    let mut config = config_with(route(), A);
    config.limits.insert(
        String::new(),
        Arc::new(RateLimiter {
            policy: "shop/one-per-minute".into(),
            rules: vec![Rule {
                name: "all".into(),
                when: Vec::new(),
                count_by: Vec::new(),
                requests: 1,
                period: Duration::from_secs(60),
                burst: 1,
            }],
            store: Store::Local(LocalCounts::default()),
            signature: 0,
        }),
    );
    let engine = engine(config, &transport);
    let first = engine.handle(get("/a")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-remaining"], "0");
    let second = engine.handle(get("/a")).await;
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));
    let mut seen = flags(&engine);
    seen.sort();
    assert_eq!(seen, ["-", "RL"]);
}

#[tokio::test]
async fn balance_overflows_at_the_breaker() {
    let transport = Scripted::answering(&[]);
    let mut cluster = Cluster::new("c", vec![addr(A)]);
    cluster.breaker = Breaker::new(0, 0);
    let engine = engine(config_of(route(), cluster), &transport);
    assert_eq!(engine.handle(get("/a")).await.status(), 503);
    assert_eq!(flags(&engine), ["UO"]);
    assert!(transport.seen().is_empty());
}

#[tokio::test]
async fn rewrite_reaches_the_upstream() {
    let transport = Scripted::answering(&[]);
    let rewritten = Route {
        rewrite: Some(Rewrite {
            prefix: Some(("/api".into(), "/v2".into())),
            full_path: None,
            host: Some("backend.internal".into()),
        }),
        ..route()
    };
    let engine = engine(config_with(rewritten, A), &transport);
    assert_eq!(engine.handle(get("/api/items?id=7")).await.status(), 200);
    assert_eq!(
        transport.seen(),
        [(
            addr(A),
            "/v2/items?id=7".to_owned(),
            Some("backend.internal".to_owned())
        )]
    );
}

/// Tries: (what, retry policy, answers, status, flags, tries).
#[tokio::test]
async fn tries_and_retries() {
    type Case = (
        &'static str,
        Option<RetryPolicy>,
        Vec<Answer>,
        u16,
        &'static str,
        usize,
    );
    let cases: Vec<Case> = vec![
        (
            "a 503 retried, then answered",
            retrying(2, "5xx"),
            vec![Answer::Status(503), Answer::Status(200)],
            200,
            "-",
            2,
        ),
        (
            "retries run out: the last answer",
            retrying(1, "5xx"),
            vec![Answer::Status(503), Answer::Status(503)],
            503,
            "-",
            2,
        ),
        (
            "not retryable: answered at once",
            retrying(2, "connect-failure"),
            vec![Answer::Status(503)],
            503,
            "-",
            1,
        ),
        (
            "a connect failure without retries",
            None,
            vec![Answer::ConnectError],
            503,
            "UF",
            1,
        ),
    ];
    for (what, retry, answers, status, flag, tries) in cases {
        let transport = Scripted::answering(&answers);
        let engine = engine(config_with(Route { retry, ..route() }, A), &transport);
        assert_eq!(
            engine.handle(get("/a")).await.status().as_u16(),
            status,
            "{what}"
        );
        assert_eq!(flags(&engine), [flag], "{what}");
        assert_eq!(transport.seen().len(), tries, "{what}");
    }
}

#[tokio::test]
async fn an_exhausted_retry_budget_is_flagged() {
    let transport = Scripted::answering(&[Answer::Status(503), Answer::Status(200)]);
    let mut cluster = Cluster::new("c", vec![addr(A)]);
    // No retry may be withdrawn: the budget allows none.
    cluster.rate_budget = Some(crate::engine::budget::RateBudget::new(
        0.0,
        0.0,
        Duration::from_secs(10),
    ));
    let retried = Route {
        retry: retrying(2, "5xx"),
        ..route()
    };
    let engine = engine(config_of(retried, cluster), &transport);
    assert_eq!(engine.handle(get("/a")).await.status(), 503);
    assert_eq!(flags(&engine), ["URX"]);
    assert_eq!(transport.seen().len(), 1);
}

/// A configuration change while a request is in flight does not reach it:
/// its retry goes where its own snapshot says, with its own policy.
#[tokio::test]
async fn a_request_keeps_its_snapshot_across_a_config_change() {
    let transport = Scripted::answering(&[Answer::Status(503), Answer::Status(200)]);
    let engine = Arc::new(engine(
        config_with(
            Route {
                retry: retrying(1, "5xx"),
                ..route()
            },
            A,
        ),
        &transport,
    ));
    // On the first try, the configuration changes: cluster `c` now has
    // endpoint B, and the route no longer retries.
    let swapped = Arc::new(Mutex::new(false));
    {
        let (engine, swapped) = (Arc::downgrade(&engine), swapped.clone());
        *transport.on_send.lock().expect("lock") = Some(Box::new(move || {
            let mut done = swapped.lock().expect("lock");
            if !*done && let Some(engine) = engine.upgrade() {
                engine.update(config_with(route(), B));
                *done = true;
            }
        }));
    }
    let response = engine.handle(get("/a")).await;
    assert!(
        *swapped.lock().expect("lock"),
        "the change happened mid-request"
    );
    assert_eq!(response.status(), 200, "retried under the old policy");
    let endpoints: Vec<SocketAddr> = transport.seen().iter().map(|s| s.0).collect();
    assert_eq!(
        endpoints,
        [addr(A), addr(A)],
        "both tries used the old cluster"
    );
    // The next request sees the new configuration.
    assert_eq!(engine.handle(get("/a")).await.status(), 200);
    assert_eq!(transport.seen().last().map(|s| s.0), Some(addr(B)));
}

/// `buffer`: a body within the replay limit is kept and retried; a larger
/// one is sent once, never retried.
#[tokio::test]
async fn buffer_keeps_small_bodies_for_replay_only() {
    // (what, body size, tries)
    let cases = [
        ("small body: retried", 1024, 2),
        (
            "body over the replay limit: sent once",
            DEFAULT_MAX_REPLAY + 1,
            1,
        ),
    ];
    for (what, size, tries) in cases {
        let transport = Scripted::answering(&[Answer::Status(503), Answer::Status(200)]);
        let retried = Route {
            retry: retrying(1, "5xx"),
            ..route()
        };
        let engine = engine(config_with(retried, A), &transport);
        let request = Request::builder()
            .method("POST")
            .uri("/upload")
            .header("host", "shop.example")
            .body(Full::new(Bytes::from(vec![b'x'; size])))
            .expect("request");
        engine.handle(request).await;
        assert_eq!(transport.seen().len(), tries, "{what}");
    }
}

/// `mirror`: a copy goes to the mirror's cluster, marked as shadow
/// traffic; the caller gets the primary's answer.
#[tokio::test]
async fn mirror_sends_a_marked_copy() {
    let transport = Scripted::answering(&[]);
    let mirrored = Route {
        mirror: Some(crate::engine::route::Mirror {
            service: "m".into(),
            percent: 100.0,
        }),
        ..route()
    };
    let mut config = config_with(mirrored, A);
    config
        .clusters
        .insert("m".into(), Arc::new(Cluster::new("m", vec![addr(B)])));
    let engine = engine(config, &transport);
    assert_eq!(engine.handle(get("/a")).await.status(), 200);
    // The copy is sent from a task of its own: wait for it to be seen.
    for _ in 0..100 {
        if transport.seen().len() == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut seen = transport.seen();
    seen.sort();
    assert_eq!(
        seen,
        [
            (addr(A), "/a".to_owned(), Some("shop.example".to_owned())),
            (
                addr(B),
                "/a".to_owned(),
                Some("shop.example-shadow".to_owned())
            ),
        ]
    );
}

#[tokio::test]
async fn local_answers_to_grpc_callers_are_grpc_statuses() {
    let transport = Scripted::answering(&[]);
    let engine = engine(
        config_with(
            Route {
                fault: Some(Fault {
                    delay: None,
                    abort: Some((100.0, 503)),
                }),
                ..route()
            },
            A,
        ),
        &transport,
    );
    let mut request = get("/pkg.Svc/Call");
    request
        .headers_mut()
        .insert("content-type", "application/grpc".parse().expect("header"));
    let response = engine.handle(request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "14");
    let body = response.into_body().collect().await.expect("body");
    assert!(body.to_bytes().is_empty());
}

#[test]
fn phase_order_is_documented_once() {
    // The engine's documentation is the one list; the crate map points to
    // it rather than repeating it.
    let lib = include_str!("../lib.rs");
    assert!(lib.contains("the list is in [`engine`]'s documentation"));
    let doc = include_str!("mod.rs");
    let order = [
        "`receive`",
        "`route`",
        "`authenticate`",
        "`authorize`",
        "`rate_limit`",
        "`fault`",
        "`redirect`",
        "`balance`",
        "`rewrite`",
        "`buffer`",
        "`mirror`",
        "`try`",
        "`respond`",
        "`log`",
    ];
    let positions: Vec<usize> = order
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let item = format!("{}. {p}", i + 1);
            doc.find(&item).unwrap_or_else(|| panic!("{item} missing"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
}
