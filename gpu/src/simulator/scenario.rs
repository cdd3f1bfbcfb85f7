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
}

impl Scenario {
    /// Names accepted in `--simulate scenario=...`.
    pub const NAMES: [(&'static str, Scenario); 6] = [
        ("idle", Scenario::Idle),
        ("training", Scenario::Training),
        ("thermal", Scenario::Thermal),
        ("power-cap", Scenario::PowerCap),
        ("pcie-degraded", Scenario::PcieDegraded),
        ("lost", Scenario::Lost),
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
        !matches!(self, Scenario::Idle)
    }
}
