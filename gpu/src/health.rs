//! Deeper per-GPU telemetry: throttled time per reason, interconnect, memory health,
//! XID events, GPM activity and the processes on the GPU.

/// NVML performance policies whose cumulative violation (throttled) time NVML keeps
/// (nvml.h `nvmlPerfPolicyType_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThrottlePolicy {
    Power,
    Thermal,
    SyncBoost,
    BoardLimit,
    LowUtilization,
    Reliability,
    TotalAppClocks,
    TotalBaseClocks,
}

impl ThrottlePolicy {
    pub const ALL: [ThrottlePolicy; 8] = [
        ThrottlePolicy::Power,
        ThrottlePolicy::Thermal,
        ThrottlePolicy::SyncBoost,
        ThrottlePolicy::BoardLimit,
        ThrottlePolicy::LowUtilization,
        ThrottlePolicy::Reliability,
        ThrottlePolicy::TotalAppClocks,
        ThrottlePolicy::TotalBaseClocks,
    ];

    /// Stable snake_case name, used as a metric label value.
    pub fn name(self) -> &'static str {
        match self {
            ThrottlePolicy::Power => "power",
            ThrottlePolicy::Thermal => "thermal",
            ThrottlePolicy::SyncBoost => "sync_boost",
            ThrottlePolicy::BoardLimit => "board_limit",
            ThrottlePolicy::LowUtilization => "low_utilization",
            ThrottlePolicy::Reliability => "reliability",
            ThrottlePolicy::TotalAppClocks => "total_app_clocks",
            ThrottlePolicy::TotalBaseClocks => "total_base_clocks",
        }
    }
}

/// Where cumulative throttled time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ThrottleTimeSource {
    /// nvmlDeviceGetViolationStatus: the driver's own counters.
    #[default]
    ViolationStatus,
    /// NVML_FI_DEV_CLOCKS_EVENT_REASON_* field values (newer drivers).
    FieldValues,
    /// Integrated by the agent from the sampled clock-event reason flags: coarse
    /// (interval resolution), used only where the driver keeps no counters.
    SampledFlags,
    /// Violation status for some policies, field values for those it did not answer
    /// (the thermal policy on some GPUs).
    Mixed,
}

impl ThrottleTimeSource {
    pub fn name(self) -> &'static str {
        match self {
            ThrottleTimeSource::ViolationStatus => "violation_status",
            ThrottleTimeSource::FieldValues => "field_values",
            ThrottleTimeSource::SampledFlags => "sampled_flags",
            ThrottleTimeSource::Mixed => "mixed",
        }
    }
}

/// Cumulative time, in nanoseconds, that clocks were held down, per policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThrottleTime {
    pub source: ThrottleTimeSource,
    /// Policies the source reports, each with its cumulative nanoseconds.
    pub nanoseconds: Vec<(ThrottlePolicy, u64)>,
}

impl ThrottleTime {
    pub fn get(&self, policy: ThrottlePolicy) -> Option<u64> {
        self.nanoseconds
            .iter()
            .find(|(p, _)| *p == policy)
            .map(|(_, ns)| *ns)
    }
}

/// One NVLink link of a GPU. Counters are cumulative.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NvLinkSample {
    pub link: u32,
    pub active: bool,
    /// Data bytes sent (NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX with the link as scope id).
    pub tx_bytes: Option<u64>,
    pub rx_bytes: Option<u64>,
    pub crc_flit_errors: Option<u64>,
    pub crc_data_errors: Option<u64>,
    pub replay_errors: Option<u64>,
    pub recovery_errors: Option<u64>,
}

/// Row remapping state (Ampere and later), from nvmlDeviceGetRemappedRows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemappedRows {
    pub correctable: u32,
    pub uncorrectable: u32,
    /// A remap is waiting for the next GPU reset.
    pub pending: bool,
    /// A remap failed: the GPU needs service.
    pub failure: bool,
}

/// Retired pages (pre-Ampere mechanism), from nvmlDeviceGetRetiredPages_v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetiredPages {
    pub single_bit_ecc: u32,
    pub double_bit_ecc: u32,
    /// Pages waiting to be retired at the next reboot.
    pub pending: bool,
}

/// GPM activity ratios over the last sample interval (Hopper and later), 0..=1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GpmActivity {
    pub sm_active: f64,
    pub sm_occupancy: f64,
    pub tensor_active: f64,
    pub dram_active: f64,
}

/// What kind of workload a process belongs to, from /proc/PID/cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum WorkloadKind {
    KubernetesPod,
    Container,
    SlurmJob,
    SystemdUnit,
    /// No better attribution than the process itself.
    #[default]
    Process,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::KubernetesPod => "kubernetes_pod",
            WorkloadKind::Container => "container",
            WorkloadKind::SlurmJob => "slurm_job",
            WorkloadKind::SystemdUnit => "systemd_unit",
            WorkloadKind::Process => "process",
        }
    }
}

/// A process holding the GPU.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessSample {
    pub pid: u32,
    pub used_memory_bytes: Option<u64>,
    /// SM utilisation of this process over the last interval, percent.
    pub sm_utilization_percent: Option<u32>,
    pub workload_kind: WorkloadKind,
    /// Pod UID, container id, Slurm job id, systemd unit, or the process name.
    pub workload: String,
}

/// A MIG instance of a GPU in MIG mode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigInstance {
    pub uuid: String,
    pub gpu_instance_id: Option<u32>,
    pub compute_instance_id: Option<u32>,
    pub memory_total_bytes: Option<u64>,
}
