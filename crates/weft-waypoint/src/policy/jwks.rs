//! Issuer keys fetched from a `jwksUri`: one cached key set per address,
//! shared by every rule and configuration that names it, fetched when
//! first named, refreshed every [`REFRESH`], and fetched again when a
//! token names a `kid` the cache does not hold — at most once per
//! [`MIN_REFETCH`], so a stream of tokens with made-up key ids cannot
//! turn the waypoint into a load generator against the issuer.
//!
//! A fetch is bounded in time (the rule's timeout) and size
//! ([`MAX_JWKS_BYTES`]); a failed fetch keeps the keys already held (none
//! at first, so tokens of that issuer are refused with 401 until a fetch
//! succeeds) and is logged with the address and the reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::Jwk;
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;

/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// How often held keys are fetched again (Istio's default interval).
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// Least time between two fetches caused by unknown key ids.
pub const MIN_REFETCH: Duration = Duration::from_secs(1);

/// Decoded keys with their ids.
pub type Keys = Vec<(Option<String>, DecodingKey)>;

/// The usable keys of a JWKS document: keys that do not parse or decode
/// (an unsupported type, a missing field) are skipped, so one odd key
/// does not hide the others.
pub fn decode(document: &serde_json::Value) -> Keys {
    document["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| {
            let jwk: Jwk = serde_json::from_value(k.clone()).ok()?;
            Some((jwk.common.key_id.clone(), DecodingKey::from_jwk(&jwk).ok()?))
        })
        .collect()
}

/// Why a fetch failed, for the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The address is not a usable URL.
    #[error("{0} is not an http(s) URL with a host")]
    Url(String),
    /// TCP or TLS failed.
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    /// The HTTP exchange failed.
    #[error("fetching {0}: {1}")]
    Http(String, String),
    /// Not a 2xx answer.
    #[error("{0} answered {1}")]
    Status(String, u16),
    /// Larger than [`MAX_JWKS_BYTES`].
    #[error("{0} sent more than {MAX_JWKS_BYTES} bytes; not a JWKS this waypoint accepts")]
    TooLarge(String),
    /// Not a JWKS.
    #[error("{0} did not send a JWKS: {1}")]
    NotJwks(String, String),
    /// Took longer than the rule's timeout.
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
}

/// Why keys are being fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// First use or the periodic refresh.
    Scheduled,
    /// A token named a key id the cache does not hold (rate-limited).
    UnknownKid,
}

/// One address's keys.
pub struct RemoteKeys {
    uri: String,
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
    keys: ArcSwap<Keys>,
    /// When the last fetch finished; the lock serialises fetches.
    last: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteKeys({})", self.uri)
    }
}

impl RemoteKeys {
    /// The keys held now.
    pub fn current(&self) -> Arc<Keys> {
        self.keys.load_full()
    }

    /// Fetches made so far (successful or not).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches the keys again (unless `reason` is an unknown kid and the
    /// last fetch was less than [`MIN_REFETCH`] ago, or another caller's
    /// fetch finished while this one waited) and returns what is held.
    pub async fn refresh(&self, reason: Reason) -> Arc<Keys> {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        let fetched_meanwhile = last.is_some_and(|t| t >= asked);
        let recent = last.is_some_and(|t| t.elapsed() < MIN_REFETCH);
        if fetched_meanwhile || (reason == Reason::UnknownKid && recent) {
            return self.current();
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.timeout, fetch(&self.uri, &self.tls)).await {
            Ok(Ok(keys)) => {
                tracing::info!(uri = %self.uri, keys = keys.len(), ?reason, "fetched JWKS");
                self.keys.store(Arc::new(keys));
            }
            Ok(Err(e)) => {
                tracing::warn!(uri = %self.uri, error = %e, "JWKS fetch failed; keeping the keys held")
            }
            Err(_) => tracing::warn!(
                uri = %self.uri,
                error = %JwksError::Timeout(self.uri.clone(), self.timeout),
                "JWKS fetch failed; keeping the keys held"
            ),
        }
        *last = Some(Instant::now());
        self.current()
    }
}

/// The shared cache of fetched key sets, by address. Clones share it.
/// Cheap to make: the TLS client (the system's roots read from disk) is
/// built when a first address is asked for.
#[derive(Clone, Default)]
pub struct Fetcher {
    extra_roots: Arc<Vec<CertificateDer<'static>>>,
    tls: Arc<std::sync::OnceLock<Arc<rustls::ClientConfig>>>,
    held: Arc<Mutex<HashMap<String, Weak<RemoteKeys>>>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher trusting the system's roots and `extra_roots` (an
    /// issuer with a private CA).
    pub fn new(extra_roots: &[CertificateDer<'static>]) -> Self {
        Fetcher {
            extra_roots: Arc::new(extra_roots.to_vec()),
            ..Fetcher::default()
        }
    }

    /// The TLS client configuration, built on first use.
    fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls
            .get_or_init(|| crate::fetch::client_tls(&self.extra_roots))
            .clone()
    }

    /// The key set for `uri`: the one already held, or a new one whose
    /// first fetch and periodic refresh start now (the refresh stops when
    /// no configuration names the address any more).
    pub fn keys(&self, uri: &str, timeout: Duration) -> Arc<RemoteKeys> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(keys) = held.get(uri).and_then(Weak::upgrade) {
            return keys;
        }
        held.retain(|_, w| w.strong_count() > 0);
        let keys = Arc::new(RemoteKeys {
            uri: uri.to_owned(),
            timeout,
            tls: self.tls(),
            keys: ArcSwap::from_pointee(Vec::new()),
            last: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        });
        held.insert(uri.to_owned(), Arc::downgrade(&keys));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&keys);
            runtime.spawn(async move {
                loop {
                    let Some(keys) = weak.upgrade() else { return };
                    keys.refresh(Reason::Scheduled).await;
                    drop(keys);
                    tokio::time::sleep(REFRESH).await;
                }
            });
        }
        keys
    }
}

/// One GET of a JWKS.
async fn fetch(uri: &str, tls: &Arc<rustls::ClientConfig>) -> Result<Keys, JwksError> {
    use crate::fetch::FetchError as F;
    let (body, _) = crate::fetch::get(uri, tls, "application/json", MAX_JWKS_BYTES)
        .await
        .map_err(|e| match e {
            F::Url(u) => JwksError::Url(u),
            F::Connect(u, e) => JwksError::Connect(u, e),
            F::Status(u, s) => JwksError::Status(u, s),
            F::TooLarge(u, _) => JwksError::TooLarge(u),
            F::Http(u, e) => JwksError::Http(u, e),
        })?;
    let document: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| JwksError::NotJwks(uri.to_owned(), e.to_string()))?;
    let keys = decode(&document);
    if keys.is_empty() {
        return Err(JwksError::NotJwks(
            uri.to_owned(),
            "no usable key in \"keys\"".into(),
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP server answering every request with `body`.
    async fn serve(body: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/keys", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(body.as_bytes()).await;
                });
            }
        });
        url
    }

    fn tls() -> Arc<rustls::ClientConfig> {
        Fetcher::default().tls()
    }

    #[test]
    fn odd_keys_are_skipped() {
        let document = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "no-modulus"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]});
        let keys = decode(&document);
        let kids: Vec<_> = keys.iter().filter_map(|(k, _)| k.as_deref()).collect();
        assert!(
            kids.contains(&"ed") && !kids.contains(&"no-modulus"),
            "{kids:?}"
        );
        assert!(decode(&serde_json::json!({"nokeys": 1})).is_empty());
    }

    #[tokio::test]
    async fn bad_answers_are_clear_errors() {
        let huge = format!(
            "{{\"keys\": [], \"pad\": \"{}\"}}",
            "x".repeat(MAX_JWKS_BYTES)
        );
        let cases = [
            (serve(huge).await, "more than"),
            (serve("<html>".into()).await, "did not send a JWKS"),
            (serve("{\"keys\": []}".into()).await, "no usable key"),
            ("ftp://example/keys".to_owned(), "not an http(s) URL"),
        ];
        for (url, want) in cases {
            let err = fetch(&url, &tls()).await.expect_err(&url);
            assert!(err.to_string().contains(want), "{url}: {err}");
        }
        // Nothing listening: a connect error; the keys held stay empty.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let fetcher = Fetcher::default();
        let keys = fetcher.keys(&format!("https://{closed}/keys"), Duration::from_secs(1));
        assert!(keys.refresh(Reason::Scheduled).await.is_empty());
        // The same address is one cache entry; unknown kids soon after a
        // fetch do not fetch again.
        let again = fetcher.keys(&format!("https://{closed}/keys"), Duration::from_secs(1));
        assert!(Arc::ptr_eq(&keys, &again));
        let before = keys.fetches();
        again.refresh(Reason::UnknownKid).await;
        assert_eq!(keys.fetches(), before, "rate-limited");
    }
}
