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

    /// An error status with a text reason.
    pub fn error(status: StatusCode, reason: impl Into<Bytes>) -> Self {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: reason.into(),
        }
    }
}

type Handler = Arc<dyn Fn() -> Reply + Send + Sync>;

/// A set of GET endpoints.
#[derive(Clone, Default)]
pub struct Routes {
    handlers: HashMap<&'static str, Handler>,
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

    /// Adds `GET path`.
    pub fn get(
        mut self,
        path: &'static str,
        handler: impl Fn() -> Reply + Send + Sync + 'static,
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

    fn answer(&self, method: &Method, path: &str) -> Reply {
        if method != Method::GET && method != Method::HEAD {
            return Reply::error(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
        }
        match self.handlers.get(path) {
            Some(handler) => handler(),
            None => {
                let mut paths: Vec<_> = self.handlers.keys().copied().collect();
                paths.sort_unstable();
                Reply::error(
                    StatusCode::NOT_FOUND,
                    format!("not found; endpoints: {}\n", paths.join(" ")),
                )
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
                let reply = routes.answer(req.method(), req.uri().path());
                async move {
                    let mut response = Response::new(Full::new(reply.body));
                    *response.status_mut() = reply.status;
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static(reply.content_type),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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

    #[test]
    fn routing() {
        let routes = Routes::new().get("/certs", || Reply::json("[]"));
        assert_eq!(routes.answer(&Method::GET, "/certs").status, StatusCode::OK);
        let missing = routes.answer(&Method::GET, "/nope");
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&missing.body).contains("/certs"));
        assert_eq!(
            routes.answer(&Method::POST, "/certs").status,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
