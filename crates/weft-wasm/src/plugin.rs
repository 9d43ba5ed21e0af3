//! Compiling and checking a plugin module once, for every instance that
//! runs it: the [`Runtime`] (one wasmtime engine, fuel metering on) and a
//! [`Plugin`] (a compiled module that exports what the ABI needs and
//! imports only what this host provides).

use std::sync::Arc;

use wasmtime::{Config, Engine, ExternType, Module};

use crate::WasmError;
use crate::host::provides;

/// The ABI versions a module may declare (by exporting a function of
/// this name); 0.2.0 differs from 0.2.1 only in calls weft does not need.
const ABI_MARKERS: [&str; 2] = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];

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
        let module = Module::new(&runtime.engine, bytes).map_err(|e| WasmError::Invalid {
            plugin: name.to_owned(),
            reason: format!("not a WebAssembly module: {e}"),
        })?;
        check(name, &module)?;
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

/// What a module must export and may import.
fn check(name: &str, module: &Module) -> Result<(), WasmError> {
    let invalid = |reason: String| WasmError::Invalid {
        plugin: name.to_owned(),
        reason,
    };
    let exports: Vec<(&str, ExternType)> = module.exports().map(|e| (e.name(), e.ty())).collect();
    let has = |wanted: &str| exports.iter().any(|(n, _)| *n == wanted);
    if !exports
        .iter()
        .any(|(n, t)| *n == "memory" && matches!(t, ExternType::Memory(_)))
    {
        return Err(invalid("it exports no memory named \"memory\"".into()));
    }
    if !ABI_MARKERS.iter().any(|m| has(m)) {
        let declared: Vec<&str> = exports
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| n.starts_with("proxy_abi_version_"))
            .collect();
        return Err(invalid(match declared.as_slice() {
            [] => {
                "it declares no Proxy-Wasm ABI version (no proxy_abi_version_0_2_1 export)".into()
            }
            other => format!(
                "it declares ABI {}; weft runs 0.2.1 (and 0.2.0)",
                other.join(", ")
            ),
        }));
    }
    if !has("proxy_on_memory_allocate") && !has("malloc") {
        return Err(invalid(
            "it exports no allocator (proxy_on_memory_allocate or malloc) for the host to return data through"
                .into(),
        ));
    }
    if !has("proxy_on_context_create") {
        return Err(invalid("it exports no proxy_on_context_create".into()));
    }
    for import in module.imports() {
        let (module_name, field) = (import.module(), import.name());
        if !provides(module_name, field) {
            return Err(invalid(format!(
                "it imports {module_name}.{field}, which weft's Proxy-Wasm host does not provide"
            )));
        }
    }
    Ok(())
}
