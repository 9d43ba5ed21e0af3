//! Plugins written in WebAssembly text against the Proxy-Wasm ABI (as a
//! C or Rust SDK would compile them: a bump allocator, the ABI marker,
//! the callbacks), run by the host: adding a header, denying with a local
//! response, reading the caller's identity property, counting a metric,
//! reading their configuration; a plugin that loops forever is cut by its
//! CPU budget, one that traps fails alone, and modules that are not
//! plugins are refused at compile time with the reason.

use std::sync::Arc;

use weft_wasm::{Instance, Plugin, Settings, Verdict, WasmError};

mod support;

use support::{header, headers, module, run, runtime, start};

const ADD_HEADER: &str = r#"(import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))"#;

#[test]
fn a_plugin_adds_a_request_header() {
    let wat = module(
        ADD_HEADER,
        r#"(data (i32.const 1024) "x-plugin")
  (data (i32.const 1040) "seen")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 1024) (i32.const 8) (i32.const 1040) (i32.const 4)))
    (i32.const 0))"#,
    );
    let mut instance = start(&wat, &Settings::default()).expect("starts");
    let mut x = headers();
    let verdict = run(&mut instance, &mut x).expect("runs");
    assert_eq!(verdict, Verdict::Continue);
    assert_eq!(header(&x, "x-plugin"), Some("seen"));
    assert_eq!(x.request.headers.len(), 2, "the others kept");
}

#[test]
fn a_plugin_denies_with_a_local_response() {
    let wat = module(
        r#"(import "env" "proxy_send_local_response"
    (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 1024) "denied by plugin")
  (data (i32.const 1056) "not allowed\n")
  ;; one header: x-denied-by: plugin
  (data (i32.const 1088) "\01\00\00\00\0b\00\00\00\06\00\00\00x-denied-by\00plugin\00")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $respond (i32.const 403)
      (i32.const 1024) (i32.const 16)
      (i32.const 1056) (i32.const 12)
      (i32.const 1088) (i32.const 32)
      (i32.const -1)))
    (i32.const 1))"#,
    );
    let mut instance = start(&wat, &Settings::default()).expect("starts");
    let verdict = run(&mut instance, &mut headers()).expect("runs");
    let Verdict::Respond(r) = verdict else {
        panic!("not denied: {verdict:?}");
    };
    assert_eq!(r.status, 403);
    assert_eq!(r.body, b"not allowed\n");
    assert_eq!(r.details, "denied by plugin");
    assert_eq!(r.headers, [("x-denied-by".to_owned(), "plugin".to_owned())]);
}

#[test]
fn a_plugin_reads_the_callers_identity_and_decides_on_it() {
    // Copies connection.uri_san_peer_certificate into x-caller; without
    // one, denies.
    let wat = module(
        r#"(import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 1024) "connection\00uri_san_peer_certificate")
  (data (i32.const 1072) "x-caller")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.ne (call $prop (i32.const 1024) (i32.const 35) (i32.const 2000) (i32.const 2004)) (i32.const 0))
      (then
        (drop (call $respond (i32.const 401) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const -1)))
        (return (i32.const 1))))
    (drop (call $add (i32.const 0) (i32.const 1072) (i32.const 8)
      (i32.load (i32.const 2000)) (i32.load (i32.const 2004))))
    (i32.const 0))"#,
    );
    let mut instance = start(&wat, &Settings::default()).expect("starts");
    let identity = "spiffe://cluster.local/ns/shop/sa/frontend";
    let mut x = headers();
    x.attributes.peer_principal = Some(identity.into());
    assert_eq!(run(&mut instance, &mut x).expect("runs"), Verdict::Continue);
    assert_eq!(header(&x, "x-caller"), Some(identity));
    let verdict = run(&mut instance, &mut headers()).expect("runs");
    assert!(
        matches!(verdict, Verdict::Respond(ref r) if r.status == 401),
        "{verdict:?}"
    );
}

#[test]
fn a_plugin_counts_a_metric_its_instances_share() {
    let wat = module(
        r#"(import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))"#,
        r#"(data (i32.const 1024) "requests_seen")
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $define (i32.const 0) (i32.const 1024) (i32.const 13) (i32.const 2000)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $inc (i32.load (i32.const 2000)) (i64.const 1)))
    (i32.const 0))"#,
    );
    let plugin = Plugin::compile(&runtime(1_000_000), "counter", wat.as_bytes()).expect("compiles");
    let shared = weft_wasm::SharedRef::default();
    let mut a = Instance::start(&plugin, &Settings::default(), shared.clone()).expect("a");
    let mut b = Instance::start(&plugin, &Settings::default(), shared.clone()).expect("b");
    for _ in 0..3 {
        run(&mut a, &mut headers()).expect("a runs");
    }
    run(&mut b, &mut headers()).expect("b runs");
    let metrics = shared.metrics();
    assert_eq!(metrics.len(), 1);
    assert_eq!(
        (metrics[0].name.as_str(), metrics[0].value),
        ("requests_seen", 4)
    );
}

#[test]
fn a_plugin_reads_its_configuration_and_may_refuse_it() {
    // Refuses an empty pluginConfig; accepts any other.
    let wat = module(
        r#"(import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $buf (i32.const 7) (i32.const 0) (i32.const -1) (i32.const 2000) (i32.const 2004)))
    (i32.ne (i32.load (i32.const 2004)) (i32.const 0)))"#,
    );
    let configured = Settings {
        plugin_config: br#"{"header": "x-a"}"#.to_vec(),
        ..Settings::default()
    };
    start(&wat, &configured).expect("configured");
    let err = start(&wat, &Settings::default()).expect_err("refused");
    assert!(
        err.to_string()
            .contains("proxy_on_configure refused its pluginConfig"),
        "{err}"
    );
}

#[test]
fn a_plugin_that_loops_forever_is_cut_and_fails_alone() {
    let wat = module(
        "",
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 0))"#,
    );
    let plugin = Plugin::compile(&runtime(100_000), "spinner", wat.as_bytes()).expect("compiles");
    let mut instance =
        Instance::start(&plugin, &Settings::default(), Arc::default()).expect("starts");
    let err = run(&mut instance, &mut headers()).expect_err("cut");
    assert!(
        err.to_string()
            .contains("plugin spinner failed: proxy_on_request_headers exceeded its CPU budget"),
        "{err}"
    );
    assert!(instance.failed().is_some());
    let again = run(&mut instance, &mut headers()).expect_err("failed instance");
    assert!(
        again.to_string().contains("start a new instance"),
        "{again}"
    );
    // Another plugin's instance on the same runtime is unaffected.
    let fine = Plugin::compile(&runtime(100_000), "fine", module(ADD_HEADER, "").as_bytes())
        .expect("compiles");
    let mut other = Instance::start(&fine, &Settings::default(), Arc::default()).expect("starts");
    assert_eq!(
        run(&mut other, &mut headers()).expect("runs"),
        Verdict::Continue
    );
}

#[test]
fn a_plugin_that_traps_fails_with_its_name() {
    let wat = module(
        "",
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    unreachable)"#,
    );
    let mut instance = start(&wat, &Settings::default()).expect("starts");
    let err = run(&mut instance, &mut headers()).expect_err("traps");
    assert!(
        matches!(&err, WasmError::Trap { plugin, .. } if plugin == "test-plugin"),
        "{err}"
    );
}

#[test]
fn a_plugin_cannot_reach_outside_its_memory() {
    // Asks the host to read a key past the end of its memory.
    let wat = module(
        ADD_HEADER,
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.ne (call $add (i32.const 0) (i32.const 131000) (i32.const 4096) (i32.const 0) (i32.const 0))
                (i32.const 6))
      (then unreachable))
    (i32.const 0))"#,
    );
    let mut instance = start(&wat, &Settings::default()).expect("starts");
    let mut x = headers();
    run(&mut instance, &mut x).expect("InvalidMemoryAccess, not a crash");
    assert_eq!(x.request.headers, headers().request.headers);
}

#[test]
fn modules_that_are_not_plugins_are_refused_with_the_reason() {
    let rt = runtime(1_000);
    let cases = [
        (
            "(module (memory (export \"memory\") 1))",
            "declares no Proxy-Wasm ABI version",
        ),
        (
            r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_1_0")))"#,
            "declares ABI proxy_abi_version_0_1_0; weft runs 0.2.1",
        ),
        (
            r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
                 (func (export "proxy_on_context_create") (param i32 i32)))"#,
            "exports no allocator",
        ),
        (
            &module(
                r#"(import "env" "proxy_teleport" (func (param i32) (result i32)))"#,
                "",
            ),
            "imports env.proxy_teleport, which weft's Proxy-Wasm host does not provide",
        ),
        ("not wasm at all", "not a WebAssembly module"),
    ];
    for (wat, want) in cases {
        let err = Plugin::compile(&rt, "bad", wat.as_bytes()).expect_err(want);
        let text = err.to_string();
        assert!(
            text.starts_with("plugin bad: ") && text.contains(want),
            "{text}"
        );
    }
}

#[test]
fn a_memory_hungry_plugin_hits_its_cap() {
    let wat = module(
        "",
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; 4 MiB cap: growing by 100 pages (6.4 MiB) must fail (-1).
    (if (i32.ne (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable))
    (i32.const 0))"#,
    );
    let mut instance = start(&wat, &Settings::default()).expect("starts");
    run(&mut instance, &mut headers()).expect("growth refused, plugin carries on");
}

#[test]
fn calls_not_carried_out_answer_unimplemented() {
    // proxy_get_status (gRPC) links, and answers Unimplemented (12).
    let wat = module(
        r#"(import "env" "proxy_get_status" (func $status (param i32 i32 i32) (result i32)))"#,
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.ne (call $status (i32.const 2000) (i32.const 2004) (i32.const 2008)) (i32.const 12))
      (then unreachable))
    (i32.const 0))"#,
    );
    let mut instance = start(&wat, &Settings::default()).expect("starts");
    run(&mut instance, &mut headers()).expect("Unimplemented, not a trap");
}
