//! Every endpoint over real sockets, with HTTP/1.1 and with h2c.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ChunkBody, PROTOS, Proto, TestServer, client, client_with, get, send};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use weft_sample_app::AppConfig;

fn identity_config() -> AppConfig {
    AppConfig {
        name: "reviews".to_owned(),
        version: "v2".to_owned(),
        locality: "eu-west/eu-west-1a".to_owned(),
        ..AppConfig::default()
    }
}

#[tokio::test]
async fn root_names_the_instance_with_identity_headers() {
    let server = TestServer::start(identity_config()).await;
    for proto in PROTOS {
        let client = client(proto);
        let (parts, body) = get(&client, server.uri("/")).await;
        assert_eq!(parts.version, proto.version(), "{proto:?}");
        assert_eq!(parts.status, StatusCode::OK, "{proto:?}");
        assert_eq!(body, "reviews v2 eu-west/eu-west-1a\n", "{proto:?}");
        assert_eq!(parts.headers["x-weft-app"], "reviews");
        assert_eq!(parts.headers["x-weft-version"], "v2");
        assert_eq!(parts.headers["x-weft-locality"], "eu-west/eu-west-1a");
        assert_eq!(parts.headers["content-type"], "text/plain; charset=utf-8");
    }
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn empty_locality_is_trimmed_and_its_header_omitted() {
    let server = TestServer::start(AppConfig::default()).await;
    for proto in PROTOS {
        let client = client(proto);
        let (parts, body) = get(&client, server.uri("/")).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, "sample-app v1\n", "{proto:?}");
        assert_eq!(parts.headers["x-weft-app"], "sample-app");
        assert_eq!(parts.headers["x-weft-version"], "v1");
        assert!(!parts.headers.contains_key("x-weft-locality"), "{proto:?}");
    }
}

#[tokio::test]
async fn identity_headers_are_on_every_response() {
    let server = TestServer::start(identity_config()).await;
    for proto in PROTOS {
        let client = client(proto);
        for path in [
            "/",
            "/healthz",
            "/status/418",
            "/status/abc",
            "/delay/0",
            "/headers",
            "/echo",
            "/ip",
            "/missing",
        ] {
            let (parts, _) = get(&client, server.uri(path)).await;
            assert_eq!(parts.headers["x-weft-app"], "reviews", "{proto:?} {path}");
            assert_eq!(parts.headers["x-weft-version"], "v2", "{proto:?} {path}");
            assert_eq!(
                parts.headers["x-weft-locality"], "eu-west/eu-west-1a",
                "{proto:?} {path}"
            );
        }
    }
}

#[tokio::test]
async fn status_returns_the_requested_code() {
    let server = TestServer::start(AppConfig::default()).await;
    for proto in PROTOS {
        let client = client(proto);
        for code in [200u16, 204, 302, 418, 500, 503, 599] {
            let (parts, body) = get(&client, server.uri(&format!("/status/{code}"))).await;
            assert_eq!(parts.status.as_u16(), code, "{proto:?}");
            assert!(body.is_empty(), "{proto:?} {code}: {body:?}");
        }
    }
}

#[tokio::test]
async fn status_rejects_bad_codes_with_400() {
    let server = TestServer::start(AppConfig::default()).await;
    for proto in PROTOS {
        let client = client(proto);
        for (path, reason) in [
            ("/status/abc", "must be a number"),
            ("/status/100", "1xx"),
            ("/status/199", "1xx"),
            ("/status/600", "between 200 and 599"),
            ("/status/42", "between 200 and 599"),
        ] {
            let (parts, body) = get(&client, server.uri(path)).await;
            assert_eq!(parts.status, StatusCode::BAD_REQUEST, "{proto:?} {path}");
            let body = std::str::from_utf8(&body).expect("utf-8");
            assert!(body.contains(reason), "{proto:?} {path}: {body:?}");
        }
    }
}

#[tokio::test]
async fn healthz_is_ok() {
    let server = TestServer::start(AppConfig::default()).await;
    for proto in PROTOS {
        let (parts, body) = get(&client(proto), server.uri("/healthz")).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, "ok", "{proto:?}");
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let server = TestServer::start(AppConfig::default()).await;
    for proto in PROTOS {
        let client = client(proto);
        for path in ["/nope", "/status", "/status/200/extra", "/healthz/x"] {
            let (parts, body) = get(&client, server.uri(path)).await;
            assert_eq!(parts.status, StatusCode::NOT_FOUND, "{proto:?} {path}");
            assert_eq!(body, "not found\n");
        }
    }
}

#[tokio::test]
async fn any_method_is_accepted() {
    let server = TestServer::start(AppConfig::default()).await;
    for proto in PROTOS {
        let client = client(proto);
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let req = Request::builder()
                .method(method)
                .uri(server.uri("/status/202"))
                .body(Full::new(Bytes::from_static(b"ignored")))
                .expect("request");
            let (parts, _) = send(&client, req).await;
            assert_eq!(parts.status, StatusCode::ACCEPTED, "{proto:?} {method}");
        }
    }
}

#[tokio::test]
async fn headers_returns_request_headers_as_json() {
    let server = TestServer::start(AppConfig::default()).await;
    for proto in PROTOS {
        let req = Request::get(server.uri("/headers?x=1"))
            .header("x-custom", "hello weft")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (parts, body) = send(&client(proto), req).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["content-type"], "application/json");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json body");
        assert_eq!(
            json["headers"]["x-custom"], "hello weft",
            "{proto:?}: {json}"
        );
        assert_eq!(json["headers"]["x-multi"], "a, b", "{proto:?}: {json}");
    }
}

#[tokio::test]
async fn echo_round_trips_one_mebibyte() {
    let server = TestServer::start(AppConfig::default()).await;
    let mut payload = vec![0u8; 1024 * 1024];
    fastrand::Rng::with_seed(7).fill(&mut payload);
    let payload = Bytes::from(payload);
    for proto in PROTOS {
        let req = Request::post(server.uri("/echo"))
            .header("content-type", "application/x-weft-test")
            .body(Full::new(payload.clone()))
            .expect("request");
        let (parts, body) = send(&client(proto), req).await;
        assert_eq!(parts.status, StatusCode::OK, "{proto:?}");
        assert_eq!(parts.headers["content-type"], "application/x-weft-test");
        assert_eq!(body.len(), payload.len(), "{proto:?}");
        assert!(body == payload, "{proto:?}: echoed bytes differ");
    }
}

#[tokio::test]
async fn echo_without_content_type_has_none() {
    let server = TestServer::start(AppConfig::default()).await;
    for proto in PROTOS {
        let req = Request::post(server.uri("/echo"))
            .body(Full::new(Bytes::from_static(b"plain")))
            .expect("request");
        let (parts, body) = send(&client(proto), req).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(!parts.headers.contains_key("content-type"), "{proto:?}");
        assert_eq!(body, "plain");
    }
}

/// The response starts before the request body is complete: the body is
/// streamed through, not buffered.
#[tokio::test]
async fn echo_streams_without_buffering() {
    let server = TestServer::start(AppConfig::default()).await;
    for proto in PROTOS {
        let client = client_with::<ChunkBody>(proto);
        let (tx, body) = ChunkBody::new();
        let req = Request::post(server.uri("/echo"))
            .body(body)
            .expect("request");
        tx.send(Bytes::from_static(b"first "))
            .await
            .expect("send first chunk");
        let response = tokio::time::timeout(common::HANG_GUARD, client.request(req))
            .await
            .expect("response head hung")
            .expect("request failed");
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let first = tokio::time::timeout(common::HANG_GUARD, body.frame())
            .await
            .expect("first chunk hung")
            .expect("body ended early")
            .expect("body error")
            .into_data()
            .expect("data frame");
        assert_eq!(first, "first ", "{proto:?}");
        tx.send(Bytes::from_static(b"second"))
            .await
            .expect("send second chunk");
        drop(tx);
        let rest = tokio::time::timeout(common::HANG_GUARD, body.collect())
            .await
            .expect("rest hung")
            .expect("body error")
            .to_bytes();
        assert_eq!(rest, "second", "{proto:?}");
    }
}

#[tokio::test]
async fn ip_is_the_peer_address() {
    let server = TestServer::start(AppConfig::default()).await;
    for proto in PROTOS {
        let (parts, body) = get(&client(proto), server.uri("/ip")).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["content-type"], "application/json");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json body");
        assert_eq!(
            json,
            serde_json::json!({ "origin": "127.0.0.1" }),
            "{proto:?}"
        );
    }
}

#[tokio::test]
async fn delay_waits_at_least_the_requested_time() {
    let server = TestServer::start(AppConfig::default()).await;
    for proto in PROTOS {
        let client = client(proto);
        let started = Instant::now();
        let (parts, _) = get(&client, server.uri("/delay/0.2")).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{proto:?}: {:?}",
            started.elapsed()
        );
        for path in ["/delay/abc", "/delay/61", "/delay/-1", "/delay/NaN"] {
            let (parts, _) = get(&client, server.uri(path)).await;
            assert_eq!(parts.status, StatusCode::BAD_REQUEST, "{proto:?} {path}");
        }
    }
}

#[tokio::test]
async fn latency_delays_responses() {
    let server = TestServer::start(AppConfig {
        latency: Duration::from_millis(100),
        ..AppConfig::default()
    })
    .await;
    for proto in PROTOS {
        let started = Instant::now();
        let (parts, body) = get(&client(proto), server.uri("/")).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, "sample-app v1\n");
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "{proto:?}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn healthz_is_not_delayed_by_latency() {
    let server = TestServer::start(AppConfig {
        latency: Duration::from_secs(5),
        ..AppConfig::default()
    })
    .await;
    for proto in PROTOS {
        let client = client(proto);
        let (parts, body) =
            tokio::time::timeout(Duration::from_secs(2), get(&client, server.uri("/healthz")))
                .await
                .expect("/healthz must not wait for the configured latency");
        assert_eq!(parts.status, StatusCode::OK, "{proto:?}");
        assert_eq!(body, "ok");
    }
}

/// Sends `n` requests to `/` and returns how many were injected failures,
/// checking each failure's shape.
async fn count_failures(server: &TestServer, proto: Proto, n: usize) -> usize {
    let client = client(proto);
    let mut failures = 0;
    for _ in 0..n {
        let (parts, body) = get(&client, server.uri("/")).await;
        if parts.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(parts.headers["x-weft-injected-failure"], "true");
            assert_eq!(body, "injected failure\n");
            assert_eq!(parts.headers["x-weft-app"], "sample-app");
            failures += 1;
        } else {
            assert_eq!(parts.status, StatusCode::OK);
            assert!(!parts.headers.contains_key("x-weft-injected-failure"));
        }
    }
    failures
}

fn with_fail_ratio(fail_ratio: f64) -> AppConfig {
    AppConfig {
        fail_ratio,
        ..AppConfig::default()
    }
}

#[tokio::test]
async fn fail_ratio_zero_never_fails() {
    let server = TestServer::start(with_fail_ratio(0.0)).await;
    for proto in PROTOS {
        assert_eq!(count_failures(&server, proto, 200).await, 0, "{proto:?}");
    }
}

#[tokio::test]
async fn fail_ratio_one_always_fails_except_healthz() {
    let server = TestServer::start(with_fail_ratio(1.0)).await;
    for proto in PROTOS {
        assert_eq!(count_failures(&server, proto, 200).await, 200, "{proto:?}");
        let (parts, body) = get(&client(proto), server.uri("/healthz")).await;
        assert_eq!(parts.status, StatusCode::OK, "{proto:?}");
        assert_eq!(body, "ok");
    }
}

#[tokio::test]
async fn fail_ratio_half_fails_about_half() {
    let server = TestServer::start(with_fail_ratio(0.5)).await;
    for proto in PROTOS {
        let failures = count_failures(&server, proto, 400).await;
        assert!((100..=300).contains(&failures), "{proto:?}: {failures}/400");
    }
}

#[tokio::test]
async fn validate_rejects_out_of_range_fail_ratio() {
    for bad in [1.5, f64::NAN, -0.5] {
        let err = with_fail_ratio(bad)
            .validate()
            .expect_err("must be rejected");
        assert!(err.to_string().contains("fail_ratio"), "{err}");
    }
    assert!(with_fail_ratio(1.0).validate().is_ok());
}

#[tokio::test]
async fn serve_http_refuses_invalid_config() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        weft_sample_app::serve_http(listener, with_fail_ratio(1.5), std::future::pending()),
    )
    .await
    .expect("must fail fast");
    assert!(result.is_err());
}
