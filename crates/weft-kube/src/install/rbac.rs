//! Identities and least-privilege permissions.
//!
//! `weft-control` (ClusterRole) may read what it converts — Namespaces,
//! Nodes, Services, EndpointSlices, Pods, Secrets (TLS credentials named
//! by Gateways; Istio's istiod reads them too) and the objects of every
//! kind weft serves — and patch only their `status` subresources, create
//! Events, create TokenReviews (to check the tokens of pods asking for
//! certificates), and keep the `istio-ca-root-cert` ConfigMap in every
//! namespace (create; get and update of that name only). To deploy the
//! waypoints and gateways of Gateways (`deploy.rs`) it manages
//! Deployments, Services and ServiceAccounts (as istiod's gateway
//! controller does; it touches only those labelled as its own). In its
//! own namespace (Role) it may keep its leader-election Lease and create
//! the `cacerts` Secret holding the CA.
//!
//! `weft-node` may only get Pods and Namespaces: when its CNI plugin
//! hands it a pod, it reads whether the pod is enrolled and as whom it
//! runs (as Istio's CNI agent does). Everything else it learns from the
//! control plane, where its token is presented.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Install, InstallError, to_json};

/// The node agent's service account (its token proves its node).
pub(super) const NODE_AGENT: &str = "weft-node";

/// The ServiceAccounts, the roles and their bindings.
pub(crate) fn objects(install: &Install) -> Vec<Result<serde_json::Value, InstallError>> {
    let control = install.control_name();
    let meta = |name: &str, namespaced: bool, component: &str| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespaced.then(|| install.namespace.clone()),
        labels: Some(install.labels(component)),
        ..Default::default()
    };
    let subject = Subject {
        kind: "ServiceAccount".to_owned(),
        name: control.clone(),
        namespace: Some(install.namespace.clone()),
        ..Default::default()
    };
    // Cluster-scoped names carry the namespace, so two installs in two
    // namespaces do not overwrite each other's roles.
    let cluster_name = format!("{control}-{}", install.namespace);
    let node_cluster_name = format!("{NODE_AGENT}-{}", install.namespace);
    vec![
        to_json(&ServiceAccount {
            metadata: meta(&control, true, "control-plane"),
            ..Default::default()
        }),
        to_json(&ServiceAccount {
            metadata: meta(NODE_AGENT, true, "node-agent"),
            ..Default::default()
        }),
        to_json(&ClusterRole {
            metadata: meta(&node_cluster_name, false, "node-agent"),
            rules: Some(vec![rule(
                &[""],
                &names(&["pods", "namespaces"]),
                &["get", "list", "watch"],
            )]),
            ..Default::default()
        }),
        to_json(&ClusterRoleBinding {
            metadata: meta(&node_cluster_name, false, "node-agent"),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: "ClusterRole".to_owned(),
                name: node_cluster_name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: NODE_AGENT.to_owned(),
                namespace: Some(install.namespace.clone()),
                ..Default::default()
            }]),
        }),
        to_json(&ClusterRole {
            metadata: meta(&cluster_name, false, "control-plane"),
            rules: Some(cluster_rules()),
            ..Default::default()
        }),
        to_json(&ClusterRoleBinding {
            metadata: meta(&cluster_name, false, "control-plane"),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: "ClusterRole".to_owned(),
                name: cluster_name.clone(),
            },
            subjects: Some(vec![subject.clone()]),
        }),
        to_json(&Role {
            metadata: meta(&control, true, "control-plane"),
            rules: Some(namespace_rules()),
        }),
        to_json(&RoleBinding {
            metadata: meta(&control, true, "control-plane"),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: "Role".to_owned(),
                name: control.clone(),
            },
            subjects: Some(vec![subject]),
        }),
    ]
}

fn rule(groups: &[&str], resources: &[String], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| (*s).to_owned()).collect()),
        resources: Some(resources.to_vec()),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Read what is converted, write statuses and Events, review tokens.
fn cluster_rules() -> Vec<PolicyRule> {
    const READ: &[&str] = &["get", "list", "watch"];
    let mut rules = vec![
        rule(
            &[""],
            &names(&["namespaces", "nodes", "services", "pods", "secrets"]),
            READ,
        ),
        rule(&["discovery.k8s.io"], &names(&["endpointslices"]), READ),
        rule(&[""], &names(&["events"]), &["create", "patch"]),
        // The root certificate in every namespace (roots.rs): create any
        // ConfigMap, but read and rewrite only that one.
        rule(&[""], &names(&["configmaps"]), &["create"]),
        PolicyRule {
            resource_names: Some(vec![crate::roots::CONFIG_MAP.to_owned()]),
            ..rule(&[""], &names(&["configmaps"]), &["get", "update"])
        },
        rule(
            &["authentication.k8s.io"],
            &names(&["tokenreviews"]),
            &["create"],
        ),
        // The proxies of Gateways: Services are read above.
        rule(
            &["apps"],
            &names(&["deployments"]),
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            &[""],
            &names(&["services", "serviceaccounts"]),
            &["get", "create", "patch", "delete"],
        ),
    ];
    // The kinds weft serves, by group (Secrets are covered above).
    let mut by_group: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (group, _, kind) in weft_config::kinds::served_kinds() {
        if !group.is_empty() {
            by_group
                .entry(group)
                .or_default()
                .push(weft_core::names::plural(kind));
        }
    }
    for (group, mut plurals) in by_group {
        plurals.sort();
        plurals.dedup();
        rules.push(rule(&[group], &plurals, READ));
        let statuses: Vec<String> = plurals.iter().map(|p| format!("{p}/status")).collect();
        rules.push(rule(&[group], &statuses, &["patch"]));
    }
    rules
}

/// In its own namespace: the leader Lease and the CA Secret.
fn namespace_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["coordination.k8s.io"],
            &names(&["leases"]),
            &["get", "create", "update"],
        ),
        // Reading it is covered by the cluster-wide read of Secrets.
        rule(&[""], &names(&["secrets"]), &["create"]),
    ]
}
