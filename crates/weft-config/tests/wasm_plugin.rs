//! `WasmPlugin`: carried onto its targets' L7 policy with every field,
//! and refused at validation with the reason when its module (a file the
//! control plane can read) is not a plugin weft runs or does not match
//! its `sha256`.

use std::path::Path;

use weft_config::{Config, Problems, load_sources};
use weft_core::l7::PluginPhase;
use weft_core::model::NamespacedName;

fn load(yaml: &str) -> Result<Config, Problems> {
    load_sources([(Path::new("test.yaml"), yaml)])
}

const SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{name: http, number: 9080, protocol: HTTP}]
"#;

const PLUGIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32)))"#;

fn plugin(url: &str, extra: &str) -> String {
    format!(
        r#"{SERVICE}---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: headers, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, name: reviews}}]
  url: {url}
{extra}"#
    )
}

#[test]
fn a_plugin_lands_on_its_target_with_every_field() {
    let dir = tempfile::tempdir().expect("dir");
    let module = dir.path().join("p.wasm");
    std::fs::write(&module, wat::parse_str(PLUGIN).expect("wat")).expect("write");
    let sha = weft_wasm::sha256_hex(&std::fs::read(&module).expect("read"));
    let yaml = plugin(
        &format!("file://{}", module.display()),
        &format!(
            r#"  sha256: {sha}
  phase: AUTHZ
  priority: 7
  pluginName: add_header
  failStrategy: FAIL_OPEN
  pluginConfig: {{header: x-shop, value: "1"}}
  vmConfig:
    env:
    - {{name: MODE, value: strict}}
    - {{name: POD_NAME, valueFrom: HOST}}
  match: [{{mode: SERVER, ports: [{{number: 9080}}]}}]
"#
        ),
    );
    let config = load(&yaml).unwrap_or_else(|p| panic!("{p}"));
    let policy = &config.snapshot.l7[&NamespacedName::new("shop", "reviews")];
    let [p] = policy.wasm.as_slice() else {
        panic!("{:?}", policy.wasm);
    };
    assert_eq!(p.name, "shop/headers");
    assert_eq!(p.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(
        (p.phase, p.priority, p.fail_open),
        (PluginPhase::Authz, 7, true)
    );
    assert_eq!(p.plugin_name, "add_header");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&p.config).expect("json"),
        serde_json::json!({"header": "x-shop", "value": "1"})
    );
    assert_eq!(p.env, [("MODE".to_owned(), "strict".to_owned())]);
    assert_eq!(p.host_env, ["POD_NAME"]);
    assert_eq!(p.ports, [9080]);
}

#[test]
fn broken_plugins_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("dir");
    let not_a_plugin = dir.path().join("bare.wasm");
    std::fs::write(
        &not_a_plugin,
        wat::parse_str("(module (memory (export \"memory\") 1))").expect("wat"),
    )
    .expect("write");
    let good = dir.path().join("good.wasm");
    std::fs::write(&good, wat::parse_str(PLUGIN).expect("wat")).expect("write");
    let cases = [
        (
            plugin(&format!("file://{}", not_a_plugin.display()), ""),
            "declares no Proxy-Wasm ABI version",
        ),
        (
            plugin(
                &format!("file://{}", good.display()),
                &format!("  sha256: {}\n", "ab".repeat(32)),
            ),
            "not abababab",
        ),
        (
            plugin("https://plugins.example.com/p.wasm", ""),
            "required for https:// modules",
        ),
        (
            plugin("http://plugins.example.com/p.wasm", ""),
            "not plain http",
        ),
        (
            plugin(&format!("file://{}", good.display()), "  phase: LATE\n"),
            "one of AUTHN, AUTHZ, STATS",
        ),
        (
            plugin(
                &format!("file://{}", good.display()),
                "  failStrategy: FAIL_RELOAD\n",
            ),
            "FAIL_CLOSE (the default) or FAIL_OPEN",
        ),
        (
            plugin(&format!("file://{}", good.display()), "  type: NETWORK\n"),
            "NETWORK plugins are not supported",
        ),
        (
            plugin(
                &format!("file://{}", good.display()),
                "  selector: {matchLabels: {app: a}}\n",
            ),
            "attach with targetRefs",
        ),
    ];
    for (yaml, want) in cases {
        let problems = load(&yaml).expect_err(want).to_string();
        assert!(problems.contains(want), "{want}:\n{problems}");
    }
    // A target that is not there.
    let yaml = plugin(&format!("file://{}", good.display()), "")
        .replace("name: reviews}", "name: ratings}");
    let problems = load(&yaml).expect_err("no target").to_string();
    assert!(problems.contains("no service shop/ratings"), "{problems}");
}

#[test]
fn a_module_the_control_plane_cannot_read_is_left_to_the_proxy() {
    let yaml = plugin("file:///nonexistent/weft/p.wasm", "");
    let config = load(&yaml).unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(
        config.snapshot.l7[&NamespacedName::new("shop", "reviews")].wasm[0].url,
        "file:///nonexistent/weft/p.wasm"
    );
}
