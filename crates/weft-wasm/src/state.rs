//! What one plugin instance's host calls read and write: the
//! [`Exchange`] of the stream a callback runs for (its heads, bodies and
//! properties, moved in for the call and back out after it), the
//! instance's configuration, and what a plugin's instances share
//! ([`Shared`]: metrics, shared data, queues).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::abi::MetricType;
use crate::maps::{RequestHead, ResponseHead};

/// A header list: lower-case names, in order.
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

/// A `proxy_http_call` the plugin made: the proxy carries it out and
/// hands the answer back with [`crate::Instance::call_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The token the plugin was given.
    pub token: u32,
    /// The upstream it named (a mesh service: `host:port`, or Istio's
    /// `outbound|port||host`).
    pub upstream: String,
    /// Its headers, pseudo-headers (`:method`, `:path`, `:authority`)
    /// included.
    pub headers: Headers,
    /// Its body.
    pub body: Vec<u8>,
    /// How long the proxy waits for the answer.
    pub timeout: Duration,
}

/// The answer to an [`HttpCall`]; `None` in [`crate::Instance::call_response`]
/// when it failed (no headers, as Envoy reports it).
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    /// Its status and headers.
    pub head: ResponseHead,
    /// Its body.
    pub body: Vec<u8>,
    /// Its trailers.
    pub trailers: http::HeaderMap,
}

/// One HTTP stream as plugins see it, owned by the proxy between
/// callbacks: the request and response heads, the body chunk being
/// processed, trailers and the stream's attributes.
#[derive(Debug, Default)]
pub struct Exchange {
    /// The request's head.
    pub request: RequestHead,
    /// The response's head (empty before the response).
    pub response: ResponseHead,
    /// The request's trailers.
    pub request_trailers: http::HeaderMap,
    /// The response's trailers.
    pub response_trailers: http::HeaderMap,
    /// The request body bytes offered to the current callback.
    pub request_body: Vec<u8>,
    /// The response body bytes offered to the current callback.
    pub response_body: Vec<u8>,
    /// What `proxy_get_property` answers from.
    pub attributes: Attributes,
}

/// What the proxy knows of a stream beyond its heads.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    /// The caller's address.
    pub source: Option<SocketAddr>,
    /// The address the caller reached.
    pub destination: Option<SocketAddr>,
    /// The endpoint the request went to.
    pub upstream: Option<SocketAddr>,
    /// The caller's SPIFFE identity (`spiffe://…`), when it came over mTLS.
    pub peer_principal: Option<String>,
    /// This proxy's SPIFFE identity.
    pub local_principal: Option<String>,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The route the request took.
    pub route_name: Option<String>,
    /// The upstream cluster (service) chosen.
    pub cluster_name: Option<String>,
    /// Whether the response's head has been seen (`response.*` exists).
    pub responded: bool,
    /// What plugins set with `proxy_set_property`, by path.
    pub set: Vec<(Vec<u8>, Vec<u8>)>,
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

/// A shared queue: its name, the instance that registered it and what
/// waits in it.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) name: String,
    pub(crate) owner: u64,
    pub(crate) items: VecDeque<Vec<u8>>,
}

/// Longest a shared queue grows; enqueueing beyond it fails.
pub const MAX_QUEUE_ITEMS: usize = 10_000;

/// What a plugin's instances share (Envoy shares it per VM id; weft
/// gives each plugin its own).
#[derive(Debug, Default)]
pub struct Shared {
    pub(crate) metrics: Mutex<Vec<Metric>>,
    /// Shared data: value and compare-and-swap version by key.
    pub(crate) data: Mutex<HashMap<String, (Vec<u8>, u32)>>,
    pub(crate) queues: Mutex<Vec<Queue>>,
    /// Queues that became non-empty: (owner instance, queue id).
    pub(crate) ready: Mutex<Vec<(u64, u32)>>,
    /// Something was queued since [`Shared::take_queued`] last looked.
    pub(crate) queued: std::sync::atomic::AtomicBool,
    pub(crate) next_instance: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The metrics the plugin defined, with their current values.
    pub fn metrics(&self) -> Vec<Metric> {
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether anything was queued since the last call (a cheap check
    /// before [`Shared::take_ready`]).
    pub fn take_queued(&self) -> bool {
        self.queued.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Takes the notifications owed to instance `owner`: ids of its
    /// queues that had items added.
    pub fn take_ready(&self, owner: u64) -> Vec<u32> {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        let mut mine = Vec::new();
        ready.retain(|&(o, q)| {
            if o == owner {
                if !mine.contains(&q) {
                    mine.push(q);
                }
                false
            } else {
                true
            }
        });
        mine
    }
}

/// What a plugin's instances share, by reference.
pub type SharedRef = Arc<Shared>;

/// What one instance's host calls read and write.
#[cfg(feature = "runtime")]
pub struct HostState {
    pub(crate) limits: wasmtime::StoreLimits,
    pub(crate) plugin: Arc<str>,
    pub(crate) root_id: String,
    pub(crate) id: u64,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) env: Vec<(String, String)>,
    /// The stream of the running callback (moved in for it).
    pub(crate) exchange: Box<Exchange>,
    /// The answer to an HTTP call, while its callback runs (`None`: the
    /// call failed).
    pub(crate) call_response: Option<CallResponse>,
    /// What a failed call's maps read: nothing.
    pub(crate) no_headers: http::HeaderMap,
    pub(crate) local_response: Option<LocalResponse>,
    /// The plugin resumed the stream (`proxy_continue_stream` & co.).
    pub(crate) resumed: bool,
    /// The plugin closed the stream (`proxy_close_stream`).
    pub(crate) closed: bool,
    pub(crate) calls: Vec<HttpCall>,
    pub(crate) next_token: u32,
    pub(crate) shared: SharedRef,
    pub(crate) tick_period_ms: u32,
    /// The plugin's exported memory, looked up once it is instantiated.
    pub(crate) memory: Option<wasmtime::Memory>,
    /// Its allocator (`proxy_on_memory_allocate`, else `malloc`), looked
    /// up once (shared: cloning a typed function registers its type).
    pub(crate) alloc: Option<Arc<wasmtime::TypedFunc<i32, i32>>>,
}

#[cfg(feature = "runtime")]
impl HostState {
    /// The map numbered `code`, if the ABI has one.
    pub(crate) fn map(&mut self, code: i32) -> Option<crate::maps::Map<'_>> {
        use crate::abi::MapType;
        use crate::maps::Map;
        Some(match MapType::from_code(code)? {
            MapType::RequestHeaders => Map::Request(&mut self.exchange.request),
            MapType::RequestTrailers => Map::Plain(&mut self.exchange.request_trailers),
            MapType::ResponseHeaders => Map::Response(&mut self.exchange.response),
            MapType::ResponseTrailers => Map::Plain(&mut self.exchange.response_trailers),
            MapType::HttpCallResponseHeaders => match &mut self.call_response {
                Some(c) => Map::Response(&mut c.head),
                None => Map::Plain(&mut self.no_headers),
            },
            MapType::HttpCallResponseTrailers => match &mut self.call_response {
                Some(c) => Map::Plain(&mut c.trailers),
                None => Map::Plain(&mut self.no_headers),
            },
        })
    }
}
