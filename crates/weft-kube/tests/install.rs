//! `weft install`'s manifests are what a cluster accepts: every object
//! passes `kubernetes-validate --strict` (PyPI) against the Kubernetes
//! schemas, the CRDs' own schemas accept the `weft.dev` examples in the
//! docs and examples and refuse a malformed one, and the fake API server
//! takes every object (create, through kube-rs). What weft control
//! deploys for Gateways is checked with them.

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;
use weft_kube::install::{Install, render};
use weft_kube_fake::FakeApiServer;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Everything `weft install --crds` and `weft install --node-agent`
/// print, with a revision and a non-default namespace so names and
/// labels are exercised.
fn manifests() -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let install = Install {
        namespace: "mesh-system".into(),
        revision: Some("blue".into()),
        node_agent: true,
        ..Default::default()
    };
    let mut objects = install.objects().expect("objects");
    // What weft control deploys for Gateways is checked with them.
    let settings = weft_kube::deploy::ProxySettings {
        image: install.image.clone(),
        control: "weft-control-blue.mesh-system.svc:15012".into(),
        trust_domain: "cluster.local".into(),
    };
    for (class, listener) in [
        (
            "istio-waypoint",
            json!({"name": "mesh", "port": 15008, "protocol": "HBONE"}),
        ),
        (
            "weft",
            json!({"name": "http", "port": 80, "protocol": "HTTP"}),
        ),
    ] {
        let gateway = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"namespace": "shop", "name": format!("gw-{class}"), "uid": "6f1c0f1e-0000-4000-8000-000000000001"},
            "spec": {"gatewayClassName": class, "listeners": [listener]}});
        objects.extend(weft_kube::deploy::objects(&gateway, &settings).expect("deployed"));
    }
    (install.crds().expect("crds"), objects)
}

/// Whether a tool is here; in CI it must be.
fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--help").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing (.ci/run installs it)"
        );
        eprintln!("skipped: {tool} is not installed (pip install kubernetes-validate)");
    }
    found
}

#[test]
fn manifests_pass_the_kubernetes_schemas_strictly() {
    if !have("kubernetes-validate") {
        return;
    }
    let (crds, objects) = manifests();
    let dir = tempfile::tempdir().expect("tempdir");
    let crds_file = dir.path().join("crds.yaml");
    let objects_file = dir.path().join("install.yaml");
    std::fs::write(&crds_file, render(&crds).expect("render")).expect("write");
    std::fs::write(&objects_file, render(&objects).expect("render")).expect("write");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.34.0"])
        .arg(&crds_file)
        .arg(&objects_file)
        .output()
        .expect("run kubernetes-validate");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // Every object but the custom resources (checked below against the
    // CRDs) passed.
    let custom = objects
        .iter()
        .filter(|o| {
            o["apiVersion"]
                .as_str()
                .unwrap_or("")
                .starts_with("weft.dev/")
        })
        .count();
    let passed = text
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(passed, crds.len() + objects.len() - custom, "{text}");
    for line in text
        .lines()
        .filter(|l| l.starts_with("WARN") || l.starts_with("ERROR"))
    {
        assert!(line.contains("api version weft.dev/"), "{line}");
    }

    // The CRD schemas, as the API server applies them.
    if !have("python3") {
        return;
    }
    let root = repo();
    let mut examples: Vec<PathBuf> = ["docs/kubernetes.md", "docs/configuration.md"]
        .iter()
        .map(|p| root.join(p))
        .collect();
    for entry in std::fs::read_dir(root.join("examples")).expect("examples") {
        for file in std::fs::read_dir(entry.expect("entry").path())
            .into_iter()
            .flatten()
        {
            let path = file.expect("file").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                examples.push(path);
            }
        }
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let out = Command::new("python3")
        .arg(here.join("crd_examples.py"))
        .arg(&crds_file)
        .arg(&objects_file)
        .args(&examples)
        .arg("--invalid")
        .arg(here.join("fixtures/malformed-rate-limit-policy.yaml"))
        .output()
        .expect("run crd_examples.py");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("refused as expected"), "{text}");
    assert!(text.contains("limit.requests"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_takes_every_object() {
    let fake = FakeApiServer::start().await.expect("fake");
    let client = kube::Client::try_from(kube::Config::new(fake.url().parse().expect("url")))
        .expect("client");
    let (crds, objects) = manifests();
    for object in crds.into_iter().chain(objects) {
        let api_version = object["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .to_owned();
        let kind = object["kind"].as_str().expect("kind").to_owned();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let resource = ApiResource {
            group: group.to_owned(),
            version: version.to_owned(),
            api_version: api_version.clone(),
            kind: kind.clone(),
            plural: weft_core::names::plural(&kind),
        };
        let dynamic: DynamicObject = serde_json::from_value(object).expect("object");
        let api: Api<DynamicObject> = match dynamic.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let created = api
            .create(&PostParams::default(), &dynamic)
            .await
            .unwrap_or_else(|e| panic!("{kind} {:?}: {e}", dynamic.metadata.name));
        assert_eq!(created.metadata.name, dynamic.metadata.name);
        assert!(created.metadata.resource_version.is_some(), "{kind}");
    }
}
