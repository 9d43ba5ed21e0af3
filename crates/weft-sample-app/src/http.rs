//! The HTTP/1.1 + h2c server and request handling.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

use crate::config::AppConfig;
use crate::error::AppError;
use crate::listener::{ConnGuard, accept_loop};
use crate::routing::{Route, route};

/// Response body: a buffered body, or the request body streamed back (`/echo`).
type Body = Either<Full<Bytes>, Incoming>;

const X_WEFT_APP: HeaderName = HeaderName::from_static("x-weft-app");
const X_WEFT_VERSION: HeaderName = HeaderName::from_static("x-weft-version");
const X_WEFT_LOCALITY: HeaderName = HeaderName::from_static("x-weft-locality");
const X_WEFT_INJECTED_FAILURE: HeaderName = HeaderName::from_static("x-weft-injected-failure");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const TRUE: HeaderValue = HeaderValue::from_static("true");

/// Everything a request needs, built once at startup so that per-request work
/// is limited to cheap clones of shared buffers.
#[derive(Debug)]
struct AppState {
    app: HeaderValue,
    version: HeaderValue,
    locality: Option<HeaderValue>,
    root_body: Bytes,
    fail_ratio: f64,
    latency: Duration,
}

impl AppState {
    fn new(config: &AppConfig) -> Result<Self, AppError> {
        config.validate()?;
        let header = |field: &'static str, header: &'static str, value: &str| {
            HeaderValue::from_str(value).map_err(|_| AppError::InvalidHeaderText {
                field,
                header,
                value: value.to_owned(),
            })
        };
        let root = format!("{} {} {}", config.name, config.version, config.locality);
        Ok(Self {
            app: header("name", "x-weft-app", &config.name)?,
            version: header("version", "x-weft-version", &config.version)?,
            locality: if config.locality.is_empty() {
                None
            } else {
                Some(header("locality", "x-weft-locality", &config.locality)?)
            },
            root_body: Bytes::from(format!("{}\n", root.trim_end())),
            fail_ratio: config.fail_ratio,
            latency: config.latency,
        })
    }

    fn add_identity(&self, headers: &mut HeaderMap) {
        headers.insert(X_WEFT_APP, self.app.clone());
        headers.insert(X_WEFT_VERSION, self.version.clone());
        if let Some(locality) = &self.locality {
            headers.insert(X_WEFT_LOCALITY, locality.clone());
        }
    }
}

/// Serves the HTTP endpoints on `listener`, speaking HTTP/1.1 and h2c (HTTP/2
/// with prior knowledge) on the same port, until `shutdown` resolves.
///
/// The configuration is validated first. After `shutdown` resolves the
/// listener is closed (new connections are refused), idle connections are
/// closed, HTTP/2 clients receive a GOAWAY, and the function returns once the
/// requests in flight have completed. Errors on single connections are logged
/// and never stop the server.
pub async fn serve_http(
    listener: TcpListener,
    config: AppConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    let state = Arc::new(AppState::new(&config)?);
    let addr = listener.local_addr().map_err(AppError::Listener)?;
    tracing::info!(
        %addr,
        name = %config.name,
        version = %config.version,
        locality = %config.locality,
        fail_ratio = config.fail_ratio,
        latency_ms = config.latency.as_millis() as u64,
        "sample app serving HTTP/1.1 and h2c"
    );

    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer enables hyper's default 30 s limit on reading request headers.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    accept_loop(listener, shutdown, "http", |stream, peer, guard| {
        tokio::spawn(serve_connection(
            Arc::clone(&builder),
            Arc::clone(&state),
            stream,
            peer,
            guard,
        ));
    })
    .await;
    Ok(())
}

async fn serve_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<AppState>,
    stream: TcpStream,
    peer: SocketAddr,
    mut guard: ConnGuard,
) {
    let service = service_fn(move |req| handle(Arc::clone(&state), peer, req));
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = guard.shutdown_requested() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
    drop(guard);
}

async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let route = route(req.uri().path());
    // `/healthz` reports liveness only: injected latency and failures skip it.
    if route != Route::Healthz {
        if !state.latency.is_zero() {
            tokio::time::sleep(state.latency).await;
        }
        if state.fail_ratio > 0.0 && fastrand::f64() < state.fail_ratio {
            let mut response = injected_failure();
            state.add_identity(response.headers_mut());
            return Ok(response);
        }
    }
    let version = req.version();
    let mut response = respond(route, &state, peer, req).await;
    state.add_identity(response.headers_mut());
    // Which protocol reached the app (proxies may change it on the way).
    let protocol = if version == http::Version::HTTP_2 {
        "HTTP/2"
    } else {
        "HTTP/1.1"
    };
    response
        .headers_mut()
        .insert("x-weft-protocol", http::HeaderValue::from_static(protocol));
    Ok(response)
}

async fn respond(
    route: Route,
    state: &AppState,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    match route {
        Route::Root => text(StatusCode::OK, state.root_body.clone()),
        Route::Healthz => text(StatusCode::OK, Bytes::from_static(b"ok")),
        Route::Status(status) => empty(status),
        Route::Delay(delay) => {
            tokio::time::sleep(delay).await;
            empty(StatusCode::OK)
        }
        Route::Headers => json(headers_json(req.headers(), req.uri().authority())),
        Route::Ip => json(serde_json::json!({ "origin": peer.ip().to_canonical().to_string() })),
        Route::Echo => {
            let content_type = req.headers().get(CONTENT_TYPE).cloned();
            let mut response = Response::new(Either::Right(req.into_body()));
            if let Some(content_type) = content_type {
                response.headers_mut().insert(CONTENT_TYPE, content_type);
            }
            response
        }
        Route::BadRequest(reason) => text(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(reason.as_bytes()),
        ),
        Route::NotFound => text(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    }
}

/// `{"headers": {name: value}}`, repeated headers joined with `", "`; an
/// HTTP/2 request's `:authority` (or an absolute-form target's authority)
/// under `:authority`.
fn headers_json(
    headers: &HeaderMap,
    authority: Option<&http::uri::Authority>,
) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    if let Some(a) = authority {
        map.insert(
            ":authority".to_owned(),
            serde_json::Value::String(a.to_string()),
        );
    }
    for name in headers.keys() {
        let mut joined = String::new();
        for (i, value) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.push_str(", ");
            }
            joined.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        map.insert(name.as_str().to_owned(), serde_json::Value::String(joined));
    }
    serde_json::json!({ "headers": map })
}

fn injected_failure() -> Response<Body> {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from_static(b"injected failure\n"),
    );
    response.headers_mut().insert(X_WEFT_INJECTED_FAILURE, TRUE);
    response
}

fn text(status: StatusCode, body: Bytes) -> Response<Body> {
    with_body(status, TEXT_PLAIN, body)
}

fn json(value: serde_json::Value) -> Response<Body> {
    let mut body = value.to_string();
    body.push('\n');
    with_body(StatusCode::OK, APPLICATION_JSON, Bytes::from(body))
}

fn with_body(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_body_trims_missing_locality() {
        let state = AppState::new(&AppConfig::default()).expect("valid");
        assert_eq!(state.root_body, "sample-app v1\n");
        assert!(state.locality.is_none());
        let state = AppState::new(&AppConfig {
            locality: "eu-west/eu-west-1a".to_owned(),
            ..AppConfig::default()
        })
        .expect("valid");
        assert_eq!(state.root_body, "sample-app v1 eu-west/eu-west-1a\n");
    }

    #[test]
    fn identity_headers_are_added() {
        let state = AppState::new(&AppConfig {
            locality: "zone-a".to_owned(),
            ..AppConfig::default()
        })
        .expect("valid");
        let mut headers = HeaderMap::new();
        state.add_identity(&mut headers);
        assert_eq!(headers[X_WEFT_APP], "sample-app");
        assert_eq!(headers[X_WEFT_VERSION], "v1");
        assert_eq!(headers[X_WEFT_LOCALITY], "zone-a");
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut headers = HeaderMap::new();
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert("x-single", HeaderValue::from_static("c"));
        let value = headers_json(&headers, None);
        assert_eq!(value["headers"]["x-multi"], "a, b");
        assert_eq!(value["headers"]["x-single"], "c");
        assert!(value["headers"].get(":authority").is_none());
        let authority = "shop.example".parse().expect("authority");
        let value = headers_json(&headers, Some(&authority));
        assert_eq!(value["headers"][":authority"], "shop.example");
    }
}
