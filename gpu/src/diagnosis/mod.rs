//! Diagnosis rules: pure functions from a window of readings of one GPU to findings,
//! each with its evidence, severity and what to do. The agent's `diagnose` command
//! runs them on a local window; the collector can run the same rules fleet-wide.

mod rules;
mod window;

pub use rules::{diagnose, hidden_fields};
pub use window::{Activity, GpuWindow, Timed};

/// How urgent a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth knowing; nothing is wrong.
    Info,
    /// Performance or money is being lost; act when convenient.
    Warning,
    /// Data, jobs or hardware are at risk; act now.
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What a finding is about. The names are stable: they appear in `--json` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    GpuLost,
    ThermalThrottling,
    ProviderPowerCap,
    PowerLimited,
    HardwareSlowdown,
    SyncBoost,
    ApplicationClocksLocked,
    PcieDowntrained,
    PcieReplays,
    NvlinkDown,
    NvlinkErrors,
    Xid,
    UncorrectableEcc,
    RowRemapFailed,
    RowRemapPending,
    RetiredPagesPending,
    IdleWhileHeld,
    HiddenFields,
}

/// XID codes that mean data, the GPU or the node are at risk (NVIDIA's XID catalogue:
/// 48 double-bit ECC, 64 row-remap failure, 79 fallen off the bus, 94/95
/// contained/uncontained ECC, 119/120 GSP errors, 140 unrecovered ECC).
pub const CRITICAL_XIDS: [u64; 8] = [48, 64, 79, 94, 95, 119, 120, 140];
/// XID codes that are usually the application's fault (13 graphics engine exception,
/// 31 MMU fault, 43 stopped channel, 45 preemptive cleanup).
pub const APPLICATION_XIDS: [u64; 4] = [13, 31, 43, 45];

/// The severity of an XID: critical, info for the application's own, else warning
/// (63/92 memory degrading, 74 NVLink, and codes not catalogued here).
pub fn xid_severity(code: u64) -> Severity {
    if CRITICAL_XIDS.contains(&code) {
        Severity::Critical
    } else if APPLICATION_XIDS.contains(&code) {
        Severity::Info
    } else {
        Severity::Warning
    }
}

impl FindingKind {
    /// Each kind's severity: the one table the rules and the alert rules
    /// (packaging/prometheus/gpulse-alerts.yml) follow; a packaging test fails when they
    /// drift. `None` for `xid`, whose severity is its worst code's ([`xid_severity`]).
    /// Performance lost (throttling, caps, a down link) is a warning; data, jobs or
    /// hardware at risk is critical.
    pub fn severity(self) -> Option<Severity> {
        use FindingKind::*;
        Some(match self {
            GpuLost | UncorrectableEcc | RowRemapFailed => Severity::Critical,
            ThermalThrottling
            | HardwareSlowdown
            | ApplicationClocksLocked
            | PcieDowntrained
            | PcieReplays
            | NvlinkDown
            | NvlinkErrors
            | RowRemapPending
            | RetiredPagesPending
            | IdleWhileHeld => Severity::Warning,
            ProviderPowerCap | PowerLimited | SyncBoost | HiddenFields => Severity::Info,
            Xid => return None,
        })
    }

    /// Every kind, for tables and tests.
    pub const ALL: [FindingKind; 18] = [
        FindingKind::GpuLost,
        FindingKind::ThermalThrottling,
        FindingKind::ProviderPowerCap,
        FindingKind::PowerLimited,
        FindingKind::HardwareSlowdown,
        FindingKind::SyncBoost,
        FindingKind::ApplicationClocksLocked,
        FindingKind::PcieDowntrained,
        FindingKind::PcieReplays,
        FindingKind::NvlinkDown,
        FindingKind::NvlinkErrors,
        FindingKind::Xid,
        FindingKind::UncorrectableEcc,
        FindingKind::RowRemapFailed,
        FindingKind::RowRemapPending,
        FindingKind::RetiredPagesPending,
        FindingKind::IdleWhileHeld,
        FindingKind::HiddenFields,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FindingKind::GpuLost => "gpu_lost",
            FindingKind::ThermalThrottling => "thermal_throttling",
            FindingKind::ProviderPowerCap => "provider_power_cap",
            FindingKind::PowerLimited => "power_limited",
            FindingKind::HardwareSlowdown => "hardware_slowdown",
            FindingKind::SyncBoost => "sync_boost",
            FindingKind::ApplicationClocksLocked => "application_clocks_locked",
            FindingKind::PcieDowntrained => "pcie_downtrained",
            FindingKind::PcieReplays => "pcie_replays",
            FindingKind::NvlinkDown => "nvlink_down",
            FindingKind::NvlinkErrors => "nvlink_errors",
            FindingKind::Xid => "xid",
            FindingKind::UncorrectableEcc => "uncorrectable_ecc",
            FindingKind::RowRemapFailed => "row_remap_failed",
            FindingKind::RowRemapPending => "row_remap_pending",
            FindingKind::RetiredPagesPending => "retired_pages_pending",
            FindingKind::IdleWhileHeld => "idle_while_held",
            FindingKind::HiddenFields => "hidden_fields",
        }
    }
}

/// One diagnosis of one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    /// NVML index of the GPU.
    pub gpu: u32,
    pub uuid: String,
    /// One sentence: what is wrong.
    pub summary: String,
    /// The measurements that show it, one per line.
    pub evidence: Vec<String>,
    /// What to do about it.
    pub action: String,
}
