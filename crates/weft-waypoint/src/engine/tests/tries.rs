//! The phases that reach endpoints: buffer, mirror, tries and retries, and
//! the snapshot a request keeps while it is in flight.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use super::*;

/// Tries: (what, retry policy, answers, status, flags, tries).
#[tokio::test]
async fn tries_and_retries() {
    type Case = (
        &'static str,
        Option<RetryPolicy>,
        Vec<Answer>,
        u16,
        &'static str,
        usize,
    );
    let cases: Vec<Case> = vec![
        (
            "a 503 retried, then answered",
            retrying(2, "5xx"),
            vec![Answer::Status(503), Answer::Status(200)],
            200,
            "-",
            2,
        ),
        (
            "retries run out: the last answer",
            retrying(1, "5xx"),
            vec![Answer::Status(503), Answer::Status(503)],
            503,
            "-",
            2,
        ),
        (
            "not retryable: answered at once",
            retrying(2, "connect-failure"),
            vec![Answer::Status(503)],
            503,
            "-",
            1,
        ),
        (
            "a connect failure without retries",
            None,
            vec![Answer::ConnectError],
            503,
            "UF",
            1,
        ),
    ];
    for (what, retry, answers, status, flag, tries) in cases {
        let transport = Scripted::answering(&answers);
        let engine = engine(config_with(Route { retry, ..route() }, A), &transport);
        assert_eq!(
            engine.handle(get("/a")).await.status().as_u16(),
            status,
            "{what}"
        );
        assert_eq!(flags(&engine), [flag], "{what}");
        assert_eq!(transport.seen().len(), tries, "{what}");
    }
}

/// Timeouts, on paused time: a try's own timeout ends the try (and may
/// be retried), the route's (1 s here) ends the request, whether it falls
/// in a try or in the wait before the next one: (what, per-try timeout,
/// answers, status, flag, tries, milliseconds taken).
#[tokio::test(start_paused = true)]
async fn per_try_and_route_timeouts() {
    type Case = (
        &'static str,
        Option<u64>,
        Vec<Answer>,
        u16,
        &'static str,
        usize,
        u64,
    );
    let slow = |ms, code| Answer::After(Duration::from_millis(ms), code);
    let cases: Vec<Case> = vec![
        (
            "a slow try timed out, the retry answers",
            Some(300),
            vec![slow(5_000, 200), slow(10, 200)],
            200,
            "-",
            2,
            310,
        ),
        (
            "every try timed out: the route's timeout ends the third",
            Some(400),
            vec![slow(5_000, 200), slow(5_000, 200), slow(5_000, 200)],
            504,
            "UT",
            3,
            1_000,
        ),
        (
            "no per-try timeout: the route's ends the first try",
            None,
            vec![slow(5_000, 200)],
            504,
            "UT",
            1,
            1_000,
        ),
        (
            "the route's timeout falls in the wait before a retry",
            Some(300),
            vec![Answer::RetryAfter(3)],
            504,
            "UT",
            1,
            1_000,
        ),
        (
            "an answer within both timeouts",
            Some(300),
            vec![slow(299, 200)],
            200,
            "-",
            1,
            299,
        ),
    ];
    for (what, per_try, answers, status, flag, tries, took) in cases {
        let transport = Scripted::answering(&answers);
        let retry = RetryPolicy {
            attempts: 5,
            per_try_timeout: per_try.map(Duration::from_millis),
            retry_on: RetryOn::parse("5xx").expect("retry_on"),
            // No jitter: retries start at once.
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        let timed = Route {
            retry: Some(retry),
            timeout: Some(Duration::from_secs(1)),
            ..route()
        };
        let engine = engine(config_with(timed, A), &transport);
        let started = tokio::time::Instant::now();
        let response = engine.handle(get("/a")).await;
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(flags(&engine), [flag], "{what}");
        assert_eq!(transport.seen().len(), tries, "{what}");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(took),
            "{what}: time taken"
        );
    }
}

/// Which deadline bounds a try: (per-try, route's, expected, whether it
/// is the route's).
#[test]
fn a_try_is_bounded_by_the_earlier_deadline() {
    use crate::engine::tries::try_limit;
    let at = tokio::time::Instant::now();
    let ms = |n| Some(at + Duration::from_millis(n));
    let cases = [
        (None, None, None, false),
        (ms(10), None, ms(10), false),
        (None, ms(10), ms(10), true),
        (ms(10), ms(20), ms(10), false),
        (ms(20), ms(10), ms(10), true),
        (ms(10), ms(10), ms(10), true),
    ];
    for (per_try, whole, limit, is_whole) in cases {
        assert_eq!(try_limit(per_try, whole), (limit, is_whole));
    }
}

#[tokio::test]
async fn an_exhausted_retry_budget_is_flagged() {
    let transport = Scripted::answering(&[Answer::Status(503), Answer::Status(200)]);
    let mut cluster = Cluster::new("c", vec![addr(A)]);
    // No retry may be withdrawn: the budget allows none.
    cluster.rate_budget = Some(crate::engine::budget::RateBudget::new(
        0.0,
        0.0,
        Duration::from_secs(10),
    ));
    let retried = Route {
        retry: retrying(2, "5xx"),
        ..route()
    };
    let engine = engine(config_of(retried, cluster), &transport);
    assert_eq!(engine.handle(get("/a")).await.status(), 503);
    assert_eq!(flags(&engine), ["URX"]);
    assert_eq!(transport.seen().len(), 1);
}

/// A configuration change while a request is in flight does not reach it:
/// its retry goes where its own snapshot says, with its own policy.
#[tokio::test]
async fn a_request_keeps_its_snapshot_across_a_config_change() {
    let transport = Scripted::answering(&[Answer::Status(503), Answer::Status(200)]);
    let engine = Arc::new(engine(
        config_with(
            Route {
                retry: retrying(1, "5xx"),
                ..route()
            },
            A,
        ),
        &transport,
    ));
    // On the first try, the configuration changes: cluster `c` now has
    // endpoint B, and the route no longer retries.
    let swapped = Arc::new(Mutex::new(false));
    {
        let (engine, swapped) = (Arc::downgrade(&engine), swapped.clone());
        *transport.on_send.lock().expect("lock") = Some(Box::new(move || {
            let mut done = swapped.lock().expect("lock");
            if !*done && let Some(engine) = engine.upgrade() {
                engine.update(config_with(route(), B));
                *done = true;
            }
        }));
    }
    let response = engine.handle(get("/a")).await;
    assert!(
        *swapped.lock().expect("lock"),
        "the change happened mid-request"
    );
    assert_eq!(response.status(), 200, "retried under the old policy");
    let endpoints: Vec<SocketAddr> = transport.seen().iter().map(|s| s.0).collect();
    assert_eq!(
        endpoints,
        [addr(A), addr(A)],
        "both tries used the old cluster"
    );
    // The next request sees the new configuration.
    assert_eq!(engine.handle(get("/a")).await.status(), 200);
    assert_eq!(transport.seen().last().map(|s| s.0), Some(addr(B)));
}

/// `buffer`: a body within the replay limit is kept and retried; a larger
/// one is sent once, never retried.
#[tokio::test]
async fn buffer_keeps_small_bodies_for_replay_only() {
    // (what, body size, tries)
    let cases = [
        ("small body: retried", 1024, 2),
        (
            "body over the replay limit: sent once",
            DEFAULT_MAX_REPLAY + 1,
            1,
        ),
    ];
    for (what, size, tries) in cases {
        let transport = Scripted::answering(&[Answer::Status(503), Answer::Status(200)]);
        let retried = Route {
            retry: retrying(1, "5xx"),
            ..route()
        };
        let engine = engine(config_with(retried, A), &transport);
        let request = Request::builder()
            .method("POST")
            .uri("/upload")
            .header("host", "shop.example")
            .body(Full::new(Bytes::from(vec![b'x'; size])))
            .expect("request");
        engine.handle(request).await;
        assert_eq!(transport.seen().len(), tries, "{what}");
    }
}

/// `mirror`: a copy goes to the mirror's cluster, marked as shadow
/// traffic; the caller gets the primary's answer.
#[tokio::test]
async fn mirror_sends_a_marked_copy() {
    let transport = Scripted::answering(&[]);
    let mirrored = Route {
        mirror: Some(crate::engine::route::Mirror {
            service: "m".into(),
            percent: 100.0,
        }),
        ..route()
    };
    let mut config = config_with(mirrored, A);
    config
        .clusters
        .insert("m".into(), Arc::new(Cluster::new("m", vec![addr(B)])));
    let engine = engine(config, &transport);
    assert_eq!(engine.handle(get("/a")).await.status(), 200);
    // The copy is sent from a task of its own: wait for it to be seen.
    for _ in 0..100 {
        if transport.seen().len() == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut seen = transport.seen();
    seen.sort();
    assert_eq!(
        seen,
        [
            (addr(A), "/a".to_owned(), Some("shop.example".to_owned())),
            (
                addr(B),
                "/a".to_owned(),
                Some("shop.example-shadow".to_owned())
            ),
        ]
    );
}
