//! Request authentication (Istio `RequestAuthentication`): a JWT, when the
//! request carries one, must verify against a configured issuer's keys —
//! signature (RS256/384/512, PS256/384/512, ES256/384, EdDSA), issuer,
//! audience, expiry and not-before with [`LEEWAY`] of clock skew — or the
//! request is refused with 401. A request without a token passes; what it
//! may do is authorization's business (Istio's semantics). Verified claims
//! feed authorization and rate limits, and may be copied to headers.

use std::collections::HashMap;

use std::sync::Arc;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, Validation};

use crate::policy::jwks::{Keys, Reason, RemoteKeys};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY: u64 = 60;
/// Longest token accepted, in bytes (oversized tokens are refused).
pub const MAX_TOKEN: usize = 16 * 1024;

/// Where a token is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header, with a prefix to strip (`Authorization`, `Bearer `).
    Header(String, String),
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
}

/// One issuer's rule.
#[derive(Debug, Clone)]
pub struct JwtRule {
    /// `iss`.
    pub issuer: String,
    /// Accepted `aud` values (empty: any).
    pub audiences: Vec<String>,
    /// Its keys.
    pub keys: KeySource,
    /// Where to look (default: `Authorization: Bearer …`).
    pub locations: Vec<Location>,
    /// Keep the token on the forwarded request.
    pub forward_original_token: bool,
    /// (header, claim): copy a claim to a request header.
    pub claim_to_headers: Vec<(String, String)>,
}

/// Where a rule's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS given in the configuration (decoded once).
    Inline(Arc<Keys>),
    /// Fetched from the issuer's `jwksUri`, refreshed.
    Remote(Arc<RemoteKeys>),
}

impl KeySource {
    /// Keys from an inline JWKS document.
    pub fn inline(document: &serde_json::Value) -> Self {
        KeySource::Inline(Arc::new(crate::policy::jwks::decode(document)))
    }

    fn current(&self) -> Arc<Keys> {
        match self {
            KeySource::Inline(k) => k.clone(),
            KeySource::Remote(r) => r.current(),
        }
    }
}

/// What authentication established.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authenticated {
    /// `iss/sub` (Istio's request principal).
    pub principal: String,
    /// String-valued claims (numbers and booleans as text; arrays joined
    /// by commas).
    pub claims: HashMap<String, String>,
}

/// Why a token was refused (401), in the words Istio's proxies use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three dot-separated parts, or too large.
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    Malformed,
    /// No rule for its issuer.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// Signature, expiry, audience or the like.
    #[error("Jwt verification fails: {0}")]
    Invalid(String),
}

fn default_locations() -> Vec<Location> {
    vec![Location::Header("authorization".into(), "Bearer ".into())]
}

/// The token in `location`, if present.
fn find(location: &Location, headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    match location {
        Location::Header(name, prefix) => headers
            .get(name.as_str())?
            .to_str()
            .ok()?
            .strip_prefix(prefix.as_str())
            .map(str::to_owned),
        Location::Query(name) => query?
            .split('&')
            .find_map(|kv| kv.strip_prefix(name.as_str())?.strip_prefix('='))
            .map(str::to_owned),
        Location::Cookie(name) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.to_owned())
            }),
    }
}

/// The unverified `iss` of a token (only to pick the rule to verify with).
fn issuer_of(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

fn claim_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => {
            items.iter().map(claim_text).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// A service's authentication rules.
#[derive(Clone, Default)]
pub struct Authenticator {
    /// Rules by issuer.
    rules: Vec<JwtRule>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self.rules.iter().map(|r| r.issuer.as_str()).collect();
        write!(f, "Authenticator({issuers:?})")
    }
}

fn has_key(keys: &Keys, kid: Option<&String>) -> bool {
    keys.iter().any(|(k, _)| kid.is_none() || k.as_ref() == kid)
}

impl Authenticator {
    /// An authenticator for `rules`.
    pub fn new(rules: Vec<JwtRule>) -> Self {
        Authenticator { rules }
    }

    /// Verifies the request's token, if it has one: `Ok(None)` without a
    /// token, `Ok(Some(..))` verified (the token removed from `headers`
    /// unless forwarded, claims copied to headers), `Err` refused.
    pub async fn authenticate(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Authenticated>, JwtError> {
        // The first location of any rule that holds a token.
        let found = self.rules.iter().find_map(|rule| {
            let locations = if rule.locations.is_empty() {
                default_locations()
            } else {
                rule.locations.clone()
            };
            locations
                .into_iter()
                .find_map(|l| find(&l, headers, query).map(|t| (t, l)))
        });
        let Some((token, location)) = found else {
            return Ok(None);
        };
        if token.len() > MAX_TOKEN || token.split('.').count() != 3 {
            return Err(JwtError::Malformed);
        }
        let issuer = issuer_of(&token).ok_or(JwtError::Malformed)?;
        let rule = self
            .rules
            .iter()
            .find(|r| r.issuer == issuer)
            .ok_or(JwtError::UnknownIssuer)?;
        let header = jsonwebtoken::decode_header(&token).map_err(|_| JwtError::Malformed)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(JwtError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let mut keys = rule.keys.current();
        if let KeySource::Remote(remote) = &rule.keys
            && !has_key(&keys, header.kid.as_ref())
        {
            keys = remote.refresh(Reason::UnknownKid).await;
        }
        let candidates = keys
            .iter()
            .filter(|(kid, _)| header.kid.is_none() || *kid == header.kid);
        let mut last = "no key matches the token's kid".to_owned();
        for (_, key) in candidates {
            let mut validation = Validation::new(header.alg);
            validation.algorithms = vec![header.alg];
            validation.leeway = LEEWAY;
            validation.validate_nbf = true;
            validation.set_issuer(&[&rule.issuer]);
            if rule.audiences.is_empty() {
                validation.validate_aud = false;
            } else {
                validation.set_audience(&rule.audiences);
            }
            // With audiences configured a token must name one of them: a
            // token without `aud` is refused (as Istio does).
            if rule.audiences.is_empty() {
                validation.set_required_spec_claims(&["exp", "iss"]);
            } else {
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            }
            match jsonwebtoken::decode::<serde_json::Value>(&token, key, &validation) {
                Ok(data) => {
                    let claims: HashMap<String, String> = data
                        .claims
                        .as_object()
                        .map(|o| o.iter().map(|(k, v)| (k.clone(), claim_text(v))).collect())
                        .unwrap_or_default();
                    let sub = claims.get("sub").cloned().unwrap_or_default();
                    if !rule.forward_original_token
                        && let Location::Header(name, _) = &location
                    {
                        headers.remove(name.as_str());
                    }
                    for (header_name, claim) in &rule.claim_to_headers {
                        if let (Some(v), Ok(name)) = (
                            claims
                                .get(claim)
                                .and_then(|v| http::HeaderValue::from_str(v).ok()),
                            http::HeaderName::from_bytes(header_name.as_bytes()),
                        ) {
                            headers.insert(name, v);
                        }
                    }
                    return Ok(Some(Authenticated {
                        principal: format!("{}/{sub}", rule.issuer),
                        claims,
                    }));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(JwtError::Invalid(last))
    }
}

/// Algorithms accepted (all that `jsonwebtoken` verifies except HMAC:
/// shared secrets have no place in a JWKS of public keys).
pub const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};

    use super::*;

    struct Issuer {
        key: KeyPair,
        kid: String,
    }

    impl Issuer {
        fn new(kid: &str) -> Issuer {
            Issuer {
                key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key"),
                kid: kid.into(),
            }
        }

        fn jwk(&self) -> serde_json::Value {
            let raw = self.key.public_key_raw();
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            serde_json::json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                "kid": self.kid, "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
            })
        }

        fn token(&self, claims: serde_json::Value) -> String {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(self.kid.clone());
            let key = EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes()).expect("pem");
            encode(&header, &claims, &key).expect("sign")
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn rule(issuer: &Issuer) -> JwtRule {
        let keys = KeySource::inline(&serde_json::json!({"keys": [issuer.jwk()]}));
        JwtRule {
            issuer: "https://issuer.example".into(),
            audiences: vec!["b".into()],
            keys,
            locations: vec![],
            forward_original_token: false,
            claim_to_headers: vec![("x-tier".into(), "tier".into())],
        }
    }

    fn authenticator(issuer: &Issuer) -> Authenticator {
        Authenticator::new(vec![rule(issuer)])
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("value"),
        );
        h
    }

    #[tokio::test]
    async fn tokens_are_verified_or_refused() {
        let issuer = Issuer::new("k1");
        let forger = Issuer::new("k1");
        let auth = authenticator(&issuer);
        let good = serde_json::json!({
            "iss": "https://issuer.example", "sub": "alice", "aud": "b",
            "exp": now() + 600, "tier": "platinum",
        });
        // Valid: claims out, token removed, claim copied to a header.
        let mut h = bearer(&issuer.token(good.clone()));
        let who = auth
            .authenticate(&mut h, None)
            .await
            .expect("valid")
            .expect("token");
        assert_eq!(who.principal, "https://issuer.example/alice");
        assert_eq!(who.claims["tier"], "platinum");
        assert!(h.get("authorization").is_none());
        assert_eq!(
            h.get("x-tier").map(|v| v.as_bytes()),
            Some(&b"platinum"[..])
        );
        // No token: passes, unauthenticated.
        assert_eq!(
            auth.authenticate(&mut HeaderMap::new(), None).await,
            Ok(None)
        );
        // (what, token, expected error text)
        let mut expired = good.clone();
        expired["exp"] = serde_json::json!(now() - 3600);
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = serde_json::json!("c");
        let mut no_aud = good.clone();
        no_aud.as_object_mut().expect("claims").remove("aud");
        let mut other_issuer = good.clone();
        other_issuer["iss"] = serde_json::json!("https://elsewhere.example");
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let payload = b64(good.to_string().as_bytes());
        // Unsigned: `alg: none` and no signature.
        let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","kid":"k1"}"#));
        // Algorithm confusion: HMAC keyed with the issuer's public key,
        // which a verifier trusting the token's `alg` would accept.
        let mut hs256 = Header::new(Algorithm::HS256);
        hs256.kid = Some("k1".into());
        let confused =
            |secret: &[u8]| encode(&hs256, &good, &EncodingKey::from_secret(secret)).expect("hmac");
        let hmac_jwk = confused(issuer.jwk().to_string().as_bytes());
        let hmac_raw = confused(issuer.key.public_key_raw());
        let hmac_pem = confused(issuer.key.public_key_pem().as_bytes());
        let cases = [
            ("alg none", alg_none, "Header.Payload.Signature"),
            (
                "HS256 keyed with the JWK",
                hmac_jwk,
                "Jwt verification fails",
            ),
            (
                "HS256 keyed with the raw key",
                hmac_raw,
                "Jwt verification fails",
            ),
            (
                "HS256 keyed with the PEM key",
                hmac_pem,
                "Jwt verification fails",
            ),
            (
                "forged signature",
                forger.token(good.clone()),
                "Jwt verification fails",
            ),
            ("expired", issuer.token(expired), "Jwt verification fails"),
            (
                "wrong audience",
                issuer.token(wrong_aud),
                "Jwt verification fails",
            ),
            (
                "no audience although audiences are configured",
                issuer.token(no_aud),
                "Jwt verification fails",
            ),
            (
                "unknown issuer",
                issuer.token(other_issuer),
                "Jwt issuer is not configured",
            ),
            (
                "not a JWT",
                "abc.def".to_owned(),
                "Header.Payload.Signature",
            ),
            (
                "oversized",
                "a".repeat(MAX_TOKEN + 1),
                "Header.Payload.Signature",
            ),
        ];
        for (what, token, want) in cases {
            let err = auth
                .authenticate(&mut bearer(&token), None)
                .await
                .expect_err(what);
            assert!(err.to_string().contains(want), "{what}: {err}");
        }
    }

    #[tokio::test]
    async fn tokens_from_query_and_cookie() {
        let issuer = Issuer::new("k1");
        let mut only_query_and_cookie = rule(&issuer);
        only_query_and_cookie.locations = vec![
            Location::Query("token".into()),
            Location::Cookie("session".into()),
        ];
        let auth = Authenticator::new(vec![only_query_and_cookie]);
        let token = issuer.token(serde_json::json!({
            "iss": "https://issuer.example", "sub": "bob", "aud": ["a", "b"], "exp": now() + 60,
        }));
        let q = format!("x=1&token={token}");
        let who = auth
            .authenticate(&mut HeaderMap::new(), Some(&q))
            .await
            .expect("query")
            .expect("token");
        assert_eq!(who.claims["aud"], "a,b");
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            format!("a=1; session={token}").parse().expect("value"),
        );
        assert!(
            auth.authenticate(&mut h, None)
                .await
                .expect("cookie")
                .is_some()
        );
    }
}
