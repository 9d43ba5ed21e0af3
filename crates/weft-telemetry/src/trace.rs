//! Distributed tracing: trace context in and out of HTTP headers (W3C
//! `traceparent`/`tracestate`, B3 single and multi header), parent-based
//! sampling with a ratio for new traces, and spans exported with OTLP
//! (gRPC or HTTP/protobuf) in batches from a bounded queue — a slow or
//! absent collector costs dropped spans (counted in the log), never a
//! blocked request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use tokio::sync::mpsc;

/// OTLP's messages and collector service (client, and server for tests).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod otlp {
    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
}

/// Spans waiting for export beyond this are dropped.
pub const QUEUE: usize = 4096;
/// Spans per export.
pub const BATCH: usize = 512;
/// Longest a span waits before its batch is sent.
pub const FLUSH: Duration = Duration::from_millis(500);

/// Which header format a context came in (it goes out the same way, and
/// always as W3C too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `traceparent`.
    W3c,
    /// `b3: trace-span-sampled[-parent]`.
    B3Single,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`.
    B3Multi,
}

/// A trace context: which trace, which span, sampled or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// 16 bytes.
    pub trace_id: [u8; 16],
    /// 8 bytes: the span that is the parent of what comes next.
    pub span_id: [u8; 8],
    /// Whether spans are recorded.
    pub sampled: bool,
    /// W3C `tracestate`, passed on unchanged.
    pub tracestate: Option<String>,
    /// How it arrived.
    pub format: Format,
}

fn hex_to<const N: usize>(s: &str) -> Option<[u8; N]> {
    // B3 allows 64-bit trace ids: left-pad to 128 bits.
    if s.len() > N * 2 || !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = format!("{s:0>width$}", width = N * 2);
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&padded[i * 2..i * 2 + 2], 16).ok()?;
    }
    (out != [0u8; N]).then_some(out)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// The context a request carries, if any (W3C first, then B3 single,
/// then B3 multi). Malformed headers are ignored, as the specifications
/// ask.
pub fn extract(headers: &HeaderMap) -> Option<Context> {
    if let Some(tp) = header(headers, "traceparent") {
        let parts: Vec<&str> = tp.split('-').collect();
        if let [version, trace, span, flags, ..] = parts[..]
            && version.len() == 2
            && version != "ff"
            && trace.len() == 32
            && span.len() == 16
            && flags.len() == 2
            && let (Some(trace_id), Some(span_id), Ok(flags)) =
                (hex_to(trace), hex_to(span), u8::from_str_radix(flags, 16))
        {
            return Some(Context {
                trace_id,
                span_id,
                sampled: flags & 1 == 1,
                tracestate: header(headers, "tracestate").map(str::to_owned),
                format: Format::W3c,
            });
        }
    }
    if let Some(b3) = header(headers, "b3") {
        let parts: Vec<&str> = b3.split('-').collect();
        if parts.len() >= 2
            && let (Some(trace_id), Some(span_id)) = (hex_to(parts[0]), hex_to(parts[1]))
        {
            return Some(Context {
                trace_id,
                span_id,
                sampled: parts.get(2).is_none_or(|s| *s == "1" || *s == "d"),
                tracestate: None,
                format: Format::B3Single,
            });
        }
    }
    let trace_id = hex_to(header(headers, "x-b3-traceid")?)?;
    let span_id = hex_to(header(headers, "x-b3-spanid")?)?;
    Some(Context {
        trace_id,
        span_id,
        sampled: header(headers, "x-b3-sampled").is_none_or(|s| s == "1" || s == "true")
            || header(headers, "x-b3-flags") == Some("1"),
        tracestate: None,
        format: Format::B3Multi,
    })
}

/// Writes `ctx` into outgoing headers: `traceparent` (and `tracestate`)
/// always, and the B3 headers when the context arrived as B3.
pub fn inject(headers: &mut HeaderMap, ctx: &Context) {
    let flags = if ctx.sampled { "01" } else { "00" };
    let (trace, span) = (hex(&ctx.trace_id), hex(&ctx.span_id));
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set(headers, "traceparent", format!("00-{trace}-{span}-{flags}"));
    if let Some(ts) = &ctx.tracestate {
        set(headers, "tracestate", ts.clone());
    }
    let sampled = if ctx.sampled { "1" } else { "0" };
    match ctx.format {
        Format::W3c => {}
        Format::B3Single => set(headers, "b3", format!("{trace}-{span}-{sampled}")),
        Format::B3Multi => {
            set(headers, "x-b3-traceid", trace);
            set(headers, "x-b3-spanid", span);
            set(headers, "x-b3-sampled", sampled.to_owned());
            headers.remove("x-b3-parentspanid");
        }
    }
}

/// A new random span id.
pub fn span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// A new random trace id.
pub fn trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// Parent-based sampling: a context's decision is kept; a new trace is
/// sampled with probability `ratio` (`unit` is a uniform draw in [0, 1)).
pub fn sample(parent: Option<&Context>, ratio: f64, unit: f64) -> bool {
    match parent {
        Some(p) => p.sampled,
        None => unit < ratio,
    }
}

/// A span's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Serving a request.
    Server,
    /// Sending one.
    Client,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// Integer.
    Int(i64),
    /// Boolean.
    Bool(bool),
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Its trace.
    pub trace_id: [u8; 16],
    /// Its id.
    pub span_id: [u8; 8],
    /// Its parent, if any.
    pub parent: Option<[u8; 8]>,
    /// Name (`GET /path`, route names…).
    pub name: String,
    /// Server or client.
    pub kind: Kind,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// Attributes (OpenTelemetry semantic conventions for HTTP).
    pub attributes: Vec<(&'static str, Value)>,
    /// Whether it failed (a 5xx, or no answer).
    pub error: bool,
    /// `tracestate`, passed through.
    pub tracestate: Option<String>,
}

/// Where spans go.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    /// `http://host:port` of the collector.
    pub endpoint: String,
    /// OTLP over HTTP (protobuf) to `endpoint` + `path`; otherwise gRPC.
    pub http_path: Option<String>,
    /// New traces sampled, 0.0-1.0.
    pub sampling_ratio: f64,
    /// `service.name` of the exporting proxy.
    pub service_name: String,
}

/// Records spans and exports them; cheap to clone. [`Tracer::disabled`]
/// records nothing and leaves headers alone.
#[derive(Clone)]
pub struct Tracer {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    config: ExportConfig,
    queue: mpsc::Sender<Span>,
    dropped: AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some(i) => write!(f, "Tracer({:?})", i.config),
            None => write!(f, "Tracer(disabled)"),
        }
    }
}

impl Default for Tracer {
    fn default() -> Self {
        Tracer::disabled()
    }
}

impl Tracer {
    /// No tracing.
    pub fn disabled() -> Tracer {
        Tracer { inner: None }
    }

    /// Tracing to `config`'s collector (needs a Tokio runtime).
    pub fn start(config: ExportConfig) -> Tracer {
        let (queue, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(export_loop(config.clone(), rx));
        Tracer {
            inner: Some(Arc::new(Inner {
                config,
                queue,
                dropped: AtomicU64::new(0),
                task,
            })),
        }
    }

    /// Whether spans are recorded at all.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Its configuration, when enabled.
    pub fn config(&self) -> Option<&ExportConfig> {
        self.inner.as_ref().map(|i| &i.config)
    }

    /// Whether a request with `parent` (or none) is sampled.
    pub fn sample(&self, parent: Option<&Context>) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| sample(parent, i.config.sampling_ratio, fastrand::f64()))
    }

    /// Queues a finished span (dropped, and counted, when the queue is
    /// full).
    pub fn record(&self, span: Span) {
        let Some(inner) = &self.inner else { return };
        if inner.queue.try_send(span).is_err() {
            let n = inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, endpoint = %inner.config.endpoint, "span queue full; spans dropped");
            }
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kv(key: &str, value: &Value) -> otlp::KeyValue {
    use otlp::any_value::Value as V;
    otlp::KeyValue {
        key: key.to_owned(),
        value: Some(otlp::AnyValue {
            value: Some(match value {
                Value::Str(s) => V::StringValue(s.clone()),
                Value::Int(i) => V::IntValue(*i),
                Value::Bool(b) => V::BoolValue(*b),
            }),
        }),
    }
}

/// The OTLP request for `spans` from `service_name`.
pub fn request(service_name: &str, spans: &[Span]) -> otlp::ExportTraceServiceRequest {
    otlp::ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(otlp::Resource {
                attributes: vec![kv("service.name", &Value::Str(service_name.to_owned()))],
            }),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(otlp::InstrumentationScope {
                    name: "weft".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans: spans
                    .iter()
                    .map(|s| otlp::Span {
                        trace_id: s.trace_id.to_vec(),
                        span_id: s.span_id.to_vec(),
                        trace_state: s.tracestate.clone().unwrap_or_default(),
                        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
                        name: s.name.clone(),
                        kind: match s.kind {
                            Kind::Server => 2,
                            Kind::Client => 3,
                        },
                        start_time_unix_nano: nanos(s.start),
                        end_time_unix_nano: nanos(s.end),
                        attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
                        status: Some(otlp::Status {
                            message: String::new(),
                            code: if s.error { 2 } else { 0 },
                        }),
                    })
                    .collect(),
            }],
            schema_url: String::new(),
        }],
    }
}

async fn export_loop(config: ExportConfig, mut rx: mpsc::Receiver<Span>) {
    let http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let grpc = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
        .ok()
        .map(|e| {
            otlp::trace_service_client::TraceServiceClient::new(
                e.connect_timeout(Duration::from_secs(2)).connect_lazy(),
            )
        });
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Wait for a first span, then gather more for up to FLUSH.
        match rx.recv().await {
            Some(span) => batch.push(span),
            None => return,
        }
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let message = request(&config.service_name, &batch);
        let result = match &config.http_path {
            Some(path) => {
                let uri = format!("{}{path}", config.endpoint.trim_end_matches('/'));
                let sent = http::Request::post(uri)
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(Bytes::from(message.encode_to_vec())))
                    .map_err(|e| e.to_string());
                match sent {
                    Ok(req) => {
                        match tokio::time::timeout(Duration::from_secs(5), http.request(req)).await
                        {
                            Ok(Ok(r)) if r.status().is_success() => Ok(()),
                            Ok(Ok(r)) => Err(format!("collector answered {}", r.status())),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("no answer within 5s".into()),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            None => match &grpc {
                Some(client) => {
                    let mut client = client.clone();
                    match tokio::time::timeout(Duration::from_secs(5), client.export(message)).await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(status)) => Err(status.to_string()),
                        Err(_) => Err("no answer within 5s".into()),
                    }
                }
                None => Err(format!("{:?} is not a URL", config.endpoint)),
            },
        };
        if let Err(e) = result {
            tracing::warn!(endpoint = %config.endpoint, spans = batch.len(), error = %e, "span export failed; spans dropped");
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn contexts_in_every_format() {
        let w3c = extract(&headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]))
        .expect("w3c");
        assert_eq!(hex(&w3c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(w3c.sampled && w3c.format == Format::W3c);
        let single = extract(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0",
        )]))
        .expect("b3");
        assert!(!single.sampled && single.format == Format::B3Single);
        let multi = extract(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]))
        .expect("b3 multi");
        assert_eq!(hex(&multi.trace_id), "0000000000000000463ac35c9f6413ad");
        // Malformed or absent: nothing.
        for bad in [
            headers(&[(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )]),
            headers(&[(
                "traceparent",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )]),
            headers(&[("traceparent", "garbage")]),
            headers(&[("b3", "zz-yy")]),
            HeaderMap::new(),
        ] {
            assert_eq!(extract(&bad), None, "{bad:?}");
        }
        // Out again, in the same format and as W3C.
        let mut out = HeaderMap::new();
        let child = Context {
            span_id: [1; 8],
            ..multi
        };
        inject(&mut out, &child);
        assert_eq!(out["x-b3-spanid"], "0101010101010101");
        assert_eq!(
            out["traceparent"],
            "00-0000000000000000463ac35c9f6413ad-0101010101010101-01"
        );
    }

    #[test]
    fn sampling_follows_the_parent() {
        let parent = |sampled| Context {
            trace_id: [1; 16],
            span_id: [1; 8],
            sampled,
            tracestate: None,
            format: Format::W3c,
        };
        assert!(sample(Some(&parent(true)), 0.0, 0.99));
        assert!(!sample(Some(&parent(false)), 1.0, 0.0));
        assert!(sample(None, 0.25, 0.1));
        assert!(!sample(None, 0.25, 0.3));
    }

    #[tokio::test]
    async fn spans_reach_a_grpc_collector() {
        use otlp::trace_service_server::{TraceService, TraceServiceServer};
        struct Collector(mpsc::Sender<otlp::ExportTraceServiceRequest>);
        #[tonic::async_trait]
        impl TraceService for Collector {
            async fn export(
                &self,
                request: tonic::Request<otlp::ExportTraceServiceRequest>,
            ) -> Result<tonic::Response<otlp::ExportTraceServiceResponse>, tonic::Status>
            {
                let _ = self.0.send(request.into_inner()).await;
                Ok(tonic::Response::new(
                    otlp::ExportTraceServiceResponse::default(),
                ))
            }
        }
        let (tx, mut rx) = mpsc::channel(4);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Collector(tx)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let tracer = Tracer::start(ExportConfig {
            endpoint: format!("http://{addr}"),
            http_path: None,
            sampling_ratio: 1.0,
            service_name: "test".into(),
        });
        let now = SystemTime::now();
        tracer.record(Span {
            trace_id: [7; 16],
            span_id: [8; 8],
            parent: None,
            name: "GET /".into(),
            kind: Kind::Server,
            start: now,
            end: now,
            attributes: vec![("http.response.status_code", Value::Int(200))],
            error: false,
            tracestate: None,
        });
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("exported in time")
            .expect("a request");
        let span = &got.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            (span.name.as_str(), span.kind, span.trace_id.clone()),
            ("GET /", 2, vec![7; 16])
        );
    }
}
