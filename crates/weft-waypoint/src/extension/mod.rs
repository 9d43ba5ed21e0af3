//! Extensions the engine runs on requests, beside its own policy:
//! Proxy-Wasm plugins (Istio's `WasmPlugin`) on [`weft_wasm`]'s host, and
//! external processors (Envoy's `ext_proc`, weft's `ExtProcPolicy`).
//!
//! - [`modules`]: getting a plugin's module (file, HTTPS, OCI), checking
//!   and compiling it once, keeping the last good one;
//! - [`wasm`]: a loaded plugin ([`wasm::Filter`]) and its instances, one
//!   slot per worker, each holding many requests' contexts; ticks, queues
//!   and HTTP calls through the proxy's [`wasm::Dispatch`];
//! - [`stream`]: one request's pass through its target's plugins
//!   ([`stream::Run`]): heads by phase, the response back in reverse,
//!   failures by `failStrategy`; `body.rs`: bodies and trailers;
//! - [`ext_proc`]: a request's conversation with its processors.
//!
//! The engine decides where each phase of plugins runs (its phase list
//! says where) and turns a [`stream::Stop`] into its answer; nothing here
//! knows the engine.

mod body;
pub mod ext_proc;
pub mod modules;
pub mod stream;
pub mod wasm;

#[cfg(test)]
mod tests;

pub use body::{MAX_HELD_BODY, PluginBody};
pub use modules::{Entry, Loader};
pub use stream::{Chain, Run, Stop};
pub use wasm::{Dispatch, Filter, NoDispatch};
pub use weft_wasm::Limits as WasmLimits;

/// Fuel one plugin callback may burn by default (about 20 million
/// WebAssembly instructions: a few milliseconds).
pub const DEFAULT_FUEL: u64 = 20_000_000;
