//! The plugins of each target: a service port's (or a gateway
//! listener's) `WasmPlugin`s that match its port, as loaded
//! ([`crate::extension::Entry`]), in running order.

use std::collections::HashMap;
use std::sync::Arc;

use weft_core::l7::L7Policy;

use crate::extension::{Chain, Entry};

/// The chain of `policy`'s plugins that apply on `port` (`None`: every
/// port), if any.
pub(crate) fn chain(
    policy: Option<&L7Policy>,
    port: Option<u16>,
    plugins: &HashMap<String, Entry>,
) -> Option<Arc<Chain>> {
    let entries: Vec<Entry> = policy?
        .wasm
        .iter()
        .filter(|p| match port {
            Some(port) => p.ports.is_empty() || p.ports.contains(&port),
            None => true,
        })
        .map(|p| {
            plugins
                .get(&p.name)
                .cloned()
                .unwrap_or_else(|| Entry::Missing {
                    spec: Box::new(p.clone()),
                    reason: "not loaded yet".into(),
                })
        })
        .collect();
    (!entries.is_empty()).then(|| Arc::new(Chain::new(entries)))
}
