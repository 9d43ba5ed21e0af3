//! L7 telemetry: Istio's request metrics and weft's resilience counters
//! ([`metrics`]), Envoy-format access log lines ([`access`]) and spans,
//! all emitted in one place ([`metrics::Metrics::request`]) from the
//! record of a finished request; a request's series are found by one
//! lookup ([`series`]). Nothing here knows the engine.

pub mod access;
pub mod extensions;
pub mod metrics;
pub mod record;
pub mod series;

pub use record::{RequestRecord, RequestTrace};
