//! Numbers and C layouts from nvml.h (as bindgen renders them in nvml-wrapper-sys 0.10,
//! `src/bindings.rs`). Every layout is checked against its C size at compile time.

#![allow(
    non_snake_case,
    reason = "field names are NVML's, so the layouts read like nvml.h"
)]

use std::ffi::{c_char, c_void};

/// `nvmlReturn_t`. A newtype so that a return code cannot be mixed up with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Ret(pub u32);

impl Ret {
    pub const SUCCESS: Ret = Ret(0);
    pub const UNINITIALIZED: Ret = Ret(1);
    pub const INVALID_ARGUMENT: Ret = Ret(2);
    pub const NOT_SUPPORTED: Ret = Ret(3);
    pub const NOT_FOUND: Ret = Ret(6);
    pub const INSUFFICIENT_SIZE: Ret = Ret(7);
    pub const TIMEOUT: Ret = Ret(10);
    pub const GPU_IS_LOST: Ret = Ret(15);
    pub const ARGUMENT_VERSION_MISMATCH: Ret = Ret(25);
    /// "The requested functionality has been deprecated" (nvml.h 13.3.29 line 1324).
    pub const DEPRECATED: Ret = Ret(26);
    pub const UNKNOWN: Ret = Ret(999);

    /// nvmlErrorString's text for this code.
    pub fn message(self) -> &'static std::ffi::CStr {
        match self.0 {
            0 => c"Success",
            1 => c"Uninitialized",
            2 => c"Invalid Argument",
            3 => c"Not Supported",
            4 => c"Insufficient Permissions",
            5 => c"Already Initialized",
            6 => c"Not Found",
            7 => c"Insufficient Size",
            8 => c"Insufficient External Power",
            9 => c"Driver Not Loaded",
            10 => c"Timeout",
            11 => c"Interrupt request issue",
            12 => c"NVML Shared Library Not Found",
            13 => c"Function Not Found",
            14 => c"Corrupted infoROM",
            15 => c"GPU is lost",
            16 => c"GPU requires restart",
            17 => c"The operating system has blocked the request.",
            18 => c"RM has detected an NVML/RM version mismatch.",
            19 => c"In use by another client",
            20 => c"Insufficient Memory",
            21 => c"No data",
            22 => c"Requested vGPU operation is not available on target device",
            23 => c"Insufficient resources",
            24 => c"Frequency not supported",
            25 => c"Argument version mismatch",
            26 => c"Deprecated",
            27 => c"Not ready",
            28 => c"GPU not found",
            29 => c"Invalid state",
            _ => c"Unknown Error",
        }
    }
}

/// What an NVML call answers: a value, or the code it fails with.
pub type NvmlResult<T> = Result<T, Ret>;

/// `nvmlClockType_t`.
pub mod clock {
    pub const GRAPHICS: u32 = 0;
    pub const SM: u32 = 1;
    pub const MEM: u32 = 2;
    pub const VIDEO: u32 = 3;
}

/// `nvmlTemperatureThresholds_t`.
pub mod threshold {
    pub const SHUTDOWN: u32 = 0;
    pub const SLOWDOWN: u32 = 1;
    pub const MEM_MAX: u32 = 2;
    pub const GPU_MAX: u32 = 3;
    /// NVML_TEMPERATURE_THRESHOLD_COUNT: thresholds at or past it are invalid.
    pub const COUNT: u32 = 8;
}

/// `nvmlTemperatureSensors_t`.
pub const TEMPERATURE_GPU: u32 = 0;

/// `nvmlPerfPolicyType_t`.
pub mod perf_policy {
    pub const POWER: u32 = 0;
    pub const THERMAL: u32 = 1;
    pub const SYNC_BOOST: u32 = 2;
    pub const BOARD_LIMIT: u32 = 3;
    pub const LOW_UTILIZATION: u32 = 4;
    pub const RELIABILITY: u32 = 5;
    pub const TOTAL_APP_CLOCKS: u32 = 10;
    pub const TOTAL_BASE_CLOCKS: u32 = 11;
}

/// `nvmlNvLinkErrorCounter_t`.
pub mod nvlink_error {
    pub const DL_REPLAY: u32 = 0;
    pub const DL_RECOVERY: u32 = 1;
    pub const DL_CRC_FLIT: u32 = 2;
    pub const DL_CRC_DATA: u32 = 3;
    pub const DL_ECC_DATA: u32 = 4;
}

/// nvml.h NVML_NVLINK_MAX_LINKS: 36 in the CUDA 13.3.29 header (line 455), 18 in every
/// earlier one (13.2.82 line 443); the binding of the H200 probe says 36, and that
/// driver answers for all 36 slots.
pub const NVLINK_MAX_LINKS: u32 = 36;

/// `nvmlMemoryErrorType_t`.
pub mod memory_error {
    pub const CORRECTED: u32 = 0;
    pub const UNCORRECTED: u32 = 1;
}

/// `nvmlEccCounterType_t`.
pub mod ecc_counter {
    pub const VOLATILE: u32 = 0;
    pub const AGGREGATE: u32 = 1;
}

/// `nvmlMemoryLocation_t`.
pub mod memory_location {
    pub const L1_CACHE: u32 = 0;
    pub const L2_CACHE: u32 = 1;
    pub const DEVICE_MEMORY: u32 = 2;
    pub const REGISTER_FILE: u32 = 3;
    pub const SRAM: u32 = 7;
    /// NVML_MEMORY_LOCATION_COUNT.
    pub const COUNT: u32 = 8;
}

/// `nvmlPageRetirementCause_t`.
pub mod retirement_cause {
    pub const MULTIPLE_SINGLE_BIT_ECC_ERRORS: u32 = 0;
    pub const DOUBLE_BIT_ECC_ERROR: u32 = 1;
}

/// `nvmlEnableState_t`.
pub mod enable_state {
    pub const DISABLED: u32 = 0;
    pub const ENABLED: u32 = 1;
}

/// `nvmlDeviceArchitecture_t` (NVML_DEVICE_ARCH_*).
pub mod arch {
    pub const KEPLER: u32 = 2;
    pub const MAXWELL: u32 = 3;
    pub const PASCAL: u32 = 4;
    pub const VOLTA: u32 = 5;
    pub const TURING: u32 = 6;
    pub const AMPERE: u32 = 7;
    pub const ADA: u32 = 8;
    pub const HOPPER: u32 = 9;
    pub const BLACKWELL: u32 = 10;
    pub const UNKNOWN: u32 = 0xffff_ffff;
}

/// Event type bits (`nvmlEventType*`).
pub mod event_type {
    pub const SINGLE_BIT_ECC_ERROR: u64 = 0x1;
    pub const DOUBLE_BIT_ECC_ERROR: u64 = 0x2;
    pub const PSTATE: u64 = 0x4;
    pub const XID_CRITICAL_ERROR: u64 = 0x8;
    pub const CLOCK: u64 = 0x10;
}

/// Every clock-event reason bit nvml.h names (`nvmlClocksEventReason*`, 0x1 to 0x100).
pub const CLOCKS_EVENT_REASONS_ALL: u64 = 0x1ff;

/// `nvmlValueType_t`.
pub mod value_type {
    pub const DOUBLE: u32 = 0;
    pub const UNSIGNED_INT: u32 = 1;
    pub const UNSIGNED_LONG_LONG: u32 = 3;
}

/// Field ids (NVML_FI_*), in the numbering of drivers before 580.82. Drivers from
/// 580.82 on move 251-255 to 269-273 and power smoothing from 256-273 to 251-268.
/// Lines in the CUDA 13.3.29 header: PERF_POLICY_* 2475-2482, MEMORY_TEMP 2485,
/// NVLINK_LINK_COUNT 2503, NVLINK_THROUGHPUT_DATA_TX/RX 2602-2603,
/// PCIE_COUNT_TX/RX_BYTES 2735-2736, NVLINK_COUNT_XMIT/RCV_BYTES 2748/2750,
/// CLOCKS_EVENT_REASON_* 2845-2849 (there already in the 580.82 numbering).
pub mod field {
    pub const ECC_SBE_AGG_TOTAL: u32 = 5;
    pub const ECC_DBE_AGG_TOTAL: u32 = 6;
    pub const PERF_POLICY_POWER: u32 = 74;
    pub const PERF_POLICY_THERMAL: u32 = 75;
    pub const PERF_POLICY_SYNC_BOOST: u32 = 76;
    pub const PERF_POLICY_BOARD_LIMIT: u32 = 77;
    pub const PERF_POLICY_LOW_UTILIZATION: u32 = 78;
    pub const PERF_POLICY_RELIABILITY: u32 = 79;
    pub const PERF_POLICY_TOTAL_APP_CLOCKS: u32 = 80;
    pub const PERF_POLICY_TOTAL_BASE_CLOCKS: u32 = 81;
    pub const MEMORY_TEMP: u32 = 82;
    pub const TOTAL_ENERGY_CONSUMPTION: u32 = 83;
    pub const NVLINK_LINK_COUNT: u32 = 91;
    pub const PCIE_REPLAY_COUNTER: u32 = 94;
    pub const NVLINK_THROUGHPUT_DATA_TX: u32 = 138;
    pub const NVLINK_THROUGHPUT_DATA_RX: u32 = 139;
    pub const REMAPPED_COR: u32 = 142;
    pub const REMAPPED_UNC: u32 = 143;
    pub const REMAPPED_PENDING: u32 = 144;
    pub const REMAPPED_FAILURE: u32 = 145;
    pub const PCIE_COUNT_TX_BYTES: u32 = 197;
    pub const PCIE_COUNT_RX_BYTES: u32 = 198;
    pub const NVLINK_COUNT_XMIT_BYTES: u32 = 202;
    pub const NVLINK_COUNT_RCV_BYTES: u32 = 204;
    pub const CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN: u32 = 251;
    pub const CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN: u32 = 252;
    pub const CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN: u32 = 253;
    /// nvml.h: "A scopeId of UINT_MAX returns aggregate value summed up across all links".
    pub const SCOPE_ALL_LINKS: u32 = u32::MAX;
}

/// `nvmlGpmMetricId_t` values the mock answers.
pub mod gpm_metric {
    pub const SM_UTIL: u32 = 2;
    pub const SM_OCCUPANCY: u32 = 3;
    pub const ANY_TENSOR_UTIL: u32 = 5;
    pub const DRAM_BW_UTIL: u32 = 10;
    /// NVML_GPM_METRIC_MAX, the length of `nvmlGpmMetricsGet_t::metrics`, in the newest
    /// header: 333 in CUDA 13.2 and 13.3 (nvml.h 13.3.29 line 13784), 210 in 12.9 to 13.1
    /// (13.1.115 line 13210, nvml-wrapper-sys 0.10), 98 in 12.6 (12.6.77 line 11082).
    /// NVML_GPM_METRICS_GET_VERSION stayed 1 through all three (13.3.29 line 13829,
    /// 13.1.115 line 13255, 12.6.77 line 11127), though 12.6 to 13.1 say beside the
    /// constant that a change "should also change NVML_GPM_METRICS_GET_VERSION": the
    /// version cannot tell the layouts apart. What can is numMetrics ("How many metrics
    /// to retrieve in metrics[]", 13.3.29 line 13823): the library touches only that
    /// many entries and accepts up to this many, so a caller built on any of the three
    /// headers is answered within its own array.
    pub const MAX: usize = 333;
}

/// NVML_GPM_SUPPORT_VERSION and NVML_GPM_METRICS_GET_VERSION.
pub const GPM_STRUCT_VERSION: u32 = 1;

/// `nvmlDevice_t`, `nvmlEventSet_t`, `nvmlGpmSample_t`: opaque pointers to NVML.
/// The mock hands out small integers (an index or an id, plus one) and never
/// dereferences them.
pub type Handle = *mut c_void;

/// `nvmlPciInfo_t` (nvmlPciInfo_st).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct PciInfo {
    pub busIdLegacy: [c_char; 16],
    pub domain: u32,
    pub bus: u32,
    pub device: u32,
    pub pciDeviceId: u32,
    pub pciSubSystemId: u32,
    pub busId: [c_char; 32],
}

/// `nvmlMemory_v2_t`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct MemoryV2 {
    pub version: u32,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

/// nvml.h `nvmlMemory_v2` = NVML_STRUCT_VERSION(Memory, 2): size | version << 24.
pub const MEMORY_V2_VERSION: u32 = (size_of::<MemoryV2>() as u32) | (2 << 24);

/// `nvmlUtilization_t`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Utilization {
    pub gpu: u32,
    pub memory: u32,
}

/// `nvmlViolationTime_t`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct ViolationTime {
    /// CPU timestamp, microseconds.
    pub referenceTime: u64,
    /// Nanoseconds.
    pub violationTime: u64,
}

/// `nvmlValue_t`. Writing a union field is safe; only reading one is not, and the
/// mock never reads.
#[derive(Clone, Copy)]
#[repr(C)]
pub union Value {
    pub dVal: f64,
    pub siVal: i32,
    pub uiVal: u32,
    pub ulVal: u64,
    pub ullVal: u64,
    pub sllVal: i64,
    pub usVal: u16,
}

/// `nvmlTemperature_t` (nvmlTemperature_v1_t), for nvmlDeviceGetTemperatureV.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Temperature {
    pub version: u32,
    pub sensorType: u32,
    pub temperature: i32,
}

/// nvmlTemperature_v1: NVML_STRUCT_VERSION(Temperature, 1).
pub const TEMPERATURE_V1_VERSION: u32 = (size_of::<Temperature>() as u32) | (1 << 24);

/// `nvmlFieldValue_t`.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct FieldValue {
    pub fieldId: u32,
    pub scopeId: u32,
    /// Microseconds since 1970.
    pub timestamp: i64,
    pub latencyUsec: i64,
    pub valueType: u32,
    pub nvmlReturn: u32,
    pub value: Value,
}

/// `nvmlProcessInfo_t` (nvmlProcessInfo_v2_st), as the _v3 process calls fill it.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct ProcessInfo {
    pub pid: u32,
    pub usedGpuMemory: u64,
    pub gpuInstanceId: u32,
    pub computeInstanceId: u32,
}

/// `nvmlProcessUtilizationSample_t`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct ProcessUtilizationSample {
    pub pid: u32,
    /// CPU timestamp, microseconds.
    pub timeStamp: u64,
    pub smUtil: u32,
    pub memUtil: u32,
    pub encUtil: u32,
    pub decUtil: u32,
}

/// `nvmlEventData_t`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct EventData {
    pub device: Handle,
    pub eventType: u64,
    pub eventData: u64,
    pub gpuInstanceId: u32,
    pub computeInstanceId: u32,
}

/// `nvmlGpmSupport_t`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct GpmSupport {
    pub version: u32,
    pub isSupportedDevice: u32,
}

/// The `metricInfo` member of `nvmlGpmMetric_t`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct GpmMetricInfo {
    pub shortName: *mut c_char,
    pub longName: *mut c_char,
    pub unit: *mut c_char,
}

/// `nvmlGpmMetric_t`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct GpmMetric {
    pub metricId: u32,
    pub nvmlReturn: u32,
    pub value: f64,
    pub metricInfo: GpmMetricInfo,
}

/// `nvmlGpmMetricsGet_t`, its `metrics` array left open: its length depends on the
/// header the caller was built with (see [`gpm_metric::MAX`]), so the library never
/// takes a reference to more of it than `numMetrics` entries.
#[derive(Debug)]
#[repr(C)]
pub struct GpmMetricsGet {
    pub version: u32,
    pub numMetrics: u32,
    pub sample1: Handle,
    pub sample2: Handle,
    pub metrics: [GpmMetric; 0],
}

// Sizes of the C structs on LP64 Linux, from their members' sizes and alignment.
const _: () = assert!(size_of::<PciInfo>() == 16 + 5 * 4 + 32);
const _: () = assert!(size_of::<MemoryV2>() == 40);
const _: () = assert!(size_of::<Utilization>() == 8);
const _: () = assert!(size_of::<ViolationTime>() == 16);
const _: () = assert!(size_of::<Temperature>() == 12);
const _: () = assert!(size_of::<Value>() == 8);
const _: () = assert!(size_of::<FieldValue>() == 40);
const _: () = assert!(size_of::<ProcessInfo>() == 24);
const _: () = assert!(size_of::<ProcessUtilizationSample>() == 32);
const _: () = assert!(size_of::<EventData>() == 32);
const _: () = assert!(size_of::<GpmSupport>() == 8);
const _: () = assert!(size_of::<GpmMetric>() == 40);
const _: () = assert!(size_of::<GpmMetricsGet>() == 24);
const _: () = assert!(std::mem::offset_of!(GpmMetricsGet, metrics) == 24);
