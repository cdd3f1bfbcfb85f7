//! Diagnosis rules: pure functions from a window of readings of one GPU to findings,
//! each with its evidence, severity and what to do. The agent's `diagnose` command
//! runs them on a local window; the collector can run the same rules fleet-wide.

mod rules;
mod window;

pub use rules::diagnose;
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

impl FindingKind {
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
