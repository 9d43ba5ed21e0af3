//! What one plugin instance's host calls read and write: the stream's
//! header maps, the local response a plugin asked for, its properties,
//! configuration and metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmtime::StoreLimits;

use crate::abi::{MapType, MetricType};

/// A header map: lower-case names, in order.
pub type Headers = Vec<(String, String)>;

/// A response the plugin asked the proxy to send instead of going on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Its status.
    pub status: u16,
    /// Why (`status_code_details`).
    pub details: String,
    /// Its body.
    pub body: Vec<u8>,
    /// Headers to add.
    pub headers: Headers,
}

/// A metric a plugin defined.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Its name as the plugin gave it.
    pub name: String,
    /// Its kind.
    pub kind: MetricType,
    /// Its value (a histogram's last recorded one).
    pub value: i64,
}

/// The metrics of one plugin, shared by its instances.
pub type Metrics = Arc<Mutex<Vec<Metric>>>;

/// What one instance's host calls read and write.
pub struct HostState {
    pub(crate) limits: StoreLimits,
    pub(crate) plugin: Arc<str>,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) request_headers: Headers,
    pub(crate) response_headers: Headers,
    pub(crate) request_trailers: Headers,
    pub(crate) response_trailers: Headers,
    pub(crate) local_response: Option<LocalResponse>,
    /// Properties by path (segments joined by NUL, as plugins pass them).
    pub(crate) properties: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) metrics: Metrics,
    pub(crate) tick_period_ms: u32,
}

impl HostState {
    pub(crate) fn map(&mut self, code: i32) -> Option<&mut Headers> {
        Some(match MapType::from_code(code)? {
            MapType::RequestHeaders => &mut self.request_headers,
            MapType::RequestTrailers => &mut self.request_trailers,
            MapType::ResponseHeaders => &mut self.response_headers,
            MapType::ResponseTrailers => &mut self.response_trailers,
            MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => return None,
        })
    }
}
