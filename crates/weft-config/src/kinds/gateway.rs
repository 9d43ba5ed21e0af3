//! Gateway API `Gateway` (`gateway.networking.k8s.io/v1`): an ingress
//! gateway's listeners. It runs as the WorkloadEntry of the same name and
//! namespace labelled `weft.dev/gateway: "true"` (its address and
//! identity); `HTTPRoute`s name it as parent; `AuthorizationPolicy`,
//! `RequestAuthentication` and `RateLimitPolicy` attach to it with
//! `targetRef: {kind: Gateway}`.
//!
//! A Gateway of class `weft-waypoint` (or Istio's `istio-waypoint`)
//! declares a waypoint instead: one `HBONE` listener on 15008, run as the
//! WorkloadEntry of its name labelled `weft.dev/waypoint: "true"` (on
//! Kubernetes, weft control deploys both kinds for the user).
//!
//! A Gateway of class `weft-east-west` (or Istio's `istio-east-west`)
//! declares its network's east-west gateway: one `HBONE` listener on
//! 15008 where tunnels from other networks arrive (double HBONE: the
//! end-to-end tunnel inside is forwarded to an endpoint's node unopened).
//! Its network is its label `topology.istio.io/network`, else its
//! WorkloadEntry's (labelled `weft.dev/gateway: "true"`, as ingress
//! gateways are).
//!
//! Listeners are `HTTP`, or `HTTPS` terminating TLS with certificates
//! from `kubernetes.io/tls` Secrets (picked by SNI), optionally checking
//! client certificates against a CA bundle (`tls.frontendValidation`),
//! required unless `tls.options` says `weft.dev/client-certificate:
//! optional`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::diag::Ctx;
use crate::resource::Spec;

/// Ingress gateway classes weft runs (its own, and Istio's for YAML
/// written for Istio).
pub const CLASSES: [&str; 2] = ["weft", "istio"];

/// Waypoint classes weft runs (its own, and Istio ambient's).
pub const WAYPOINT_CLASSES: [&str; 2] = ["weft-waypoint", "istio-waypoint"];

/// East-west gateway classes weft runs (its own, and Istio ambient's).
pub const EAST_WEST_CLASSES: [&str; 2] = ["weft-east-west", "istio-east-west"];

/// The port of a waypoint's `HBONE` listener.
pub const HBONE_PORT: u32 = 15008;

/// `spec` of a `Gateway`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// `weft` (or `istio`); `weft-waypoint` (or `istio-waypoint`).
    pub gateway_class_name: String,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    /// Addresses: for an east-west gateway, the IP other networks dial
    /// (a load balancer's, on Kubernetes); other gateways listen on their
    /// WorkloadEntry's address and refuse it.
    #[serde(default)]
    pub addresses: Vec<GatewayAddressSpec>,
}

/// `spec.addresses[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GatewayAddressSpec {
    /// `IPAddress` (default) or `Hostname`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The address.
    pub value: String,
}

impl GatewaySpec {
    /// The IP of `spec.addresses` (the first), when one is given.
    pub fn address(&self) -> Option<std::net::IpAddr> {
        self.addresses.first()?.value.parse().ok()
    }
}

/// `spec.listeners[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    /// Name (routes attach to it with `sectionName`).
    pub name: String,
    /// Host name accepted (`*.` wildcard).
    pub hostname: Option<String>,
    /// Port.
    pub port: u32,
    /// `HTTP`, `HTTPS`, `TLS` (with `tls.mode: Passthrough`) or `TCP`.
    pub protocol: String,
    /// TLS settings (HTTPS; TLS passthrough).
    pub tls: Option<ListenerTlsSpec>,
    /// Which routes may attach (accepted; routes from any namespace may).
    pub allowed_routes: Option<serde_json::Value>,
}

/// `spec.listeners[].tls`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTlsSpec {
    /// `Terminate` (the default, HTTPS) or `Passthrough` (protocol TLS).
    pub mode: Option<String>,
    /// `kubernetes.io/tls` Secrets.
    #[serde(default)]
    pub certificate_refs: Vec<SecretRefSpec>,
    /// Client certificate checking.
    pub frontend_validation: Option<FrontendValidationSpec>,
    /// Implementation options: `weft.dev/client-certificate: optional`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// `tls.frontendValidation`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FrontendValidationSpec {
    /// Secrets or ConfigMaps holding `ca.crt`.
    #[serde(default)]
    pub ca_certificate_refs: Vec<SecretRefSpec>,
}

/// A reference to a Secret (or, for CA bundles, a ConfigMap-shaped Secret).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct SecretRefSpec {
    /// `""`.
    pub group: Option<String>,
    /// `Secret` (default).
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the Gateway's).
    pub namespace: Option<String>,
}

/// The option saying client certificates are optional.
pub const CLIENT_CERTIFICATE_OPTION: &str = "weft.dev/client-certificate";

impl Spec for GatewaySpec {
    const KIND: &'static str = "Gateway";
    const UNSUPPORTED: &'static [(&'static str, &'static str)] = &[(
        "spec.infrastructure",
        "the objects weft control deploys for a Gateway carry its own labels; infrastructure settings are not applied",
    )];

    fn validate(&self, ctx: &mut Ctx<'_>) {
        if self.is_east_west() {
            for (i, a) in self.addresses.iter().enumerate() {
                let ip = a.kind.as_deref().is_none_or(|k| k == "IPAddress");
                if !ip || a.value.parse::<std::net::IpAddr>().is_err() {
                    ctx.error(
                        &format!("spec.addresses[{i}]"),
                        format!(
                            "{:?}: give the IP other networks dial (type IPAddress)",
                            a.value
                        ),
                    );
                }
            }
        } else if !self.addresses.is_empty() {
            ctx.error(
                "spec.addresses",
                "is not supported by weft: the gateway listens on the address of its WorkloadEntry (same name, label weft.dev/gateway: \"true\")",
            );
        }
        if self.is_waypoint() || self.is_east_west() {
            return validate_hbone_only(self, ctx);
        }
        if !CLASSES.contains(&self.gateway_class_name.as_str()) {
            ctx.error(
                "spec.gatewayClassName",
                format!(
                    "{:?} is not a class weft runs; use one of {CLASSES:?} (ingress), {WAYPOINT_CLASSES:?} or {EAST_WEST_CLASSES:?}",
                    self.gateway_class_name
                ),
            );
        }
        if self.listeners.is_empty() {
            ctx.error("spec.listeners", "add at least one listener");
        }
        let mut names = std::collections::BTreeSet::new();
        let mut ports = BTreeMap::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let base = format!("spec.listeners[{i}]");
            if !names.insert(l.name.as_str()) {
                ctx.error(
                    &format!("{base}.name"),
                    format!("{:?} is used twice", l.name),
                );
            }
            if !(1..=65535).contains(&l.port) {
                ctx.error(&format!("{base}.port"), "must be 1-65535");
            }
            if let Some(previous) = ports.insert(l.port, l.protocol.as_str())
                && previous != l.protocol
            {
                ctx.error(
                    &format!("{base}.port"),
                    format!("port {} already has a {previous} listener", l.port),
                );
            }
            match (l.protocol.as_str(), &l.tls) {
                ("HTTP", None) => {}
                ("HTTP", Some(_)) => ctx.error(
                    &format!("{base}.tls"),
                    "an HTTP listener has no tls; use HTTPS",
                ),
                ("HTTPS", None) => ctx.error(
                    &format!("{base}.tls"),
                    "an HTTPS listener needs tls.certificateRefs",
                ),
                ("TCP", None) => {}
                ("TCP", Some(_)) => ctx.error(
                    &format!("{base}.tls"),
                    "a TCP listener passes connections through as they are; it has no tls",
                ),
                ("TLS", tls) => {
                    let mode = tls.as_ref().and_then(|t| t.mode.as_deref());
                    if mode != Some("Passthrough") {
                        ctx.error(
                            &format!("{base}.tls.mode"),
                            "a TLS listener passes connections through: set tls.mode: Passthrough (to terminate TLS, use protocol: HTTPS)",
                        );
                    }
                    if tls.as_ref().is_some_and(|t| {
                        !t.certificate_refs.is_empty() || t.frontend_validation.is_some()
                    }) {
                        ctx.error(
                            &format!("{base}.tls"),
                            "a passthrough listener holds no certificates: the backend terminates TLS",
                        );
                    }
                }
                ("HTTPS", Some(tls)) => {
                    if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
                        ctx.error(
                            &format!("{base}.tls.mode"),
                            "an HTTPS listener terminates TLS; for Passthrough use protocol: TLS",
                        );
                    }
                    if tls.certificate_refs.is_empty() {
                        ctx.error(
                            &format!("{base}.tls.certificateRefs"),
                            "name at least one kubernetes.io/tls Secret",
                        );
                    }
                    for (key, value) in &tls.options {
                        if key != CLIENT_CERTIFICATE_OPTION
                            || !matches!(value.as_str(), "optional" | "required")
                        {
                            ctx.error(
                                &format!("{base}.tls.options.{key}"),
                                format!(
                                    "weft understands only {CLIENT_CERTIFICATE_OPTION}: optional | required"
                                ),
                            );
                        }
                    }
                }
                (other, _) => ctx.error(
                    &format!("{base}.protocol"),
                    format!("{other:?}: weft's gateway serves HTTP, HTTPS, TLS (passthrough) and TCP listeners"),
                ),
            }
        }
    }
}

impl GatewaySpec {
    /// Whether it declares a waypoint (class `weft-waypoint` or
    /// `istio-waypoint`) rather than an ingress gateway.
    pub fn is_waypoint(&self) -> bool {
        WAYPOINT_CLASSES.contains(&self.gateway_class_name.as_str())
    }

    /// Whether it declares a network's east-west gateway (class
    /// `weft-east-west` or `istio-east-west`).
    pub fn is_east_west(&self) -> bool {
        EAST_WEST_CLASSES.contains(&self.gateway_class_name.as_str())
    }
}

/// A waypoint's or east-west gateway's Gateway: HBONE listeners on 15008
/// only (as Istio's `istio-waypoint` and `istio-east-west` Gateways are
/// written); a waypoint takes its routes from the services that name it,
/// an east-west gateway forwards to its network's endpoints.
fn validate_hbone_only(spec: &GatewaySpec, ctx: &mut Ctx<'_>) {
    let role = if spec.is_waypoint() {
        "waypoint"
    } else {
        "east-west gateway"
    };
    if spec.listeners.is_empty() {
        ctx.error(
            "spec.listeners",
            format!(
                "add the {role}'s listener: {{name: mesh, port: {HBONE_PORT}, protocol: HBONE}}"
            ),
        );
    }
    for (i, l) in spec.listeners.iter().enumerate() {
        if l.protocol != "HBONE" || l.port != HBONE_PORT {
            ctx.error(
                &format!("spec.listeners[{i}]"),
                format!(
                    "a {role} listens only for HBONE on {HBONE_PORT}, not {} on {}",
                    l.protocol, l.port
                ),
            );
        }
    }
}
