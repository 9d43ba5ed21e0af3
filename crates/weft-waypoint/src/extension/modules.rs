//! Getting plugins' modules and keeping them: read from a file, fetched
//! over HTTPS or pulled from an OCI registry, their SHA-256 checked when
//! pinned, checked and compiled once, started once to prove they start.
//! A plugin whose module fails any of that keeps its last good module
//! (logged, and counted as a `load` failure); one that never loaded is
//! [`Entry::Missing`], which its `failStrategy` turns into a refusal or a
//! skip on every request.
//!
//! OCI: `oci://registry/repository:tag` (or `@sha256:…`) is pulled as
//! the Wasm OCI artifact formats define it: the image manifest's layer
//! of media type `application/vnd.module.wasm.content.layer.v1+wasm`
//! (Istio's) or `application/wasm`/`application/vnd.wasm.content.layer.v1+wasm`
//! is the module. `sha256` pins the manifest's digest (as Istio's does);
//! each blob is checked against its own digest. Registries on
//! `localhost`/`127.0.0.1` are reached over plain HTTP (as Docker
//! does), others over HTTPS; no credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use weft_core::l7::WasmPlugin;

use crate::extension::wasm::{Dispatch, Filter};
use crate::fetch::FetchError;
use crate::telemetry::extensions::ExtensionMetrics;

/// Largest module fetched or read.
pub const MAX_MODULE_BYTES: usize = 64 << 20;
/// Longest a fetch may take.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A plugin as the configuration can use it.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Loaded (now or earlier: the last good module).
    Ready(Arc<Filter>),
    /// Never loaded: why.
    Missing {
        /// What the configuration says of it.
        spec: Box<WasmPlugin>,
        /// Why it is not there.
        reason: String,
    },
}

/// Why a module could not be had.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{0}")]
    Source(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("reading {0}: {1}")]
    File(String, std::io::Error),
    #[error("the module's SHA-256 is {got}, not the {want} its WasmPlugin pins")]
    Digest { got: String, want: String },
    #[error("{0}")]
    Registry(String),
    #[error("fetching took longer than {FETCH_TIMEOUT:?}")]
    Timeout,
    #[error(transparent)]
    Wasm(#[from] weft_wasm::WasmError),
}

struct Loaded {
    signature: String,
    filter: Arc<Filter>,
}

/// Loads and keeps plugins for one proxy.
pub struct Loader {
    runtime: weft_wasm::Runtime,
    tls: Arc<rustls::ClientConfig>,
    dispatch: Arc<dyn Dispatch>,
    metrics: ExtensionMetrics,
    loaded: Mutex<HashMap<String, Loaded>>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader").finish_non_exhaustive()
    }
}

impl Loader {
    /// A loader running plugins under `limits`, trusting `tls` for
    /// fetches, sending their HTTP calls through `dispatch`.
    pub fn new(
        limits: weft_wasm::Limits,
        tls: Arc<rustls::ClientConfig>,
        dispatch: Arc<dyn Dispatch>,
        metrics: ExtensionMetrics,
    ) -> Result<Loader, weft_wasm::WasmError> {
        Ok(Loader {
            runtime: weft_wasm::Runtime::new(limits)?,
            tls,
            dispatch,
            metrics,
            loaded: Mutex::default(),
        })
    }

    /// Every plugin of `plugins` as the configuration can use it, by
    /// name. Unchanged plugins are reused (their instances and shared
    /// state kept); changed or new ones loaded now; plugins no longer
    /// named are dropped. Their metrics are exported from now on.
    pub async fn load<'a>(
        &self,
        plugins: impl IntoIterator<Item = &'a WasmPlugin>,
    ) -> HashMap<String, Entry> {
        let mut wanted: HashMap<String, &WasmPlugin> = HashMap::new();
        for p in plugins {
            wanted.entry(p.name.clone()).or_insert(p);
        }
        let mut out = HashMap::new();
        for (name, spec) in &wanted {
            let signature = signature(spec).await;
            let kept = {
                let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
                loaded
                    .get(name)
                    .filter(|l| l.signature == signature)
                    .map(|l| l.filter.clone())
            };
            if let Some(filter) = kept {
                out.insert(name.clone(), Entry::Ready(filter));
                continue;
            }
            match self.build(spec).await {
                Ok(filter) => {
                    tracing::info!(plugin = %name, url = %spec.url, "Proxy-Wasm plugin loaded");
                    self.loaded
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            name.clone(),
                            Loaded {
                                signature,
                                filter: filter.clone(),
                            },
                        );
                    out.insert(name.clone(), Entry::Ready(filter));
                }
                Err(e) => {
                    self.metrics.failure(name, "load");
                    let last = self
                        .loaded
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(name)
                        .map(|l| l.filter.clone());
                    match last {
                        Some(filter) => {
                            tracing::warn!(plugin = %name, url = %spec.url, error = %e, "Proxy-Wasm module not loaded; the last good one stays in force");
                            out.insert(name.clone(), Entry::Ready(filter));
                        }
                        None => {
                            tracing::warn!(plugin = %name, url = %spec.url, error = %e, fail_open = spec.fail_open, "Proxy-Wasm module not loaded; its failStrategy applies to every request");
                            out.insert(
                                name.clone(),
                                Entry::Missing {
                                    spec: Box::new((*spec).clone()),
                                    reason: e.to_string(),
                                },
                            );
                        }
                    }
                }
            }
        }
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded.retain(|name, _| wanted.contains_key(name));
        self.metrics.export(
            loaded
                .iter()
                .map(|(name, l)| (name.clone(), l.filter.shared().clone()))
                .collect(),
        );
        out
    }

    /// Gets, checks, compiles and starts `spec`'s module.
    async fn build(&self, spec: &WasmPlugin) -> Result<Arc<Filter>, LoadError> {
        let bytes = tokio::time::timeout(FETCH_TIMEOUT, self.bytes(spec))
            .await
            .map_err(|_| LoadError::Timeout)??;
        let name = spec.name.clone();
        let runtime = self.runtime.clone();
        // Compiling takes CPU time: off the reactor.
        let plugin = tokio::task::spawn_blocking(move || {
            weft_wasm::Plugin::compile(&runtime, &name, &bytes)
        })
        .await
        .map_err(|e| LoadError::Source(format!("compiling: {e}")))??;
        let settings = weft_wasm::Settings {
            root_id: spec.plugin_name.clone(),
            vm_config: Vec::new(),
            plugin_config: spec.config.as_bytes().to_vec(),
            env: spec
                .env
                .iter()
                .cloned()
                .chain(
                    spec.host_env
                        .iter()
                        .filter_map(|n| Some((n.clone(), std::env::var(n).ok()?))),
                )
                .collect(),
        };
        Ok(Filter::new(
            spec.clone(),
            plugin,
            settings,
            self.dispatch.clone(),
            self.metrics.clone(),
        )?)
    }

    /// The module's bytes, digest checked when pinned (for OCI the pin
    /// is the manifest's, checked while pulling).
    async fn bytes(&self, spec: &WasmPlugin) -> Result<Vec<u8>, LoadError> {
        let (bytes, pinned) = if let Some(path) = spec.url.strip_prefix("file://") {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| LoadError::File(path.to_owned(), e))?;
            (bytes, true)
        } else if spec.url.starts_with("https://") {
            let (body, _) = crate::fetch::get(
                &spec.url,
                &self.tls,
                "application/wasm, */*",
                MAX_MODULE_BYTES,
            )
            .await?;
            (body.to_vec(), true)
        } else if let Some(reference) = spec.url.strip_prefix("oci://") {
            (self.pull(reference, spec.sha256.as_deref()).await?, false)
        } else {
            return Err(LoadError::Source(format!(
                "{}: not a file://, https:// or oci:// address",
                spec.url
            )));
        };
        if let (true, Some(want)) = (pinned, &spec.sha256) {
            let got = weft_wasm::sha256_hex(&bytes);
            if !got.eq_ignore_ascii_case(want) {
                return Err(LoadError::Digest {
                    got,
                    want: want.clone(),
                });
            }
        }
        Ok(bytes)
    }

    /// Pulls a Wasm OCI artifact: manifest, then the module layer.
    async fn pull(&self, reference: &str, pin: Option<&str>) -> Result<Vec<u8>, LoadError> {
        let oci = OciRef::parse(reference).map_err(LoadError::Registry)?;
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
        let (manifest, _) = crate::fetch::get(
            &oci.url(&format!("manifests/{}", oci.tag)),
            &self.tls,
            accept,
            1 << 20,
        )
        .await?;
        let digest = weft_wasm::sha256_hex(&manifest);
        for want in pin.into_iter().chain(oci.tag.strip_prefix("sha256:")) {
            if !digest.eq_ignore_ascii_case(want) {
                return Err(LoadError::Digest {
                    got: digest,
                    want: want.to_owned(),
                });
            }
        }
        let layer = wasm_layer(&manifest).map_err(LoadError::Registry)?;
        let (blob, _) = crate::fetch::get(
            &oci.url(&format!("blobs/{layer}")),
            &self.tls,
            "application/octet-stream",
            MAX_MODULE_BYTES,
        )
        .await?;
        let got = format!("sha256:{}", weft_wasm::sha256_hex(&blob));
        if got != layer {
            return Err(LoadError::Digest { got, want: layer });
        }
        Ok(blob.to_vec())
    }
}

/// What identifies a loaded module: the plugin's settings and, for a
/// file, its size and modification time (an edited file is loaded
/// again).
async fn signature(spec: &WasmPlugin) -> String {
    let file = match spec.url.strip_prefix("file://") {
        Some(path) => tokio::fs::metadata(path)
            .await
            .ok()
            .map(|m| (m.len(), m.modified().ok())),
        None => None,
    };
    format!("{spec:?} {file:?}")
}

/// `registry/repository:tag` or `registry/repository@sha256:…`.
#[derive(Debug, PartialEq, Eq)]
struct OciRef {
    registry: String,
    repository: String,
    tag: String,
}

impl OciRef {
    fn parse(reference: &str) -> Result<OciRef, String> {
        let (registry, rest) = reference
            .split_once('/')
            .ok_or_else(|| format!("{reference}: no repository"))?;
        let (repository, tag) = match rest.split_once('@') {
            Some((r, d)) => (r, d.to_owned()),
            None => match rest.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, t.to_owned()),
                _ => (rest, "latest".to_owned()),
            },
        };
        if repository.is_empty() {
            return Err(format!("{reference}: no repository"));
        }
        Ok(OciRef {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
        })
    }

    /// `path` under the registry's API for this repository.
    fn url(&self, path: &str) -> String {
        let host = self.registry.split(':').next().unwrap_or_default();
        let scheme = if matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}/v2/{}/{path}", self.registry, self.repository)
    }
}

/// The digest of the module layer of an image manifest.
fn wasm_layer(manifest: &[u8]) -> Result<String, String> {
    const WASM_LAYERS: [&str; 3] = [
        "application/vnd.module.wasm.content.layer.v1+wasm",
        "application/vnd.wasm.content.layer.v1+wasm",
        "application/wasm",
    ];
    let doc: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    let layers = doc["layers"]
        .as_array()
        .ok_or("the manifest has no layers")?;
    layers
        .iter()
        .find(|l| {
            l["mediaType"]
                .as_str()
                .is_some_and(|t| WASM_LAYERS.contains(&t))
        })
        .and_then(|l| l["digest"].as_str())
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_owned)
        .ok_or_else(|| {
            "no Wasm module layer (application/vnd.module.wasm.content.layer.v1+wasm) in the image; images with the module in a file system layer are not supported".to_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLUGIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32)))"#;

    fn loader(metrics: &ExtensionMetrics) -> Loader {
        Loader::new(
            weft_wasm::Limits::default(),
            crate::fetch::client_tls(&[]),
            Arc::new(crate::extension::NoDispatch),
            metrics.clone(),
        )
        .expect("loader")
    }

    fn spec(path: &std::path::Path, sha256: Option<String>) -> WasmPlugin {
        WasmPlugin {
            name: "shop/p".into(),
            url: format!("file://{}", path.display()),
            sha256,
            ..WasmPlugin::default()
        }
    }

    #[tokio::test]
    async fn a_module_that_fails_to_load_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("p.wat");
        std::fs::write(&path, PLUGIN).expect("write");
        let metrics = ExtensionMetrics::default();
        let loader = loader(&metrics);
        let good = spec(&path, None);
        let Some(Entry::Ready(first)) = loader.load([&good]).await.remove("shop/p") else {
            panic!("not loaded");
        };
        // Unchanged: the same filter (instances and shared state kept).
        let Some(Entry::Ready(again)) = loader.load([&good]).await.remove("shop/p") else {
            panic!("not kept");
        };
        assert!(Arc::ptr_eq(&first, &again));
        // Broken in place: the last good one stays, the failure counted.
        std::fs::write(&path, "(module)").expect("write");
        let Some(Entry::Ready(kept)) = loader.load([&good]).await.remove("shop/p") else {
            panic!("last good not kept");
        };
        assert!(Arc::ptr_eq(&first, &kept));
        assert_eq!(metrics.failures("shop/p", "load"), 1);
    }

    #[tokio::test]
    async fn a_module_never_loaded_is_missing_with_the_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("p.wat");
        std::fs::write(&path, PLUGIN).expect("write");
        let metrics = ExtensionMetrics::default();
        let loader = loader(&metrics);
        let pinned = spec(&path, Some("00".repeat(32)));
        let absent = WasmPlugin {
            name: "shop/absent".into(),
            ..spec(&dir.path().join("absent.wasm"), None)
        };
        let mut loaded = loader.load([&pinned, &absent]).await;
        for (name, want) in [("shop/p", "not the 0000"), ("shop/absent", "absent.wasm")] {
            match loaded.remove(name) {
                Some(Entry::Missing { reason, .. }) => assert!(reason.contains(want), "{reason}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn oci_references() {
        let r = OciRef::parse("localhost:5000/plugins/add-header:v1").expect("valid");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("localhost:5000", "plugins/add-header", "v1")
        );
        assert_eq!(
            r.url("manifests/v1"),
            "http://localhost:5000/v2/plugins/add-header/manifests/v1"
        );
        let r = OciRef::parse("ghcr.io/acme/p@sha256:abc").expect("valid");
        assert_eq!(r.tag, "sha256:abc");
        assert!(r.url("x").starts_with("https://ghcr.io/v2/acme/p/"));
        assert_eq!(
            OciRef::parse("ghcr.io/acme/p").expect("valid").tag,
            "latest"
        );
        assert!(OciRef::parse("nohost").is_err());
    }

    #[test]
    fn the_module_layer_is_found_by_media_type() {
        let manifest = br#"{"layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:aa"},
            {"mediaType": "application/vnd.module.wasm.content.layer.v1+wasm", "digest": "sha256:bb"}]}"#;
        assert_eq!(wasm_layer(manifest).expect("valid"), "sha256:bb");
        let image = br#"{"layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:aa"}]}"#;
        assert!(
            wasm_layer(image)
                .expect_err("invalid")
                .contains("not supported")
        );
        assert!(wasm_layer(b"{").is_err());
    }
}
