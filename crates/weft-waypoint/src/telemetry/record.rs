//! The record of one request, filled in by the engine's phases and
//! emitted once, when the request is finished (`Metrics::request` in
//! `metrics.rs` counts it and prints its access-log line;
//! [`RequestTrace`] records its spans).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;
use weft_telemetry::flags::Flags;
use weft_telemetry::labels::{Peer, Reporter};
use weft_telemetry::trace::{self, Kind, Span, Tracer, Value};

use crate::telemetry::access::AccessEntry;

/// What is known about one request, for its metrics, access-log line and
/// span.
#[derive(Debug)]
pub struct RequestRecord {
    /// When it arrived.
    pub started: Instant,
    /// The route chosen (empty: none).
    pub route: String,
    /// The destination service, once a route names one.
    pub service: Option<Arc<weft_telemetry::labels::Service>>,
    /// Tries made.
    pub tries: u32,
    /// Envoy response flags collected by the phases.
    pub flags: Flags,
    /// The caller's proven identity (mTLS), if any.
    pub source: Option<weft_core::Identity>,
    /// `grpc` or `http`.
    pub protocol: &'static str,
    /// Who reports this request's metrics.
    pub reporter: Reporter,
    /// The caller as telemetry names it (shared: it is the same for
    /// every request of a connection or of a gateway).
    pub peer: Arc<Peer>,
    /// The endpoint the last try went to, as telemetry names it.
    pub destination: Option<Arc<Peer>>,
    /// The access-log line being filled in.
    pub access: AccessEntry,
    /// This request's trace, when tracing is on.
    pub trace: Option<RequestTrace>,
}

impl RequestRecord {
    /// Whether the call was mutual TLS: the caller proved an identity, or
    /// a gateway (the source) forwarded it over HBONE.
    pub fn mtls(&self) -> bool {
        self.source.is_some() || self.reporter == Reporter::Source
    }

    /// Records the server span of a request answered with `status`, when
    /// tracing is on.
    pub fn record_server_span(&self, status: u16) {
        let Some(t) = &self.trace else {
            return;
        };
        let a = &self.access;
        let mut attributes = vec![
            ("http.request.method", Value::Str(a.method.to_string())),
            (
                "url.path",
                Value::Str(a.path.as_ref().map_or("/", |p| p.path()).to_owned()),
            ),
            ("http.response.status_code", Value::Int(i64::from(status))),
            (
                "network.protocol.version",
                Value::Str(a.protocol.trim_start_matches("HTTP/").to_owned()),
            ),
            ("weft.response_flags", Value::Str(self.flags.to_string())),
        ];
        let text = |v: &Option<http::HeaderValue>| {
            v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        if let Some(host) = text(&a.authority) {
            attributes.push(("server.address", Value::Str(host)));
        }
        if let Some(ua) = text(&a.user_agent) {
            attributes.push(("user_agent.original", Value::Str(ua)));
        }
        if let Some(peer) = &a.downstream_remote {
            attributes.push(("client.address", Value::Str(peer.to_string())));
        }
        if !self.route.is_empty() {
            attributes.push(("http.route", Value::Str(self.route.clone())));
        }
        if let Some(service) = &self.service {
            attributes.push(("weft.destination_service", Value::Str(service.host.clone())));
        }
        let name = if self.route.is_empty() {
            a.method.to_string()
        } else {
            format!("{} {}", a.method, self.route)
        };
        let mut span = t.span(t.context.span_id, t.parent, name, Kind::Server, t.start);
        span.attributes = attributes;
        span.error = status >= 500;
        t.record(span);
    }
}

/// A request's place in its trace: the server span this proxy opens for
/// it (whose id is the parent of every try's client span).
#[derive(Debug, Clone)]
pub struct RequestTrace {
    /// The tracer it records into.
    pub tracer: Arc<Tracer>,
    /// The server span's context (its id; the trace and sampling decision).
    pub context: trace::Context,
    /// The caller's span, if the request carried a context.
    pub parent: Option<[u8; 8]>,
    /// When the server span started.
    pub start: SystemTime,
}

impl RequestTrace {
    /// The trace of a request with `headers`, continuing the caller's
    /// context when it sent one.
    pub fn start(tracer: Arc<Tracer>, headers: &http::HeaderMap) -> RequestTrace {
        let parent = trace::extract(headers);
        RequestTrace {
            context: trace::Context {
                trace_id: parent.as_ref().map_or_else(trace::trace_id, |p| p.trace_id),
                span_id: trace::span_id(),
                sampled: tracer.sample(parent.as_ref()),
                tracestate: parent.as_ref().and_then(|p| p.tracestate.clone()),
                format: parent.as_ref().map_or(trace::Format::W3c, |p| p.format),
            },
            parent: parent.map(|p| p.span_id),
            start: SystemTime::now(),
            tracer,
        }
    }

    /// A span of this trace, ending now.
    pub fn span(
        &self,
        span_id: [u8; 8],
        parent: Option<[u8; 8]>,
        name: String,
        kind: Kind,
        start: SystemTime,
    ) -> Span {
        Span {
            trace_id: self.context.trace_id,
            span_id,
            parent,
            name,
            kind,
            start,
            end: SystemTime::now(),
            attributes: Vec::new(),
            error: false,
            tracestate: self.context.tracestate.clone(),
        }
    }

    /// Records `span` when the trace is sampled.
    pub fn record(&self, span: Span) {
        if self.context.sampled {
            self.tracer.record(span);
        }
    }
}
