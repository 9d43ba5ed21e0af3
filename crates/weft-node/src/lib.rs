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
//! Captured mode ([`capture`], [`netns`]): `weft run` puts a workload in
//! its own network namespace with nftables rules that redirect its
//! outbound TCP to port 15001 and inbound plaintext to 15006; the proxy
//! opens those listeners, and HBONE on 15008, inside the namespace, and
//! routes by the original destination ([`route::decide_original`]).
//! Plaintext is accepted only for `PERMISSIVE` workloads.

#![forbid(unsafe_code)]

pub mod authz;
pub mod capture;
pub mod netns;
pub mod proxy;
pub mod revocable;
pub mod route;
pub mod socks;
pub mod telemetry;
pub mod view;
pub mod waypoint_guard;

pub use proxy::{NodeOptions, NodeProxy, start};
