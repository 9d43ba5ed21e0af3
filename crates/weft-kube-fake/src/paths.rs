//! How requests and objects name collections: the URL paths of the
//! Kubernetes API and the plural of a kind.

use std::collections::BTreeMap;

use http::Request;
use serde_json::Value;
pub use weft_core::names::plural;

/// A collection: API group (empty for core), version, plural.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Collection {
    /// `""` for the core group.
    pub group: String,
    /// `v1`, …
    pub version: String,
    /// `pods`, `virtualservices`, …
    pub plural: String,
}

/// The collection and namespace of an object (by its `apiVersion`,
/// `kind`, `metadata.namespace`).
pub(crate) fn place(object: &Value) -> Result<(Collection, String, String, String), String> {
    let api_version = object["apiVersion"].as_str().ok_or("no apiVersion")?;
    let kind = object["kind"].as_str().ok_or("no kind")?;
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or("no metadata.name")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or("");
    Ok((
        Collection {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural(kind),
        },
        namespace.to_owned(),
        name.to_owned(),
        kind.to_owned(),
    ))
}

/// What a request names: a collection, maybe a namespace, maybe an
/// object, maybe its `status` subresource.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) collection: Collection,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) status: bool,
}

/// Parses `/api/v1/...` and `/apis/<group>/<version>/...`.
pub(crate) fn target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] => (Some(*ns), [&[*plural][..], more].concat()),
        other => (None, other.to_vec()),
    };
    let (plural, name, status) = match rest.as_slice() {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some(*name), false),
        [plural, name, "status"] => (*plural, Some(*name), true),
        // `/api/v1/namespaces/<name>` is the namespace object itself.
        _ => return None,
    };
    Some(Target {
        collection: Collection {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
        },
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        status,
    })
}

pub(crate) fn query<B>(req: &Request<B>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_objects_and_status() {
        let t = target("/apis/networking.istio.io/v1/namespaces/shop/virtualservices/r/status")
            .expect("target");
        assert_eq!(t.collection.group, "networking.istio.io");
        assert_eq!(t.collection.plural, "virtualservices");
        assert_eq!(
            (t.namespace.as_deref(), t.name.as_deref(), t.status),
            (Some("shop"), Some("r"), true)
        );
        let t = target("/api/v1/pods").expect("target");
        assert_eq!(
            (t.collection.plural.as_str(), t.namespace, t.name),
            ("pods", None, None)
        );
        // The Namespace object itself is cluster-scoped.
        let t = target("/api/v1/namespaces/shop").expect("namespace");
        assert_eq!(
            (t.collection.plural.as_str(), t.name.as_deref()),
            ("namespaces", Some("shop"))
        );
        assert!(target("/healthz").is_none());
    }
}
