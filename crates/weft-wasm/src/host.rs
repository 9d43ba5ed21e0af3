//! The calls a plugin imports, as this host answers them (module `env`,
//! and the few `wasi_snapshot_preview1` calls toolchains link in), over
//! one instance's [`HostState`]. Every pointer a plugin passes is checked
//! against its memory; data returned to it is copied into memory it
//! allocates itself (`proxy_on_memory_allocate`, else `malloc`).
//!
//! This file links the basics (logs, time, properties, configuration),
//! header maps and metrics; `host_io.rs` the stream's bodies and control,
//! HTTP calls, shared data and queues. Calls this host does not carry
//! out (gRPC calls, foreign functions, the gRPC status) answer
//! `Unimplemented` and log, naming the plugin; they never fail the proxy.

use wasmtime::{FuncType, Linker, Val, ValType};

use crate::abi::{self, LogLevel, MetricType, Status};
use crate::memory::{Call, give, memory_and_state, read, read_str, slice, status, write};
use crate::state::{HostState, Metric};

fn unimplemented(caller: &Call<'_>, call: &str) -> i32 {
    tracing::warn!(
        plugin = %caller.data().plugin,
        call,
        "Proxy-Wasm call not supported by weft yet; the plugin gets Unimplemented"
    );
    Status::Unimplemented.code()
}

/// The `env` module: the Proxy-Wasm calls.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    link_basics(linker)?;
    link_maps(linker)?;
    crate::host_io::link(linker)?;
    link_metrics(linker)?;
    link_unimplemented(linker)?;
    crate::wasi::link(linker)
}

fn link_basics(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut caller: Call<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            let message = match read(&mut caller, ptr, len) {
                Ok(m) => String::from_utf8_lossy(&m).into_owned(),
                Err(s) => return s.code(),
            };
            let plugin = caller.data().plugin.clone();
            match LogLevel::from_code(level) {
                Some(LogLevel::Trace) => tracing::trace!(%plugin, "{message}"),
                Some(LogLevel::Debug) => tracing::debug!(%plugin, "{message}"),
                Some(LogLevel::Info) => tracing::info!(%plugin, "{message}"),
                Some(LogLevel::Warn) => tracing::warn!(%plugin, "{message}"),
                Some(LogLevel::Error | LogLevel::Critical) => {
                    tracing::error!(%plugin, "{message}")
                }
                None => return Status::BadArgument.code(),
            }
            Status::Ok.code()
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut caller: Call<'_>, ret: i32| -> i32 {
            let level: u32 = if tracing::enabled!(tracing::Level::TRACE) {
                0
            } else if tracing::enabled!(tracing::Level::DEBUG) {
                1
            } else {
                2
            };
            status(write(&mut caller, ret, &level.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut caller: Call<'_>, ret: i32| -> i32 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            status(write(&mut caller, ret, &now.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut caller: Call<'_>, ms: i32| -> i32 {
            caller.data_mut().tick_period_ms = ms as u32;
            Status::Ok.code()
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut caller: Call<'_>, ptr: i32, len: i32, ret_ptr: i32, ret_len: i32| -> i32 {
            let path = match read(&mut caller, ptr, len) {
                Ok(p) => p,
                Err(s) => return s.code(),
            };
            let state = caller.data();
            let names = crate::properties::Names {
                plugin: &state.plugin,
                root_id: &state.root_id,
            };
            let Some(value) = crate::properties::property(&path, &state.exchange, names) else {
                return Status::NotFound.code();
            };
            status(give(&mut caller, &value, ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: Call<'_>, ptr: i32, len: i32, value_ptr: i32, value_len: i32| -> i32 {
            let (path, value) = match (
                read(&mut caller, ptr, len),
                read(&mut caller, value_ptr, value_len),
            ) {
                (Ok(p), Ok(v)) => (p, v),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            caller
                .data_mut()
                .exchange
                .attributes
                .set
                .push((path, value));
            Status::Ok.code()
        },
    )?;
    Ok(())
}

fn link_maps(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: Call<'_>, kind: i32, ret_ptr: i32, ret_len: i32| -> i32 {
            let Some(map) = caller.data_mut().map(kind) else {
                return Status::BadArgument.code();
            };
            let bytes = abi::encode_pairs(&map.pairs());
            status(give(&mut caller, &bytes, ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: Call<'_>, kind: i32, ptr: i32, len: i32| -> i32 {
            let bytes = match read(&mut caller, ptr, len) {
                Ok(b) => b,
                Err(s) => return s.code(),
            };
            let Some(pairs) = abi::decode_pairs(&bytes) else {
                return Status::ParseFailure.code();
            };
            let pairs: Vec<(String, String)> = pairs
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).to_ascii_lowercase(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect();
            let Some(mut map) = caller.data_mut().map(kind) else {
                return Status::BadArgument.code();
            };
            status(map.set_all(&pairs))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut caller: Call<'_>,
         kind: i32,
         key_ptr: i32,
         key_len: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> i32 {
            let key = match read_str(&mut caller, key_ptr, key_len) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(s) => return s.code(),
            };
            let Some(map) = caller.data_mut().map(kind) else {
                return Status::BadArgument.code();
            };
            let Some(value) = map.get(&key).map(|v| v.into_owned()) else {
                return Status::NotFound.code();
            };
            status(give(&mut caller, &value, ret_ptr, ret_len))
        },
    )?;
    // Replace (set, dropping other values of the name) and add (append),
    // read from the plugin's memory without copying.
    for (name, replace) in [
        ("proxy_replace_header_map_value", true),
        ("proxy_add_header_map_value", false),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut caller: Call<'_>,
                  kind: i32,
                  key_ptr: i32,
                  key_len: i32,
                  value_ptr: i32,
                  value_len: i32|
                  -> i32 {
                let (memory, state) = match memory_and_state(&mut caller) {
                    Ok(m) => m,
                    Err(s) => return s.code(),
                };
                let (key, value) = match (
                    slice(memory, key_ptr, key_len),
                    slice(memory, value_ptr, value_len),
                ) {
                    (Ok(k), Ok(v)) => (k, v),
                    (Err(s), _) | (_, Err(s)) => return s.code(),
                };
                let Some(mut map) = state.map(kind) else {
                    return Status::BadArgument.code();
                };
                status(map.put_bytes(key, value, replace))
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Call<'_>, kind: i32, key_ptr: i32, key_len: i32| -> i32 {
            let key = match read_str(&mut caller, key_ptr, key_len) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(s) => return s.code(),
            };
            let Some(mut map) = caller.data_mut().map(kind) else {
                return Status::BadArgument.code();
            };
            map.remove(&key);
            Status::Ok.code()
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut caller: Call<'_>, kind: i32, ret: i32| -> i32 {
            let Some(map) = caller.data_mut().map(kind) else {
                return Status::BadArgument.code();
            };
            let size = map.encoded_size() as u32;
            status(write(&mut caller, ret, &size.to_le_bytes()))
        },
    )?;
    Ok(())
}

fn link_metrics(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: Call<'_>, kind: i32, name_ptr: i32, name_len: i32, ret: i32| -> i32 {
            let Some(kind) = MetricType::from_code(kind) else {
                return Status::BadArgument.code();
            };
            let name = match read_str(&mut caller, name_ptr, name_len) {
                Ok(n) => n,
                Err(s) => return s.code(),
            };
            let id = {
                let shared = caller.data().shared.clone();
                let mut metrics = shared.metrics.lock().unwrap_or_else(|p| p.into_inner());
                match metrics.iter().position(|m| m.name == name) {
                    Some(i) => i,
                    None => {
                        metrics.push(Metric {
                            name,
                            kind,
                            value: 0,
                        });
                        metrics.len() - 1
                    }
                }
            };
            status(write(&mut caller, ret, &(id as u32).to_le_bytes()))
        },
    )?;
    for (name, add) in [
        ("proxy_increment_metric", true),
        ("proxy_record_metric", false),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |caller: Call<'_>, id: i32, value: i64| -> i32 {
                let shared = caller.data().shared.clone();
                let mut metrics = shared.metrics.lock().unwrap_or_else(|p| p.into_inner());
                let Some(metric) = metrics.get_mut(id as u32 as usize) else {
                    return Status::NotFound.code();
                };
                if add {
                    metric.value = metric.value.saturating_add(value);
                } else {
                    metric.value = value;
                }
                Status::Ok.code()
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut caller: Call<'_>, id: i32, ret: i32| -> i32 {
            let value = {
                let shared = caller.data().shared.clone();
                let metrics = shared.metrics.lock().unwrap_or_else(|p| p.into_inner());
                match metrics.get(id as u32 as usize) {
                    Some(m) => m.value as u64,
                    None => return Status::NotFound.code(),
                }
            };
            status(write(&mut caller, ret, &value.to_le_bytes()))
        },
    )?;
    Ok(())
}

/// The calls not carried out, by their number of `i32` parameters (each
/// returns an `i32` status): they answer `Unimplemented` and log.
const UNIMPLEMENTED: &[(&str, usize)] = &[
    ("proxy_get_status", 3),
    ("proxy_grpc_call", 12),
    ("proxy_grpc_stream", 9),
    ("proxy_grpc_send", 4),
    ("proxy_grpc_cancel", 1),
    ("proxy_grpc_close", 1),
    ("proxy_call_foreign_function", 6),
];

fn link_unimplemented(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for &(name, params) in UNIMPLEMENTED {
        let ty = FuncType::new(
            linker.engine(),
            std::iter::repeat_n(ValType::I32, params),
            [ValType::I32],
        );
        linker.func_new("env", name, ty, move |caller, _params, results| {
            results[0] = Val::I32(unimplemented(&caller, name));
            Ok(())
        })?;
    }
    // AssemblyScript's abort: the plugin failed.
    linker.func_wrap(
        "env",
        "abort",
        |caller: Call<'_>, _: i32, _: i32, line: i32, column: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "plugin {} aborted at {line}:{column}",
                caller.data().plugin
            )))
        },
    )?;
    Ok(())
}
