//! Target (b): weft's L7 engine as one plain HTTP hop, the way the
//! gateway's HTTP listener runs it, on one thread: one route to the
//! backend with a retry policy (2 retries on 5xx, reset or connect
//! failure, 1 s per try) and a 2 s timeout, the same the peers get.
//! Optionally with one Proxy-Wasm plugin on every request: a no-op one
//! (its request-headers callback returns at once) or one that adds a
//! request header, both written in WebAssembly text here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use weft_waypoint::engine::retry::{RetryOn, RetryPolicy};
use weft_waypoint::engine::route::{Backend, Route};
use weft_waypoint::{Cluster, Config, Engine, Metrics};

const SERVICE: &str = "bench/app";

/// The plugin's module: the ABI's exports and `callback`.
fn module(imports: &str, callback: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (func (export "malloc") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  {callback})"#
    )
}

/// The plugin `kind` names (`noop`, `header`), as the engine's chain.
fn plugin(kind: &str) -> Result<Arc<weft_waypoint::extension::Chain>> {
    use weft_waypoint::extension::{Chain, Entry, Filter, NoDispatch};
    let wat = match kind {
        "noop" => module(
            "",
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))"#,
        ),
        "header" => module(
            r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))"#,
            r#"(data (i32.const 1024) "x-bench-pluginyes")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 1024) (i32.const 14) (i32.const 1038) (i32.const 3)))
    (i32.const 0))"#,
        ),
        other => bail!("plugin {other:?}: noop or header"),
    };
    let runtime = weft_wasm::Runtime::new(weft_wasm::Limits::default())?;
    let compiled = weft_wasm::Plugin::compile(&runtime, kind, wat.as_bytes())?;
    let spec = weft_core::l7::WasmPlugin {
        name: format!("bench/{kind}"),
        ..Default::default()
    };
    let filter = Filter::new(
        spec,
        compiled,
        weft_wasm::Settings::default(),
        Arc::new(NoDispatch),
        Default::default(),
    )?;
    Ok(Arc::new(Chain::new(vec![Entry::Ready(filter)])))
}

/// Serves on `listen`, forwarding to `upstream`, until killed, with the
/// plugin `with` names on every request. Prints `ready` once it listens.
pub(crate) fn run(listen: SocketAddr, upstream: SocketAddr, with: Option<&str>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let plugins = match with {
            Some(kind) => HashMap::from([(String::new(), plugin(kind)?)]),
            None => HashMap::new(),
        };
        let config = Config {
            plugins,
            routes: vec![Route {
                name: "bench".into(),
                matches: vec![],
                backends: vec![Backend {
                    service: SERVICE.into(),
                    weight: 1,
                }],
                timeout: Some(Duration::from_secs(2)),
                retry: Some(RetryPolicy {
                    attempts: 2,
                    per_try_timeout: Some(Duration::from_secs(1)),
                    retry_on: RetryOn::parse("5xx,reset,connect-failure")
                        .map_err(|e| anyhow::anyhow!("retryOn: {e}"))?,
                    ..RetryPolicy::default()
                }),
                ..Route::default()
            }],
            clusters: HashMap::from([(
                SERVICE.to_owned(),
                Arc::new(Cluster::new(SERVICE, vec![upstream])),
            )]),
            ..Config::default()
        };
        let engine = Arc::new(Engine::new(config, Metrics::default()));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("ready");
        weft_waypoint::fronts::http::serve_http(listener, engine, std::future::pending()).await;
        Ok(())
    })
}
