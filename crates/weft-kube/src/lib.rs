//! # weft-kube
//!
//! weft control's Kubernetes source. Reflectors (kube-rs
//! `runtime::watcher`) keep the cluster's Namespaces, Nodes, Services and
//! Pods, and the objects of the kinds weft reads (Istio's networking and
//! security kinds, Gateway API's, weft's own, Secrets); every change turns
//! them into documents ([`convert`]) and loads them through the same
//! pipeline as a configuration directory (`weft-config`), so the same
//! checks, messages and snapshot come out. One bad object never blocks
//! the rest ([`isolate`]): it is set aside, its last good version kept,
//! and its problems reported. [`install`] prints the manifests that put
//! weft on a cluster; [`roots`] publishes the root certificate to every
//! namespace.
//!
//! Tests run against `weft-kube-fake`, a fake API server (no real one can
//! run where weft is built); the client is the real kube-rs.

#![forbid(unsafe_code)]

pub mod ca_secret;
pub mod capture;
pub mod convert;
pub mod deploy;
pub mod east_west;
pub mod enrollment;
pub mod install;
pub mod isolate;
pub mod labels;
pub mod leader;
mod pod_documents;
mod pods;
pub mod roots;
pub mod source;
pub mod status;
pub mod tokens;
