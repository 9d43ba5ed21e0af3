//! The L7 engine: one request goes through named phases, each a function
//! that returns to continue or answers with an [`L7Error`] (a refusal, a
//! redirect, a failure). **This list is the phase order; it is written
//! here and nowhere else** (`Engine::serve` runs it):
//!
//! 1. `receive` — normalize the request ([`sanitize`]: one host, no
//!    hop-by-hop headers, none of weft's own unless a trusted proxy set
//!    them; [`path`]: the path normalized as the mesh says; a malformed
//!    host or path is refused) and open its [`Ctx`] (caller, trace,
//!    access-log entry);
//! 2. `route` — choose the route ([`route::select`]); a request no route
//!    takes is refused only after `authorize`, so a caller policy refuses
//!    learns nothing of the routes;
//! 3. `authenticate` — the target's `AUTHN` plugins ([`plugins`]), then
//!    verify the request's JWT, if any ([`crate::policy::jwt`]; 401);
//! 4. `authorize` — `AUTHZ` plugins, then CUSTOM providers
//!    ([`crate::policy::extauthz`]), then DENY and ALLOW policies
//!    ([`crate::policy::authz`]; 403, `RBAC`, `UAEX`); then `STATS`
//!    plugins, and the route is chosen again if plugins changed the
//!    request; then the external processors ([`crate::extension::ext_proc`]:
//!    head now, body as it passes);
//! 5. `rate_limit` — the target's rules ([`crate::policy::ratelimit`]; 429,
//!    `RL`);
//! 6. `fault` — injected delays and aborts (`DI`, `FI`); then the
//!    plugins of no phase;
//! 7. `redirect` — answered here when the route redirects;
//! 8. `balance` — the backend chosen by weight, its circuit breaker admits
//!    the request or fails it at once (`UO`);
//! 9. `rewrite` — path and host rewrites, request header changes;
//! 10. `buffer` — the body through the plugins that read it, then kept
//!     for replay, up to a limit (beyond it the request is sent once,
//!     never retried or mirrored);
//! 11. `mirror` — a copy to the mirror service, answer ignored;
//! 12. `try` — tries within the overall timeout ([`tries`]): each bounded
//!     by the per-try timeout; a retryable outcome is retried after backoff
//!     (or `Retry-After`) only while the retry budgets allow ([`budget`]);
//! 13. `respond` — response header changes (and `x-ratelimit-*`); an
//!     [`L7Error`] becomes its response ([`L7Error::response`], the one
//!     place); the response (local or not) back through the external
//!     processors, then the plugins that saw the request, last first, head
//!     and body; local answers to gRPC callers become gRPC statuses
//!     ([`local_reply`]);
//! 14. `log` — metrics, the access-log line and the span, from the
//!     request's record ([`crate::telemetry`]).
//!
//! The configuration ([`Config`]) is loaded once per request: a request in
//! flight keeps the snapshot it started with. The engine knows no
//! listener, TLS or HBONE: a front hands it requests (any body type) and
//! an [`upstream::Upstream`] carries its tries.

pub mod budget;
pub mod config;
pub mod ctx;
pub mod error;
pub mod lb;
pub mod local_reply;
pub mod path;
mod phases;
pub mod plugins;
pub mod retry;
pub mod route;
pub mod sanitize;
pub mod tries;
pub mod upstream;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use weft_telemetry::labels::{Peer, Reporter};
use weft_telemetry::trace::Tracer;

use crate::policy::extauthz::Authorizers;
use crate::telemetry::metrics::Metrics;

pub use config::{Breaker, Cluster, Config, hash_key};
pub use ctx::{ClientPrincipal, Ctx, PeerAddr, SourceIdentity, SourcePeer, Tls};
pub use error::L7Error;
pub use upstream::{Body, BodyError, Upstream};

/// Request bodies up to this size are kept for replay (retries).
pub const DEFAULT_MAX_REPLAY: usize = 64 * 1024;
/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The L7 engine.
pub struct Engine {
    config: ArcSwap<Config>,
    tracer: ArcSwap<Tracer>,
    client: Upstream,
    authorizers: Authorizers,
    reporter: Reporter,
    me: Option<Arc<Peer>>,
    metrics: Metrics,
    max_replay: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine serving `config` over plain TCP, counting into `metrics`.
    pub fn new(config: Config, metrics: Metrics) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Engine::with_upstream(config, metrics, Upstream::plain(connector))
    }

    /// An engine that reaches endpoints through `client` (a waypoint's
    /// HBONE tunnels, a test's transport).
    pub fn with_upstream(config: Config, metrics: Metrics, client: Upstream) -> Self {
        Engine {
            config: ArcSwap::from_pointee(config),
            tracer: ArcSwap::from_pointee(Tracer::disabled()),
            client,
            authorizers: Authorizers::default(),
            reporter: Reporter::Waypoint,
            me: None,
            metrics,
            max_replay: DEFAULT_MAX_REPLAY,
        }
    }

    /// Reports metrics as the caller's side (an ingress gateway, which is
    /// the source of the calls it forwards), naming itself `me`.
    pub fn reporting_as_source(mut self, me: Peer) -> Self {
        self.reporter = Reporter::Source;
        self.me = Some(Arc::new(me));
        self
    }

    /// Records spans into `tracer` from now on.
    pub fn set_tracer(&self, tracer: Tracer) {
        self.tracer.store(Arc::new(tracer));
    }

    /// The tracer in use.
    pub fn tracer(&self) -> Arc<Tracer> {
        self.tracer.load_full()
    }

    /// Swaps in a new configuration; requests in flight keep the old one.
    pub fn update(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Serves one request through every phase, with the routes for
    /// requests that name no target.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<BodyError>,
    {
        self.handle_for(None, request).await
    }

    /// Serves one request received for `target` (a waypoint's service and
    /// port, `namespace/hostname:port`; a gateway's listener).
    pub async fn handle_for<B>(&self, target: Option<&str>, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<BodyError>,
    {
        // The configuration this request sees from start to end.
        let config = self.config.load_full();
        let (mut ctx, parts, settled) = self.receive(&config, target, request.map(upstream::boxed));
        let run = self.plugins_for(&ctx, &config, &parts);
        let talk = config
            .processors
            .get(ctx.policy_key())
            .and_then(|p| crate::extension::ext_proc::Conversation::start(p));
        let extensions = (run.as_ref(), talk.as_ref());
        let outcome = match settled {
            Ok(()) => self.serve(&mut ctx, &config, parts, extensions).await,
            Err(e) => Err(e),
        };
        // A plugin that stopped the request while reading its body answers.
        let outcome = match run.as_ref().and_then(crate::extension::Run::take_stop) {
            Some(stop) => Err(stop.into()),
            None => outcome,
        };
        let mut response = self.respond(&mut ctx, outcome);
        if let Some(talk) = &talk {
            response = self.processor_response(talk, response).await;
        }
        if let Some(run) = &run {
            response = self.plugin_response(run, response).await;
        }
        self.log(&mut ctx, &response);
        if ctx.grpc {
            local_reply::for_grpc(response)
        } else {
            response
        }
    }

    /// Phases 2 to 12 and the response headers of phase 13, in order.
    async fn serve(
        &self,
        ctx: &mut Ctx,
        config: &Config,
        request: Request<Body>,
        (run, talk): (
            Option<&crate::extension::Run>,
            Option<&crate::extension::ext_proc::Conversation>,
        ),
    ) -> Result<Response<Body>, L7Error> {
        use weft_core::l7::PluginPhase;
        let (mut parts, body) = request.into_parts();
        let end = http_body::Body::is_end_stream(&body);
        let mut route = self.route(ctx, config, &parts)?;
        self.plugin_phase(run, PluginPhase::Authn, &mut parts, end)
            .await?;
        self.authenticate(ctx, config, &mut parts).await?;
        self.plugin_phase(run, PluginPhase::Authz, &mut parts, end)
            .await?;
        self.authorize(ctx, config, &mut parts).await?;
        if let Some(run) = run {
            self.plugin_phase(Some(run), PluginPhase::Stats, &mut parts, end)
                .await?;
            route = self.route(ctx, config, &parts)?;
        }
        let body = match talk {
            Some(talk) => {
                let body = talk.request(&mut parts, body).await?;
                route = self.route(ctx, config, &parts)?;
                body
            }
            None => body,
        };
        let route = route.ok_or_else(|| L7Error::NoRoute(parts.uri.path().to_owned()))?;
        self.rate_limit(ctx, config, &parts).await?;
        self.fault(ctx, route).await?;
        self.plugin_phase(run, PluginPhase::Unspecified, &mut parts, end)
            .await?;
        self.redirect(route, &parts)?;
        let (cluster, _slot) = self.balance(ctx, config, route).await?;
        if let Some(run) = run {
            run.note(&route.name, Some(&cluster.name));
        }
        self.rewrite(route, &mut parts)?;
        let body = self.plugin_request_body(run, &mut parts, body);
        let payload = self.buffer(ctx, body).await?;
        self.mirror(config, route, &parts, &payload);
        // The route's timeout bounds every try and every wait between them.
        let deadline = route.timeout.map(|t| tokio::time::Instant::now() + t);
        let response = self
            .tries(ctx, config, route, &cluster, &parts, payload, deadline)
            .await?;
        Ok(self.response_headers(ctx, route, response))
    }
}
