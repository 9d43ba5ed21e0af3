//! What the plugin tests share: a WebAssembly-text plugin skeleton, a
//! runtime, and one request stream through an instance.

#![allow(dead_code)]

use weft_wasm::{Exchange, Instance, Limits, Plugin, Runtime, Settings, Verdict, WasmError};

/// A plugin module: memory, allocator, ABI marker and the context
/// callback around `body` (more imports, data and functions).
pub(crate) fn module(imports: &str, body: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (global $next (mut i32) (i32.const 65536))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (local.get $at))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  {body}
)"#
    )
}

pub(crate) fn runtime(fuel: u64) -> Runtime {
    Runtime::new(Limits {
        memory_bytes: 4 << 20,
        fuel_per_call: fuel,
    })
    .expect("runtime")
}

pub(crate) fn start(wat: &str, settings: &Settings) -> Result<Instance, WasmError> {
    let plugin = Plugin::compile(&runtime(1_000_000), "test-plugin", wat.as_bytes())?;
    Instance::start(&plugin, settings, std::sync::Arc::default())
}

/// A `GET /` with one header.
pub(crate) fn headers() -> Box<Exchange> {
    let mut x = Box::<Exchange>::default();
    x.request.uri = "/".parse().expect("valid");
    x.request
        .headers
        .insert("host", http::HeaderValue::from_static("shop"));
    x
}

/// One stream through `instance`: context, request headers, end.
pub(crate) fn run(instance: &mut Instance, x: &mut Box<Exchange>) -> Result<Verdict, WasmError> {
    let c = instance.open()?;
    let verdict = instance.request_headers(c, x, true)?;
    instance.close(c, x)?;
    Ok(verdict)
}

pub(crate) fn header<'a>(x: &'a Exchange, name: &str) -> Option<&'a str> {
    x.request.headers.get(name).and_then(|v| v.to_str().ok())
}
