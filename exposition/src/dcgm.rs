//! A DCGM-compatible view: the fields gpulse and NVIDIA's dcgm-exporter both have,
//! under dcgm-exporter's metric names, units and labels, so dashboards and alerts
//! written for dcgm-exporter work unchanged.
//!
//! Names, units and types follow dcgm-exporter's `etc/default-counters.csv` and DCGM's
//! field list (`dcgm_fields.h`): clocks in MHz, power in W, energy in mJ, memory in
//! MiB, utilisation in percent, violation time in ns, `DCGM_FI_PROF_*` as ratios.
//! Labels are dcgm-exporter's: `gpu`, `UUID`, `pci_bus_id`, `device`, `modelName`,
//! `Hostname` (and `hostname`, as newer releases spell it) and
//! `DCGM_FI_DRIVER_VERSION`. The host label carries gpulse's `host` (the agent id), so
//! series of a fleet stay apart. docs/dcgm-compat.md has the whole mapping.

use std::fmt;
use std::str::FromStr;

use std::collections::HashMap;

use gpulse_gpu::{DeviceSample, ThrottleReasons};

use crate::families::{GpuContext, Labels, SeriesSink};
use crate::names::{self, Def, counter, gauge};

/// Which names the fleet's GPUs are exposed under (collector setting `dcgm_compat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DcgmCompat {
    /// gpulse's names only.
    #[default]
    Off,
    /// gpulse's names and dcgm-exporter's, side by side.
    Also,
    /// dcgm-exporter's names instead of gpulse's per-GPU series; host, agent and
    /// collector series keep gpulse's names, since DCGM has none for them.
    Only,
}

impl DcgmCompat {
    /// The values accepted in configuration, in the order documented.
    pub const NAMES: [(&'static str, DcgmCompat); 3] = [
        ("off", DcgmCompat::Off),
        ("also", DcgmCompat::Also),
        ("only", DcgmCompat::Only),
    ];

    pub fn name(self) -> &'static str {
        match self {
            DcgmCompat::Off => "off",
            DcgmCompat::Also => "also",
            DcgmCompat::Only => "only",
        }
    }

    /// Whether gpulse's per-GPU series are exposed.
    pub fn gpulse_gpus(self) -> bool {
        self != DcgmCompat::Only
    }

    /// Whether dcgm-exporter's series are exposed.
    pub fn dcgm(self) -> bool {
        self != DcgmCompat::Off
    }
}

impl fmt::Display for DcgmCompat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `dcgm_compat` value that is none of off, also, only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown dcgm_compat value {0:?}: use off (gpulse names only), also (gpulse and dcgm-exporter names) or only (dcgm-exporter names for GPUs)"
)]
pub struct UnknownDcgmCompat(pub String);

impl FromStr for DcgmCompat {
    type Err = UnknownDcgmCompat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| UnknownDcgmCompat(s.to_string()))
    }
}

// Help texts follow dcgm-exporter's counter files, so both read alike.
pub const SM_CLOCK: Def = gauge("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).");
pub const MEM_CLOCK: Def = gauge("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).");
pub const MAX_SM_CLOCK: Def = gauge(
    "DCGM_FI_DEV_MAX_SM_CLOCK",
    "Maximum supported SM clock (in MHz).",
);
pub const MAX_MEM_CLOCK: Def = gauge(
    "DCGM_FI_DEV_MAX_MEM_CLOCK",
    "Maximum supported memory clock (in MHz).",
);
pub const APP_SM_CLOCK: Def = gauge("DCGM_FI_DEV_APP_SM_CLOCK", "SM application clock (in MHz).");
pub const APP_MEM_CLOCK: Def = gauge(
    "DCGM_FI_DEV_APP_MEM_CLOCK",
    "Memory application clock (in MHz).",
);
pub const GPU_TEMP: Def = gauge("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).");
pub const MEMORY_TEMP: Def = gauge("DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C).");
pub const SLOWDOWN_TEMP: Def = gauge("DCGM_FI_DEV_SLOWDOWN_TEMP", "Slowdown temperature (in C).");
pub const SHUTDOWN_TEMP: Def = gauge("DCGM_FI_DEV_SHUTDOWN_TEMP", "Shutdown temperature (in C).");
pub const MEM_MAX_OP_TEMP: Def = gauge(
    "DCGM_FI_DEV_MEM_MAX_OP_TEMP",
    "Maximum operating temperature of the memory (in C).",
);
pub const GPU_MAX_OP_TEMP: Def = gauge(
    "DCGM_FI_DEV_GPU_MAX_OP_TEMP",
    "Maximum operating temperature of the GPU (in C).",
);
pub const POWER_USAGE: Def = gauge("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).");
pub const ENFORCED_POWER_LIMIT: Def = gauge(
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT",
    "Effective power limit the driver enforces (in W).",
);
pub const POWER_MGMT_LIMIT_DEF: Def = gauge(
    "DCGM_FI_DEV_POWER_MGMT_LIMIT_DEF",
    "Default power management limit (in W).",
);
pub const TOTAL_ENERGY_CONSUMPTION: Def = counter(
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "Total energy consumption since the driver loaded (in mJ).",
);
pub const GPU_UTIL: Def = gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).");
pub const MEM_COPY_UTIL: Def = gauge("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).");
pub const FB_TOTAL: Def = gauge("DCGM_FI_DEV_FB_TOTAL", "Framebuffer memory total (in MiB).");
pub const FB_FREE: Def = gauge("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).");
pub const FB_USED: Def = gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).");
pub const CLOCKS_EVENT_REASONS: Def = gauge(
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
    "Current clock event (throttle) reasons as a bitmask of DCGM_CLOCKS_EVENT_REASON_*.",
);
pub const POWER_VIOLATION: Def = counter(
    "DCGM_FI_DEV_POWER_VIOLATION",
    "Throttling duration due to power constraints (in ns).",
);
pub const THERMAL_VIOLATION: Def = counter(
    "DCGM_FI_DEV_THERMAL_VIOLATION",
    "Throttling duration due to thermal constraints (in ns).",
);
pub const SYNC_BOOST_VIOLATION: Def = counter(
    "DCGM_FI_DEV_SYNC_BOOST_VIOLATION",
    "Throttling duration due to sync-boost constraints (in ns).",
);
pub const BOARD_LIMIT_VIOLATION: Def = counter(
    "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION",
    "Throttling duration due to board limit constraints (in ns).",
);
pub const LOW_UTIL_VIOLATION: Def = counter(
    "DCGM_FI_DEV_LOW_UTIL_VIOLATION",
    "Throttling duration due to low utilization (in ns).",
);
pub const RELIABILITY_VIOLATION: Def = counter(
    "DCGM_FI_DEV_RELIABILITY_VIOLATION",
    "Throttling duration due to reliability constraints (in ns).",
);
pub const TOTAL_APP_CLOCKS_VIOLATION: Def = counter(
    "DCGM_FI_DEV_TOTAL_APP_CLOCKS_VIOLATION",
    "Clocks held below the application clocks (in ns).",
);
pub const TOTAL_BASE_CLOCKS_VIOLATION: Def = counter(
    "DCGM_FI_DEV_TOTAL_BASE_CLOCKS_VIOLATION",
    "Clocks held below the base clocks (in ns).",
);
pub const PCIE_LINK_GEN: Def = gauge("DCGM_FI_DEV_PCIE_LINK_GEN", "PCIe current link generation.");
pub const PCIE_LINK_WIDTH: Def = gauge("DCGM_FI_DEV_PCIE_LINK_WIDTH", "PCIe current link width.");
pub const PCIE_MAX_LINK_GEN: Def =
    gauge("DCGM_FI_DEV_PCIE_MAX_LINK_GEN", "PCIe max link generation.");
pub const PCIE_MAX_LINK_WIDTH: Def =
    gauge("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH", "PCIe max link width.");
pub const PCIE_REPLAY_COUNTER: Def = counter(
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "Total number of PCIe retries.",
);
pub const NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL: Def = counter(
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
    "Total number of NVLink flow-control CRC errors.",
);
pub const NVLINK_CRC_DATA_ERROR_COUNT_TOTAL: Def = counter(
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
    "Total number of NVLink data CRC errors.",
);
pub const NVLINK_REPLAY_ERROR_COUNT_TOTAL: Def = counter(
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
    "Total number of NVLink retries.",
);
pub const NVLINK_RECOVERY_ERROR_COUNT_TOTAL: Def = counter(
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
    "Total number of NVLink recovery errors.",
);
pub const XID_ERRORS: Def = gauge(
    "DCGM_FI_DEV_XID_ERRORS",
    "Value of the last XID error encountered.",
);
pub const ECC_SBE_AGG_TOTAL: Def = counter(
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
    "Total number of single-bit persistent ECC errors.",
);
pub const ECC_DBE_AGG_TOTAL: Def = counter(
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
    "Total number of double-bit persistent ECC errors.",
);
pub const ECC_CURRENT: Def = gauge("DCGM_FI_DEV_ECC_CURRENT", "Current ECC mode (1 = enabled).");
pub const RETIRED_SBE: Def = counter(
    "DCGM_FI_DEV_RETIRED_SBE",
    "Total number of retired pages due to single-bit errors.",
);
pub const RETIRED_DBE: Def = counter(
    "DCGM_FI_DEV_RETIRED_DBE",
    "Total number of retired pages due to double-bit errors.",
);
pub const RETIRED_PENDING: Def = counter(
    "DCGM_FI_DEV_RETIRED_PENDING",
    "Total number of pages pending retirement.",
);
pub const UNCORRECTABLE_REMAPPED_ROWS: Def = counter(
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "Number of remapped rows for uncorrectable errors.",
);
pub const CORRECTABLE_REMAPPED_ROWS: Def = counter(
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "Number of remapped rows for correctable errors.",
);
pub const ROW_REMAP_FAILURE: Def = gauge(
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "Whether remapping of rows has failed.",
);
pub const ROW_REMAP_PENDING: Def = gauge(
    "DCGM_FI_DEV_ROW_REMAP_PENDING",
    "Whether remapping of rows is pending a GPU reset.",
);
pub const MIG_MODE: Def = gauge("DCGM_FI_DEV_MIG_MODE", "MIG mode (1 = enabled).");
pub const GR_ENGINE_ACTIVE: Def = gauge(
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "Ratio of time the graphics engine is active.",
);
pub const SM_ACTIVE: Def = gauge(
    "DCGM_FI_PROF_SM_ACTIVE",
    "The ratio of cycles an SM has at least 1 warp assigned.",
);
pub const SM_OCCUPANCY: Def = gauge(
    "DCGM_FI_PROF_SM_OCCUPANCY",
    "The ratio of number of warps resident on an SM.",
);
pub const PIPE_TENSOR_ACTIVE: Def = gauge(
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    "Ratio of cycles the tensor (HMMA) pipe is active.",
);
pub const DRAM_ACTIVE: Def = gauge(
    "DCGM_FI_PROF_DRAM_ACTIVE",
    "Ratio of cycles the device memory interface is active sending or receiving data.",
);

/// How a DCGM value comes from gpulse's series of the same GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The gpulse series' value in DCGM's unit.
    Value(Convert),
    /// Only the gpulse series whose label `.0` is `.1`, in DCGM's unit.
    Select(&'static str, &'static str, Convert),
    /// dcgm-exporter's free framebuffer: total minus used (gpulse has no free memory).
    FreeMemory,
    /// The active reasons of `gpulse_gpu_throttle_active` as DCGM's bitmask.
    ReasonBits,
    /// The newest XID code (a gauge): from the GPU's context, not a series, since
    /// gpulse counts XIDs by code instead.
    LastXid,
}

/// A unit change from gpulse's base units to dcgm-exporter's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convert {
    Same,
    /// Hertz to MHz.
    Mega,
    /// Ratio to percent (NVML reports whole percents).
    Percent,
    /// Joules to millijoules (NVML reports whole millijoules).
    Milli,
    /// Seconds to nanoseconds (NVML reports whole nanoseconds).
    Nano,
    /// Bytes to MiB.
    Mebi,
}

const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

impl Convert {
    /// NVML's integers come back exactly: gpulse divided them once, and rounding
    /// undoes the last-bit error of multiplying back (exact below 2^51 units).
    pub fn apply(self, v: f64) -> f64 {
        match self {
            Convert::Same => v,
            Convert::Mega => v / 1e6,
            Convert::Percent => (v * 100.0).round(),
            Convert::Milli => (v * 1e3).round(),
            Convert::Nano => (v * 1e9).round(),
            Convert::Mebi => v / BYTES_PER_MIB,
        }
    }
}

/// One DCGM metric and the gpulse metric its value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub dcgm: Def,
    /// The gpulse metric carrying the same reading.
    pub gpulse: &'static str,
    pub rule: Rule,
}

const fn map(dcgm: Def, gpulse: &'static str, rule: Rule) -> Mapping {
    Mapping { dcgm, gpulse, rule }
}

const fn same(dcgm: Def, gpulse: &'static str) -> Mapping {
    map(dcgm, gpulse, Rule::Value(Convert::Same))
}

const fn conv(dcgm: Def, gpulse: &'static str, c: Convert) -> Mapping {
    map(dcgm, gpulse, Rule::Value(c))
}

const fn pick(
    dcgm: Def,
    gpulse: &'static str,
    label: &'static str,
    value: &'static str,
) -> Mapping {
    map(dcgm, gpulse, Rule::Select(label, value, Convert::Same))
}

const THROTTLE: &str = "gpulse_gpu_throttle_seconds_total";
const NVLINK_ERRORS: &str = "gpulse_gpu_nvlink_errors_total";

const fn violation(dcgm: Def, reason: &'static str) -> Mapping {
    map(
        dcgm,
        THROTTLE,
        Rule::Select("reason", reason, Convert::Nano),
    )
}

/// Every DCGM metric of the view, in exposition order, with its gpulse source: the
/// whole view is this renaming of gpulse's series.
pub const MAPPINGS: [Mapping; 51] = [
    conv(SM_CLOCK, "gpulse_gpu_sm_clock_hertz", Convert::Mega),
    conv(MEM_CLOCK, "gpulse_gpu_memory_clock_hertz", Convert::Mega),
    conv(MAX_SM_CLOCK, "gpulse_gpu_sm_clock_max_hertz", Convert::Mega),
    conv(
        MAX_MEM_CLOCK,
        "gpulse_gpu_memory_clock_max_hertz",
        Convert::Mega,
    ),
    conv(
        APP_SM_CLOCK,
        "gpulse_gpu_applications_sm_clock_hertz",
        Convert::Mega,
    ),
    conv(
        APP_MEM_CLOCK,
        "gpulse_gpu_applications_memory_clock_hertz",
        Convert::Mega,
    ),
    same(GPU_TEMP, "gpulse_gpu_temperature_celsius"),
    same(MEMORY_TEMP, "gpulse_gpu_memory_temperature_celsius"),
    same(SLOWDOWN_TEMP, "gpulse_gpu_slowdown_temperature_celsius"),
    same(SHUTDOWN_TEMP, "gpulse_gpu_shutdown_temperature_celsius"),
    same(MEM_MAX_OP_TEMP, "gpulse_gpu_memory_max_temperature_celsius"),
    same(
        GPU_MAX_OP_TEMP,
        "gpulse_gpu_max_operating_temperature_celsius",
    ),
    same(POWER_USAGE, "gpulse_gpu_power_usage_watts"),
    same(ENFORCED_POWER_LIMIT, "gpulse_gpu_power_limit_watts"),
    same(POWER_MGMT_LIMIT_DEF, "gpulse_gpu_power_default_limit_watts"),
    conv(
        TOTAL_ENERGY_CONSUMPTION,
        "gpulse_gpu_energy_joules_total",
        Convert::Milli,
    ),
    conv(GPU_UTIL, "gpulse_gpu_utilization_ratio", Convert::Percent),
    conv(
        MEM_COPY_UTIL,
        "gpulse_gpu_memory_utilization_ratio",
        Convert::Percent,
    ),
    conv(FB_TOTAL, "gpulse_gpu_memory_total_bytes", Convert::Mebi),
    map(FB_FREE, "gpulse_gpu_memory_total_bytes", Rule::FreeMemory),
    conv(FB_USED, "gpulse_gpu_memory_used_bytes", Convert::Mebi),
    map(
        CLOCKS_EVENT_REASONS,
        "gpulse_gpu_throttle_active",
        Rule::ReasonBits,
    ),
    violation(POWER_VIOLATION, "power"),
    violation(THERMAL_VIOLATION, "thermal"),
    violation(SYNC_BOOST_VIOLATION, "sync_boost"),
    violation(BOARD_LIMIT_VIOLATION, "board_limit"),
    violation(LOW_UTIL_VIOLATION, "low_utilization"),
    violation(RELIABILITY_VIOLATION, "reliability"),
    violation(TOTAL_APP_CLOCKS_VIOLATION, "total_app_clocks"),
    violation(TOTAL_BASE_CLOCKS_VIOLATION, "total_base_clocks"),
    same(PCIE_LINK_GEN, "gpulse_gpu_pcie_link_generation"),
    same(PCIE_LINK_WIDTH, "gpulse_gpu_pcie_link_width_lanes"),
    same(PCIE_MAX_LINK_GEN, "gpulse_gpu_pcie_link_max_generation"),
    same(PCIE_MAX_LINK_WIDTH, "gpulse_gpu_pcie_link_max_width_lanes"),
    same(PCIE_REPLAY_COUNTER, "gpulse_gpu_pcie_replays_total"),
    pick(
        NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL,
        NVLINK_ERRORS,
        "type",
        "crc_flit",
    ),
    pick(
        NVLINK_CRC_DATA_ERROR_COUNT_TOTAL,
        NVLINK_ERRORS,
        "type",
        "crc_data",
    ),
    pick(
        NVLINK_REPLAY_ERROR_COUNT_TOTAL,
        NVLINK_ERRORS,
        "type",
        "replay",
    ),
    pick(
        NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
        NVLINK_ERRORS,
        "type",
        "recovery",
    ),
    map(XID_ERRORS, "gpulse_gpu_xid_errors_total", Rule::LastXid),
    pick(
        ECC_SBE_AGG_TOTAL,
        "gpulse_gpu_ecc_errors_total",
        "type",
        "corrected",
    ),
    pick(
        ECC_DBE_AGG_TOTAL,
        "gpulse_gpu_ecc_errors_total",
        "type",
        "uncorrected",
    ),
    same(ECC_CURRENT, "gpulse_gpu_ecc_enabled"),
    pick(
        RETIRED_SBE,
        "gpulse_gpu_retired_pages",
        "cause",
        "single_bit_ecc",
    ),
    pick(
        RETIRED_DBE,
        "gpulse_gpu_retired_pages",
        "cause",
        "double_bit_ecc",
    ),
    same(RETIRED_PENDING, "gpulse_gpu_retired_pages_pending"),
    pick(
        UNCORRECTABLE_REMAPPED_ROWS,
        "gpulse_gpu_remapped_rows",
        "type",
        "uncorrectable",
    ),
    pick(
        CORRECTABLE_REMAPPED_ROWS,
        "gpulse_gpu_remapped_rows",
        "type",
        "correctable",
    ),
    same(ROW_REMAP_FAILURE, "gpulse_gpu_row_remap_failed"),
    same(ROW_REMAP_PENDING, "gpulse_gpu_row_remap_pending"),
    same(MIG_MODE, "gpulse_gpu_mig_enabled"),
];

/// The profiling ratios, listed apart: they come from GPM (Hopper and later), except
/// GR_ENGINE_ACTIVE, which is NVML's utilisation as a ratio.
pub const PROF_MAPPINGS: [Mapping; 5] = [
    same(GR_ENGINE_ACTIVE, "gpulse_gpu_utilization_ratio"),
    same(SM_ACTIVE, "gpulse_gpu_sm_active_ratio"),
    same(SM_OCCUPANCY, "gpulse_gpu_sm_occupancy_ratio"),
    same(PIPE_TENSOR_ACTIVE, "gpulse_gpu_tensor_active_ratio"),
    same(DRAM_ACTIVE, "gpulse_gpu_dram_active_ratio"),
];

fn all_mappings() -> impl Iterator<Item = &'static Mapping> {
    MAPPINGS.iter().chain(PROF_MAPPINGS.iter())
}

/// Every DCGM metric definition, in exposition order.
pub fn defs() -> &'static [Def] {
    static DEFS: std::sync::OnceLock<Vec<Def>> = std::sync::OnceLock::new();
    DEFS.get_or_init(|| all_mappings().map(|m| m.dcgm).collect())
}

/// gpulse's fleet families, then DCGM's: one text writer for both views.
pub(crate) fn fleet_and_dcgm_defs() -> &'static [Def] {
    static DEFS: std::sync::OnceLock<Vec<Def>> = std::sync::OnceLock::new();
    DEFS.get_or_init(|| names::FLEET.iter().chain(defs()).copied().collect())
}

/// The mappings fed by each gpulse metric.
fn by_source() -> &'static HashMap<&'static str, Vec<&'static Mapping>> {
    static BY: std::sync::OnceLock<HashMap<&'static str, Vec<&'static Mapping>>> =
        std::sync::OnceLock::new();
    BY.get_or_init(|| {
        let mut by: HashMap<&'static str, Vec<&'static Mapping>> = HashMap::new();
        for m in all_mappings() {
            by.entry(m.gpulse).or_default().push(m);
        }
        by
    })
}

/// dcgm-exporter's label names.
pub const LABEL_GPU: &str = "gpu";
pub const LABEL_UUID: &str = "UUID";
pub const LABEL_PCI_BUS_ID: &str = "pci_bus_id";
pub const LABEL_DEVICE: &str = "device";
pub const LABEL_MODEL_NAME: &str = "modelName";
/// dcgm-exporter 2.x and most published dashboards.
pub const LABEL_HOSTNAME: &str = "Hostname";
/// Newer dcgm-exporter releases.
pub const LABEL_HOSTNAME_LOWER: &str = "hostname";
/// dcgm-exporter's default counters carry the driver version as a label field.
pub const LABEL_DRIVER_VERSION: &str = "DCGM_FI_DRIVER_VERSION";

const LABEL_NAMES: [&str; 8] = [
    LABEL_GPU,
    LABEL_UUID,
    LABEL_PCI_BUS_ID,
    LABEL_DEVICE,
    LABEL_MODEL_NAME,
    LABEL_HOSTNAME,
    LABEL_HOSTNAME_LOWER,
    LABEL_DRIVER_VERSION,
];

/// dcgm-exporter's Kubernetes mode: the container holding the GPU, on every series of
/// the GPU, absent when none does.
pub const LABEL_POD: &str = "pod";
pub const LABEL_NAMESPACE: &str = "namespace";
pub const LABEL_CONTAINER: &str = "container";

/// The GPU whose series are being renamed, and what the derived values need.
#[derive(Debug, Default)]
struct Current {
    /// Values of [`LABEL_NAMES`].
    labels: [String; 8],
    /// namespace, pod and container of the holder of the whole GPU.
    holder: Option<[String; 3]>,
    answering: bool,
    last_xid: Option<u64>,
    total_bytes: Option<f64>,
    used_bytes: Option<f64>,
    reasons: Option<u64>,
}

/// A sink that passes series on and adds the DCGM view of them: gpulse's per-GPU
/// series renamed (and, with `only`, gpulse's own withheld).
#[derive(Debug)]
pub(crate) struct WithDcgm<'a, S> {
    out: &'a mut S,
    gpulse_gpus: bool,
    current: Option<Current>,
}

impl<'a, S: SeriesSink> WithDcgm<'a, S> {
    pub(crate) fn new(out: &'a mut S, compat: DcgmCompat) -> Self {
        WithDcgm {
            out,
            gpulse_gpus: compat.gpulse_gpus(),
            current: None,
        }
    }

    /// Writes what waits for the end of a GPU: values made of several series.
    fn flush(&mut self) {
        let Some(c) = self.current.take() else { return };
        if !c.answering {
            return;
        }
        let labels = labels(&c.labels, c.holder.as_ref());
        let mut put = |def: &Def, v: Option<f64>| {
            if let Some(v) = v {
                self.out.series(def, labels.as_slice(), &[], v);
            }
        };
        put(
            &FB_FREE,
            c.total_bytes
                .zip(c.used_bytes)
                .map(|(t, u)| Convert::Mebi.apply((t - u).max(0.0))),
        );
        put(&CLOCKS_EVENT_REASONS, c.reasons.map(|r| r as f64));
        put(&XID_ERRORS, c.last_xid.map(|x| x as f64));
    }

    pub(crate) fn finish(mut self) {
        self.flush();
    }
}

/// The labels of one DCGM series: dcgm-exporter's eight, then the holder's three
/// when the GPU is held. An array and its length, not a Vec: it is built for every
/// series of the view.
struct DcgmLabels<'a> {
    pairs: [(&'static str, &'a str); 11],
    len: usize,
}

impl<'a> DcgmLabels<'a> {
    fn as_slice(&self) -> &[(&'static str, &'a str)] {
        &self.pairs[..self.len]
    }
}

fn labels<'a>(values: &'a [String; 8], holder: Option<&'a [String; 3]>) -> DcgmLabels<'a> {
    let mut pairs = [("", ""); 11];
    for (i, (n, v)) in LABEL_NAMES.iter().zip(values).enumerate() {
        pairs[i] = (*n, v.as_str());
    }
    let mut len = LABEL_NAMES.len();
    if let Some([namespace, pod, container]) = holder {
        // dcgm-exporter writes its attributes in key order after its labels.
        pairs[len] = (LABEL_CONTAINER, container.as_str());
        pairs[len + 1] = (LABEL_NAMESPACE, namespace.as_str());
        pairs[len + 2] = (LABEL_POD, pod.as_str());
        len += 3;
    }
    DcgmLabels { pairs, len }
}

impl<S: SeriesSink> SeriesSink for WithDcgm<'_, S> {
    fn gpu(&mut self, gpu: &GpuContext<'_>) {
        self.flush();
        self.out.gpu(gpu);
        let index = gpu.index.to_string();
        // The device node, as dcgm-exporter names it: /dev/nvidia<minor>, minor = index.
        let device = format!("nvidia{index}");
        self.current = Some(Current {
            labels: [
                index,
                gpu.uuid.to_string(),
                gpu.pci_bus_id.to_string(),
                device,
                gpu.model.to_string(),
                gpu.host.to_string(),
                gpu.host.to_string(),
                gpu.driver_version.to_string(),
            ],
            // DCGM reads nothing from a GPU that fell off the bus, nor does this view.
            answering: gpu.answering,
            last_xid: gpu.last_xid,
            holder: gpu
                .holder
                .map(|h| [h.namespace.clone(), h.pod.clone(), h.container.clone()]),
            ..Current::default()
        });
    }

    fn series(&mut self, def: &Def, base: &Labels<'_>, extra: &Labels<'_>, value: f64) {
        let gpu_series = def.name.starts_with("gpulse_gpu_");
        if self.gpulse_gpus || !gpu_series {
            self.out.series(def, base, extra, value);
        }
        if !gpu_series {
            return;
        }
        let Some(c) = self.current.as_mut().filter(|c| c.answering) else {
            return;
        };
        if def.name == names::GPU_MEMORY_USED.name {
            c.used_bytes = Some(value);
        }
        let Some(mappings) = by_source().get(def.name) else {
            return;
        };
        let labels = labels(&c.labels, c.holder.as_ref());
        for m in mappings {
            let v = match m.rule {
                Rule::Value(conv) => Some(conv.apply(value)),
                Rule::Select(k, want, conv) => extra
                    .iter()
                    .any(|(n, v)| *n == k && *v == want)
                    .then(|| conv.apply(value)),
                Rule::FreeMemory => {
                    c.total_bytes = Some(value);
                    None
                }
                Rule::ReasonBits => {
                    let bits = c.reasons.get_or_insert(0);
                    if value != 0.0 {
                        let reason = extra.iter().find(|(n, _)| *n == "reason").map(|(_, v)| *v);
                        if let Some((flag, _)) = ThrottleReasons::NAMED
                            .iter()
                            .find(|(_, n)| Some(*n) == reason)
                        {
                            *bits |= flag.bits();
                        }
                    }
                    None
                }
                Rule::LastXid => None,
            };
            if let Some(v) = v {
                self.out.series(&m.dcgm, labels.as_slice(), &[], v);
            }
        }
    }
}

/// The XID code that arrived most recently, comparing a GPU's cumulative XID counts
/// before and after a sample. When several codes arrive in one interval the highest is
/// taken: the order within an interval is not kept.
pub(crate) fn newest_xid(before: Option<&DeviceSample>, after: &DeviceSample) -> Option<u64> {
    let now = after.xid_errors.get()?;
    let then = before.and_then(|s| s.xid_errors.get());
    now.iter()
        .filter(|(code, count)| {
            let old = then
                .and_then(|t| t.iter().find(|(c, _)| c == code))
                .map_or(0, |(_, n)| *n);
            *count > old
        })
        .map(|(code, _)| *code)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mapping_names_a_gpulse_metric_and_a_unique_dcgm_one() {
        let mut seen = std::collections::BTreeSet::new();
        for m in MAPPINGS.iter().chain(PROF_MAPPINGS.iter()) {
            assert!(
                names::FLEET.iter().any(|d| d.name == m.gpulse),
                "{} maps from {}, which gpulse does not export",
                m.dcgm.name,
                m.gpulse
            );
            assert!(m.dcgm.name.starts_with("DCGM_FI_"), "{}", m.dcgm.name);
            assert!(seen.insert(m.dcgm.name), "{} twice", m.dcgm.name);
        }
    }

    #[test]
    fn the_mapping_is_documented() {
        let doc = include_str!("../../docs/dcgm-compat.md");
        for m in MAPPINGS.iter().chain(PROF_MAPPINGS.iter()) {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` ", m.dcgm.name)))
                .unwrap_or_else(|| panic!("docs/dcgm-compat.md has no row for {}", m.dcgm.name));
            assert!(
                row.contains(&format!("`{}`", m.gpulse)),
                "the row of {} should name {}: {row}",
                m.dcgm.name,
                m.gpulse
            );
        }
    }

    #[test]
    fn settings_parse_and_name_the_valid_values_when_wrong() {
        for (name, value) in DcgmCompat::NAMES {
            assert_eq!(name.parse::<DcgmCompat>(), Ok(value));
            assert_eq!(value.to_string(), name);
        }
        let err = "al".parse::<DcgmCompat>().unwrap_err().to_string();
        assert!(err.contains("\"al\"") && err.contains("off") && err.contains("only"));
    }

    #[test]
    fn the_newest_xid_is_the_one_whose_count_grew() {
        let with = |xids: Vec<(u64, u64)>| DeviceSample {
            xid_errors: gpulse_gpu::Reading::Value(xids),
            ..DeviceSample::default()
        };
        let a = with(vec![(13, 1), (31, 1)]);
        assert_eq!(newest_xid(None, &a), Some(31));
        let b = with(vec![(13, 2), (31, 1)]);
        assert_eq!(newest_xid(Some(&a), &b), Some(13));
        assert_eq!(newest_xid(Some(&b), &b), None);
        assert_eq!(newest_xid(None, &DeviceSample::default()), None);
    }
}
