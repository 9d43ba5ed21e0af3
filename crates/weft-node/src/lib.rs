//! # weft-node
//!
//! The L4 node proxy. It obtains certificates for the workloads on its
//! node, follows the config stream, and carries their TCP traffic in HBONE
//! tunnels: inbound on an HBONE listener at each local workload's address,
//! outbound from explicit listeners (local mode). Endpoint choice is a pure
//! function ([`route::decide`]): locality first, failover to the next
//! locality when local endpoints fail to connect, and back when they
//! recover.
//!
//! Apps that cannot use an explicit listener use SOCKS5 at their own
//! address, port 15080 ([`socks`]).
//!
//! Inbound tunnels to a service port whose service uses a waypoint must
//! come from that waypoint ([`waypoint_guard`]), then are checked against
//! L4 `AuthorizationPolicy` ([`authz`]); when policy changes, open connections are checked again
//! and newly denied ones closed ([`revocable`]).
//!
//! The proxy's rooms: [`proxy`] starts it (certificates, config stream,
//! admin) and drains it; `shared` is the state every part reads (the
//! [`weft_state::MeshView`] among it); `listeners` keeps each local
//! workload's listeners in step with the view; `inbound` accepts HBONE
//! tunnels (and captured plaintext) and checks them; `outbound` chooses an
//! endpoint and opens tunnels; `socks5` is the SOCKS5 front ([`socks`] its
//! wire format); [`telemetry`] counts connections.
//!
//! Captured mode ([`capture`], [`netns`]): `weft run` puts a workload in
//! its own network namespace with nftables rules that redirect its
//! outbound TCP to port 15001 and inbound plaintext to 15006; the proxy
//! opens those listeners, and HBONE on 15008, inside the namespace, and
//! routes by the original destination ([`route::decide_original`]).
//! Plaintext is accepted only for `PERMISSIVE` workloads.
//!
//! On Kubernetes ([`pods`]) the CNI plugin hands pods over instead, and an
//! agent started beside a running one takes over its listening sockets
//! (`handover`) so an upgrade refuses no connection.

#![forbid(unsafe_code)]

pub mod authz;
pub mod capture;
mod enroll;
mod handover;
mod inbound;
mod listeners;
pub mod netns;
mod outbound;
mod pod_policy;
pub mod pods;
pub mod proxy;
pub mod revocable;
pub mod route;
mod shared;
pub mod socks;
mod socks5;
pub mod telemetry;
pub mod waypoint_guard;

pub use listeners::{CAPTURE_PORT, PLAINTEXT_PORT};
pub use outbound::{ATTEMPTS, HALF_CLOSE_GRACE};
pub use proxy::{NodeError, NodeOptions, NodeProxy, start, start_with_pods};
pub use shared::FAILED_ENDPOINT_BACKOFF;
pub use socks5::SOCKS_PORT;
