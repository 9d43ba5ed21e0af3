//! The phases that reach endpoints: `buffer` (keep the body for replay),
//! `mirror` (a copy, answer ignored) and `try` (tries within budgets, each
//! bounded, retried after backoff), and the request as sent upstream.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use weft_telemetry::flags::Flag;

use crate::engine::config::{Cluster, Config, hash_key};
use crate::engine::ctx::Ctx;
use crate::engine::error::L7Error;
use crate::engine::lb::Endpoint;
use crate::engine::retry::{Outcome, RetryOn, RetryPolicy, retry_after};
use crate::engine::route::Route;
use crate::engine::upstream::Body;
use crate::engine::{Engine, MAX_RETRY_AFTER};

/// A body that was partly read: the part read, then the rest.
struct Prefixed {
    head: Option<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = crate::engine::upstream::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(head) = self.head.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// The request body, for replay or not.
pub(crate) enum Payload {
    /// Buffered: can be sent again.
    Replayable(Bytes),
    /// Too large to keep: sent once.
    Once(Option<Body>),
}

/// A body of `bytes`.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

impl Engine {
    /// Phase 10, `buffer`: reads the body up to the replay limit. A body
    /// known to be larger, or found to be larger while reading, is sent
    /// once: what was read, then the rest, as it arrives.
    pub(crate) async fn buffer(&self, ctx: &mut Ctx, mut body: Body) -> Result<Payload, L7Error> {
        use http_body::Body as _;
        if body.size_hint().lower() > self.max_replay as u64 {
            return Ok(Payload::Once(Some(body)));
        }
        let mut kept = bytes::BytesMut::new();
        loop {
            match body.frame().await {
                None => {
                    ctx.record.access.bytes_received = kept.len() as u64;
                    return Ok(Payload::Replayable(kept.freeze()));
                }
                Some(Err(e)) => return Err(L7Error::Downstream(e.to_string())),
                Some(Ok(frame)) => {
                    // Request trailers are rare; they are not forwarded.
                    if let Ok(data) = frame.into_data() {
                        kept.extend_from_slice(&data);
                    }
                    if kept.len() > self.max_replay {
                        let rest = Prefixed {
                            head: Some(kept.freeze()),
                            rest: body,
                        };
                        return Ok(Payload::Once(Some(rest.boxed())));
                    }
                }
            }
        }
    }

    /// Phase 11, `mirror`: a copy of a buffered request to the route's
    /// mirror service, by its percentage; the answer is dropped.
    pub(crate) fn mirror(&self, config: &Config, route: &Route, parts: &Parts, payload: &Payload) {
        let (Some(mirror), Payload::Replayable(bytes)) = (&route.mirror, payload) else {
            return;
        };
        if fastrand::f64() * 100.0 >= mirror.percent {
            return;
        }
        let Some(target) = config.clusters.get(&mirror.service) else {
            return;
        };
        let Some(index) = target
            .balancer
            .pick(fastrand::usize(..), fastrand::usize(..), None)
        else {
            return;
        };
        let Ok(mut copy) = upstream_request(
            parts,
            &target.balancer.endpoints()[index],
            full(bytes.clone()),
        ) else {
            return;
        };
        // Envoy marks shadow traffic by suffixing the host.
        if let Some(host) = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            && let Ok(v) = HeaderValue::from_str(&format!("{host}-shadow"))
        {
            copy.headers_mut().insert(http::header::HOST, v);
        }
        let client = self.client.clone();
        let (name, http2) = (target.name.clone(), target.http2);
        tokio::spawn(async move {
            if let Err(e) = client.request(copy, http2).await {
                tracing::debug!(service = %name, error = %e, "mirrored request failed");
            }
        });
    }

    /// Phase 12, `try`: tries until one answers, the retry policy and
    /// budgets say stop, or `deadline` (the route's timeout) passes. One
    /// timer per try bounds it by whichever comes first of its per-try
    /// timeout and the deadline.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn tries(
        &self,
        ctx: &mut Ctx,
        config: &Config,
        route: &Route,
        cluster: &Cluster,
        parts: &Parts,
        mut payload: Payload,
        deadline: Option<Instant>,
    ) -> Result<Response<Body>, L7Error> {
        // No retries: what they would retry on does not matter (and
        // parsing the default conditions on every request cost 1 % of it).
        let none = RetryPolicy {
            attempts: 0,
            per_try_timeout: None,
            retry_on: RetryOn::default(),
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        let policy = route.retry.as_ref().unwrap_or(&none);
        if let Some(b) = &cluster.rate_budget {
            b.deposit();
        }
        let _active = cluster.concurrency_budget.as_ref().map(|b| b.request());
        let mut _retry_slot = None;
        let mut retries = 0;
        let key = cluster.hash_on.as_ref().and_then(|on| hash_key(on, parts));
        loop {
            let index = cluster
                .balancer
                .pick(fastrand::usize(..), fastrand::usize(..), key)
                .ok_or_else(|| L7Error::NoHealthyUpstream(cluster.name.clone()))?;
            let chosen = &cluster.balancer.endpoints()[index];
            let endpoint = chosen.addr;
            ctx.record.access.upstream_host = Some(endpoint);
            ctx.record.destination = config.peers.get(&endpoint.ip()).cloned();
            ctx.record.access.upstream_cluster = Some(cluster.name.clone());
            let active = cluster.balancer.start(index);
            let body = match &mut payload {
                Payload::Replayable(bytes) => full(bytes.clone()),
                Payload::Once(body) => body.take().unwrap_or_else(|| full(Bytes::new())),
            };
            let mut request = upstream_request(parts, chosen, body)?;
            // Each try is a client span, child of this proxy's server span.
            let try_span = ctx.record.trace.as_ref().map(|t| {
                let context = weft_telemetry::trace::Context {
                    span_id: weft_telemetry::trace::span_id(),
                    ..t.context.clone()
                };
                weft_telemetry::trace::inject(request.headers_mut(), &context);
                (context.span_id, std::time::SystemTime::now())
            });
            ctx.record.tries += 1;
            let sent = self.client.request(request, cluster.http2);
            let (limit, whole) =
                try_limit(policy.per_try_timeout.map(|t| Instant::now() + t), deadline);
            let result = match limit {
                Some(at) => tokio::time::timeout_at(at, sent).await.map_err(|_| ()),
                None => Ok(sent.await),
            };
            let (outcome, result) = match result {
                // The route's timeout: no more tries.
                Err(()) if whole => return Err(L7Error::Timeout),
                Err(()) => {
                    self.metrics.try_timeout(&cluster.name);
                    (Outcome::Timeout, Err(L7Error::Timeout))
                }
                Ok(Ok(response)) => {
                    let outcome = Outcome::Response {
                        status: response.status().as_u16(),
                        grpc_status: response
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok()?.parse().ok()),
                    };
                    (outcome, Ok(response))
                }
                Ok(Err(e)) if e.is_connect() => (
                    Outcome::ConnectFailure,
                    Err(L7Error::Connect(format!("{endpoint}: {e}"))),
                ),
                Ok(Err(e)) => (
                    Outcome::Reset,
                    Err(L7Error::Reset(format!("{endpoint}: {e}"))),
                ),
            };
            drop(active);
            if let (Some(t), Some((span_id, start))) = (&ctx.record.trace, try_span) {
                record_try_span(
                    t, span_id, start, parts, endpoint, cluster, retries, outcome,
                );
            }
            cluster.balancer.report(index, outcome);
            let wanted = retries < policy.attempts
                && matches!(payload, Payload::Replayable(_))
                && policy.retry_on.matches(outcome);
            if !wanted {
                return result;
            }
            let rate_ok = cluster
                .rate_budget
                .as_ref()
                .is_none_or(|b| b.try_withdraw());
            let slot = match (&cluster.concurrency_budget, rate_ok) {
                (_, false) => None,
                (Some(b), true) => b.try_retry().map(Some),
                (None, true) => Some(None),
            };
            let Some(slot) = slot else {
                self.metrics.budget_exhausted(&cluster.name);
                ctx.record.flags.insert(Flag::RetryLimitExceeded);
                return result;
            };
            _retry_slot = slot;
            let wait = match &result {
                Ok(r) => retry_after(r.headers(), MAX_RETRY_AFTER),
                Err(_) => None,
            }
            .unwrap_or_else(|| policy.backoff(retries, fastrand::f64()));
            drop(result);
            self.metrics.retry(&cluster.name);
            retries += 1;
            match deadline {
                Some(d) if Instant::now() + wait >= d => {
                    tokio::time::sleep_until(d).await;
                    return Err(L7Error::Timeout);
                }
                _ => tokio::time::sleep(wait).await,
            }
        }
    }
}

/// When a try gives up: the earlier of its own deadline (`per_try`) and
/// the route's (`whole`), and whether that is the route's (which ends the
/// request; a try's own ends only the try).
pub(crate) fn try_limit(
    per_try: Option<Instant>,
    whole: Option<Instant>,
) -> (Option<Instant>, bool) {
    match (per_try, whole) {
        (Some(t), Some(w)) if w <= t => (Some(w), true),
        (Some(t), _) => (Some(t), false),
        (None, w) => (w, w.is_some()),
    }
}

/// The client span of one try.
#[allow(clippy::too_many_arguments)]
fn record_try_span(
    t: &crate::telemetry::RequestTrace,
    span_id: [u8; 8],
    start: std::time::SystemTime,
    parts: &Parts,
    endpoint: SocketAddr,
    cluster: &Cluster,
    retries: u32,
    outcome: Outcome,
) {
    use weft_telemetry::trace::{Kind, Value};
    let mut attributes = vec![
        ("http.request.method", Value::Str(parts.method.to_string())),
        ("server.address", Value::Str(endpoint.ip().to_string())),
        ("server.port", Value::Int(i64::from(endpoint.port()))),
        ("weft.upstream_cluster", Value::Str(cluster.name.clone())),
    ];
    if retries > 0 {
        attributes.push(("http.request.resend_count", Value::Int(i64::from(retries))));
    }
    let failed = match outcome {
        Outcome::Response { status, .. } => {
            attributes.push(("http.response.status_code", Value::Int(i64::from(status))));
            status >= 500
        }
        other => {
            attributes.push(("error.type", Value::Str(format!("{other:?}"))));
            true
        }
    };
    let mut span = t.span(
        span_id,
        Some(t.context.span_id),
        parts.method.to_string(),
        Kind::Client,
        start,
    );
    span.attributes = attributes;
    span.error = failed;
    t.record(span);
}

/// The request as sent to `endpoint`: same method, path and headers.
pub(crate) fn upstream_request(
    parts: &Parts,
    endpoint: &Endpoint,
    body: Body,
) -> Result<Request<Body>, L7Error> {
    let mut target = http::uri::Parts::default();
    target.scheme = Some(http::uri::Scheme::HTTP);
    target.authority = Some(endpoint.authority().clone());
    target.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    let uri = Uri::from_parts(target).map_err(|e| {
        L7Error::Internal(format!(
            "request target for {}{}: {e}",
            endpoint.addr, parts.uri
        ))
    })?;
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = parts.headers.clone();
    Ok(request)
}
