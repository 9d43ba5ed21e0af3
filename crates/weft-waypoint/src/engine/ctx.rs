//! Per-request state: what the fronts put in a request's extensions (who
//! sent it, over what), and [`Ctx`], what the phases learn as they run.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::policy::ratelimit::Decision;
use crate::telemetry::RequestRecord;

/// The downstream peer's address, put in request extensions by the front.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The caller's identity, put in request extensions by an mTLS front.
#[derive(Debug, Clone)]
pub struct SourceIdentity(pub weft_core::Identity);

/// The caller as its node described it (`baggage` on the tunnel), put in
/// request extensions by the waypoint's HBONE front.
#[derive(Debug, Clone)]
pub struct SourcePeer(pub std::sync::Arc<weft_telemetry::labels::Peer>);

/// A gateway client's certificate principal (its first URI SAN without
/// `spiffe://`, else its first DNS SAN, else its subject), put in request
/// extensions by a TLS front that checked the certificate.
#[derive(Debug, Clone)]
pub struct ClientPrincipal(pub String);

/// Marks a request that arrived over TLS (a gateway's HTTPS listener).
#[derive(Debug, Clone, Copy)]
pub struct Tls;

/// What the phases learn about one request. Plain data: a phase reads and
/// fills it, the `log` phase emits its [`RequestRecord`].
#[derive(Debug)]
pub struct Ctx {
    /// The target the request was received for (a waypoint's
    /// `namespace/hostname:port`, a gateway's `gateway/<listener>`);
    /// `None`: a plain front's routes.
    pub target: Option<String>,
    /// Whether the caller speaks gRPC (local answers become gRPC
    /// statuses).
    pub grpc: bool,
    /// The verified JWT's claims, once `authenticate` found one.
    pub claims: Option<HashMap<String, String>>,
    /// The rate limit decision that let the request through, for the
    /// `x-ratelimit-*` response headers.
    pub limit: Option<Decision>,
    /// What telemetry reports about the request.
    pub record: RequestRecord,
}

impl Ctx {
    /// The key of the target's policies (`""` for a plain front's).
    pub fn policy_key(&self) -> &str {
        self.target.as_deref().unwrap_or("")
    }
}
