//! `WasmPlugin` modules pulled from an OCI registry: Debian's
//! `docker-registry` (the CNCF Distribution registry) runs here on a
//! loopback port, a module is pushed to it as a Wasm OCI artifact (its
//! layer of media type `application/vnd.module.wasm.content.layer.v1+wasm`)
//! through the registry's HTTP API, and the proxy's loader pulls it by tag
//! and by digest, checks the manifest against `sha256`, and refuses a
//! wrong pin and a missing tag with the reason.
//!
//! Outside CI a missing `docker-registry` skips with the reason.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use weft_core::l7::WasmPlugin;
use weft_waypoint::extension::{Entry, Loader, NoDispatch};
use weft_waypoint::telemetry::extensions::ExtensionMetrics;

const PLUGIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32)))"#;

/// The registry process, stopped on drop.
struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One request to the registry: status, `location` header, body.
async fn call(
    method: &str,
    uri: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Option<String>, Bytes) {
    let parsed: http::Uri = uri.parse().expect("uri");
    let authority = parsed.authority().expect("authority").to_string();
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = http::Request::builder()
        .method(method)
        .uri(parsed.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", &authority)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, location, body)
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", weft_wasm::sha256_hex(bytes))
}

/// Pushes `bytes` as a blob of `repo`.
async fn push_blob(base: &str, repo: &str, bytes: &[u8]) {
    let (status, location, body) = call(
        "POST",
        &format!("{base}/v2/{repo}/blobs/uploads/"),
        "",
        Vec::new(),
    )
    .await;
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let location = location.expect("upload location");
    let location = if location.starts_with("http") {
        location
    } else {
        format!("{base}{location}")
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let (status, _, body) = call(
        "PUT",
        &format!("{location}{separator}digest={}", digest(bytes)),
        "application/octet-stream",
        bytes.to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
}

fn plugin(url: &str, sha256: Option<String>) -> WasmPlugin {
    WasmPlugin {
        name: "shop/oci".into(),
        url: url.into(),
        sha256,
        ..WasmPlugin::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_is_pulled_from_an_oci_registry_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let child = match Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => Registry(c),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "docker-registry is needed: {e}"
            );
            println!(
                "SKIPPED: docker-registry is not here (Debian: apt-get install docker-registry): {e}"
            );
            return;
        }
    };
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            && call("GET", &format!("{base}/v2/"), "", Vec::new()).await.0 == 200
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the registry never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Push the module as a Wasm OCI artifact.
    let repo = "plugins/gate";
    let module = wat::parse_str(PLUGIN).expect("wat");
    let config_blob = b"{}".to_vec();
    push_blob(&base, repo, &module).await;
    push_blob(&base, repo, &config_blob).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.module.wasm.config.v1+json",
            "digest": digest(&config_blob),
            "size": config_blob.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.module.wasm.content.layer.v1+wasm",
            "digest": digest(&module),
            "size": module.len(),
        }],
    }))
    .expect("manifest");
    let (status, _, body) = call(
        "PUT",
        &format!("{base}/v2/{repo}/manifests/v1"),
        "application/vnd.oci.image.manifest.v1+json",
        manifest.clone(),
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let pin = weft_wasm::sha256_hex(&manifest);

    let metrics = ExtensionMetrics::default();
    let loader = Loader::new(
        weft_wasm::Limits::default(),
        weft_waypoint::fetch::client_tls(&[]),
        Arc::new(NoDispatch),
        metrics.clone(),
    )
    .expect("loader");
    let reference = format!("oci://127.0.0.1:{port}/{repo}");
    for (url, sha256) in [
        (format!("{reference}:v1"), None),
        (format!("{reference}:v1"), Some(pin.clone())),
        (format!("{reference}@sha256:{pin}"), None),
    ] {
        let spec = plugin(&url, sha256.clone());
        match loader.load([&spec]).await.remove("shop/oci") {
            Some(Entry::Ready(f)) => assert_eq!(f.spec.url, url),
            other => panic!("{url} {sha256:?}: {other:?}"),
        }
    }
    // A wrong pin and a missing tag are refused with the reason (a fresh
    // loader: no last good module to keep).
    let fresh = Loader::new(
        weft_wasm::Limits::default(),
        weft_waypoint::fetch::client_tls(&[]),
        Arc::new(NoDispatch),
        metrics,
    )
    .expect("loader");
    for (spec, want) in [
        (
            plugin(&format!("{reference}:v1"), Some("ab".repeat(32))),
            "not the abab",
        ),
        (plugin(&format!("{reference}:v2"), None), "answered 404"),
    ] {
        match fresh.load([&spec]).await.remove("shop/oci") {
            Some(Entry::Missing { reason, .. }) => assert!(reason.contains(want), "{reason}"),
            other => panic!("{}: {other:?}", spec.url),
        }
    }
    drop(child);
}
