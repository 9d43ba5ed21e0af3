//! The mesh as a weft proxy sees it.
//!
//! Every proxy — the L4 node, waypoints, gateways — receives the same
//! config stream (`weft-xds`) and needs the same answers from it: which
//! workload has this address, which service has this VIP or host name,
//! which endpoints a service has and where they run, which authorization
//! policies apply to a workload, and which explicit listeners a local
//! workload asked for. This crate decodes the stream's resources once per
//! change into a [`MeshView`] with typed keys ([`NamespacedName`] for
//! services, workloads and policies, [`Locality`] for where things run),
//! so no proxy re-splits `"namespace/name"` strings.
//!
//! - [`workload`]: the decoded records ([`WorkloadInfo`], [`ServiceInfo`],
//!   [`Listener`]).
//! - [`view`]: the [`MeshView`] itself, how it is built from the client
//!   state, and its lookups.
//!
//! The view is an immutable snapshot: proxies keep it behind an `ArcSwap`
//! and a connection or request works on the one it loaded.

pub mod view;
pub mod workload;

pub use view::MeshView;
pub use weft_core::model::{Locality, NamespacedName};
pub use workload::{Listener, Reach, ServiceInfo, WorkloadInfo};
