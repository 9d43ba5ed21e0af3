//! Kubernetes service-account tokens, checked by the API server: a
//! `TokenReview` (`authentication.k8s.io/v1`) for the audiences weft
//! accepts (`istio-ca` by default, what Istio's agents and ztunnel ask
//! for), answering who the token belongs to and the node of the pod it is
//! bound to. The certificate service decides what that caller may have
//! (`weft_ca::review`).
//!
//! Port 15012 is reachable by every pod, and every call may carry a
//! token: answers are cached (a minute when accepted, five seconds when
//! not, by a hash of the token — never the token itself), and at most
//! [`CONCURRENT_REVIEWS`] reviews are in flight, so callers cannot make
//! the API server do unbounded work. The audiences the API server says
//! the token is for must include one weft asked about.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::Semaphore;
use weft_ca::review::{NODE_NAME_EXTRA, ReviewedToken, TokenReviewer};

/// The audience Istio's agents request for the certificate service.
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";
/// Reviews in flight at once; further callers wait.
pub const CONCURRENT_REVIEWS: usize = 16;
/// How long an accepted token's review is reused.
pub const ACCEPTED_FOR: Duration = Duration::from_secs(60);
/// How long a refused token's review is reused.
pub const REFUSED_FOR: Duration = Duration::from_secs(5);
/// Cached answers at most (the cache is emptied when full).
const CACHED: usize = 10_000;

type Answer = Result<ReviewedToken, String>;
/// Answers by the SHA-256 of the token, with when they expire.
type Cache = HashMap<[u8; 32], (Instant, Answer)>;

/// Reviews tokens with the cluster's API server.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: Client,
    audiences: Vec<String>,
    cache: Arc<Mutex<Cache>>,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTokenReviewer")
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl KubeTokenReviewer {
    /// A reviewer asking `client`'s API server, for tokens meant for one
    /// of `audiences`.
    pub fn new(client: Client, audiences: Vec<String>) -> Self {
        KubeTokenReviewer {
            client,
            audiences,
            cache: Arc::default(),
            in_flight: Arc::new(Semaphore::new(CONCURRENT_REVIEWS)),
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Answer> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, a)| a.clone())
    }

    async fn ask(&self, token: &str) -> Answer {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("the token review failed: {e}"))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(format!(
                "the API server does not vouch for the token: {}",
                status.error.unwrap_or_else(|| "not authenticated".into())
            ));
        }
        // An API server that does not check audiences says so by
        // answering none weft asked about.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.iter().any(|a| self.audiences.contains(a)) {
            return Err(format!(
                "the token is for {audiences:?}, not for {:?}",
                self.audiences
            ));
        }
        let user = status.user.unwrap_or_default();
        Ok(ReviewedToken {
            username: user.username.unwrap_or_default(),
            node: user
                .extra
                .and_then(|e| e.get(NODE_NAME_EXTRA).and_then(|v| v.first().cloned())),
        })
    }
}

#[tonic::async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str) -> Result<ReviewedToken, String> {
        let key: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()).into();
        if let Some(answer) = self.cached(&key) {
            return answer;
        }
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| "token reviews are shut down".to_owned())?;
        // Another caller may have asked while this one waited.
        if let Some(answer) = self.cached(&key) {
            return answer;
        }
        let answer = self.ask(token).await;
        // API errors are not cached: the next call asks again.
        let keep = match &answer {
            Ok(_) => Some(ACCEPTED_FOR),
            Err(e) if e.starts_with("the token review failed") => None,
            Err(_) => Some(REFUSED_FOR),
        };
        if let Some(keep) = keep {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHED {
                cache.clear();
            }
            cache.insert(key, (Instant::now() + keep, answer.clone()));
        }
        answer
    }
}
