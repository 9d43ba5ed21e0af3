//! # weft-core
//!
//! The vocabulary every other weft crate shares: SPIFFE workload identities
//! ([`Identity`]), the internal service/workload model that proxies consume as
//! an immutable [`model::Snapshot`], Kubernetes-style name rules
//! ([`names`]), duration parsing ([`duration`]) and the `failoverPriority`
//! rank of an endpoint ([`failover`]).
//!
//! Nothing here does I/O. The configuration framework (`weft-config`) builds
//! these values from YAML; the proxies only read them.

#![forbid(unsafe_code)]

pub mod attach;
pub mod duration;
pub mod extension;
pub mod failover;
pub mod identity;
pub mod l7;
pub mod locality;
pub mod model;
pub mod names;
pub mod topology;

pub use identity::{Identity, IdentityError};
