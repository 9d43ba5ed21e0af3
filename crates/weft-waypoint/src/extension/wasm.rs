//! A loaded Proxy-Wasm plugin ([`Filter`]): its compiled module, what it
//! is started with, and its instances — one slot per worker thread, each
//! instance holding the contexts of many streams (as an Envoy VM does on
//! its worker), started on first use and replaced after it fails. A
//! stream keeps the slot it opened its context in; each callback locks
//! that slot for the callback's length only (bounded by the CPU budget).
//! Ticks run on a task per instance; HTTP calls go through the proxy's
//! [`Dispatch`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use weft_core::l7::WasmPlugin;
use weft_wasm::{
    CallResponse, Exchange, HttpCall, Instance, Plugin, Settings, SharedRef, WasmError,
};

use crate::telemetry::extensions::ExtensionMetrics;

/// How the proxy carries out a plugin's `proxy_http_call`: the answer,
/// or `None` when the call failed (no such upstream, no answer in time).
pub trait Dispatch: Send + Sync {
    /// Sends `call`, within its timeout.
    fn call(&self, call: HttpCall) -> Pin<Box<dyn Future<Output = Option<CallResponse>> + Send>>;
}

/// A [`Dispatch`] that fails every call (tests, and proxies without a
/// mesh to call).
#[derive(Debug, Default)]
pub struct NoDispatch;

impl Dispatch for NoDispatch {
    fn call(&self, _: HttpCall) -> Pin<Box<dyn Future<Output = Option<CallResponse>> + Send>> {
        Box::pin(async { None })
    }
}

/// One instance slot: the instance (if started) and how many have been
/// started in it (a stream's context belongs to one of them).
#[derive(Default)]
struct Slot {
    generation: u64,
    instance: Option<Instance>,
}

/// Which of a plugin's stream callbacks its module has (looked up once:
/// a request skips the others without entering an instance).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wants {
    pub(crate) request_head: bool,
    pub(crate) response_head: bool,
    /// Request bodies, response bodies.
    pub(crate) bodies: (bool, bool),
    /// `proxy_on_log`, `proxy_on_done` or `proxy_on_delete`.
    pub(crate) close: bool,
}

/// A plugin ready to run.
pub struct Filter {
    /// What the configuration says of it.
    pub spec: WasmPlugin,
    plugin: Plugin,
    settings: Settings,
    shared: SharedRef,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    /// Which stream callbacks the module has.
    pub(crate) wants: Wants,
    dispatch: Arc<dyn Dispatch>,
    pub(crate) metrics: ExtensionMetrics,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({})", self.spec.name)
    }
}

/// Instance slots per plugin: the worker threads (at most 8).
fn slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8))
}

impl Filter {
    /// A filter for `plugin`, started with `settings`; one instance is
    /// started now so that a plugin that cannot start is refused here,
    /// with the reason, rather than on a request.
    pub fn new(
        spec: WasmPlugin,
        plugin: Plugin,
        settings: Settings,
        dispatch: Arc<dyn Dispatch>,
        metrics: ExtensionMetrics,
    ) -> Result<Arc<Filter>, WasmError> {
        let shared = SharedRef::default();
        let first = Instance::start(&plugin, &settings, shared.clone())?;
        let wants = Wants {
            request_head: first.wants_request_headers(),
            response_head: first.wants_response_headers(),
            bodies: (first.wants_request_body(), first.wants_response_body()),
            close: first.wants_close(),
        };
        let filter = Arc::new(Filter {
            spec,
            plugin,
            settings,
            shared,
            slots: (0..slots()).map(|_| Mutex::default()).collect(),
            next: AtomicUsize::new(0),
            wants,
            dispatch,
            metrics,
        });
        filter.install(0, first);
        Ok(filter)
    }

    /// The plugin's name (`namespace/name`).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What its instances share (metrics among it).
    pub fn shared(&self) -> &SharedRef {
        &self.shared
    }

    /// The slot the next stream uses.
    pub(crate) fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }

    /// Puts a started instance in `slot` (a new generation), with its
    /// ticks if it asked for them.
    fn install(self: &Arc<Self>, slot: usize, instance: Instance) -> u64 {
        let mut s = self.slots[slot].lock().unwrap_or_else(|p| p.into_inner());
        self.install_locked(&mut s, slot, instance)
    }

    fn install_locked(self: &Arc<Self>, s: &mut Slot, slot: usize, instance: Instance) -> u64 {
        let period = instance.tick_period();
        s.generation += 1;
        s.instance = Some(instance);
        if let (Some(period), Ok(handle)) = (period, tokio::runtime::Handle::try_current()) {
            handle.spawn(ticks(Arc::downgrade(self), slot, s.generation, period));
        }
        s.generation
    }

    /// Runs `f` on the instance in `slot`: the one of `generation` (a
    /// stream's), or — `None` — whichever is there, starting one if the
    /// slot is empty. A failed instance is dropped from its slot (the
    /// next stream starts a new one) and the failure counted. Returns the
    /// generation `f` ran on.
    pub(crate) fn with<R>(
        self: &Arc<Self>,
        slot: usize,
        generation: Option<u64>,
        f: impl FnOnce(&mut Instance) -> Result<R, WasmError>,
    ) -> Result<(u64, R), WasmError> {
        let mut s = self.slots[slot].lock().unwrap_or_else(|p| p.into_inner());
        if s.instance.is_none() {
            if generation.is_some() {
                return Err(self.gone());
            }
            // Started under the slot's lock (bounded by the CPU budget):
            // two requests never start two instances in one slot.
            let started = Instance::start(&self.plugin, &self.settings, self.shared.clone())
                .inspect_err(|e| self.failed(e))?;
            self.install_locked(&mut s, slot, started);
        }
        if generation.is_some_and(|g| g != s.generation) {
            return Err(self.gone());
        }
        let current = s.generation;
        let instance = s.instance.as_mut().ok_or_else(|| self.gone())?;
        let result = f(instance);
        if instance.failed().is_some() {
            s.instance = None;
        }
        drop(s);
        if let Err(e) = &result {
            self.failed(e);
        }
        self.deliver_queues();
        result.map(|r| (current, r))
    }

    fn gone(&self) -> WasmError {
        WasmError::Failed {
            plugin: self.spec.name.clone(),
            reason: "its instance failed and was replaced while the request was in flight".into(),
        }
    }

    fn failed(&self, e: &WasmError) {
        let kind = match e {
            WasmError::Trap { reason, .. } if reason.contains("CPU budget") => "cpu_limit",
            WasmError::Trap { .. } => "trap",
            WasmError::Start { .. } | WasmError::Invalid { .. } | WasmError::Engine(_) => "start",
            _ => "failed_instance",
        };
        self.metrics.failure(&self.spec.name, kind);
        tracing::warn!(plugin = %self.spec.name, error = %e, "Proxy-Wasm plugin failed");
    }

    /// Hands queued items to the instances that own their queues (at
    /// once when nothing was queued).
    fn deliver_queues(self: &Arc<Self>) {
        if !self.shared.take_queued() {
            return;
        }
        for slot in 0..self.slots.len() {
            let ready = {
                let s = self.slots[slot].lock().unwrap_or_else(|p| p.into_inner());
                match &s.instance {
                    Some(i) => self.shared.take_ready(i.id()),
                    None => continue,
                }
            };
            for queue in ready {
                let _ = self.with(slot, None, |i| i.queue_ready(queue));
            }
        }
    }

    /// Carries out `calls` and hands each answer to the instance of
    /// `generation` in `slot`, with `x` as the stream it acts on. The
    /// last verdict is returned (`None`: no calls).
    pub(crate) async fn answer(
        self: &Arc<Self>,
        slot: usize,
        generation: u64,
        x: &mut Box<Exchange>,
        calls: Vec<HttpCall>,
    ) -> Result<Option<weft_wasm::Verdict>, WasmError> {
        let tokens: Vec<u32> = calls.iter().map(|c| c.token).collect();
        let answers =
            futures::future::join_all(calls.into_iter().map(|c| self.dispatch.call(c))).await;
        let mut verdict = None;
        for (token, answer) in tokens.into_iter().zip(answers) {
            let (_, v) = self.with(slot, Some(generation), |i| {
                i.call_response(x, token, answer)
            })?;
            verdict = Some(v);
        }
        Ok(verdict)
    }
}

/// `proxy_on_tick` every `period` on the instance of `generation` in
/// `slot`, until it is replaced or the plugin unloaded; HTTP calls made
/// on a tick are carried out and answered to the root context.
async fn ticks(filter: Weak<Filter>, slot: usize, generation: u64, period: std::time::Duration) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(f) = filter.upgrade() else { return };
        let calls = match f.with(slot, Some(generation), |i| {
            i.tick()?;
            Ok(i.take_calls())
        }) {
            Ok((_, calls)) => calls,
            Err(_) => return,
        };
        if !calls.is_empty() {
            let mut x = Box::<Exchange>::default();
            if f.answer(slot, generation, &mut x, calls).await.is_err() {
                return;
            }
        }
    }
}
