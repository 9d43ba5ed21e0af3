//! Token reviews are bounded: the same token is reviewed once while its
//! answer is fresh, accepted or refused (port 15012 is open to every pod;
//! a caller repeating a token must not make the API server work each
//! time), and the answer carries who the token belongs to.

use weft_ca::review::TokenReviewer;
use weft_kube::tokens::{ISTIO_CA_AUDIENCE, KubeTokenReviewer};
use weft_kube_fake::FakeApiServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_accepted_or_refused() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.add_token(
        "agent-token",
        "system:serviceaccount:weft-system:weft-node",
        Some("node-1"),
    );
    let client = kube::Client::try_from(kube::Config::new(fake.url().parse().expect("url")))
        .expect("client");
    let reviewer = KubeTokenReviewer::new(client, vec![ISTIO_CA_AUDIENCE.into()]);
    for _ in 0..5 {
        let who = reviewer.review("agent-token").await.expect("vouched for");
        assert_eq!(who.username, "system:serviceaccount:weft-system:weft-node");
        assert_eq!(who.node.as_deref(), Some("node-1"));
    }
    assert_eq!(fake.token_reviews(), 1, "one review for five calls");
    for _ in 0..5 {
        let refused = reviewer.review("forged").await.expect_err("unknown token");
        assert!(refused.contains("does not vouch"), "{refused}");
    }
    assert_eq!(fake.token_reviews(), 2, "one review for five refusals");
}
