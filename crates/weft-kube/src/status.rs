//! Problems written where Kubernetes users look for them. After every
//! load, each object of a kind weft reads from the cluster (Istio's,
//! Gateway API's, weft's) gets the status its problems call for, and an
//! object with errors gets a `Warning` Event:
//!
//! - Gateway API routes: `status.parents[]` (one per `parentRef`, with
//!   `controllerName: weft.dev/control`): `Accepted` and `ResolvedRefs`
//!   (`BackendNotFound` when a reference does not resolve);
//! - Gateway API `Gateway`: `status.conditions` `Accepted`, `Programmed`
//!   (for a Gateway weft deploys, only once its Deployment has an
//!   available replica — `Pending` until then) and `status.addresses`;
//! - Istio and weft kinds: `status.conditions` (`Reconciled`) and
//!   `status.validationMessages` (`level`, `type.code` — `WEFT0001` for an
//!   error, `WEFT0002` for a warning — and the message naming the field).
//!
//! A status is written only when it differs from the last one written
//! for the object (times left out of the comparison), as a merge patch
//! of the `status` subresource.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use weft_config::Diagnostic;

use crate::convert::document_path;
use crate::source::plural;

/// The controller name weft writes in Gateway API statuses.
pub const CONTROLLER: &str = "weft.dev/control";

const GATEWAY_API: &str = "gateway.networking.k8s.io";

/// One condition (Kubernetes `metav1.Condition` without its time).
fn condition(kind: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message})
}

/// The status an object should carry given its problems (errors and
/// warnings), without times: a pure function.
pub fn status_for(group: &str, kind: &str, object: &Value, problems: &[&Diagnostic]) -> Value {
    let errors: Vec<String> = problems
        .iter()
        .filter(|d| d.is_error())
        .map(|d| describe(d))
        .collect();
    let ok = errors.is_empty();
    let message = if ok {
        "accepted by weft".to_owned()
    } else {
        errors.join("; ")
    };
    if group == GATEWAY_API && kind == "Gateway" {
        return json!({"conditions": [
            condition("Accepted", ok, if ok { "Accepted" } else { "Invalid" }, &message),
            condition("Programmed", ok, if ok { "Programmed" } else { "Invalid" }, &message),
        ]});
    }
    if group == GATEWAY_API {
        let unresolved = errors.iter().any(|e| {
            e.contains("not a service") || e.contains("no service") || e.contains("no Gateway")
        });
        let resolved_message = if unresolved {
            message.as_str()
        } else {
            "all references resolved"
        };
        let parents: Vec<Value> = object["spec"]["parentRefs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|parent| {
                json!({
                    "parentRef": parent,
                    "controllerName": CONTROLLER,
                    "conditions": [
                        condition("Accepted", ok, if ok { "Accepted" } else { "UnsupportedValue" }, &message),
                        condition("ResolvedRefs", !unresolved, if unresolved { "BackendNotFound" } else { "ResolvedRefs" }, resolved_message),
                    ],
                })
            })
            .collect();
        return json!({"parents": parents});
    }
    let messages: Vec<Value> = problems
        .iter()
        .map(|d| {
            let (level, code, name) = if d.is_error() {
                ("ERROR", "WEFT0001", "InvalidConfiguration")
            } else {
                ("WARNING", "WEFT0002", "ConfigurationWarning")
            };
            json!({"level": level, "type": {"code": code, "name": name}, "description": describe(d)})
        })
        .collect();
    json!({
        "conditions": [condition("Reconciled", ok, if ok { "Accepted" } else { "Invalid" }, &message)],
        "validationMessages": messages,
    })
}

/// A Gateway's status given how its deployment stands: `Programmed` only
/// once it is valid and has an available replica, and its Service's
/// address.
pub fn with_rollout(mut status: Value, rollout: &crate::deploy::Rollout) -> Value {
    let valid = status["conditions"][1]["status"] == "True";
    if valid && !rollout.available {
        status["conditions"][1] = condition(
            "Programmed",
            false,
            "Pending",
            &format!(
                "waiting for Deployment {} to have an available replica",
                rollout.deployment
            ),
        );
    } else if valid {
        status["conditions"][1] = condition(
            "Programmed",
            true,
            "Programmed",
            &format!("running as Deployment {}", rollout.deployment),
        );
    }
    if let Some(address) = &rollout.address {
        let kind = if address.parse::<std::net::IpAddr>().is_ok() {
            "IPAddress"
        } else {
            "Hostname"
        };
        status["addresses"] = json!([{"type": kind, "value": address}]);
    }
    status
}

/// A problem as a status shows it: the field and the message (the object
/// is the one carrying it).
fn describe(d: &Diagnostic) -> String {
    match &d.field {
        Some(field) => format!("{field}: {}", d.message),
        None => d.message.clone(),
    }
}

/// Adds `lastTransitionTime` to every condition (Gateway API requires it).
fn stamped(mut status: Value, now: &str) -> Value {
    let stamp = |conditions: &mut Value| {
        for c in conditions.as_array_mut().into_iter().flatten() {
            c["lastTransitionTime"] = json!(now);
        }
    };
    stamp(&mut status["conditions"]);
    for p in status["parents"].as_array_mut().into_iter().flatten() {
        stamp(&mut p["conditions"]);
    }
    status
}

/// Writes statuses and Events, remembering what it wrote.
pub struct StatusWriter {
    client: Client,
    written: BTreeMap<PathBuf, Value>,
    evented: BTreeSet<(PathBuf, String)>,
    /// Whether this replica leads (`None`: always); checked before every
    /// write, so a replica that lost its Lease mid-report stops at once.
    leading: Option<tokio::sync::watch::Receiver<bool>>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("written", &self.written.len())
            .finish_non_exhaustive()
    }
}

impl StatusWriter {
    /// A writer using `client`.
    pub fn new(client: Client) -> Self {
        StatusWriter {
            client,
            written: BTreeMap::new(),
            evented: BTreeSet::new(),
            leading: None,
        }
    }

    /// Writes only while `leading` says this replica leads.
    pub fn with_leadership(mut self, leading: tokio::sync::watch::Receiver<bool>) -> Self {
        self.leading = Some(leading);
        self
    }

    fn leads(&self) -> bool {
        self.leading.as_ref().is_none_or(|l| *l.borrow())
    }

    /// Forgets what it wrote (another replica may have written since):
    /// the next report writes every status again.
    pub fn forget(&mut self) {
        self.written.clear();
        self.evented.clear();
    }

    /// Brings the status of every object in `objects` (the cluster's
    /// objects of weft's kinds, as JSON) in line with `problems` (and, for
    /// the Gateways weft deploys, with their `rollouts`). Failures to
    /// write are logged; they never stop the configuration.
    pub async fn report(
        &mut self,
        objects: &[Value],
        problems: &[Diagnostic],
        rollouts: &BTreeMap<(String, String), crate::deploy::Rollout>,
    ) {
        let mut by_doc: BTreeMap<&Path, Vec<&Diagnostic>> = BTreeMap::new();
        for d in problems {
            by_doc.entry(d.file.as_path()).or_default().push(d);
        }
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut present = BTreeSet::new();
        for object in objects {
            let api_version = object["apiVersion"].as_str().unwrap_or("");
            let Some((group, version)) = api_version.rsplit_once('/') else {
                continue; // core kinds (Secrets) carry no status of ours
            };
            let kind = object["kind"].as_str().unwrap_or("");
            let ns = object["metadata"]["namespace"].as_str().unwrap_or("");
            let name = object["metadata"]["name"].as_str().unwrap_or("");
            let path = document_path(group, kind, ns, name);
            present.insert(path.clone());
            let own = by_doc.get(path.as_path()).cloned().unwrap_or_default();
            let mut wanted = status_for(group, kind, object, &own);
            if group == GATEWAY_API
                && kind == "Gateway"
                && let Some(r) = rollouts.get(&(ns.to_owned(), name.to_owned()))
            {
                wanted = with_rollout(wanted, r);
            }
            if self.written.get(&path) == Some(&wanted) {
                continue;
            }
            if !self.leads() {
                return;
            }
            let ar = ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: api_version.into(),
                kind: kind.into(),
                plural: plural(kind),
            };
            let api: Api<DynamicObject> = if ns.is_empty() {
                Api::all_with(self.client.clone(), &ar)
            } else {
                Api::namespaced_with(self.client.clone(), ns, &ar)
            };
            let patch = json!({"status": stamped(wanted.clone(), &now)});
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.written.insert(path.clone(), wanted);
                }
                Err(e) => {
                    tracing::warn!(%kind, namespace = %ns, %name, error = %e, "cannot write the status");
                }
            }
            for d in own.iter().filter(|d| d.is_error()) {
                let key = (path.clone(), describe(d));
                if self.evented.insert(key) {
                    self.event(object, &describe(d), &now).await;
                }
            }
        }
        self.written.retain(|p, _| present.contains(p));
        self.evented.retain(|(p, _)| present.contains(p));
    }

    /// A `Warning` Event about `object`.
    async fn event(&self, object: &Value, message: &str, now: &str) {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let name = object["metadata"]["name"].as_str().unwrap_or("");
        let mut hash: u64 = 1469598103934665603;
        for b in message.bytes().chain(name.bytes()) {
            hash = (hash ^ u64::from(b)).wrapping_mul(1099511628211);
        }
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.weft.{hash:016x}"), "namespace": ns},
            "involvedObject": {
                "apiVersion": object["apiVersion"], "kind": object["kind"], "name": name,
                "namespace": ns, "uid": object["metadata"]["uid"],
            },
            "reason": "InvalidConfiguration", "message": message, "type": "Warning",
            "source": {"component": "weft-control"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), ns);
        let Ok(event) = serde_json::from_value(event) else {
            return;
        };
        if let Err(e) = api.create(&PostParams::default(), &event).await
            && !matches!(&e, kube::Error::Api(s) if s.code == 409)
        {
            tracing::warn!(namespace = %ns, %name, error = %e, "cannot write an Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(field: &str, message: &str, error: bool) -> Diagnostic {
        let d = Diagnostic {
            severity: weft_config::Severity::Error,
            file: PathBuf::from("k8s/x"),
            doc: Some(1),
            line: None,
            object: None,
            field: Some(field.into()),
            message: message.into(),
        };
        if error { d } else { d.warning() }
    }

    #[test]
    fn statuses_follow_the_kind() {
        let bad = problem(
            "spec.http[0].match[0].uri",
            "set exactly one of exact, prefix, regex",
            true,
        );
        let istio = status_for("networking.istio.io", "VirtualService", &json!({}), &[&bad]);
        assert_eq!(istio["conditions"][0]["status"], "False");
        assert_eq!(istio["validationMessages"][0]["type"]["code"], "WEFT0001");
        assert!(
            istio["validationMessages"][0]["description"]
                .as_str()
                .is_some_and(|d| d.starts_with("spec.http[0].match[0].uri: "))
        );
        let fine = status_for("networking.istio.io", "VirtualService", &json!({}), &[]);
        assert_eq!(fine["conditions"][0]["status"], "True");
        assert_eq!(fine["validationMessages"], json!([]));

        let route = json!({"spec": {"parentRefs": [{"name": "reviews", "kind": "Service"}]}});
        let missing = problem(
            "spec.rules[0].backendRefs[0]",
            "\"nope\" is not a service in the registry",
            true,
        );
        let s = status_for(GATEWAY_API, "HTTPRoute", &route, &[&missing]);
        let parent = &s["parents"][0];
        assert_eq!(parent["controllerName"], CONTROLLER);
        assert_eq!(parent["parentRef"]["name"], "reviews");
        assert_eq!(parent["conditions"][0]["type"], "Accepted");
        assert_eq!(parent["conditions"][1]["reason"], "BackendNotFound");

        let warned = problem("spec.x", "deprecated", false);
        let g = status_for(GATEWAY_API, "Gateway", &json!({}), &[&warned]);
        assert_eq!(g["conditions"][1]["type"], "Programmed");
        assert_eq!(
            g["conditions"][1]["status"], "True",
            "warnings do not fail it"
        );
        // Deployed by weft: programmed with an available replica only.
        let mut rollout = crate::deploy::Rollout {
            deployment: "shop/edge".into(),
            available: false,
            address: None,
        };
        let pending = with_rollout(g.clone(), &rollout);
        assert_eq!(pending["conditions"][1]["reason"], "Pending");
        assert_eq!(pending["conditions"][0]["status"], "True");
        rollout.available = true;
        rollout.address = Some("10.0.0.7".into());
        let up = with_rollout(g, &rollout);
        assert_eq!(up["conditions"][1]["status"], "True");
        assert_eq!(
            up["addresses"],
            json!([{"type": "IPAddress", "value": "10.0.0.7"}])
        );
        let bad = problem("spec.listeners", "add at least one listener", true);
        let invalid = status_for(GATEWAY_API, "Gateway", &json!({}), &[&bad]);
        let invalid = with_rollout(invalid, &rollout);
        assert_eq!(invalid["conditions"][1]["reason"], "Invalid");
    }
}
