//! GPU models the simulator knows, with figures taken from the boards' public
//! specifications and what `nvidia-smi -q` reports on them.

/// A GPU model the simulator can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuModel {
    H100Sxm,
    H200,
    A100,
    L4,
}

/// Fixed characteristics of a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSpec {
    /// What NVML's nvmlDeviceGetName returns.
    pub name: &'static str,
    pub memory_total_mib: u64,
    pub max_sm_clock_mhz: u32,
    /// SM clock at idle.
    pub idle_sm_clock_mhz: u32,
    pub max_memory_clock_mhz: u32,
    pub default_power_limit_watts: u32,
    pub idle_power_watts: u32,
    pub slowdown_temperature_celsius: u32,
    pub shutdown_temperature_celsius: u32,
    pub max_pcie_generation: u32,
    pub max_pcie_width: u32,
    pub nvlink_count: u32,
    /// HBM/GDDR temperature at which memory slows down.
    pub memory_max_temperature_celsius: u32,
    /// GPU temperature past which clocks may drop below base.
    pub gpu_max_operating_temperature_celsius: u32,
    pub architecture: &'static str,
    /// GPM (SM activity, tensor activity) is available: Hopper and later.
    pub gpm: bool,
}

impl GpuModel {
    /// Names accepted in `--simulate model=...`.
    pub const NAMES: [(&'static str, GpuModel); 4] = [
        ("h100-sxm", GpuModel::H100Sxm),
        ("h200", GpuModel::H200),
        ("a100", GpuModel::A100),
        ("l4", GpuModel::L4),
    ];

    pub fn parse(name: &str) -> Option<GpuModel> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }

    pub fn spec(self) -> ModelSpec {
        match self {
            // H100 SXM5 80 GB: 1980 MHz boost, HBM3 at 2619 MHz, 700 W TDP, PCIe Gen5 x16, 18 NVLink 4 links.
            GpuModel::H100Sxm => ModelSpec {
                name: "NVIDIA H100 80GB HBM3",
                memory_total_mib: 81_559,
                max_sm_clock_mhz: 1980,
                idle_sm_clock_mhz: 345,
                max_memory_clock_mhz: 2619,
                default_power_limit_watts: 700,
                idle_power_watts: 70,
                slowdown_temperature_celsius: 89,
                shutdown_temperature_celsius: 92,
                max_pcie_generation: 5,
                max_pcie_width: 16,
                nvlink_count: 18,
                memory_max_temperature_celsius: 95,
                gpu_max_operating_temperature_celsius: 87,
                architecture: "hopper",
                gpm: true,
            },
            // H200 SXM 141 GB: HBM3e at 3201 MHz, 700 W, 18 NVLink 4 links.
            GpuModel::H200 => ModelSpec {
                name: "NVIDIA H200",
                memory_total_mib: 143_771,
                max_sm_clock_mhz: 1980,
                idle_sm_clock_mhz: 345,
                max_memory_clock_mhz: 3201,
                default_power_limit_watts: 700,
                idle_power_watts: 75,
                slowdown_temperature_celsius: 89,
                shutdown_temperature_celsius: 92,
                max_pcie_generation: 5,
                max_pcie_width: 16,
                nvlink_count: 18,
                memory_max_temperature_celsius: 95,
                gpu_max_operating_temperature_celsius: 87,
                architecture: "hopper",
                gpm: true,
            },
            // A100 SXM4 80 GB: 1410 MHz boost, HBM2e at 1593 MHz, 400 W, PCIe Gen4 x16, 12 NVLink 3 links.
            GpuModel::A100 => ModelSpec {
                name: "NVIDIA A100-SXM4-80GB",
                memory_total_mib: 81_920,
                max_sm_clock_mhz: 1410,
                idle_sm_clock_mhz: 210,
                max_memory_clock_mhz: 1593,
                default_power_limit_watts: 400,
                idle_power_watts: 55,
                slowdown_temperature_celsius: 89,
                shutdown_temperature_celsius: 92,
                max_pcie_generation: 4,
                max_pcie_width: 16,
                nvlink_count: 12,
                memory_max_temperature_celsius: 95,
                gpu_max_operating_temperature_celsius: 87,
                architecture: "ampere",
                gpm: false,
            },
            // L4 24 GB: 2040 MHz boost, GDDR6 at 6251 MHz, 72 W, PCIe Gen4 x16, no NVLink.
            GpuModel::L4 => ModelSpec {
                name: "NVIDIA L4",
                memory_total_mib: 23_034,
                max_sm_clock_mhz: 2040,
                idle_sm_clock_mhz: 210,
                max_memory_clock_mhz: 6251,
                default_power_limit_watts: 72,
                idle_power_watts: 16,
                slowdown_temperature_celsius: 95,
                shutdown_temperature_celsius: 98,
                max_pcie_generation: 4,
                max_pcie_width: 16,
                nvlink_count: 0,
                memory_max_temperature_celsius: 93,
                gpu_max_operating_temperature_celsius: 90,
                architecture: "ada",
                gpm: false,
            },
        }
    }
}

impl ModelSpec {
    /// The model whose NVML name is `name`, if the simulator knows it.
    pub fn by_nvml_name(name: &str) -> Option<(GpuModel, ModelSpec)> {
        GpuModel::NAMES
            .iter()
            .map(|(_, m)| (*m, m.spec()))
            .find(|(_, spec)| spec.name == name)
    }

    /// Where a real reading falls outside what this model's simulation produces: the
    /// check that keeps the simulator honest against captures of real GPUs.
    pub fn out_of_range(&self, s: &crate::DeviceSample) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: &str, v: Option<u64>, lo: u64, hi: u64| {
            if let Some(v) = v.filter(|v| *v < lo || *v > hi) {
                out.push(format!("{what} {v} outside {lo}..={hi}"));
            }
        };
        let max_sm = u64::from(self.max_sm_clock_mhz);
        check(
            "sm_clock_mhz",
            s.sm_clock_mhz.value().map(u64::from),
            0,
            max_sm,
        );
        check(
            "temperature_celsius",
            s.temperature_celsius.value().map(u64::from),
            10,
            u64::from(self.shutdown_temperature_celsius),
        );
        check(
            "power_usage_milliwatts",
            s.power_usage_milliwatts.value().map(u64::from),
            0,
            u64::from(self.default_power_limit_watts) * 1000 * 11 / 10,
        );
        check(
            "memory_used_bytes",
            s.memory_used_bytes.value(),
            0,
            self.memory_total_mib * 1024 * 1024,
        );
        check(
            "pcie_generation",
            s.pcie_generation.value().map(u64::from),
            1,
            u64::from(self.max_pcie_generation),
        );
        check(
            "pcie_width",
            s.pcie_width.value().map(u64::from),
            1,
            u64::from(self.max_pcie_width),
        );
        out
    }
}
