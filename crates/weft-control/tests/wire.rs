//! A subscriber written against the wire protocol — Python gRPC stubs
//! generated from the .proto files, not weft's own client — decodes the
//! Workload API addresses the control plane streams.

use std::path::Path;
use std::process::Command;

use weft_control::Options;

fn python_has_grpc() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_subscriber_decodes_addresses() {
    if !python_has_grpc() {
        // .ci/run installs grpcio and grpcio-tools, so this runs in CI.
        eprintln!(
            "SKIPPED: python3 with grpcio and grpcio-tools is not installed (pip install grpcio grpcio-tools)"
        );
        return;
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let running = weft_control::start(Options::ephemeral(
        here.join("../../examples/demo"),
        tmp.path().join("ca"),
    ))
    .await
    .expect("control plane");
    let script = here.join("tests/wire/xds_subscriber.py");
    let protos = here.join("../weft-xds/proto");
    let target = running.xds_addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(protos)
            .arg(target)
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs");
    assert!(
        out.status.success(),
        "python subscriber failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("json from the python subscriber");
    let resources = json["resources"].as_array().expect("resources");
    assert_eq!(resources.len(), 13, "{json:#}");

    let find = |name: &str| {
        resources
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {json:#}"))
    };
    let frontend = find("weft/shop/frontend-1");
    assert_eq!(frontend["kind"], "workload");
    assert_eq!(frontend["addresses"], serde_json::json!(["127.0.1.10"]));
    assert_eq!(frontend["service_account"], "frontend");
    assert_eq!(frontend["trust_domain"], "cluster.local");
    assert_eq!(frontend["node"], "node-1");
    assert_eq!(frontend["tunnel"], "HBONE");
    assert_eq!(
        frontend["locality"],
        serde_json::json!(["eu-west", "eu-west-1a", ""])
    );
    assert_eq!(
        frontend["services"]["shop/frontend.shop.svc.cluster.local"],
        serde_json::json!([[80, 8080]])
    );
    let payments = find("billing/payments.billing.svc.cluster.local");
    assert_eq!(payments["kind"], "service");
    assert_eq!(payments["hostname"], "payments.billing.svc.cluster.local");
    assert_eq!(payments["addresses"], serde_json::json!(["240.240.0.20"]));
    assert_eq!(payments["ports"], serde_json::json!([[80, 8080]]));
    running.stop().await;
}
