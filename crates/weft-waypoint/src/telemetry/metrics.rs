//! The waypoint's metrics, registered explicitly: Istio's request metrics
//! (`istio_requests_total`, `istio_request_duration_milliseconds`) and
//! weft's resilience counters (retries, exhausted budgets, per-try
//! timeouts), by destination service.

use std::sync::Arc;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::telemetry::record::RequestRecord;
use crate::telemetry::series::{Parts, Remembered, Series};

use weft_telemetry::names;

pub use weft_telemetry::labels::RequestLabels;

/// Labels of an upstream service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `namespace/hostname`.
    pub destination_service: String,
}

/// Every family the waypoint exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    retries: Family<ServiceLabels, Counter>,
    exhausted: Family<ServiceLabels, Counter>,
    try_timeouts: Family<ServiceLabels, Counter>,
    rate_limits: Family<RateLimitLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    authz_errors: Family<ProviderLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    closed: Family<RefusedLabels, Counter>,
    extensions: crate::telemetry::extensions::ExtensionMetrics,
    /// The four request families' series by label set.
    series: Remembered,
}

/// Labels of a connection a gateway listener closed without serving it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The listener, `gateway/<listener>`.
    pub listener: String,
    /// `limit` (too many open), `tls_handshake` (failed), `tls_timeout`;
    /// passthrough listeners also `no_route`, `no_healthy_upstream`,
    /// `upstream_connect`.
    pub reason: &'static str,
}

/// Labels of an external authorization failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// The provider's name.
    pub provider: String,
    /// What the failure mode did: `allowed` (fail open) or `denied`.
    pub decision: &'static str,
}

/// Labels of an authorization decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// The deciding policy, or `-` when no ALLOW policy matched.
    pub policy: String,
    /// `allowed` or `denied`.
    pub decision: &'static str,
}

/// Labels of a rate-limit decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// `namespace/name` of the RateLimitPolicy.
    pub policy: String,
    /// The rule that matched.
    pub rule: String,
    /// `allowed` or `limited`.
    pub decision: &'static str,
    /// `ok`, or `error` when the store failed and the failure mode decided.
    pub store: &'static str,
}

fn bytes_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 9,
    ))
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(bytes_histogram),
            response_bytes: Family::new_with_constructor(bytes_histogram),
            retries: Family::default(),
            exhausted: Family::default(),
            try_timeouts: Family::default(),
            rate_limits: Family::default(),
            authz: Family::default(),
            authz_errors: Family::default(),
            refused: Family::default(),
            closed: Family::default(),
            extensions: Default::default(),
            series: Remembered::default(),
        }
    }
}

impl Metrics {
    /// The extensions' metrics (plugins, external processors).
    pub fn extensions(&self) -> &crate::telemetry::extensions::ExtensionMetrics {
        &self.extensions
    }
}

fn service(name: &str) -> ServiceLabels {
    ServiceLabels {
        destination_service: name.to_owned(),
    }
}

impl Metrics {
    /// Registers every family.
    pub fn register(&self, registry: &mut Registry) {
        self.extensions.register(registry);
        registry.register(names::REQUESTS, "Requests handled", self.requests.clone());
        registry.register(
            names::REQUEST_DURATION,
            "Request duration, first byte in to response headers out",
            self.duration.clone(),
        );
        registry.register(
            names::REQUEST_BYTES,
            "Request body sizes (buffered requests)",
            self.request_bytes.clone(),
        );
        registry.register(
            names::RESPONSE_BYTES,
            "Response body sizes (from content-length)",
            self.response_bytes.clone(),
        );
        registry.register(
            names::UPSTREAM_RETRIES,
            "Retries sent to upstream services",
            self.retries.clone(),
        );
        registry.register(
            names::RETRY_BUDGET_EXHAUSTED,
            "Retries not sent because the retry budget was exhausted (the original failure was returned)",
            self.exhausted.clone(),
        );
        registry.register(
            names::AUTHZ_DECISIONS,
            "Request-level authorization decisions by deciding policy",
            self.authz.clone(),
        );
        registry.register(
            names::EXT_AUTHZ_ERRORS,
            "External authorization checks that failed (unreachable, timeout, 5xx), by provider and what the failure mode did",
            self.authz_errors.clone(),
        );
        registry.register(
            names::RATELIMIT_DECISIONS,
            "Rate-limit decisions by policy, rule and outcome",
            self.rate_limits.clone(),
        );
        registry.register(
            names::UPSTREAM_TRY_TIMEOUTS,
            "Tries cut by the per-try timeout",
            self.try_timeouts.clone(),
        );
        registry.register(
            names::GATEWAY_CONNECTIONS_REFUSED,
            "Connections a gateway listener closed without serving: too many open, a TLS handshake (or ClientHello) that failed or did not finish, or a passthrough connection with no route or upstream",
            self.refused.clone(),
        );
        registry.register(
            names::GATEWAY_CONNECTIONS_CLOSED,
            "Connections a gateway listener closed on its own: shed for a newer one while full (overload_shed), no request head in time (header_timeout), no request for too long (idle_timeout), or at the end of their lifetime (max_duration)",
            self.closed.clone(),
        );
    }

    /// Counts a connection `listener` closed on its own after admitting it.
    pub fn connection_closed(&self, listener: &str, reason: &'static str) {
        self.closed
            .get_or_create(&RefusedLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    /// Counts a connection `listener` closed without serving it.
    pub fn connection_refused(&self, listener: &str, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    /// Records one finished request: its metrics, its access-log line and
    /// its server span.
    pub fn request(&self, ctx: &RequestRecord, status: StatusCode) {
        use weft_telemetry::labels::{Peer, Service};
        let service = ctx.service.as_ref().unwrap_or(Service::shared_unknown());
        let destination = ctx.destination.as_ref().unwrap_or(Peer::shared_unknown());
        let parts = Parts {
            reporter: ctx.reporter,
            source: &ctx.peer,
            destination,
            service,
            protocol: ctx.protocol,
            code: status.as_u16(),
            flags: ctx.flags,
            mtls: ctx.mtls(),
        };
        let shared = (&ctx.peer, destination, service);
        let series = self.series.get_shared(&parts, shared, |labels| Series {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        });
        let ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
        series.requests.inc();
        series.duration.observe(ms);
        series
            .request_bytes
            .observe(ctx.access.bytes_received as f64);
        series.response_bytes.observe(ctx.access.bytes_sent as f64);
        tracing::info!(target: "weft::access", tries = ctx.tries, "{}", ctx.access.line());
        ctx.record_server_span(status.as_u16());
    }

    pub(crate) fn authz(&self, policy: Option<&str>, allowed: bool) {
        self.authz
            .get_or_create(&AuthzLabels {
                policy: policy.unwrap_or("-").to_owned(),
                decision: if allowed { "allowed" } else { "denied" },
            })
            .inc();
    }

    pub(crate) fn authz_error(&self, provider: &str, fail_open: bool) {
        self.authz_errors
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
                decision: if fail_open { "allowed" } else { "denied" },
            })
            .inc();
    }

    pub(crate) fn rate_limit(&self, policy: &str, d: &crate::policy::ratelimit::Decision) {
        self.rate_limits
            .get_or_create(&RateLimitLabels {
                policy: policy.to_owned(),
                rule: d.rule.clone(),
                decision: if d.allowed { "allowed" } else { "limited" },
                store: if d.store_error.is_some() {
                    "error"
                } else {
                    "ok"
                },
            })
            .inc();
    }

    pub(crate) fn retry(&self, name: &str) {
        self.retries.get_or_create(&service(name)).inc();
    }

    pub(crate) fn budget_exhausted(&self, name: &str) {
        self.exhausted.get_or_create(&service(name)).inc();
    }

    pub(crate) fn try_timeout(&self, name: &str) {
        self.try_timeouts.get_or_create(&service(name)).inc();
    }

    /// (retries, budget exhaustions, per-try timeouts) for a service.
    pub fn resilience(&self, name: &str) -> (u64, u64, u64) {
        let s = service(name);
        (
            self.retries.get_or_create(&s).get(),
            self.exhausted.get_or_create(&s).get(),
            self.try_timeouts.get_or_create(&s).get(),
        )
    }

    /// The families in Prometheus text format (for tests and tools that
    /// hold the engine, not its listener).
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// A shared handle (the families are reference-counted already).
    pub fn shared(self) -> Arc<Metrics> {
        Arc::new(self)
    }
}
