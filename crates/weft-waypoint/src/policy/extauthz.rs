//! External authorization for CUSTOM `AuthorizationPolicy` rules: ask the
//! policy's provider about the request and follow its answer.
//!
//! - gRPC: Envoy's `envoy.service.auth.v3.Authorization/Check`; status
//!   code 0 allows (with headers to add to or remove from the upstream
//!   request), anything else denies with the response the authorizer
//!   describes (403 by default).
//! - HTTP: Envoy's HTTP flavour: the request's method and path (after the
//!   provider's prefix) and selected headers, no body; 2xx allows (the
//!   listed authorizer headers go upstream), 5xx is a failure, anything
//!   else denies with the authorizer's status and body.
//! - API key (built in): the key from a header or query parameter must
//!   hash (SHA-256) to one the provider holds; the key never goes
//!   upstream, the client's name does.
//!
//! A failure to ask (unreachable, timeout, 5xx, garbage) is an
//! [`Err`]; the engine applies the provider's fail-open or fail-closed
//! mode.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Digest as _;
use weft_core::l7::{AuthzProvider, ProviderKind};

/// Envoy's ext_authz messages and gRPC client (and server, for tests and
/// users writing an authorizer in Rust).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    tonic::include_proto!("envoy.service.auth.v3");
}

/// Largest denial body taken from an HTTP authorizer.
const MAX_DENIAL_BODY: usize = 8 * 1024;

/// What is sent about a request.
#[derive(Debug, Clone)]
pub struct CheckInput<'a> {
    /// Method.
    pub method: &'a str,
    /// Path with query.
    pub path: &'a str,
    /// Host (authority).
    pub host: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The caller's proven identity (`spiffe://…`, or a client
    /// certificate's principal at a gateway).
    pub principal: Option<&'a str>,
    /// The caller's address.
    pub source: Option<SocketAddr>,
}

/// Changes an allowing authorizer makes to the upstream request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Headers to set (replace).
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Headers to append.
    pub append: Vec<(HeaderName, HeaderValue)>,
    /// Headers to remove.
    pub remove: Vec<HeaderName>,
}

impl Allowed {
    /// Applies the changes to the request's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.append {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A denial as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: String,
}

/// The authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Proceed, with these changes.
    Allow(Allowed),
    /// Answer the client with this.
    Deny(Denied),
}

/// Why an authorizer could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// Connecting or the exchange failed.
    #[error("external authorizer {0} unreachable: {1}")]
    Unreachable(String, String),
    /// It answered with a server error or something unintelligible.
    #[error("external authorizer {0} failed: {1}")]
    Failed(String, String),
}

/// Clients for the providers, shared by every configuration (gRPC
/// channels are kept per address).
pub struct Authorizers {
    grpc: Mutex<HashMap<String, tonic::transport::Channel>>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Authorizers {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Authorizers {
            grpc: Mutex::default(),
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl std::fmt::Debug for Authorizers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizers").finish_non_exhaustive()
    }
}

/// Lowercase hex SHA-256 of `key`, as API-key Secrets store it.
pub fn hash_key(key: &str) -> String {
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn header_pair(key: &str, value: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(key.as_bytes()).ok()?,
        HeaderValue::from_bytes(value).ok()?,
    ))
}

impl Authorizers {
    /// Asks `provider` about the request (the caller bounds the time).
    pub async fn check(
        &self,
        provider: &AuthzProvider,
        input: &CheckInput<'_>,
    ) -> Result<Verdict, CheckError> {
        match &provider.kind {
            ProviderKind::ApiKey {
                header,
                query,
                keys,
                client_header,
            } => Ok(api_key(
                input,
                header,
                query.as_deref(),
                keys,
                client_header,
            )),
            ProviderKind::Grpc { address } => self.grpc(address, input).await,
            ProviderKind::Http {
                address,
                path_prefix,
                include_headers,
                headers_to_upstream,
                headers_to_downstream,
            } => {
                self.http(
                    address,
                    path_prefix,
                    include_headers,
                    headers_to_upstream,
                    headers_to_downstream,
                    input,
                )
                .await
            }
        }
    }

    fn channel(&self, address: &str) -> Result<tonic::transport::Channel, CheckError> {
        let mut held = self
            .grpc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = held.get(address) {
            return Ok(c.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| CheckError::Unreachable(address.to_owned(), e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .connect_lazy();
        held.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    async fn grpc(&self, address: &str, input: &CheckInput<'_>) -> Result<Verdict, CheckError> {
        use proto::attribute_context::{HttpRequest, Peer, Request};
        let mut headers: HashMap<String, String> = HashMap::new();
        for (name, value) in input.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let request = proto::CheckRequest {
            attributes: Some(proto::AttributeContext {
                source: Some(Peer {
                    address: input.source.map(|a| proto::Address {
                        socket_address: Some(proto::SocketAddress {
                            address: a.ip().to_string(),
                            port_value: u32::from(a.port()),
                        }),
                    }),
                    principal: input.principal.unwrap_or_default().to_owned(),
                    ..Peer::default()
                }),
                destination: None,
                request: Some(Request {
                    http: Some(HttpRequest {
                        id: input
                            .headers
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned(),
                        method: input.method.to_owned(),
                        headers,
                        path: input.path.to_owned(),
                        host: input.host.to_owned(),
                        scheme: input.scheme.to_owned(),
                        size: -1,
                        protocol: input.protocol.to_owned(),
                    }),
                }),
                context_extensions: HashMap::new(),
            }),
        };
        let mut client =
            proto::authorization_client::AuthorizationClient::new(self.channel(address)?);
        let response = client
            .check(request)
            .await
            .map_err(|s| CheckError::Unreachable(address.to_owned(), s.to_string()))?
            .into_inner();
        let pairs = |options: &[proto::HeaderValueOption]| {
            let mut set = Vec::new();
            let mut append = Vec::new();
            for o in options {
                let Some(h) = &o.header else { continue };
                let value = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                };
                let Some(pair) = header_pair(&h.key, value) else {
                    continue;
                };
                // `append` true, or APPEND_IF_EXISTS_OR_ADD with `append`
                // unset, appends; the rest overwrite (Envoy's defaults
                // for ext_authz are to overwrite).
                if o.append.as_ref().is_some_and(|a| a.value) {
                    append.push(pair);
                } else {
                    set.push(pair);
                }
            }
            (set, append)
        };
        let code = response.status.as_ref().map_or(0, |s| s.code);
        if code == 0 {
            let (set, append, remove) = match &response.http_response {
                Some(proto::check_response::HttpResponse::OkResponse(ok)) => {
                    let (set, append) = pairs(&ok.headers);
                    let remove = ok
                        .headers_to_remove
                        .iter()
                        .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                        .filter(|h| h != http::header::HOST)
                        .collect();
                    (set, append, remove)
                }
                _ => Default::default(),
            };
            return Ok(Verdict::Allow(Allowed {
                set,
                append,
                remove,
            }));
        }
        let denied = match &response.http_response {
            Some(proto::check_response::HttpResponse::DeniedResponse(d)) => {
                let (mut headers, append) = pairs(&d.headers);
                headers.extend(append);
                let status = d
                    .status
                    .as_ref()
                    .and_then(|s| u16::try_from(s.code).ok())
                    .filter(|c| (200..=599).contains(c))
                    .unwrap_or(403);
                Denied {
                    status,
                    headers,
                    body: d.body.clone(),
                }
            }
            _ => Denied {
                status: 403,
                headers: Vec::new(),
                body: String::new(),
            },
        };
        Ok(Verdict::Deny(denied))
    }

    async fn http(
        &self,
        address: &str,
        path_prefix: &str,
        include_headers: &[String],
        headers_to_upstream: &[String],
        headers_to_downstream: &[String],
        input: &CheckInput<'_>,
    ) -> Result<Verdict, CheckError> {
        let failed =
            |e: &dyn std::fmt::Display| CheckError::Failed(address.to_owned(), e.to_string());
        let uri = format!("http://{address}{path_prefix}{}", input.path);
        let mut builder = http::Request::builder()
            .method(input.method)
            .uri(&uri)
            .header(http::header::HOST, input.host)
            .header(http::header::CONTENT_LENGTH, "0");
        for name in ["authorization", "cookie", "x-forwarded-for", "x-request-id"]
            .into_iter()
            .chain(include_headers.iter().map(String::as_str))
        {
            for value in input.headers.get_all(name) {
                builder = builder.header(name, value);
            }
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| failed(&e))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| CheckError::Unreachable(address.to_owned(), e.to_string()))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(failed(&format!("answered {status}")));
        }
        let copy = |names: &[String], from: &HeaderMap| {
            names
                .iter()
                .flat_map(|n| {
                    from.get_all(n.as_str())
                        .iter()
                        .filter_map(|v| header_pair(n, v.as_bytes()))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        if status.is_success() {
            return Ok(Verdict::Allow(Allowed {
                set: copy(headers_to_upstream, response.headers()),
                ..Allowed::default()
            }));
        }
        let headers = copy(headers_to_downstream, response.headers());
        let body = Limited::new(response.into_body(), MAX_DENIAL_BODY)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Ok(Verdict::Deny(Denied {
            status: status.as_u16(),
            headers,
            body,
        }))
    }
}

/// The built-in API-key check.
fn api_key(
    input: &CheckInput<'_>,
    header: &str,
    query: Option<&str>,
    keys: &std::collections::BTreeMap<String, String>,
    client_header: &str,
) -> Verdict {
    let from_header = input
        .headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let from_query = query.and_then(|q| {
        input
            .path
            .split_once('?')?
            .1
            .split('&')
            .find_map(|kv| kv.strip_prefix(q)?.strip_prefix('=').map(str::to_owned))
    });
    let deny = |why: &str| {
        Verdict::Deny(Denied {
            status: 401,
            headers: vec![(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("ApiKey"),
            )],
            body: format!("{why}\n"),
        })
    };
    let Some(key) = from_header.or(from_query) else {
        return deny("API key missing");
    };
    match keys.get(&hash_key(key.trim())) {
        Some(client) => Verdict::Allow(Allowed {
            set: header_pair(client_header, client.as_bytes())
                .into_iter()
                .collect(),
            remove: HeaderName::from_bytes(header.as_bytes())
                .ok()
                .into_iter()
                .collect(),
            ..Allowed::default()
        }),
        None => deny("API key not recognised"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_checked_by_hash() {
        let keys = [(hash_key("s3cret"), "partner-a".to_owned())].into();
        let mut headers = HeaderMap::new();
        let input = |headers: &HeaderMap, path: &'static str| {
            api_key(
                &CheckInput {
                    method: "GET",
                    path,
                    host: "h",
                    scheme: "https",
                    protocol: "HTTP/1.1",
                    headers: &headers.clone(),
                    principal: None,
                    source: None,
                },
                "x-api-key",
                Some("api_key"),
                &keys,
                "x-weft-api-client",
            )
        };
        let Verdict::Deny(d) = input(&headers, "/") else {
            panic!("no key must be denied")
        };
        assert_eq!((d.status, d.body.as_str()), (401, "API key missing\n"));
        headers.insert("x-api-key", HeaderValue::from_static("wrong"));
        assert!(
            matches!(input(&headers, "/"), Verdict::Deny(d) if d.body.contains("not recognised"))
        );
        headers.insert("x-api-key", HeaderValue::from_static("s3cret"));
        let Verdict::Allow(allowed) = input(&headers, "/") else {
            panic!("a known key is allowed")
        };
        let mut upstream = headers.clone();
        allowed.apply(&mut upstream);
        assert!(
            upstream.get("x-api-key").is_none(),
            "the key never goes upstream"
        );
        assert_eq!(upstream["x-weft-api-client"], "partner-a");
        assert!(matches!(
            input(&HeaderMap::new(), "/x?a=1&api_key=s3cret"),
            Verdict::Allow(_)
        ));
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// An HTTP authorizer: `/check/ok…` allows (with `x-user`), `/check/boom`
    /// fails with 500, anything else is denied with 401 and a body.
    async fn http_authorizer() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let has_auth = req.headers().contains_key("authorization");
                        let mut r = http::Response::new(Full::new(Bytes::from("go away")));
                        if path.starts_with("/check/ok") && has_auth {
                            r.headers_mut()
                                .insert("x-user", HeaderValue::from_static("bob"));
                            r.headers_mut()
                                .insert("x-internal", HeaderValue::from_static("no"));
                        } else if path == "/check/boom" {
                            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        } else {
                            *r.status_mut() = http::StatusCode::UNAUTHORIZED;
                            r.headers_mut()
                                .insert("www-authenticate", HeaderValue::from_static("Basic"));
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_authorizer_allows_denies_and_fails() {
        let address = http_authorizer().await;
        let provider = AuthzProvider {
            name: "http".into(),
            kind: ProviderKind::Http {
                address,
                path_prefix: "/check".into(),
                include_headers: vec![],
                headers_to_upstream: vec!["x-user".into()],
                headers_to_downstream: vec!["www-authenticate".into()],
            },
            timeout: std::time::Duration::from_secs(1),
            fail_open: false,
            status_on_error: 403,
        };
        let authorizers = Authorizers::default();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Basic Ym9i"));
        let check = |path: &'static str, headers: HeaderMap| {
            let (authorizers, provider) = (&authorizers, &provider);
            async move {
                let input = CheckInput {
                    method: "GET",
                    path,
                    host: "h",
                    scheme: "http",
                    protocol: "HTTP/1.1",
                    headers: &headers,
                    principal: None,
                    source: None,
                };
                authorizers.check(provider, &input).await
            }
        };
        match check("/ok", headers.clone()).await.expect("asked") {
            Verdict::Allow(a) => assert_eq!(
                a.set,
                vec![(
                    HeaderName::from_static("x-user"),
                    HeaderValue::from_static("bob")
                )],
                "only the listed headers go upstream"
            ),
            other => panic!("{other:?}"),
        }
        match check("/ok", HeaderMap::new()).await.expect("asked") {
            Verdict::Deny(d) => {
                assert_eq!((d.status, d.body.as_str()), (401, "go away"));
                assert_eq!(d.headers.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let failed = check("/boom", headers).await.expect_err("5xx is a failure");
        assert!(failed.to_string().contains("500"), "{failed}");
    }
}
