//! weft control as istiod, seen by a client that behaves as Istio's
//! ztunnel does (tests/common/ztunnel.rs): over 15012 with its
//! service-account token it gets certificates for the pods on its node
//! and a complete workload configuration, verifying the server by DNS
//! name, and the root it mounts is in every namespace
//! (`istio-ca-root-cert`, put back when changed). Without a token, with a
//! token the API server does not vouch for, or expecting another server
//! name, it gets nothing.

use std::collections::HashMap;

use prost::Message;
use serde_json::json;
use weft_control::Options;
use weft_control::kubernetes::KubeSource;
use weft_kube_fake::FakeApiServer;
use weft_xds::proto::security as sec;
use weft_xds::proto::workload as wl;

mod common;
use common::ztunnel::{ISTIOD, Ztunnel};
use common::{namespace, node_object, pod, pod_on, service};

const TOKEN: &str = "ztunnel-node-1-token";

fn policy() -> serde_json::Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "reviews-callers", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "reviews"}}, "action": "ALLOW",
                 "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ztunnel_gets_certificates_and_its_configuration_with_its_token() {
    let fake = FakeApiServer::start().await.expect("fake API server");
    fake.apply(namespace("shop", true));
    fake.apply(node_object("eu-west-1a"));
    fake.apply(service(80));
    fake.apply(pod("reviews-1", "10.1.0.1", true));
    fake.apply(pod_on("other-1", "other", "10.1.0.2", "node-2"));
    fake.apply(policy());
    fake.add_token(
        TOKEN,
        "system:serviceaccount:istio-system:ztunnel",
        Some("node-1"),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let client = kube::Client::try_from(kube::Config::new(fake.url().parse().expect("url")))
        .expect("client");
    let mut source = KubeSource::new(client, format!("kubernetes {}", fake.url()));
    source.node_agent = ("istio-system".into(), "ztunnel".into());
    source.publish_roots = Some(std::time::Duration::from_millis(100));
    let control = weft_control::start(Options {
        kubernetes: Some(source),
        server_names: vec![ISTIOD.into()],
        ..Options::ephemeral(tmp.path().join("none"), tmp.path().join("ca"))
    })
    .await
    .expect("control plane");
    let roots =
        weft_ca::cert::certs_from_pem(&std::fs::read(&control.root_cert).expect("root"), "root")
            .expect("pem");
    let ztunnel = |token: Option<&str>, server_name: &str| Ztunnel {
        address: control.tls_addr,
        server_name: server_name.into(),
        roots: roots.clone(),
        token: token.map(str::to_owned),
        pod: (
            "ztunnel-abcde".into(),
            "istio-system".into(),
            "node-1".into(),
            "10.0.0.1".into(),
        ),
    };
    let z = ztunnel(Some(TOKEN), ISTIOD);

    // The root ztunnel mounts: istio-ca-root-cert in every namespace,
    // put back when someone changes it.
    let published = |ns: &str| {
        fake.get("v1", "ConfigMap", ns, "istio-ca-root-cert")
            .and_then(|c| c["data"]["root-cert.pem"].as_str().map(str::to_owned))
    };
    let is_root = |pem: Option<String>| {
        pem.and_then(|p| weft_ca::cert::certs_from_pem(p.as_bytes(), "published").ok())
            .is_some_and(|certs| certs == roots)
    };
    let until_published = |ns: &'static str| {
        let published = &published;
        let is_root = &is_root;
        async move {
            let started = std::time::Instant::now();
            while !is_root(published(ns)) {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(5),
                    "{ns}: {:?}",
                    published(ns)
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    until_published("shop").await;
    fake.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio-ca-root-cert", "namespace": "shop"},
        "data": {"root-cert.pem": "-----BEGIN CERTIFICATE-----\nattacker\n-----END CERTIFICATE-----\n"}}));
    until_published("shop").await;
    fake.apply(namespace("istio-system", false));
    until_published("istio-system").await;

    // Certificates: for a pod on its node, not for one on another node.
    z.certificate("spiffe://cluster.local/ns/shop/sa/reviews")
        .await
        .expect("a certificate for a pod on its node");
    let refused = z
        .certificate("spiffe://cluster.local/ns/shop/sa/other")
        .await
        .expect_err("a pod on another node");
    assert!(
        refused.contains("node-1") && refused.contains("node-2"),
        "{refused}"
    );

    // The configuration: a response of each type (Authorization too).
    let mut session = z.subscribe(HashMap::new()).await.expect("config stream");
    let mut addresses = Vec::new();
    let mut authorizations = Vec::new();
    while addresses.is_empty() || authorizations.is_empty() {
        let r = session.next().await;
        let into = if r.type_url == weft_xds::ADDRESS_TYPE {
            &mut addresses
        } else {
            &mut authorizations
        };
        into.extend(r.resources);
    }
    let mut workload = None;
    let mut svc = None;
    for r in &addresses {
        let any = r.resource.as_ref().expect("resource body");
        match wl::Address::decode(any.value.as_slice())
            .expect("an Address")
            .r#type
        {
            Some(wl::address::Type::Workload(w)) if w.name == "reviews-1" => {
                assert_eq!(r.name, w.uid, "a workload is named by its uid");
                workload = Some(w);
            }
            Some(wl::address::Type::Service(s)) => {
                assert_eq!(r.name, format!("{}/{}", s.namespace, s.hostname));
                svc = Some(s);
            }
            _ => {}
        }
    }
    let w = workload.expect("the pod's workload");
    assert_eq!(w.addresses, [vec![10, 1, 0, 1]]);
    assert_eq!(
        (w.namespace.as_str(), w.service_account.as_str()),
        ("shop", "reviews")
    );
    assert_eq!(
        (w.node.as_str(), w.trust_domain.as_str()),
        ("node-1", "cluster.local")
    );
    assert_eq!(w.tunnel_protocol, wl::TunnelProtocol::Hbone as i32);
    assert_eq!(w.network, "", "the default network, as ztunnel's NETWORK");
    assert_eq!(w.status, wl::WorkloadStatus::Healthy as i32);
    let locality = w.locality.as_ref().expect("locality");
    assert_eq!(
        (locality.region.as_str(), locality.zone.as_str()),
        ("eu-west", "eu-west-1a")
    );
    let ports = &w.services["shop/reviews.shop.svc.cluster.local"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080));
    assert_eq!(w.authorization_policies, ["shop/reviews-callers"]);
    assert!(w.capacity.is_some_and(|c| c > 0));
    let s = svc.expect("the service");
    assert_eq!(s.hostname, "reviews.shop.svc.cluster.local");
    assert_eq!(s.addresses[0].address, [10, 96, 0, 10]);
    let policy = authorizations
        .iter()
        .find(|r| r.name == "shop/reviews-callers")
        .expect("the policy, named namespace/name");
    let policy =
        sec::Authorization::decode(policy.resource.as_ref().expect("body").value.as_slice())
            .expect("an Authorization");
    assert_eq!(policy.scope, sec::Scope::WorkloadSelector as i32);

    // Reconnecting as ztunnel does (every name it holds, versions empty,
    // plus one that no longer exists): the stale name is removed.
    let mut held = session.held.clone();
    drop(session);
    for names in held.values_mut() {
        for version in names.values_mut() {
            version.clear();
        }
    }
    held.get_mut(weft_xds::ADDRESS_TYPE)
        .expect("addresses")
        .insert("Kubernetes//Pod/shop/gone-1".into(), String::new());
    let mut again = z.subscribe(held).await.expect("reconnect");
    let mut removed = Vec::new();
    for _ in 0..2 {
        removed.extend(again.next().await.removed_resources);
    }
    assert_eq!(removed, ["Kubernetes//Pod/shop/gone-1"]);

    // No token, a token nobody vouches for: nothing.
    for token in [None, Some("forged")] {
        let status = ztunnel(token, ISTIOD)
            .subscribe(HashMap::new())
            .await
            .err()
            .unwrap_or_else(|| panic!("{token:?}: the stream opened"));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token:?}");
        assert!(
            ztunnel(token, ISTIOD)
                .certificate("spiffe://cluster.local/ns/shop/sa/reviews")
                .await
                .is_err()
        );
    }
    // The server must prove the name the client expects.
    let wrong = ztunnel(Some(TOKEN), "istiod.elsewhere.svc")
        .subscribe(HashMap::new())
        .await
        .err()
        .expect("a server without that name is not trusted");
    assert!(
        format!("{wrong:?}").contains("NotValidForName")
            || format!("{wrong:?}").to_lowercase().contains("certificate"),
        "{wrong:?}"
    );
    control.stop().await;
}
