//! The exported C functions: NVML's, with nvml.h's signatures, and the library's own
//! `gpulse_mock_*` controls.
//!
//! This is the crate's only unsafe code. Each export checks the caller's pointers for
//! NULL (NVML_ERROR_INVALID_ARGUMENT), turns them into references or slices, and hands
//! those to safe code; each runs inside `catch_unwind`, so a panic answers
//! NVML_ERROR_UNKNOWN instead of unwinding into C. Handles are small integers in
//! pointer clothing (a GPU's index + 1, an event set's or GPM sample's id) and are never
//! dereferenced.
//!
//! With `cfg(nvml_mock_legacy)` the functions newer drivers added are left out, so that
//! a client sees what it sees on an old driver: the symbol is missing.

#![allow(
    unsafe_code,
    reason = "a C ABI: #[no_mangle] exports, and the raw pointers C callers pass"
)]
#![allow(non_snake_case, reason = "the exports carry NVML's C names")]

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong};
use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::device;
use crate::nvml_h::{
    EventData, Handle, MEMORY_V2_VERSION, MemoryV2, NvmlResult, PciInfo, ProcessUtilizationSample,
    Ret, Utilization, ViolationTime, event_type,
};
#[cfg(not(nvml_mock_legacy))]
use crate::nvml_h::{
    FieldValue, GPM_STRUCT_VERSION, GpmMetric, GpmMetricsGet, GpmSupport, ProcessInfo,
    TEMPERATURE_V1_VERSION, Temperature, gpm_metric,
};
use crate::state::{self, Access};

/// `nvmlReturn_t` as C sees it.
type Return = u32;

/// Runs one export: its answer, or NVML_ERROR_UNKNOWN if it panicked.
fn guard(f: impl FnOnce() -> NvmlResult<()>) -> Return {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Ret::SUCCESS.0,
        Ok(Err(e)) => e.0,
        Err(_) => Ret::UNKNOWN.0,
    }
}

/// A handle for an index + 1 or an id (never 0, so never NULL).
fn handle(id: usize) -> Handle {
    std::ptr::without_provenance_mut(id)
}

/// The caller's out-parameter, or NVML_ERROR_INVALID_ARGUMENT for NULL. It may be
/// uninitialised (C callers pass fresh locals), hence `MaybeUninit`.
///
/// # Safety
/// `p` is NULL or valid for writes of a `T` for the duration of the call.
unsafe fn out<'a, T>(p: *mut T) -> NvmlResult<&'a mut MaybeUninit<T>> {
    // SAFETY: forwarded from the caller; MaybeUninit<T> has T's layout and needs no
    // initialised value behind the reference.
    unsafe { p.cast::<MaybeUninit<T>>().as_mut() }.ok_or(Ret::INVALID_ARGUMENT)
}

/// The caller's in/out parameter (a versioned struct, a capacity), or
/// NVML_ERROR_INVALID_ARGUMENT for NULL.
///
/// # Safety
/// `p` is NULL or valid for reads and writes of an initialised `T` for the duration of
/// the call.
unsafe fn inout<'a, T>(p: *mut T) -> NvmlResult<&'a mut T> {
    // SAFETY: forwarded from the caller.
    unsafe { p.as_mut() }.ok_or(Ret::INVALID_ARGUMENT)
}

/// The caller's output array of `len` elements, or NVML_ERROR_INVALID_ARGUMENT for NULL.
///
/// # Safety
/// `p` is NULL or valid for writes of `len` elements for the duration of the call.
unsafe fn out_slice<'a, T>(p: *mut T, len: usize) -> NvmlResult<&'a mut [MaybeUninit<T>]> {
    if p.is_null() {
        return Err(Ret::INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, and valid for writes of `len` elements as the caller promises;
    // MaybeUninit needs nothing initialised.
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<MaybeUninit<T>>(), len) })
}

/// Writes `s` and its NUL into a C string buffer of `length` bytes:
/// NVML_ERROR_INVALID_ARGUMENT for NULL, NVML_ERROR_INSUFFICIENT_SIZE when it does not fit.
///
/// # Safety
/// `buf` is NULL or valid for writes of `length` bytes for the duration of the call.
unsafe fn put_str(buf: *mut c_char, length: c_uint, s: &str) -> NvmlResult<()> {
    // SAFETY: forwarded from the caller; c_char and u8 have the same layout.
    let buf = unsafe { out_slice(buf.cast::<u8>(), length as usize) }?;
    for (dst, byte) in buf.iter_mut().zip(device::c_string(s, length as usize)?) {
        dst.write(byte);
    }
    Ok(())
}

/// An optional C string argument.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the duration of the call.
unsafe fn in_str<'a>(p: *const c_char) -> Result<Option<&'a str>, String> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated, as the caller promises.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| format!("{s:?} is not UTF-8"))
}

/// An export that answers one value of a GPU into its last parameter.
macro_rules! getter {
    ($(#[$attr:meta])* fn $name:ident($($arg:ident: $arg_ty:ty),*) -> $out_ty:ty,
     $access:ident, |$gpu:ident| $body:expr) => {
        $(#[$attr])*
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            device: Handle,
            $($arg: $arg_ty,)*
            value: *mut $out_ty,
        ) -> Return {
            guard(|| {
                // SAFETY: nvml.h: the last parameter is NULL or a value for NVML to fill.
                let value = unsafe { out(value) }?;
                value.write(state::with_gpu(device.addr(), Access::$access, |$gpu| $body)?);
                Ok(())
            })
        }
    };
}

/// An export that answers a GPU's string into a caller's buffer.
macro_rules! string_getter {
    ($name:ident, |$gpu:ident| $body:expr) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(device: Handle, buf: *mut c_char, length: c_uint) -> Return {
            guard(|| {
                if buf.is_null() {
                    return Err(Ret::INVALID_ARGUMENT);
                }
                let s = state::with_gpu(device.addr(), Access::Inventory, |$gpu| {
                    Ok($body.to_string())
                })?;
                // SAFETY: nvml.h: `buf` holds `length` bytes.
                unsafe { put_str(buf, length, &s) }
            })
        }
    };
}

// Initialisation and the system.

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> Return {
    guard(state::init)
}

/// Flags (NVML_INIT_FLAG_NO_GPUS, _NO_ATTACH) change nothing: the simulated GPUs are
/// always there and always attached.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Return {
    guard(state::init)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> Return {
    guard(state::shutdown)
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: Return) -> *const c_char {
    catch_unwind(|| Ret(result).message())
        .unwrap_or(c"Unknown Error")
        .as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> Return {
    guard(|| {
        if version.is_null() {
            return Err(Ret::INVALID_ARGUMENT);
        }
        let s = state::driver_version()?;
        // SAFETY: nvml.h: `version` holds `length` bytes.
        unsafe { put_str(version, length, &s) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> Return {
    guard(|| {
        if version.is_null() {
            return Err(Ret::INVALID_ARGUMENT);
        }
        let s = state::nvml_version()?;
        // SAFETY: nvml.h: `version` holds `length` bytes.
        unsafe { put_str(version, length, &s) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(device_count: *mut c_uint) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a count for NVML to fill.
        let count = unsafe { out(device_count) }?;
        count.write(state::device_count()?);
        Ok(())
    })
}

/// The handle of a GPU (index + 1); see [`state::handle_by_index`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut Handle,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a handle for NVML to fill.
        let device = unsafe { out(device) }?;
        device.write(handle(state::handle_by_index(index)?));
        Ok(())
    })
}

// Inventory.

/// The UUID of a GPU, or of a MIG instance ("MIG-...") for a MIG device handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: Handle,
    buf: *mut c_char,
    length: c_uint,
) -> Return {
    guard(|| {
        if buf.is_null() {
            return Err(Ret::INVALID_ARGUMENT);
        }
        let s = match state::with_mig(device.addr(), |m| Ok(m.uuid.clone())) {
            Some(r) => r?,
            None => state::with_gpu(device.addr(), Access::Inventory, |g| {
                Ok(g.uuid().to_string())
            })?,
        };
        // SAFETY: nvml.h: `buf` holds `length` bytes.
        unsafe { put_str(buf, length, &s) }
    })
}

/// nvmlDeviceGetMigDeviceHandleByIndex: MIG instance `index` of a GPU in MIG mode.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: Handle,
    index: c_uint,
    mig: *mut Handle,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a handle for NVML to fill.
        let mig = unsafe { out(mig) }?;
        mig.write(handle(state::mig_handle(device.addr(), index)?));
        Ok(())
    })
}

/// An export that answers one id of a MIG device; INVALID_ARGUMENT for a whole GPU, as
/// NVML.
macro_rules! mig_id_getter {
    ($name:ident, |$mig:ident| $body:expr) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(device: Handle, id: *mut c_uint) -> Return {
            guard(|| {
                // SAFETY: nvml.h: NULL or a value for NVML to fill.
                let id = unsafe { out(id) }?;
                let v = state::with_mig(device.addr(), |$mig| $body.ok_or(Ret::NOT_SUPPORTED))
                    .unwrap_or(Err(Ret::INVALID_ARGUMENT))?;
                id.write(v);
                Ok(())
            })
        }
    };
}

mig_id_getter!(nvmlDeviceGetGpuInstanceId, |m| m.gpu_instance_id);
mig_id_getter!(nvmlDeviceGetComputeInstanceId, |m| m.compute_instance_id);
string_getter!(nvmlDeviceGetName, |g| g.name());
string_getter!(nvmlDeviceGetVbiosVersion, |g| g.vbios_version());

getter!(fn nvmlDeviceGetIndex() -> c_uint, Inventory, |g| Ok(g.index));
getter!(fn nvmlDeviceGetPciInfo_v3() -> PciInfo, Inventory, |g| Ok(g.pci_info()));
getter!(fn nvmlDeviceGetMaxClockInfo(clock_type: c_uint) -> c_uint, Inventory,
    |g| g.max_clock(clock_type));
getter!(fn nvmlDeviceGetPowerManagementDefaultLimit() -> c_uint, Inventory,
    |g| g.default_power_limit());
getter!(fn nvmlDeviceGetTemperatureThreshold(threshold: c_uint) -> c_uint, Inventory,
    |g| g.temperature_threshold(threshold));
getter!(fn nvmlDeviceGetMaxPcieLinkGeneration() -> c_uint, Inventory,
    |g| g.max_pcie_generation());
getter!(fn nvmlDeviceGetMaxPcieLinkWidth() -> c_uint, Inventory, |g| g.max_pcie_width());
getter!(fn nvmlDeviceGetArchitecture() -> c_uint, Inventory, |g| Ok(g.architecture()));
getter!(fn nvmlDeviceGetMaxMigDeviceCount() -> c_uint, Inventory,
    |g| g.max_mig_device_count());
// Whether a link is up is read with the inventory (to count links), so it does not
// count as a reading.
getter!(fn nvmlDeviceGetNvLinkState(link: c_uint) -> c_uint, Inventory,
    |g| g.nvlink_state(link));
getter!(fn nvmlDeviceGetSupportedClocksThrottleReasons() -> c_ulonglong, Inventory,
    |g| g.supported_clocks_throttle_reasons());
getter!(#[cfg(not(nvml_mock_legacy))]
    fn nvmlDeviceGetSupportedClocksEventReasons() -> c_ulonglong, Inventory,
    |g| g.supported_clocks_event_reasons());
getter!(fn nvmlDeviceGetSupportedEventTypes() -> c_ulonglong, Inventory,
    |g| Ok(g.supported_event_types()));

/// nvmlMemory_v2_t: the caller sets `version`; a wrong one is
/// NVML_ERROR_ARGUMENT_VERSION_MISMATCH, as with NVML.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: Handle,
    memory: *mut MemoryV2,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a struct for NVML to fill, its version set.
        let memory = unsafe { inout(memory) }?;
        if memory.version != MEMORY_V2_VERSION {
            return Err(Ret::ARGUMENT_VERSION_MISMATCH);
        }
        let (total, used) = match state::with_mig(device.addr(), |m| {
            Ok((m.memory_total_bytes.ok_or(Ret::NOT_SUPPORTED)?, 0))
        }) {
            Some(r) => r?,
            None => state::with_gpu(device.addr(), Access::Inventory, |g| g.memory())?,
        };
        memory.total = total;
        memory.used = used;
        memory.reserved = 0;
        memory.free = total - used;
        Ok(())
    })
}

/// The two enable states (current, pending) of a mode.
macro_rules! mode_getter {
    ($name:ident, |$gpu:ident| $body:expr) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            device: Handle,
            current: *mut c_uint,
            pending: *mut c_uint,
        ) -> Return {
            guard(|| {
                // SAFETY: nvml.h: each is NULL or a value for NVML to fill.
                let (current, pending) = unsafe { (out(current)?, out(pending)?) };
                let (c, p) = state::with_gpu(device.addr(), Access::Inventory, |$gpu| $body)?;
                current.write(c);
                pending.write(p);
                Ok(())
            })
        }
    };
}

mode_getter!(nvmlDeviceGetMigMode, |g| g.mig_mode());
mode_getter!(nvmlDeviceGetEccMode, |g| g.ecc_mode());

// Readings.

getter!(fn nvmlDeviceGetUtilizationRates() -> Utilization, Reading, |g| g.utilization());
getter!(fn nvmlDeviceGetClockInfo(clock_type: c_uint) -> c_uint, Reading,
    |g| g.clock(clock_type));
getter!(fn nvmlDeviceGetApplicationsClock(clock_type: c_uint) -> c_uint, Reading,
    |g| g.applications_clock(clock_type));
getter!(fn nvmlDeviceGetTemperature(sensor: c_uint) -> c_uint, Reading, |g| g.temperature(sensor));
/// nvmlTemperature_t: the caller sets `version` and `sensorType`.
#[cfg(not(nvml_mock_legacy))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperatureV(
    device: Handle,
    temperature: *mut Temperature,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a struct for NVML to fill, its version and sensor set.
        let t = unsafe { inout(temperature) }?;
        if t.version != TEMPERATURE_V1_VERSION {
            return Err(Ret::ARGUMENT_VERSION_MISMATCH);
        }
        let sensor = t.sensorType;
        let celsius = state::with_gpu(device.addr(), Access::Reading, |g| g.temperature_v(sensor))?;
        t.temperature = i32::try_from(celsius).unwrap_or(i32::MAX);
        Ok(())
    })
}
getter!(fn nvmlDeviceGetPowerUsage() -> c_uint, Reading, |g| g.power_usage());
getter!(fn nvmlDeviceGetEnforcedPowerLimit() -> c_uint, Reading, |g| g.enforced_power_limit());
getter!(#[cfg(not(nvml_mock_legacy))]
    fn nvmlDeviceGetTotalEnergyConsumption() -> c_ulonglong, Reading, |g| g.total_energy());
getter!(fn nvmlDeviceGetCurrentClocksThrottleReasons() -> c_ulonglong, Reading,
    |g| g.clocks_throttle_reasons());
getter!(#[cfg(not(nvml_mock_legacy))]
    fn nvmlDeviceGetCurrentClocksEventReasons() -> c_ulonglong, Reading,
    |g| g.clocks_event_reasons());
getter!(fn nvmlDeviceGetCurrPcieLinkGeneration() -> c_uint, Reading, |g| g.pcie_generation());
getter!(fn nvmlDeviceGetCurrPcieLinkWidth() -> c_uint, Reading, |g| g.pcie_width());
getter!(fn nvmlDeviceGetPcieReplayCounter() -> c_uint, Reading, |g| g.pcie_replays());
getter!(fn nvmlDeviceGetViolationStatus(policy: c_uint) -> ViolationTime, Reading,
    |g| g.violation_status(policy));
getter!(fn nvmlDeviceGetRetiredPagesPendingStatus() -> c_uint, Reading,
    |g| g.retired_pages_pending());

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkErrorCounter(
    device: Handle,
    link: c_uint,
    counter: c_uint,
    counter_value: *mut c_ulonglong,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a value for NVML to fill.
        let value = unsafe { out(counter_value) }?;
        value.write(state::with_gpu(device.addr(), Access::Reading, |g| {
            g.nvlink_error_counter(link, counter)
        })?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: Handle,
    error_type: c_uint,
    counter_type: c_uint,
    ecc_counts: *mut c_ulonglong,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a value for NVML to fill.
        let value = unsafe { out(ecc_counts) }?;
        value.write(state::with_gpu(device.addr(), Access::Reading, |g| {
            g.total_ecc_errors(error_type, counter_type)
        })?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryErrorCounter(
    device: Handle,
    error_type: c_uint,
    counter_type: c_uint,
    location: c_uint,
    count: *mut c_ulonglong,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a value for NVML to fill.
        let value = unsafe { out(count) }?;
        value.write(state::with_gpu(device.addr(), Access::Reading, |g| {
            g.memory_error_counter(error_type, counter_type, location)
        })?);
        Ok(())
    })
}

#[cfg(not(nvml_mock_legacy))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRemappedRows(
    device: Handle,
    corr_rows: *mut c_uint,
    unc_rows: *mut c_uint,
    is_pending: *mut c_uint,
    failure_occurred: *mut c_uint,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: each is NULL or a value for NVML to fill.
        let outs = unsafe {
            (
                out(corr_rows)?,
                out(unc_rows)?,
                out(is_pending)?,
                out(failure_occurred)?,
            )
        };
        let (corr, unc, pending, failure) =
            state::with_gpu(device.addr(), Access::Reading, |g| g.remapped_rows())?;
        outs.0.write(corr);
        outs.1.write(unc);
        outs.2.write(pending);
        outs.3.write(failure);
        Ok(())
    })
}

/// The two-call size protocol NVML's list queries share: `count` holds the caller's
/// capacity and comes back holding the number of entries; a NULL buffer or too small a
/// capacity is NVML_ERROR_INSUFFICIENT_SIZE.
fn fill_list<T: Copy>(
    count: &mut c_uint,
    buf: Option<&mut [MaybeUninit<T>]>,
    items: &[T],
) -> NvmlResult<()> {
    let n = items.len();
    *count = n as c_uint;
    if n == 0 {
        return Ok(());
    }
    match buf {
        Some(buf) if buf.len() >= n => {
            for (dst, item) in buf.iter_mut().zip(items) {
                dst.write(*item);
            }
            Ok(())
        }
        _ => Err(Ret::INSUFFICIENT_SIZE),
    }
}

/// The caller's optional array: `None` for NULL.
///
/// # Safety
/// As [`out_slice`].
unsafe fn opt_slice<'a, T>(p: *mut T, len: c_uint) -> Option<&'a mut [MaybeUninit<T>]> {
    // SAFETY: forwarded from the caller.
    unsafe { out_slice(p, len as usize) }.ok()
}

/// Retired pages, both versions: the wrapper counts them with the first and reads them
/// with the second.
///
/// # Safety
/// `page_count` is NULL or a count; `addresses` and `timestamps` are NULL or hold
/// `*page_count` entries.
unsafe fn retired_pages(
    device: Handle,
    cause: c_uint,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: *mut c_ulonglong,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or the caller's capacity, for NVML to update.
        let count = unsafe { inout(page_count) }?;
        let capacity = *count;
        // SAFETY: nvml.h: each array is NULL or holds `capacity` entries.
        let (addresses, timestamps) = unsafe {
            (
                opt_slice(addresses, capacity),
                opt_slice(timestamps, capacity),
            )
        };
        let pages = state::with_gpu(device.addr(), Access::Reading, |g| g.retired_pages(cause))?;
        let (addrs, times): (Vec<u64>, Vec<u64>) = pages.into_iter().unzip();
        fill_list(count, addresses, &addrs)?;
        for (dst, time) in timestamps.into_iter().flatten().zip(&times) {
            dst.write(*time);
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPages(
    device: Handle,
    cause: c_uint,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
) -> Return {
    // SAFETY: the caller's pointers, as nvml.h describes them; no timestamps.
    unsafe { retired_pages(device, cause, page_count, addresses, std::ptr::null_mut()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPages_v2(
    device: Handle,
    cause: c_uint,
    page_count: *mut c_uint,
    addresses: *mut c_ulonglong,
    timestamps: *mut c_ulonglong,
) -> Return {
    // SAFETY: the caller's pointers, as nvml.h describes them.
    unsafe { retired_pages(device, cause, page_count, addresses, timestamps) }
}

/// Field values: each entry's fieldId and scopeId say what to read; each gets its own
/// nvmlReturn. A lost GPU fails the whole call.
#[cfg(not(nvml_mock_legacy))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    device: Handle,
    values_count: c_int,
    values: *mut FieldValue,
) -> Return {
    guard(|| {
        let n = usize::try_from(values_count)
            .ok()
            .filter(|n| *n > 0)
            .ok_or(Ret::INVALID_ARGUMENT)?;
        if values.is_null() {
            return Err(Ret::INVALID_ARGUMENT);
        }
        // SAFETY: nvml.h: `values_count` entries, their fieldId and scopeId set by the caller.
        let values = unsafe { std::slice::from_raw_parts_mut(values, n) };
        // The link count is inventory (read at start-up); anything else is a reading.
        let access = if values
            .iter()
            .all(|v| v.fieldId == crate::nvml_h::field::NVLINK_LINK_COUNT)
        {
            Access::Inventory
        } else {
            Access::Reading
        };
        state::with_gpu(device.addr(), access, |g| {
            values.iter_mut().for_each(|v| g.fill_field_value(v));
            Ok(())
        })
    })
}

#[cfg(not(nvml_mock_legacy))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: Handle,
    info_count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or the caller's capacity, for NVML to update.
        let count = unsafe { inout(info_count) }?;
        // SAFETY: nvml.h: NULL or `*info_count` entries.
        let infos = unsafe { opt_slice(infos, *count) };
        let processes = state::with_gpu(device.addr(), Access::Reading, |g| g.compute_processes())?;
        fill_list(count, infos, &processes)
    })
}

/// NVML_ERROR_NOT_FOUND when nothing was sampled after `last_seen_time_stamp` (µs).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: Handle,
    utilization: *mut ProcessUtilizationSample,
    process_samples_count: *mut c_uint,
    last_seen_time_stamp: c_ulonglong,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or the caller's capacity, for NVML to update.
        let count = unsafe { inout(process_samples_count) }?;
        // SAFETY: nvml.h: NULL or `*process_samples_count` entries.
        let buf = unsafe { opt_slice(utilization, *count) };
        let samples = state::with_gpu(device.addr(), Access::Reading, |g| {
            g.process_utilization(last_seen_time_stamp)
        })?;
        fill_list(count, buf, &samples)
    })
}

// GPM.

/// A GPU without GPM answers NVML_SUCCESS with isSupportedDevice 0, as NVML does.
#[cfg(not(nvml_mock_legacy))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmQueryDeviceSupport(
    device: Handle,
    gpm_support: *mut GpmSupport,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a struct for NVML to fill, its version set.
        let support = unsafe { inout(gpm_support) }?;
        if support.version != GPM_STRUCT_VERSION {
            return Err(Ret::ARGUMENT_VERSION_MISMATCH);
        }
        let supported =
            state::with_gpu(device.addr(), Access::Inventory, |g| Ok(g.gpm_supported()))?;
        support.isSupportedDevice = u32::from(supported);
        Ok(())
    })
}

#[cfg(not(nvml_mock_legacy))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmSampleAlloc(gpm_sample: *mut Handle) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a handle for NVML to fill.
        let sample = unsafe { out(gpm_sample) }?;
        sample.write(handle(state::gpm_sample_alloc()?));
        Ok(())
    })
}

#[cfg(not(nvml_mock_legacy))]
#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmSampleFree(gpm_sample: Handle) -> Return {
    guard(|| state::gpm_sample_free(gpm_sample.addr()))
}

#[cfg(not(nvml_mock_legacy))]
#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpmSampleGet(device: Handle, gpm_sample: Handle) -> Return {
    guard(|| state::gpm_sample_get(device.addr(), gpm_sample.addr()))
}

#[cfg(not(nvml_mock_legacy))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpmMetricsGet(metrics_get: *mut GpmMetricsGet) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a request for NVML to complete, its version set; the
        // reference covers the fixed members only (24 bytes, in every header's layout).
        let request = unsafe { inout(metrics_get) }?;
        if request.version != GPM_STRUCT_VERSION {
            return Err(Ret::ARGUMENT_VERSION_MISMATCH);
        }
        let n = request.numMetrics as usize;
        if n > gpm_metric::MAX {
            return Err(Ret::INVALID_ARGUMENT);
        }
        let activity = state::gpm_metrics(request.sample1.addr(), request.sample2.addr())?;
        // SAFETY: non-NULL (checked above); nvml.h: the caller's metrics[] holds at least
        // numMetrics initialised entries (it set their metricId), whatever its length.
        let metrics = unsafe {
            std::slice::from_raw_parts_mut(
                std::ptr::addr_of_mut!((*metrics_get).metrics).cast::<GpmMetric>(),
                n,
            )
        };
        for metric in metrics {
            match device::gpm_metric(&activity, metric.metricId) {
                Ok((value, [short, long, unit])) => {
                    metric.value = value;
                    metric.nvmlReturn = Ret::SUCCESS.0;
                    metric.metricInfo.shortName = short.as_ptr().cast_mut();
                    metric.metricInfo.longName = long.as_ptr().cast_mut();
                    metric.metricInfo.unit = unit.as_ptr().cast_mut();
                }
                Err(e) => metric.nvmlReturn = e.0,
            }
        }
        Ok(())
    })
}

// Events.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut Handle) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a handle for NVML to fill.
        let set = unsafe { out(set) }?;
        set.write(handle(state::event_set_create()?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceRegisterEvents(
    device: Handle,
    event_types: c_ulonglong,
    set: Handle,
) -> Return {
    guard(|| state::register_events(device.addr(), event_types, set.addr()))
}

/// One XID occurrence per call (eventData = the XID code), NVML_ERROR_TIMEOUT when
/// none arrives within `timeoutms`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: Handle,
    data: *mut EventData,
    timeoutms: c_uint,
) -> Return {
    guard(|| {
        // SAFETY: nvml.h: NULL or a struct for NVML to fill.
        let data = unsafe { out(data) }?;
        let (device, xid) = state::event_wait(set.addr(), timeoutms)?;
        data.write(EventData {
            device: handle(device),
            eventType: event_type::XID_CRITICAL_ERROR,
            eventData: xid,
            gpuInstanceId: device::NO_INSTANCE,
            computeInstanceId: device::NO_INSTANCE,
        });
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetFree(set: Handle) -> Return {
    guard(|| state::event_set_free(set.addr()))
}

// The library's own controls, for tests (reach them with dlsym on the same library).

/// Replaces the simulated host with one built from `spec` (`--simulate` syntax), or from
/// the environment when `spec` is NULL. Returns 0, or NVML_ERROR_INVALID_ARGUMENT with
/// the reason on stderr.
///
/// # Safety
/// `spec` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpulse_mock_configure(spec: *const c_char) -> c_int {
    control(|| {
        // SAFETY: as this function's contract says.
        let spec = unsafe { in_str(spec) }?;
        state::configure(spec)
    })
}

/// Makes the library report `version` as the driver version (NULL: back to the
/// environment's or the simulator's) until the next [`gpulse_mock_configure`].
///
/// # Safety
/// `version` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpulse_mock_set_driver_version(version: *const c_char) -> c_int {
    control(|| {
        // SAFETY: as this function's contract says.
        let version = unsafe { in_str(version) }?;
        state::set_driver_version(version)
    })
}

/// Makes the library reproduce `quirks` (`name[@gpu]` joined by `+`; NULL: back to the
/// environment's) until the next [`gpulse_mock_configure`].
///
/// # Safety
/// `quirks` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpulse_mock_set_quirks(quirks: *const c_char) -> c_int {
    control(|| {
        // SAFETY: as this function's contract says.
        let quirks = unsafe { in_str(quirks) }?;
        state::set_quirks(quirks)
    })
}

/// Takes `steps` steps of simulated time (one second each).
#[unsafe(no_mangle)]
pub extern "C" fn gpulse_mock_advance(steps: c_uint) -> c_int {
    control(|| state::advance(steps))
}

/// Readings the simulator has taken: 1 after configuration, +1 per step; 0 on failure.
#[unsafe(no_mangle)]
pub extern "C" fn gpulse_mock_steps() -> c_ulonglong {
    catch_unwind(state::steps)
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0)
}

/// Runs a control: 0, or NVML_ERROR_INVALID_ARGUMENT with the reason on stderr.
fn control(f: impl FnOnce() -> Result<(), String>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("gpulse-nvml-mock: {e}");
            Ret::INVALID_ARGUMENT.0 as c_int
        }
        Err(_) => Ret::UNKNOWN.0 as c_int,
    }
}
