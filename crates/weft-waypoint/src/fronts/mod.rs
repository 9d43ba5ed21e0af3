//! The fronts: where traffic reaches an L7 proxy and how the proxy reaches
//! endpoints. They own listeners, TLS, HBONE and connection admission, and
//! hand each HTTP request to the [`Engine`](crate::engine::Engine).
//!
//! - [`setup`]: what the waypoint and the gateway set up alike
//!   (certificate, own workload, config stream over mTLS, engine, metrics)
//!   and [`setup::WaypointError`], why either did not start.
//! - [`waypoint`]: `weft waypoint` — HBONE in (one HTTP connection per
//!   tunnel, for the service the tunnel names).
//! - [`gateway`]: `weft gateway` — Gateway API listeners (HTTP, HTTPS with
//!   SNI and client certificates, TLS passthrough).
//! - [`passthrough`]: TCP/TLS passthrough by SNI.
//! - [`http`]: a plain HTTP listener (HTTP/1.1 and h2c).
//! - [`downstream`]: one downstream HTTP connection, HTTP/1.1 parked
//!   (no buffers held) while idle.
//! - [`admission`]: per-listener and per-source connection limits and
//!   deadlines.
//! - [`hbone`]: the connector that reaches endpoints over HBONE.

pub mod admission;
pub mod downstream;
pub mod east_west;
pub mod gateway;
pub mod hbone;
pub mod http;
pub mod passthrough;
pub mod setup;
pub mod waypoint;
