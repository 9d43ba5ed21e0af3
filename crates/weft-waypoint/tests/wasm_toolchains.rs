//! Plugins built by others' toolchains, run by a waypoint in a running
//! mesh (control plane, a node proxy, the waypoint and sample apps in one
//! process), each built here from source:
//!
//! - `tests/plugins/caller_gate.c`, C against the ABI with Debian's clang
//!   and `wasm-ld`: reads the caller's SPIFFE identity
//!   (`connection.uri_san_peer_certificate`) and lets through only the
//!   one its `pluginConfig` allows — `frontend` gets through, with
//!   `x-caller` at the backend; `intruder` gets the plugin's 403;
//! - `tests/plugins/as-add-header`, AssemblyScript with the
//!   `@solo-io/proxy-runtime` SDK from npm: adds a header from its
//!   configuration, found by its root id (`pluginName`).
//!
//! Outside CI a missing toolchain (clang and lld; `npm ci` in the
//! plugin's directory) skips with the reason; in CI it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_testkit::{TestMesh, app};

mod support;

fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins")
}

/// Skips (outside CI) or fails (in CI) for want of `what`.
fn missing(what: &str) -> Option<PathBuf> {
    assert!(std::env::var_os("CI").is_none(), "{what}");
    println!("SKIPPED: {what}");
    None
}

/// `caller_gate.c` compiled to `out`.
fn build_c(out: &Path) -> Option<PathBuf> {
    let wasm = out.join("caller_gate.wasm");
    let built = Command::new("clang")
        .args([
            "--target=wasm32",
            "-O2",
            "-nostdlib",
            "-Wl,--no-entry",
            "-Wl,--export-dynamic",
        ])
        .arg("-o")
        .arg(&wasm)
        .arg(plugins_dir().join("caller_gate.c"))
        .output();
    match built {
        Ok(o) if o.status.success() => Some(wasm),
        Ok(o) => missing(&format!(
            "clang could not build a wasm32 module (Debian: apt-get install clang lld): {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => missing(&format!(
            "clang is not here (Debian: apt-get install clang lld): {e}"
        )),
    }
}

/// The AssemblyScript plugin compiled to `out` with the SDK's toolchain.
fn build_assemblyscript(out: &Path) -> Option<PathBuf> {
    let dir = plugins_dir().join("as-add-header");
    let asc = dir.join("node_modules/.bin/asc");
    if !asc.exists() {
        return missing(&format!(
            "the AssemblyScript toolchain is not installed: run `npm ci` in {}",
            dir.display()
        ));
    }
    let wasm = out.join("add_header.wasm");
    let built = Command::new(&asc)
        .current_dir(&dir)
        .args([
            "assembly/index.ts",
            "--use",
            "abort=abort_proc_exit",
            "--optimize",
            "-b",
        ])
        .arg(&wasm)
        .output();
    match built {
        Ok(o) if o.status.success() => Some(wasm),
        Ok(o) => missing(&format!(
            "asc failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => missing(&format!("asc did not run: {e}")),
    }
}

fn config(gate: &Path, sdk: &Path) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: orders
  namespace: shop
  labels: {{istio.io/use-waypoint: shop-waypoint}}
spec:
  hosts: [orders.shop.svc.cluster.local]
  addresses: [240.240.7.41]
  location: MESH_INTERNAL
  ports: [{{name: http, number: 80, protocol: HTTP, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: orders}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: frontend
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9002=orders.shop.svc.cluster.local:80"
spec:
  address: 127.0.1.150
  serviceAccount: frontend
  labels: {{app: frontend, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: intruder
  namespace: shop
  annotations:
    weft.dev/client-only: "true"
    weft.dev/outbound: "9002=orders.shop.svc.cluster.local:80"
spec:
  address: 127.0.1.151
  serviceAccount: intruder
  labels: {{app: intruder, weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: shop-waypoint, namespace: shop}}
spec:
  address: 127.0.1.152
  serviceAccount: shop-waypoint
  labels: {{weft.dev/waypoint: "true", weft.dev/node: node-1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: orders-1, namespace: shop}}
spec:
  address: 127.0.1.153
  serviceAccount: orders
  labels: {{app: orders, weft.dev/node: node-1}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: caller-gate, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, name: orders}}]
  url: file://{gate}
  phase: AUTHZ
  pluginConfig: {{allow: "spiffe://cluster.local/ns/shop/sa/frontend"}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: sdk-header, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, name: orders}}]
  url: file://{sdk}
  pluginName: add_header
  pluginConfig: {{built: assemblyscript}}
"#,
        gate = gate.display(),
        sdk = sdk.display()
    )
}

/// `GET /headers` from `client` through its outbound listener.
async fn get(client: &str) -> Option<String> {
    let mut conn = TcpStream::connect((client, 9002)).await.ok()?;
    conn.write_all(b"GET /headers HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    conn.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_built_with_clang_and_an_sdk_run_in_a_waypoint() {
    let out = tempfile::tempdir().expect("tempdir");
    let (Some(gate), Some(sdk)) = (build_c(out.path()), build_assemblyscript(out.path())) else {
        return;
    };
    let mesh = TestMesh::start(&config(&gate, &sdk), 1).await;
    let waypoint = weft_waypoint::fronts::waypoint::start(support::options(
        &mesh,
        "shop/shop-waypoint",
        "127.0.1.152",
    ))
    .await
    .expect("waypoint");
    app("127.0.1.153:8080", "orders").await;

    // frontend → node → waypoint (both plugins) → orders.
    let started = Instant::now();
    let response = loop {
        if let Some(r) = get("127.0.1.150").await
            && r.starts_with("HTTP/1.1 200")
            && r.contains("x-as-plugin")
        {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the plugins never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The C plugin named the caller; the SDK's plugin added its header
    // with its configuration.
    assert!(
        response.contains(r#""x-caller":"spiffe://cluster.local/ns/shop/sa/frontend""#),
        "{response}"
    );
    assert!(
        response.contains(r#""x-as-plugin":"{\"built\":\"assemblyscript\"}""#),
        "{response}"
    );
    // Another caller: the C plugin refuses it.
    let refused = get("127.0.1.151").await.expect("response");
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.ends_with("caller not allowed\n"), "{refused}");
    waypoint.stop();
    for n in mesh.nodes {
        n.stop();
    }
}
