//! JWT authentication in the engine, with rate limits by claim: no token
//! passes (default tier), a forged, expired or wrong-audience token is 401,
//! a valid token's `tier` claim selects the platinum tier. Keys and tokens
//! are made here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use tokio::net::TcpListener;
use weft_waypoint::engine::route::{Backend, Route};
use weft_waypoint::policy::jwt::{Authenticator, JwtRule, KeySource};
use weft_waypoint::policy::ratelimit::{Attribute, RateLimiter, Rule, Store};
use weft_waypoint::{Cluster, Config, Engine, Metrics};

const ISSUER: &str = "https://issuer.example";

fn sign(key: &KeyPair, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let pem = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("pem");
    encode(&header, &claims, &pem).expect("sign")
}

fn jwks(key: &KeyPair) -> KeySource {
    let raw = key.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    KeySource::inline(&serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
    }]}))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// B (the sample app) behind an engine that verifies `key`'s tokens and
/// applies `limits` and `authz` to requests naming no target.
async fn engine_for_b(
    key: &KeyPair,
    limits: Option<RateLimiter>,
    authz: Vec<weft_core::l7::L7Authz>,
) -> (SocketAddr, Metrics) {
    let app = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let b = app.local_addr().expect("addr");
    tokio::spawn(weft_sample_app::serve_http(
        app,
        weft_sample_app::AppConfig::default(),
        std::future::pending(),
    ));
    let mut config = Config {
        routes: vec![Route {
            name: "b".into(),
            backends: vec![Backend {
                service: "b".into(),
                weight: 1,
            }],
            ..Route::default()
        }],
        clusters: HashMap::from([("b".to_owned(), Arc::new(Cluster::new("b", vec![b])))]),
        authn: HashMap::from([(
            String::new(),
            Arc::new(Authenticator::new(vec![JwtRule {
                issuer: ISSUER.into(),
                audiences: vec!["b".into()],
                keys: jwks(key),
                locations: vec![],
                forward_original_token: false,
                claim_to_headers: vec![],
            }])),
        )]),
        ..Config::default()
    };
    if let Some(l) = limits {
        config.limits.insert(String::new(), Arc::new(l));
    }
    if !authz.is_empty() {
        config.authz.insert(String::new(), Arc::new(authz));
    }
    let metrics = Metrics::default();
    let engine = Arc::new(Engine::new(config, metrics.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(weft_waypoint::fronts::http::serve_http(
        listener,
        engine,
        std::future::pending(),
    ));
    (addr, metrics)
}

/// One GET, with a bearer token if given: (status, body).
async fn call(addr: SocketAddr, token: Option<String>) -> (u16, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::get(format!("http://{addr}/"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = client
        .request(req.body(Empty::new()).expect("request"))
        .await
        .expect("response");
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_claims_pick_the_rate_limit_tier() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let forger = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let rule = |name: &str, when: Vec<(Attribute, String)>, requests| Rule {
        name: name.into(),
        when,
        count_by: vec![],
        requests,
        period: Duration::from_secs(3600),
        burst: requests,
    };
    let limiter = RateLimiter {
        policy: "tiers".into(),
        rules: vec![
            rule(
                "platinum",
                vec![(Attribute::Claim("tier".into()), "platinum".into())],
                3,
            ),
            rule("default", vec![], 2),
        ],
        store: Store::Local(weft_waypoint::policy::ratelimit::LocalCounts::default()),
        signature: 0,
    };
    let (addr, _) = engine_for_b(&key, Some(limiter), vec![]).await;
    let call = |token: Option<String>| async move { call(addr, token).await.0 };
    let claims = |aud: &str, exp: u64| serde_json::json!({"iss": ISSUER, "sub": "alice", "aud": aud, "exp": exp, "tier": "platinum"});
    // Refused tokens never reach the rate limit.
    assert_eq!(
        call(Some(sign(&forger, claims("b", now() + 600)))).await,
        401,
        "forged"
    );
    assert_eq!(
        call(Some(sign(&key, claims("b", now() - 3600)))).await,
        401,
        "expired"
    );
    assert_eq!(
        call(Some(sign(&key, claims("c", now() + 600)))).await,
        401,
        "wrong audience"
    );
    assert_eq!(call(Some("not.a.jwt".into())).await, 401, "malformed");
    // No token: the default tier (2).
    let anonymous: Vec<u16> = [call(None).await, call(None).await, call(None).await].into();
    assert_eq!(anonymous, [200, 200, 429]);
    // A valid platinum token: its own tier (3).
    let valid = sign(&key, claims("b", now() + 600));
    let mut platinum = Vec::new();
    for _ in 0..4 {
        platinum.push(call(Some(valid.clone())).await);
    }
    assert_eq!(platinum, [200, 200, 200, 429]);
}

/// Scenario 5's shape in the engine: B requires a JWT from its issuer with
/// a given claim. Missing → 403 by policy; forged → 401; valid without the
/// claim → 403; valid with it → 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_requires_a_verified_token_with_a_claim() {
    use weft_core::l7::{AuthzAction, L7Authz, L7AuthzRule, L7Condition, L7Source};
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let forger = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let policy = L7Authz {
        policy: "shop/b-needs-platinum".into(),
        action: AuthzAction::Allow,
        dry_run: false,
        provider: None,
        rules: vec![L7AuthzRule {
            from: vec![L7Source {
                request_principals: vec![format!("{ISSUER}/*")],
                ..L7Source::default()
            }],
            when: vec![L7Condition {
                key: "request.auth.claims[tier]".into(),
                values: vec!["platinum".into()],
                not_values: vec![],
            }],
            ..L7AuthzRule::default()
        }],
    };
    let (addr, metrics) = engine_for_b(&key, None, vec![policy]).await;
    let call = |token: Option<String>| call(addr, token);
    let claims = |tier: &str| serde_json::json!({"iss": ISSUER, "sub": "alice", "aud": "b", "exp": now() + 600, "tier": tier});
    let (status, body) = call(None).await;
    assert_eq!(
        (status, body.trim()),
        (403, "RBAC: access denied"),
        "missing token"
    );
    assert_eq!(
        call(Some(sign(&forger, claims("platinum")))).await.0,
        401,
        "forged"
    );
    assert_eq!(
        call(Some(sign(&key, claims("gold")))).await.0,
        403,
        "no claim"
    );
    assert_eq!(
        call(Some(sign(&key, claims("platinum")))).await.0,
        200,
        "valid"
    );
    let text = metrics.encode();
    assert!(
        text.lines()
            .any(|l| l.starts_with("weft_authz_decisions_total{")
                && l.contains("policy=\"shop/b-needs-platinum\"")
                && l.contains("decision=\"allowed\"")),
        "{text}"
    );
}
