//! The phases that answer by themselves, and the order they are documented in.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use super::*;

/// Phases that answer by themselves: (what, route, request path,
/// status, flags, tries sent upstream).
#[tokio::test]
async fn phases_that_answer() {
    type Case = (&'static str, Route, &'static str, u16, &'static str, usize);
    let cases: Vec<Case> = vec![
        ("plain request", route(), "/a", 200, "-", 1),
        (
            "no route matches",
            Route {
                matches: vec![crate::engine::route::RouteMatch {
                    path: Some(crate::engine::route::PathMatch::Exact("/only".into())),
                    ..Default::default()
                }],
                ..route()
            },
            "/other",
            404,
            "NR",
            0,
        ),
        (
            "injected abort",
            Route {
                fault: Some(Fault {
                    delay: None,
                    abort: Some((100.0, 418)),
                }),
                ..route()
            },
            "/a",
            418,
            "FI",
            0,
        ),
        (
            "redirect",
            Route {
                redirect: Some(Redirect {
                    scheme: Some("https".into()),
                    host: None,
                    port: None,
                    path: Some("/new".into()),
                    status: 301,
                }),
                ..route()
            },
            "/a?x=1",
            301,
            "-",
            0,
        ),
        (
            "no such cluster",
            Route {
                backends: vec![Backend {
                    service: "missing".into(),
                    weight: 1,
                }],
                ..route()
            },
            "/a",
            503,
            "UH",
            0,
        ),
        (
            "a rewrite that cannot be built is the proxy's fault",
            Route {
                rewrite: Some(Rewrite {
                    full_path: Some("/bad path".into()),
                    ..Rewrite::default()
                }),
                ..route()
            },
            "/a",
            500,
            "-",
            0,
        ),
        (
            "a delay is kept when the upstream then fails",
            Route {
                fault: Some(Fault {
                    delay: Some((100.0, Duration::from_millis(1))),
                    abort: None,
                }),
                ..route()
            },
            "/fail",
            503,
            "UF,DI",
            1,
        ),
    ];
    for (what, route, path, status, flag, tries) in cases {
        let answers = if path == "/fail" {
            vec![Answer::ConnectError]
        } else {
            vec![Answer::Status(200)]
        };
        let transport = Scripted::answering(&answers);
        let engine = engine(config_with(route, A), &transport);
        let response = engine.handle(get(path)).await;
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(flags(&engine), [flag], "{what}");
        assert_eq!(transport.seen().len(), tries, "{what}");
        if status == 301 {
            assert_eq!(
                response.headers()["location"],
                "https://shop.example/new?x=1",
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn receive_refuses_hosts_that_disagree_and_strips_internal_headers() {
    let transport = Scripted::answering(&[]);
    let mut config = config_with(route(), A);
    config.internal_headers = vec![http::HeaderName::from_static("x-weft-tier")];
    let engine = engine(config, &transport);
    let mismatched = Request::builder()
        .uri("http://other.example/a")
        .header("host", "shop.example")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(engine.handle(mismatched).await.status(), 400);
    assert_eq!(flags(&engine), ["DPE"]);
    let forged = Request::builder()
        .uri("/a")
        .header("host", "shop.example")
        .header("x-weft-tier", "gold")
        .header("connection", "close")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (_, mut parts, settled) = engine.receive(
        &engine.current(),
        None,
        forged.map(crate::engine::upstream::boxed),
    );
    assert!(settled.is_ok());
    assert!(!parts.headers().contains_key("x-weft-tier"));
    assert!(!parts.headers().contains_key("connection"));
    assert_eq!(
        parts.headers_mut().remove("host").expect("host"),
        "shop.example"
    );
}

#[tokio::test]
async fn route_phase_refuses_targets_it_does_not_serve() {
    let transport = Scripted::answering(&[]);
    let engine = engine(config_with(route(), A), &transport);
    let response = engine.handle_for(Some("shop/unknown:80"), get("/a")).await;
    assert_eq!(response.status(), 404);
    assert_eq!(flags(&engine), ["NR"]);
}

#[tokio::test]
async fn authenticate_and_authorize_refuse() {
    use crate::policy::jwt::{Authenticator, JwtRule, KeySource};
    let transport = Scripted::answering(&[]);
    let mut config = config_with(route(), A);
    config.authn.insert(
        String::new(),
        Arc::new(Authenticator::new(vec![JwtRule {
            issuer: "https://issuer.example".into(),
            audiences: Vec::new(),
            keys: KeySource::inline(&serde_json::json!({"keys": []})),
            locations: Vec::new(),
            forward_original_token: false,
            claim_to_headers: Vec::new(),
        }])),
    );
    let deny = weft_core::l7::L7Authz {
        policy: "shop/no-admin".into(),
        action: weft_core::l7::AuthzAction::Deny,
        dry_run: false,
        rules: vec![weft_core::l7::L7AuthzRule {
            to: vec![weft_core::l7::L7Operation {
                paths: vec!["/admin*".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        provider: None,
    };
    config.authz.insert(String::new(), Arc::new(vec![deny]));
    let engine = engine(config, &transport);
    // (what, path, bearer token, status)
    let cases = [
        ("no token, allowed path", "/a", None, 200),
        ("bad token", "/a", Some("not.a.token"), 401),
        ("no token, denied path", "/admin/x", None, 403),
    ];
    for (what, path, token, status) in cases {
        let mut request = get(path);
        if let Some(t) = token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        assert_eq!(
            engine.handle(request).await.status().as_u16(),
            status,
            "{what}"
        );
    }
    let mut seen = flags(&engine);
    seen.sort();
    assert_eq!(seen, ["-", "-", "RBAC"], "401 carries no flag, 403 RBAC");
    assert_eq!(
        transport.seen().len(),
        1,
        "refused requests never go upstream"
    );
}

#[tokio::test]
async fn rate_limit_refuses_with_headers() {
    let transport = Scripted::answering(&[]);
    let mut config = config_with(route(), A);
    config.limits.insert(
        String::new(),
        Arc::new(RateLimiter {
            policy: "shop/one-per-minute".into(),
            rules: vec![Rule {
                name: "all".into(),
                when: Vec::new(),
                count_by: Vec::new(),
                requests: 1,
                period: Duration::from_secs(60),
                burst: 1,
            }],
            store: Store::Local(LocalCounts::default()),
            signature: 0,
        }),
    );
    let engine = engine(config, &transport);
    let first = engine.handle(get("/a")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-remaining"], "0");
    let second = engine.handle(get("/a")).await;
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));
    let mut seen = flags(&engine);
    seen.sort();
    assert_eq!(seen, ["-", "RL"]);
}

#[tokio::test]
async fn balance_overflows_at_the_breaker() {
    let transport = Scripted::answering(&[]);
    let mut cluster = Cluster::new("c", vec![addr(A)]);
    cluster.breaker = Breaker::new(0, 0);
    let engine = engine(config_of(route(), cluster), &transport);
    assert_eq!(engine.handle(get("/a")).await.status(), 503);
    assert_eq!(flags(&engine), ["UO"]);
    assert!(transport.seen().is_empty());
}

#[tokio::test]
async fn rewrite_reaches_the_upstream() {
    let transport = Scripted::answering(&[]);
    let rewritten = Route {
        rewrite: Some(Rewrite {
            prefix: Some(("/api".into(), "/v2".into())),
            full_path: None,
            host: Some("backend.internal".into()),
        }),
        ..route()
    };
    let engine = engine(config_with(rewritten, A), &transport);
    assert_eq!(engine.handle(get("/api/items?id=7")).await.status(), 200);
    assert_eq!(
        transport.seen(),
        [(
            addr(A),
            "/v2/items?id=7".to_owned(),
            Some("backend.internal".to_owned())
        )]
    );
}

#[tokio::test]
async fn local_answers_to_grpc_callers_are_grpc_statuses() {
    let transport = Scripted::answering(&[]);
    let engine = engine(
        config_with(
            Route {
                fault: Some(Fault {
                    delay: None,
                    abort: Some((100.0, 503)),
                }),
                ..route()
            },
            A,
        ),
        &transport,
    );
    let mut request = get("/pkg.Svc/Call");
    request
        .headers_mut()
        .insert("content-type", "application/grpc".parse().expect("header"));
    let response = engine.handle(request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "14");
    let body = response.into_body().collect().await.expect("body");
    assert!(body.to_bytes().is_empty());
}

#[test]
fn phase_order_is_documented_once() {
    // The engine's documentation is the one list; the crate map points to
    // it rather than repeating it.
    let lib = include_str!("../../lib.rs");
    assert!(lib.contains("the list is in [`engine`]'s documentation"));
    let doc = include_str!("../mod.rs");
    let order = [
        "`receive`",
        "`route`",
        "`authenticate`",
        "`authorize`",
        "`rate_limit`",
        "`fault`",
        "`redirect`",
        "`balance`",
        "`rewrite`",
        "`buffer`",
        "`mirror`",
        "`try`",
        "`respond`",
        "`log`",
    ];
    let positions: Vec<usize> = order
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let item = format!("{}. {p}", i + 1);
            doc.find(&item).unwrap_or_else(|| panic!("{item} missing"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
}

/// `receive` normalizes the path before policy: a DENY on `/partner/*`
/// holds against the path written differently, under the mode that
/// covers it, and the upstream gets the normalized path.
#[tokio::test]
async fn paths_are_normalized_before_policy() {
    use crate::engine::path::PathNormalization::{Base, DecodeAndMergeSlashes, MergeSlashes};
    let deny_partner = weft_core::l7::L7Authz {
        policy: "shop/partner-only-with-key".into(),
        action: weft_core::l7::AuthzAction::Deny,
        dry_run: false,
        rules: vec![weft_core::l7::L7AuthzRule {
            to: vec![weft_core::l7::L7Operation {
                paths: vec!["/partner/*".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        provider: None,
    };
    // (path, mode, status)
    let cases = [
        ("/partner/x", Base, 403),
        ("/x/../partner/x", Base, 403),
        ("/%70artner/x", Base, 403),
        ("/./partner/x", Base, 403),
        ("//partner/x", MergeSlashes, 403),
        ("/partner%2Fx", DecodeAndMergeSlashes, 403),
        ("/partner%2fx", DecodeAndMergeSlashes, 403),
        ("/partner/x%zz", Base, 400),
        ("/public/%2e%2e/partner/x", Base, 403),
        ("/public/x", Base, 200),
    ];
    for (path, mode, status) in cases {
        let transport = Scripted::answering(&[]);
        let mut config = config_with(route(), A);
        config.path_normalization = mode;
        config
            .authz
            .insert(String::new(), Arc::new(vec![deny_partner.clone()]));
        let engine = engine(config, &transport);
        let got = engine.handle(get(path)).await.status().as_u16();
        assert_eq!(got, status, "{path} under {mode:?}");
    }
    // What the upstream receives is the normalized path, query kept.
    let transport = Scripted::answering(&[]);
    let engine = engine(config_with(route(), A), &transport);
    assert_eq!(
        engine.handle(get("/a/./b/../%63?q=%2e")).await.status(),
        200
    );
    assert_eq!(transport.seen()[0].1, "/a/c?q=%2e");
}
