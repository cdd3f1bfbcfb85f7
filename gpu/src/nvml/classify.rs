//! What an NVML error means for gpulse. Kept apart so every outcome is tested without
//! a GPU.

use nvml_wrapper::error::NvmlError;

use crate::BackendError;

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

/// NVML_ERROR_DEPRECATED = 26 (nvml.h 13.3.29 line 1324; already in 12.6.77, line
/// 1069): what a function answers once a driver has removed it. CUDA 13 marks
/// nvmlDeviceGetViolationStatus and others DEPRECATED(13.0), "removed in CUDA 14.0"
/// (13.3.29 lines 7660-7675). nvml-wrapper 0.13 has no variant for it and reports
/// `UnexpectedVariant(26)`.
pub const NVML_ERROR_DEPRECATED: u32 = 26;

/// Classifies an NVML error.
pub fn classify(err: &NvmlError) -> ReadOutcome {
    match err {
        // A removed function is as absent as a missing symbol.
        NvmlError::UnexpectedVariant(NVML_ERROR_DEPRECATED) => ReadOutcome::Unsupported,
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
            NvmlError::UnexpectedVariant(NVML_ERROR_DEPRECATED),
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
            NvmlError::UnexpectedVariant(27),
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
}
