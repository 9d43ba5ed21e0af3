//! `weft install`: the manifests that put weft on a cluster, built from
//! `k8s-openapi` types (never string templates) and printed as YAML for
//! `kubectl apply -f -`. As with Linkerd, the CRDs come first on their
//! own (`weft install --crds`), so the objects that use them never race
//! their definitions:
//!
//! ```text
//! weft install --crds | kubectl apply -f -
//! weft install | kubectl apply -f -
//! ```
//!
//! What is installed and why each permission is there: [`rbac`]; the
//! control plane and node agent workloads: [`workloads`].

mod crds;
mod rbac;
mod workloads;

use std::collections::BTreeMap;

use serde::Serialize;

pub use crds::{GROUP, VERSION};

/// The options of `weft install`.
#[derive(Debug, Clone)]
pub struct Install {
    /// The namespace of the control plane and node agent.
    pub namespace: String,
    /// The container image running `weft`.
    pub image: String,
    /// Control plane replicas (all serve; one, elected, writes status).
    pub replicas: i32,
    /// The mesh's trust domain (written into the `Mesh` named `default`).
    pub trust_domain: String,
    /// A revision: labels every object (`weft.dev/rev`) and suffixes the
    /// control plane's names, so two can run side by side in an upgrade.
    pub revision: Option<String>,
    /// Include the node agent DaemonSet (a preview: the node side on
    /// Kubernetes is the next step, see docs/kubernetes.md).
    pub node_agent: bool,
}

impl Default for Install {
    fn default() -> Self {
        Install {
            namespace: "weft-system".to_owned(),
            image: format!("ghcr.io/weft-mesh/weft:{}", env!("CARGO_PKG_VERSION")),
            replicas: 2,
            trust_domain: "cluster.local".to_owned(),
            revision: None,
            node_agent: false,
        }
    }
}

/// Why the manifests cannot be printed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// An option is not usable in a Kubernetes object.
    #[error("--{option} {value:?}: {reason}")]
    Option {
        /// The option's flag name.
        option: &'static str,
        /// What was given.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An object did not serialize (a bug).
    #[error("cannot write the manifests: {0}")]
    Render(String),
}

pub use crate::labels::PART_OF;

impl Install {
    /// Checks the options; names the one at fault.
    pub fn check(&self) -> Result<(), InstallError> {
        let bad = |option, value: &str, reason: &str| {
            Err(InstallError::Option {
                option,
                value: value.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if !is_dns_label(&self.namespace) {
            return bad(
                "namespace",
                &self.namespace,
                "not a DNS label (lower-case letters, digits and '-', at most 63)",
            );
        }
        if let Some(rev) = &self.revision
            && (!is_dns_label(rev) || rev.len() > 40)
        {
            return bad("revision", rev, "not a DNS label of at most 40 characters");
        }
        if self.image.is_empty() || self.image.contains(char::is_whitespace) {
            return bad("image", &self.image, "not an image reference");
        }
        if !(1..=20).contains(&self.replicas) {
            return bad("replicas", &self.replicas.to_string(), "between 1 and 20");
        }
        if let Err(e) = weft_core::identity::check_trust_domain(&self.trust_domain) {
            return bad("trust-domain", &self.trust_domain, &e.to_string());
        }
        Ok(())
    }

    /// The labels of one component's objects.
    pub(crate) fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (PART_OF.0.to_owned(), PART_OF.1.to_owned()),
            (
                "app.kubernetes.io/component".to_owned(),
                component.to_owned(),
            ),
            (
                "app.kubernetes.io/version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
        ]);
        if let Some(rev) = &self.revision {
            labels.insert("weft.dev/rev".to_owned(), rev.clone());
        }
        labels
    }

    /// A control plane object's name (`weft-control`, or
    /// `weft-control-<rev>`).
    pub(crate) fn control_name(&self) -> String {
        match &self.revision {
            Some(rev) => format!("weft-control-{rev}"),
            None => "weft-control".to_owned(),
        }
    }

    /// The CRDs, as JSON objects in apply order.
    pub fn crds(&self) -> Result<Vec<serde_json::Value>, InstallError> {
        self.check()?;
        crds::all(self).iter().map(to_json).collect()
    }

    /// Everything else, as JSON objects in apply order: namespace,
    /// identities and permissions, the control plane, the node agent, the
    /// mesh settings.
    pub fn objects(&self) -> Result<Vec<serde_json::Value>, InstallError> {
        self.check()?;
        let mut out = vec![to_json(&workloads::namespace(self))?];
        for o in rbac::objects(self) {
            out.push(o.map_err(|e| InstallError::Render(e.to_string()))?);
        }
        out.extend(workloads::control_plane(self)?);
        if self.node_agent {
            out.push(to_json(&workloads::node_agent(self))?);
        }
        out.push(workloads::mesh(self));
        Ok(out)
    }
}

/// Serializes a `k8s-openapi` object (with its `apiVersion` and `kind`).
pub(crate) fn to_json(object: &impl Serialize) -> Result<serde_json::Value, InstallError> {
    serde_json::to_value(object).map_err(|e| InstallError::Render(e.to_string()))
}

/// Objects as one multi-document YAML stream.
pub fn render(objects: &[serde_json::Value]) -> Result<String, InstallError> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(
            &serde_saphyr::to_string(object).map_err(|e| InstallError::Render(e.to_string()))?,
        );
    }
    Ok(out)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_and_named() {
        type Change = fn(&mut Install);
        let cases: &[(Change, &str)] = &[
            (|i| i.namespace = "Weft".into(), "--namespace"),
            (|i| i.revision = Some("a_b".into()), "--revision"),
            (|i| i.image = "a b".into(), "--image"),
            (|i| i.replicas = 0, "--replicas"),
            (|i| i.trust_domain = "a/b".into(), "--trust-domain"),
        ];
        for (change, flag) in cases {
            let mut install = Install::default();
            change(&mut install);
            let e = install.objects().expect_err(flag).to_string();
            assert!(e.starts_with(flag), "{flag}: {e}");
        }
        assert!(Install::default().objects().is_ok());
    }

    #[test]
    fn a_revision_labels_and_renames_the_control_plane() {
        let install = Install {
            revision: Some("canary".into()),
            ..Default::default()
        };
        let objects = install.objects().expect("objects");
        let deployment = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("deployment");
        assert_eq!(deployment["metadata"]["name"], "weft-control-canary");
        assert!(objects.iter().all(
            |o| o["kind"] == "Namespace" || o["metadata"]["labels"]["weft.dev/rev"] == "canary"
        ));
    }
}
