//! Labels on the objects weft creates in a cluster.

/// Every object weft creates carries `app.kubernetes.io/part-of: weft`.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "weft");

/// The label on every object weft control deploys for a Gateway.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "weft-control");

/// Metadata of an object weft creates: its name, namespace and
/// [`PART_OF`] label.
pub fn metadata(name: &str, namespace: &str) -> kube::api::ObjectMeta {
    kube::api::ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(std::collections::BTreeMap::from([(
            PART_OF.0.to_owned(),
            PART_OF.1.to_owned(),
        )])),
        ..Default::default()
    }
}
