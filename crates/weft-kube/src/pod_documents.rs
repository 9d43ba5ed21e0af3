//! The pod documents of the previous conversion, reused while nothing
//! they were made from changed (`documents_reusing` in the conversion):
//! with 10,000 pods, converting only those a change touches is most of
//! what keeps a one-pod change under 200 ms (`bench/controlplane`).

use std::path::PathBuf;

/// Pod documents of the previous conversion, each with a fingerprint of
/// everything it was made from (the pod's, its namespace's and its
/// node's `resourceVersion`s, the Services of its namespace, the Gateway
/// it runs): reused while the fingerprint holds, so a change converts
/// only the pods it touches. Objects without a uid or `resourceVersion`
/// are always converted.
#[derive(Debug, Default)]
pub struct PodDocuments {
    pub(crate) by_uid: std::collections::HashMap<String, (u64, Option<Document>)>,
}

/// A document: its path (`k8s/<group>/<Kind>/<ns>/<name>`) and text.
pub type Document = (PathBuf, String);

pub(crate) fn fingerprint(parts: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

pub(crate) fn version(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.resource_version.as_deref().unwrap_or("")
}
