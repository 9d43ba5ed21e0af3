//! One running plugin: a wasmtime instance of a [`Plugin`] with its root
//! context started and configured, and the HTTP stream callbacks, each
//! run under the runtime's CPU budget (fuel) and memory cap. A callback
//! that traps or runs out of fuel fails the instance: it answers every
//! later call with that error, and its owner starts a new one.

use std::collections::HashMap;

use wasmtime::{Instance as Wasm, Linker, Store, StoreLimitsBuilder, Trap, TypedFunc};

use crate::WasmError;
use crate::abi::Action;
use crate::host;
use crate::plugin::Plugin;
use crate::state::{Headers, HostState, LocalResponse, Metrics};

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
}

/// What a stream callback decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on (with whatever the plugin changed in the headers).
    Continue,
    /// Answer with this instead.
    Respond(LocalResponse),
}

/// A started plugin instance.
pub struct Instance {
    plugin: Plugin,
    store: Store<HostState>,
    wasm: Wasm,
    next_context: i32,
    failed: Option<String>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Instance({})", self.plugin.name)
    }
}

impl Instance {
    /// Instantiates `plugin`, runs its start-up (`_initialize`), creates
    /// its root context and starts and configures it with `settings`.
    /// `metrics` collects what it defines (shared by its instances).
    pub fn start(
        plugin: &Plugin,
        settings: &Settings,
        metrics: Metrics,
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
            vm_config: settings.vm_config.clone(),
            plugin_config: settings.plugin_config.clone(),
            env: settings.env.clone(),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            request_trailers: Vec::new(),
            response_trailers: Vec::new(),
            local_response: None,
            properties: HashMap::new(),
            metrics,
            tick_period_ms: 0,
        };
        let mut store = Store::new(&runtime.engine, state);
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(runtime.limits.fuel_per_call)
            .map_err(|e| WasmError::Engine(e.to_string()))?;
        let wasm = linker
            .instantiate(&mut store, &plugin.module)
            .map_err(|e| WasmError::Start {
                plugin: plugin.name.to_string(),
                reason: e.to_string(),
            })?;
        let mut instance = Instance {
            plugin: plugin.clone(),
            store,
            wasm,
            next_context: ROOT + 1,
            failed: None,
        };
        for start in ["_initialize", "_start"] {
            if instance.has(start) {
                instance.call::<(), ()>(start, ())?;
                break;
            }
        }
        instance.call::<(i32, i32), ()>("proxy_on_context_create", (ROOT, 0))?;
        let vm_config = settings.vm_config.len() as i32;
        if instance.has("proxy_on_vm_start")
            && instance.call::<(i32, i32), i32>("proxy_on_vm_start", (ROOT, vm_config))? == 0
        {
            return Err(WasmError::Start {
                plugin: plugin.name.to_string(),
                reason: "proxy_on_vm_start returned false".into(),
            });
        }
        let config = settings.plugin_config.len() as i32;
        if instance.has("proxy_on_configure")
            && instance.call::<(i32, i32), i32>("proxy_on_configure", (ROOT, config))? == 0
        {
            return Err(WasmError::Start {
                plugin: plugin.name.to_string(),
                reason: "proxy_on_configure refused its pluginConfig".into(),
            });
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

    /// Runs the plugin on a request's headers (`headers`, which it may
    /// change), with `properties` (path → encoded value) readable, as one
    /// stream: its context is created, `proxy_on_request_headers` called
    /// with end of stream, then the context is logged, done and deleted.
    pub fn on_request_headers(
        &mut self,
        headers: &mut Headers,
        properties: HashMap<Vec<u8>, Vec<u8>>,
    ) -> Result<Verdict, WasmError> {
        let context = self.next_context;
        self.next_context = self.next_context.checked_add(1).unwrap_or(ROOT + 1);
        {
            let state = self.store.data_mut();
            state.request_headers = std::mem::take(headers);
            state.properties = properties;
            state.local_response = None;
        }
        let ran = self.stream(context);
        let state = self.store.data_mut();
        *headers = std::mem::take(&mut state.request_headers);
        let respond = state.local_response.take();
        state.properties.clear();
        ran?;
        Ok(match respond {
            Some(r) => Verdict::Respond(r),
            None => Verdict::Continue,
        })
    }

    fn stream(&mut self, context: i32) -> Result<(), WasmError> {
        self.call::<(i32, i32), ()>("proxy_on_context_create", (context, ROOT))?;
        let count = self.store.data().request_headers.len() as i32;
        let result = if self.has("proxy_on_request_headers") {
            let action =
                self.call::<(i32, i32, i32), i32>("proxy_on_request_headers", (context, count, 1));
            action.map(Action::from_code)
        } else {
            Ok(Action::Continue)
        };
        // The context ends whatever the callback did (unless it trapped:
        // the instance is then done for).
        if self.failed.is_none() {
            for (end, returns) in [
                ("proxy_on_log", false),
                ("proxy_on_done", true),
                ("proxy_on_delete", false),
            ] {
                if !self.has(end) {
                    continue;
                }
                if returns {
                    self.call::<i32, i32>(end, context)?;
                } else {
                    self.call::<i32, ()>(end, context)?;
                }
            }
        }
        // Pause is not held yet: read as Continue.
        result.map(|_| ())
    }

    fn has(&mut self, name: &str) -> bool {
        self.wasm.get_func(&mut self.store, name).is_some()
    }

    /// Calls export `name` with a fresh CPU budget; a trap fails the
    /// instance.
    fn call<P, R>(&mut self, name: &str, params: P) -> Result<R, WasmError>
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
        let func: TypedFunc<P, R> =
            self.wasm
                .get_typed_func(&mut self.store, name)
                .map_err(|e| WasmError::Start {
                    plugin: self.plugin.name.to_string(),
                    reason: format!("its {name} export has the wrong type: {e}"),
                })?;
        let fuel = self.plugin.runtime.limits.fuel_per_call;
        self.store
            .set_fuel(fuel)
            .map_err(|e| WasmError::Engine(e.to_string()))?;
        func.call(&mut self.store, params).map_err(|e| {
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
