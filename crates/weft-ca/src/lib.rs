//! # weft-ca
//!
//! Zero-trust identity for weft: the certificate authority that signs
//! short-lived SPIFFE workload certificates ([`authority`]), the gRPC
//! certificate service wire-compatible with Istio's
//! `istio.v1.auth.IstioCertificateService` ([`service`], [`client`]), the rule
//! for who may ask for which identity ([`authz`]) and who is asking
//! ([`authn`]), the certificate manager
//! every proxy uses to obtain and rotate certificates with no one in the
//! loop ([`manager`]), and the rustls configurations that check SPIFFE
//! identities on both sides of a connection ([`tls`]).
//!
//! Secrets come from the OS CSPRNG and reach disk only through
//! [`secret::write_private`] (0600, atomic).
//!
//! Private keys are generated in the process that uses them, never leave
//! it, and never appear in `Debug` output, logs or errors.

#![forbid(unsafe_code)]

pub mod authn;
pub mod authority;
pub mod authz;
pub mod cert;
pub mod client;
pub mod manager;
pub mod proto;
pub mod review;
pub mod secret;
pub mod service;
pub mod tls;
pub mod workload;

pub use authority::{Authority, CaError, CaOptions};
pub use manager::{CaClient, CertManager, ManagerOptions};
pub use tls::TrustBundle;
pub use workload::{KeyAndCsr, WorkloadCert};
