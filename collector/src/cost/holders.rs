//! Who pays for a GPU's interval: its time split over the Kubernetes containers that
//! hold it, as the interval's ending reading names them (like every other per-interval
//! figure). Shares always add up to the whole GPU, so a report summed over namespaces,
//! pods or containers equals the fleet's.
//!
//! - A reading with no allocation comes from a host where holders are unknown (not
//!   Kubernetes): the whole interval goes to the empty holder, shown as
//!   [`NOT_KUBERNETES`].
//! - A known allocation with no holder for the GPU: the whole interval goes to the
//!   namespace [`UNALLOCATED`] (which no Kubernetes namespace can be named: namespaces
//!   are DNS labels, without parentheses).
//! - Otherwise each held device (the whole GPU, or each of its MIG devices) gets an
//!   equal share of the GPU, and each container holding a device an equal share of that
//!   device. A MIG device nobody holds is not in the reading, so the GPU's time goes to
//!   the held ones.
//!
//! Counts (samples, PCIe replays, XID and ECC errors) cannot be split: each goes whole to
//! the first holder in namespace, pod and container order, so they are neither lost nor
//! counted twice.

use std::collections::{BTreeMap, BTreeSet};

use gpulse_gpu::Allocation;

use super::ledger::Usage;

/// The namespace stored for GPU time that a known allocation gives to nobody.
pub const UNALLOCATED: &str = "(unallocated)";
/// How reports name the empty namespace: GPU time of hosts that do not say who holds
/// their GPUs.
pub const NOT_KUBERNETES: &str = "(not kubernetes)";

/// The container a share of a GPU's time is attributed to: empty strings when holders
/// are unknown, [`UNALLOCATED`] as the namespace when nobody holds the GPU.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Holder {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl Holder {
    pub fn unallocated() -> Holder {
        Holder {
            namespace: UNALLOCATED.into(),
            ..Holder::default()
        }
    }
}

/// Each holder's share of the GPU (they add up to 1), in holder order.
pub fn shares(allocation: Option<&Allocation>) -> Vec<(Holder, f64)> {
    let Some(allocation) = allocation else {
        return vec![(Holder::default(), 1.0)];
    };
    let mut per_device: BTreeMap<&str, BTreeSet<Holder>> = BTreeMap::new();
    for h in allocation.holders() {
        per_device
            .entry(h.device_uuid.as_str())
            .or_default()
            .insert(Holder {
                namespace: h.namespace.clone(),
                pod: h.pod.clone(),
                container: h.container.clone(),
            });
    }
    if per_device.is_empty() {
        return vec![(Holder::unallocated(), 1.0)];
    }
    let device_share = 1.0 / per_device.len() as f64;
    let mut out: BTreeMap<Holder, f64> = BTreeMap::new();
    for holders in per_device.into_values() {
        let each = device_share / holders.len() as f64;
        for h in holders {
            *out.entry(h).or_default() += each;
        }
    }
    out.into_iter().collect()
}

/// `whole` split by `shares`: the continuous fields in proportion, the counts whole to
/// the first holder.
pub fn split(whole: &Usage, shares: &[(Holder, f64)]) -> Vec<(Holder, Usage)> {
    shares
        .iter()
        .enumerate()
        .map(|(i, (h, f))| {
            let mut part = whole.scaled(*f);
            if i == 0 {
                part.samples = whole.samples;
                part.pcie_replays = whole.pcie_replays;
                part.lost_samples = whole.lost_samples;
                part.xid_errors = whole.xid_errors;
                part.ecc_uncorrected_errors = whole.ecc_uncorrected_errors;
            }
            (h.clone(), part)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::ledger::{FieldValue, USAGE_FIELDS};
    use gpulse_gpu::DeviceHolder;
    use proptest::prelude::*;

    fn holder(device: &str, ns: &str, pod: &str, container: &str) -> DeviceHolder {
        DeviceHolder {
            device_uuid: device.into(),
            namespace: ns.into(),
            pod: pod.into(),
            container: container.into(),
        }
    }

    fn h(ns: &str, pod: &str, container: &str) -> Holder {
        Holder {
            namespace: ns.into(),
            pod: pod.into(),
            container: container.into(),
        }
    }

    #[test]
    fn unknown_and_unallocated_gpus_have_buckets_of_their_own() {
        assert_eq!(shares(None), [(Holder::default(), 1.0)]);
        assert_eq!(
            shares(Some(&Allocation::default())),
            [(h(UNALLOCATED, "", ""), 1.0)]
        );
    }

    #[test]
    fn mig_devices_share_the_gpu_equally_and_their_holders_share_each_device() {
        let a = Allocation::new(vec![
            holder("MIG-1", "ml", "train", "main"),
            holder("MIG-2", "ml", "serve", "a"),
            holder("MIG-2", "web", "serve", "b"),
        ]);
        assert_eq!(
            shares(Some(&a)),
            [
                (h("ml", "serve", "a"), 0.25),
                (h("ml", "train", "main"), 0.5),
                (h("web", "serve", "b"), 0.25),
            ]
        );
    }

    fn sample_usage(n: u64, x: f64) -> Usage {
        let mut u = Usage::default();
        for (i, f) in USAGE_FIELDS.iter().enumerate() {
            (f.set)(
                &mut u,
                match f.kind {
                    crate::cost::ledger::FieldKind::Real => FieldValue::Real(x * (i + 1) as f64),
                    crate::cost::ledger::FieldKind::Count => FieldValue::Count(n + i as u64),
                },
            );
        }
        u
    }

    fn arb_allocation() -> impl Strategy<Value = Option<Allocation>> {
        let holder = ("(GPU-1|MIG-[1-3])", "(ml|web|ops)", "p[0-3]", "c[0-2]")
            .prop_map(|(d, ns, pod, c)| holder(&d, &ns, &pod, &c));
        proptest::option::of(proptest::collection::vec(holder, 0..12).prop_map(Allocation::new))
    }

    proptest! {
        /// Whatever the allocations, every field summed over namespaces equals the
        /// fleet's total: nothing is lost or counted twice by the split.
        #[test]
        fn sums_over_namespaces_equal_the_fleet_total(
            intervals in proptest::collection::vec(
                (arb_allocation(), 0u64..1_000_000, 0.0f64..10_000.0), 1..20),
        ) {
            let mut fleet = Usage::default();
            let mut by_namespace: BTreeMap<String, Usage> = BTreeMap::new();
            for (allocation, n, x) in &intervals {
                let whole = sample_usage(*n, *x);
                fleet.add(&whole);
                for (holder, part) in split(&whole, &shares(allocation.as_ref())) {
                    by_namespace.entry(holder.namespace).or_default().add(&part);
                }
            }
            let mut summed = Usage::default();
            for u in by_namespace.values() {
                summed.add(u);
            }
            for f in USAGE_FIELDS {
                match ((f.get)(&summed), (f.get)(&fleet)) {
                    (FieldValue::Real(a), FieldValue::Real(b)) => prop_assert!(
                        (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                        "{}: {a} over namespaces, {b} over the fleet", f.name
                    ),
                    (a, b) => prop_assert_eq!(a, b, "{}", f.name),
                }
            }
        }
    }
}
