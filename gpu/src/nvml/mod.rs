//! The NVML backend: the only code in gpulse that names nvml-wrapper.
//!
//! NVML is opened once and stays open for the life of the process: device handles,
//! GPM samples and the XID event set all borrow it, and keeping handles avoids
//! re-initialising GPUs (1-3 s each without persistence mode). A GPU that falls off
//! the bus keeps its handle and answers NVML_ERROR_GPU_IS_LOST, reported as lost.

mod classify;
mod raw;
mod read;
mod xid;

pub use classify::{ReadOutcome, classify, open_error};

use std::ffi::OsStr;
use std::sync::Arc;

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureThreshold};
use nvml_wrapper::{Device, Nvml};
use tracing::{info, warn};

use crate::workload::ProcReader;
use crate::{BackendError, DeviceInfo, DeviceSample, DeviceState, GpuBackend};

/// nvml.h NVML_NVLINK_MAX_LINKS: the most NVLink links a GPU can have. 36 in the CUDA
/// 13.3.29 header (line 455), 18 in every earlier one (13.2.82 line 443, 12.6.77 line
/// 389; nvml-wrapper-sys 0.10 too); DCGM 4.6 asserts its own per-GPU maximum equal to
/// it (DCGM_NVLINK_MAX_LINKS_PER_GPU 36, dcgmlib/dcgm_structs.h and
/// dcgmlib/dcgm_structs_internal.h). Link ids come from the link-count field, bounded
/// by this.
const NVLINK_MAX_LINKS: u32 = 36;

/// Real GPUs through NVML.
pub struct NvmlBackend {
    nvml: &'static Nvml,
    devices: Vec<Option<Device<'static>>>,
    inventory: Vec<DeviceInfo>,
    state: Vec<read::GpuState>,
    xid: Arc<xid::XidCounts>,
    _xid_watch: Option<xid::Watcher>,
    procs: ProcReader,
    /// Which GPUs were lost at the last reading, to log transitions once.
    lost: Vec<bool>,
}

impl std::fmt::Debug for NvmlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlBackend")
            .field("gpus", &self.inventory.len())
            .finish_non_exhaustive()
    }
}

/// Reads an optional inventory value: anything but a value is "not exposed".
fn opt<T>(r: Result<T, nvml_wrapper::error::NvmlError>) -> Option<T> {
    r.ok()
}

impl NvmlBackend {
    /// Opens NVML from the default library path, or from `library` when given.
    pub fn open(library: Option<&OsStr>) -> Result<NvmlBackend, BackendError> {
        Self::open_with(library, ProcReader::default())
    }

    /// Opens NVML; processes are attributed to workloads through `procs`.
    pub fn open_with(
        library: Option<&OsStr>,
        procs: ProcReader,
    ) -> Result<NvmlBackend, BackendError> {
        let nvml = match library {
            Some(path) => Nvml::builder().lib_path(path).init(),
            None => Nvml::init(),
        }
        .map_err(open_error)?;
        // Handles, GPM samples and the event set borrow NVML for as long as the agent runs.
        let nvml: &'static Nvml = Box::leak(Box::new(nvml));
        let count = nvml.device_count().map_err(|e| BackendError::Nvml {
            action: "counting GPUs",
            detail: e.to_string(),
        })?;
        let driver_version = nvml.sys_driver_version().unwrap_or_default();
        let devices: Vec<Option<Device<'static>>> = (0..count)
            .map(|index| match nvml.device_by_index(index) {
                Ok(d) => Some(d),
                Err(e) => {
                    warn!(index, error = %e, "GPU did not answer at start-up; it will be reported as lost");
                    None
                }
            })
            .collect();
        let inventory: Vec<DeviceInfo> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| describe(nvml, d.as_ref(), i as u32, &driver_version))
            .collect();
        let xid = Arc::new(xid::XidCounts::default());
        let watcher = xid::Watcher::start(nvml, &devices, &inventory, xid.clone());
        info!(gpus = count, driver = %driver_version, xid_events = watcher.is_some(), "NVML opened");
        Ok(NvmlBackend {
            nvml,
            state: (0..inventory.len())
                .map(|_| read::GpuState::default())
                .collect(),
            lost: vec![false; inventory.len()],
            devices,
            inventory,
            xid,
            _xid_watch: watcher,
            procs,
        })
    }
}

fn describe(
    nvml: &Nvml,
    device: Option<&Device<'static>>,
    index: u32,
    driver_version: &str,
) -> DeviceInfo {
    let Some(device) = device else {
        return DeviceInfo {
            index,
            uuid: format!("unknown-gpu-index-{index}"),
            model: "unknown".to_string(),
            driver_version: driver_version.to_string(),
            ..DeviceInfo::default()
        };
    };
    let nvlink_count = read::existing_links(device).len() as u32;
    let mig_enabled = opt(device.mig_mode().map(|m| m.current == 1));
    DeviceInfo {
        index,
        uuid: device
            .uuid()
            .unwrap_or_else(|_| format!("unknown-gpu-index-{index}")),
        model: device.name().unwrap_or_else(|_| "unknown".to_string()),
        pci_bus_id: device.pci_info().map(|p| p.bus_id).unwrap_or_default(),
        memory_total_bytes: opt(device.memory_info().map(|m| m.total)),
        max_sm_clock_mhz: opt(device.max_clock_info(Clock::SM)),
        max_memory_clock_mhz: opt(device.max_clock_info(Clock::Memory)),
        default_power_limit_milliwatts: opt(device.power_management_limit_default()),
        slowdown_temperature_celsius: opt(
            device.temperature_threshold(TemperatureThreshold::Slowdown)
        ),
        shutdown_temperature_celsius: opt(
            device.temperature_threshold(TemperatureThreshold::Shutdown)
        ),
        max_pcie_generation: opt(device.max_pcie_link_gen()),
        max_pcie_width: opt(device.max_pcie_link_width()),
        nvlink_count: Some(nvlink_count),
        mig_enabled,
        driver_version: driver_version.to_string(),
        vbios_version: device.vbios_version().unwrap_or_default(),
        max_graphics_clock_mhz: opt(device.max_clock_info(Clock::Graphics)),
        memory_max_temperature_celsius: opt(
            device.temperature_threshold(TemperatureThreshold::MemoryMax)
        ),
        gpu_max_operating_temperature_celsius: opt(
            device.temperature_threshold(TemperatureThreshold::GpuMax)
        ),
        ecc_enabled: opt(device.is_ecc_enabled().map(|e| e.currently_enabled)),
        architecture: device
            .architecture()
            .map(|a| a.to_string().to_lowercase())
            .unwrap_or_default(),
        mig_instances: if mig_enabled == Some(true) {
            read::mig_instances(nvml, device)
        } else {
            Vec::new()
        },
    }
}

impl NvmlBackend {
    /// XID counts the event thread has seen for a GPU so far: `None` when its events
    /// are not watched. Samples carry the same counts.
    pub fn xid_counts(&self, uuid: &str) -> Option<Vec<(u64, u64)>> {
        self.xid.counts_for(uuid)
    }
}

impl GpuBackend for NvmlBackend {
    fn inventory(&self) -> &[DeviceInfo] {
        &self.inventory
    }

    fn sample(&mut self, now_unix_ms: i64) -> Vec<DeviceSample> {
        let mut samples = Vec::with_capacity(self.inventory.len());
        for (i, info) in self.inventory.iter().enumerate() {
            let sample = match &self.devices[i] {
                Some(device) => read::read_gpu(
                    self.nvml,
                    device,
                    info,
                    &mut self.state[i],
                    &self.xid,
                    &self.procs,
                    now_unix_ms,
                ),
                None => DeviceSample::lost(info.uuid.clone()),
            };
            let now_lost = sample.state == DeviceState::Lost;
            if now_lost != self.lost[i] {
                if now_lost {
                    warn!(index = i, uuid = %info.uuid, "GPU stopped answering (fallen off the bus?); reporting it as lost");
                } else {
                    info!(index = i, uuid = %info.uuid, "GPU answers again");
                }
                self.lost[i] = now_lost;
            }
            samples.push(sample);
        }
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_clear_error_not_a_crash() {
        let err = NvmlBackend::open(Some(OsStr::new("/nonexistent/libnvidia-ml.so.1")))
            .expect_err("no library at that path");
        assert!(
            matches!(err, BackendError::LibraryNotFound { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("libnvidia-ml.so.1"), "{err}");
    }
}
