//! What changed: between two consecutive resource sets (a [`Delta`],
//! computed once per configuration change and shared by every session),
//! and between what one client holds and what is current (a [`Diff`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::resources::{Delta, Entry, Known, ResourceSet, Resources, walk};

impl ResourceSet {
    /// Records what changed since `previous`, so that sessions in sync
    /// with it look only at those names instead of every resource. Both
    /// sides are walked in name order at once; an entry the new set took
    /// over from the previous one is recognized without comparing.
    pub fn with_delta_from(mut self, previous: &ResourceSet) -> Self {
        let mut names = BTreeMap::new();
        let empty = Resources::new();
        for (type_url, now) in &self.types {
            let before = previous.types.get(type_url).unwrap_or(&empty);
            names.insert(*type_url, changed_names(before, now));
        }
        self.delta = Some(Delta {
            from: previous.version,
            names,
        });
        self
    }
}

/// Names added, changed (another version) or removed between two maps:
/// the changed and added ones in name order, then the removed ones.
fn changed_names(before: &Resources, now: &Resources) -> Vec<Arc<str>> {
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    walk(before, now, |name, old, new| match (old, new) {
        (Some(old), Some(new)) if Arc::ptr_eq(old, new) || old.version == new.version => {}
        (_, Some(_)) => changed.push(name.clone()),
        (Some(_), None) => removed.push(name.clone()),
        (None, None) => {}
    });
    changed.extend(removed);
    changed
}

/// Changed or new resources, and names to remove.
pub type Diff<'a> = (Vec<(&'a Arc<str>, &'a Arc<Entry>)>, Vec<Arc<str>>);

/// What a client holds of one type, as the diffs read it: a map of
/// names to versions ([`Known`]), or exactly one set's resources.
pub trait Holding {
    /// The version held under `name`, if any.
    fn version(&self, name: &str) -> Option<u64>;
    /// Every name held.
    fn names(&self) -> impl Iterator<Item = &Arc<str>>;
}

impl Holding for Known {
    fn version(&self, name: &str) -> Option<u64> {
        self.get(name).copied()
    }
    fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.keys()
    }
}

impl Holding for Resources {
    fn version(&self, name: &str) -> Option<u64> {
        self.get(name).map(|e| e.version)
    }
    fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.keys()
    }
}

/// What must be sent to move a client from what it holds to `current`:
/// changed or new resources, and names to remove.
pub fn diff<'a>(held: &impl Holding, current: &'a Resources) -> Diff<'a> {
    let changed = current
        .iter()
        .filter(|(name, entry)| held.version(name) != Some(entry.version))
        .collect();
    let removed = held
        .names()
        .filter(|name| !current.contains_key(*name))
        .cloned()
        .collect();
    (changed, removed)
}

/// [`diff`] restricted to `names` (a [`Delta`]'s), for a client that held
/// exactly the previous set.
pub fn diff_names<'a>(held: &impl Holding, current: &'a Resources, names: &[Arc<str>]) -> Diff<'a> {
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    for name in names {
        match current.get_key_value(name) {
            Some((n, entry)) if held.version(name) != Some(entry.version) => {
                changed.push((n, entry))
            }
            Some(_) => {}
            None if held.version(name).is_some() => removed.push(name.clone()),
            None => {}
        }
    }
    (changed, removed)
}

#[cfg(test)]
mod tests {
    use prost_types::Any;

    use super::*;
    use crate::resources::ADDRESS_TYPE;

    fn entry(v: u64) -> Arc<Entry> {
        Arc::new(Entry {
            version: v,
            body: Any::default(),
            wire: Default::default(),
        })
    }

    #[test]
    fn diff_table() {
        let current: Resources = [(Arc::from("a"), entry(1)), (Arc::from("b"), entry(2))].into();
        // (what the client holds, expected changed, expected removed)
        type Case<'a> = (&'a [(&'a str, u64)], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (&[], &["a", "b"], &[]),
            (&[("a", 1), ("b", 2)], &[], &[]),
            (&[("a", 1), ("b", 1)], &["b"], &[]),
            (&[("a", 1), ("b", 2), ("c", 3)], &[], &["c"]),
        ];
        for (known, want_changed, want_removed) in cases {
            let known: Known = known.iter().map(|(k, v)| (Arc::from(*k), *v)).collect();
            let (changed, removed) = diff(&known, &current);
            let changed: Vec<&str> = changed.iter().map(|(n, _)| &***n).collect();
            let removed: Vec<&str> = removed.iter().map(|n| &**n).collect();
            assert_eq!(&changed, want_changed, "{known:?}");
            assert_eq!(&removed, want_removed, "{known:?}");
            // Restricted to every name involved, the answer is the same.
            let all: Vec<Arc<str>> = ["a", "b", "c"].into_iter().map(Arc::from).collect();
            let (c2, r2) = diff_names(&known, &current, &all);
            assert_eq!(c2.len(), changed.len());
            assert_eq!(r2.len(), removed.len());
        }
    }

    #[test]
    fn delta_between_sets() {
        let set = |version, entries: &[(&str, u64)]| ResourceSet {
            version,
            types: [(
                ADDRESS_TYPE,
                entries
                    .iter()
                    .map(|(n, v)| (Arc::from(*n), entry(*v)))
                    .collect(),
            )]
            .into(),
            ..ResourceSet::default()
        };
        let before = set(1, &[("a", 1), ("b", 2), ("c", 3)]);
        let after = set(2, &[("a", 1), ("b", 5), ("d", 4)]).with_delta_from(&before);
        let delta = after.delta.expect("delta");
        assert_eq!(delta.from, 1);
        let names: Vec<&str> = delta.names[ADDRESS_TYPE].iter().map(|n| &**n).collect();
        assert_eq!(names, ["b", "d", "c"]);
    }

    /// The walk finds what comparing name by name finds, for many pairs
    /// of small random maps.
    #[test]
    fn changed_names_agrees_with_lookups() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let mut map = || -> Resources {
                (0..next() % 8)
                    .map(|_| (Arc::from(format!("n{}", next() % 10)), entry(next() % 3)))
                    .collect()
            };
            let (before, now) = (map(), map());
            let mut expected: Vec<Arc<str>> = now
                .iter()
                .filter(|(n, e)| before.get(*n).is_none_or(|b| b.version != e.version))
                .map(|(n, _)| n.clone())
                .collect();
            expected.extend(before.keys().filter(|n| !now.contains_key(*n)).cloned());
            assert_eq!(
                changed_names(&before, &now),
                expected,
                "{before:?} → {now:?}"
            );
        }
    }
}
