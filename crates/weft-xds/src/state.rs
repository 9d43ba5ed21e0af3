//! What a proxy's xDS client holds: every resource applied, with its
//! version, and how the stream is doing. Shared by the client
//! (`client.rs`), which fills it, and the copy kept on disk between runs
//! (`kept.rs`); both build on this module, which imports neither.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use prost_types::Any;

/// Checks one resource before it is applied; an error NACKs the response.
pub type Validator = Arc<dyn Fn(&str, &Any) -> Result<(), String> + Send + Sync>;

/// One resource as held by the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// Version from the server.
    pub version: String,
    /// The resource.
    pub body: Any,
}

/// What the client holds and how its stream is doing.
#[derive(Debug, Clone, Default)]
pub struct ClientState {
    /// Type URL → name → resource.
    pub resources: BTreeMap<String, BTreeMap<String, Held>>,
    /// Whether the stream is up.
    pub connected: bool,
    /// Whether every subscribed type received its first response.
    pub synced: bool,
    /// Last configuration version seen.
    pub version: String,
    /// The last error (stream failure or a rejected response).
    pub last_error: Option<String>,
    /// Responses applied.
    pub acks: u64,
    /// Responses rejected.
    pub nacks: u64,
    /// When the state last changed.
    pub updated: Option<SystemTime>,
    /// Per type, the size of the last response applied: (resources, removals).
    pub last_response: BTreeMap<String, (usize, usize)>,
}
