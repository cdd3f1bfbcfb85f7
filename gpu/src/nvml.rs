//! The NVML backend: the only code in gpulse that names nvml-wrapper.
//!
//! NVML is opened once and kept; device handles are looked up by index on each
//! reading (cheap once NVML is initialised) so that a GPU that falls off the bus
//! is reported as lost instead of poisoning a cached handle.

use std::ffi::OsStr;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor, TemperatureThreshold};
use nvml_wrapper::error::NvmlError;
use tracing::{debug, info, warn};

use crate::{
    BackendError, DeviceInfo, DeviceSample, DeviceState, GpuBackend, Reading, ThrottleReasons,
};

/// nvml.h NVML_NVLINK_MAX_LINKS: the most NVLink links a GPU can have.
const NVLINK_MAX_LINKS: u32 = 18;

/// What one NVML read means for gpulse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The GPU, driver or host does not expose this: report "unsupported", never 0.
    Unsupported,
    /// The GPU stopped answering: the whole reading becomes "lost".
    GpuLost,
    /// A transient failure: report "failed" for this field this time.
    Failed,
}

/// Classifies an NVML error. Kept apart so that every outcome is tested without a GPU.
pub fn classify(err: &NvmlError) -> ReadOutcome {
    match err {
        // Not on this GPU, not in this driver (old driver: symbol missing), or hidden by
        // the host (virtualised GPUs often refuse with NoPermission).
        NvmlError::NotSupported
        | NvmlError::FunctionNotFound
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::NoPermission
        | NvmlError::InvalidArg => ReadOutcome::Unsupported,
        NvmlError::GpuLost | NvmlError::ResetRequired | NvmlError::Uninitialized => {
            ReadOutcome::GpuLost
        }
        _ => ReadOutcome::Failed,
    }
}

/// Maps an error from opening NVML to what the operator should do about it.
pub fn open_error(err: NvmlError) -> BackendError {
    match err {
        NvmlError::LibloadingError(e) => BackendError::LibraryNotFound {
            detail: e.to_string(),
        },
        NvmlError::LibraryNotFound => BackendError::LibraryNotFound {
            detail: "NVML_ERROR_LIBRARY_NOT_FOUND".to_string(),
        },
        NvmlError::DriverNotLoaded => BackendError::DriverNotLoaded,
        NvmlError::NoPermission => BackendError::NoPermission,
        other => BackendError::Nvml {
            action: "initialising NVML",
            detail: other.to_string(),
        },
    }
}

/// Real GPUs through NVML.
pub struct NvmlBackend {
    nvml: Nvml,
    inventory: Vec<DeviceInfo>,
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
fn opt<T>(r: Result<T, NvmlError>) -> Option<T> {
    r.ok()
}

/// Turns one NVML result into a reading; a lost GPU is remembered in `lost`.
fn reading<T>(r: Result<T, NvmlError>, index: u32, lost: &std::cell::Cell<bool>) -> Reading<T> {
    match r {
        Ok(v) => Reading::Value(v),
        Err(e) => match classify(&e) {
            ReadOutcome::Unsupported => Reading::Unsupported,
            ReadOutcome::GpuLost => {
                lost.set(true);
                Reading::Failed
            }
            ReadOutcome::Failed => {
                debug!(index, error = %e, "NVML read failed");
                Reading::Failed
            }
        },
    }
}

impl NvmlBackend {
    /// Opens NVML from the default library path, or from `library` when given.
    pub fn open(library: Option<&OsStr>) -> Result<NvmlBackend, BackendError> {
        let nvml = match library {
            Some(path) => Nvml::builder().lib_path(path).init(),
            None => Nvml::init(),
        }
        .map_err(open_error)?;
        let count = nvml.device_count().map_err(|e| BackendError::Nvml {
            action: "counting GPUs",
            detail: e.to_string(),
        })?;
        let driver_version = nvml.sys_driver_version().unwrap_or_default();
        let inventory: Vec<DeviceInfo> = (0..count)
            .map(|index| Self::describe(&nvml, index, &driver_version))
            .collect();
        info!(gpus = count, driver = %driver_version, "NVML opened");
        Ok(NvmlBackend {
            lost: vec![false; inventory.len()],
            nvml,
            inventory,
        })
    }

    fn describe(nvml: &Nvml, index: u32, driver_version: &str) -> DeviceInfo {
        let device = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                warn!(index, error = %e, "GPU did not answer at start-up; it will be reported as lost");
                return DeviceInfo {
                    index,
                    uuid: format!("unknown-gpu-index-{index}"),
                    model: "unknown".to_string(),
                    driver_version: driver_version.to_string(),
                    ..DeviceInfo::default()
                };
            }
        };
        let nvlink_count = (0..NVLINK_MAX_LINKS)
            .filter(|&link| device.link_wrapper_for(link).is_active().is_ok())
            .count() as u32;
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
            mig_enabled: opt(device.mig_mode().map(|m| m.current == 1)),
            driver_version: driver_version.to_string(),
            vbios_version: device.vbios_version().unwrap_or_default(),
            ..DeviceInfo::default()
        }
    }

    fn read_gpu(&self, info: &DeviceInfo) -> DeviceSample {
        let device = match self.nvml.device_by_index(info.index) {
            Ok(d) => d,
            Err(e) => {
                debug!(index = info.index, error = %e, "no handle for GPU");
                return DeviceSample::lost(info.uuid.clone());
            }
        };
        let lost = std::cell::Cell::new(false);
        let read = |r| reading(r, info.index, &lost);
        let utilization =
            reading(device.utilization_rates(), info.index, &lost).map(|u| (u.gpu, u.memory));
        let sample = DeviceSample {
            uuid: info.uuid.clone(),
            state: DeviceState::Ok,
            gpu_utilization_percent: utilization.map(|u| u.0),
            memory_utilization_percent: utilization.map(|u| u.1),
            sm_clock_mhz: read(device.clock_info(Clock::SM)),
            memory_clock_mhz: read(device.clock_info(Clock::Memory)),
            temperature_celsius: read(device.temperature(TemperatureSensor::Gpu)),
            power_usage_milliwatts: read(device.power_usage()),
            power_limit_milliwatts: read(device.enforced_power_limit()),
            energy_millijoules: reading(device.total_energy_consumption(), info.index, &lost),
            throttle_reasons: reading(device.current_throttle_reasons(), info.index, &lost)
                .map(|r| ThrottleReasons::from_bits_retain(r.bits())),
            memory_used_bytes: reading(device.memory_info(), info.index, &lost).map(|m| m.used),
            pcie_generation: read(device.current_pcie_link_gen()),
            pcie_width: read(device.current_pcie_link_width()),
            pcie_replays: read(device.pcie_replay_counter()).map(u64::from),
            ..DeviceSample::default()
        };
        if lost.get() {
            DeviceSample::lost(info.uuid.clone())
        } else {
            sample
        }
    }
}

impl GpuBackend for NvmlBackend {
    fn inventory(&self) -> &[DeviceInfo] {
        &self.inventory
    }

    fn sample(&mut self, _now_unix_ms: i64) -> Vec<DeviceSample> {
        let samples: Vec<DeviceSample> = self.inventory.iter().map(|i| self.read_gpu(i)).collect();
        for (i, s) in samples.iter().enumerate() {
            let now_lost = s.state == DeviceState::Lost;
            if now_lost != self.lost[i] {
                if now_lost {
                    warn!(index = i, uuid = %s.uuid, "GPU stopped answering (fallen off the bus?); reporting it as lost");
                } else {
                    info!(index = i, uuid = %s.uuid, "GPU answers again");
                }
                self.lost[i] = now_lost;
            }
        }
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_supported_and_old_driver_symbols_are_unsupported() {
        for e in [
            NvmlError::NotSupported,
            NvmlError::FunctionNotFound,
            NvmlError::FailedToLoadSymbol("nvmlDeviceGetTotalEnergyConsumption".into()),
            NvmlError::NoPermission,
        ] {
            assert_eq!(classify(&e), ReadOutcome::Unsupported, "{e:?}");
        }
    }

    #[test]
    fn a_lost_gpu_is_lost() {
        assert_eq!(classify(&NvmlError::GpuLost), ReadOutcome::GpuLost);
    }

    #[test]
    fn transient_errors_are_failures() {
        for e in [
            NvmlError::Timeout,
            NvmlError::Unknown,
            NvmlError::InsufficientSize(None),
        ] {
            assert_eq!(classify(&e), ReadOutcome::Failed, "{e:?}");
        }
    }

    #[test]
    fn open_errors_say_what_to_do() {
        assert!(matches!(
            open_error(NvmlError::DriverNotLoaded),
            BackendError::DriverNotLoaded
        ));
        let msg = open_error(NvmlError::DriverNotLoaded).to_string();
        assert!(msg.contains("--simulate"), "{msg}");
    }

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
