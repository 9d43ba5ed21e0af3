//! Kubernetes service-account tokens, checked by the API server: a
//! `TokenReview` (`authentication.k8s.io/v1`) for the audiences weft
//! accepts (`istio-ca` by default, what Istio's agents and ztunnel ask
//! for), answering who the token belongs to and the node of the pod it is
//! bound to. The certificate service decides what that caller may have
//! (`weft_ca::review`).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use weft_ca::review::{NODE_NAME_EXTRA, ReviewedToken, TokenReviewer};

/// The audience Istio's agents request for the certificate service.
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";

/// Reviews tokens with the cluster's API server.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: Client,
    audiences: Vec<String>,
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
        KubeTokenReviewer { client, audiences }
    }
}

#[tonic::async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str) -> Result<ReviewedToken, String> {
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
        let user = status.user.unwrap_or_default();
        Ok(ReviewedToken {
            username: user.username.unwrap_or_default(),
            node: user
                .extra
                .and_then(|e| e.get(NODE_NAME_EXTRA).and_then(|v| v.first().cloned())),
        })
    }
}
