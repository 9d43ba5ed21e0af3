//! Compiling a plugin module once, for every instance that runs it: the
//! [`Runtime`] (one wasmtime engine, fuel metering on) and a [`Plugin`]
//! (a module [`crate::check`]ed, then compiled).

use std::sync::Arc;

use wasmtime::{Config, Engine, Module};

use crate::WasmError;

/// The limits every instance runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory an instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Fuel (about one unit per WebAssembly instruction) one callback may
    /// burn before it is cut.
    pub fuel_per_call: u64,
}

impl Default for Limits {
    /// 64 MiB and 20 million instructions (a few milliseconds).
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            fuel_per_call: 20_000_000,
        }
    }
}

/// The engine plugins are compiled with and run on.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// An engine metering fuel, running instances under `limits`.
    pub fn new(limits: Limits) -> Result<Runtime, WasmError> {
        let mut config = Config::new();
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(|e| WasmError::Engine(e.to_string()))?;
        Ok(Runtime { engine, limits })
    }

    /// The limits instances run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// A compiled, checked plugin module.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) name: Arc<str>,
    pub(crate) module: Module,
    pub(crate) runtime: Runtime,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plugin({})", self.name)
    }
}

impl Plugin {
    /// Compiles `bytes` (a `.wasm` module, or WebAssembly text) as plugin
    /// `name`, refusing a module that does not speak the ABI or imports
    /// what this host does not provide.
    pub fn compile(runtime: &Runtime, name: &str, bytes: &[u8]) -> Result<Plugin, WasmError> {
        crate::check::check(name, bytes)?;
        let module = Module::new(&runtime.engine, bytes).map_err(|e| WasmError::Invalid {
            plugin: name.to_owned(),
            reason: format!("not a WebAssembly module: {e}"),
        })?;
        Ok(Plugin {
            name: name.into(),
            module,
            runtime: runtime.clone(),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
