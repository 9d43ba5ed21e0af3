//! Request routing as a pure function of the request path.
//!
//! Keeping the decision free of I/O makes it cheap to test exhaustively; the
//! HTTP layer in `http.rs` only executes the [`Route`] chosen here.

use std::time::Duration;

use http::StatusCode;

/// Longest delay `/delay/{seconds}` accepts.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(60);

/// What to do with a request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Route {
    /// `/`: identify the instance.
    Root,
    /// `/healthz`: liveness, never delayed or failed.
    Healthz,
    /// `/status/{code}`: answer with this status.
    Status(StatusCode),
    /// `/delay/{seconds}`: wait, then answer 200.
    Delay(Duration),
    /// `/headers`: return the request headers as JSON.
    Headers,
    /// `/echo`: stream the request body back.
    Echo,
    /// `/ip`: return the client's IP as JSON.
    Ip,
    /// The path is known but its parameter is not; answer 400 with this text.
    BadRequest(&'static str),
    /// Unknown path.
    NotFound,
}

/// Chooses the [`Route`] for a request path (without the query string).
pub(crate) fn route(path: &str) -> Route {
    match path {
        "/" => Route::Root,
        "/healthz" => Route::Healthz,
        "/headers" => Route::Headers,
        "/echo" => Route::Echo,
        "/ip" => Route::Ip,
        _ => {
            if let Some(code) = single_segment(path, "/status/") {
                parse_status(code)
            } else if let Some(seconds) = single_segment(path, "/delay/") {
                parse_delay(seconds)
            } else {
                Route::NotFound
            }
        }
    }
}

/// The rest of `path` after `prefix`, if it is a single path segment.
fn single_segment<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix).filter(|rest| !rest.contains('/'))
}

fn parse_status(code: &str) -> Route {
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Route::BadRequest("status code must be a number, e.g. /status/503\n");
    }
    match code.parse::<u16>() {
        Ok(100..=199) => {
            Route::BadRequest("1xx informational status codes cannot be sent as a final response\n")
        }
        Ok(code @ 200..=599) => match StatusCode::from_u16(code) {
            Ok(status) => Route::Status(status),
            Err(_) => Route::BadRequest("status code must be between 200 and 599\n"),
        },
        _ => Route::BadRequest("status code must be between 200 and 599\n"),
    }
}

fn parse_delay(seconds: &str) -> Route {
    let Ok(secs) = seconds.parse::<f64>() else {
        return Route::BadRequest("delay must be a number of seconds, e.g. /delay/0.25\n");
    };
    if secs.is_nan() {
        return Route::BadRequest("delay must be a number of seconds, e.g. /delay/0.25\n");
    }
    if !(0.0..=MAX_DELAY.as_secs_f64()).contains(&secs) {
        return Route::BadRequest("delay must be between 0 and 60 seconds\n");
    }
    Route::Delay(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        let status = |code| Route::Status(StatusCode::from_u16(code).expect("valid code"));
        let cases: &[(&str, Route)] = &[
            ("/", Route::Root),
            ("/healthz", Route::Healthz),
            ("/headers", Route::Headers),
            ("/echo", Route::Echo),
            ("/ip", Route::Ip),
            ("/status/200", status(200)),
            ("/status/418", status(418)),
            ("/status/503", status(503)),
            ("/status/599", status(599)),
            ("/status/204", status(204)),
            ("/delay/0", Route::Delay(Duration::ZERO)),
            ("/delay/0.25", Route::Delay(Duration::from_millis(250))),
            ("/delay/2", Route::Delay(Duration::from_secs(2))),
            ("/delay/60", Route::Delay(MAX_DELAY)),
            ("/nope", Route::NotFound),
            ("", Route::NotFound),
            ("/healthz/", Route::NotFound),
            ("/status", Route::NotFound),
            ("/status/418/extra", Route::NotFound),
            ("/delay/1/2", Route::NotFound),
            ("/ECHO", Route::NotFound),
        ];
        for (path, want) in cases {
            assert_eq!(&route(path), want, "path {path:?}");
        }
    }

    #[test]
    fn bad_parameters_are_400() {
        for path in [
            "/status/abc",
            "/status/",
            "/status/-1",
            "/status/4l8",
            "/status/100",
            "/status/101",
            "/status/199",
            "/status/99",
            "/status/600",
            "/status/99999999999",
            "/delay/abc",
            "/delay/",
            "/delay/-1",
            "/delay/NaN",
            "/delay/inf",
            "/delay/60.5",
            "/delay/61",
        ] {
            match route(path) {
                Route::BadRequest(reason) => {
                    assert!(reason.ends_with('\n'), "{path}: {reason:?}");
                }
                other => panic!("{path}: expected 400, got {other:?}"),
            }
        }
    }

    #[test]
    fn informational_codes_explain_why() {
        let Route::BadRequest(reason) = route("/status/100") else {
            panic!("expected 400");
        };
        assert!(reason.contains("1xx"), "{reason}");
    }
}
