//! Clock-event ("throttle") reasons as named flags.

bitflags::bitflags! {
    /// Why the GPU's clocks are below what they could be. The bit values are NVML's
    /// (nvml.h `nvmlClocksEventReason*`, formerly `nvmlClocksThrottleReason*`), so the
    /// raw mask travels on the wire unchanged and bits this build does not name are kept
    /// end to end (the NVML backend itself sees only the bits nvml-wrapper knows).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ThrottleReasons: u64 {
        /// Nothing is running: clocks are low because the GPU is idle.
        const GPU_IDLE = 0x1;
        /// Clocks are held by application-clock settings.
        const APPLICATIONS_CLOCKS_SETTING = 0x2;
        /// The software power-capping algorithm is holding clocks down (power limit reached).
        const SW_POWER_CAP = 0x4;
        /// Hardware slowdown: temperature, power brake or an external signal.
        const HW_SLOWDOWN = 0x8;
        /// Clocks are synchronised with other GPUs in a sync-boost group.
        const SYNC_BOOST = 0x10;
        /// The driver is lowering clocks because a temperature is near its limit.
        const SW_THERMAL_SLOWDOWN = 0x20;
        /// Hardware thermal slowdown: the GPU is too hot.
        const HW_THERMAL_SLOWDOWN = 0x40;
        /// The power brake was asserted, usually by the platform or power supply.
        const HW_POWER_BRAKE_SLOWDOWN = 0x80;
        /// Clocks follow a display clock setting.
        const DISPLAY_CLOCK_SETTING = 0x100;
        // Keep bits this build does not name: a newer driver may set them.
        const _ = !0;
    }
}

impl ThrottleReasons {
    /// Every named reason with its stable snake_case name, used as a metric label value.
    pub const NAMED: [(ThrottleReasons, &'static str); 9] = [
        (Self::GPU_IDLE, "gpu_idle"),
        (
            Self::APPLICATIONS_CLOCKS_SETTING,
            "applications_clocks_setting",
        ),
        (Self::SW_POWER_CAP, "sw_power_cap"),
        (Self::HW_SLOWDOWN, "hw_slowdown"),
        (Self::SYNC_BOOST, "sync_boost"),
        (Self::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
        (Self::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (Self::HW_POWER_BRAKE_SLOWDOWN, "hw_power_brake_slowdown"),
        (Self::DISPLAY_CLOCK_SETTING, "display_clock_setting"),
    ];

    /// Reasons that cost performance while the GPU is busy. Idle and display settings do not.
    pub fn limiting(self) -> ThrottleReasons {
        self - (Self::GPU_IDLE | Self::DISPLAY_CLOCK_SETTING)
    }

    /// The snake_case names of the named reasons set in this mask.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMED
            .into_iter()
            .filter(move |(flag, _)| self.contains(*flag))
            .map(|(_, name)| name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_bits_survive_a_round_trip() {
        let raw = 0x8000_0000_0000_0040;
        let reasons = ThrottleReasons::from_bits_retain(raw);
        assert_eq!(reasons.bits(), raw);
        assert!(reasons.contains(ThrottleReasons::HW_THERMAL_SLOWDOWN));
    }

    #[test]
    fn idle_is_not_limiting() {
        let r = ThrottleReasons::GPU_IDLE | ThrottleReasons::SW_POWER_CAP;
        assert_eq!(r.limiting(), ThrottleReasons::SW_POWER_CAP);
        assert_eq!(r.names().collect::<Vec<_>>(), ["gpu_idle", "sw_power_cap"]);
    }
}
