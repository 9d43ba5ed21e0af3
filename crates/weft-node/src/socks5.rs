//! The SOCKS5 front: a listener on each local workload's address (port
//! 15080) for applications that cannot use an explicit listener. The
//! handshake's wire format is in [`socks`](crate::socks); a service by name
//! or VIP and a registry workload by address take the outbound path;
//! anything else may pass through in plaintext.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use weft_state::WorkloadInfo;

use crate::outbound::{Target as OutboundTarget, outbound, splice_plain};
use crate::shared::Shared;

/// The SOCKS5 port, on each local workload's address.
pub const SOCKS_PORT: u16 = 15080;

/// A SOCKS client on workload `w`'s address (inside its namespace when
/// `captured`): handshake, find the service, then the same path as an
/// outbound listener.
pub(crate) async fn socks_client(
    shared: Arc<Shared>,
    w: Arc<WorkloadInfo>,
    captured: bool,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    use crate::socks::{Target, handshake};
    let target = match handshake(&mut client).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(workload = %w.name, %peer, error = %e, "SOCKS handshake failed");
            return;
        }
    };
    let view = shared.view.load();
    // A service by name or VIP is load balanced; a workload of the registry
    // by address is reached over HBONE like a captured connection (its node
    // then applies its policies, waypoint included); anything else may
    // pass through.
    let to = match &target {
        Target::Host(host, port) => view
            .service_by_host(host)
            .map(|s| OutboundTarget::Service(s.clone(), *port)),
        Target::Addr(addr) => match view.services_by_vip.get(&addr.ip()) {
            Some(s) => Some(OutboundTarget::Service(s.clone(), addr.port())),
            None => view
                .by_ip
                .contains_key(&addr.ip())
                .then_some(OutboundTarget::Original(*addr)),
        },
    };
    drop(view);
    let Some(to) = to else {
        return passthrough(&shared, &w, captured, target, client).await;
    };
    outbound(shared, w, to, client, peer, true).await;
}

/// A SOCKS target outside the registry: an address passes through in
/// plaintext when the mesh allows it (`ALLOW_ANY`) and
/// [`check_passthrough`](crate::route::check_passthrough) does; hostnames
/// must be services (weft does no DNS on the caller's behalf).
async fn passthrough(
    shared: &Shared,
    w: &WorkloadInfo,
    captured: bool,
    target: crate::socks::Target,
    mut client: TcpStream,
) {
    use crate::socks::{Reply, Target, reply_bytes};
    let registry_only = shared.view.load().registry_only;
    let checked = match &target {
        Target::Addr(_) if registry_only => {
            Err("not a service in the registry (outbound policy REGISTRY_ONLY)".to_owned())
        }
        Target::Addr(addr) => crate::route::check_passthrough(*addr, captured).map(|()| *addr),
        Target::Host(..) => Err("hostname is not a service in the registry".to_owned()),
    };
    let addr = match checked {
        Ok(addr) => addr,
        Err(reason) => {
            tracing::info!(workload = %w.name, ?target, %reason, "SOCKS target refused");
            let _ = client.write_all(&reply_bytes(Reply::NotAllowed)).await;
            return;
        }
    };
    let upstream = tokio::time::timeout(shared.connect_timeout, TcpStream::connect(addr)).await;
    let Ok(Ok(upstream)) = upstream else {
        let _ = client.write_all(&reply_bytes(Reply::HostUnreachable)).await;
        return;
    };
    if client
        .write_all(&reply_bytes(Reply::Succeeded))
        .await
        .is_err()
    {
        return;
    }
    splice_plain(shared, w, addr, client, upstream).await;
}
