//! Table tests of the engine's phases, without sockets: requests are
//! `Request<Full<Bytes>>`, tries go to a [`Transport`] that answers from a
//! script and records what it was sent. `phases` covers the phases that
//! answer by themselves, `tries` the ones that reach endpoints.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use super::*;
use crate::engine::retry::{RetryOn, RetryPolicy};
use crate::engine::route::{Backend, Fault, Redirect, Rewrite, Route};
use crate::engine::tries::full;
use crate::engine::upstream::{ResponseFuture, SendError, Transport};
use crate::policy::ratelimit::{LocalCounts, RateLimiter, Rule, Store};

/// What a scripted endpoint answers.
#[derive(Clone)]
pub(super) enum Answer {
    Status(u16),
    ConnectError,
    /// This status after this long (tests with paused time).
    After(Duration, u16),
    /// 503 asking for a retry after this many seconds.
    RetryAfter(u64),
}

/// What a scripted endpoint saw: endpoint, path and query, `Host`.
pub(super) type Seen = (SocketAddr, String, Option<String>);
/// Run on each send (a test changes the configuration mid-request).
pub(super) type Hook = Box<dyn FnMut() + Send>;

/// A transport that answers from a script, records each request's
/// endpoint and path, and may run a hook on each send.
#[derive(Clone, Default)]
pub(super) struct Scripted {
    pub(super) answers: Arc<Mutex<VecDeque<Answer>>>,
    pub(super) seen: Arc<Mutex<Vec<Seen>>>,
    pub(super) on_send: Arc<Mutex<Option<Hook>>>,
}

impl Scripted {
    pub(super) fn answering(answers: &[Answer]) -> Scripted {
        let s = Scripted::default();
        s.answers
            .lock()
            .expect("lock")
            .extend(answers.iter().cloned());
        s
    }

    pub(super) fn seen(&self) -> Vec<Seen> {
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
                Answer::RetryAfter(secs) => {
                    let mut r = Response::new(full("busy"));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    r.headers_mut()
                        .insert("retry-after", secs.to_string().parse().expect("value"));
                    Ok(r)
                }
                Answer::After(wait, code) => {
                    tokio::time::sleep(wait).await;
                    let mut r = Response::new(full("from upstream"));
                    *r.status_mut() = StatusCode::from_u16(code).expect("status");
                    Ok(r)
                }
            }
        })
    }
}

pub(super) const A: &str = "10.0.0.1:8080";
pub(super) const B: &str = "10.0.0.2:8080";

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// A route named `r` to cluster `c`, no retries unless set.
pub(super) fn route() -> Route {
    Route {
        name: "r".into(),
        backends: vec![Backend {
            service: "c".into(),
            weight: 1,
        }],
        ..Route::default()
    }
}

pub(super) fn config_with(route: Route, endpoint: &str) -> Config {
    config_of(route, Cluster::new("c", vec![addr(endpoint)]))
}

/// `route` to cluster `c`.
pub(super) fn config_of(route: Route, cluster: Cluster) -> Config {
    Config {
        routes: vec![route],
        clusters: HashMap::from([("c".to_owned(), Arc::new(cluster))]),
        ..Config::default()
    }
}

pub(super) fn engine(config: Config, transport: &Scripted) -> Engine {
    Engine::with_upstream(
        config,
        crate::telemetry::metrics::Metrics::default(),
        Upstream::custom(transport.clone()),
    )
}

pub(super) fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", "shop.example")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// The response flags the engine's metrics recorded for its requests.
pub(super) fn flags(engine: &Engine) -> Vec<String> {
    engine
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with(weft_telemetry::names::REQUESTS_TOTAL))
        .filter_map(|l| l.split("response_flags=\"").nth(1)?.split('"').next())
        .map(str::to_owned)
        .collect()
}

pub(super) fn retrying(attempts: u32, on: &str) -> Option<RetryPolicy> {
    Some(RetryPolicy {
        attempts,
        retry_on: RetryOn::parse(on).expect("retry_on"),
        base: Duration::from_millis(1),
        max: Duration::from_millis(1),
        ..RetryPolicy::default()
    })
}

mod phases;
mod tries;
