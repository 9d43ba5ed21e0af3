//! Admission policy: what decides whether a request may proceed, each
//! behind a small interface the engine calls in its `authenticate`,
//! `authorize` and `rate_limit` phases. Nothing here knows the engine.
//!
//! - [`jwt`]: verify a request's JWT against its issuers' keys, inline or
//!   fetched ([`jwks`]); claims copied to headers.
//! - [`authz`]: request-level `AuthorizationPolicy` (ALLOW, DENY, CUSTOM,
//!   AUDIT) as a pure decision.
//! - [`extauthz`]: CUSTOM providers — Envoy ext_authz over gRPC or HTTP,
//!   built-in API keys.
//! - [`ratelimit`]: GCRA token buckets, local or in Redis, or the
//!   decisions of a service speaking Envoy's RLS API.

pub mod authz;
pub mod extauthz;
pub mod jwks;
pub mod jwt;
pub mod ratelimit;
