//! The mass-removal guard: a valid configuration that would remove most
//! of the mesh at once — an emptied directory, a file that vanished
//! halfway through a `git checkout` — is held back until an operator
//! confirms it. The previous configuration stays in force meanwhile, and
//! the hold is reported like any rejection (`/debug/config-status`,
//! `weft_config_rejected_total`).
//!
//! Confirming: create the marker file [`CONFIRM_MARKER`] in the
//! configuration directory (`touch <dir>/.weft-confirm-removal`). The next
//! reload applies the change and deletes the marker, so the guard is armed
//! again for the change after.

use weft_core::model::{NamespacedName, Snapshot};

/// The marker file that confirms a held-back removal (in the watched
/// directory; not YAML, so never loaded as configuration).
pub const CONFIRM_MARKER: &str = ".weft-confirm-removal";

/// The default share of services or workloads one change may remove.
pub const DEFAULT_MAX_REMOVAL: f64 = 0.5;

/// Why a change is held back (`None`: it may apply). `max_removal` is the
/// share (0–1) of the previous services, or of its workloads, that one
/// change may remove; 1 or more disables the share check. A change that
/// leaves no service and no workload behind where there were some is
/// always held.
pub fn held_back(previous: &Snapshot, next: &Snapshot, max_removal: f64) -> Option<String> {
    let had = previous.services.len() + previous.workloads.len();
    if had > 0 && next.services.is_empty() && next.workloads.is_empty() {
        return Some(format!(
            "the new configuration has no services and no workloads (the one in force has {} and {}): was the directory (or cluster) emptied?",
            previous.services.len(),
            previous.workloads.len()
        ));
    }
    if max_removal >= 1.0 {
        return None;
    }
    let checks = [
        (
            "services",
            gone(previous.services.keys(), next.services.keys()),
            previous.services.len(),
        ),
        (
            "workloads",
            gone(previous.workloads.keys(), next.workloads.keys()),
            previous.workloads.len(),
        ),
    ];
    checks.into_iter().find_map(|(what, gone, total)| {
        let share = gone as f64 / total.max(1) as f64;
        (total > 0 && share > max_removal).then(|| {
            format!(
                "the new configuration removes {gone} of {total} {what} ({:.0} %), more than the {:.0} % one change may remove",
                share * 100.0,
                max_removal * 100.0
            )
        })
    })
}

/// How many names of `before` are missing from `after`, both in
/// ascending order (one walk over both, no sets built).
fn gone<'a>(
    before: impl Iterator<Item = &'a NamespacedName>,
    after: impl Iterator<Item = &'a NamespacedName>,
) -> usize {
    let mut after = after.peekable();
    before
        .filter(|name| {
            while after.next_if(|a| a < name).is_some() {}
            after.next_if(|a| a == name).is_none()
        })
        .count()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weft_core::Identity;
    use weft_core::model::{
        Locality, MtlsMode, Resolution, Service, ServiceLocation, Workload, WorkloadAddress,
    };

    use super::*;

    fn snapshot(services: usize, workloads: usize) -> Snapshot {
        let mut s = Snapshot::default();
        for i in 0..services {
            let name = NamespacedName::new("shop", format!("s{i}"));
            s.services.insert(
                name.clone(),
                Service {
                    name,
                    hosts: Vec::new(),
                    addresses: Vec::new(),
                    ports: Vec::new(),
                    location: ServiceLocation::MeshInternal,
                    resolution: Resolution::Static,
                    endpoints: Vec::new(),
                    waypoint: None,
                    cluster_local: false,
                }
                .into(),
            );
        }
        for i in 0..workloads {
            let name = NamespacedName::new("shop", format!("w{i}"));
            s.workloads.insert(
                name.clone(),
                Workload {
                    name,
                    address: WorkloadAddress::Ip([10, 0, 0, 1].into()),
                    labels: BTreeMap::new(),
                    ports: BTreeMap::new(),
                    identity: Identity::new("cluster.local", "shop", "w").expect("id"),
                    network: String::new(),
                    cluster: String::new(),
                    locality: Locality::default(),
                    weight: 1,
                    node: None,
                    run: None,
                    client_only: false,
                    outbound: Vec::new(),
                    mtls_mode: MtlsMode::Strict,
                    waypoint: false,
                    gateway: false,
                }
                .into(),
            );
        }
        s
    }

    #[test]
    fn table() {
        // (services, workloads before; after; max share; held back?)
        let cases = [
            ((4, 8), (4, 8), 0.5, false),
            ((4, 8), (2, 8), 0.5, false), // exactly half: allowed
            ((4, 8), (1, 8), 0.5, true),  // 3 of 4 services
            ((4, 8), (4, 3), 0.5, true),  // 5 of 8 workloads
            ((4, 8), (0, 0), 0.5, true),  // emptied
            ((4, 8), (0, 0), 1.0, true),  // emptied is held even so
            ((4, 8), (1, 1), 1.0, false), // share check off
            ((0, 0), (0, 0), 0.5, false), // nothing to lose
            ((0, 0), (3, 3), 0.5, false), // growth
            ((4, 8), (10, 20), 0.5, false),
        ];
        for ((s0, w0), (s1, w1), max, held) in cases {
            let got = held_back(&snapshot(s0, w0), &snapshot(s1, w1), max);
            assert_eq!(
                got.is_some(),
                held,
                "{s0}/{w0} -> {s1}/{w1} at {max}: {got:?}"
            );
        }
        let why = held_back(&snapshot(4, 8), &snapshot(1, 8), 0.5).expect("held");
        assert!(why.contains("removes 3 of 4 services (75 %)"), "{why}");
    }
}
