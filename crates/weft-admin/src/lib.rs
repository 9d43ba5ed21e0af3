//! # weft-admin
//!
//! The small plain-HTTP servers every weft process exposes on loopback:
//! the admin port (15000: certificates, later config dump and log level),
//! the Prometheus metrics port (15020) and readiness (15021). A server is a
//! table of exact paths to handlers; each handler returns a [`Reply`] built
//! from the process's current state.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// A response from a handler.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// `content-type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn json(body: impl Into<Bytes>) -> Self {
        Reply {
            status: StatusCode::OK,
            content_type: "application/json",
            body: body.into(),
        }
    }

    /// 200 with a text body.
    pub fn text(body: impl Into<Bytes>) -> Self {
        Reply {
            status: StatusCode::OK,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// 200 with a body of the given type (HTML, JavaScript, CSS).
    pub fn typed(content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Reply {
            status: StatusCode::OK,
            content_type,
            body: body.into(),
        }
    }

    /// An error status with a text reason.
    pub fn error(status: StatusCode, reason: impl Into<Bytes>) -> Self {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: reason.into(),
        }
    }
}

/// A reply being computed.
pub type ReplyFuture = std::pin::Pin<Box<dyn Future<Output = Reply> + Send>>;

type Handler = Arc<dyn Fn(Query) -> ReplyFuture + Send + Sync>;

/// A request's query parameters (`?a=1&b=x`), percent-decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a query string (without `?`).
    pub fn parse(query: Option<&str>) -> Query {
        Query(
            query
                .unwrap_or("")
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Percent-decoding (and `+` as space); bytes that do not form UTF-8 are
/// replaced.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A set of GET endpoints.
#[derive(Clone, Default)]
pub struct Routes {
    handlers: HashMap<&'static str, Handler>,
    /// Answer only requests whose `Host` is a loopback name or address.
    local_hosts_only: bool,
}

/// Whether `host` (a `Host` header: name or address, maybe a port) names
/// this machine's loopback: `localhost`, 127.0.0.0/8 or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut paths: Vec<_> = self.handlers.keys().collect();
        paths.sort();
        f.debug_struct("Routes").field("paths", &paths).finish()
    }
}

impl Routes {
    /// No endpoints.
    pub fn new() -> Self {
        Routes::default()
    }

    /// Refuses (421) requests whose `Host` is not a loopback name or
    /// address: a web page the operator's browser opens cannot reach these
    /// endpoints by pointing a DNS name of its own at 127.0.0.1 (DNS
    /// rebinding). For the admin port and the dashboard.
    pub fn local_hosts_only(mut self) -> Self {
        self.local_hosts_only = true;
        self
    }

    /// [`Routes::local_hosts_only`] when `bound` is a loopback address:
    /// an operator who binds the port elsewhere chose to expose it.
    pub fn local_hosts_only_on(self, bound: SocketAddr) -> Self {
        if bound.ip().is_loopback() {
            self.local_hosts_only()
        } else {
            self
        }
    }

    /// Adds `GET path`.
    pub fn get(
        self,
        path: &'static str,
        handler: impl Fn() -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.get_with_query(path, move |_| handler())
    }

    /// Adds `GET path` whose handler reads the query parameters.
    pub fn get_with_query(
        self,
        path: &'static str,
        handler: impl Fn(&Query) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.get_async(path, move |q| {
            let reply = handler(&q);
            Box::pin(async move { reply })
        })
    }

    /// Adds `GET path` whose handler answers asynchronously (it may ask
    /// other servers).
    pub fn get_async(
        mut self,
        path: &'static str,
        handler: impl Fn(Query) -> ReplyFuture + Send + Sync + 'static,
    ) -> Self {
        self.handlers.insert(path, Arc::new(handler));
        self
    }

    /// Adds `GET /metrics` rendering `registry` in the Prometheus text format.
    pub fn metrics(self, registry: Arc<Mutex<Registry>>) -> Self {
        self.get("/metrics", move || {
            let mut text = String::new();
            let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
            match prometheus_client::encoding::text::encode(&mut text, &registry) {
                Ok(()) => Reply {
                    status: StatusCode::OK,
                    content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body: text.into(),
                },
                Err(e) => Reply::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics failed: {e}\n"),
                ),
            }
        })
    }

    fn answer(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> ReplyFuture {
        if self.local_hosts_only && !host.is_none_or(is_loopback_host) {
            let reply = Reply::error(
                StatusCode::MISDIRECTED_REQUEST,
                "this endpoint answers only requests for localhost or a loopback address\n",
            );
            return Box::pin(async move { reply });
        }
        if method != Method::GET && method != Method::HEAD {
            let reply = Reply::error(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
            return Box::pin(async move { reply });
        }
        match self.handlers.get(path) {
            Some(handler) => handler(Query::parse(query)),
            None => {
                let mut paths: Vec<_> = self.handlers.keys().copied().collect();
                paths.sort_unstable();
                let reply = Reply::error(
                    StatusCode::NOT_FOUND,
                    format!("not found; endpoints: {}\n", paths.join(" ")),
                );
                Box::pin(async move { reply })
            }
        }
    }
}

/// The admin server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {what}: {source}: is another weft process using the port?")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Which server.
    pub what: &'static str,
    /// The reason.
    pub source: std::io::Error,
}

/// Binds `addr` for the server named `what` (e.g. "admin").
pub async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, what, source })
}

/// Serves `routes` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, routes: Routes, shutdown: impl Future<Output = ()>) {
    let routes = Arc::new(routes);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let host = req
                    .headers()
                    .get(header::HOST)
                    .map(|h| h.to_str().unwrap_or("(not text)"))
                    .or_else(|| req.uri().authority().map(http::uri::Authority::as_str));
                let reply = routes.answer(req.method(), host, req.uri().path(), req.uri().query());
                async move {
                    let reply = reply.await;
                    let mut response = Response::new(Full::new(reply.body));
                    *response.status_mut() = reply.status;
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static(reply.content_type),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routing() {
        let routes = Routes::new().get("/certs", || Reply::json("[]"));
        assert_eq!(
            routes
                .answer(&Method::GET, None, "/certs", None)
                .await
                .status,
            StatusCode::OK
        );
        let missing = routes.answer(&Method::GET, None, "/nope", None).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&missing.body).contains("/certs"));
        assert_eq!(
            routes
                .answer(&Method::POST, None, "/certs", None)
                .await
                .status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        let echo = Routes::new()
            .get_with_query("/q", |q| Reply::text(q.get("to").unwrap_or("-").to_owned()));
        let reply = echo
            .answer(
                &Method::GET,
                None,
                "/q",
                Some("window=5m&to=payments.billing%2Esvc+x"),
            )
            .await;
        assert_eq!(&reply.body[..], b"payments.billing.svc x");
        let odd = Query::parse(Some("a=%zz&b=%4"));
        assert_eq!(
            (odd.get("a"), odd.get("b"), odd.get("c")),
            (Some("%zz"), Some("%4"), None)
        );
    }

    #[tokio::test]
    async fn local_endpoints_refuse_foreign_hosts() {
        let routes = Routes::new()
            .get("/certs", || Reply::json("[]"))
            .local_hosts_only();
        // (Host, answered)
        let cases = [
            (Some("localhost:15000"), true),
            (Some("LOCALHOST"), true),
            (Some("127.0.0.1:15014"), true),
            (Some("127.0.1.1:15000"), true),
            (Some("[::1]:15000"), true),
            (None, true),
            (Some("attacker.example:15000"), false),
            (Some("attacker.example"), false),
            (Some("10.0.0.7:15000"), false),
            (Some("127.0.0.1.attacker.example"), false),
            (Some("[::ffff:10.0.0.7]:15000"), false),
        ];
        for (host, answered) in cases {
            let status = routes
                .answer(&Method::GET, host, "/certs", None)
                .await
                .status;
            assert_eq!(status == StatusCode::OK, answered, "{host:?}: {status}");
        }
        // Metrics ports keep answering any Host (scrapers use addresses).
        let open = Routes::new().get("/metrics", || Reply::text("x"));
        let status = open
            .answer(&Method::GET, Some("attacker.example"), "/metrics", None)
            .await
            .status;
        assert_eq!(status, StatusCode::OK);
    }
}
