//! # weft-telemetry
//!
//! What every weft proxy and the control plane agree on about telemetry,
//! in one place so they cannot drift:
//!
//! - [`flags`]: Envoy's response flags as a typed set;
//! - [`labels`]: Istio's standard metric label sets (`istio_tcp_*`,
//!   `istio_requests_total` and friends) and the one function per family
//!   that fills them from a reporter, the two peers and the service;
//! - [`names`]: the names of the metric families, for producers and
//!   readers alike;
//! - [`promtext`]: a tolerant parser of the Prometheus text format, for
//!   the control plane's aggregation (garbage is an error, never a panic);
//! - [`graph`]: the service graph — who calls whom, how often, how well —
//!   computed from two scrapes of every proxy, as a pure function;
//! - [`trace`]: trace context (W3C, B3), sampling, spans and their OTLP
//!   export.

#![forbid(unsafe_code)]

pub mod flags;
pub mod graph;
pub mod labels;
pub mod names;
pub mod promtext;
pub mod trace;
