//! The per-request access log line, in the field order of Envoy's default
//! format as Istio prints it:
//!
//! ```text
//! [START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS DETAILS TERMINATION "UPSTREAM_FAILURE"
//! BYTES_RECEIVED BYTES_SENT DURATION UPSTREAM_SERVICE_TIME "X-FORWARDED-FOR"
//! "USER-AGENT" "X-REQUEST-ID" "AUTHORITY" "UPSTREAM_HOST" UPSTREAM_CLUSTER
//! UPSTREAM_LOCAL DOWNSTREAM_LOCAL DOWNSTREAM_REMOTE SERVER_NAME ROUTE_NAME
//! ```
//!
//! (one line). Fields weft does not know print as `-`, as Envoy does.
//!
//! What is copied from the request is held as the request held it
//! (method, path, header values: reference-counted, not copied), so an
//! entry costs no allocation until its line is written, and none when the
//! access log is off.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use http::uri::PathAndQuery;

/// What one request's line says.
#[derive(Debug, Clone, Default)]
pub struct AccessEntry {
    /// When it arrived; without it, the line says `duration` before the
    /// line was written (the engine reads the wall clock only for lines
    /// written).
    pub start: Option<SystemTime>,
    /// Method.
    pub method: http::Method,
    /// Path and query (`/` when the request had none).
    pub path: Option<PathAndQuery>,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// Status returned.
    pub code: u16,
    /// Envoy response flags.
    pub flags: &'static str,
    /// Why the upstream failed, if it did.
    pub upstream_failure: Option<String>,
    /// Request body bytes (when buffered).
    pub bytes_received: u64,
    /// Response body bytes (from `content-length`).
    pub bytes_sent: u64,
    /// Total time.
    pub duration: Duration,
    /// `x-forwarded-for`.
    pub forwarded_for: Option<HeaderValue>,
    /// `user-agent`.
    pub user_agent: Option<HeaderValue>,
    /// `x-request-id`.
    pub request_id: Option<HeaderValue>,
    /// `:authority` / `host`.
    pub authority: Option<HeaderValue>,
    /// The endpoint that answered last.
    pub upstream_host: Option<SocketAddr>,
    /// The cluster.
    pub upstream_cluster: Option<String>,
    /// The caller's address.
    pub downstream_remote: Option<SocketAddr>,
    /// The route.
    pub route: Option<String>,
    /// The JWT's `iss/sub`, when one verified.
    pub request_principal: Option<String>,
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().filter(|s| !s.is_empty()).unwrap_or("-")
}

/// A header's value as text, or `-` (absent, empty or not visible ASCII).
fn header_or_dash(v: &Option<HeaderValue>) -> &str {
    v.as_ref()
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .unwrap_or("-")
}

/// An address, or `-`.
fn addr_or_dash(v: Option<SocketAddr>) -> String {
    v.map_or_else(|| "-".to_owned(), |a| a.to_string())
}

/// RFC 3339 with milliseconds, UTC (Envoy's `%START_TIME%`).
fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        since.subsec_millis()
    )
}

impl AccessEntry {
    /// The line.
    pub fn line(&self) -> String {
        format!(
            "[{}] \"{} {} {}\" {} {} - - \"{}\" {} {} {} - \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - - {} - {}",
            self.start
                .or_else(|| SystemTime::now().checked_sub(self.duration))
                .map_or_else(|| "-".into(), timestamp),
            self.method,
            self.path.as_ref().map_or("/", PathAndQuery::as_str),
            self.protocol,
            self.code,
            self.flags,
            or_dash(&self.upstream_failure),
            self.bytes_received,
            self.bytes_sent,
            self.duration.as_millis(),
            header_or_dash(&self.forwarded_for),
            header_or_dash(&self.user_agent),
            header_or_dash(&self.request_id),
            header_or_dash(&self.authority),
            addr_or_dash(self.upstream_host),
            or_dash(&self.upstream_cluster),
            addr_or_dash(self.downstream_remote),
            or_dash(&self.route),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_follows_envoys_field_order() {
        let entry = AccessEntry {
            start: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_331_200_123)),
            method: http::Method::GET,
            path: Some(PathAndQuery::from_static("/reviews/1")),
            protocol: "HTTP/1.1",
            code: 503,
            flags: "URX",
            upstream_failure: Some("upstream connect error".into()),
            bytes_received: 0,
            bytes_sent: 17,
            duration: Duration::from_millis(42),
            user_agent: Some(HeaderValue::from_static("curl/8")),
            request_id: Some(HeaderValue::from_static("")),
            authority: Some(HeaderValue::from_static("reviews")),
            upstream_host: Some("127.0.1.12:8080".parse().expect("addr")),
            upstream_cluster: Some("shop/reviews:80".into()),
            downstream_remote: Some("127.0.1.1:40000".parse().expect("addr")),
            route: Some("stable".into()),
            ..AccessEntry::default()
        };
        assert_eq!(
            entry.line(),
            "[2025-11-28T12:00:00.123Z] \"GET /reviews/1 HTTP/1.1\" 503 URX - - \"upstream connect error\" 0 17 42 - \"-\" \"curl/8\" \"-\" \"reviews\" \"127.0.1.12:8080\" shop/reviews:80 - - 127.0.1.1:40000 - stable"
        );
    }

    #[test]
    fn dates_are_civil() {
        let at = |s: u64| timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59.000Z");
    }
}
