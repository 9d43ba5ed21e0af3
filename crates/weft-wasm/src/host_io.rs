//! The calls that act on the stream or beyond the instance: bodies
//! (`proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`,
//! `proxy_get_buffer_status`), local responses, resuming and closing
//! (`proxy_continue_stream` & co.), `proxy_http_call` (recorded here,
//! carried out by the proxy once the callback returns), and what a
//! plugin's instances share: data with compare-and-swap and queues.

use std::sync::atomic::Ordering;
use std::time::Duration;

use wasmtime::Linker;

use crate::abi::{self, BufferType, Status};
use crate::memory::{Call, give, read, read_str, status, write};
use crate::state::{HostState, HttpCall, LocalResponse, MAX_QUEUE_ITEMS, Queue};

/// Longest `proxy_http_call` timeout honoured.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The bytes of buffer `kind`, for reading.
fn buffer(state: &HostState, kind: BufferType) -> &[u8] {
    match kind {
        BufferType::RequestBody => &state.exchange.request_body,
        BufferType::ResponseBody => &state.exchange.response_body,
        BufferType::HttpCallResponseBody => state.call_response.as_ref().map_or(&[], |c| &c.body),
        BufferType::VmConfiguration => &state.vm_config,
        BufferType::PluginConfiguration => &state.plugin_config,
    }
}

/// Lower-cased header pairs from the ABI's encoding.
fn pairs(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    Some(
        abi::decode_pairs(bytes)?
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).to_ascii_lowercase(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect(),
    )
}

pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    link_buffers(linker)?;
    link_control(linker)?;
    link_http_call(linker)?;
    link_shared(linker)
}

fn link_buffers(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: Call<'_>,
         kind: i32,
         start: i32,
         max: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> i32 {
            let Some(kind) = BufferType::from_code(kind) else {
                return Status::BadArgument.code();
            };
            // Clamped to what is there: SDKs ask for more than they know.
            let bytes = {
                let all = buffer(caller.data(), kind);
                let start = (start as u32 as usize).min(all.len());
                let end = start.saturating_add(max as u32 as usize).min(all.len());
                all[start..end].to_vec()
            };
            status(give(&mut caller, &bytes, ret_ptr, ret_len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut caller: Call<'_>, kind: i32, ret_len: i32, ret_flags: i32| -> i32 {
            let Some(kind) = BufferType::from_code(kind) else {
                return Status::BadArgument.code();
            };
            let len = buffer(caller.data(), kind).len() as u32;
            status(
                write(&mut caller, ret_len, &len.to_le_bytes())
                    .and_then(|()| write(&mut caller, ret_flags, &0u32.to_le_bytes())),
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut caller: Call<'_>, kind: i32, start: i32, len: i32, ptr: i32, size: i32| -> i32 {
            let bytes = match read(&mut caller, ptr, size) {
                Ok(b) => b,
                Err(s) => return s.code(),
            };
            let state = caller.data_mut();
            let body = match BufferType::from_code(kind) {
                Some(BufferType::RequestBody) => &mut state.exchange.request_body,
                Some(BufferType::ResponseBody) => &mut state.exchange.response_body,
                _ => return Status::BadArgument.code(),
            };
            // Replaces `start..start+len`, clamped to the buffer.
            let start = (start as u32 as usize).min(body.len());
            let end = start.saturating_add(len as u32 as usize).min(body.len());
            body.splice(start..end, bytes);
            Status::Ok.code()
        },
    )?;
    Ok(())
}

fn link_control(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: Call<'_>,
         code: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         _grpc_status: i32|
         -> i32 {
            let (details, body, headers) = match (
                read(&mut caller, details_ptr, details_len),
                read(&mut caller, body_ptr, body_len),
                read(&mut caller, headers_ptr, headers_len),
            ) {
                (Ok(d), Ok(b), Ok(h)) => (d, b, h),
                (Err(s), _, _) | (_, Err(s), _) | (_, _, Err(s)) => return s.code(),
            };
            let Some(headers) = pairs(&headers) else {
                return Status::ParseFailure.code();
            };
            let status = match u16::try_from(code) {
                Ok(s) if (100..=599).contains(&s) => s,
                _ => return Status::BadArgument.code(),
            };
            caller.data_mut().local_response = Some(LocalResponse {
                status,
                details: String::from_utf8_lossy(&details).into_owned(),
                body,
                headers,
            });
            Status::Ok.code()
        },
    )?;
    // Resuming: the proxy goes on once the callback returns.
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut caller: Call<'_>, _stream: i32| -> i32 {
            caller.data_mut().resumed = true;
            Status::Ok.code()
        },
    )?;
    for name in ["proxy_continue_request", "proxy_continue_response"] {
        linker.func_wrap("env", name, |mut caller: Call<'_>| -> i32 {
            caller.data_mut().resumed = true;
            Status::Ok.code()
        })?;
    }
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut caller: Call<'_>, _stream: i32| -> i32 {
            caller.data_mut().closed = true;
            Status::Ok.code()
        },
    )?;
    linker.func_wrap("env", "proxy_done", |_: Call<'_>| -> i32 {
        Status::Ok.code()
    })?;
    // The proxy binds the stream a callback acts on before calling it.
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |_: Call<'_>, _context: i32| -> i32 { Status::Ok.code() },
    )?;
    linker.func_wrap("env", "proxy_clear_route_cache", |_: Call<'_>| -> i32 {
        Status::Ok.code()
    })?;
    Ok(())
}

fn link_http_call(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: Call<'_>,
         upstream_ptr: i32,
         upstream_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         body_ptr: i32,
         body_len: i32,
         _trailers_ptr: i32,
         _trailers_len: i32,
         timeout_ms: i32,
         ret_token: i32|
         -> i32 {
            let (upstream, headers, body) = match (
                read_str(&mut caller, upstream_ptr, upstream_len),
                read(&mut caller, headers_ptr, headers_len),
                read(&mut caller, body_ptr, body_len),
            ) {
                (Ok(u), Ok(h), Ok(b)) => (u, h, b),
                (Err(s), _, _) | (_, Err(s), _) | (_, _, Err(s)) => return s.code(),
            };
            let Some(headers) = pairs(&headers) else {
                return Status::ParseFailure.code();
            };
            // Envoy's rule: a call names its method, path and authority.
            for required in [":method", ":path", ":authority"] {
                if !headers.iter().any(|(k, _)| k == required) {
                    return Status::BadArgument.code();
                }
            }
            let state = caller.data_mut();
            state.next_token = state.next_token.wrapping_add(1).max(1);
            let token = state.next_token;
            state.calls.push(HttpCall {
                token,
                upstream,
                headers,
                body,
                timeout: Duration::from_millis(u64::from(timeout_ms as u32)).min(MAX_CALL_TIMEOUT),
            });
            status(write(&mut caller, ret_token, &token.to_le_bytes()))
        },
    )?;
    Ok(())
}

fn link_shared(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut caller: Call<'_>,
         key_ptr: i32,
         key_len: i32,
         ret_ptr: i32,
         ret_len: i32,
         ret_cas: i32|
         -> i32 {
            let key = match read_str(&mut caller, key_ptr, key_len) {
                Ok(k) => k,
                Err(s) => return s.code(),
            };
            let shared = caller.data().shared.clone();
            let found = shared
                .data
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            let Some((value, cas)) = found else {
                return Status::NotFound.code();
            };
            status(
                give(&mut caller, &value, ret_ptr, ret_len)
                    .and_then(|()| write(&mut caller, ret_cas, &cas.to_le_bytes())),
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut caller: Call<'_>, key_ptr: i32, key_len: i32, ptr: i32, len: i32, cas: i32| -> i32 {
            let (key, value) = match (
                read_str(&mut caller, key_ptr, key_len),
                read(&mut caller, ptr, len),
            ) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            let shared = caller.data().shared.clone();
            let mut data = shared.data.lock().unwrap_or_else(|p| p.into_inner());
            let current = data.get(&key).map_or(0, |(_, c)| *c);
            // A non-zero cas must match the version read.
            if cas != 0 && cas as u32 != current {
                return Status::CasMismatch.code();
            }
            data.insert(key, (value, current.wrapping_add(1).max(1)));
            Status::Ok.code()
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut caller: Call<'_>, name_ptr: i32, name_len: i32, ret_id: i32| -> i32 {
            let name = match read_str(&mut caller, name_ptr, name_len) {
                Ok(n) => n,
                Err(s) => return s.code(),
            };
            let (shared, owner) = (caller.data().shared.clone(), caller.data().id);
            let id = {
                let mut queues = shared.queues.lock().unwrap_or_else(|p| p.into_inner());
                match queues.iter().position(|q| q.name == name) {
                    Some(i) => {
                        queues[i].owner = owner;
                        i
                    }
                    None => {
                        queues.push(Queue {
                            name,
                            owner,
                            items: Default::default(),
                        });
                        queues.len() - 1
                    }
                }
            };
            status(write(&mut caller, ret_id, &(id as u32).to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut caller: Call<'_>,
         _vm_ptr: i32,
         _vm_len: i32,
         name_ptr: i32,
         name_len: i32,
         ret_id: i32|
         -> i32 {
            let name = match read_str(&mut caller, name_ptr, name_len) {
                Ok(n) => n,
                Err(s) => return s.code(),
            };
            let shared = caller.data().shared.clone();
            let id = shared
                .queues
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .position(|q| q.name == name);
            match id {
                Some(id) => status(write(&mut caller, ret_id, &(id as u32).to_le_bytes())),
                None => Status::NotFound.code(),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut caller: Call<'_>, id: i32, ptr: i32, len: i32| -> i32 {
            let value = match read(&mut caller, ptr, len) {
                Ok(v) => v,
                Err(s) => return s.code(),
            };
            let shared = caller.data().shared.clone();
            let owner = {
                let mut queues = shared.queues.lock().unwrap_or_else(|p| p.into_inner());
                let Some(queue) = queues.get_mut(id as u32 as usize) else {
                    return Status::NotFound.code();
                };
                if queue.items.len() >= MAX_QUEUE_ITEMS {
                    return Status::InternalFailure.code();
                }
                queue.items.push_back(value);
                queue.owner
            };
            shared
                .ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((owner, id as u32));
            shared.queued.store(true, Ordering::Release);
            Status::Ok.code()
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut caller: Call<'_>, id: i32, ret_ptr: i32, ret_len: i32| -> i32 {
            let shared = caller.data().shared.clone();
            let item = {
                let mut queues = shared.queues.lock().unwrap_or_else(|p| p.into_inner());
                let Some(queue) = queues.get_mut(id as u32 as usize) else {
                    return Status::NotFound.code();
                };
                queue.items.pop_front()
            };
            match item {
                Some(v) => status(give(&mut caller, &v, ret_ptr, ret_len)),
                None => Status::Empty.code(),
            }
        },
    )?;
    Ok(())
}

/// A new instance id, unique among the plugin's instances.
pub(crate) fn instance_id(shared: &crate::state::Shared) -> u64 {
    shared.next_instance.fetch_add(1, Ordering::Relaxed) + 1
}
