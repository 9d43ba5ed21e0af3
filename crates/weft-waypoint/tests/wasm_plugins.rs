//! Proxy-Wasm plugins in `weft gateway`, end to end in one process:
//! control plane, a node proxy, the sample app as the backend, and
//! `WasmPlugin`s (modules compiled here from WebAssembly text, loaded
//! from `file://`) on the listeners of a Gateway:
//!
//! - port A: `deny` (AUTHZ) answers 403 with a body when asked to;
//!   `add-header` (STATS) adds a header the backend sees; `counter`
//!   counts requests in a metric on /metrics; `rewrite` rewrites the
//!   response body when asked to; `faulty-closed` (AUTHN, FAIL_CLOSE)
//!   loops forever or traps when asked to: cut by its CPU budget or
//!   failed, the request gets 503 while other requests keep flowing;
//! - port B: `caller-ok` calls the backend (`proxy_http_call`) and lets
//!   the request through with `x-auth: ok` when it answers 200;
//!   `faulty-open` (FAIL_OPEN): its failures let requests through;
//! - port C: `caller-deny` gets 503 from its call and answers 403.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_testkit::{TestMesh, app};
use weft_waypoint::fronts::setup::WaypointOptions;

mod support;

const GATEWAY_IP: &str = "127.0.1.220";
const PORT_A: u16 = 18280;
const PORT_B: u16 = 18281;
const PORT_C: u16 = 18282;

/// A plugin module: memory, allocator, ABI marker and the context
/// callback around `body`.
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
  (func (export "proxy_on_context_create") (param i32 i32))
  {body}
)"#
    )
}

const GET: &str = r#"(import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))"#;
const ADD: &str = r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))"#;
const RESPOND: &str = r#"(import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#;

/// `bytes` as a WebAssembly-text string literal's contents.
fn escaped(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

fn add_header() -> String {
    module(
        ADD,
        r#"(data (i32.const 1024) "x-plugin-addedyes")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 1024) (i32.const 14) (i32.const 1038) (i32.const 3)))
    (i32.const 0))"#,
    )
}

fn deny() -> String {
    let headers = weft_wasm::abi::encode_pairs(&[("x-denied-by", "plugin")]);
    module(
        &format!("{GET}\n{RESPOND}"),
        &format!(
            r#"(data (i32.const 1024) "x-deny")
  (data (i32.const 1040) "denied by plugin")
  (data (i32.const 1060) "plugin says no\n")
  (data (i32.const 1100) "{}")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (call $get (i32.const 0) (i32.const 1024) (i32.const 6) (i32.const 2000) (i32.const 2004))
      (then (return (i32.const 0))))
    (drop (call $respond (i32.const 403) (i32.const 1040) (i32.const 16) (i32.const 1060) (i32.const 15)
      (i32.const 1100) (i32.const {}) (i32.const -1)))
    (i32.const 1))"#,
            escaped(&headers),
            headers.len()
        ),
    )
}

fn counter() -> String {
    module(
        r#"(import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))"#,
        r#"(data (i32.const 1024) "requests_seen")
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $define (i32.const 0) (i32.const 1024) (i32.const 13) (i32.const 2000)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $inc (i32.load (i32.const 2000)) (i64.const 1)))
    (i32.const 0))"#,
    )
}

/// Rewrites the response body of requests that carry `x-rewrite` (a
/// flag per context, kept in its memory).
fn rewrite() -> String {
    module(
        &format!(
            "{GET}\n{}",
            r#"(import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))"#
        ),
        r#"(data (i32.const 1024) "x-rewrite")
  (data (i32.const 1040) "rewritten by plugin\n")
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (i32.store8 (i32.add (i32.const 3000) (i32.and (local.get $ctx) (i32.const 255)))
      (i32.eqz (call $get (i32.const 0) (i32.const 1024) (i32.const 9) (i32.const 2000) (i32.const 2004))))
    (i32.const 0))
  (func (export "proxy_on_response_body") (param $ctx i32) (param $size i32) (param $end i32) (result i32)
    (if (i32.eqz (i32.load8_u (i32.add (i32.const 3000) (i32.and (local.get $ctx) (i32.const 255)))))
      (then (return (i32.const 0))))
    (if (i32.eqz (local.get $end)) (then (return (i32.const 1))))
    (drop (call $set (i32.const 1) (i32.const 0) (local.get $size) (i32.const 1040) (i32.const 20)))
    (i32.const 0))"#,
    )
}

/// Loops forever on `x-spin`, traps on `x-trap`.
fn faulty() -> String {
    module(
        GET,
        r#"(data (i32.const 1024) "x-spin")
  (data (i32.const 1040) "x-trap")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get (i32.const 0) (i32.const 1024) (i32.const 6) (i32.const 2000) (i32.const 2004)))
      (then (loop $forever (br $forever))))
    (if (i32.eqz (call $get (i32.const 0) (i32.const 1040) (i32.const 6) (i32.const 2000) (i32.const 2004)))
      (then unreachable))
    (i32.const 0))"#,
    )
}

/// Calls the backend's `path` and lets the request through with
/// `x-auth: ok` when it answers 200; otherwise answers 403.
fn caller(path: &str) -> String {
    let upstream = "outbound|80||backend.shop.svc.cluster.local";
    let call = weft_wasm::abi::encode_pairs(&[
        (":method", "GET"),
        (":path", path),
        (":authority", "backend.shop.svc.cluster.local"),
    ]);
    module(
        &format!(
            "{GET}\n{ADD}\n{RESPOND}\n{}",
            r#"(import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))"#
        ),
        &format!(
            r#"(data (i32.const 1024) "{upstream}")
  (data (i32.const 1100) "{call}")
  (data (i32.const 1300) ":status200x-authok")
  (data (i32.const 1330) "auth said no\n")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $call (i32.const 1024) (i32.const {upstream_len}) (i32.const 1100) (i32.const {call_len})
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 2000) (i32.const 2100)))
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
    (drop (call $respond (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 1330) (i32.const 13)
      (i32.const 0) (i32.const 0) (i32.const -1))))"#,
            upstream_len = upstream.len(),
            call = escaped(&call),
            call_len = call.len(),
        ),
    )
}

/// The `WasmPlugin` `name` running `file` on the edge's listener `port`.
fn plugin(name: &str, file: &std::path::Path, port: u16, extra: &str) -> String {
    format!(
        r#"---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: {name}, namespace: shop}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}]
  url: file://{file}
  match: [{{ports: [{{number: {port}}}]}}]
{extra}"#,
        file = file.display()
    )
}

fn config(dir: &std::path::Path) -> String {
    let write = |name: &str, wat: String| {
        let path = dir.join(format!("{name}.wasm"));
        std::fs::write(&path, wat::parse_str(&wat).expect("wat")).expect("module");
        path
    };
    let (add, deny, counter, rewrite, faulty, ok, refused) = (
        write("add_header", add_header()),
        write("deny", deny()),
        write("counter", counter()),
        write("rewrite", rewrite()),
        write("faulty", faulty()),
        write("caller_ok", caller("/status/200")),
        write("caller_deny", caller("/status/503")),
    );
    let mut yaml = support::edge_to_backend(
        "240.240.9.21",
        "127.0.1.221",
        GATEWAY_IP,
        &[("a", PORT_A), ("b", PORT_B), ("c", PORT_C)],
    );
    for (name, file, port, extra) in [
        ("deny", &deny, PORT_A, "  phase: AUTHZ\n"),
        ("add-header", &add, PORT_A, "  phase: STATS\n"),
        ("counter", &counter, PORT_A, ""),
        ("rewrite", &rewrite, PORT_A, ""),
        ("faulty-closed", &faulty, PORT_A, "  phase: AUTHN\n"),
        ("caller-ok", &ok, PORT_B, ""),
        (
            "faulty-open",
            &faulty,
            PORT_B,
            "  phase: AUTHN\n  failStrategy: FAIL_OPEN\n",
        ),
        ("caller-deny", &refused, PORT_C, ""),
    ] {
        yaml.push_str(&plugin(name, file, port, extra));
    }
    yaml
}

/// One GET on `port`: status and body.
async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let tcp = TcpStream::connect((GATEWAY_IP, port))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "edge.example.com");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = sender
        .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
        .await
        .expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("metrics");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_add_deny_rewrite_count_call_and_fail_by_their_strategy() {
    let modules = tempfile::tempdir().expect("tempdir");
    let mesh = TestMesh::start(&config(modules.path()), 1).await;
    app("127.0.1.221:8080", "backend").await;
    let gateway = weft_waypoint::fronts::gateway::start(WaypointOptions {
        wasm: weft_waypoint::extension::WasmLimits {
            memory_bytes: 16 << 20,
            fuel_per_call: 5_000_000,
        },
        ..support::options(&mesh, "shop/edge", GATEWAY_IP)
    })
    .await
    .expect("gateway");

    // Ready once the plugins run: the backend sees the added header.
    let started = Instant::now();
    loop {
        let (status, body) = get(PORT_A, "/headers", &[]).await;
        if status == 200 && body.contains("x-plugin-added") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "plugins never ran: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Port A.
    let (status, body) = get(PORT_A, "/headers", &[("x-deny", "1")]).await;
    assert_eq!((status, body.as_str()), (403, "plugin says no\n"));
    let (status, body) = get(PORT_A, "/headers", &[("x-rewrite", "1")]).await;
    assert_eq!((status, body.as_str()), (200, "rewritten by plugin\n"));
    let (status, body) = get(PORT_A, "/headers", &[]).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("x-plugin-added") && !body.contains("rewritten"),
        "{body}"
    );

    // A plugin looping forever is cut; requests meanwhile keep flowing.
    let spinning = tokio::spawn(get(PORT_A, "/headers", &[("x-spin", "1")]));
    for _ in 0..5 {
        assert_eq!(get(PORT_A, "/headers", &[]).await.0, 200);
    }
    let (status, body) = spinning.await.expect("spin");
    assert_eq!(status, 503, "FAIL_CLOSE: {body}");
    assert!(
        body.contains("faulty-closed") && body.contains("CPU budget"),
        "{body}"
    );
    let (status, body) = get(PORT_A, "/headers", &[("x-trap", "1")]).await;
    assert_eq!(status, 503, "FAIL_CLOSE: {body}");
    assert!(body.contains("trapped"), "{body}");
    assert_eq!(
        get(PORT_A, "/headers", &[]).await.0,
        200,
        "a new instance serves"
    );

    // Port B: the call's answer lets the request through, with a header
    // the backend sees; the same faulty module fails open.
    let (status, body) = get(PORT_B, "/headers", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"x-auth\"") && !body.contains("x-plugin-added"),
        "{body}"
    );
    assert_eq!(get(PORT_B, "/headers", &[("x-spin", "1")]).await.0, 200);
    assert_eq!(get(PORT_B, "/headers", &[("x-trap", "1")]).await.0, 200);

    // Port C: the call's answer refuses.
    assert_eq!(
        get(PORT_C, "/headers", &[]).await,
        (403, "auth said no\n".to_owned())
    );

    let text = metrics(gateway.metrics_addr).await;
    let value = |series: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    // Every request on port A that got past the AUTHN and AUTHZ plugins:
    // the first (at least one), then eight.
    assert!(
        value("weft_wasm_requests_seen_total{plugin=\"shop/counter\"}").is_some_and(|n| n >= 9),
        "{text}"
    );
    for (plugin, kind) in [
        ("shop/faulty-closed", "cpu_limit"),
        ("shop/faulty-closed", "trap"),
        ("shop/faulty-open", "cpu_limit"),
        ("shop/faulty-open", "trap"),
    ] {
        let series =
            format!("weft_wasm_plugin_failures_total{{plugin=\"{plugin}\",kind=\"{kind}\"}}");
        assert_eq!(value(&series), Some(1), "{series}\n{text}");
    }
    gateway.stop();
    mesh.stop().await;
}
