//! One request's pass through the plugins of its target ([`Run`]): the
//! request head through each phase's plugins (in [`Chain`] order), the
//! response head back through every plugin that saw the request (in
//! reverse), bodies and trailers through those that have body callbacks
//! (`body.rs`), and each plugin's context ended (`proxy_on_log`, done,
//! delete) when the request is over.
//!
//! What a plugin's verdict does: `Continue` goes on; a local response
//! answers the client ([`Stop::Respond`]); `Pause` on a head waits for the
//! plugin's HTTP calls, answered as they come back, until it resumes or
//! responds (a pause with no call to wait for is a failure); a trap, an
//! exhausted CPU budget or a closed stream is a failure, which
//! `FAIL_CLOSE` turns into [`Stop::Fail`] and `FAIL_OPEN` into skipping
//! that plugin for the rest of the request.

use std::sync::{Arc, Mutex};

use weft_core::l7::PluginPhase;
use weft_wasm::{Attributes, Context, Exchange, Instance, LocalResponse, Verdict, WasmError};

use crate::extension::modules::Entry;
use crate::extension::wasm::{Filter, Wants};

/// The plugins of one target, in the order they run: by phase, then
/// higher priority first, then by name.
#[derive(Debug, Default)]
pub struct Chain {
    pub(crate) entries: Vec<Entry>,
    /// The phases it has plugins in, one bit each (a request skips the
    /// others without looking further).
    phases: u8,
    /// Whether the response head must pass through its plugins: one has
    /// a callback for it, for response bodies, or for a stream's end
    /// (which may read the response).
    response: bool,
    /// Whether a plugin reads request bodies, response bodies.
    bodies: (bool, bool),
}

fn bit(phase: PluginPhase) -> u8 {
    1 << (phase as u8)
}

fn spec(e: &Entry) -> &weft_core::l7::WasmPlugin {
    match e {
        Entry::Ready(f) => &f.spec,
        Entry::Missing { spec, .. } => spec,
    }
}

impl Chain {
    /// `entries` in running order.
    pub fn new(mut entries: Vec<Entry>) -> Chain {
        entries.sort_by(|a, b| {
            let (a, b) = (spec(a), spec(b));
            (a.phase, std::cmp::Reverse(a.priority), &a.name).cmp(&(
                b.phase,
                std::cmp::Reverse(b.priority),
                &b.name,
            ))
        });
        let phases = entries.iter().fold(0, |bits, e| bits | bit(spec(e).phase));
        let wants: Vec<Wants> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Ready(f) => Some(f.wants),
                Entry::Missing { .. } => None,
            })
            .collect();
        Chain {
            entries,
            phases,
            response: wants
                .iter()
                .any(|w| w.response_head || w.bodies.1 || w.close),
            bodies: (
                wants.iter().any(|w| w.bodies.0),
                wants.iter().any(|w| w.bodies.1),
            ),
        }
    }

    /// The plugins' names, in running order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| spec(e).name.as_str()).collect()
    }

    /// Whether it has no plugin.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why the request stops at a plugin or an external processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The plugin (or processor) answers the client.
    Respond(LocalResponse),
    /// The plugin failed (or is not loaded) and fails closed.
    Fail {
        /// The `WasmPlugin`.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
    /// An external processor failed and fails closed.
    ProcessorFailed {
        /// The `ExtProcPolicy`.
        policy: String,
        /// What went wrong.
        reason: String,
    },
}

/// A plugin's context in this request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opened {
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) context: Context,
}

/// One plugin's part of a request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slot {
    /// Its context, once opened.
    pub(crate) opened: Option<Opened>,
    /// Skipped for the rest of the request (failed open).
    pub(crate) skipped: bool,
    /// Body bytes it holds (`Pause`): request, response.
    pub(crate) held: [Vec<u8>; 2],
}

/// A request's state across its plugins, shared with its body wrappers.
pub(crate) struct State {
    pub(crate) chain: Arc<Chain>,
    /// Its exchange (boxed: moved by pointer); taken while a head passes
    /// through the plugins (a body callback meanwhile gets a fresh one,
    /// which the head's replaces when it is put back).
    pub(crate) exchange: Option<Box<Exchange>>,
    /// Per entry of the chain, in its order.
    pub(crate) slots: Vec<Slot>,
    /// Why a body callback stopped the request, for the engine to answer.
    pub(crate) stopped: Option<Stop>,
}

impl Drop for State {
    fn drop(&mut self) {
        for (i, slot) in self.slots.iter().enumerate() {
            if let (Some(o), Entry::Ready(f)) = (slot.opened, &self.chain.entries[i])
                && f.wants.close
            {
                let x = self.exchange.get_or_insert_with(Box::default);
                let _ = f.with(o.slot, Some(o.generation), |inst| inst.close(o.context, x));
            }
        }
    }
}

/// One request's pass through its target's plugins.
#[derive(Clone)]
pub struct Run {
    pub(crate) state: Arc<Mutex<State>>,
    /// Its plugins and what they want (read without the lock).
    pub(crate) chain: Arc<Chain>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Run")
    }
}

/// What a failure of `filter` (or of a plugin not loaded) does.
pub(crate) fn fail(plugin: &weft_core::l7::WasmPlugin, reason: String) -> Option<Stop> {
    if plugin.fail_open {
        tracing::debug!(plugin = %plugin.name, %reason, "plugin failed open: skipped for this request");
        None
    } else {
        Some(Stop::Fail {
            plugin: plugin.name.clone(),
            reason,
        })
    }
}

impl Run {
    /// A pass through `chain`, for a request with `attributes`; `None`
    /// when the chain is empty.
    pub fn start(chain: &Arc<Chain>, attributes: Attributes) -> Option<Run> {
        if chain.is_empty() {
            return None;
        }
        let n = chain.entries.len();
        Some(Run {
            chain: chain.clone(),
            state: Arc::new(Mutex::new(State {
                chain: chain.clone(),
                exchange: Some(Box::new(Exchange {
                    attributes,
                    ..Exchange::default()
                })),
                slots: vec![Slot::default(); n],
                stopped: None,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the route and upstream cluster chosen (properties
    /// `route_name`, `cluster_name`).
    pub fn note(&self, route: &str, cluster: Option<&str>) {
        let mut s = self.lock();
        let x = s.exchange.get_or_insert_with(Box::default);
        x.attributes.route_name = Some(route.to_owned());
        if let Some(c) = cluster {
            x.attributes.cluster_name = Some(c.to_owned());
        }
    }

    /// What a body callback stopped the request with, if it did.
    pub fn take_stop(&self) -> Option<Stop> {
        if !(self.chain.bodies.0 || self.chain.bodies.1) {
            return None;
        }
        self.lock().stopped.take()
    }

    /// Whether a plugin that saw the request reads `response` bodies
    /// (else request bodies): the body must pass through it, and its
    /// length may change.
    pub fn reads_bodies(&self, response: bool) -> bool {
        let wanted = if response {
            self.chain.bodies.1
        } else {
            self.chain.bodies.0
        };
        if !wanted {
            return false;
        }
        let s = self.lock();
        self.chain.entries.iter().enumerate().any(|(i, e)| {
            let reads =
                matches!(e, Entry::Ready(f) if if response { f.wants.bodies.1 } else { f.wants.bodies.0 });
            reads && s.slots[i].opened.is_some() && !s.slots[i].skipped
        })
    }

    /// The request's head through the plugins of `phase`.
    pub async fn request(
        &self,
        phase: PluginPhase,
        parts: &mut http::request::Parts,
        end_of_stream: bool,
    ) -> Result<(), Stop> {
        if self.chain.phases & bit(phase) == 0 {
            return Ok(());
        }
        let mut x = self.lock().exchange.take().unwrap_or_default();
        x.request.method = std::mem::take(&mut parts.method);
        x.request.uri = std::mem::take(&mut parts.uri);
        x.request.headers = std::mem::take(&mut parts.headers);
        let mut result = Ok(());
        for (i, entry) in self.chain.entries.iter().enumerate() {
            if spec(entry).phase != phase {
                continue;
            }
            result = self
                .head(i, entry, &mut x, Head::Request(end_of_stream))
                .await;
            if result.is_err() {
                break;
            }
        }
        parts.method = std::mem::take(&mut x.request.method);
        parts.uri = std::mem::take(&mut x.request.uri);
        parts.headers = std::mem::take(&mut x.request.headers);
        self.lock().exchange = Some(x);
        result
    }

    /// The response's head back through every plugin that saw the
    /// request, last first (not at all when none has a callback that
    /// could read it).
    pub async fn response(
        &self,
        parts: &mut http::response::Parts,
        end_of_stream: bool,
    ) -> Result<(), Stop> {
        if !self.chain.response {
            return Ok(());
        }
        let mut x = self.lock().exchange.take().unwrap_or_default();
        x.response.status = parts.status;
        x.response.headers = std::mem::take(&mut parts.headers);
        x.attributes.responded = true;
        let mut result = Ok(());
        for (i, entry) in self.chain.entries.iter().enumerate().rev() {
            result = self
                .head(i, entry, &mut x, Head::Response(end_of_stream))
                .await;
            if result.is_err() {
                break;
            }
        }
        parts.status = x.response.status;
        parts.headers = std::mem::take(&mut x.response.headers);
        self.lock().exchange = Some(x);
        result
    }

    /// One plugin on one head: opens its context if needed, runs the
    /// callback, waits out its HTTP calls.
    async fn head(
        &self,
        i: usize,
        entry: &Entry,
        x: &mut Box<Exchange>,
        head: Head,
    ) -> Result<(), Stop> {
        let (skipped, opened) = {
            let s = self.lock();
            (s.slots[i].skipped, s.slots[i].opened)
        };
        // The response passes back only through plugins that saw the
        // request.
        if skipped || (matches!(head, Head::Response(_)) && opened.is_none()) {
            return Ok(());
        }
        let filter = match entry {
            Entry::Ready(f) => f,
            Entry::Missing { spec, reason } => {
                self.lock().slots[i].skipped = true;
                return match fail(spec, format!("its module is not loaded: {reason}")) {
                    Some(stop) => Err(stop),
                    None => Ok(()),
                };
            }
        };
        match self.run_head(i, filter, opened, x, head).await {
            Ok(Verdict::Continue) => Ok(()),
            Ok(Verdict::Respond(r)) => Err(Stop::Respond(r)),
            Ok(Verdict::Close) => self.failed(i, filter, "it closed the stream".into()),
            Ok(Verdict::Pause) => self.failed(
                i,
                filter,
                "it paused the request with no HTTP call to wait for".into(),
            ),
            Err(e) => self.failed(i, filter, e.to_string()),
        }
    }

    fn failed(&self, i: usize, filter: &Arc<Filter>, reason: String) -> Result<(), Stop> {
        self.lock().slots[i].skipped = true;
        match fail(&filter.spec, reason) {
            Some(stop) => Err(stop),
            None => Ok(()),
        }
    }

    /// Opens the plugin's context if the request has none in it yet
    /// (in the same turn of its instance as the callback), runs the
    /// head's callback if the plugin has one, and waits out its HTTP
    /// calls.
    async fn run_head(
        &self,
        i: usize,
        filter: &Arc<Filter>,
        opened: Option<Opened>,
        x: &mut Box<Exchange>,
        head: Head,
    ) -> Result<Verdict, WasmError> {
        let has_callback = match head {
            Head::Request(_) => filter.wants.request_head,
            Head::Response(_) => filter.wants.response_head,
        };
        let mut callback = |inst: &mut Instance, c: Context| {
            if !has_callback {
                return Ok((Verdict::Continue, Vec::new()));
            }
            let v = match head {
                Head::Request(end) => inst.request_headers(c, x, end)?,
                Head::Response(end) => inst.response_headers(c, x, end)?,
            };
            Ok((v, inst.take_calls()))
        };
        let (o, (mut verdict, mut calls)) = match opened {
            Some(_) if !has_callback => return Ok(Verdict::Continue),
            Some(o) => {
                let (_, ran) =
                    filter.with(o.slot, Some(o.generation), |inst| callback(inst, o.context))?;
                (o, ran)
            }
            None => {
                let slot = filter.pick();
                let (generation, (context, ran)) = filter.with(slot, None, |inst| {
                    let context = inst.open()?;
                    Ok((context, callback(inst, context)?))
                })?;
                let o = Opened {
                    slot,
                    generation,
                    context,
                };
                self.lock().slots[i].opened = Some(o);
                (o, ran)
            }
        };
        while verdict == Verdict::Pause && !calls.is_empty() {
            verdict = filter
                .answer(o.slot, o.generation, x, std::mem::take(&mut calls))
                .await?
                .unwrap_or(Verdict::Pause);
            (_, calls) = filter.with(o.slot, Some(o.generation), |inst| Ok(inst.take_calls()))?;
        }
        Ok(verdict)
    }
}

/// Which head a callback is for, and whether the body follows.
#[derive(Debug, Clone, Copy)]
enum Head {
    Request(bool),
    Response(bool),
}
