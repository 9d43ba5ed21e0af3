//! # weft-waypoint
//!
//! weft's L7 engine: what `weft waypoint` and `weft gateway` run.
//! Requests pass through named phases ([`engine`]): normalize
//! ([`sanitize`]: one host, no hop-by-hop or weft-internal headers), route
//! ([`route::select`], a pure function over the route model every API
//! family is translated into), buffer for replay, upstream tries with
//! per-try and overall timeouts and retries ([`retry`]) bounded by retry
//! budgets ([`budget`]), on endpoints chosen by locality, outlier state
//! and least request ([`lb`]), then metrics and the access log
//! ([`metrics`]).
//! Listeners are pluggable fronts ([`front`]). Answers weft makes itself
//! reach gRPC callers as gRPC statuses ([`local_reply`]).
//!
//! [`proxy`] runs it as a waypoint: HBONE in from node proxies (one HTTP
//! connection per tunnel, for the service the tunnel names), HBONE out to
//! endpoints ([`hbone`]), configuration from the config stream.
//!
//! Rate limits ([`ratelimit`]) are GCRA token buckets, local or in Redis,
//! or decisions of an external service speaking Envoy's RLS API;
//! JWT authentication ([`jwt`]) verifies tokens against inline JWKS or
//! keys fetched from the issuer ([`jwks`]);
//! request-level authorization ([`authz`]) is a pure decision.
//!
//! External authorization for CUSTOM policies ([`extauthz`]: Envoy
//! ext_authz over gRPC or HTTP, built-in API keys); the ingress gateway
//! ([`gateway`]: Gateway API listeners, TLS with SNI and client
//! certificates); spans per request and per try when tracing is on
//! (`weft_telemetry::trace`).

#![forbid(unsafe_code)]

pub mod access;
pub mod admission;
pub mod authz;
pub mod budget;
pub mod config;
pub mod engine;
pub mod extauthz;
pub mod front;
pub mod gateway;
pub mod hbone;
pub mod jwks;
pub mod jwt;
pub mod lb;
pub mod local_reply;
pub mod metrics;
pub mod passthrough;
pub mod proxy;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod sanitize;
pub mod upstream;

pub use engine::{Cluster, Config, Engine};
pub use metrics::Metrics;
