//! Answers weft makes itself — no route, refused by policy, rate limited,
//! upstream unreachable or too slow — as opposed to answers relayed from
//! an upstream.
//!
//! A plain HTTP caller gets the status and a one-line text body. A gRPC
//! caller (`content-type: application/grpc…`) cannot read that: gRPC
//! statuses travel in `grpc-status`/`grpc-message`, with HTTP status 200.
//! So for gRPC requests a local answer becomes a trailers-only gRPC
//! response whose code follows gRPC's HTTP-to-gRPC mapping (404 →
//! UNIMPLEMENTED, 401 → UNAUTHENTICATED, 403 → PERMISSION_DENIED, 429 and
//! 502/503 → UNAVAILABLE, others UNKNOWN), except that weft's own upstream
//! timeout (504) is DEADLINE_EXCEEDED. Headers the answer carried (rate
//! limit headers, an authorizer's headers) are kept. Metrics and the access
//! log keep the HTTP status, so errors still count as errors.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::engine::Body;

/// Marks a response weft made itself, with its one-line reason.
#[derive(Clone, Debug)]
pub(crate) struct LocalReply(pub(crate) String);

/// A local answer: `status` and `text` (one line) as the body.
pub fn status_response(status: u16, text: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{text}\n")));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r.extensions_mut().insert(LocalReply(text.to_owned()));
    r
}

/// Marks `response` as relayed, not local (a redirect answers in HTTP
/// whatever the caller speaks).
pub fn not_local(mut response: Response<Body>) -> Response<Body> {
    response.extensions_mut().remove::<LocalReply>();
    response
}

/// `response` as a gRPC caller needs it: a local answer becomes a
/// trailers-only gRPC status; anything else is returned unchanged.
pub fn for_grpc(mut response: Response<Body>) -> Response<Body> {
    let Some(LocalReply(text)) = response.extensions_mut().remove::<LocalReply>() else {
        return response;
    };
    let code = grpc_status(response.status().as_u16());
    let mut headers = std::mem::take(response.headers_mut());
    headers.remove(http::header::CONTENT_LENGTH);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(&grpc_message(&text)) {
        headers.insert("grpc-message", message);
    }
    let mut grpc = Response::new(full(Bytes::new()));
    *grpc.headers_mut() = headers;
    grpc
}

/// The gRPC status code for a local answer's HTTP status.
pub fn grpc_status(http: u16) -> u32 {
    match http {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502 | 503 => 14, // UNAVAILABLE
        504 => 4,              // DEADLINE_EXCEEDED
        _ => 2,                // UNKNOWN
    }
}

/// `text` as a `grpc-message` value: percent-encoded outside printable
/// ASCII, and `%` itself.
pub fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.trim_end().bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_grpc_codes() {
        for (http, grpc) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 4),
            (500, 2),
            (418, 2),
        ] {
            assert_eq!(grpc_status(http), grpc, "HTTP {http}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(grpc_message("no route matches /a"), "no route matches /a");
        assert_eq!(grpc_message("100% über\n"), "100%25 %C3%BCber");
    }

    #[tokio::test]
    async fn local_answers_become_grpc_statuses_and_others_pass() {
        let mut limited = status_response(429, "rate limited");
        limited
            .headers_mut()
            .insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        let grpc = for_grpc(limited);
        assert_eq!(grpc.status(), StatusCode::OK);
        let header = |name: &str| grpc.headers().get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("grpc-status"), Some("14"));
        assert_eq!(header("grpc-message"), Some("rate limited"));
        assert_eq!(header("content-type"), Some("application/grpc"));
        assert_eq!(header("x-ratelimit-remaining"), Some("0"));
        let body = grpc.into_body().collect().await.map(|b| b.to_bytes());
        assert_eq!(body.ok(), Some(Bytes::new()), "trailers-only");
        // An upstream's answer (no mark) and a redirect pass unchanged.
        let upstream = Response::new(full("from upstream"));
        assert_eq!(for_grpc(upstream).headers().get("grpc-status"), None);
        let redirect = not_local(status_response(301, "redirect"));
        assert_eq!(for_grpc(redirect).status(), StatusCode::MOVED_PERMANENTLY);
    }
}
