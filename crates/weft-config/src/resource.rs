//! The envelope every resource shares (`apiVersion`, `kind`, `metadata`,
//! `spec`) and the generic decoder that turns a YAML document into a typed
//! [`Resource`], reporting every unknown field by name.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use weft_core::model::NamespacedName;
use weft_core::names;

use crate::diag::{Ctx, Diagnostic, Origin};

/// The namespace of a resource that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A decoded, individually validated resource.
#[derive(Debug, Clone)]
pub struct Resource<S> {
    /// Namespace and name.
    pub name: NamespacedName,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// The typed `spec`.
    pub spec: S,
    /// Where it was written.
    pub origin: Origin,
}

impl<S: Spec> Resource<S> {
    /// `Kind namespace/name`, as diagnostics print it.
    pub fn object(&self) -> String {
        object_label(S::KIND, S::NAMESPACED, &self.name)
    }
}

pub(crate) fn object_label(kind: &str, namespaced: bool, name: &NamespacedName) -> String {
    if namespaced {
        format!("{kind} {name}")
    } else {
        format!("{kind} {}", name.name)
    }
}

/// A resource kind's `spec`: how to decode it and what makes it valid on its
/// own. Checks that need other resources come later, in the
/// whole-configuration checks, which build on this module.
pub trait Spec: DeserializeOwned + Default {
    /// The `kind` field, e.g. `ServiceEntry`.
    const KIND: &'static str;
    /// Whether the kind lives in a namespace.
    const NAMESPACED: bool = true;
    /// Fields of the upstream API that weft knows but does not implement,
    /// with the reason shown to the operator (path from the document root,
    /// without list indices: `spec.rules.to.operation.methods`).
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[];

    /// Checks the spec on its own, reporting through `ctx`.
    fn validate(&self, ctx: &mut Ctx<'_>);
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Envelope<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: S,
    /// Written by a Kubernetes API server; carries no configuration.
    #[allow(dead_code)]
    status: Option<Value>,
}

/// `metadata`. Server-populated fields are accepted and ignored, so YAML
/// exported with `kubectl get -o yaml` loads unchanged.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    // Written by a Kubernetes API server; carry no configuration.
    #[allow(dead_code)]
    uid: Option<Value>,
    #[allow(dead_code)]
    resource_version: Option<Value>,
    #[allow(dead_code)]
    generation: Option<Value>,
    #[allow(dead_code)]
    creation_timestamp: Option<Value>,
    #[allow(dead_code)]
    managed_fields: Option<Value>,
}

/// Decodes and validates one document as a resource of kind `S`.
///
/// Every unknown field is reported (not just the first); a type error stops
/// decoding of that document, since nothing after it can be trusted.
pub(crate) fn decode<S: Spec>(
    value: &Value,
    origin: &Origin,
    out: &mut Vec<Diagnostic>,
) -> Option<Resource<S>> {
    // The name is read untyped first so that even a type error names the object.
    let meta_name = |key: &str| {
        value
            .pointer(&format!("/metadata/{key}"))
            .and_then(Value::as_str)
    };
    let namespace = meta_name("namespace")
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_owned();
    let early_name = NamespacedName::new(namespace, meta_name("name").unwrap_or("<unnamed>"));
    let object = Some(object_label(S::KIND, S::NAMESPACED, &early_name));
    let mut ctx = Ctx::new(origin, object, out);

    let mut unknown = Vec::new();
    let result: Result<Envelope<S>, _> =
        serde_ignored::deserialize(value, |path| unknown.push(ignored_path(&path)));
    for path in &unknown {
        // UNSUPPORTED paths are written without list indices.
        let general = strip_indices(path);
        let message = match S::UNSUPPORTED.iter().find(|(p, _)| *p == general) {
            Some((_, why)) => format!("is not supported by weft: {why}"),
            None => format!(
                "unknown field in {} (check its spelling and indentation)",
                S::KIND
            ),
        };
        ctx.error(path, message);
    }
    let envelope = match result {
        Ok(envelope) => envelope,
        Err(e) => {
            // Decode again, tracking the path, only to say where it failed.
            let mut track = serde_path_to_error::Track::new();
            let _ = Envelope::<S>::deserialize(serde_path_to_error::Deserializer::new(
                value, &mut track,
            ));
            let path = track.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ctx.error(&path, e.to_string());
            return None;
        }
    };
    if !unknown.is_empty() {
        return None;
    }

    let meta = envelope.metadata;
    let name = match meta.name {
        Some(name) => {
            ctx.check("metadata.name", names::check_subdomain(&name));
            name
        }
        None => {
            ctx.error("metadata", "metadata.name is required");
            String::new()
        }
    };
    let namespace = match (S::NAMESPACED, meta.namespace) {
        (true, Some(ns)) => {
            ctx.check("metadata.namespace", names::check_label(&ns));
            ns
        }
        (true, None) => DEFAULT_NAMESPACE.to_owned(),
        (false, Some(_)) => {
            ctx.error(
                "metadata.namespace",
                format!("{} is cluster-scoped; remove metadata.namespace", S::KIND),
            );
            String::new()
        }
        (false, None) => String::new(),
    };
    envelope.spec.validate(&mut ctx);
    Some(Resource {
        name: NamespacedName::new(namespace, name),
        labels: meta.labels,
        annotations: meta.annotations,
        spec: envelope.spec,
        origin: origin.clone(),
    })
}

/// `spec.rules[0].to[1].operation.methods` → `spec.rules.to.operation.methods`.
fn strip_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if !in_index => out.push(c),
            _ => {}
        }
    }
    out
}

/// Renders serde_ignored's path in the same `a.b[0].c` form as everywhere else.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}
