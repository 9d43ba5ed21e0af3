//! The phases of [`Engine`], one function each, in the order the
//! [engine's documentation](crate::engine) gives. Each returns to continue
//! or answers with an [`L7Error`]; none touches a socket but `tries` and
//! `mirror` (in [`crate::engine::tries`]).

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use weft_core::l7::AuthzAction;
use weft_telemetry::flags::{Flag, Flags};
use weft_telemetry::labels::Peer;

use crate::engine::config::{Cluster, Config};
use crate::engine::ctx::{ClientPrincipal, Ctx, PeerAddr, SourceIdentity, SourcePeer, Tls};
use crate::engine::error::{L7Error, rate_limit_headers};
use crate::engine::route::{Redirect, Route, pick_backend, select};
use crate::engine::upstream::Body;
use crate::engine::{Engine, sanitize};
use crate::policy::extauthz::{Allowed, Denied, Verdict};
use crate::telemetry::access::AccessEntry;
use crate::telemetry::{RequestRecord, RequestTrace};

impl Engine {
    /// Phase 1, `receive`: normalizes the request and opens its context.
    /// The second value is whether the request's host settled (a request
    /// whose hosts disagree is refused, but still logged).
    pub(crate) fn receive(
        &self,
        config: &Config,
        target: Option<&str>,
        request: Request<Body>,
    ) -> (Ctx, Request<Body>, Result<(), L7Error>) {
        let (mut parts, body) = request.into_parts();
        let https = parts.extensions.get::<Tls>().is_some();
        let settled = sanitize::settle_host(&mut parts, https)
            .map_err(L7Error::Malformed)
            .and_then(|()| normalize_path(&mut parts, config.path_normalization));
        sanitize::strip_hop_by_hop(&mut parts.headers);
        let trusted = parts
            .extensions
            .get::<SourceIdentity>()
            .is_some_and(|s| config.trusted_proxies.contains(&s.0));
        if !trusted {
            sanitize::strip_internal(&mut parts.headers, &config.internal_headers);
        }
        let header = |name: &str| parts.headers.get(name).cloned();
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
        let source = parts
            .extensions
            .get::<SourceIdentity>()
            .map(|s| s.0.clone());
        let peer = match (&self.me, parts.extensions.get::<SourcePeer>()) {
            (Some(me), _) => me.clone(),
            (None, Some(p)) => p.0.clone(),
            (None, None) => source.as_ref().map_or_else(
                || Peer::shared_unknown().clone(),
                |s| Arc::new(Peer::from_principal(&s.to_string())),
            ),
        };
        let tracer = self.tracer.load_full();
        let trace = tracer
            .enabled()
            .then(|| RequestTrace::start(tracer.clone(), &parts.headers));
        let access = AccessEntry {
            start: None,
            method: parts.method.clone(),
            path: parts.uri.path_and_query().cloned(),
            protocol: if parts.version == http::Version::HTTP_2 {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            },
            forwarded_for: header("x-forwarded-for"),
            user_agent: header("user-agent"),
            request_id: header("x-request-id"),
            authority: header("host").or_else(|| {
                parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
            downstream_remote: parts.extensions.get::<PeerAddr>().map(|p| p.0),
            ..Default::default()
        };
        let ctx = Ctx {
            target: target.map(str::to_owned),
            grpc,
            claims: None,
            limit: None,
            record: RequestRecord {
                started: Instant::now(),
                route: String::new(),
                service: None,
                tries: 0,
                flags: Flags::NONE,
                source,
                protocol: if grpc { "grpc" } else { "http" },
                reporter: self.reporter,
                peer,
                destination: None,
                access,
                trace,
            },
        };
        (ctx, Request::from_parts(parts, body), settled)
    }

    /// Phase 2, `route`: the route the request takes, if any; a target
    /// this proxy does not serve is refused at once.
    pub(crate) fn route<'c>(
        &self,
        ctx: &mut Ctx,
        config: &'c Config,
        parts: &Parts,
    ) -> Result<Option<&'c Route>, L7Error> {
        let routes = match &ctx.target {
            Some(t) => config
                .targets
                .get(t)
                .ok_or_else(|| L7Error::NoRoute(format!("{t} (not a service of this waypoint)")))?,
            None => &config.routes,
        };
        let route = select(routes, &parts.method, &parts.uri, &parts.headers);
        if let Some(route) = route {
            ctx.record.route = route.name.clone();
            // Requests refused before a backend is chosen (authentication,
            // authorization, rate limits) count against the route's service.
            if let Some(cluster) = route
                .backends
                .first()
                .and_then(|b| config.clusters.get(&b.service))
            {
                ctx.record.service = Some(cluster.service().clone());
            }
        }
        Ok(route)
    }

    /// Phase 3, `authenticate`: verifies the request's JWT when the
    /// target has issuers and the request carries one.
    pub(crate) async fn authenticate(
        &self,
        ctx: &mut Ctx,
        config: &Config,
        parts: &mut Parts,
    ) -> Result<(), L7Error> {
        let Some(authn) = config.authn.get(ctx.policy_key()) else {
            return Ok(());
        };
        let query = parts.uri.query().map(str::to_owned);
        // Boxed here and below: a policy's future is large and only some
        // requests have one; inline it would make every request's bigger.
        match Box::pin(authn.authenticate(&mut parts.headers, query.as_deref())).await {
            Ok(Some(who)) => {
                ctx.record.access.request_principal = Some(who.principal);
                ctx.claims = Some(who.claims);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::info!(route = %ctx.record.route, error = %e, "request refused: invalid token");
                Err(L7Error::Unauthenticated(e.to_string()))
            }
        }
    }

    /// Phase 4, `authorize`: each matching CUSTOM policy's provider is
    /// asked (its denial answers the client; its changes to the request
    /// apply once every provider allowed), then DENY and ALLOW policies
    /// decide.
    pub(crate) async fn authorize(
        &self,
        ctx: &mut Ctx,
        config: &Config,
        parts: &mut Parts,
    ) -> Result<(), L7Error> {
        let Some(policies) = config.authz.get(ctx.policy_key()) else {
            return Ok(());
        };
        let source = ctx.record.source.as_ref();
        let principal = match (source, parts.extensions.get::<ClientPrincipal>()) {
            (Some(s), _) => {
                let s = s.to_string();
                Some(s.strip_prefix("spiffe://").unwrap_or(&s).to_owned())
            }
            (None, Some(c)) => Some(c.0.clone()),
            (None, None) => None,
        };
        let namespace = source.map(|s| s.namespace().to_owned());
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(':').next().unwrap_or(h).to_owned())
            .unwrap_or_default();
        let port = ctx
            .target
            .as_deref()
            .and_then(|t| t.rsplit(':').next()?.parse().ok())
            .unwrap_or(0);
        let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0);
        let attributes = crate::policy::authz::Request {
            principal: principal.as_deref(),
            namespace: namespace.as_deref(),
            source_ip: peer.map(|p| p.ip()),
            request_principal: ctx.record.access.request_principal.as_deref(),
            claims: ctx.claims.as_ref(),
            host: &host,
            port,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            headers: Some(&parts.headers),
        };
        let mut changes = Vec::new();
        for policy in crate::policy::authz::custom(policies, &attributes) {
            let Some(provider) = &policy.provider else {
                continue;
            };
            let input = crate::policy::extauthz::CheckInput {
                method: attributes.method,
                path: parts
                    .uri
                    .path_and_query()
                    .map_or("/", http::uri::PathAndQuery::as_str),
                host: &host,
                scheme: if parts.extensions.get::<Tls>().is_some() {
                    "https"
                } else {
                    "http"
                },
                protocol: ctx.record.access.protocol,
                headers: &parts.headers,
                principal: principal.as_deref(),
                source: peer,
            };
            let check = Box::pin(self.authorizers.check(provider, &input));
            let asked = tokio::time::timeout(provider.timeout, check).await;
            let verdict = match asked {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => self.provider_failed(policy, provider, &e.to_string()),
                Err(_) => self.provider_failed(
                    policy,
                    provider,
                    &format!("no answer within {:?}", provider.timeout),
                ),
            };
            match verdict {
                Verdict::Allow(allowed) => {
                    self.metrics.authz(Some(&policy.policy), true);
                    changes.push(allowed);
                }
                Verdict::Deny(denied) => {
                    self.metrics.authz(Some(&policy.policy), false);
                    tracing::info!(
                        policy = %policy.policy,
                        provider = %provider.name,
                        status = denied.status,
                        method = %attributes.method,
                        path = %attributes.path,
                        "request denied by external authorization"
                    );
                    return Err(L7Error::ExtAuthzDenied {
                        status: denied.status,
                        headers: denied.headers,
                        body: denied.body,
                    });
                }
            }
        }
        let decision = crate::policy::authz::decide(policies, &attributes);
        for shadow in &decision.shadow {
            tracing::info!(policy = %shadow, path = %attributes.path, "authorization policy matched (not enforced)");
        }
        let enforced = policies
            .iter()
            .any(|p| matches!(p.action, AuthzAction::Allow | AuthzAction::Deny) && !p.dry_run);
        if enforced {
            self.metrics
                .authz(decision.policy.as_deref(), decision.allowed);
        }
        if !decision.allowed {
            tracing::info!(
                policy = decision.policy.as_deref().unwrap_or("(no ALLOW policy matched)"),
                rule = ?decision.rule,
                method = %attributes.method,
                path = %attributes.path,
                "request denied: RBAC: access denied"
            );
            return Err(L7Error::Denied);
        }
        for change in changes {
            change.apply(&mut parts.headers);
        }
        Ok(())
    }

    /// A provider could not be asked: its failure mode decides.
    fn provider_failed(
        &self,
        policy: &weft_core::l7::L7Authz,
        provider: &weft_core::l7::AuthzProvider,
        why: &str,
    ) -> Verdict {
        self.metrics.authz_error(&provider.name, provider.fail_open);
        tracing::warn!(
            policy = %policy.policy,
            provider = %provider.name,
            error = %why,
            fail_open = provider.fail_open,
            "external authorization failed; the provider's failure mode decides"
        );
        if provider.fail_open {
            Verdict::Allow(Allowed::default())
        } else {
            Verdict::Deny(Denied {
                status: provider.status_on_error,
                headers: Vec::new(),
                body: "external authorization failed".into(),
            })
        }
    }

    /// Phase 5, `rate_limit`: the target's limiter decides; a request let
    /// through keeps the decision for its `x-ratelimit-*` headers.
    pub(crate) async fn rate_limit(
        &self,
        ctx: &mut Ctx,
        config: &Config,
        parts: &Parts,
    ) -> Result<(), L7Error> {
        let Some(limiter) = config.limits.get(ctx.policy_key()) else {
            return Ok(());
        };
        let principal = ctx.record.source.as_ref().map(ToString::to_string);
        let attributes = crate::policy::ratelimit::Attributes {
            principal: principal.as_deref(),
            headers: Some(&parts.headers),
            claims: ctx.claims.as_ref(),
            path: parts.uri.path(),
            method: parts.method.as_str(),
        };
        let Some(decision) = Box::pin(limiter.check(&attributes)).await else {
            return Ok(());
        };
        self.metrics.rate_limit(&limiter.policy, &decision);
        if let Some(why) = &decision.store_error {
            tracing::warn!(policy = %limiter.policy, rule = %decision.rule, allowed = decision.allowed, "rate limit store failed ({why}); the failure mode decided");
        }
        if !decision.allowed {
            return Err(L7Error::RateLimited(decision));
        }
        ctx.limit = Some(decision);
        Ok(())
    }

    /// Phase 6, `fault`: an injected delay (`DI`), then an injected abort.
    pub(crate) async fn fault(&self, ctx: &mut Ctx, route: &Route) -> Result<(), L7Error> {
        let Some(fault) = &route.fault else {
            return Ok(());
        };
        if let Some((percent, delay)) = fault.delay
            && fastrand::f64() * 100.0 < percent
        {
            tokio::time::sleep(delay).await;
            ctx.record.flags.insert(Flag::DelayInjected);
        }
        if let Some((percent, status)) = fault.abort
            && fastrand::f64() * 100.0 < percent
        {
            return Err(L7Error::FaultAbort(status));
        }
        Ok(())
    }

    /// Phase 7, `redirect`: answered here when the route redirects.
    pub(crate) fn redirect(&self, route: &Route, parts: &Parts) -> Result<(), L7Error> {
        match &route.redirect {
            Some(r) => Err(L7Error::Redirect {
                status: r.status,
                location: redirect_location(r, parts),
            }),
            None => Ok(()),
        }
    }

    /// Phase 8, `balance`: the backend by weight, and a slot from its
    /// circuit breaker (held until the request ends).
    pub(crate) async fn balance(
        &self,
        ctx: &mut Ctx,
        config: &Config,
        route: &Route,
    ) -> Result<(Arc<Cluster>, Option<tokio::sync::OwnedSemaphorePermit>), L7Error> {
        let backend = pick_backend(route, fastrand::f64())
            .ok_or_else(|| L7Error::NoHealthyUpstream(route.name.clone()))?;
        let cluster = config
            .clusters
            .get(&backend.service)
            .cloned()
            .ok_or_else(|| L7Error::NoHealthyUpstream(backend.service.clone()))?;
        ctx.record.service = Some(cluster.service().clone());
        let slot = cluster
            .breaker
            .admit()
            .await
            .ok_or_else(|| L7Error::Overflow(cluster.name.clone()))?;
        Ok((cluster, slot))
    }

    /// Phase 9, `rewrite`: path and host rewrites, request header changes.
    pub(crate) fn rewrite(&self, route: &Route, parts: &mut Parts) -> Result<(), L7Error> {
        if let Some(r) = &route.rewrite {
            let path = r.path(parts.uri.path());
            let query = parts
                .uri
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            parts.uri = format!("{path}{query}").parse().map_err(|e| {
                L7Error::Internal(format!(
                    "route {}: rewritten path {path:?} is not a valid request target: {e}",
                    route.name
                ))
            })?;
            if let Some(host) = &r.host
                && let Ok(v) = HeaderValue::from_str(host)
            {
                parts.headers.insert(http::header::HOST, v);
            }
        }
        route.request_headers.apply(&mut parts.headers);
        Ok(())
    }

    /// Phase 13 for an upstream's answer: hop-by-hop headers removed, the
    /// route's response header changes, `x-ratelimit-*`.
    pub(crate) fn response_headers(
        &self,
        ctx: &Ctx,
        route: &Route,
        mut response: Response<Body>,
    ) -> Response<Body> {
        sanitize::strip_hop_by_hop(response.headers_mut());
        route.response_headers.apply(response.headers_mut());
        if let Some(d) = &ctx.limit {
            rate_limit_headers(response.headers_mut(), d, false);
        }
        response
    }

    /// Phase 13 for every request: an [`L7Error`] becomes its response,
    /// its flag and failure recorded.
    pub(crate) fn respond(
        &self,
        ctx: &mut Ctx,
        outcome: Result<Response<Body>, L7Error>,
    ) -> Response<Body> {
        match outcome {
            Ok(response) => response,
            Err(e) => {
                if let Some(flag) = e.flag() {
                    ctx.record.flags.insert(flag);
                }
                ctx.record.access.upstream_failure = e.failure();
                e.response()
            }
        }
    }

    /// Phase 14, `log`: the record completed and emitted.
    pub(crate) fn log(&self, ctx: &mut Ctx, response: &Response<Body>) {
        let record = &mut ctx.record;
        record.access.code = response.status().as_u16();
        record.access.flags = record.flags.as_str();
        record.access.duration = record.started.elapsed();
        record.access.bytes_sent = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        record.access.route = Some(record.route.clone()).filter(|r| !r.is_empty());
        self.metrics.request(record, response.status());
    }
}

/// Phase 1's path step: the request's path normalized under `mode`, the
/// query kept as sent; a path that cannot be normalized safely is refused.
fn normalize_path(
    parts: &mut Parts,
    mode: crate::engine::path::PathNormalization,
) -> Result<(), L7Error> {
    if crate::engine::path::is_plainly_normal(parts.uri.path()) {
        return Ok(());
    }
    let malformed = |why: &dyn std::fmt::Display| L7Error::Malformed(format!("path: {why}"));
    let path = crate::engine::path::normalize(parts.uri.path(), mode).map_err(|e| malformed(&e))?;
    if path == parts.uri.path() {
        return Ok(());
    }
    let target = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(target.parse().map_err(|e| malformed(&e))?);
    parts.uri = http::Uri::from_parts(uri).map_err(|e| malformed(&e))?;
    Ok(())
}

/// Where a redirect sends `parts`: scheme, host, port and path replaced
/// as configured, the query kept.
pub(crate) fn redirect_location(r: &Redirect, parts: &Parts) -> Option<HeaderValue> {
    let host_header = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or("localhost");
    let (req_host, req_port) = match host_header.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, Some(p)),
        _ => (host_header, None),
    };
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let host = r.host.as_deref().unwrap_or(req_host);
    let port = match (r.port, &r.host, req_port) {
        (Some(p), _, _) => format!(":{p}"),
        (None, None, Some(p)) => format!(":{p}"),
        _ => String::new(),
    };
    let path = r.path.as_deref().unwrap_or(parts.uri.path());
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!("{scheme}://{host}{port}{path}{query}")).ok()
}
