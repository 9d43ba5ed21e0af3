//! Which ServiceEntries select a workload, without trying every selector
//! against every workload.
//!
//! A selector matches when every one of its labels is on the workload, so
//! a selector can only match workloads that carry its first label. The
//! index files each selector under that one `(key, value)` pair; a
//! workload's candidates are the selectors filed under its own labels
//! (each found once, since a workload has one value per key) plus the
//! selectors with no labels, which match everything. A namespace of S
//! services and W workloads costs about W × labels lookups instead of
//! S × W comparisons.

use std::collections::{BTreeMap, HashMap};

use crate::kinds::service_entry::WorkloadSelector;

/// Selectors by their first label, for one namespace.
#[derive(Debug, Default)]
pub(crate) struct SelectorIndex<'a> {
    selectors: Vec<&'a WorkloadSelector>,
    by_first: HashMap<(&'a str, &'a str), Vec<usize>>,
    match_all: Vec<usize>,
}

impl<'a> SelectorIndex<'a> {
    /// Indexes `selectors`; a workload's matches are reported by position
    /// in this list.
    pub(crate) fn new(selectors: Vec<&'a WorkloadSelector>) -> Self {
        let mut index = SelectorIndex {
            by_first: HashMap::with_capacity(selectors.len()),
            ..SelectorIndex::default()
        };
        for (i, selector) in selectors.iter().enumerate() {
            match selector.labels.iter().next() {
                Some((k, v)) => index
                    .by_first
                    .entry((k.as_str(), v.as_str()))
                    .or_default()
                    .push(i),
                None => index.match_all.push(i),
            }
        }
        index.selectors = selectors;
        index
    }

    /// Positions of the selectors that match `labels`, in ascending order
    /// (the order the selectors were given in).
    pub(crate) fn matching(&self, labels: &BTreeMap<String, String>) -> Vec<usize> {
        let mut found: Vec<usize> = self.match_all.clone();
        for (k, v) in labels {
            if let Some(candidates) = self.by_first.get(&(k.as_str(), v.as_str())) {
                found.extend(
                    candidates
                        .iter()
                        .copied()
                        .filter(|&i| self.selectors[i].matches(labels)),
                );
            }
        }
        found.sort_unstable();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn selector(pairs: &[(&str, &str)]) -> WorkloadSelector {
        WorkloadSelector {
            labels: labels(pairs),
        }
    }

    /// The index answers exactly what trying every selector answers.
    #[test]
    fn index_agrees_with_trying_every_selector() {
        let selectors = [
            selector(&[("app", "a")]),
            selector(&[("app", "a"), ("tier", "web")]),
            selector(&[]),
            selector(&[("tier", "web")]),
            selector(&[("app", "b")]),
            selector(&[("app", "a"), ("zz", "1")]),
        ];
        let index = SelectorIndex::new(selectors.iter().collect());
        let workloads = [
            labels(&[]),
            labels(&[("app", "a")]),
            labels(&[("app", "a"), ("tier", "web")]),
            labels(&[("app", "a"), ("tier", "db"), ("zz", "1")]),
            labels(&[("tier", "web")]),
            labels(&[("app", "c"), ("tier", "web"), ("zz", "1")]),
        ];
        for w in &workloads {
            let brute: Vec<usize> = (0..selectors.len())
                .filter(|&i| selectors[i].matches(w))
                .collect();
            assert_eq!(index.matching(w), brute, "{w:?}");
        }
        assert_eq!(
            index.matching(&labels(&[("app", "a"), ("tier", "web")])),
            [0, 1, 2, 3]
        );
    }
}
