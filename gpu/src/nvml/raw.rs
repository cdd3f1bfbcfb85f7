//! The one NVML call the wrapper cannot make: field values with a scope id (per-link
//! NVLink throughput). nvml-wrapper's FieldId always uses scope 0.

#![allow(
    unsafe_code,
    reason = "a raw FFI call into NVML for a function nvml-wrapper does not wrap"
)]

use nvml_wrapper::error::{NvmlError, nvml_try};
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings::{
    nvmlFieldValue_t, nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
};

/// Reads `(field_id, scope_id)` pairs for one device; each value is `None` when NVML
/// answered that field with an error (or a value type other than unsigned 64-bit).
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
        .map(|v| {
            if v.nvmlReturn == 0
                && v.valueType == nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
            {
                // SAFETY: the value type says the union holds an unsigned long long.
                Some(unsafe { v.value.ullVal })
            } else {
                None
            }
        })
        .collect())
}

/// The GPU and compute instance ids of a MIG device (nvmlDeviceGetGpuInstanceId and
/// nvmlDeviceGetComputeInstanceId, which nvml-wrapper does not wrap).
pub fn mig_instance_ids(nvml: &Nvml, device: &Device<'_>) -> (Option<u32>, Option<u32>) {
    let lib = nvml.lib();
    let read = |sym: Option<&unsafe extern "C" fn(_, *mut std::os::raw::c_uint) -> _>| {
        let sym = sym?;
        let mut id: std::os::raw::c_uint = 0;
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
