//! A node proxy building its view from whatever a (possibly broken or
//! hostile) control plane sent: arbitrary bytes as every resource type.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use weft_xds::ClientState;
use weft_xds::client::Held;

fuzz_target!(|data: &[u8]| {
    let mut state = ClientState::default();
    for (i, type_url) in [
        weft_xds::ADDRESS_TYPE,
        weft_xds::LISTENERS_TYPE,
        weft_xds::AUTHORIZATION_TYPE,
        weft_xds::MESH_TYPE,
    ]
    .into_iter()
    .enumerate()
    {
        let chunk = data
            .get(i * data.len() / 4..(i + 1) * data.len() / 4)
            .unwrap_or_default();
        let held = Held {
            version: String::new(),
            body: prost_types::Any {
                type_url: type_url.to_owned(),
                value: chunk.to_vec(),
            },
        };
        let name = if type_url == weft_xds::MESH_TYPE {
            "mesh".to_owned()
        } else {
            format!("r{i}")
        };
        state
            .resources
            .insert(type_url.to_owned(), BTreeMap::from([(name, held)]));
    }
    let view = weft_state::MeshView::build(&state, "node-1");
    for w in view.workloads.values() {
        let _ = view.policies_for(w);
    }
});
