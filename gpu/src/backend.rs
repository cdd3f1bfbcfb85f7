//! The one interface every source of GPU readings implements.

use crate::{DeviceInfo, DeviceSample};

/// A source of GPU readings: real NVML, the simulator, or a replay.
///
/// Blocking by design (NVML is synchronous FFI): async callers run it on a blocking
/// thread. The inventory is fixed when the backend opens; a GPU that disappears later
/// is reported as [`crate::DeviceState::Lost`] in its samples, never removed.
pub trait GpuBackend: Send {
    /// The GPUs of this host, in index order.
    fn inventory(&self) -> &[DeviceInfo];

    /// Reads every GPU once. `now_unix_ms` is the reading's timestamp; backends that
    /// model time (the simulator) advance by it, so the same timestamps give the same
    /// readings. Returns one sample per inventory entry, in the same order.
    fn sample(&mut self, now_unix_ms: i64) -> Vec<DeviceSample>;
}

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "the NVML library (libnvidia-ml.so.1) could not be loaded: {detail}. Install the NVIDIA driver, \
         point --nvml-library (or nvml_library in the config) at the library, or run with --simulate to use the simulator"
    )]
    LibraryNotFound { detail: String },
    #[error(
        "the NVML library loaded but the NVIDIA kernel driver is not running (NVML_ERROR_DRIVER_NOT_LOADED). \
         Load the driver (nvidia-smi should list the GPUs) or run with --simulate"
    )]
    DriverNotLoaded,
    #[error(
        "NVML refused access (NVML_ERROR_NO_PERMISSION): run the agent as a user that can open /dev/nvidia*"
    )]
    NoPermission,
    #[error("NVML failed while {action}: {detail}")]
    Nvml {
        action: &'static str,
        detail: String,
    },
    #[error("invalid simulator spec {spec:?}: {reason}")]
    InvalidSimSpec { spec: String, reason: String },
}

impl BackendError {
    /// A bounded kind, for metric labels and the Hello.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::LibraryNotFound { .. } => "library_not_found",
            BackendError::DriverNotLoaded => "driver_not_loaded",
            BackendError::NoPermission => "no_permission",
            BackendError::Nvml { .. } => "nvml_error",
            BackendError::InvalidSimSpec { .. } => "invalid_sim_spec",
        }
    }
}
