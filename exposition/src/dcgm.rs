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

use gpulse_gpu::health::{NvLinkSample, ThrottlePolicy};
use gpulse_gpu::{DeviceSample, DeviceState};

use crate::families::Families;
use crate::names::{Def, counter, gauge};
use crate::{GpuView, HostView};

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

/// One DCGM metric and the gpulse metric its value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub dcgm: Def,
    /// The gpulse metric carrying the same reading.
    pub gpulse: &'static str,
}

const fn map(dcgm: Def, gpulse: &'static str) -> Mapping {
    Mapping { dcgm, gpulse }
}

/// Every DCGM metric of the view, in exposition order, with its gpulse source.
pub const MAPPINGS: [Mapping; 51] = [
    map(SM_CLOCK, "gpulse_gpu_sm_clock_hertz"),
    map(MEM_CLOCK, "gpulse_gpu_memory_clock_hertz"),
    map(MAX_SM_CLOCK, "gpulse_gpu_sm_clock_max_hertz"),
    map(MAX_MEM_CLOCK, "gpulse_gpu_memory_clock_max_hertz"),
    map(APP_SM_CLOCK, "gpulse_gpu_applications_sm_clock_hertz"),
    map(APP_MEM_CLOCK, "gpulse_gpu_applications_memory_clock_hertz"),
    map(GPU_TEMP, "gpulse_gpu_temperature_celsius"),
    map(MEMORY_TEMP, "gpulse_gpu_memory_temperature_celsius"),
    map(SLOWDOWN_TEMP, "gpulse_gpu_slowdown_temperature_celsius"),
    map(SHUTDOWN_TEMP, "gpulse_gpu_shutdown_temperature_celsius"),
    map(MEM_MAX_OP_TEMP, "gpulse_gpu_memory_max_temperature_celsius"),
    map(
        GPU_MAX_OP_TEMP,
        "gpulse_gpu_max_operating_temperature_celsius",
    ),
    map(POWER_USAGE, "gpulse_gpu_power_usage_watts"),
    map(ENFORCED_POWER_LIMIT, "gpulse_gpu_power_limit_watts"),
    map(POWER_MGMT_LIMIT_DEF, "gpulse_gpu_power_default_limit_watts"),
    map(TOTAL_ENERGY_CONSUMPTION, "gpulse_gpu_energy_joules_total"),
    map(GPU_UTIL, "gpulse_gpu_utilization_ratio"),
    map(MEM_COPY_UTIL, "gpulse_gpu_memory_utilization_ratio"),
    map(FB_TOTAL, "gpulse_gpu_memory_total_bytes"),
    map(FB_FREE, "gpulse_gpu_memory_total_bytes"),
    map(FB_USED, "gpulse_gpu_memory_used_bytes"),
    map(CLOCKS_EVENT_REASONS, "gpulse_gpu_throttle_active"),
    map(POWER_VIOLATION, "gpulse_gpu_throttle_seconds_total"),
    map(THERMAL_VIOLATION, "gpulse_gpu_throttle_seconds_total"),
    map(SYNC_BOOST_VIOLATION, "gpulse_gpu_throttle_seconds_total"),
    map(BOARD_LIMIT_VIOLATION, "gpulse_gpu_throttle_seconds_total"),
    map(LOW_UTIL_VIOLATION, "gpulse_gpu_throttle_seconds_total"),
    map(RELIABILITY_VIOLATION, "gpulse_gpu_throttle_seconds_total"),
    map(
        TOTAL_APP_CLOCKS_VIOLATION,
        "gpulse_gpu_throttle_seconds_total",
    ),
    map(
        TOTAL_BASE_CLOCKS_VIOLATION,
        "gpulse_gpu_throttle_seconds_total",
    ),
    map(PCIE_LINK_GEN, "gpulse_gpu_pcie_link_generation"),
    map(PCIE_LINK_WIDTH, "gpulse_gpu_pcie_link_width_lanes"),
    map(PCIE_MAX_LINK_GEN, "gpulse_gpu_pcie_link_max_generation"),
    map(PCIE_MAX_LINK_WIDTH, "gpulse_gpu_pcie_link_max_width_lanes"),
    map(PCIE_REPLAY_COUNTER, "gpulse_gpu_pcie_replays_total"),
    map(
        NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL,
        "gpulse_gpu_nvlink_errors_total",
    ),
    map(
        NVLINK_CRC_DATA_ERROR_COUNT_TOTAL,
        "gpulse_gpu_nvlink_errors_total",
    ),
    map(
        NVLINK_REPLAY_ERROR_COUNT_TOTAL,
        "gpulse_gpu_nvlink_errors_total",
    ),
    map(
        NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
        "gpulse_gpu_nvlink_errors_total",
    ),
    map(XID_ERRORS, "gpulse_gpu_xid_errors_total"),
    map(ECC_SBE_AGG_TOTAL, "gpulse_gpu_ecc_errors_total"),
    map(ECC_DBE_AGG_TOTAL, "gpulse_gpu_ecc_errors_total"),
    map(ECC_CURRENT, "gpulse_gpu_ecc_enabled"),
    map(RETIRED_SBE, "gpulse_gpu_retired_pages"),
    map(RETIRED_DBE, "gpulse_gpu_retired_pages"),
    map(RETIRED_PENDING, "gpulse_gpu_retired_pages_pending"),
    map(UNCORRECTABLE_REMAPPED_ROWS, "gpulse_gpu_remapped_rows"),
    map(CORRECTABLE_REMAPPED_ROWS, "gpulse_gpu_remapped_rows"),
    map(ROW_REMAP_FAILURE, "gpulse_gpu_row_remap_failed"),
    map(ROW_REMAP_PENDING, "gpulse_gpu_row_remap_pending"),
    map(MIG_MODE, "gpulse_gpu_mig_enabled"),
];

/// The profiling ratios, listed apart: they come from GPM (Hopper and later), except
/// GR_ENGINE_ACTIVE, which is NVML's utilisation as a ratio.
pub const PROF_MAPPINGS: [Mapping; 5] = [
    map(GR_ENGINE_ACTIVE, "gpulse_gpu_utilization_ratio"),
    map(SM_ACTIVE, "gpulse_gpu_sm_active_ratio"),
    map(SM_OCCUPANCY, "gpulse_gpu_sm_occupancy_ratio"),
    map(PIPE_TENSOR_ACTIVE, "gpulse_gpu_tensor_active_ratio"),
    map(DRAM_ACTIVE, "gpulse_gpu_dram_active_ratio"),
];

/// Every DCGM metric definition, in exposition order.
pub fn defs() -> &'static [Def] {
    static DEFS: std::sync::OnceLock<Vec<Def>> = std::sync::OnceLock::new();
    DEFS.get_or_init(|| {
        MAPPINGS
            .iter()
            .chain(PROF_MAPPINGS.iter())
            .map(|m| m.dcgm)
            .collect()
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

const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;
const WATTS_PER_MILLIWATT: f64 = 1e-3;

/// Adds the DCGM view of one host's answering GPUs.
pub(crate) fn add_host(out: &mut Families, host: &HostView) {
    for gpu in &host.gpus {
        add_gpu(out, &host.identity.agent_id, gpu);
    }
}

fn add_gpu(out: &mut Families, host: &str, gpu: &GpuView) {
    // DCGM reads nothing from a GPU that fell off the bus, and neither does this view.
    let Some(s) = gpu.latest.as_ref().filter(|s| s.state != DeviceState::Lost) else {
        return;
    };
    let d = &gpu.info;
    let index = d.index.to_string();
    // The device node, as dcgm-exporter names it: /dev/nvidia<minor>, minor = index.
    let device = format!("nvidia{index}");
    let base = [
        (LABEL_GPU, index.as_str()),
        (LABEL_UUID, d.uuid.as_str()),
        (LABEL_PCI_BUS_ID, d.pci_bus_id.as_str()),
        (LABEL_DEVICE, device.as_str()),
        (LABEL_MODEL_NAME, d.model.as_str()),
        (LABEL_HOSTNAME, host),
        (LABEL_HOSTNAME_LOWER, host),
        (LABEL_DRIVER_VERSION, d.driver_version.as_str()),
    ];
    let mut put = |def: &Def, value: Option<f64>| {
        if let Some(v) = value {
            out.push(def, &base, &[], v);
        }
    };
    let u32f = |v: Option<u32>| v.map(f64::from);
    let flag = |v: Option<bool>| v.map(|b| f64::from(u8::from(b)));

    put(&SM_CLOCK, u32f(s.sm_clock_mhz.value()));
    put(&MEM_CLOCK, u32f(s.memory_clock_mhz.value()));
    put(&MAX_SM_CLOCK, u32f(d.max_sm_clock_mhz));
    put(&MAX_MEM_CLOCK, u32f(d.max_memory_clock_mhz));
    put(&APP_SM_CLOCK, u32f(s.applications_sm_clock_mhz.value()));
    put(
        &APP_MEM_CLOCK,
        u32f(s.applications_memory_clock_mhz.value()),
    );
    put(&GPU_TEMP, u32f(s.temperature_celsius.value()));
    put(&MEMORY_TEMP, u32f(s.memory_temperature_celsius.value()));
    put(&SLOWDOWN_TEMP, u32f(d.slowdown_temperature_celsius));
    put(&SHUTDOWN_TEMP, u32f(d.shutdown_temperature_celsius));
    put(&MEM_MAX_OP_TEMP, u32f(d.memory_max_temperature_celsius));
    put(
        &GPU_MAX_OP_TEMP,
        u32f(d.gpu_max_operating_temperature_celsius),
    );
    let watts = |mw: Option<u32>| mw.map(|v| f64::from(v) * WATTS_PER_MILLIWATT);
    put(&POWER_USAGE, watts(s.power_usage_milliwatts.value()));
    put(
        &ENFORCED_POWER_LIMIT,
        watts(s.power_limit_milliwatts.value()),
    );
    put(
        &POWER_MGMT_LIMIT_DEF,
        watts(d.default_power_limit_milliwatts),
    );
    put(
        &TOTAL_ENERGY_CONSUMPTION,
        s.energy_millijoules.value().map(|v| v as f64),
    );
    put(&GPU_UTIL, u32f(s.gpu_utilization_percent.value()));
    put(&MEM_COPY_UTIL, u32f(s.memory_utilization_percent.value()));
    let mib = |b: u64| b as f64 / BYTES_PER_MIB;
    let used = s.memory_used_bytes.value();
    put(&FB_TOTAL, d.memory_total_bytes.map(mib));
    // NVML's free excludes memory the driver reserves; gpulse does not carry the
    // reserved amount, so free here is total minus used (docs/dcgm-compat.md).
    put(
        &FB_FREE,
        d.memory_total_bytes
            .zip(used)
            .map(|(t, u)| mib(t.saturating_sub(u))),
    );
    put(&FB_USED, used.map(mib));
    put(
        &CLOCKS_EVENT_REASONS,
        s.throttle_reasons.value().map(|r| r.bits() as f64),
    );
    if let Some(t) = s.throttle_time.get() {
        for (policy, def) in [
            (ThrottlePolicy::Power, &POWER_VIOLATION),
            (ThrottlePolicy::Thermal, &THERMAL_VIOLATION),
            (ThrottlePolicy::SyncBoost, &SYNC_BOOST_VIOLATION),
            (ThrottlePolicy::BoardLimit, &BOARD_LIMIT_VIOLATION),
            (ThrottlePolicy::LowUtilization, &LOW_UTIL_VIOLATION),
            (ThrottlePolicy::Reliability, &RELIABILITY_VIOLATION),
            (ThrottlePolicy::TotalAppClocks, &TOTAL_APP_CLOCKS_VIOLATION),
            (
                ThrottlePolicy::TotalBaseClocks,
                &TOTAL_BASE_CLOCKS_VIOLATION,
            ),
        ] {
            put(def, t.get(policy).map(|ns| ns as f64));
        }
    }
    put(&PCIE_LINK_GEN, u32f(s.pcie_generation.value()));
    put(&PCIE_LINK_WIDTH, u32f(s.pcie_width.value()));
    put(&PCIE_MAX_LINK_GEN, u32f(d.max_pcie_generation));
    put(&PCIE_MAX_LINK_WIDTH, u32f(d.max_pcie_width));
    put(
        &PCIE_REPLAY_COUNTER,
        s.pcie_replays.value().map(|v| v as f64),
    );
    add_nvlink(&mut put, s);
    if s.xid_errors.get().is_some() {
        // 0 until the first XID, as DCGM reports a GPU that has had none.
        put(&XID_ERRORS, Some(gpu.last_xid.unwrap_or(0) as f64));
    }
    put(
        &ECC_SBE_AGG_TOTAL,
        s.ecc_corrected_errors.value().map(|v| v as f64),
    );
    put(
        &ECC_DBE_AGG_TOTAL,
        s.ecc_uncorrected_errors.value().map(|v| v as f64),
    );
    put(&ECC_CURRENT, flag(d.ecc_enabled));
    if let Some(r) = s.retired_pages.value() {
        put(&RETIRED_SBE, Some(f64::from(r.single_bit_ecc)));
        put(&RETIRED_DBE, Some(f64::from(r.double_bit_ecc)));
        put(&RETIRED_PENDING, flag(Some(r.pending)));
    }
    if let Some(r) = s.remapped_rows.value() {
        put(
            &UNCORRECTABLE_REMAPPED_ROWS,
            Some(f64::from(r.uncorrectable)),
        );
        put(&CORRECTABLE_REMAPPED_ROWS, Some(f64::from(r.correctable)));
        put(&ROW_REMAP_FAILURE, flag(Some(r.failure)));
        put(&ROW_REMAP_PENDING, flag(Some(r.pending)));
    }
    put(&MIG_MODE, flag(d.mig_enabled));
    put(
        &GR_ENGINE_ACTIVE,
        s.gpu_utilization_percent
            .value()
            .map(|v| f64::from(v) / 100.0),
    );
    if let Some(g) = s.gpm.value() {
        put(&SM_ACTIVE, Some(g.sm_active));
        put(&SM_OCCUPANCY, Some(g.sm_occupancy));
        put(&PIPE_TENSOR_ACTIVE, Some(g.tensor_active));
        put(&DRAM_ACTIVE, Some(g.dram_active));
    }
}

/// DCGM's NVLink error totals are per GPU, over all its links.
fn add_nvlink(put: &mut impl FnMut(&Def, Option<f64>), s: &DeviceSample) {
    let Some(links) = s.nvlinks.get() else { return };
    let total = |f: fn(&NvLinkSample) -> Option<u64>| {
        let values: Vec<u64> = links.iter().filter_map(f).collect();
        (!values.is_empty()).then(|| values.iter().sum::<u64>() as f64)
    };
    put(
        &NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL,
        total(|l| l.crc_flit_errors),
    );
    put(
        &NVLINK_CRC_DATA_ERROR_COUNT_TOTAL,
        total(|l| l.crc_data_errors),
    );
    put(&NVLINK_REPLAY_ERROR_COUNT_TOTAL, total(|l| l.replay_errors));
    put(
        &NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
        total(|l| l.recovery_errors),
    );
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
    use crate::names;

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
