//! Every answer the engine makes itself instead of relaying an upstream's:
//! refusals by policy, injected faults, redirects, and failures upstream
//! or inside the proxy. Each is an [`L7Error`] variant; [`L7Error::response`]
//! is the one place they become responses, [`L7Error::flag`] the one place
//! they get their Envoy response flag.

use http::{HeaderName, HeaderValue, Response, StatusCode};
use weft_telemetry::flags::Flag;

use crate::engine::local_reply::{not_local, status_response};
use crate::engine::upstream::Body;
use crate::policy::ratelimit::Decision;

/// Why the engine answers a request itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum L7Error {
    /// No route matched (404, `NR`).
    #[error("no route matches {0}")]
    NoRoute(String),
    /// The route's backend has no endpoint (503, `UH`).
    #[error("no healthy upstream for {0}")]
    NoHealthyUpstream(String),
    /// The overall or per-try timeout fired and no try answered (504, `UT`).
    #[error("upstream request timeout")]
    Timeout,
    /// The upstream could not be reached (503, `UF`).
    #[error("upstream connect error: {0}")]
    Connect(String),
    /// The upstream reset the request (503, `UR`).
    #[error("upstream reset: {0}")]
    Reset(String),
    /// The request body could not be read (400, `DC`).
    #[error("reading the request body: {0}")]
    Downstream(String),
    /// The circuit breaker's limits were reached (503, `UO`).
    #[error("upstream overflow: {0} has too many requests in flight")]
    Overflow(String),
    /// The request itself is malformed: hosts that disagree, a bad host
    /// (400, `DPE`).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request's JWT did not verify (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// An authorization policy refused the request (403, `RBAC`).
    #[error("RBAC: access denied")]
    Denied,
    /// A CUSTOM policy's provider refused the request: its status, headers
    /// and body are the answer (`UAEX`).
    #[error("denied by external authorization ({status})")]
    ExtAuthzDenied {
        /// Status to answer with.
        status: u16,
        /// Headers the provider asked to send.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// The body (one line).
        body: String,
    },
    /// A rate limit rule refused the request (429, `RL`, with
    /// `x-ratelimit-*` and `retry-after`).
    #[error("rate limited")]
    RateLimited(Decision),
    /// Fault injection aborted the request with this status (`FI`).
    #[error("fault filter abort")]
    FaultAbort(u16),
    /// The route redirects: status and `Location` (not a local reply: a
    /// gRPC caller gets it as HTTP).
    #[error("redirect")]
    Redirect {
        /// 3xx status.
        status: u16,
        /// Where to; `None` when the configured parts did not make a
        /// valid header value.
        location: Option<HeaderValue>,
    },
    /// A Proxy-Wasm plugin or an external processor answered the request
    /// itself.
    #[error("answered by an extension ({})", .0.status)]
    ExtensionResponse(weft_wasm::LocalResponse),
    /// A Proxy-Wasm plugin failed (or is not loaded) and fails closed
    /// (503).
    #[error("plugin {plugin} failed: {reason}")]
    PluginFailed {
        /// The `WasmPlugin`.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
    /// An external processor failed and fails closed (500).
    #[error("external processor {policy} failed: {reason}")]
    ExtProcFailed {
        /// The `ExtProcPolicy`.
        policy: String,
        /// What went wrong.
        reason: String,
    },
    /// The configuration could not be applied to this request (a rewrite
    /// or upstream URI that cannot be built): the proxy's fault, not the
    /// client's (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl L7Error {
    /// The Envoy response flag, if the answer has one.
    pub fn flag(&self) -> Option<Flag> {
        Some(match self {
            L7Error::NoRoute(_) => Flag::NoRoute,
            L7Error::NoHealthyUpstream(_) => Flag::NoHealthyUpstream,
            L7Error::Timeout => Flag::UpstreamTimeout,
            L7Error::Connect(_) => Flag::UpstreamFailure,
            L7Error::Reset(_) => Flag::UpstreamReset,
            L7Error::Downstream(_) => Flag::DownstreamTermination,
            L7Error::Overflow(_) => Flag::UpstreamOverflow,
            L7Error::Malformed(_) => Flag::DownstreamProtocolError,
            L7Error::Denied => Flag::RbacDenied,
            L7Error::ExtAuthzDenied { .. } => Flag::ExtAuthzDenied,
            L7Error::RateLimited(_) => Flag::RateLimited,
            L7Error::FaultAbort(_) => Flag::FaultInjected,
            L7Error::Unauthenticated(_)
            | L7Error::Redirect { .. }
            | L7Error::Internal(_)
            | L7Error::ExtensionResponse(_)
            | L7Error::PluginFailed { .. }
            | L7Error::ExtProcFailed { .. } => {
                return None;
            }
        })
    }

    /// What the access log prints as the upstream failure: the reason for
    /// failures, nothing for a policy's decision.
    pub fn failure(&self) -> Option<String> {
        match self {
            L7Error::Unauthenticated(_)
            | L7Error::Denied
            | L7Error::ExtAuthzDenied { .. }
            | L7Error::RateLimited(_)
            | L7Error::FaultAbort(_)
            | L7Error::ExtensionResponse(_)
            | L7Error::Redirect { .. } => None,
            other => Some(other.to_string()),
        }
    }

    /// The one place these answers become responses.
    pub fn response(self) -> Response<Body> {
        let status = match &self {
            L7Error::NoRoute(_) => StatusCode::NOT_FOUND,
            L7Error::NoHealthyUpstream(_)
            | L7Error::Connect(_)
            | L7Error::Reset(_)
            | L7Error::Overflow(_)
            | L7Error::PluginFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            L7Error::Timeout => StatusCode::GATEWAY_TIMEOUT,
            L7Error::Downstream(_) | L7Error::Malformed(_) => StatusCode::BAD_REQUEST,
            L7Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            L7Error::Denied => StatusCode::FORBIDDEN,
            L7Error::Internal(_) | L7Error::ExtProcFailed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            L7Error::RateLimited(decision) => {
                let mut response = status_response(429, "rate limited");
                rate_limit_headers(response.headers_mut(), decision, true);
                return response;
            }
            L7Error::FaultAbort(status) => return status_response(*status, "fault filter abort"),
            L7Error::ExtAuthzDenied {
                status,
                headers,
                body,
            } => {
                let mut response = status_response(*status, body.trim_end());
                for (name, value) in headers {
                    response.headers_mut().insert(name.clone(), value.clone());
                }
                return response;
            }
            L7Error::ExtensionResponse(r) => {
                let mut response = http::Response::new(crate::engine::tries::full(r.body.clone()));
                *response.status_mut() =
                    StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                for (name, value) in &r.headers {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(value),
                    ) {
                        response.headers_mut().append(n, v);
                    }
                }
                return response;
            }
            L7Error::Redirect { status, location } => {
                let mut response = status_response(*status, "redirect");
                if let Some(v) = location {
                    response
                        .headers_mut()
                        .insert(http::header::LOCATION, v.clone());
                }
                return not_local(response);
            }
        };
        status_response(status.as_u16(), &self.to_string())
    }
}

/// `x-ratelimit-limit/remaining/reset`, and `retry-after` on a refusal.
pub(crate) fn rate_limit_headers(headers: &mut http::HeaderMap, d: &Decision, refused: bool) {
    let secs = d.reset.as_secs() + u64::from(d.reset.subsec_nanos() > 0);
    for (name, value) in [
        ("x-ratelimit-limit", d.limit),
        ("x-ratelimit-remaining", d.remaining),
        ("x-ratelimit-reset", secs),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
    if refused {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn decision() -> Decision {
        Decision {
            rule: "per-client".into(),
            allowed: false,
            limit: 10,
            remaining: 0,
            reset: Duration::from_millis(1500),
            store_error: None,
        }
    }

    /// Every refusal and failure maps to its status, flag and body in one
    /// place.
    #[test]
    fn answers_map_to_status_and_flag() {
        let location = HeaderValue::from_static("https://example.com/new");
        // (answer, status, flag, body starts with)
        let cases: Vec<(L7Error, u16, &str, &str)> = vec![
            (
                L7Error::NoRoute("/x".into()),
                404,
                "NR",
                "no route matches /x",
            ),
            (
                L7Error::NoHealthyUpstream("c".into()),
                503,
                "UH",
                "no healthy upstream",
            ),
            (L7Error::Timeout, 504, "UT", "upstream request timeout"),
            (
                L7Error::Connect("e".into()),
                503,
                "UF",
                "upstream connect error",
            ),
            (L7Error::Reset("e".into()), 503, "UR", "upstream reset"),
            (
                L7Error::Downstream("e".into()),
                400,
                "DC",
                "reading the request body",
            ),
            (
                L7Error::Overflow("c".into()),
                503,
                "UO",
                "upstream overflow",
            ),
            (
                L7Error::Malformed("h".into()),
                400,
                "DPE",
                "malformed request",
            ),
            (
                L7Error::Unauthenticated("token expired".into()),
                401,
                "-",
                "token expired",
            ),
            (L7Error::Denied, 403, "RBAC", "RBAC: access denied"),
            (
                L7Error::ExtAuthzDenied {
                    status: 402,
                    headers: vec![(
                        HeaderName::from_static("x-why"),
                        HeaderValue::from_static("pay"),
                    )],
                    body: "pay first\n".into(),
                },
                402,
                "UAEX",
                "pay first",
            ),
            (L7Error::RateLimited(decision()), 429, "RL", "rate limited"),
            (L7Error::FaultAbort(418), 418, "FI", "fault filter abort"),
            (
                L7Error::Redirect {
                    status: 301,
                    location: Some(location.clone()),
                },
                301,
                "-",
                "redirect",
            ),
            (
                L7Error::Internal("rewrite".into()),
                500,
                "-",
                "internal error: rewrite",
            ),
        ];
        for (error, status, flag, body) in cases {
            let what = format!("{error:?}");
            let got_flag = error
                .flag()
                .map_or("-", weft_telemetry::flags::Flag::as_str);
            assert_eq!(got_flag, flag, "{what}");
            let response = error.response();
            assert_eq!(response.status().as_u16(), status, "{what}");
            let text = response
                .extensions()
                .get::<crate::engine::local_reply::LocalReply>()
                .map(|l| l.0.clone())
                .unwrap_or_else(|| "redirect".into());
            assert!(text.starts_with(body), "{what}: {text}");
        }
    }

    #[test]
    fn refusals_carry_their_headers() {
        let limited = L7Error::RateLimited(decision()).response();
        assert_eq!(limited.headers()["retry-after"], "2");
        assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");
        let denied = L7Error::ExtAuthzDenied {
            status: 403,
            headers: vec![(
                HeaderName::from_static("x-why"),
                HeaderValue::from_static("no"),
            )],
            body: "no".into(),
        }
        .response();
        assert_eq!(denied.headers()["x-why"], "no");
        let moved = L7Error::Redirect {
            status: 302,
            location: Some(HeaderValue::from_static("/there")),
        }
        .response();
        assert_eq!(moved.headers()["location"], "/there");
        assert!(
            moved
                .extensions()
                .get::<crate::engine::local_reply::LocalReply>()
                .is_none(),
            "a redirect is not a local reply (gRPC callers get it as HTTP)"
        );
        // Policy decisions are not upstream failures in the access log.
        assert!(L7Error::Denied.failure().is_none());
        assert!(L7Error::Timeout.failure().is_some());
    }
}
