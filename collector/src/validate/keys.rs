//! Entries of a keyed list become one series each, labelled by their key: two
//! entries with the same key would be two series with identical labels, of which
//! Prometheus silently keeps one. A list holding a key twice is refused. Which field
//! keys each list is declared once, in [`super::wire::bound`].

use std::collections::HashSet;
use std::fmt::Display;
use std::hash::Hash;

use gpulse_gpu::{DeviceInfo, DeviceSample};

use super::{RejectKind, Rejection};

/// The first key seen twice, if any.
fn repeated_key<K: Eq + Hash + Clone>(keys: impl IntoIterator<Item = K>) -> Option<K> {
    let mut seen = HashSet::new();
    keys.into_iter().find(|k| !seen.insert(k.clone()))
}

fn duplicate(kind: RejectKind, owner: &str, list: &str, key: impl Display) -> Rejection {
    Rejection::new(
        kind,
        format!(
            "{owner}: {list} lists {key} twice; each entry must have its own (it is one series)"
        ),
    )
}

/// MIG devices are keyed by uuid across the host: a MIG uuid names one device.
pub fn inventory(gpus: &[DeviceInfo]) -> Result<(), Rejection> {
    let mig_uuids = gpus
        .iter()
        .flat_map(|g| g.mig_instances.iter().map(|m| m.uuid.as_str()));
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

/// NVLink links by link number, XIDs by code, processes by pid, throttle time by policy.
pub fn sample(s: &DeviceSample) -> Result<(), Rejection> {
    let owner = format!("GPU {}", s.uuid);
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
