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

/// nvml.h field ids (NVML_FI_DEV_*).
mod field {
    pub const MEMORY_TEMP: u32 = 82;
    pub const PCIE_TX_BYTES: u32 = 197;
    pub const PCIE_RX_BYTES: u32 = 198;
    pub const REMAPPED_COR: u32 = 142;
    pub const REMAPPED_UNC: u32 = 143;
    pub const REMAPPED_PENDING: u32 = 144;
    pub const REMAPPED_FAILURE: u32 = 145;
    // In KiB (nvml.h: "NVLink throughput counters field values ... in KiB").
    pub const NVLINK_TX: u32 = 138;
    pub const NVLINK_RX: u32 = 139;
    // Cumulative clock-event (throttle) time in ns, newer drivers.
    pub const EVENT_SW_POWER_CAP: u32 = 74;
    pub const EVENT_SYNC_BOOST: u32 = 76;
    pub const EVENT_SW_THERMAL: u32 = 251;
    pub const EVENT_HW_THERMAL: u32 = 252;
    pub const EVENT_HW_POWER_BRAKE: u32 = 253;
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
    /// Last known SM utilisation per pid: NotFound means "nothing new", not "zero".
    process_sm: HashMap<u32, u32>,
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
        SampleValue::F64(x) if x.is_finite() && *x >= 0.0 => Some(*x as u64),
        SampleValue::F64(_) => None,
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
    let reasons = reading(device.current_throttle_reasons(), i, &lost)
        .map(|r| ThrottleReasons::from_bits_retain(r.bits()));
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
        temperature_celsius: read(device.temperature(TemperatureSensor::Gpu)),
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
    };
    if lost.get() {
        sample = DeviceSample::lost(info.uuid.clone());
    }
    sample
}

/// Violation counters if the driver keeps them, else the clock-event-reason field
/// values, else the flags integrated over time.
fn throttle_time(
    device: &Device<'_>,
    state: &mut GpuState,
    reasons: Reading<ThrottleReasons>,
    now_unix_ms: i64,
    lost: &Cell<bool>,
) -> Reading<ThrottleTime> {
    let policies = [
        (ThrottlePolicy::Power, PerformancePolicy::Power),
        (ThrottlePolicy::Thermal, PerformancePolicy::Thermal),
        (ThrottlePolicy::SyncBoost, PerformancePolicy::SyncBoost),
        (ThrottlePolicy::BoardLimit, PerformancePolicy::BoardLimit),
        (
            ThrottlePolicy::LowUtilization,
            PerformancePolicy::LowUtilization,
        ),
        (ThrottlePolicy::Reliability, PerformancePolicy::Reliability),
        (
            ThrottlePolicy::TotalAppClocks,
            PerformancePolicy::TotalAppClocks,
        ),
        (
            ThrottlePolicy::TotalBaseClocks,
            PerformancePolicy::TotalBaseClocks,
        ),
    ];
    let violation: Vec<(ThrottlePolicy, u64)> = policies
        .iter()
        .filter_map(|(ours, theirs)| match device.violation_status(*theirs) {
            Ok(v) => Some((*ours, v.violation_time)),
            Err(e) => {
                if classify(&e) == ReadOutcome::GpuLost {
                    lost.set(true);
                }
                None
            }
        })
        .collect();
    if !violation.is_empty() {
        return Reading::Value(ThrottleTime {
            source: ThrottleTimeSource::ViolationStatus,
            nanoseconds: violation,
        });
    }
    let ids = [
        field::EVENT_SW_POWER_CAP,
        field::EVENT_SYNC_BOOST,
        field::EVENT_SW_THERMAL,
        field::EVENT_HW_THERMAL,
        field::EVENT_HW_POWER_BRAKE,
    ];
    let v = fields(device, &ids, 0, lost);
    if v.iter().any(|r| r.value().is_some()) {
        let get = |k: usize| v[k].value();
        let mut ns = Vec::new();
        if let Some(p) = get(0) {
            ns.push((ThrottlePolicy::Power, p));
        }
        if let Some(s) = get(1) {
            ns.push((ThrottlePolicy::SyncBoost, s));
        }
        if get(2).is_some() || get(3).is_some() {
            ns.push((
                ThrottlePolicy::Thermal,
                get(2).unwrap_or(0) + get(3).unwrap_or(0),
            ));
        }
        if let Some(b) = get(4) {
            ns.push((ThrottlePolicy::BoardLimit, b));
        }
        return Reading::Value(ThrottleTime {
            source: ThrottleTimeSource::FieldValues,
            nanoseconds: ns,
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
        .get_or_insert_with(|| {
            (0..super::NVLINK_MAX_LINKS)
                .filter(|l| device.link_wrapper_for(*l).is_active().is_ok())
                .collect()
        })
        .clone();
    if links.is_empty() {
        return Reading::Unsupported;
    }
    let requests: Vec<(u32, u32)> = links
        .iter()
        .flat_map(|l| [(field::NVLINK_TX, *l), (field::NVLINK_RX, *l)])
        .collect();
    let throughput = raw::scoped_field_values(nvml, device, &requests).unwrap_or_else(|e| {
        if classify(&e) == ReadOutcome::GpuLost {
            lost.set(true);
        }
        vec![None; requests.len()]
    });
    let out = links
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let link = device.link_wrapper_for(*l);
            let counter = |c| link.error_counter(c).ok();
            NvLinkSample {
                link: *l,
                active: link.is_active().unwrap_or(false),
                tx_bytes: throughput[2 * k].map(|kib| kib * 1024),
                rx_bytes: throughput[2 * k + 1].map(|kib| kib * 1024),
                crc_flit_errors: counter(ErrorCounter::DlCrcFlit),
                crc_data_errors: counter(ErrorCounter::DlCrcData),
                replay_errors: counter(ErrorCounter::DlReplay),
                recovery_errors: counter(ErrorCounter::DlRecovery),
            }
        })
        .collect();
    Reading::Value(out)
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
    match device.process_utilization_stats(state.process_ts) {
        Ok(samples) => {
            for s in samples {
                state.process_ts = Some(state.process_ts.unwrap_or(0).max(s.timestamp));
                state.process_sm.insert(s.pid, s.sm_util);
            }
        }
        // NotFound: no new samples since the last timestamp; the last values stand.
        Err(NvmlError::NotFound) => {}
        Err(e) => debug!(error = %e, "no per-process utilisation"),
    }
    state
        .process_sm
        .retain(|pid, _| running.iter().any(|p| p.pid == *pid));
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
                    sm_utilization_percent: state.process_sm.get(&p.pid).copied(),
                    workload_kind,
                    workload,
                }
            })
            .collect(),
    )
}

/// The MIG instances of a GPU in MIG mode. nvmlDeviceGetMaxMigDeviceCount is the
/// number of slots; empty ones answer NOT_FOUND and are skipped.
pub(crate) fn mig_instances(nvml: &Nvml, device: &Device<'_>) -> Vec<MigInstance> {
    let count = device.mig_device_count().unwrap_or(0);
    (0..count)
        .filter_map(|k| device.mig_device_by_index(k).ok())
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
