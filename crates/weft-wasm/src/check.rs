//! Checking a module before it runs, without running it: it must export
//! a memory, the Proxy-Wasm ABI marker (0.2.1 or 0.2.0), an allocator and
//! `proxy_on_context_create`, and import only calls this host provides.
//! Pure (wasmparser, no engine), so the control plane refuses a bad
//! module at validation time with the same reason a proxy would give.

use wasmparser::{ExternalKind, Parser, Payload};

use crate::WasmError;

/// The ABI versions a module may declare (by exporting a function of
/// this name); 0.2.0 differs from 0.2.1 only in calls weft does not need.
pub const ABI_MARKERS: [&str; 2] = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];

/// Every import this host provides, `(module, name)`.
pub const PROVIDED: &[(&str, &str)] = &[
    ("env", "proxy_log"),
    ("env", "proxy_get_log_level"),
    ("env", "proxy_get_current_time_nanoseconds"),
    ("env", "proxy_set_tick_period_milliseconds"),
    ("env", "proxy_get_buffer_bytes"),
    ("env", "proxy_set_buffer_bytes"),
    ("env", "proxy_get_header_map_pairs"),
    ("env", "proxy_set_header_map_pairs"),
    ("env", "proxy_get_header_map_value"),
    ("env", "proxy_replace_header_map_value"),
    ("env", "proxy_add_header_map_value"),
    ("env", "proxy_remove_header_map_value"),
    ("env", "proxy_get_header_map_size"),
    ("env", "proxy_get_property"),
    ("env", "proxy_set_property"),
    ("env", "proxy_send_local_response"),
    ("env", "proxy_continue_stream"),
    ("env", "proxy_close_stream"),
    ("env", "proxy_continue_request"),
    ("env", "proxy_continue_response"),
    ("env", "proxy_done"),
    ("env", "proxy_set_effective_context"),
    ("env", "proxy_define_metric"),
    ("env", "proxy_increment_metric"),
    ("env", "proxy_record_metric"),
    ("env", "proxy_get_metric"),
    ("env", "proxy_http_call"),
    ("env", "proxy_get_shared_data"),
    ("env", "proxy_set_shared_data"),
    ("env", "proxy_register_shared_queue"),
    ("env", "proxy_resolve_shared_queue"),
    ("env", "proxy_enqueue_shared_queue"),
    ("env", "proxy_dequeue_shared_queue"),
    ("env", "proxy_call_foreign_function"),
    ("env", "proxy_clear_route_cache"),
    ("env", "proxy_get_buffer_status"),
    ("env", "proxy_get_status"),
    ("env", "proxy_grpc_call"),
    ("env", "proxy_grpc_stream"),
    ("env", "proxy_grpc_send"),
    ("env", "proxy_grpc_cancel"),
    ("env", "proxy_grpc_close"),
    ("env", "abort"),
];

/// Whether this host provides import `module.name`.
pub fn provides(module: &str, name: &str) -> bool {
    PROVIDED.iter().any(|(m, n)| *m == module && *n == name)
        || (WASI_MODULES.contains(&module) && WASI_CALLS.contains(&name))
}

/// The WASI calls provided, under both module names toolchains use.
pub const WASI_MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

/// The WASI calls provided.
pub const WASI_CALLS: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_seek",
    "fd_fdstat_get",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "clock_time_get",
    "random_get",
    "sched_yield",
    "proc_exit",
];

/// What a checked module exports that the proxy cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The ABI marker it declares.
    pub abi: String,
    /// Its exported functions.
    pub exports: Vec<String>,
}

/// The module's binary form: `bytes` as given, or WebAssembly text
/// compiled.
pub fn binary<'a>(name: &str, bytes: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, WasmError> {
    wat::parse_bytes(bytes).map_err(|e| WasmError::Invalid {
        plugin: name.to_owned(),
        reason: format!("not a WebAssembly module: {e}"),
    })
}

/// Checks module `bytes` (binary or text) as plugin `name`.
pub fn check(name: &str, bytes: &[u8]) -> Result<ModuleInfo, WasmError> {
    let invalid = |reason: String| WasmError::Invalid {
        plugin: name.to_owned(),
        reason,
    };
    let bytes = binary(name, bytes)?;
    let mut exports: Vec<(String, ExternalKind)> = Vec::new();
    let mut imports: Vec<(String, String)> = Vec::new();
    for payload in Parser::new(0).parse_all(&bytes) {
        let payload = payload.map_err(|e| invalid(format!("not a WebAssembly module: {e}")))?;
        match payload {
            Payload::ExportSection(section) => {
                for export in section {
                    let export =
                        export.map_err(|e| invalid(format!("not a WebAssembly module: {e}")))?;
                    exports.push((export.name.to_owned(), export.kind));
                }
            }
            Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    let import =
                        import.map_err(|e| invalid(format!("not a WebAssembly module: {e}")))?;
                    imports.push((import.module.to_owned(), import.name.to_owned()));
                }
            }
            _ => {}
        }
    }
    let has = |wanted: &str| exports.iter().any(|(n, _)| n == wanted);
    if !exports
        .iter()
        .any(|(n, k)| n == "memory" && *k == ExternalKind::Memory)
    {
        return Err(invalid("it exports no memory named \"memory\"".into()));
    }
    let Some(abi) = ABI_MARKERS.iter().find(|m| has(m)) else {
        let declared: Vec<&str> = exports
            .iter()
            .map(|(n, _)| n.as_str())
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
    };
    if !has("proxy_on_memory_allocate") && !has("malloc") {
        return Err(invalid(
            "it exports no allocator (proxy_on_memory_allocate or malloc) for the host to return data through"
                .into(),
        ));
    }
    if !has("proxy_on_context_create") {
        return Err(invalid("it exports no proxy_on_context_create".into()));
    }
    for (module, field) in &imports {
        if !provides(module, field) {
            return Err(invalid(format!(
                "it imports {module}.{field}, which weft's Proxy-Wasm host does not provide"
            )));
        }
    }
    Ok(ModuleInfo {
        abi: (*abi).to_owned(),
        exports: exports
            .into_iter()
            .filter(|(_, k)| *k == ExternalKind::Func)
            .map(|(n, _)| n)
            .collect(),
    })
}

/// A module's SHA-256, lower-case hex (what `WasmPlugin` `sha256` pins).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
