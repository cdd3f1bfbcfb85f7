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
        let mut set = match nvml.create_event_set() {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "no NVML event set: XID events are not watched");
                return None;
            }
        };
        for (device, info) in devices.iter().zip(inventory) {
            let Some(device) = device else { continue };
            let supported = device
                .supported_event_types()
                .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
            if !supported {
                continue;
            }
            set = match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(s) => {
                    counts
                        .registered
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(info.uuid.clone());
                    s
                }
                Err(e) => {
                    warn!(uuid = %info.uuid, error = %e.error, "cannot watch XID events of this GPU");
                    // A failed registration consumes the set: start a fresh one.
                    nvml.create_event_set().ok()?
                }
            };
        }
        if counts
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("gpulse-xid".into())
            .spawn(move || {
                let mut warned = false;
                while !thread_stop.load(Ordering::Relaxed) {
                    match set.wait(WAIT_MS) {
                        Ok(event) => {
                            if let Some(XidError::Value(code)) = event.event_data
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
