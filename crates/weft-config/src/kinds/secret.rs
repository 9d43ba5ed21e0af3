//! Kubernetes `Secret` (`v1`): key material the configuration refers to —
//! API-key hashes for the built-in API-key authorizer, certificates and
//! keys for gateway listeners (`kubernetes.io/tls`: `tls.crt`, `tls.key`),
//! CA bundles for client-certificate checks (`ca.crt`). `data` is base64,
//! `stringData` plain text (it wins on a clash, as in Kubernetes).
//!
//! Kubernetes keeps `type`, `data` and `stringData` beside `metadata`
//! rather than under `spec`; the loader moves them under `spec` before
//! decoding, so errors name them as `spec.data.<key>`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::diag::Ctx;
use crate::resource::Spec;

/// A `Secret`'s contents.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// `Opaque`, `kubernetes.io/tls`, …
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Values, base64.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Values, plain text.
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
    /// Kubernetes' immutability flag (accepted, no effect here).
    pub immutable: Option<bool>,
}

impl SecretSpec {
    /// Every value, decoded (values that are not base64 are skipped:
    /// validation reports them).
    pub fn values(&self) -> BTreeMap<String, Vec<u8>> {
        use base64::Engine as _;
        let mut out: BTreeMap<String, Vec<u8>> = self
            .data
            .iter()
            .filter_map(|(k, v)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.trim())
                    .ok()?;
                Some((k.clone(), bytes))
            })
            .collect();
        for (k, v) in &self.string_data {
            out.insert(k.clone(), v.clone().into_bytes());
        }
        out
    }

    /// One value as text.
    pub fn text(&self, key: &str) -> Option<String> {
        String::from_utf8(self.values().remove(key)?).ok()
    }
}

/// Moves a Secret's top-level `type`, `data`, `stringData` and
/// `immutable` under `spec`, where every kind keeps its contents.
pub(crate) fn nest(value: &serde_json::Value) -> serde_json::Value {
    let mut value = value.clone();
    if let Some(object) = value.as_object_mut() {
        let mut spec = serde_json::Map::new();
        for key in ["type", "data", "stringData", "immutable"] {
            if let Some(v) = object.remove(key) {
                spec.insert(key.to_owned(), v);
            }
        }
        object.insert("spec".into(), serde_json::Value::Object(spec));
    }
    value
}

impl Spec for SecretSpec {
    const KIND: &'static str = "Secret";

    fn validate(&self, ctx: &mut Ctx<'_>) {
        use base64::Engine as _;
        for (key, value) in &self.data {
            if base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .is_err()
            {
                ctx.error(
                    &format!("spec.data.{key}"),
                    "not base64 (put plain text under stringData)",
                );
            }
        }
        if self.kind.as_deref() == Some("kubernetes.io/tls") {
            let values = self.values();
            for key in ["tls.crt", "tls.key"] {
                if !values.contains_key(key) {
                    ctx.error(
                        &format!("spec.data.{key}"),
                        "a kubernetes.io/tls Secret needs tls.crt and tls.key",
                    );
                }
            }
        }
    }
}
