//! Extensions in the L7 model: the Proxy-Wasm plugins a waypoint or
//! gateway runs (Istio's `WasmPlugin`, resolved by the control plane to
//! its targets), carried in [`crate::l7::L7Policy`].

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
