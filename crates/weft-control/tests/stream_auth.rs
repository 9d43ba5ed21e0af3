//! Who the config stream on 15012 takes a caller to be (in process, no
//! network): a reviewed service-account token proves an identity for
//! reading that identity's resources (a gateway's private keys) only
//! while a workload with it is in the mesh; anyone else with a valid
//! token reads what any proxy may, and without a token nothing.

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tonic::body::Body;
use tower::{Service, ServiceExt};
use weft_ca::authn::Authenticator;
use weft_ca::authz::BootstrapTokens;
use weft_ca::review::{ReviewedToken, TokenReviewer};
use weft_ca::service::PeerInfo;
use weft_control::stream_auth::Authenticated;
use weft_core::Identity;

const REGISTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: gateway-1, namespace: shop, annotations: {weft.dev/client-only: "true"}}
spec: {address: 127.0.1.10, serviceAccount: gateway, labels: {app: gateway, weft.dev/node: node-1}}
"#;

/// Vouches for `<namespace>.<name>` tokens as that service account.
struct Reviewer;

#[tonic::async_trait]
impl TokenReviewer for Reviewer {
    async fn review(&self, token: &str) -> Result<ReviewedToken, String> {
        let (ns, sa) = token.split_once('.').ok_or("unknown token")?;
        Ok(ReviewedToken {
            username: format!("system:serviceaccount:{ns}:{sa}"),
            node: None,
        })
    }
}

/// The identity the stream behind the check would see, or the refusal.
async fn seen_as(token: Option<&str>) -> Result<Option<Identity>, tonic::Code> {
    let config = weft_config::load_sources([(Path::new("registry.yaml"), REGISTRY)])
        .unwrap_or_else(|p| panic!("{p}"));
    let authn = Authenticator::new(
        Arc::new(ArcSwap::new(config.snapshot)),
        BootstrapTokens::default(),
    )
    .with_reviewer(
        Arc::new(Reviewer),
        ("weft-system".into(), "weft-node".into()),
    );
    let seen: Arc<Mutex<Option<Option<Identity>>>> = Arc::default();
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |request: http::Request<Body>| {
            let identity = request
                .extensions()
                .get::<PeerInfo>()
                .and_then(|p| p.identity.clone());
            *seen.lock().expect("lock") = Some(identity);
            async { Ok::<_, Infallible>(http::Response::new(Body::empty())) }
        })
    };
    let mut request = http::Request::new(Body::empty());
    request.extensions_mut().insert(PeerInfo {
        remote: "10.1.0.9:40000".parse().expect("addr"),
        identity: None,
    });
    if let Some(t) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    let mut service = Authenticated::new(inner, authn);
    let response = service
        .ready()
        .await
        .expect("ready")
        .call(request)
        .await
        .expect("infallible");
    let taken = seen.lock().expect("lock").take();
    match taken {
        Some(identity) => Ok(identity),
        None => Err(tonic::Status::from_header_map(response.headers())
            .map_or(tonic::Code::Ok, |s| s.code())),
    }
}

#[tokio::test]
async fn a_token_lends_an_identity_only_while_a_workload_has_it() {
    let gateway: Identity = "spiffe://cluster.local/ns/shop/sa/gateway"
        .parse()
        .expect("id");
    // The gateway's own token: its identity (it may read its keys).
    assert_eq!(seen_as(Some("shop.gateway")).await, Ok(Some(gateway)));
    // Another account of the same namespace, not in the mesh (a pod
    // outside it, or `kubectl create token --audience istio-ca`): served,
    // but as nobody in particular — never the namespace's gateway keys.
    assert_eq!(seen_as(Some("shop.outsider")).await, Ok(None));
    // No token, or one nobody vouches for: refused before the stream.
    assert_eq!(seen_as(None).await, Err(tonic::Code::Unauthenticated));
    assert_eq!(
        seen_as(Some("forged")).await,
        Err(tonic::Code::Unauthenticated)
    );
}
