//! A request's pass through a chain of WebAssembly-text plugins, without
//! the engine: which callbacks run when a plugin exports only some of
//! them (a request skips the others without entering an instance), and
//! that a plugin with only a stream's-end callback still sees the
//! response it logs.

use std::sync::Arc;

use weft_core::l7::{PluginPhase, WasmPlugin};
use weft_wasm::{Attributes, Plugin, Runtime, Settings};

use crate::extension::{Chain, Entry, Filter, NoDispatch, Run};

/// A plugin module: memory, allocator, ABI marker and `body`.
fn module(imports: &str, body: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (global $next (mut i32) (i32.const 65536))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (if (i32.gt_u (global.get $next) (i32.const 120000)) (then (global.set $next (i32.const 65536))))
    (local.get $at))
  (func (export "proxy_abi_version_0_2_1"))
  {body}
)"#
    )
}

const CONTEXT: &str = r#"(func (export "proxy_on_context_create") (param i32 i32))"#;
const ADD: &str = r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))"#;

fn filter(name: &str, wat: &str) -> Arc<Filter> {
    let runtime = Runtime::new(weft_wasm::Limits::default()).expect("runtime");
    let plugin = Plugin::compile(&runtime, name, wat.as_bytes()).expect("compiles");
    let spec = WasmPlugin {
        name: name.to_owned(),
        ..Default::default()
    };
    Filter::new(
        spec,
        plugin,
        Settings::default(),
        Arc::new(NoDispatch),
        Default::default(),
    )
    .expect("starts")
}

fn chain(filters: &[&Arc<Filter>]) -> Arc<Chain> {
    let entries = filters.iter().map(|f| Entry::Ready((*f).clone())).collect();
    Arc::new(Chain::new(entries))
}

/// One request through `chain`, answered with `status`; the request's
/// and the response's headers as the plugins left them.
async fn pass(chain: &Arc<Chain>, status: u16) -> (http::HeaderMap, http::HeaderMap) {
    let run = Run::start(chain, Attributes::default()).expect("plugins");
    let (mut request, ()) = http::Request::get("http://app/")
        .body(())
        .expect("request")
        .into_parts();
    run.request(PluginPhase::Unspecified, &mut request, true)
        .await
        .expect("request passes");
    let (mut response, ()) = http::Response::builder()
        .status(status)
        .body(())
        .expect("response")
        .into_parts();
    run.response(&mut response, true)
        .await
        .expect("response passes");
    drop(run);
    (request.headers, response.headers)
}

fn metric(filter: &Filter, name: &str) -> i64 {
    filter
        .shared()
        .metrics()
        .iter()
        .find(|m| m.name == name)
        .map_or(-1, |m| m.value)
}

#[tokio::test]
async fn heads_reach_only_the_plugins_with_callbacks_for_them() {
    let request_only = filter(
        "request-only",
        &module(
            ADD,
            &format!(
                r#"{CONTEXT}
  (data (i32.const 1024) "x-ayes")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 1024) (i32.const 3) (i32.const 1027) (i32.const 3)))
    (i32.const 0))"#
            ),
        ),
    );
    let response_only = filter(
        "response-only",
        &module(
            ADD,
            &format!(
                r#"{CONTEXT}
  (data (i32.const 1024) "x-byes")
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 1024) (i32.const 3) (i32.const 1027) (i32.const 3)))
    (i32.const 0))"#
            ),
        ),
    );
    let both = chain(&[&request_only, &response_only]);
    let (request, response) = pass(&both, 200).await;
    assert_eq!(request.get("x-a").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    assert!(request.get("x-b").is_none(), "{request:?}");
    assert_eq!(response.get("x-b").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    assert!(response.get("x-a").is_none(), "{response:?}");

    let alone = chain(&[&request_only]);
    let (request, response) = pass(&alone, 200).await;
    assert_eq!(request.get("x-a").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    assert!(response.is_empty(), "untouched: {response:?}");
}

#[tokio::test]
async fn a_plugin_with_only_a_log_callback_sees_every_stream_and_its_response() {
    // Counts the streams it is given a context for, and in
    // `proxy_on_log` the responses whose `:status` is 418.
    let logger = filter(
        "logger",
        &module(
            r#"(import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))"#,
            r#"(data (i32.const 1024) "streams")
  (data (i32.const 1040) "teapots")
  (data (i32.const 1056) ":status")
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $define (i32.const 0) (i32.const 1024) (i32.const 7) (i32.const 2000)))
    (drop (call $define (i32.const 0) (i32.const 1040) (i32.const 7) (i32.const 2004)))
    (i32.const 1))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (if (i32.ne (local.get $parent) (i32.const 0))
      (then (drop (call $inc (i32.load (i32.const 2000)) (i64.const 1))))))
  (func (export "proxy_on_log") (param i32)
    (local $at i32)
    (if (i32.ne (call $get (i32.const 2) (i32.const 1056) (i32.const 7) (i32.const 2008) (i32.const 2012)) (i32.const 0))
      (then (return)))
    (if (i32.ne (i32.load (i32.const 2012)) (i32.const 3)) (then (return)))
    (local.set $at (i32.load (i32.const 2008)))
    (if (i32.and
          (i32.and (i32.eq (i32.load8_u (local.get $at)) (i32.const 52))
                   (i32.eq (i32.load8_u (i32.add (local.get $at) (i32.const 1))) (i32.const 49)))
          (i32.eq (i32.load8_u (i32.add (local.get $at) (i32.const 2))) (i32.const 56)))
      (then (drop (call $inc (i32.load (i32.const 2004)) (i64.const 1))))))"#,
        ),
    );
    let logged = chain(&[&logger]);
    pass(&logged, 418).await;
    pass(&logged, 200).await;
    pass(&logged, 418).await;
    assert_eq!(metric(&logger, "streams"), 3, "a context per stream");
    assert_eq!(metric(&logger, "teapots"), 2, "the log saw each response");
}
