//! Named behaviours a simulated host can show.

/// What the simulated GPUs of a host are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// Nothing runs: low clocks, idle power, PCIe link trained down to save power.
    Idle,
    /// Steady training: busy, clocks near max, power below the limit.
    Training,
    /// Busy and too hot: temperature past the slowdown threshold, thermal slowdown, clocks cut.
    Thermal,
    /// Busy under a provider power cap: enforced limit below the default, power-capped clocks.
    PowerCap,
    /// Busy with a PCIe link trained below its maximum generation and width, replays climbing.
    PcieDegraded,
    /// Busy, and the host's last GPU falls off the bus after the first reading.
    Lost,
    /// Busy with the hardware slowdown and power brake asserted by the platform.
    HwSlowdown,
    /// Busy with clocks held to a sync-boost group.
    SyncBoost,
    /// Busy with application clocks locked well below the maximum.
    AppClocks,
    /// Busy; one NVLink link is down and another accumulates CRC and replay errors.
    NvlinkErrors,
    /// Busy; XID 13 (graphics engine exception) repeats and XID 31 (MMU fault) fires once.
    Xid,
    /// Busy; an uncorrectable ECC error (XID 94) leaves a row remap pending on GPU 0.
    Ecc,
    /// Idle, but a process holds memory on every GPU: paid for and unused.
    IdleHeld,
}

impl Scenario {
    /// Names accepted in `--simulate scenario=...`.
    pub const NAMES: [(&'static str, Scenario); 13] = [
        ("idle", Scenario::Idle),
        ("training", Scenario::Training),
        ("thermal", Scenario::Thermal),
        ("power-cap", Scenario::PowerCap),
        ("pcie-degraded", Scenario::PcieDegraded),
        ("lost", Scenario::Lost),
        ("hw-slowdown", Scenario::HwSlowdown),
        ("sync-boost", Scenario::SyncBoost),
        ("app-clocks", Scenario::AppClocks),
        ("nvlink-errors", Scenario::NvlinkErrors),
        ("xid", Scenario::Xid),
        ("ecc", Scenario::Ecc),
        ("idle-held", Scenario::IdleHeld),
    ];

    pub fn parse(name: &str) -> Option<Scenario> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, s)| *s == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }

    /// Whether the GPUs run work in this scenario.
    pub fn busy(self) -> bool {
        !matches!(self, Scenario::Idle | Scenario::IdleHeld)
    }
}
