//! What the translations share: resolving a host to a service, the key
//! of a service, reporting a problem at a resource's field, matches and
//! header changes in the L7 model.

use weft_core::duration;
use weft_core::l7::{Headers, L7Policy, StringMatch};
use weft_core::model::{NamespacedName, Service, Snapshot};

use crate::diag::Diagnostic;
use crate::kinds::virtual_service::{HeaderOpsSpec, StringMatchSpec};
use crate::resource::{Resource, Spec};

/// Istio's default `retryOn` when a route sets retries without one.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,gateway-error";

/// The service a host names, seen from `namespace`: the exact host, else
/// the Kubernetes short forms (`reviews`, `reviews.shop`).
pub fn resolve_host<'a>(
    snapshot: &'a Snapshot,
    namespace: &str,
    host: &str,
) -> Option<&'a Service> {
    let host = host.to_ascii_lowercase();
    [
        host.clone(),
        format!("{host}.{namespace}.svc.cluster.local"),
        format!("{host}.svc.cluster.local"),
    ]
    .iter()
    .find_map(|h| snapshot.service_for_host(h))
}

/// The name destinations use for a service: `namespace/<first host>`.
pub fn service_key(s: &Service) -> String {
    format!(
        "{}/{}",
        s.name.namespace,
        s.hosts.first().map_or("", String::as_str)
    )
}

pub(crate) fn report<S: Spec>(
    out: &mut Vec<Diagnostic>,
    r: &Resource<S>,
    field: &str,
    message: String,
) {
    out.push(Diagnostic::at(&r.origin, Some(r.object()), field, message));
}

/// A warning at a resource's field: the configuration still loads.
pub(crate) fn warn<S: Spec>(
    out: &mut Vec<Diagnostic>,
    r: &Resource<S>,
    field: &str,
    message: String,
) {
    out.push(Diagnostic::at(&r.origin, Some(r.object()), field, message).warning());
}

/// The L7 policy a `targetRef` names: a service's (created on first use)
/// or a Gateway's; `Err` says what is missing.
pub(crate) fn attach_point<'a>(
    snapshot: &'a mut Snapshot,
    namespace: &str,
    target: &crate::kinds::http_route::RefSpec,
) -> Result<&'a mut L7Policy, String> {
    let ns = target.namespace.as_deref().unwrap_or(namespace);
    let wanted = NamespacedName::new(ns, &target.name);
    if target.is_gateway() {
        return snapshot
            .gateways
            .get_mut(&wanted)
            .map(|g| &mut g.policy)
            .ok_or_else(|| format!("no Gateway {wanted} in the configuration"));
    }
    if !snapshot.services.contains_key(&wanted) {
        return Err(format!("no service {wanted} in the registry"));
    }
    Ok(snapshot.l7.entry(wanted).or_default())
}

pub(crate) fn string_match(m: &StringMatchSpec) -> Option<StringMatch> {
    m.exact
        .clone()
        .map(StringMatch::Exact)
        .or_else(|| m.prefix.clone().map(StringMatch::Prefix))
        .or_else(|| m.regex.clone().map(StringMatch::Regex))
}

pub(crate) fn headers(ops: Option<&HeaderOpsSpec>) -> Headers {
    ops.map(|o| Headers {
        set: o.set.clone(),
        add: o.add.clone(),
        remove: o.remove.clone(),
    })
    .unwrap_or_default()
}

pub(crate) fn parse_duration(d: Option<&str>) -> Option<std::time::Duration> {
    d.and_then(|v| duration::parse(v).ok())
}
