//! Results kept per namespace between loads, so a change costs what it
//! touches.
//!
//! ServiceEntries and WorkloadEntries make up nearly all of a large mesh,
//! and what the costly steps derive from them stays inside a namespace
//! (selectors match only there): which workloads no service selects
//! (`cross`), and the translated workloads and services (`translate`).
//! Those steps run per namespace through a [`Kept`], which hands back the
//! previous load's result while the namespace's ServiceEntries and
//! WorkloadEntries are the very same parsed objects, in the same order,
//! as last time. Parsed objects are shared between loads as long as
//! their file (or Kubernetes object) is unchanged, so an edit recomputes
//! the namespaces whose files it touched and reuses the rest. Checks that
//! span namespaces always run over everything; the result is the same
//! as a load from scratch (`tests/incremental.rs` checks it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::kinds::{Resources, ServiceEntrySpec, WorkloadEntrySpec};
use crate::resource::Resource;

/// One namespace's ServiceEntries and WorkloadEntries, in load order.
#[derive(Debug, Default)]
pub(crate) struct Shard<'a> {
    /// ServiceEntries.
    pub ses: Vec<&'a Arc<Resource<ServiceEntrySpec>>>,
    /// WorkloadEntries.
    pub wes: Vec<&'a Arc<Resource<WorkloadEntrySpec>>>,
}

/// Every namespace's shard, by namespace.
pub(crate) fn shards(r: &Resources) -> BTreeMap<&str, Shard<'_>> {
    let mut shards: BTreeMap<&str, Shard<'_>> = BTreeMap::new();
    for se in &r.service_entries {
        shards
            .entry(se.name.namespace.as_str())
            .or_default()
            .ses
            .push(se);
    }
    for we in &r.workload_entries {
        shards
            .entry(we.name.namespace.as_str())
            .or_default()
            .wes
            .push(we);
    }
    shards
}

/// The inputs a kept result was computed from (held, so their addresses
/// cannot be reused by other objects while compared).
#[derive(Debug)]
struct Inputs {
    ses: Vec<Arc<Resource<ServiceEntrySpec>>>,
    wes: Vec<Arc<Resource<WorkloadEntrySpec>>>,
}

impl Inputs {
    fn of(shard: &Shard<'_>) -> Self {
        Inputs {
            ses: shard.ses.iter().map(|se| Arc::clone(se)).collect(),
            wes: shard.wes.iter().map(|we| Arc::clone(we)).collect(),
        }
    }

    fn same(&self, shard: &Shard<'_>) -> bool {
        fn same_list<T>(kept: &[Arc<T>], now: &[&Arc<T>]) -> bool {
            kept.len() == now.len() && kept.iter().zip(now).all(|(a, b)| Arc::ptr_eq(a, b))
        }
        same_list(&self.ses, &shard.ses) && same_list(&self.wes, &shard.wes)
    }
}

/// One step's per-namespace results, kept from the previous load. `K` is
/// whatever else the step reads (mesh settings, for instance).
#[derive(Debug)]
pub(crate) struct Kept<K, T> {
    by_namespace: HashMap<String, (Inputs, K, Arc<T>)>,
}

impl<K, T> Default for Kept<K, T> {
    fn default() -> Self {
        Kept {
            by_namespace: HashMap::new(),
        }
    }
}

impl<K: PartialEq, T> Kept<K, T> {
    /// Runs one load's pass: `step` is called for every namespace whose
    /// inputs (or `key`) changed; the others get their kept result. Only
    /// this pass's namespaces are kept for the next.
    pub(crate) fn pass<'a>(
        &mut self,
        shards: &BTreeMap<&'a str, Shard<'a>>,
        key: K,
        mut step: impl FnMut(&str, &Shard<'a>) -> T,
    ) -> Vec<Arc<T>>
    where
        K: Clone,
    {
        let mut previous = std::mem::take(&mut self.by_namespace);
        let mut results = Vec::with_capacity(shards.len());
        for (namespace, shard) in shards {
            let kept = previous
                .remove(*namespace)
                .filter(|(inputs, k, _)| *k == key && inputs.same(shard));
            let entry = match kept {
                Some(entry) => entry,
                None => (
                    Inputs::of(shard),
                    key.clone(),
                    Arc::new(step(namespace, shard)),
                ),
            };
            results.push(entry.2.clone());
            self.by_namespace.insert((*namespace).to_owned(), entry);
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_computed_again_only_when_its_inputs_or_the_key_change() {
        let yaml = |port: u16| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s, namespace: a}}\nspec:\n  hosts: [s.a]\n  ports: [{{number: {port}, name: http}}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s, namespace: b}}\nspec:\n  hosts: [s.b]\n  ports: [{{number: 80, name: http}}]\n"
            )
        };
        let load = |text: &str| {
            let mut r = Resources::default();
            let mut problems = Vec::new();
            crate::loader::add_file(std::path::Path::new("x.yaml"), text, &mut r, &mut problems);
            assert!(problems.is_empty(), "{problems:?}");
            r
        };
        let first = load(&yaml(80));
        let mut kept: Kept<u8, String> = Kept::default();
        let mut calls = Vec::new();
        let mut run = |r: &Resources, key: u8, calls: &mut Vec<String>| {
            kept.pass(&shards(r), key, |ns, _| {
                calls.push(ns.to_owned());
                ns.to_owned()
            })
        };
        assert_eq!(run(&first, 0, &mut calls).len(), 2);
        assert_eq!(calls, ["a", "b"]);
        calls.clear();
        run(&first, 0, &mut calls);
        assert!(calls.is_empty(), "nothing changed: {calls:?}");
        // The same text parsed again is a new object: recomputed.
        let mut second = load(&yaml(80));
        second.service_entries[1] = first.service_entries[1].clone();
        run(&second, 0, &mut calls);
        assert_eq!(calls, ["a"]);
        calls.clear();
        run(&second, 1, &mut calls);
        assert_eq!(calls, ["a", "b"], "another key recomputes everything");
    }
}
