//! The mesh's root certificate in every namespace, as istiod publishes it:
//! a ConfigMap `istio-ca-root-cert` with `root-cert.pem`, which Istio's
//! ztunnel (and anything else in a pod) mounts to verify the control
//! plane. Every replica publishes (they share one CA, so they write the
//! same content; a create that loses a race is fine): at start, then
//! every [`RESYNC`], each namespace's ConfigMap is created if missing and
//! rewritten if it differs — a tampered root is put back within one
//! period. Permissions: ConfigMaps `create`, and `get`/`update` of this
//! name only.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams};

/// The ConfigMap's name (Istio's).
pub const CONFIG_MAP: &str = "istio-ca-root-cert";
/// Its key holding the PEM root(s).
pub const KEY: &str = "root-cert.pem";
/// How often every namespace is checked again.
pub const RESYNC: Duration = Duration::from_secs(60);

/// Makes every namespace hold `roots` (PEM) until the task is aborted.
pub fn spawn(client: kube::Client, roots: String, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match publish(&client, &roots).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(namespaces = n, "root certificate ConfigMaps written"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot publish the root certificate ConfigMaps; retrying")
                }
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// One pass over every namespace; how many ConfigMaps it wrote.
pub async fn publish(client: &kube::Client, roots: &str) -> Result<usize, kube::Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut written = 0;
    for ns in namespaces.list(&ListParams::default()).await?.items {
        let Some(name) = ns.metadata.name else {
            continue;
        };
        if ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
        let wanted = BTreeMap::from([(KEY.to_owned(), roots.to_owned())]);
        let result = match api.get_opt(CONFIG_MAP).await? {
            Some(existing) if existing.data.as_ref() == Some(&wanted) => continue,
            Some(mut existing) => {
                tracing::warn!(namespace = %name, "the root certificate ConfigMap differs from the mesh's root; rewriting it");
                existing.data = Some(wanted);
                api.replace(CONFIG_MAP, &PostParams::default(), &existing)
                    .await
            }
            None => {
                let map = ConfigMap {
                    metadata: crate::labels::metadata(CONFIG_MAP, &name),
                    data: Some(wanted),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &map).await
            }
        };
        match result {
            Ok(_) => written += 1,
            // Another replica wrote it meanwhile; the next pass checks.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
