//! XID events: a thread waits on an NVML event set and counts critical XID errors per
//! GPU and code, so samples carry cumulative counts (not dcgm-exporter's "last XID").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use tracing::{debug, warn};

use crate::DeviceInfo;

/// How long one wait blocks, so the thread notices it should stop.
const WAIT_MS: u32 = 500;

/// XID counts per GPU uuid and code, shared between the event thread and the sampler.
#[derive(Debug, Default)]
pub struct XidCounts {
    counts: Mutex<HashMap<String, BTreeMap<u64, u64>>>,
    registered: Mutex<HashSet<String>>,
}

impl XidCounts {
    fn record(&self, uuid: String, code: u64) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(uuid).or_default().entry(code).or_default() += 1;
    }

    /// Cumulative (code, count) pairs for a GPU; `None` when its events are not watched.
    pub fn counts_for(&self, uuid: &str) -> Option<Vec<(u64, u64)>> {
        if !self
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(uuid)
        {
            return None;
        }
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            counts
                .get(uuid)
                .map(|m| m.iter().map(|(c, n)| (*c, *n)).collect())
                .unwrap_or_default(),
        )
    }
}

/// The XID code of an event. nvml-wrapper turns 999 into `Unknown`; it is still an XID
/// the driver raised (nvml.h: "999 - Unknown"), so it is counted under 999.
fn xid_code(e: XidError) -> u64 {
    match e {
        XidError::Value(code) => code,
        XidError::Unknown => XID_UNKNOWN,
    }
}

/// nvml.h: eventData 999 for an XID the driver cannot name.
const XID_UNKNOWN: u64 = 999;

/// The event thread; stops when dropped.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Watcher {
    /// Registers every GPU that supports critical XID events; `None` when none does.
    pub fn start(
        nvml: &'static Nvml,
        devices: &[Option<Device<'static>>],
        inventory: &[DeviceInfo],
        counts: Arc<XidCounts>,
    ) -> Option<Watcher> {
        // A failed registration frees the whole set (nvml-wrapper releases it on any
        // error, as nvml.h asks after NVML_ERROR_UNKNOWN), so the GPUs registered
        // before it are unwatched too: start again on a fresh set without the GPU that
        // failed, until every GPU left registers. At most one retry per GPU.
        let candidates: Vec<(&Device<'static>, &DeviceInfo)> = devices
            .iter()
            .zip(inventory)
            .filter_map(|(d, info)| d.as_ref().map(|d| (d, info)))
            .filter(|(d, _)| {
                d.supported_event_types()
                    .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR))
            })
            .collect();
        let mut excluded: HashSet<String> = HashSet::new();
        let set = 'attempt: loop {
            let mut set = match nvml.create_event_set() {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "no NVML event set: XID events are not watched");
                    return None;
                }
            };
            for (device, info) in &candidates {
                if excluded.contains(&info.uuid) {
                    continue;
                }
                set = match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(uuid = %info.uuid, error = %e.error, "cannot watch XID events of this GPU");
                        excluded.insert(info.uuid.clone());
                        continue 'attempt;
                    }
                };
            }
            break set;
        };
        let watched: HashSet<String> = candidates
            .iter()
            .map(|(_, info)| info.uuid.clone())
            .filter(|uuid| !excluded.contains(uuid))
            .collect();
        if watched.is_empty() {
            return None;
        }
        *counts.registered.lock().unwrap_or_else(|p| p.into_inner()) = watched;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("gpulse-xid".into())
            .spawn(move || {
                let mut warned = false;
                while !thread_stop.load(Ordering::Relaxed) {
                    match set.wait(WAIT_MS) {
                        Ok(event) => {
                            if let Some(code) = event.event_data.map(xid_code)
                                && let Ok(uuid) = event.device.uuid()
                            {
                                warn!(%uuid, xid = code, "XID error");
                                counts.record(uuid, code);
                            }
                        }
                        Err(NvmlError::Timeout) => {}
                        Err(e) => {
                            if !warned {
                                warn!(error = %e, "waiting for XID events failed; retrying");
                                warned = true;
                            }
                            std::thread::sleep(std::time::Duration::from_millis(u64::from(
                                WAIT_MS,
                            )));
                        }
                    }
                }
            })
            .ok()?;
        Some(Watcher {
            stop,
            thread: Some(thread),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_xid_is_counted_as_999() {
        assert_eq!(xid_code(XidError::Unknown), 999);
        assert_eq!(xid_code(XidError::Value(79)), 79);
    }
}
