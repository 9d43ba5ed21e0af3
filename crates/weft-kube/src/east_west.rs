//! East-west gateways on Kubernetes: the address other networks dial is
//! the load balancer's in front of the gateway (the `LoadBalancer`
//! Service `weft control --proxy-image` deploys under the Gateway's
//! name), unless the Gateway names one in `spec.addresses`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};
use weft_config::kinds::gateway::EAST_WEST_CLASSES;

/// An east-west Gateway that names no address, given the address of the
/// load balancer in front of it: the first IP in the status of the
/// Service deployed for it (same namespace and name). `None` when it
/// names one, or the load balancer has none yet.
pub fn load_balanced(gateway: &Value, services: &[Arc<Service>]) -> Option<Value> {
    if gateway["kind"] != "Gateway" {
        return None;
    }
    let ns = gateway["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let name = gateway["metadata"]["name"].as_str()?;
    let class = gateway["spec"]["gatewayClassName"].as_str()?;
    let named = gateway["spec"]["addresses"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    if !EAST_WEST_CLASSES.contains(&class) || named {
        return None;
    }
    let ip = services
        .iter()
        .find(|s| {
            s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name)
        })?
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .iter()
        .find_map(|i| i.ip.clone())?;
    let mut out = gateway.clone();
    out["spec"]["addresses"] = json!([{"type": "IPAddress", "value": ip}]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn east_west_gateways_take_their_load_balancers_address() {
        let gateway = |class: &str, addresses: Value| {
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "east-west", "namespace": "weft-system"},
                "spec": {"gatewayClassName": class, "addresses": addresses, "listeners": []},
            })
        };
        let service: Arc<Service> = Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "east-west", "namespace": "weft-system"},
                "spec": {"type": "LoadBalancer"},
                "status": {"loadBalancer": {"ingress": [{"hostname": "lb.example"}, {"ip": "203.0.113.10"}]}},
            }))
            .expect("service"),
        );
        let pending: Arc<Service> = Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "east-west", "namespace": "weft-system"},
                "spec": {"type": "LoadBalancer"},
            }))
            .expect("service"),
        );
        let with = load_balanced(
            &gateway("istio-east-west", json!([])),
            std::slice::from_ref(&service),
        )
        .expect("address");
        assert_eq!(
            with["spec"]["addresses"],
            json!([{"type": "IPAddress", "value": "203.0.113.10"}])
        );
        // Its own address wins; other classes and pending balancers: as is.
        let named = json!([{"value": "198.51.100.1"}]);
        assert!(
            load_balanced(
                &gateway("weft-east-west", named),
                std::slice::from_ref(&service)
            )
            .is_none()
        );
        assert!(load_balanced(&gateway("weft", json!([])), &[service]).is_none());
        assert!(load_balanced(&gateway("weft-east-west", json!([])), &[pending]).is_none());
    }
}
