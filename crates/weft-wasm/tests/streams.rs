//! Streams beyond one request-header callback, with WebAssembly-text
//! plugins: a response body held (`Pause`) until its end and rewritten,
//! an HTTP call made, answered and acted on, data shared between
//! instances with compare-and-swap, a queue filled by one instance and
//! drained by its owner, ticks.

mod support;

use std::sync::Arc;

use http::StatusCode;
use weft_wasm::{CallResponse, Instance, Plugin, Settings, Verdict};

use support::{header, headers, module, runtime, start};

/// `bytes` as a WebAssembly-text string literal's contents.
fn escaped(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

#[test]
fn a_response_body_is_held_to_its_end_and_rewritten() {
    let wat = module(
        r#"(import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 1024) "rewritten by plugin")
  (func (export "proxy_on_response_body") (param $ctx i32) (param $size i32) (param $end i32) (result i32)
    (if (i32.eqz (local.get $end)) (then (return (i32.const 1))))
    (drop (call $set (i32.const 1) (i32.const 0) (local.get $size) (i32.const 1024) (i32.const 19)))
    (i32.const 0))"#,
    );
    let mut instance = start(&wat, &Settings::default()).expect("starts");
    let mut x = headers();
    let c = instance.open().expect("context");
    assert_eq!(
        instance.request_headers(c, &mut x, true).expect("runs"),
        Verdict::Continue,
        "no request callback: continues"
    );
    x.response.status = StatusCode::OK;
    assert_eq!(
        instance.response_headers(c, &mut x, false).expect("runs"),
        Verdict::Continue
    );
    x.response_body = b"first half, ".to_vec();
    assert_eq!(
        instance.response_body(c, &mut x, false).expect("runs"),
        Verdict::Pause,
        "held until the end"
    );
    x.response_body.extend_from_slice(b"second half");
    assert_eq!(
        instance.response_body(c, &mut x, true).expect("runs"),
        Verdict::Continue
    );
    assert_eq!(x.response_body, b"rewritten by plugin");
    instance.close(c, &mut x).expect("ends");
}

/// Calls `auth` on every request and lets it through with `x-auth: ok`
/// when the answer is 200; otherwise (or when the call failed) 403.
fn calling_plugin() -> String {
    let call = weft_wasm::abi::encode_pairs(&[
        (":method", "GET"),
        (":path", "/check"),
        (":authority", "auth"),
    ]);
    module(
        r#"(import "env" "proxy_http_call"
    (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(
            r#"(data (i32.const 1024) "outbound|9080||auth.svc.cluster.local")
  (data (i32.const 1100) "{}")
  (data (i32.const 1300) ":status200x-authok")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $call (i32.const 1024) (i32.const 37) (i32.const 1100) (i32.const {})
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1500) (i32.const 2000)))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (if (i32.eqz (call $get (i32.const 6) (i32.const 1300) (i32.const 7) (i32.const 2004) (i32.const 2008)))
      (then
        (if (i32.and
              (i32.eq (i32.load (i32.const 2008)) (i32.const 3))
              (i32.and
                (i32.eq (i32.load16_u (i32.load (i32.const 2004))) (i32.load16_u (i32.const 1307)))
                (i32.eq (i32.load8_u (i32.add (i32.load (i32.const 2004)) (i32.const 2)))
                        (i32.load8_u (i32.const 1309)))))
          (then
            (drop (call $add (i32.const 0) (i32.const 1310) (i32.const 6) (i32.const 1316) (i32.const 2)))
            (drop (call $continue (i32.const 0)))
            (return)))))
    (drop (call $respond (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
      (i32.const 0) (i32.const 0) (i32.const -1))))"#,
            escaped(&call),
            call.len()
        ),
    )
}

fn answer(status: u16) -> Option<CallResponse> {
    let mut r = CallResponse::default();
    r.head.status = StatusCode::from_u16(status).expect("valid");
    Some(r)
}

#[test]
fn a_plugin_calls_a_service_and_acts_on_the_answer() {
    let mut instance = start(&calling_plugin(), &Settings::default()).expect("starts");
    let mut x = headers();
    let c = instance.open().expect("context");
    assert_eq!(
        instance.request_headers(c, &mut x, true).expect("runs"),
        Verdict::Pause,
        "waits for its call"
    );
    let calls = instance.take_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.upstream, "outbound|9080||auth.svc.cluster.local");
    assert!(call.headers.contains(&(":path".into(), "/check".into())));
    assert_eq!(call.timeout, std::time::Duration::from_millis(1500));
    assert!(instance.take_calls().is_empty(), "taken once");
    assert_eq!(
        instance
            .call_response(&mut x, call.token, answer(200))
            .expect("runs"),
        Verdict::Continue
    );
    assert_eq!(header(&x, "x-auth"), Some("ok"));
    instance.close(c, &mut x).expect("ends");

    // Refused by the service, or the call failed: 403.
    for response in [answer(503), None] {
        let mut x = headers();
        let c = instance.open().expect("context");
        instance.request_headers(c, &mut x, true).expect("runs");
        let token = instance.take_calls()[0].token;
        let verdict = instance
            .call_response(&mut x, token, response)
            .expect("runs");
        assert!(
            matches!(verdict, Verdict::Respond(ref r) if r.status == 403),
            "{verdict:?}"
        );
        assert_eq!(header(&x, "x-auth"), None);
        instance.close(c, &mut x).expect("ends");
    }
}

#[test]
fn instances_share_data_with_compare_and_swap() {
    let wat = module(
        r#"(import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 1024) "colourbluex-shared")
  ;; with a pluginConfig: writes; a stale cas must be refused (8).
  (func (export "proxy_on_configure") (param i32) (param $size i32) (result i32)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 1))))
    (if (call $set (i32.const 1024) (i32.const 6) (i32.const 1030) (i32.const 4) (i32.const 0))
      (then unreachable))
    (if (i32.ne (call $set (i32.const 1024) (i32.const 6) (i32.const 1030) (i32.const 4) (i32.const 99))
                (i32.const 8))
      (then unreachable))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get (i32.const 1024) (i32.const 6) (i32.const 2000) (i32.const 2004) (i32.const 2008)))
      (then (drop (call $add (i32.const 0) (i32.const 1034) (i32.const 8)
        (i32.load (i32.const 2000)) (i32.load (i32.const 2004))))))
    (i32.const 0))"#,
    );
    let plugin = Plugin::compile(&runtime(1_000_000), "sharer", wat.as_bytes()).expect("compiles");
    let shared = weft_wasm::SharedRef::default();
    let writer = Settings {
        plugin_config: b"write".to_vec(),
        ..Settings::default()
    };
    let mut reader = Instance::start(&plugin, &Settings::default(), shared.clone()).expect("r");
    let mut x = headers();
    support::run(&mut reader, &mut x).expect("runs");
    assert_eq!(header(&x, "x-shared"), None, "nothing written yet");
    Instance::start(&plugin, &writer, shared.clone()).expect("writes");
    let mut x = headers();
    support::run(&mut reader, &mut x).expect("runs");
    assert_eq!(header(&x, "x-shared"), Some("blue"));
    // Another plugin's instances do not see it.
    let mut stranger = Instance::start(&plugin, &Settings::default(), Arc::default()).expect("s");
    let mut x = headers();
    support::run(&mut stranger, &mut x).expect("runs");
    assert_eq!(header(&x, "x-shared"), None);
}

#[test]
fn a_queue_filled_by_one_instance_is_drained_by_its_owner_and_ticks_run() {
    let wat = module(
        r#"(import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $resolve (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $period (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))"#,
        r#"(data (i32.const 1024) "eventshellodrainedticks")
  ;; with a pluginConfig: owns queue "events" and ticks every 50 ms.
  (func (export "proxy_on_configure") (param i32) (param $size i32) (result i32)
    (drop (call $define (i32.const 0) (i32.const 1035) (i32.const 7) (i32.const 2100)))
    (drop (call $define (i32.const 0) (i32.const 1042) (i32.const 5) (i32.const 2104)))
    (if (local.get $size) (then
      (drop (call $register (i32.const 1024) (i32.const 6) (i32.const 2000)))
      (drop (call $period (i32.const 50)))))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (call $resolve (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 6) (i32.const 2010))
      (then unreachable))
    (drop (call $enqueue (i32.load (i32.const 2010)) (i32.const 1030) (i32.const 5)))
    (i32.const 0))
  (func (export "proxy_on_queue_ready") (param i32) (param $queue i32)
    (loop $more
      (if (i32.eqz (call $dequeue (local.get $queue) (i32.const 2020) (i32.const 2024)))
        (then
          (drop (call $inc (i32.load (i32.const 2100)) (i64.extend_i32_u (i32.load (i32.const 2024)))))
          (br $more)))))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $inc (i32.load (i32.const 2104)) (i64.const 1))))"#,
    );
    let plugin = Plugin::compile(&runtime(1_000_000), "queues", wat.as_bytes()).expect("compiles");
    let shared = weft_wasm::SharedRef::default();
    let owning = Settings {
        plugin_config: b"own".to_vec(),
        ..Settings::default()
    };
    let mut owner = Instance::start(&plugin, &owning, shared.clone()).expect("owner");
    let mut other = Instance::start(&plugin, &Settings::default(), shared.clone()).expect("other");
    assert_eq!(
        owner.tick_period(),
        Some(std::time::Duration::from_millis(50))
    );
    assert_eq!(other.tick_period(), None);
    for _ in 0..2 {
        support::run(&mut other, &mut headers()).expect("enqueues");
    }
    assert!(shared.take_ready(other.id()).is_empty());
    let ready = shared.take_ready(owner.id());
    assert_eq!(ready.len(), 1, "one notice per queue: {ready:?}");
    owner.queue_ready(ready[0]).expect("drains");
    owner.tick().expect("ticks");
    owner.tick().expect("ticks");
    let metrics = shared.metrics();
    let value = |name: &str| metrics.iter().find(|m| m.name == name).map(|m| m.value);
    assert_eq!(value("drained"), Some(10), "two items of five bytes");
    assert_eq!(value("ticks"), Some(2));
}
