//! The CA's key material in a Secret, so every control plane replica
//! signs with the same CA. The Secret uses Istio's plug-in layout
//! (`cacerts` in the control plane's namespace: `ca-cert.pem`,
//! `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`), so an operator's own
//! intermediate (as Istio documents it) works unchanged. When there is
//! none, the first replica makes a root and stores it there; a replica
//! that loses that race (409 Conflict) uses the winner's. The files are
//! then written to the CA directory (0700; keys 0600, atomically), where
//! `weft_ca::Authority` reads the plug-in layout.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

/// The files of Istio's plug-in CA layout, in the Secret and the
/// directory. The first two are required.
pub const FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

/// Where the CA came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The Secret existed.
    Found,
    /// This replica made a root and stored it.
    Created,
}

/// Why the CA Secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    /// The API server refused or failed.
    #[error("the CA Secret {namespace}/{name}: {source}")]
    Api {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
    /// The Secret lacks a required file.
    #[error(
        "the CA Secret {namespace}/{name} has no {file:?} (Istio's plug-in layout: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)"
    )]
    Incomplete {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The missing key.
        file: &'static str,
    },
    /// A file could not be written or a root not made.
    #[error("the CA directory {dir}: {reason}")]
    Local {
        /// The directory.
        dir: String,
        /// What went wrong.
        reason: String,
    },
}

/// Fetches the CA Secret into `dir`, creating it (with a new root for
/// `trust_domain`) when absent.
pub async fn fetch_or_create(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    dir: &Path,
    trust_domain: &str,
) -> Result<Origin, CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let api_error = |source| CaSecretError::Api {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    };
    let local = |reason: String| CaSecretError::Local {
        dir: dir.display().to_string(),
        reason,
    };
    weft_ca::secret::private_dir(dir).map_err(|e| local(e.to_string()))?;
    let (secret, origin) = match api.get_opt(name).await.map_err(api_error)? {
        Some(s) => (s, Origin::Found),
        None => {
            let data = new_root(dir, trust_domain).map_err(local)?;
            let secret = Secret {
                metadata: crate::labels::metadata(name, namespace),
                type_: Some("Opaque".to_owned()),
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(s) => (s, Origin::Created),
                // Another replica stored one first: use it.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    (api.get(name).await.map_err(api_error)?, Origin::Found)
                }
                Err(e) => return Err(api_error(e)),
            }
        }
    };
    let data = secret.data.unwrap_or_default();
    for file in FILES {
        match data.get(file) {
            Some(bytes) => weft_ca::secret::write_private(&dir.join(file), &bytes.0)
                .map_err(|e| local(e.to_string()))?,
            None if file == "ca-cert.pem" || file == "ca-key.pem" => {
                return Err(CaSecretError::Incomplete {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    file,
                });
            }
            // An older copy must not outlive the Secret.
            None => {
                let _ = std::fs::remove_file(dir.join(file));
            }
        }
    }
    // A self-made root left in the directory would be ignored; remove it
    // so what is on disk is what the Secret holds.
    let _ = std::fs::remove_file(dir.join("root-key.pem"));
    Ok(origin)
}

/// A new root, in the plug-in layout (the root signs directly).
fn new_root(dir: &Path, trust_domain: &str) -> Result<BTreeMap<String, ByteString>, String> {
    let scratch = dir.join(".new-root");
    let _ = std::fs::remove_dir_all(&scratch);
    let made = weft_ca::Authority::load_or_create(&weft_ca::CaOptions {
        dir: scratch.clone(),
        trust_domain: trust_domain.to_owned(),
        workload_ttl: std::time::Duration::from_secs(3600),
    });
    let read = |f: &str| std::fs::read(scratch.join(f)).map_err(|e| format!("{f}: {e}"));
    let files = made
        .map_err(|e| e.to_string())
        .and_then(|_| Ok((read("root-cert.pem")?, read("root-key.pem")?)));
    let _ = std::fs::remove_dir_all(&scratch);
    let (cert, key) = files?;
    Ok(BTreeMap::from([
        ("ca-cert.pem".to_owned(), ByteString(cert.clone())),
        ("ca-key.pem".to_owned(), ByteString(key)),
        ("cert-chain.pem".to_owned(), ByteString(cert.clone())),
        ("root-cert.pem".to_owned(), ByteString(cert)),
    ]))
}
