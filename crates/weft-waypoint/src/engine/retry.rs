//! Retry policy: which outcomes are retried (Envoy's `retryOn` names, as
//! Istio's `VirtualService` and Gateway API pass them), how long to wait
//! between tries (exponential backoff with full jitter, or the server's
//! `Retry-After`), all as pure functions.

use std::time::Duration;

use http::HeaderMap;

/// What one try ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived (with a gRPC status, if it carried one).
    Response {
        /// HTTP status.
        status: u16,
        /// `grpc-status`, when present in the headers.
        grpc_status: Option<u32>,
    },
    /// The per-try timeout fired.
    Timeout,
    /// The connection could not be made.
    ConnectFailure,
    /// The stream or connection was reset mid-request.
    Reset,
    /// HTTP/2 `REFUSED_STREAM`: the server did not process it.
    RefusedStream,
}

/// Conditions that make a try worth repeating (Envoy's `retry_on`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, a reset, a connect failure, a per-try timeout.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504 (and per-try timeouts).
    pub gateway_error: bool,
    /// `reset`: a reset or closed connection, or a per-try timeout.
    pub reset: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `refused-stream`.
    pub refused_stream: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// These statuses (Gateway API `retry.codes`).
    pub statuses: Vec<u16>,
    /// gRPC status codes (`cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`).
    pub grpc: Vec<u32>,
}

/// gRPC status names Envoy accepts in `retry_on`, with their codes.
const GRPC: [(&str, u32); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

impl RetryOn {
    /// Parses a comma-separated `retryOn` list; an unknown name is an
    /// error naming it and the accepted ones.
    pub fn parse(list: &str) -> Result<RetryOn, String> {
        let mut on = RetryOn::default();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                other => match GRPC.iter().find(|(n, _)| *n == other) {
                    Some((_, code)) => on.grpc.push(*code),
                    None => {
                        let grpc: Vec<&str> = GRPC.iter().map(|(n, _)| *n).collect();
                        return Err(format!(
                            "{other:?} is not a retry condition; use 5xx, gateway-error, reset, connect-failure, refused-stream, retriable-4xx, {}",
                            grpc.join(", ")
                        ));
                    }
                },
            }
        }
        Ok(on)
    }

    /// Whether `outcome` is worth another try.
    pub fn matches(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Response {
                grpc_status: Some(code),
                ..
            } if self.grpc.contains(&code) => true,
            Outcome::Response { status, .. } => {
                self.statuses.contains(&status)
                    || (self.five_xx && (500..600).contains(&status))
                    || (self.gateway_error && matches!(status, 502..=504))
                    || (self.retriable_4xx && status == 409)
            }
            Outcome::Timeout => self.five_xx || self.gateway_error || self.reset,
            Outcome::ConnectFailure => self.five_xx || self.connect_failure || self.reset,
            Outcome::Reset => self.five_xx || self.reset,
            Outcome::RefusedStream => self.five_xx || self.refused_stream || self.reset,
        }
    }
}

/// How a route retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (3 means up to 4 tries).
    pub attempts: u32,
    /// Limit on each try; `None`: only the overall timeout applies.
    pub per_try_timeout: Option<Duration>,
    /// What is retried.
    pub retry_on: RetryOn,
    /// First backoff interval (Envoy's default: 25 ms).
    pub base: Duration,
    /// Longest backoff interval (default: 10 × base).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn::parse("connect-failure,refused-stream,gateway-error")
                .unwrap_or_default(),
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based): full jitter over an
    /// exponentially growing interval; `unit` in [0, 1) is the random draw.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// The server's `Retry-After` (seconds form), capped at `cap`.
pub fn retry_after(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let secs: u64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16) -> Outcome {
        Outcome::Response {
            status,
            grpc_status: None,
        }
    }

    #[test]
    fn conditions() {
        // (retryOn, outcome, retried?)
        let cases = [
            ("5xx", resp(500), true),
            ("5xx", resp(404), false),
            ("5xx", Outcome::Timeout, true),
            ("5xx", Outcome::ConnectFailure, true),
            ("gateway-error", resp(500), false),
            ("gateway-error", resp(503), true),
            ("gateway-error", Outcome::Timeout, true),
            ("connect-failure", Outcome::ConnectFailure, true),
            ("connect-failure", resp(503), false),
            ("reset", Outcome::Reset, true),
            ("refused-stream", Outcome::RefusedStream, true),
            ("refused-stream", Outcome::Reset, false),
            ("retriable-4xx", resp(409), true),
            ("retriable-4xx", resp(429), false),
            (
                "unavailable",
                Outcome::Response {
                    status: 200,
                    grpc_status: Some(14),
                },
                true,
            ),
            (
                "unavailable",
                Outcome::Response {
                    status: 200,
                    grpc_status: Some(2),
                },
                false,
            ),
            ("", resp(503), false),
        ];
        // Gateway API retry codes: exactly those statuses.
        let codes = RetryOn {
            statuses: vec![503],
            ..RetryOn::default()
        };
        assert!(codes.matches(resp(503)));
        assert!(!codes.matches(resp(500)));
        for (list, outcome, want) in cases {
            let on = RetryOn::parse(list).expect(list);
            assert_eq!(on.matches(outcome), want, "{list} / {outcome:?}");
        }
    }

    #[test]
    fn unknown_conditions_are_named() {
        let e = RetryOn::parse("5xx, sometimes").expect_err("unknown");
        assert!(e.contains("\"sometimes\" is not a retry condition"), "{e}");
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_a_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(0, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(0, 0.999_999).as_millis(), 24);
        assert_eq!(p.backoff(2, 0.5), Duration::from_millis(50));
        assert_eq!(p.backoff(30, 0.5), Duration::from_millis(125));
    }

    #[test]
    fn retry_after_seconds_are_honoured_and_capped() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "1".parse().expect("value"));
        assert_eq!(
            retry_after(&h, Duration::from_secs(5)),
            Some(Duration::from_secs(1))
        );
        h.insert("retry-after", "120".parse().expect("value"));
        assert_eq!(
            retry_after(&h, Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("value"),
        );
        assert_eq!(retry_after(&h, Duration::from_secs(5)), None);
    }
}
