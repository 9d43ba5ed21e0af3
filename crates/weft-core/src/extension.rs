//! Extensions in the L7 model: the Proxy-Wasm plugins a waypoint or
//! gateway runs (Istio's `WasmPlugin`) and the external processors it
//! asks (`ExtProcPolicy`), resolved by the control plane to their
//! targets and carried in the L7 policy (`l7.rs`).

use serde::{Deserialize, Serialize};

/// Where a Proxy-Wasm plugin runs among the engine's phases (Istio's
/// `WasmPlugin` `phase`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum PluginPhase {
    /// Before JWT authentication.
    Authn,
    /// After authentication, before authorization.
    Authz,
    /// After authorization, before rate limits.
    Stats,
    /// Last: after rate limits and faults, before the request is sent.
    #[default]
    Unspecified,
}

/// A Proxy-Wasm plugin as the proxy loads and runs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmPlugin {
    /// The `WasmPlugin`, `namespace/name` (metrics and logs name it so).
    pub name: String,
    /// Where its module is (`file://`, `https://`, `oci://`).
    pub url: String,
    /// The module's SHA-256 (hex), when pinned.
    pub sha256: Option<String>,
    /// The root id handed to the plugin.
    pub plugin_name: String,
    /// Its phase.
    pub phase: PluginPhase,
    /// Its order within the phase: higher first.
    pub priority: i64,
    /// A failing plugin is skipped (`FAIL_OPEN`) rather than failing the
    /// request with 503 (`FAIL_CLOSE`).
    pub fail_open: bool,
    /// `pluginConfig`, as JSON.
    pub config: String,
    /// `vmConfig.env` given inline.
    pub env: Vec<(String, String)>,
    /// `vmConfig.env` copied from the proxy's own environment.
    pub host_env: Vec<String>,
    /// Ports of the target it applies to (empty: every port).
    pub ports: Vec<u16>,
}

/// How much of a body an external processor is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyMode {
    /// None of it.
    #[default]
    None,
    /// Chunk by chunk as it arrives, each answered before it passes on.
    Streamed,
    /// Whole, once it has all arrived (up to the proxy's buffer limit).
    Buffered,
}

/// An external processor (Envoy's `ext_proc`) and what it is sent, from a
/// `weft.dev` `ExtProcPolicy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtProc {
    /// The policy, `namespace/name`.
    pub name: String,
    /// The processor's gRPC address, `host:port`.
    pub address: String,
    /// Send the request's headers.
    pub request_headers: bool,
    /// Send the response's headers.
    pub response_headers: bool,
    /// The request's body.
    pub request_body: BodyMode,
    /// The response's body.
    pub response_body: BodyMode,
    /// Send the request's trailers.
    pub request_trailers: bool,
    /// Send the response's trailers.
    pub response_trailers: bool,
    /// Longest wait for each answer.
    pub message_timeout: std::time::Duration,
    /// A processor that fails (unreachable, too slow, out of protocol)
    /// lets requests through rather than failing them with 500.
    pub fail_open: bool,
    /// The processor may change what it is sent for the rest of a
    /// request (`mode_override`).
    pub allow_mode_override: bool,
    /// On a Gateway: the listeners it applies to (`sectionName`); empty:
    /// every listener.
    #[serde(default)]
    pub listeners: Vec<String>,
}
