//! The demo mesh as a proxy sees it: the real configuration loaded, turned
//! into the config stream's resources, decoded into a [`MeshView`] — and
//! every key typed, every lookup answering.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use weft_state::{Locality, MeshView, NamespacedName};
use weft_xds::ClientState;
use weft_xds::client::Held;

fn demo_view(node: &str) -> MeshView {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let config = weft_config::load_path(&dir).expect("the demo loads");
    let set = weft_xds::resources::build(&config.snapshot, 1);
    let mut state = ClientState::default();
    for (type_url, resources) in &set.types {
        let held: BTreeMap<String, Held> = resources
            .iter()
            .map(|(name, entry)| {
                let held = Held {
                    version: String::new(),
                    body: entry.body.clone(),
                };
                (name.to_string(), held)
            })
            .collect();
        state.resources.insert((*type_url).to_owned(), held);
    }
    MeshView::build(&state, node)
}

#[test]
fn the_demo_decodes_into_typed_keys() {
    let view = demo_view("node-1");
    let reviews = NamespacedName::new("shop", "reviews.shop.svc.cluster.local");
    // A service by host (any case), by VIP, and its endpoints.
    assert_eq!(
        view.service_by_host("Reviews.Shop.svc.cluster.local"),
        Some(&reviews)
    );
    let vip: IpAddr = "240.240.0.12".parse().expect("ip");
    assert_eq!(view.services_by_vip.get(&vip), Some(&reviews));
    assert_eq!(view.services[&reviews].vip, Some(vip));
    let endpoints: Vec<String> = view
        .endpoints_of(&reviews)
        .map(|w| w.name.to_string())
        .collect();
    assert!(
        endpoints.contains(&"shop/reviews-v1".to_owned())
            && endpoints.contains(&"shop/reviews-v2".to_owned()),
        "{endpoints:?}"
    );
    // A workload by address: its name, locality and identity typed.
    let v2 = view
        .workload_at("127.0.2.12".parse().expect("ip"))
        .expect("reviews-v2 by address");
    assert_eq!(v2.name, NamespacedName::new("shop", "reviews-v2"));
    assert_eq!(
        v2.locality,
        Locality::parse("eu-west/eu-west-1b").expect("locality")
    );
    assert_eq!(
        v2.identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/reviews"
    );
    assert_eq!(v2.target_port(&reviews, 80), Some(8080));
    assert_eq!(v2.target_port(&reviews, 81), None);
    assert_eq!(view.workload(&v2.uid).map(|w| w.ip), Some(v2.ip));
    assert!(view.workload_named(&v2.name).is_some());
    // Outbound listeners are this node's workloads' only, typed.
    let frontend = view
        .workload_named(&NamespacedName::new("shop", "frontend-1"))
        .expect("frontend");
    let mine: Vec<(u16, String)> = view
        .listeners
        .iter()
        .filter(|l| l.workload == frontend.uid)
        .map(|l| (l.local_port, l.service.to_string()))
        .collect();
    assert_eq!(
        mine,
        [
            (9001, "shop/orders.shop.svc.cluster.local".to_owned()),
            (9002, "shop/reviews.shop.svc.cluster.local".to_owned())
        ]
    );
    assert!(
        view.listeners.iter().all(|l| view
            .workload(&l.workload)
            .is_some_and(|w| w.node == "node-1")),
        "no other node's listeners"
    );
    // Local workloads: this node's, never a waypoint or gateway.
    assert!(
        view.local("node-1")
            .all(|w| w.node == "node-1" && !w.waypoint && !w.gateway)
    );
    assert!(view.local("node-1").any(|w| w.name == frontend.name));
}

#[test]
fn another_node_sees_the_same_mesh_but_not_its_listeners() {
    let one = demo_view("node-1");
    let two = demo_view("node-2");
    assert_eq!(one.workloads.len(), two.workloads.len());
    assert_eq!(one.services, two.services);
    assert!(two.listeners.iter().all(|l| {
        two.workload(&l.workload)
            .is_some_and(|w| w.node == "node-2")
    }));
}
