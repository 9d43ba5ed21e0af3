//! Bearer tokens from untrusted callers at a gateway or waypoint, and JWKS
//! documents from issuers: the input is split into a JWKS document and a
//! token's header, payload and signature (each base64url-encoded, so the
//! JSON parsers behind them are reached), and tried raw as well.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use weft_waypoint::policy::jwt::{Authenticator, JwtRule, KeySource};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == 0xff);
    let jwks = parts.next().unwrap_or_default();
    let document = serde_json::from_slice(jwks).unwrap_or(serde_json::Value::Null);
    let authenticator = Authenticator::new(vec![JwtRule {
        issuer: "https://issuer.example".into(),
        audiences: vec!["weft".into()],
        keys: KeySource::inline(&document),
        locations: Vec::new(),
        forward_original_token: false,
        claim_to_headers: vec![("x-sub".into(), "sub".into())],
    }]);
    let encoded: Vec<String> = parts.map(|p| URL_SAFE_NO_PAD.encode(p)).collect();
    for token in [encoded.join("."), String::from_utf8_lossy(data).into_owned()] {
        let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
            continue;
        };
        let mut headers = HeaderMap::new();
        headers.insert("authorization", value);
        let _ = runtime().block_on(authenticator.authenticate(&mut headers, None));
    }
});
