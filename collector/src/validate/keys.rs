//! Entries of a keyed list become one series each, labelled by their key: two
//! entries with the same key would be two series with identical labels, of which
//! Prometheus silently keeps one. A list holding a key twice is refused. Which field
//! keys each list is declared once, in [`super::wire::bound`].

use std::collections::HashSet;
use std::fmt::Display;
use std::hash::Hash;

use gpulse_gpu::{DeviceInfo, DeviceSample};

use super::{RejectKind, Rejection};

/// Lists up to this long are searched pairwise rather than through a hash set: faster
/// for the lists a GPU has (18 NVLink links, a handful of XIDs and processes).
const PAIRWISE_UP_TO: usize = 32;

/// The first key seen twice, if any.
pub(crate) fn repeated_key<K, I>(keys: I) -> Option<K>
where
    K: Eq + Hash + Clone,
    I: IntoIterator<Item = K>,
    I::IntoIter: ExactSizeIterator + Clone,
{
    let keys = keys.into_iter();
    if keys.len() <= PAIRWISE_UP_TO {
        return keys
            .clone()
            .enumerate()
            .find(|(i, k)| keys.clone().take(*i).any(|earlier| earlier == *k))
            .map(|(_, k)| k);
    }
    let mut seen = HashSet::with_capacity(keys.len());
    keys.into_iter().find(|k| !seen.insert(k.clone()))
}

/// A GPU as a refusal names it, formatted only when one is made.
struct OwnerName<'a>(&'a str);

impl Display for OwnerName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GPU {}", self.0)
    }
}

fn duplicate(kind: RejectKind, owner: impl Display, list: &str, key: impl Display) -> Rejection {
    Rejection::new(
        kind,
        format!(
            "{owner}: {list} lists {key} twice; each entry must have its own (it is one series)"
        ),
    )
}

/// MIG devices are keyed by uuid across the host: a MIG uuid names one device.
pub fn inventory(gpus: &[DeviceInfo]) -> Result<(), Rejection> {
    let mig_uuids: Vec<&str> = gpus
        .iter()
        .flat_map(|g| g.mig_instances.iter().map(|m| m.uuid.as_str()))
        .collect();
    if let Some(uuid) = repeated_key(mig_uuids) {
        return Err(duplicate(
            RejectKind::InvalidInventory,
            "inventory",
            "GpuInfo.mig_instances",
            format!("MIG uuid {uuid:?}"),
        ));
    }
    Ok(())
}

/// Every holder names the GPU itself or one of its MIG devices: a holder of another
/// device would label, and bill, a GPU that is not this one. Unchecked when the
/// inventory is not at hand.
pub fn held_devices(s: &DeviceSample, info: Option<&DeviceInfo>) -> Result<(), Rejection> {
    let (Some(info), Some(allocation)) = (info, &s.allocation) else {
        return Ok(());
    };
    let known = |uuid: &str| uuid == info.uuid || info.mig_instances.iter().any(|m| m.uuid == uuid);
    match allocation.holders.iter().find(|h| !known(&h.device_uuid)) {
        Some(h) => Err(Rejection::new(
            RejectKind::UnknownGpu,
            format!(
                "GPU {}: Allocation.holders names device {:?} (held by {}/{}), which is neither this GPU nor one of its MIG devices in the Hello; restart the agent after changing MIG devices",
                s.uuid, h.device_uuid, h.namespace, h.pod
            ),
        )),
        None => Ok(()),
    }
}

/// NVLink links by link number, XIDs by code, processes by pid, holders by the whole
/// holder, throttle time by policy.
pub fn sample(s: &DeviceSample) -> Result<(), Rejection> {
    let owner = OwnerName(&s.uuid);
    let kind = RejectKind::DuplicateKey;
    if let Some(link) = s
        .nvlinks
        .get()
        .and_then(|l| repeated_key(l.iter().map(|l| l.link)))
    {
        return Err(duplicate(
            kind,
            &owner,
            "NvLinks.links",
            format!("link {link}"),
        ));
    }
    if let Some(xid) = s
        .xid_errors
        .get()
        .and_then(|x| repeated_key(x.iter().map(|(code, _)| *code)))
    {
        return Err(duplicate(
            kind,
            &owner,
            "XidCounts.counts",
            format!("XID {xid}"),
        ));
    }
    if let Some(pid) = s
        .processes
        .get()
        .and_then(|p| repeated_key(p.iter().map(|p| p.pid)))
    {
        return Err(duplicate(
            kind,
            &owner,
            "Processes.processes",
            format!("pid {pid}"),
        ));
    }
    if let Some(h) = s
        .allocation
        .as_ref()
        .and_then(|a| repeated_key(a.holders.iter()))
    {
        return Err(duplicate(
            kind,
            &owner,
            "Allocation.holders",
            format!(
                "container {}/{}/{} on device {}",
                h.namespace, h.pod, h.container, h.device_uuid
            ),
        ));
    }
    if let Some(policy) = s
        .throttle_time
        .get()
        .and_then(|t| repeated_key(t.nanoseconds.iter().map(|(p, _)| *p)))
    {
        return Err(duplicate(
            kind,
            &owner,
            "ThrottleTime.policies",
            format!("policy {policy:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Short lists (pairwise) and long ones (hashed) find the same first repeat.
        #[test]
        fn the_first_repeated_key_is_found_at_any_length(keys in prop::collection::vec(0u8..40, 0..80)) {
            let mut seen = Vec::new();
            let expected = keys.iter().copied().find(|k| {
                let again = seen.contains(k);
                seen.push(*k);
                again
            });
            prop_assert_eq!(repeated_key(keys.iter().copied()), expected);
        }
    }
    use gpulse_gpu::simulator::Simulator;
    use gpulse_gpu::{DeviceHolder, GpuBackend};

    #[test]
    fn a_holder_of_a_device_the_gpu_does_not_have_is_refused() {
        let mut sim = Simulator::new("gpus=2,model=a100,mig=2,pods=2".parse().unwrap());
        let inventory = sim.inventory().to_vec();
        let mut gpus = sim.sample(0);
        for (g, info) in gpus.iter().zip(&inventory) {
            assert_eq!(held_devices(g, Some(info)), Ok(()));
        }
        // GPU 1's MIG device held, as told by GPU 0.
        let other = inventory[1].mig_instances[0].uuid.clone();
        gpus[0]
            .allocation
            .as_mut()
            .unwrap()
            .holders
            .push(DeviceHolder {
                device_uuid: other.clone(),
                namespace: "ml".into(),
                pod: "p".into(),
                container: "c".into(),
            });
        let r = held_devices(&gpus[0], Some(&inventory[0])).unwrap_err();
        assert_eq!(r.kind, RejectKind::UnknownGpu);
        assert!(r.message.contains(&other), "{}", r.message);
        assert_eq!(held_devices(&gpus[0], None), Ok(()));
    }
}
