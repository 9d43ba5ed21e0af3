//! weft's Proxy-Wasm host: plugins written against the Proxy-Wasm ABI
//! (0.2.1, as Envoy runs them) compiled once on wasmtime ([`Plugin`],
//! checked for the exports the ABI needs and for imports this host does
//! not provide) and run one [`Instance`] at a time under a memory cap and
//! a CPU budget per callback (fuel), so a plugin that loops or traps
//! fails alone, with its name and the reason, never the proxy.
//!
//! - [`abi`]: the ABI's numbers and the header-pair wire format (pure);
//! - [`check`]: what a module must export and may import (pure: the
//!   control plane checks modules with it, without the runtime);
//! - [`plugin`]: the engine and compiling a module;
//! - [`host`]: the calls a plugin imports (`host_io.rs`: bodies, stream
//!   control, HTTP calls, shared data and queues), over one instance's
//!   [`state`] — the stream's [`Exchange`] with its header [`maps`] and
//!   [`properties`] (`memory.rs`: bytes across the sandbox; `wasi.rs`:
//!   the few WASI calls toolchains link in);
//! - [`instance`]: the plugin lifecycle and the stream callbacks.
//!
//! The crate is synchronous: the proxy (weft-waypoint's `extension`)
//! owns instances, carries out HTTP calls and drives ticks. The runtime
//! (wasmtime, most of the build time) is the default feature `runtime`;
//! without it only [`check`], [`abi`], [`maps`] and [`properties`] build.

#![cfg_attr(not(feature = "runtime"), allow(dead_code))]

pub mod abi;
pub mod check;
#[cfg(feature = "runtime")]
pub mod host;
#[cfg(feature = "runtime")]
mod host_io;
#[cfg(feature = "runtime")]
pub mod instance;
pub mod maps;
#[cfg(feature = "runtime")]
mod memory;
#[cfg(feature = "runtime")]
pub mod plugin;
pub mod properties;
pub mod state;
#[cfg(feature = "runtime")]
mod wasi;

pub use check::{ModuleInfo, check, sha256_hex};
#[cfg(feature = "runtime")]
pub use host_io::MAX_CALL_TIMEOUT;
#[cfg(feature = "runtime")]
pub use instance::{Context, Instance, Settings, Verdict};
pub use maps::{RequestHead, ResponseHead};
#[cfg(feature = "runtime")]
pub use plugin::{Limits, Plugin, Runtime};
pub use state::{
    Attributes, CallResponse, Exchange, Headers, HttpCall, LocalResponse, Metric, Shared, SharedRef,
};

/// What can go wrong with a plugin, naming it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WasmError {
    /// The engine could not be set up.
    #[error("the WebAssembly engine: {0}")]
    Engine(String),
    /// The module is not a plugin this host runs.
    #[error("plugin {plugin}: {reason}")]
    Invalid {
        /// Its name.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// It could not be instantiated, started or configured.
    #[error("plugin {plugin} did not start: {reason}")]
    Start {
        /// Its name.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// A callback trapped or ran out of its CPU budget.
    #[error("plugin {plugin} failed: {reason}")]
    Trap {
        /// Its name.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// The instance failed earlier and must be replaced.
    #[error("plugin {plugin} failed earlier ({reason}); start a new instance")]
    Failed {
        /// Its name.
        plugin: String,
        /// Why it failed then.
        reason: String,
    },
}
