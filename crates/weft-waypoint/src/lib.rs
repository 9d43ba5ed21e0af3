//! # weft-waypoint
//!
//! weft's L7 proxy: what `weft waypoint` and `weft gateway` run. Four
//! rooms, each below the one before it, never the other way:
//!
//! - [`fronts`] receive traffic: the waypoint ([`fronts::waypoint`]: HBONE
//!   in from node proxies, one HTTP connection per tunnel, for the service
//!   the tunnel names), the ingress gateway ([`fronts::gateway`]: Gateway
//!   API listeners, TLS with SNI and client certificates), TCP/TLS
//!   passthrough ([`fronts::passthrough`]), a plain HTTP listener
//!   ([`fronts::http`]); connection admission ([`fronts::admission`]) and
//!   HBONE out to endpoints ([`fronts::hbone`]).
//! - [`configure`] turns what the config stream says ([`weft_state`]'s
//!   mesh view and the L7 policies) into the engine's [`Config`] snapshot.
//! - [`engine`] serves one request through named phases in one documented
//!   order (the list is in [`engine`]'s documentation and nowhere else):
//!   route selection, load balancing, retries within budgets, circuit
//!   breakers, answers it makes itself. It knows no listener, TLS or HBONE
//!   and is generic over the request body, so each phase has table tests.
//!   Every refusal is an [`engine::L7Error`] turned into a response in one
//!   place.
//! - [`policy`]: admission policy the engine asks — JWT and JWKS
//!   ([`policy::jwt`], [`policy::jwks`]), request authorization
//!   ([`policy::authz`]), external authorization ([`policy::extauthz`]),
//!   rate limits ([`policy::ratelimit`]).
//! - [`telemetry`]: metrics, access log and spans, emitted in one place
//!   from a finished request's record.

#![forbid(unsafe_code)]

pub mod configure;
pub mod engine;
pub mod extension;
pub mod fetch;
pub mod fronts;
pub mod policy;
pub mod telemetry;

pub use engine::{Cluster, Config, Engine};
pub use telemetry::metrics::Metrics;
