//! The NVML calls the wrapper cannot make: field values with a scope id (per-link
//! NVLink throughput; nvml-wrapper's FieldId always uses scope 0), the MIG instance ids,
//! and the successors CUDA 13 gave to deprecated functions (nvml-wrapper 0.13 binds
//! them but does not wrap them).

#![allow(
    unsafe_code,
    reason = "raw FFI calls into NVML for functions nvml-wrapper does not wrap"
)]

use std::os::raw::{c_uint, c_ulonglong};

use nvml_wrapper::error::{NvmlError, nvml_try};
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings::{
    nvmlFieldValue_t, nvmlTemperature_v1_t, nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU,
    nvmlValueType_enum_NVML_VALUE_TYPE_DOUBLE, nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_INT,
    nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_LONG_LONG,
    nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT,
    nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG,
    nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
};

/// A whole number NVML sent as a double: a double that holds an integer's bits (the
/// rest of the union zero) is subnormal, and no counter or temperature is one. Some
/// drivers label field 82 (memory temperature) double while filling it as an integer;
/// DCGM ignores the label for that field and reads `uiVal` ("nvbugs/4300930 affecting
/// r545": dcgmlib/src/DcgmCacheManager.cpp,
/// DcgmCacheManager::BufferOrCacheLatestGpuValue, case DCGM_FI_DEV_MEMORY_TEMP_CELSIUS).
pub fn integer_from_double(d: f64) -> Option<u64> {
    if d.is_subnormal() {
        Some(d.to_bits())
    } else if d.is_finite() && d >= 0.0 {
        Some(d as u64)
    } else {
        None
    }
}

/// The value of a field that holds a whole number, whatever type NVML labelled it with.
fn field_integer(v: &nvmlFieldValue_t) -> Option<u64> {
    // SAFETY (each arm): every member of the 8-byte union is plain data; the arm reads
    // the member the value type names, or the integer bits under a mislabelled double.
    unsafe {
        match v.valueType {
            t if t == nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG => Some(v.value.ullVal),
            t if t == nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT => {
                Some(u64::from(v.value.uiVal))
            }
            t if t == nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG => Some(v.value.ulVal),
            t if t == nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_LONG_LONG => {
                u64::try_from(v.value.sllVal).ok()
            }
            t if t == nvmlValueType_enum_NVML_VALUE_TYPE_SIGNED_INT => {
                u64::try_from(v.value.siVal).ok()
            }
            t if t == nvmlValueType_enum_NVML_VALUE_TYPE_DOUBLE => {
                integer_from_double(v.value.dVal)
            }
            _ => None,
        }
    }
}

/// Reads `(field_id, scope_id)` pairs for one device; each value is `None` when NVML
/// answered that field with an error (or a value that is not a whole number).
pub fn scoped_field_values(
    nvml: &Nvml,
    device: &Device<'_>,
    requests: &[(u32, u32)],
) -> Result<Vec<Option<u64>>, NvmlError> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let sym = nvml
        .lib()
        .nvmlDeviceGetFieldValues
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    // SAFETY: nvmlFieldValue_t is plain old data; zeroed is a valid value for every field.
    let mut values: Vec<nvmlFieldValue_t> = requests
        .iter()
        .map(|(field, scope)| {
            let mut v: nvmlFieldValue_t = unsafe { std::mem::zeroed() };
            v.fieldId = *field;
            v.scopeId = *scope;
            v
        })
        .collect();
    let count = i32::try_from(values.len()).map_err(|_| NvmlError::InvalidArg)?;
    // SAFETY: the handle comes from a live Device borrowing a live Nvml; `values` holds
    // `count` initialised elements that NVML fills in place and does not keep.
    unsafe { nvml_try(sym(device.handle(), count, values.as_mut_ptr()))? };
    Ok(values
        .iter()
        .map(|v| (v.nvmlReturn == 0).then(|| field_integer(v)).flatten())
        .collect())
}

/// The GPU and compute instance ids of a MIG device (nvmlDeviceGetGpuInstanceId and
/// nvmlDeviceGetComputeInstanceId, which nvml-wrapper does not wrap).
pub fn mig_instance_ids(nvml: &Nvml, device: &Device<'_>) -> (Option<u32>, Option<u32>) {
    let lib = nvml.lib();
    let read = |sym: Option<&unsafe extern "C" fn(_, *mut c_uint) -> _>| {
        let sym = sym?;
        let mut id: c_uint = 0;
        // SAFETY: the handle comes from a live Device borrowing a live Nvml; `id` is a
        // writable local NVML fills and does not keep.
        let rc = unsafe { sym(device.handle(), &mut id) };
        nvml_try(rc).ok().map(|()| id)
    };
    (
        read(lib.nvmlDeviceGetGpuInstanceId.as_ref().ok()),
        read(lib.nvmlDeviceGetComputeInstanceId.as_ref().ok()),
    )
}

/// nvmlDeviceGetTemperatureV for the GPU sensor: the successor of nvmlDeviceGetTemperature,
/// which CUDA 13 deprecated. `FailedToLoadSymbol` on drivers without it.
pub fn gpu_temperature_v(nvml: &Nvml, device: &Device<'_>) -> Result<u32, NvmlError> {
    let sym = nvml
        .lib()
        .nvmlDeviceGetTemperatureV
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let mut t = nvmlTemperature_v1_t {
        // nvml.h: nvmlTemperature_v1 = NVML_STRUCT_VERSION(Temperature, 1).
        version: std::mem::size_of::<nvmlTemperature_v1_t>() as u32 | (1 << 24),
        sensorType: nvmlTemperatureSensors_enum_NVML_TEMPERATURE_GPU,
        temperature: 0,
    };
    // SAFETY: the handle comes from a live Device borrowing a live Nvml; `t` is a
    // writable local with its version set, which NVML fills and does not keep.
    unsafe { nvml_try(sym(device.handle(), &mut t))? };
    u32::try_from(t.temperature).map_err(|_| NvmlError::UnexpectedVariant(0))
}

/// nvmlDeviceGetCurrentClocksEventReasons: the successor of
/// nvmlDeviceGetCurrentClocksThrottleReasons, which CUDA 13 deprecated.
/// `FailedToLoadSymbol` on drivers without it.
pub fn clocks_event_reasons(nvml: &Nvml, device: &Device<'_>) -> Result<u64, NvmlError> {
    let sym = nvml
        .lib()
        .nvmlDeviceGetCurrentClocksEventReasons
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let mut reasons: c_ulonglong = 0;
    // SAFETY: the handle comes from a live Device borrowing a live Nvml; `reasons` is a
    // writable local NVML fills and does not keep.
    unsafe { nvml_try(sym(device.handle(), &mut reasons))? };
    Ok(reasons)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integer_sent_as_a_double_is_read_as_the_integer() {
        // Field 82 at 37 °C under a double label: the bits of 37 read as a double.
        assert_eq!(integer_from_double(f64::from_bits(37)), Some(37));
        assert_eq!(integer_from_double(37.0), Some(37));
        assert_eq!(integer_from_double(0.0), Some(0));
        assert_eq!(integer_from_double(-1.0), None);
        assert_eq!(integer_from_double(f64::NAN), None);
    }
}
