//! Cumulative throttled time integrated from sampled clock-event reason flags, for
//! GPUs and drivers that keep no violation counters. Coarse by nature: each interval
//! is credited to the reasons active at its end.

use crate::ThrottleReasons;
use crate::health::{ThrottlePolicy, ThrottleTime, ThrottleTimeSource};

/// The NVML policy a clock-event reason counts towards.
pub fn policy_of(reasons: ThrottleReasons, policy: ThrottlePolicy) -> bool {
    match policy {
        ThrottlePolicy::Power => reasons.contains(ThrottleReasons::SW_POWER_CAP),
        ThrottlePolicy::Thermal => reasons.intersects(
            ThrottleReasons::SW_THERMAL_SLOWDOWN | ThrottleReasons::HW_THERMAL_SLOWDOWN,
        ),
        ThrottlePolicy::SyncBoost => reasons.contains(ThrottleReasons::SYNC_BOOST),
        ThrottlePolicy::BoardLimit => reasons
            .intersects(ThrottleReasons::HW_SLOWDOWN | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN),
        ThrottlePolicy::LowUtilization => reasons.contains(ThrottleReasons::GPU_IDLE),
        ThrottlePolicy::Reliability => false,
        ThrottlePolicy::TotalAppClocks => {
            reasons.contains(ThrottleReasons::APPLICATIONS_CLOCKS_SETTING)
        }
        ThrottlePolicy::TotalBaseClocks => !reasons.limiting().is_empty(),
    }
}

/// Integrates flags over time into cumulative nanoseconds per policy.
#[derive(Debug, Clone, Default)]
pub struct FlagIntegrator {
    last_unix_ms: Option<i64>,
    nanoseconds: [u64; ThrottlePolicy::ALL.len()],
}

impl FlagIntegrator {
    /// Credits the time since the previous call to the reasons active now.
    pub fn observe(&mut self, now_unix_ms: i64, reasons: ThrottleReasons) -> ThrottleTime {
        if let Some(last) = self.last_unix_ms {
            let step_ns = u64::try_from(now_unix_ms - last).unwrap_or(0) * 1_000_000;
            for (i, p) in ThrottlePolicy::ALL.into_iter().enumerate() {
                if policy_of(reasons, p) {
                    self.nanoseconds[i] += step_ns;
                }
            }
        }
        self.last_unix_ms = Some(now_unix_ms);
        ThrottleTime {
            source: ThrottleTimeSource::SampledFlags,
            nanoseconds: ThrottlePolicy::ALL
                .into_iter()
                .zip(self.nanoseconds)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_interval_is_credited_to_the_reasons_active_at_its_end() {
        let mut i = FlagIntegrator::default();
        i.observe(0, ThrottleReasons::empty());
        i.observe(1000, ThrottleReasons::HW_THERMAL_SLOWDOWN);
        let t = i.observe(1500, ThrottleReasons::SW_POWER_CAP);
        assert_eq!(t.get(ThrottlePolicy::Thermal), Some(1_000_000_000));
        assert_eq!(t.get(ThrottlePolicy::Power), Some(500_000_000));
        assert_eq!(t.get(ThrottlePolicy::TotalBaseClocks), Some(1_500_000_000));
        assert_eq!(t.source, ThrottleTimeSource::SampledFlags);
    }

    #[test]
    fn a_clock_going_backwards_credits_nothing() {
        let mut i = FlagIntegrator::default();
        i.observe(5000, ThrottleReasons::SW_POWER_CAP);
        let t = i.observe(4000, ThrottleReasons::SW_POWER_CAP);
        assert_eq!(t.get(ThrottlePolicy::Power), Some(0));
    }
}
