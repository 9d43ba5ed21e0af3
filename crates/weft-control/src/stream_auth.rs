//! Who may open the config stream on the mTLS port (15012): the callers
//! the certificate service on the same port accepts — a client
//! certificate from this CA, a bootstrap token, or (on Kubernetes) a
//! service-account token the API server vouches for, as Istio's ztunnel
//! sends it (`authorization: Bearer …`). Anyone else is refused before
//! the stream opens. A workload proven by its token, while a workload
//! with that identity is in the mesh, is then treated as if its
//! certificate had proved it (it reads what that identity may, e.g. its
//! gateway's credentials); otherwise it reads what any proxy may.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use weft_ca::authn::Authenticator;
use weft_ca::authz::Caller;
use weft_ca::service::PeerInfo;

/// A gRPC service admitting only authenticated callers.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    authn: Authenticator,
}

impl<S> Authenticated<S> {
    /// `inner`, behind `authn`.
    pub fn new(inner: S, authn: Authenticator) -> Self {
        Authenticated { inner, authn }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

type Reply = http::Response<Body>;

impl<S> tower::Service<http::Request<Body>> for Authenticated<S>
where
    S: tower::Service<http::Request<Body>, Response = Reply, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The ready service goes with this call; a fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authn = self.authn.clone();
        Box::pin(async move {
            let metadata = MetadataMap::from_headers(request.headers().clone());
            let peer = request.extensions().get::<PeerInfo>().cloned();
            match authn.caller(peer.as_ref(), &metadata).await {
                Caller::Anonymous => Ok(Status::unauthenticated(
                    "the config stream on the mTLS port needs a client certificate from this control plane's CA, or a bearer token it accepts (a bootstrap token, or on Kubernetes a service-account token for the istio-ca audience)",
                )
                .into_http()),
                caller => {
                    // A token-proven identity reads what that identity
                    // may only while a workload has it.
                    if let (Caller::Workload(identity), Some(peer)) = (caller, peer)
                        && peer.identity.is_none()
                        && authn.in_mesh(&identity)
                    {
                        request.extensions_mut().insert(PeerInfo {
                            identity: Some(identity),
                            ..peer
                        });
                    }
                    inner.call(request).await
                }
            }
        })
    }
}
