//! One running plugin: a wasmtime instance of a [`Plugin`] with its root
//! context started and configured, and the stream callbacks, each run
//! under the runtime's CPU budget (fuel) and memory cap. An instance
//! holds many streams at once (one context each), as an Envoy VM does on
//! its worker; the proxy calls it one callback at a time. A callback
//! that traps or runs out of fuel fails the instance: it answers every
//! later call with that error, and its owner starts a new one.
//!
//! A stream's [`Exchange`] is handed to a callback boxed: it is moved into
//! the instance for the callback and back by swapping two pointers, not
//! copying its ~800 bytes.

use std::sync::Arc;

use wasmtime::{Instance as Wasm, Linker, Store, StoreLimitsBuilder, Trap, TypedFunc};

use crate::WasmError;
use crate::abi::Action;
use crate::host;
use crate::plugin::Plugin;
use crate::state::{CallResponse, Exchange, HostState, HttpCall, LocalResponse, SharedRef};

/// The root context's id (ids start at 1; 0 is the VM's).
const ROOT: i32 = 1;

/// What a plugin is started with.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `vmConfig` bytes (`proxy_on_vm_start` reads them).
    pub vm_config: Vec<u8>,
    /// `pluginConfig` bytes (`proxy_on_configure` reads them).
    pub plugin_config: Vec<u8>,
    /// `vmConfig.env`: what the plugin's WASI environment holds.
    pub env: Vec<(String, String)>,
    /// The root id its code looks for (`plugin_root_id`; Istio's
    /// `pluginName`).
    pub root_id: String,
}

/// What a stream callback decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on (with whatever the plugin changed).
    Continue,
    /// Hold the stream: buffer more body, or wait for the plugin's HTTP
    /// calls to be answered.
    Pause,
    /// Answer with this instead.
    Respond(LocalResponse),
    /// Reset the stream (`proxy_close_stream`).
    Close,
}

type Cb2 = TypedFunc<(i32, i32), i32>;
type Cb3 = TypedFunc<(i32, i32, i32), i32>;
type Cb5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// The callbacks a plugin exported, looked up once (shared behind an
/// `Arc`: a callback borrows its function from a clone of it, where
/// cloning the function itself would register its type again).
struct Exports {
    context_create: TypedFunc<(i32, i32), ()>,
    request_headers: Option<Cb3>,
    request_body: Option<Cb3>,
    request_trailers: Option<Cb2>,
    response_headers: Option<Cb3>,
    response_body: Option<Cb3>,
    response_trailers: Option<Cb2>,
    call_response: Option<Cb5>,
    tick: Option<TypedFunc<i32, ()>>,
    queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    log: Option<TypedFunc<i32, ()>>,
    done: Option<TypedFunc<i32, i32>>,
    delete: Option<TypedFunc<i32, ()>>,
}

/// A stream's context in one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context(i32);

/// A started plugin instance.
pub struct Instance {
    plugin: Plugin,
    store: Store<HostState>,
    exports: Arc<Exports>,
    next_context: i32,
    failed: Option<String>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Instance({})", self.plugin.name)
    }
}

fn typed<P, R>(
    store: &mut Store<HostState>,
    wasm: &Wasm,
    plugin: &str,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, WasmError>
where
    P: wasmtime::WasmParams,
    R: wasmtime::WasmResults,
{
    let Some(func) = wasm.get_func(&mut *store, name) else {
        return Ok(None);
    };
    func.typed(&*store)
        .map(Some)
        .map_err(|e| WasmError::Invalid {
            plugin: plugin.to_owned(),
            reason: format!("its {name} export has the wrong type: {e}"),
        })
}

impl Instance {
    /// Instantiates `plugin`, runs its start-up (`_initialize`), creates
    /// its root context and starts and configures it with `settings`.
    /// `shared` is what its instances share (metrics, data, queues).
    pub fn start(
        plugin: &Plugin,
        settings: &Settings,
        shared: SharedRef,
    ) -> Result<Instance, WasmError> {
        let runtime = &plugin.runtime;
        let mut linker = Linker::new(&runtime.engine);
        host::link(&mut linker).map_err(|e| WasmError::Engine(e.to_string()))?;
        let state = HostState {
            limits: StoreLimitsBuilder::new()
                .memory_size(runtime.limits.memory_bytes)
                .instances(1)
                .build(),
            plugin: plugin.name.clone(),
            root_id: settings.root_id.clone(),
            id: crate::host_io::instance_id(&shared),
            vm_config: settings.vm_config.clone(),
            plugin_config: settings.plugin_config.clone(),
            env: settings.env.clone(),
            exchange: Box::default(),
            call_response: None,
            no_headers: http::HeaderMap::new(),
            local_response: None,
            resumed: false,
            closed: false,
            calls: Vec::new(),
            next_token: 0,
            shared,
            tick_period_ms: 0,
            memory: None,
            alloc: None,
        };
        let mut store = Store::new(&runtime.engine, state);
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(runtime.limits.fuel_per_call)
            .map_err(|e| WasmError::Engine(e.to_string()))?;
        let start_error = |reason: String| WasmError::Start {
            plugin: plugin.name.to_string(),
            reason,
        };
        let wasm = linker
            .instantiate(&mut store, &plugin.module)
            .map_err(|e| start_error(e.to_string()))?;
        store.data_mut().memory = wasm.get_memory(&mut store, "memory");
        let name = plugin.name.as_ref();
        let s = &mut store;
        let alloc = match typed::<i32, i32>(s, &wasm, name, "proxy_on_memory_allocate")? {
            Some(f) => Some(f),
            None => typed::<i32, i32>(s, &wasm, name, "malloc")?,
        };
        s.data_mut().alloc = alloc.map(Arc::new);
        let exports = Exports {
            context_create: typed(s, &wasm, name, "proxy_on_context_create")?
                .ok_or_else(|| start_error("no proxy_on_context_create".into()))?,
            request_headers: typed(s, &wasm, name, "proxy_on_request_headers")?,
            request_body: typed(s, &wasm, name, "proxy_on_request_body")?,
            request_trailers: typed(s, &wasm, name, "proxy_on_request_trailers")?,
            response_headers: typed(s, &wasm, name, "proxy_on_response_headers")?,
            response_body: typed(s, &wasm, name, "proxy_on_response_body")?,
            response_trailers: typed(s, &wasm, name, "proxy_on_response_trailers")?,
            call_response: typed(s, &wasm, name, "proxy_on_http_call_response")?,
            tick: typed(s, &wasm, name, "proxy_on_tick")?,
            queue_ready: typed(s, &wasm, name, "proxy_on_queue_ready")?,
            log: typed(s, &wasm, name, "proxy_on_log")?,
            done: typed(s, &wasm, name, "proxy_on_done")?,
            delete: typed(s, &wasm, name, "proxy_on_delete")?,
        };
        let initialize = match typed::<(), ()>(s, &wasm, name, "_initialize")? {
            Some(f) => Some(f),
            None => typed::<(), ()>(s, &wasm, name, "_start")?,
        };
        let vm_start = typed::<(i32, i32), i32>(s, &wasm, name, "proxy_on_vm_start")?;
        let configure = typed::<(i32, i32), i32>(s, &wasm, name, "proxy_on_configure")?;
        let mut instance = Instance {
            plugin: plugin.clone(),
            store,
            exports: Arc::new(exports),
            next_context: ROOT + 1,
            failed: None,
        };
        if let Some(f) = initialize {
            instance.call("_initialize", &f, ())?;
        }
        let e = Arc::clone(&instance.exports);
        instance.call("proxy_on_context_create", &e.context_create, (ROOT, 0))?;
        let vm_config = settings.vm_config.len() as i32;
        if let Some(f) = vm_start
            && instance.call("proxy_on_vm_start", &f, (ROOT, vm_config))? == 0
        {
            return Err(start_error("proxy_on_vm_start returned false".into()));
        }
        let config = settings.plugin_config.len() as i32;
        if let Some(f) = configure
            && instance.call("proxy_on_configure", &f, (ROOT, config))? == 0
        {
            return Err(start_error(
                "proxy_on_configure refused its pluginConfig".into(),
            ));
        }
        Ok(instance)
    }

    /// The plugin it runs.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Why it failed, if it did (it should be replaced).
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Its id among its plugin's instances (queues name their owner by it).
    pub fn id(&self) -> u64 {
        self.store.data().id
    }

    /// The tick period the plugin asked for, if any.
    pub fn tick_period(&self) -> Option<std::time::Duration> {
        let ms = self.store.data().tick_period_ms;
        (ms > 0).then(|| std::time::Duration::from_millis(u64::from(ms)))
    }

    /// Whether it has a callback for request bodies; without one (and
    /// [`Instance::wants_response_body`]) a body need not pass through it.
    pub fn wants_request_body(&self) -> bool {
        self.exports.request_body.is_some()
    }

    /// Whether it has a callback for response bodies.
    pub fn wants_response_body(&self) -> bool {
        self.exports.response_body.is_some()
    }

    /// Whether it has a callback for request heads.
    pub fn wants_request_headers(&self) -> bool {
        self.exports.request_headers.is_some()
    }

    /// Whether it has a callback for response heads.
    pub fn wants_response_headers(&self) -> bool {
        self.exports.response_headers.is_some()
    }

    /// Whether it has a callback for a stream's end (`proxy_on_log`,
    /// `proxy_on_done` or `proxy_on_delete`); without one, ending a
    /// context is nothing to it.
    pub fn wants_close(&self) -> bool {
        let e = &self.exports;
        e.log.is_some() || e.done.is_some() || e.delete.is_some()
    }

    /// The HTTP calls the plugin made since they were last taken.
    pub fn take_calls(&mut self) -> Vec<HttpCall> {
        std::mem::take(&mut self.store.data_mut().calls)
    }

    /// Opens a stream's context.
    pub fn open(&mut self) -> Result<Context, WasmError> {
        let context = self.next_context;
        self.next_context = self.next_context.checked_add(1).unwrap_or(ROOT + 1);
        let e = Arc::clone(&self.exports);
        self.call(
            "proxy_on_context_create",
            &e.context_create,
            (context, ROOT),
        )?;
        Ok(Context(context))
    }

    /// `proxy_on_request_headers` over `x.request`.
    pub fn request_headers(
        &mut self,
        c: Context,
        x: &mut Box<Exchange>,
        end_of_stream: bool,
    ) -> Result<Verdict, WasmError> {
        let n = x.request.headers.len() as i32 + 4;
        let e = Arc::clone(&self.exports);
        let Some(f) = &e.request_headers else {
            return Ok(Verdict::Continue);
        };
        self.on(x, |i| {
            i.action(
                "proxy_on_request_headers",
                f,
                (c.0, n, end_of_stream.into()),
            )
        })
    }

    /// `proxy_on_request_body` over `x.request_body` (the bytes not yet
    /// passed on: after a `Pause`, what was held plus the new chunk).
    pub fn request_body(
        &mut self,
        c: Context,
        x: &mut Box<Exchange>,
        end_of_stream: bool,
    ) -> Result<Verdict, WasmError> {
        let n = x.request_body.len() as i32;
        let e = Arc::clone(&self.exports);
        let Some(f) = &e.request_body else {
            return Ok(Verdict::Continue);
        };
        self.on(x, |i| {
            i.action("proxy_on_request_body", f, (c.0, n, end_of_stream.into()))
        })
    }

    /// `proxy_on_request_trailers` over `x.request_trailers`.
    pub fn request_trailers(
        &mut self,
        c: Context,
        x: &mut Box<Exchange>,
    ) -> Result<Verdict, WasmError> {
        let n = x.request_trailers.len() as i32;
        let e = Arc::clone(&self.exports);
        let Some(f) = &e.request_trailers else {
            return Ok(Verdict::Continue);
        };
        self.on(x, |i| i.action("proxy_on_request_trailers", f, (c.0, n)))
    }

    /// `proxy_on_response_headers` over `x.response`.
    pub fn response_headers(
        &mut self,
        c: Context,
        x: &mut Box<Exchange>,
        end_of_stream: bool,
    ) -> Result<Verdict, WasmError> {
        x.attributes.responded = true;
        let n = x.response.headers.len() as i32 + 1;
        let e = Arc::clone(&self.exports);
        let Some(f) = &e.response_headers else {
            return Ok(Verdict::Continue);
        };
        self.on(x, |i| {
            i.action(
                "proxy_on_response_headers",
                f,
                (c.0, n, end_of_stream.into()),
            )
        })
    }

    /// `proxy_on_response_body` over `x.response_body`.
    pub fn response_body(
        &mut self,
        c: Context,
        x: &mut Box<Exchange>,
        end_of_stream: bool,
    ) -> Result<Verdict, WasmError> {
        let n = x.response_body.len() as i32;
        let e = Arc::clone(&self.exports);
        let Some(f) = &e.response_body else {
            return Ok(Verdict::Continue);
        };
        self.on(x, |i| {
            i.action("proxy_on_response_body", f, (c.0, n, end_of_stream.into()))
        })
    }

    /// `proxy_on_response_trailers` over `x.response_trailers`.
    pub fn response_trailers(
        &mut self,
        c: Context,
        x: &mut Box<Exchange>,
    ) -> Result<Verdict, WasmError> {
        let n = x.response_trailers.len() as i32;
        let e = Arc::clone(&self.exports);
        let Some(f) = &e.response_trailers else {
            return Ok(Verdict::Continue);
        };
        self.on(x, |i| i.action("proxy_on_response_trailers", f, (c.0, n)))
    }

    /// Hands the answer to call `token` (`None`: it failed) to the root
    /// context, with stream `x` as the one it acts on. The verdict is
    /// `Continue` once the plugin resumed the stream, `Pause` while it
    /// waits on.
    pub fn call_response(
        &mut self,
        x: &mut Box<Exchange>,
        token: u32,
        response: Option<CallResponse>,
    ) -> Result<Verdict, WasmError> {
        let (n, size, t) = response.as_ref().map_or((0, 0, 0), |r| {
            (
                r.head.headers.len() as i32 + 1,
                r.body.len() as i32,
                r.trailers.len() as i32,
            )
        });
        self.store.data_mut().call_response = response;
        let e = Arc::clone(&self.exports);
        let verdict = self.on(x, |i| match &e.call_response {
            Some(f) => {
                i.call(
                    "proxy_on_http_call_response",
                    f,
                    (ROOT, token as i32, n, size, t),
                )?;
                Ok(None)
            }
            None => Ok(None),
        });
        self.store.data_mut().call_response = None;
        verdict
    }

    /// `proxy_on_tick` on the root context.
    pub fn tick(&mut self) -> Result<(), WasmError> {
        let e = Arc::clone(&self.exports);
        match &e.tick {
            Some(f) => self.call("proxy_on_tick", f, ROOT),
            None => Ok(()),
        }
    }

    /// `proxy_on_queue_ready` on the root context.
    pub fn queue_ready(&mut self, queue: u32) -> Result<(), WasmError> {
        let e = Arc::clone(&self.exports);
        match &e.queue_ready {
            Some(f) => self.call("proxy_on_queue_ready", f, (ROOT, queue as i32)),
            None => Ok(()),
        }
    }

    /// Ends a stream's context: log, done, delete.
    pub fn close(&mut self, c: Context, x: &mut Box<Exchange>) -> Result<(), WasmError> {
        let e = Arc::clone(&self.exports);
        let (log, done, delete) = (&e.log, &e.done, &e.delete);
        if log.is_none() && done.is_none() && delete.is_none() {
            return Ok(());
        }
        self.on(x, |i| {
            if let Some(f) = log {
                i.call("proxy_on_log", f, c.0)?;
            }
            if let Some(f) = done {
                i.call("proxy_on_done", f, c.0)?;
            }
            if let Some(f) = delete {
                i.call("proxy_on_delete", f, c.0)?;
            }
            Ok(None)
        })
        .map(|_| ())
    }

    /// Runs one stream callback with `x` moved in, then reads what the
    /// plugin decided. `None` from `run`: it returned no action (the
    /// stream goes on only if the plugin resumed it).
    fn on(
        &mut self,
        x: &mut Box<Exchange>,
        run: impl FnOnce(&mut Self) -> Result<Option<Action>, WasmError>,
    ) -> Result<Verdict, WasmError> {
        {
            let state = self.store.data_mut();
            std::mem::swap(&mut state.exchange, x);
            state.local_response = None;
            state.resumed = false;
            state.closed = false;
        }
        let ran = run(self);
        let state = self.store.data_mut();
        std::mem::swap(&mut state.exchange, x);
        let action = ran?;
        Ok(if let Some(r) = state.local_response.take() {
            Verdict::Respond(r)
        } else if state.closed {
            Verdict::Close
        } else {
            match action {
                Some(Action::Continue) => Verdict::Continue,
                _ if state.resumed => Verdict::Continue,
                Some(Action::Pause) | None => Verdict::Pause,
            }
        })
    }

    /// A callback returning an action.
    fn action<P>(
        &mut self,
        name: &str,
        f: &TypedFunc<P, i32>,
        params: P,
    ) -> Result<Option<Action>, WasmError>
    where
        P: wasmtime::WasmParams,
    {
        Ok(Some(Action::from_code(self.call(name, f, params)?)))
    }

    /// Calls `f` with a fresh CPU budget; a trap fails the instance.
    fn call<P, R>(&mut self, name: &str, f: &TypedFunc<P, R>, params: P) -> Result<R, WasmError>
    where
        P: wasmtime::WasmParams,
        R: wasmtime::WasmResults,
    {
        if let Some(why) = &self.failed {
            return Err(WasmError::Failed {
                plugin: self.plugin.name.to_string(),
                reason: why.clone(),
            });
        }
        let fuel = self.plugin.runtime.limits.fuel_per_call;
        self.store
            .set_fuel(fuel)
            .map_err(|e| WasmError::Engine(e.to_string()))?;
        f.call(&mut self.store, params).map_err(|e| {
            let reason = match e.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => {
                    format!("{name} exceeded its CPU budget ({fuel} instructions) and was cut")
                }
                _ => format!("{name} trapped: {e}"),
            };
            self.failed = Some(reason.clone());
            WasmError::Trap {
                plugin: self.plugin.name.to_string(),
                reason,
            }
        })
    }
}
