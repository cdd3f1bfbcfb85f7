//! What a GPU is ([`DeviceInfo`]) and what one reading of it says ([`DeviceSample`]).
//!
//! Units are NVML's and are named in every field: percent, MHz, celsius, milliwatts,
//! millijoules, bytes. Conversion to base units happens at exposition.

use crate::ThrottleReasons;
use crate::allocation::Allocation;
use crate::health::{
    GpmActivity, MigInstance, NvLinkSample, ProcessSample, RemappedRows, RetiredPages, ThrottleTime,
};

/// One field of one reading. A value the GPU or host does not expose is
/// `Unsupported`, never 0 and never an error; a read that failed this time is `Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reading<T> {
    Value(T),
    /// The GPU, driver or host does not expose this field.
    #[default]
    Unsupported,
    /// The read failed this time (timeout, transient driver error); it may recover.
    Failed,
}

impl<T> Reading<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Reading<U> {
        match self {
            Reading::Value(v) => Reading::Value(f(v)),
            Reading::Unsupported => Reading::Unsupported,
            Reading::Failed => Reading::Failed,
        }
    }
}

impl<T> Reading<T> {
    pub fn as_ref(&self) -> Reading<&T> {
        match self {
            Reading::Value(v) => Reading::Value(v),
            Reading::Unsupported => Reading::Unsupported,
            Reading::Failed => Reading::Failed,
        }
    }

    pub fn is_unsupported(&self) -> bool {
        matches!(self, Reading::Unsupported)
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, Reading::Failed)
    }

    /// The value, if one was read.
    pub fn get(&self) -> Option<&T> {
        match self {
            Reading::Value(v) => Some(v),
            Reading::Unsupported | Reading::Failed => None,
        }
    }
}

impl<T: Copy> Reading<T> {
    pub fn value(&self) -> Option<T> {
        match self {
            Reading::Value(v) => Some(*v),
            Reading::Unsupported | Reading::Failed => None,
        }
    }
}

/// Inventory of one GPU, read once at start-up. `None` means the GPU does not expose it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceInfo {
    /// NVML index on this host.
    pub index: u32,
    /// Stable identity ("GPU-..." for NVML).
    pub uuid: String,
    /// Marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub model: String,
    /// PCI bus id, e.g. "00000000:18:00.0".
    pub pci_bus_id: String,
    pub memory_total_bytes: Option<u64>,
    pub max_sm_clock_mhz: Option<u32>,
    pub max_memory_clock_mhz: Option<u32>,
    /// Default power management limit: what the board ships with.
    pub default_power_limit_milliwatts: Option<u32>,
    /// Temperature at which the hardware starts slowing down.
    pub slowdown_temperature_celsius: Option<u32>,
    /// Temperature at which the GPU shuts down to protect itself.
    pub shutdown_temperature_celsius: Option<u32>,
    pub max_pcie_generation: Option<u32>,
    pub max_pcie_width: Option<u32>,
    pub nvlink_count: Option<u32>,
    pub mig_enabled: Option<bool>,
    pub driver_version: String,
    pub vbios_version: String,
    pub max_graphics_clock_mhz: Option<u32>,
    /// Memory temperature at which the GPU slows down (NVML_TEMPERATURE_THRESHOLD_MEM_MAX).
    pub memory_max_temperature_celsius: Option<u32>,
    /// GPU temperature past which clocks may drop below base (NVML_TEMPERATURE_THRESHOLD_GPU_MAX).
    pub gpu_max_operating_temperature_celsius: Option<u32>,
    pub ecc_enabled: Option<bool>,
    /// Architecture name in lower case ("hopper", "ampere", ...), empty when unknown.
    pub architecture: String,
    /// MIG instances when MIG is enabled.
    pub mig_instances: Vec<MigInstance>,
}

/// Whether the GPU answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceState {
    #[default]
    Ok,
    /// Fell off the bus or stopped answering (NVML_ERROR_GPU_IS_LOST, or no handle).
    Lost,
}

/// Names of the fields of a [`DeviceSample`], so that "which fields does this host hide"
/// can be reported and carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    GpuUtilization,
    MemoryUtilization,
    SmClock,
    MemoryClock,
    Temperature,
    PowerUsage,
    PowerLimit,
    Energy,
    ThrottleReasons,
    MemoryUsed,
    PcieGeneration,
    PcieWidth,
    PcieReplays,
    GraphicsClock,
    ApplicationsClocks,
    MemoryTemperature,
    ThrottleTime,
    PcieThroughput,
    NvLink,
    EccErrors,
    RemappedRows,
    RetiredPages,
    Xid,
    Gpm,
    Processes,
}

impl Field {
    pub const ALL: [Field; 25] = [
        Field::GpuUtilization,
        Field::MemoryUtilization,
        Field::SmClock,
        Field::MemoryClock,
        Field::Temperature,
        Field::PowerUsage,
        Field::PowerLimit,
        Field::Energy,
        Field::ThrottleReasons,
        Field::MemoryUsed,
        Field::PcieGeneration,
        Field::PcieWidth,
        Field::PcieReplays,
        Field::GraphicsClock,
        Field::ApplicationsClocks,
        Field::MemoryTemperature,
        Field::ThrottleTime,
        Field::PcieThroughput,
        Field::NvLink,
        Field::EccErrors,
        Field::RemappedRows,
        Field::RetiredPages,
        Field::Xid,
        Field::Gpm,
        Field::Processes,
    ];

    /// Stable snake_case name, used as a metric label value.
    pub fn name(self) -> &'static str {
        match self {
            Field::GpuUtilization => "gpu_utilization",
            Field::MemoryUtilization => "memory_utilization",
            Field::SmClock => "sm_clock",
            Field::MemoryClock => "memory_clock",
            Field::Temperature => "temperature",
            Field::PowerUsage => "power_usage",
            Field::PowerLimit => "power_limit",
            Field::Energy => "energy",
            Field::ThrottleReasons => "throttle_reasons",
            Field::MemoryUsed => "memory_used",
            Field::PcieGeneration => "pcie_generation",
            Field::PcieWidth => "pcie_width",
            Field::PcieReplays => "pcie_replays",
            Field::GraphicsClock => "graphics_clock",
            Field::ApplicationsClocks => "applications_clocks",
            Field::MemoryTemperature => "memory_temperature",
            Field::ThrottleTime => "throttle_time",
            Field::PcieThroughput => "pcie_throughput",
            Field::NvLink => "nvlink",
            Field::EccErrors => "ecc_errors",
            Field::RemappedRows => "remapped_rows",
            Field::RetiredPages => "retired_pages",
            Field::Xid => "xid",
            Field::Gpm => "gpm",
            Field::Processes => "processes",
        }
    }
}

/// One reading of one GPU.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceSample {
    pub uuid: String,
    pub state: DeviceState,
    /// Percent of the last sample period in which a kernel ran (0..=100).
    pub gpu_utilization_percent: Reading<u32>,
    /// Percent of the last sample period in which device memory was read or written.
    pub memory_utilization_percent: Reading<u32>,
    pub sm_clock_mhz: Reading<u32>,
    pub memory_clock_mhz: Reading<u32>,
    pub temperature_celsius: Reading<u32>,
    pub power_usage_milliwatts: Reading<u32>,
    /// Enforced power limit; below the default limit means a cap is in force.
    pub power_limit_milliwatts: Reading<u32>,
    /// Cumulative energy since the driver loaded.
    pub energy_millijoules: Reading<u64>,
    pub throttle_reasons: Reading<ThrottleReasons>,
    pub memory_used_bytes: Reading<u64>,
    pub pcie_generation: Reading<u32>,
    pub pcie_width: Reading<u32>,
    /// Cumulative PCIe replays since the driver loaded.
    pub pcie_replays: Reading<u64>,
    pub graphics_clock_mhz: Reading<u32>,
    /// Application clocks in force (a clock held below max by settings shows here).
    pub applications_sm_clock_mhz: Reading<u32>,
    pub applications_memory_clock_mhz: Reading<u32>,
    /// HBM temperature (NVML field NVML_FI_DEV_MEMORY_TEMP).
    pub memory_temperature_celsius: Reading<u32>,
    /// Cumulative throttled time per policy, and where it came from.
    pub throttle_time: Reading<ThrottleTime>,
    /// Cumulative PCIe bytes sent and received (NVML_FI_DEV_PCIE_COUNT_TX/RX_BYTES).
    pub pcie_tx_bytes: Reading<u64>,
    pub pcie_rx_bytes: Reading<u64>,
    /// Every NVLink link of the GPU; unsupported on GPUs without NVLink.
    pub nvlinks: Reading<Vec<NvLinkSample>>,
    /// Cumulative ECC errors over the GPU's life (aggregate counters).
    pub ecc_corrected_errors: Reading<u64>,
    pub ecc_uncorrected_errors: Reading<u64>,
    pub remapped_rows: Reading<RemappedRows>,
    pub retired_pages: Reading<RetiredPages>,
    /// XID events seen by the agent: (XID code, cumulative count), sorted by code.
    pub xid_errors: Reading<Vec<(u64, u64)>>,
    pub gpm: Reading<GpmActivity>,
    pub processes: Reading<Vec<ProcessSample>>,
    /// Which Kubernetes containers hold the GPU and its MIG devices; `None` where the
    /// agent does not know (not a Kubernetes node). Not a [`Field`]: an allocation is
    /// a fact about the node, not a reading the GPU may hide.
    pub allocation: Option<Allocation>,
}

/// Whether a field was read, is unsupported, or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldStatus {
    Read,
    Unsupported,
    Failed,
}

fn status<T>(r: &Reading<T>) -> FieldStatus {
    match r {
        Reading::Value(_) => FieldStatus::Read,
        Reading::Unsupported => FieldStatus::Unsupported,
        Reading::Failed => FieldStatus::Failed,
    }
}

impl DeviceSample {
    /// A sample of a GPU that did not answer: every field is absent, none is "unsupported".
    pub fn lost(uuid: impl Into<String>) -> Self {
        let mut s = DeviceSample {
            uuid: uuid.into(),
            state: DeviceState::Lost,
            ..DeviceSample::default()
        };
        for f in Field::ALL {
            s.mark(f, FieldStatus::Failed);
        }
        s
    }

    /// The status of one field.
    pub fn field_status(&self, field: Field) -> FieldStatus {
        match field {
            Field::GpuUtilization => status(&self.gpu_utilization_percent),
            Field::MemoryUtilization => status(&self.memory_utilization_percent),
            Field::SmClock => status(&self.sm_clock_mhz),
            Field::MemoryClock => status(&self.memory_clock_mhz),
            Field::Temperature => status(&self.temperature_celsius),
            Field::PowerUsage => status(&self.power_usage_milliwatts),
            Field::PowerLimit => status(&self.power_limit_milliwatts),
            Field::Energy => status(&self.energy_millijoules),
            Field::ThrottleReasons => status(&self.throttle_reasons),
            Field::MemoryUsed => status(&self.memory_used_bytes),
            Field::PcieGeneration => status(&self.pcie_generation),
            Field::PcieWidth => status(&self.pcie_width),
            Field::PcieReplays => status(&self.pcie_replays),
            Field::GraphicsClock => status(&self.graphics_clock_mhz),
            Field::ApplicationsClocks => status(&self.applications_sm_clock_mhz),
            Field::MemoryTemperature => status(&self.memory_temperature_celsius),
            Field::ThrottleTime => status(&self.throttle_time),
            Field::PcieThroughput => status(&self.pcie_tx_bytes),
            Field::NvLink => status(&self.nvlinks),
            Field::EccErrors => status(&self.ecc_uncorrected_errors),
            Field::RemappedRows => status(&self.remapped_rows),
            Field::RetiredPages => status(&self.retired_pages),
            Field::Xid => status(&self.xid_errors),
            Field::Gpm => status(&self.gpm),
            Field::Processes => status(&self.processes),
        }
    }

    /// Sets a field that holds no value to `Unsupported` or `Failed` (used when decoding
    /// the wire, where absent values say why in separate lists). A `Read` status is ignored.
    pub fn mark(&mut self, field: Field, status: FieldStatus) {
        fn set<T>(r: &mut Reading<T>, status: FieldStatus) {
            match status {
                FieldStatus::Read => {}
                FieldStatus::Unsupported => *r = Reading::Unsupported,
                FieldStatus::Failed => *r = Reading::Failed,
            }
        }
        match field {
            Field::GpuUtilization => set(&mut self.gpu_utilization_percent, status),
            Field::MemoryUtilization => set(&mut self.memory_utilization_percent, status),
            Field::SmClock => set(&mut self.sm_clock_mhz, status),
            Field::MemoryClock => set(&mut self.memory_clock_mhz, status),
            Field::Temperature => set(&mut self.temperature_celsius, status),
            Field::PowerUsage => set(&mut self.power_usage_milliwatts, status),
            Field::PowerLimit => set(&mut self.power_limit_milliwatts, status),
            Field::Energy => set(&mut self.energy_millijoules, status),
            Field::ThrottleReasons => set(&mut self.throttle_reasons, status),
            Field::MemoryUsed => set(&mut self.memory_used_bytes, status),
            Field::PcieGeneration => set(&mut self.pcie_generation, status),
            Field::PcieWidth => set(&mut self.pcie_width, status),
            Field::PcieReplays => set(&mut self.pcie_replays, status),
            Field::GraphicsClock => set(&mut self.graphics_clock_mhz, status),
            Field::ApplicationsClocks => {
                set(&mut self.applications_sm_clock_mhz, status);
                set(&mut self.applications_memory_clock_mhz, status);
            }
            Field::MemoryTemperature => set(&mut self.memory_temperature_celsius, status),
            Field::ThrottleTime => set(&mut self.throttle_time, status),
            Field::PcieThroughput => {
                set(&mut self.pcie_tx_bytes, status);
                set(&mut self.pcie_rx_bytes, status);
            }
            Field::NvLink => set(&mut self.nvlinks, status),
            Field::EccErrors => {
                set(&mut self.ecc_corrected_errors, status);
                set(&mut self.ecc_uncorrected_errors, status);
            }
            Field::RemappedRows => set(&mut self.remapped_rows, status),
            Field::RetiredPages => set(&mut self.retired_pages, status),
            Field::Xid => set(&mut self.xid_errors, status),
            Field::Gpm => set(&mut self.gpm, status),
            Field::Processes => set(&mut self.processes, status),
        }
    }

    /// Fields with the given status, in [`Field::ALL`] order.
    pub fn fields_with(&self, wanted: FieldStatus) -> impl Iterator<Item = Field> + '_ {
        Field::ALL
            .into_iter()
            .filter(move |f| self.field_status(*f) == wanted)
    }
}

/// One timestamped reading of every GPU of a host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Milliseconds since the Unix epoch, when the reading was taken.
    pub timestamp_unix_ms: i64,
    pub gpus: Vec<DeviceSample>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_gpu_reports_no_field_as_unsupported() {
        let s = DeviceSample::lost("GPU-1");
        assert_eq!(s.state, DeviceState::Lost);
        assert_eq!(s.fields_with(FieldStatus::Unsupported).count(), 0);
        assert_eq!(s.fields_with(FieldStatus::Failed).count(), Field::ALL.len());
    }

    #[test]
    fn marking_a_field_changes_only_that_field() {
        let mut s = DeviceSample {
            sm_clock_mhz: Reading::Value(1980),
            ..DeviceSample::default()
        };
        s.mark(Field::Temperature, FieldStatus::Failed);
        assert_eq!(s.field_status(Field::Temperature), FieldStatus::Failed);
        assert_eq!(s.field_status(Field::SmClock), FieldStatus::Read);
        assert_eq!(
            s.field_status(Field::PowerUsage),
            FieldStatus::Unsupported,
            "a field nobody read defaults to unsupported, never 0"
        );
    }

    #[test]
    fn field_names_are_unique() {
        let mut names: Vec<_> = Field::ALL.iter().map(|f| f.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Field::ALL.len());
    }
}
