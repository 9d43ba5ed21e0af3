//! The extensions of each target: a service port's (or a gateway
//! listener's) `WasmPlugin`s that match its port, as loaded
//! ([`crate::extension::Entry`]), in running order; and its external
//! processors (kept from the previous configuration when unchanged, so
//! their channels stay open).

use std::collections::HashMap;
use std::sync::Arc;

use weft_core::l7::L7Policy;

use crate::extension::ext_proc::Processor;
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

/// The external processors of `policy` (on a gateway, those of
/// `listener`), reusing `previous` ones built from the same settings.
pub(crate) fn processors(
    policy: Option<&L7Policy>,
    listener: Option<&str>,
    previous: Option<&crate::engine::Config>,
    metrics: &crate::telemetry::extensions::ExtensionMetrics,
) -> Option<Arc<Vec<Arc<Processor>>>> {
    let specs: Vec<&weft_core::l7::ExtProc> = policy?
        .ext_proc
        .iter()
        .filter(|p| {
            p.listeners.is_empty() || listener.is_some_and(|l| p.listeners.iter().any(|n| n == l))
        })
        .collect();
    if specs.is_empty() {
        return None;
    }
    let held: Vec<&Arc<Processor>> = previous
        .map(|p| p.processors.values().flat_map(|v| v.iter()).collect())
        .unwrap_or_default();
    Some(Arc::new(
        specs
            .iter()
            .map(|spec| {
                held.iter()
                    .find(|p| p.spec == **spec)
                    .map(|p| (*p).clone())
                    .unwrap_or_else(|| Arc::new(Processor::new((*spec).clone(), metrics.clone())))
            })
            .collect(),
    ))
}
