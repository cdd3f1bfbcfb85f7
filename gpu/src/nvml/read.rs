//! One reading of one GPU: every field, each with its own outcome.

use std::cell::Cell;
use std::collections::HashMap;

use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PerformancePolicy, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::gpm::GpmSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::{Device, Nvml};
use tracing::debug;

use super::classify::{ReadOutcome, classify};
use super::raw;
use super::xid::XidCounts;
use crate::health::{
    GpmActivity, MigInstance, NvLinkSample, ProcessSample, RemappedRows, RetiredPages,
    ThrottlePolicy, ThrottleTime, ThrottleTimeSource,
};
use crate::throttle_time::FlagIntegrator;
use crate::workload::ProcReader;
use crate::{DeviceInfo, DeviceSample, DeviceState, Reading, ThrottleReasons};

/// nvml.h field ids (NVML_FI_DEV_*); lines are those of the CUDA 13.3.29 header.
mod field {
    /// NVML_FI_DEV_MEMORY_TEMP, °C (line 2485).
    pub const MEMORY_TEMP: u32 = 82;
    /// NVML_FI_DEV_PCIE_COUNT_TX_BYTES, _RX_BYTES: bytes, "can be wrapped" (lines
    /// 2735-2736).
    pub const PCIE_TX_BYTES: u32 = 197;
    pub const PCIE_RX_BYTES: u32 = 198;
    /// NVML_FI_DEV_REMAPPED_COR, _UNC, _PENDING, _FAILURE.
    pub const REMAPPED_COR: u32 = 142;
    pub const REMAPPED_UNC: u32 = 143;
    pub const REMAPPED_PENDING: u32 = 144;
    pub const REMAPPED_FAILURE: u32 = 145;
    /// NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, _RX: data KiB per link (nvml.h 13.3.29
    /// lines 2602-2603; the link in scopeId, line 2598). All NVLink generations before 5.
    pub const NVLINK_TX: u32 = 138;
    pub const NVLINK_RX: u32 = 139;
    /// NVML_FI_DEV_NVLINK_COUNT_XMIT_BYTES, _RCV_BYTES: "Total Tx/Rx bytes on the link in
    /// NVLink5" (nvml.h 13.3.29 lines 2748, 2750; the link in scopeId, line 2745). Read
    /// first; where the driver does not answer them, the KiB counters above.
    pub const NVLINK5_TX_BYTES: u32 = 202;
    pub const NVLINK5_RX_BYTES: u32 = 204;
    /// NVML_FI_DEV_NVLINK_LINK_COUNT: "Number of NVLinks present on the device" (line
    /// 2503). DCGM bounds link ids by it: dcgmlib/src/DcgmCacheManager.cpp
    /// (DcgmCacheManager::InitializeNvLinkCount) and dcgmlib/src/DcgmTopology.cpp
    /// (UpdateNvLinkLinkStateFromNvml: links past it are "not supported").
    pub const NVLINK_LINK_COUNT: u32 = 91;
    /// NVML_FI_DEV_PERF_POLICY_POWER .. _TOTAL_BASE_CLOCKS (74-81, lines 2475-2482;
    /// 74 and 76 are also NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP and _SYNC_BOOST,
    /// "in ns", lines 2845-2846): the throttled time,
    /// ns, of each nvmlPerfPolicyType_t, in the enum's order (POWER, THERMAL,
    /// SYNC_BOOST, BOARD_LIMIT, LOW_UTILIZATION, RELIABILITY, TOTAL_APP_CLOCKS,
    /// TOTAL_BASE_CLOCKS). The header keeps these ids when it renumbers 251-273, and
    /// CUDA 13 names them as what replaces nvmlDeviceGetViolationStatus.
    pub const PERF_POLICY_POWER: u32 = 74;
    pub const PERF_POLICY_THERMAL: u32 = 75;
    pub const PERF_POLICY_SYNC_BOOST: u32 = 76;
    pub const PERF_POLICY_BOARD_LIMIT: u32 = 77;
    pub const PERF_POLICY_LOW_UTILIZATION: u32 = 78;
    pub const PERF_POLICY_RELIABILITY: u32 = 79;
    pub const PERF_POLICY_TOTAL_APP_CLOCKS: u32 = 80;
    pub const PERF_POLICY_TOTAL_BASE_CLOCKS: u32 = 81;
}

/// What the backend remembers about a GPU between readings.
#[derive(Default)]
pub(crate) struct GpuState {
    /// NVLink links that answer, found at the first reading.
    links: Option<Vec<u32>>,
    gpm_prev: Option<GpmSample<'static>>,
    gpm_supported: Option<bool>,
    /// Timestamp of the newest process-utilisation sample seen (NVML's own clock, µs).
    process_ts: Option<u64>,
    integrator: FlagIntegrator,
}

/// Turns one NVML result into a reading; a lost GPU is remembered in `lost`.
fn reading<T>(r: Result<T, NvmlError>, index: u32, lost: &Cell<bool>) -> Reading<T> {
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

fn as_u64(v: &SampleValue) -> Option<u64> {
    match v {
        SampleValue::U64(x) => Some(*x),
        SampleValue::U32(x) => Some(u64::from(*x)),
        SampleValue::I64(x) => u64::try_from(*x).ok(),
        // Some drivers label integer fields (memory temperature) double: see
        // raw::integer_from_double.
        SampleValue::F64(x) => raw::integer_from_double(*x),
    }
}

/// Reads a batch of field values; each entry is its own reading.
fn fields(device: &Device<'_>, ids: &[u32], index: u32, lost: &Cell<bool>) -> Vec<Reading<u64>> {
    let field_ids: Vec<FieldId> = ids.iter().map(|i| FieldId(*i)).collect();
    match device.field_values_for(&field_ids) {
        Ok(values) => values
            .into_iter()
            .map(|v| {
                reading(v.and_then(|s| s.value), index, lost)
                    .map(|v| as_u64(&v))
                    .and_then_value()
            })
            .collect(),
        Err(e) => {
            let r: Reading<u64> = reading(Err(e), index, lost);
            vec![r; ids.len()]
        }
    }
}

trait FlattenReading<T> {
    fn and_then_value(self) -> Reading<T>;
}

impl<T> FlattenReading<T> for Reading<Option<T>> {
    /// A value NVML returned in a form we cannot use counts as a failed read.
    fn and_then_value(self) -> Reading<T> {
        match self {
            Reading::Value(Some(v)) => Reading::Value(v),
            Reading::Value(None) | Reading::Failed => Reading::Failed,
            Reading::Unsupported => Reading::Unsupported,
        }
    }
}

pub(crate) fn read_gpu(
    nvml: &'static Nvml,
    device: &Device<'static>,
    info: &DeviceInfo,
    state: &mut GpuState,
    xid: &XidCounts,
    procs: &ProcReader,
    now_unix_ms: i64,
) -> DeviceSample {
    let lost = Cell::new(false);
    let i = info.index;
    let read = |r| reading(r, i, &lost);
    let utilization = reading(device.utilization_rates(), i, &lost).map(|u| (u.gpu, u.memory));
    let reasons = reading(
        newer_or_older(raw::clocks_event_reasons(nvml, device), || {
            device.current_throttle_reasons().map(|r| r.bits())
        }),
        i,
        &lost,
    )
    .map(ThrottleReasons::from_bits_retain);
    let memory = reading(device.memory_info(), i, &lost).map(|m| m.used);
    let values = fields(
        device,
        &[
            field::MEMORY_TEMP,
            field::PCIE_TX_BYTES,
            field::PCIE_RX_BYTES,
            field::REMAPPED_COR,
            field::REMAPPED_UNC,
            field::REMAPPED_PENDING,
            field::REMAPPED_FAILURE,
        ],
        i,
        &lost,
    );
    let remapped = match (values[3], values[4], values[5], values[6]) {
        (Reading::Value(c), Reading::Value(u), Reading::Value(p), Reading::Value(f)) => {
            Reading::Value(RemappedRows {
                correctable: c as u32,
                uncorrectable: u as u32,
                pending: p != 0,
                failure: f != 0,
            })
        }
        (Reading::Unsupported, ..) => Reading::Unsupported,
        _ => Reading::Failed,
    };
    let mut sample = DeviceSample {
        uuid: info.uuid.clone(),
        state: DeviceState::Ok,
        gpu_utilization_percent: utilization.map(|u| u.0),
        memory_utilization_percent: utilization.map(|u| u.1),
        sm_clock_mhz: read(device.clock_info(Clock::SM)),
        memory_clock_mhz: read(device.clock_info(Clock::Memory)),
        temperature_celsius: read(newer_or_older(raw::gpu_temperature_v(nvml, device), || {
            device.temperature(TemperatureSensor::Gpu)
        })),
        power_usage_milliwatts: read(device.power_usage()),
        power_limit_milliwatts: read(device.enforced_power_limit()),
        energy_millijoules: reading(device.total_energy_consumption(), i, &lost),
        throttle_reasons: reasons,
        memory_used_bytes: memory,
        pcie_generation: read(device.current_pcie_link_gen()),
        pcie_width: read(device.current_pcie_link_width()),
        pcie_replays: read(device.pcie_replay_counter()).map(u64::from),
        graphics_clock_mhz: read(device.clock_info(Clock::Graphics)),
        applications_sm_clock_mhz: read(device.applications_clock(Clock::SM)),
        applications_memory_clock_mhz: read(device.applications_clock(Clock::Memory)),
        memory_temperature_celsius: values[0].map(|v| v as u32),
        throttle_time: throttle_time(device, state, reasons, now_unix_ms, &lost),
        pcie_tx_bytes: values[1],
        pcie_rx_bytes: values[2],
        nvlinks: nvlinks(nvml, device, state, &lost),
        ecc_corrected_errors: reading(
            device.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate),
            i,
            &lost,
        ),
        ecc_uncorrected_errors: reading(
            device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate),
            i,
            &lost,
        ),
        remapped_rows: remapped,
        retired_pages: retired_pages(device, &lost),
        xid_errors: xid
            .counts_for(&info.uuid)
            .map_or(Reading::Unsupported, Reading::Value),
        gpm: gpm(nvml, device, state, &lost),
        processes: processes(device, state, procs, &lost),
        // The kubelet's allocation is the agent's to add: NVML does not know pods.
        allocation: None,
    };
    if lost.get() {
        sample = DeviceSample::lost(info.uuid.clone());
    }
    sample
}

/// The newer call's answer, or the older call's where the driver lacks the newer one
/// (an old driver: symbol missing) or does not support it; a driver that removed the
/// older one answers it NVML_ERROR_DEPRECATED, read as unsupported.
fn newer_or_older<T>(
    newer: Result<T, NvmlError>,
    older: impl FnOnce() -> Result<T, NvmlError>,
) -> Result<T, NvmlError> {
    match newer {
        Err(e) if classify(&e) == ReadOutcome::Unsupported => older(),
        other => other,
    }
}

/// Each throttle policy, its nvml-wrapper name and the field nvml.h documents for it.
const POLICIES: [(ThrottlePolicy, PerformancePolicy, u32); 8] = [
    (
        ThrottlePolicy::Power,
        PerformancePolicy::Power,
        field::PERF_POLICY_POWER,
    ),
    (
        ThrottlePolicy::Thermal,
        PerformancePolicy::Thermal,
        field::PERF_POLICY_THERMAL,
    ),
    (
        ThrottlePolicy::SyncBoost,
        PerformancePolicy::SyncBoost,
        field::PERF_POLICY_SYNC_BOOST,
    ),
    (
        ThrottlePolicy::BoardLimit,
        PerformancePolicy::BoardLimit,
        field::PERF_POLICY_BOARD_LIMIT,
    ),
    (
        ThrottlePolicy::LowUtilization,
        PerformancePolicy::LowUtilization,
        field::PERF_POLICY_LOW_UTILIZATION,
    ),
    (
        ThrottlePolicy::Reliability,
        PerformancePolicy::Reliability,
        field::PERF_POLICY_RELIABILITY,
    ),
    (
        ThrottlePolicy::TotalAppClocks,
        PerformancePolicy::TotalAppClocks,
        field::PERF_POLICY_TOTAL_APP_CLOCKS,
    ),
    (
        ThrottlePolicy::TotalBaseClocks,
        PerformancePolicy::TotalBaseClocks,
        field::PERF_POLICY_TOTAL_BASE_CLOCKS,
    ),
];

/// Throttled time per policy: the violation counter where the driver answers it, else
/// that policy's field value (nvml.h 12.6.77 line 6153, on nvmlDeviceGetViolationStatus:
/// "Violation for thermal capping is not supported at this time", while the other
/// policies answer; CUDA 13 deprecates the call and points to field values, 13.3.29
/// lines 7660-7675); the flags integrated over time where neither answers for any
/// policy. nvml.h 13.x maps the thermal policy to
/// NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN (line 7667, id 269 from 580.82,
/// 251 before) rather than to 75; 75 is read here as it keeps its id across drivers.
/// The source says which of the two the policies came from, or that both did (Mixed).
fn throttle_time(
    device: &Device<'_>,
    state: &mut GpuState,
    reasons: Reading<ThrottleReasons>,
    now_unix_ms: i64,
    lost: &Cell<bool>,
) -> Reading<ThrottleTime> {
    let violation: Vec<Option<u64>> = POLICIES
        .iter()
        .map(|(_, theirs, _)| match device.violation_status(*theirs) {
            Ok(v) => Some(v.violation_time),
            Err(e) => {
                if classify(&e) == ReadOutcome::GpuLost {
                    lost.set(true);
                }
                None
            }
        })
        .collect();
    let missing: Vec<u32> = POLICIES
        .iter()
        .zip(&violation)
        .filter(|(_, v)| v.is_none())
        .map(|((_, _, id), _)| *id)
        .collect();
    let from_fields = fields(device, &missing, 0, lost);
    let mut by_field = missing.iter().zip(&from_fields);
    let (mut any_violation, mut any_field) = (false, false);
    let nanoseconds: Vec<(ThrottlePolicy, u64)> = POLICIES
        .iter()
        .zip(&violation)
        .filter_map(|((ours, _, _), v)| match v {
            Some(ns) => {
                any_violation = true;
                Some((*ours, *ns))
            }
            None => by_field.next().and_then(|(_, r)| r.value()).map(|ns| {
                any_field = true;
                (*ours, ns)
            }),
        })
        .collect();
    if !nanoseconds.is_empty() {
        return Reading::Value(ThrottleTime {
            source: match (any_violation, any_field) {
                (true, true) => ThrottleTimeSource::Mixed,
                (true, false) => ThrottleTimeSource::ViolationStatus,
                (false, _) => ThrottleTimeSource::FieldValues,
            },
            nanoseconds,
        });
    }
    match reasons {
        Reading::Value(r) => Reading::Value(state.integrator.observe(now_unix_ms, r)),
        Reading::Unsupported => Reading::Unsupported,
        Reading::Failed => Reading::Failed,
    }
}

fn nvlinks(
    nvml: &Nvml,
    device: &Device<'_>,
    state: &mut GpuState,
    lost: &Cell<bool>,
) -> Reading<Vec<NvLinkSample>> {
    let links = state
        .links
        .get_or_insert_with(|| existing_links(device))
        .clone();
    if links.is_empty() {
        return Reading::Unsupported;
    }
    // Per link, the NVLink5 byte counters first, then the older KiB counters: one call.
    let requests: Vec<(u32, u32)> = links
        .iter()
        .flat_map(|l| {
            [
                (field::NVLINK5_TX_BYTES, *l),
                (field::NVLINK5_RX_BYTES, *l),
                (field::NVLINK_TX, *l),
                (field::NVLINK_RX, *l),
            ]
        })
        .collect();
    let scoped = |requests: &[(u32, u32)]| {
        raw::scoped_field_values(nvml, device, requests).map_err(|e| {
            if classify(&e) == ReadOutcome::GpuLost {
                lost.set(true);
            }
        })
    };
    // A driver that refuses the whole call over ids it predates still gets asked for
    // the older counters alone.
    let counters = scoped(&requests)
        .or_else(|()| {
            let older: Vec<(u32, u32)> = links
                .iter()
                .flat_map(|l| [(field::NVLINK_TX, *l), (field::NVLINK_RX, *l)])
                .collect();
            scoped(&older).map(|v| {
                v.chunks_exact(2)
                    .flat_map(|p| [None, None, p[0], p[1]])
                    .collect()
            })
        })
        .unwrap_or_else(|()| vec![None; requests.len()]);
    let out = links
        .iter()
        .zip(counters.chunks_exact(4))
        .map(|(l, c)| {
            let link = device.link_wrapper_for(*l);
            let counter = |c| link.error_counter(c).ok();
            NvLinkSample {
                link: *l,
                active: link.is_active().unwrap_or(false),
                tx_bytes: c[0].or(c[2].map(|kib| kib * 1024)),
                rx_bytes: c[1].or(c[3].map(|kib| kib * 1024)),
                crc_flit_errors: counter(ErrorCounter::DlCrcFlit),
                crc_data_errors: counter(ErrorCounter::DlCrcData),
                replay_errors: counter(ErrorCounter::DlReplay),
                recovery_errors: counter(ErrorCounter::DlRecovery),
            }
        })
        .collect();
    Reading::Value(out)
}

/// The NVLink links a GPU has. The link-count field (91) says how many, as DCGM bounds
/// link ids by it (see [`field::NVLINK_LINK_COUNT`]): nvmlDeviceGetNvLinkState answers
/// for every slot up to
/// NVML_NVLINK_MAX_LINKS on some drivers, unused ones as inactive. Where the field is
/// not supported, the links answering their state up to the last active one (slots past
/// it are taken as unused); where nothing answers (no NVLink, or a VM that hides it, as
/// the H200 probe shows), none.
pub(crate) fn existing_links(device: &Device<'_>) -> Vec<u32> {
    let lost = Cell::new(false);
    let count = fields(device, &[field::NVLINK_LINK_COUNT], 0, &lost)[0].value();
    if let Some(count) = count {
        let count = u32::try_from(count)
            .unwrap_or(0)
            .min(super::NVLINK_MAX_LINKS);
        return (0..count).collect();
    }
    let states: Vec<(u32, bool)> = (0..super::NVLINK_MAX_LINKS)
        .filter_map(|l| {
            device
                .link_wrapper_for(l)
                .is_active()
                .ok()
                .map(|active| (l, active))
        })
        .collect();
    let Some(last_active) = states.iter().rev().find(|(_, a)| *a).map(|(l, _)| *l) else {
        return Vec::new();
    };
    states
        .into_iter()
        .map(|(l, _)| l)
        .filter(|l| *l <= last_active)
        .collect()
}

fn retired_pages(device: &Device<'_>, lost: &Cell<bool>) -> Reading<RetiredPages> {
    let single = reading(
        device.retired_pages(RetirementCause::MultipleSingleBitEccErrors),
        0,
        lost,
    );
    let double = reading(
        device.retired_pages(RetirementCause::DoubleBitEccError),
        0,
        lost,
    );
    let pending = reading(device.are_pages_pending_retired(), 0, lost);
    match (single, double, pending) {
        (Reading::Value(s), Reading::Value(d), Reading::Value(p)) => Reading::Value(RetiredPages {
            single_bit_ecc: s.len() as u32,
            double_bit_ecc: d.len() as u32,
            pending: p,
        }),
        (Reading::Unsupported, ..) | (_, Reading::Unsupported, _) | (.., Reading::Unsupported) => {
            Reading::Unsupported
        }
        _ => Reading::Failed,
    }
}

/// GPM metrics need two samples: the previous reading's and this one's.
fn gpm(
    nvml: &'static Nvml,
    device: &Device<'static>,
    state: &mut GpuState,
    lost: &Cell<bool>,
) -> Reading<GpmActivity> {
    let supported = *state
        .gpm_supported
        .get_or_insert_with(|| device.gpm_support().unwrap_or(false));
    if !supported {
        return Reading::Unsupported;
    }
    let now = match device.gpm_sample() {
        Ok(s) => s,
        Err(e) => return reading(Err(e), 0, lost),
    };
    let Some(prev) = state.gpm_prev.replace(now) else {
        // The first reading has nothing to compare with.
        return Reading::Failed;
    };
    let Some(now) = state.gpm_prev.as_ref() else {
        return Reading::Failed;
    };
    let ids = [
        GpmMetricId::SmUtil,
        GpmMetricId::SmOccupancy,
        GpmMetricId::AnyTensorUtil,
        GpmMetricId::DramBwUtil,
    ];
    match nvml_wrapper::gpm::gpm_metrics_get(nvml, &prev, now, &ids) {
        Ok(results) => {
            let ratio = |k: usize| {
                results
                    .get(k)
                    .and_then(|r| r.as_ref().ok())
                    .map(|m| (m.value / 100.0).clamp(0.0, 1.0))
                    .filter(|v| v.is_finite())
            };
            match (ratio(0), ratio(1), ratio(2), ratio(3)) {
                (Some(a), Some(b), Some(c), Some(d)) => Reading::Value(GpmActivity {
                    sm_active: a,
                    sm_occupancy: b,
                    tensor_active: c,
                    dram_active: d,
                }),
                _ => Reading::Failed,
            }
        }
        Err(e) => reading(Err(e), 0, lost),
    }
}

fn processes(
    device: &Device<'_>,
    state: &mut GpuState,
    procs: &ProcReader,
    lost: &Cell<bool>,
) -> Reading<Vec<ProcessSample>> {
    let running = match reading(device.running_compute_processes(), 0, lost) {
        Reading::Value(p) => p,
        Reading::Unsupported => return Reading::Unsupported,
        Reading::Failed => return Reading::Failed,
    };
    // NVML samples only the processes that used the GPU since the timestamp, and
    // answers NOT_FOUND when none did (nvml.h 13.3.29 lines 8496-8497, 8524): a running process without a sample was idle
    // (0 %), not "as last time". Any other failure leaves the utilisation unknown.
    let sm: Option<HashMap<u32, u32>> = match device.process_utilization_stats(state.process_ts) {
        Ok(samples) => {
            let mut sm = HashMap::new();
            for s in samples {
                state.process_ts = Some(state.process_ts.unwrap_or(0).max(s.timestamp));
                sm.insert(s.pid, s.sm_util);
            }
            Some(sm)
        }
        Err(NvmlError::NotFound) => Some(HashMap::new()),
        Err(e) => {
            debug!(error = %e, "no per-process utilisation");
            None
        }
    };
    Reading::Value(
        running
            .iter()
            .map(|p| {
                let (workload_kind, workload) = procs.workload(p.pid);
                ProcessSample {
                    pid: p.pid,
                    used_memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    },
                    sm_utilization_percent: sm
                        .as_ref()
                        .map(|sm| sm.get(&p.pid).copied().unwrap_or(0)),
                    workload_kind,
                    workload,
                }
            })
            .collect(),
    )
}

/// The MIG instances of a GPU in MIG mode. nvmlDeviceGetMaxMigDeviceCount is "the
/// maximum number of MIG devices that can exist" (nvml.h 13.3.29 line 13398; zero with
/// MIG off, line 13400), not how many do; empty slots answer NOT_FOUND and are
/// skipped.
pub(crate) fn mig_instances(nvml: &Nvml, device: &Device<'_>) -> Vec<MigInstance> {
    let count = device.mig_device_count().unwrap_or(0);
    (0..count)
        .filter_map(|k| match device.mig_device_by_index(k) {
            Ok(m) => Some(m),
            Err(NvmlError::NotFound) => None,
            Err(e) => {
                debug!(slot = k, error = %e, "MIG device slot did not answer");
                None
            }
        })
        .map(|m| {
            let (gpu_instance_id, compute_instance_id) = raw::mig_instance_ids(nvml, &m);
            MigInstance {
                uuid: m.uuid().unwrap_or_default(),
                gpu_instance_id,
                compute_instance_id,
                memory_total_bytes: m.memory_info().ok().map(|i| i.total),
            }
        })
        .collect()
}
