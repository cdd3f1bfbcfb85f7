//! The cost ledger's arithmetic: turns each GPU's consecutive snapshots into usage per
//! hour bucket. Pure and deterministic; the store persists what it produces.
//!
//! Time credited is the interval between consecutive snapshots of a GPU, capped so an
//! outage is not credited as observed time. Counters (energy, PCIe replays) are
//! cumulative on the wire: the ledger takes deltas, and a counter that went down (driver
//! reload, reboot) counts its new value as the delta since the reset. Each GPU keeps the
//! timestamp of the last snapshot applied, so a replayed or duplicated snapshot changes
//! nothing, whatever delivered it.

use std::collections::HashMap;

use gpulse_gpu::{DeviceSample, DeviceState, ThrottleReasons};

use super::pricing::Price;

/// Milliseconds in an hour bucket.
pub const HOUR_MS: i64 = 3_600_000;
/// A GPU counts as busy over an interval when its utilisation is at least this (percent).
/// NVML's utilisation is the share of time a kernel ran, so any work at all shows.
pub const BUSY_MIN_UTILIZATION_PERCENT: u32 = 1;
/// Millijoules in a joule.
const MILLIJOULES_PER_JOULE: f64 = 1e3;

/// The clock-event reasons that cost performance, as stored per reason (the ledger's
/// columns). Idle and display-clock reasons are left out: they cost nothing.
pub const THROTTLE_REASONS: [(ThrottleReasons, &str); 7] = [
    (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
    (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
    (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
    (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
    (
        ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        "hw_power_brake_slowdown",
    ),
    (ThrottleReasons::SYNC_BOOST, "sync_boost"),
    (
        ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
        "applications_clocks_setting",
    ),
];

/// How active the GPU was over the interval, 0..1, when known. Today NVML's GPU
/// utilisation; a sample that carries SM activity (DCGM_FI_PROF_SM_ACTIVE, GPM SmUtil)
/// would be the better measure and is switched in here.
pub fn activity(s: &DeviceSample) -> Option<f64> {
    s.gpu_utilization_percent
        .value()
        .map(|p| f64::from(p.min(100)) / 100.0)
}

/// Usage of one GPU over some time: every field adds up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Seconds observed (between consecutive snapshots, gaps capped).
    pub observed_s: f64,
    /// Seconds with utilisation at least [`BUSY_MIN_UTILIZATION_PERCENT`].
    pub busy_s: f64,
    /// Seconds weighted by activity (utilisation today).
    pub utilized_s: f64,
    /// Seconds known to be idle: utilisation below the busy threshold, or the GPU lost.
    /// Busy + idle can be less than observed when utilisation is hidden.
    pub idle_s: f64,
    /// Seconds each limiting throttle reason was active, in [`THROTTLE_REASONS`] order.
    pub throttle_s: [f64; 7],
    /// Busy seconds weighted by the clock deficit, 1 - sm_clock / max_sm_clock.
    pub lost_s: f64,
    /// Energy in joules, from the energy counter's deltas.
    pub energy_j: f64,
    /// Seconds over which energy was measured (the rest: the field is hidden or failed).
    pub energy_known_s: f64,
    /// Seconds over which utilisation was known.
    pub utilization_known_s: f64,
    /// Busy seconds over which the clock ratio was known.
    pub clock_known_s: f64,
    /// Dollars at list price (time, plus energy for bare metal).
    pub list_cost: f64,
    /// Dollars of idle time.
    pub idle_cost: f64,
    /// Dollars of busy time lost to the clock deficit.
    pub throttle_loss: f64,
    /// Seconds of GPUs with no price.
    pub unpriced_s: f64,
    /// PCIe replays (link retransmissions).
    pub pcie_replays: u64,
    /// Snapshots in which the GPU did not answer.
    pub lost_samples: u64,
    /// Snapshots applied.
    pub samples: u64,
    /// XID events the driver reported (any code).
    pub xid_errors: u64,
    /// Uncorrectable ECC errors (the GPU's aggregate counter's increase).
    pub ecc_uncorrected_errors: u64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.observed_s += o.observed_s;
        self.busy_s += o.busy_s;
        self.utilized_s += o.utilized_s;
        self.idle_s += o.idle_s;
        for (a, b) in self.throttle_s.iter_mut().zip(o.throttle_s) {
            *a += b;
        }
        self.lost_s += o.lost_s;
        self.energy_j += o.energy_j;
        self.energy_known_s += o.energy_known_s;
        self.utilization_known_s += o.utilization_known_s;
        self.clock_known_s += o.clock_known_s;
        self.list_cost += o.list_cost;
        self.idle_cost += o.idle_cost;
        self.throttle_loss += o.throttle_loss;
        self.unpriced_s += o.unpriced_s;
        // Counts come from agents' counters, which can be anything up to u64::MAX.
        self.pcie_replays = self.pcie_replays.saturating_add(o.pcie_replays);
        self.lost_samples = self.lost_samples.saturating_add(o.lost_samples);
        self.samples = self.samples.saturating_add(o.samples);
        self.xid_errors = self.xid_errors.saturating_add(o.xid_errors);
        self.ecc_uncorrected_errors = self
            .ecc_uncorrected_errors
            .saturating_add(o.ecc_uncorrected_errors);
    }

    /// The continuous fields times `f` (a share of an interval); counts are not scaled.
    pub(crate) fn scaled(&self, f: f64) -> Usage {
        let mut u = *self;
        u.observed_s *= f;
        u.busy_s *= f;
        u.utilized_s *= f;
        u.idle_s *= f;
        for t in &mut u.throttle_s {
            *t *= f;
        }
        u.lost_s *= f;
        u.energy_j *= f;
        u.energy_known_s *= f;
        u.utilization_known_s *= f;
        u.clock_known_s *= f;
        u.list_cost *= f;
        u.idle_cost *= f;
        u.throttle_loss *= f;
        u.unpriced_s *= f;
        u.pcie_replays = 0;
        u.lost_samples = 0;
        u.samples = 0;
        u.xid_errors = 0;
        u.ecc_uncorrected_errors = 0;
        u
    }
}

/// How a [`Usage`] field is stored: a real number, or a count kept as a signed 64-bit
/// integer (the widest integer SQLite and PostgreSQL share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Real,
    Count,
}

/// A field's value on its way to or from a store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue {
    Real(f64),
    Count(u64),
}

impl FieldValue {
    /// A count as the stores keep it: one past `i64::MAX` is stored as the largest.
    pub fn count_i64(n: u64) -> i64 {
        i64::try_from(n).unwrap_or(i64::MAX)
    }
}

/// One per-hour usage field: its column name and how to read and set it. Every store's
/// columns, inserts and row reads come from [`USAGE_FIELDS`], so a field added to
/// [`Usage`] is added there once.
#[derive(Debug, Clone, Copy)]
pub struct UsageField {
    pub name: &'static str,
    pub kind: FieldKind,
    pub get: fn(&Usage) -> FieldValue,
    pub set: fn(&mut Usage, FieldValue),
}

macro_rules! usage_field {
    (real $name:literal, $($field:tt)+) => {
        UsageField {
            name: $name,
            kind: FieldKind::Real,
            get: |u| FieldValue::Real(u.$($field)+),
            set: |u, v| {
                if let FieldValue::Real(x) = v {
                    u.$($field)+ = x;
                }
            },
        }
    };
    (count $name:literal, $($field:tt)+) => {
        UsageField {
            name: $name,
            kind: FieldKind::Count,
            get: |u| FieldValue::Count(u.$($field)+),
            set: |u, v| {
                if let FieldValue::Count(n) = v {
                    u.$($field)+ = n;
                }
            },
        }
    };
}

/// Every [`Usage`] field in column order (throttle reasons in [`THROTTLE_REASONS`] order).
pub const USAGE_FIELDS: [UsageField; 25] = [
    usage_field!(real "observed_s", observed_s),
    usage_field!(real "busy_s", busy_s),
    usage_field!(real "utilized_s", utilized_s),
    usage_field!(real "idle_s", idle_s),
    usage_field!(real "throttle_sw_power_cap_s", throttle_s[0]),
    usage_field!(real "throttle_hw_slowdown_s", throttle_s[1]),
    usage_field!(real "throttle_sw_thermal_slowdown_s", throttle_s[2]),
    usage_field!(real "throttle_hw_thermal_slowdown_s", throttle_s[3]),
    usage_field!(real "throttle_hw_power_brake_slowdown_s", throttle_s[4]),
    usage_field!(real "throttle_sync_boost_s", throttle_s[5]),
    usage_field!(real "throttle_applications_clocks_setting_s", throttle_s[6]),
    usage_field!(real "lost_s", lost_s),
    usage_field!(real "energy_j", energy_j),
    usage_field!(real "energy_known_s", energy_known_s),
    usage_field!(real "utilization_known_s", utilization_known_s),
    usage_field!(real "clock_known_s", clock_known_s),
    usage_field!(real "list_cost", list_cost),
    usage_field!(real "idle_cost", idle_cost),
    usage_field!(real "throttle_loss", throttle_loss),
    usage_field!(real "unpriced_s", unpriced_s),
    usage_field!(count "pcie_replays", pcie_replays),
    usage_field!(count "lost_samples", lost_samples),
    usage_field!(count "samples", samples),
    usage_field!(count "xid_errors", xid_errors),
    usage_field!(count "ecc_uncorrected_errors", ecc_uncorrected_errors),
];

/// What the ledger needs to know about a GPU besides its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuTerms {
    /// Maximum SM clock in MHz (from the inventory), for the clock deficit.
    pub max_sm_clock_mhz: Option<u32>,
    /// `None`: unpriced.
    pub price: Option<Price>,
    /// The agent's sampling interval in ms (0 when unknown).
    pub interval_ms: u64,
    /// The agent's boot: a new boot restarts every counter.
    pub boot_id: String,
}

/// Where a GPU's accounting stands: the last snapshot applied and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub timestamp_ms: i64,
    pub boot_id: String,
    pub energy_mj: Option<u64>,
    pub pcie_replays: Option<u64>,
    /// XID events counted by the agent so far (all codes).
    pub xid_total: Option<u64>,
    /// The GPU's lifetime uncorrectable ECC count.
    pub ecc_uncorrected: Option<u64>,
}

/// The counts of one interval, credited to the hour holding its end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    pcie_replays: u64,
    xid_errors: u64,
    ecc_uncorrected_errors: u64,
}

/// A counter's increase from `prev` to `now`; a decrease or a new boot is a reset, and the
/// new value is what was counted since it.
pub fn counter_delta(prev: Option<u64>, now: u64, same_boot: bool) -> u64 {
    match prev {
        _ if !same_boot => now,
        Some(p) if now >= p => now - p,
        Some(_) => now,
        // No earlier value to compare with: nothing can be credited yet.
        None => 0,
    }
}

/// XID events of every code the agent has counted, when it reads them.
fn xid_total(s: &DeviceSample) -> Option<u64> {
    s.xid_errors.get().map(|codes| {
        codes
            .iter()
            .fold(0u64, |sum, (_, n)| sum.saturating_add(*n))
    })
}

/// The longest interval credited: three agent intervals, never more than `max_gap_ms`.
pub fn credit_cap_ms(interval_ms: u64, max_gap_ms: i64) -> i64 {
    if interval_ms == 0 {
        max_gap_ms
    } else {
        (interval_ms.saturating_mul(3)).min(max_gap_ms as u64) as i64
    }
}

/// The usage of one interval ending with sample `s`, `seconds` long, before bucketing.
fn interval_usage(
    s: &DeviceSample,
    terms: &GpuTerms,
    seconds: f64,
    energy_j: Option<f64>,
    counts: Counts,
) -> Usage {
    let mut u = Usage {
        observed_s: seconds,
        samples: 1,
        pcie_replays: counts.pcie_replays,
        xid_errors: counts.xid_errors,
        ecc_uncorrected_errors: counts.ecc_uncorrected_errors,
        ..Usage::default()
    };
    if let Some(j) = energy_j {
        u.energy_j = j;
        u.energy_known_s = seconds;
    }
    if s.state == DeviceState::Lost {
        // A GPU that does not answer is paid for and does no work.
        u.idle_s = seconds;
        u.lost_samples = 1;
    } else {
        if let Some(a) = activity(s) {
            u.utilization_known_s = seconds;
            u.utilized_s = seconds * a;
            let busy = s
                .gpu_utilization_percent
                .value()
                .is_some_and(|p| p >= BUSY_MIN_UTILIZATION_PERCENT);
            if busy {
                u.busy_s = seconds;
                if let (Some(clock), Some(max)) = (
                    s.sm_clock_mhz.value(),
                    terms.max_sm_clock_mhz.filter(|m| *m > 0),
                ) {
                    let deficit = (1.0 - f64::from(clock) / f64::from(max)).clamp(0.0, 1.0);
                    u.lost_s = seconds * deficit;
                    u.clock_known_s = seconds;
                }
            } else {
                u.idle_s = seconds;
            }
        }
        if let Some(reasons) = s.throttle_reasons.value() {
            let limiting = reasons.limiting();
            for (i, (flag, _)) in THROTTLE_REASONS.iter().enumerate() {
                if limiting.contains(*flag) {
                    u.throttle_s[i] = seconds;
                }
            }
        }
    }
    match &terms.price {
        Some(p) => {
            u.list_cost = p.time_cost(seconds) + u.energy_j * p.usd_per_joule;
            u.idle_cost = p.time_cost(u.idle_s);
            u.throttle_loss = p.time_cost(u.lost_s);
        }
        None => u.unpriced_s = seconds,
    }
    u
}

/// Splits the interval (end - len, end] over hour buckets, in proportion to time; the
/// counts (samples, replays, lost samples) go to the bucket holding `end`.
fn split_hours(end_ms: i64, len_ms: i64, whole: &Usage, out: &mut Vec<(i64, Usage)>) {
    let end_hour = (end_ms - 1).div_euclid(HOUR_MS);
    if len_ms <= 0 {
        out.push((end_ms.div_euclid(HOUR_MS), *whole));
        return;
    }
    let start_ms = end_ms - len_ms;
    let mut t = start_ms;
    while t < end_ms {
        let hour = t.div_euclid(HOUR_MS);
        let next = ((hour + 1) * HOUR_MS).min(end_ms);
        let mut part = whole.scaled((next - t) as f64 / len_ms as f64);
        if hour == end_hour {
            part.samples = whole.samples;
            part.pcie_replays = whole.pcie_replays;
            part.lost_samples = whole.lost_samples;
            part.xid_errors = whole.xid_errors;
            part.ecc_uncorrected_errors = whole.ecc_uncorrected_errors;
        }
        out.push((hour, part));
        t = next;
    }
}

/// Per-GPU cursors, keyed by whatever identifies a GPU to the caller.
#[derive(Debug, Default, Clone)]
pub struct Ledger<K> {
    cursors: HashMap<K, Cursor>,
}

impl<K: std::hash::Hash + Eq + Clone> Ledger<K> {
    pub fn new() -> Self {
        Ledger {
            cursors: HashMap::new(),
        }
    }

    /// Starts from cursors saved earlier.
    pub fn with_cursors(cursors: HashMap<K, Cursor>) -> Self {
        Ledger { cursors }
    }

    pub fn cursor(&self, key: &K) -> Option<&Cursor> {
        self.cursors.get(key)
    }

    pub fn cursors(&self) -> &HashMap<K, Cursor> {
        &self.cursors
    }

    /// Puts a GPU's cursor back as it was (`None`: never seen), undoing applies that
    /// could not be stored.
    pub fn restore(&mut self, key: K, cursor: Option<Cursor>) {
        match cursor {
            Some(c) => self.cursors.insert(key, c),
            None => self.cursors.remove(&key),
        };
    }

    /// Applies one sample of one GPU taken at `timestamp_ms`, appending its usage per
    /// hour bucket to `out`. A sample no newer than the last one applied is ignored
    /// (returns false): replays and duplicates change nothing. The first sample of a GPU
    /// only sets its cursor: observed time starts there.
    pub fn apply(
        &mut self,
        key: &K,
        terms: &GpuTerms,
        timestamp_ms: i64,
        s: &DeviceSample,
        max_gap_ms: i64,
        out: &mut Vec<(i64, Usage)>,
    ) -> bool {
        let prev = self.cursors.get(key);
        if prev.is_some_and(|c| timestamp_ms <= c.timestamp_ms) {
            return false;
        }
        let next = Cursor {
            timestamp_ms,
            boot_id: terms.boot_id.clone(),
            // A counter that is momentarily unreadable keeps its last value, so the next
            // reading's delta covers the gap.
            energy_mj: s
                .energy_millijoules
                .value()
                .or_else(|| prev.and_then(|c| c.energy_mj)),
            pcie_replays: s
                .pcie_replays
                .value()
                .or_else(|| prev.and_then(|c| c.pcie_replays)),
            xid_total: xid_total(s).or_else(|| prev.and_then(|c| c.xid_total)),
            ecc_uncorrected: s
                .ecc_uncorrected_errors
                .value()
                .or_else(|| prev.and_then(|c| c.ecc_uncorrected)),
        };
        if let Some(prev) = prev {
            let same_boot = prev.boot_id == terms.boot_id;
            let gap = timestamp_ms - prev.timestamp_ms;
            let credited = gap.min(credit_cap_ms(terms.interval_ms, max_gap_ms));
            let energy_j = s.energy_millijoules.value().map(|now| {
                counter_delta(prev.energy_mj, now, same_boot) as f64 / MILLIJOULES_PER_JOULE
            });
            // Energy measured across an uncounted stretch (the first reading after the
            // field appeared) has no earlier value: count it from the next interval on.
            let energy_j = energy_j.filter(|_| prev.energy_mj.is_some() || !same_boot);
            let counts = Counts {
                pcie_replays: s
                    .pcie_replays
                    .value()
                    .map_or(0, |now| counter_delta(prev.pcie_replays, now, same_boot)),
                // Counted by the agent since it started: a new boot starts them again.
                xid_errors: xid_total(s)
                    .map_or(0, |now| counter_delta(prev.xid_total, now, same_boot)),
                // The GPU's lifetime count survives reboots: only an increase is new.
                ecc_uncorrected_errors: s
                    .ecc_uncorrected_errors
                    .value()
                    .map_or(0, |now| counter_delta(prev.ecc_uncorrected, now, true)),
            };
            let whole = interval_usage(s, terms, credited as f64 / 1000.0, energy_j, counts);
            split_hours(timestamp_ms, credited, &whole, out);
        }
        self.cursors.insert(key.clone(), next);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::pricing::PriceBasis;
    use gpulse_gpu::Reading;

    fn terms(price: Option<f64>) -> GpuTerms {
        GpuTerms {
            max_sm_clock_mhz: Some(2000),
            price: price.map(|p| Price {
                usd_per_gpu_hour: p,
                usd_per_joule: 0.0,
                basis: PriceBasis::Model,
                source: "test".into(),
                as_of: "2026-01".into(),
            }),
            interval_ms: 5000,
            boot_id: "b1".into(),
        }
    }

    fn sample(util: u32, clock: u32, energy: u64) -> DeviceSample {
        DeviceSample {
            uuid: "GPU-1".into(),
            gpu_utilization_percent: Reading::Value(util),
            sm_clock_mhz: Reading::Value(clock),
            energy_millijoules: Reading::Value(energy),
            pcie_replays: Reading::Value(0),
            throttle_reasons: Reading::Value(ThrottleReasons::empty()),
            ..DeviceSample::default()
        }
    }

    fn total(out: &[(i64, Usage)]) -> Usage {
        let mut u = Usage::default();
        for (_, p) in out {
            u.add(p);
        }
        u
    }

    /// XIDs are counted by the agent since it started, so a new boot starts them again;
    /// the uncorrectable ECC count is the GPU's lifetime one, so only an increase is new,
    /// across a reboot too.
    #[test]
    fn xid_and_ecc_errors_are_counted_as_new_events_only() {
        let with = |xids: Vec<(u64, u64)>, ecc: u64| DeviceSample {
            xid_errors: Reading::Value(xids),
            ecc_uncorrected_errors: Reading::Value(ecc),
            ..sample(100, 2000, 0)
        };
        let mut l = Ledger::new();
        let mut out = Vec::new();
        let mut t = terms(None);
        l.apply(&1, &t, 5_000, &with(vec![(13, 2)], 40), 300_000, &mut out);
        assert!(out.is_empty(), "the first reading only sets the cursor");
        l.apply(
            &1,
            &t,
            10_000,
            &with(vec![(13, 3), (31, 1)], 40),
            300_000,
            &mut out,
        );
        l.apply(
            &1,
            &t,
            15_000,
            &with(vec![(13, 3), (31, 1)], 42),
            300_000,
            &mut out,
        );
        let u = total(&out);
        assert_eq!((u.xid_errors, u.ecc_uncorrected_errors), (2, 2));
        // A reboot: the agent's XID counts start from zero, the lifetime ECC count does not.
        t.boot_id = "b2".into();
        out.clear();
        l.apply(&1, &t, 20_000, &with(vec![(79, 1)], 42), 300_000, &mut out);
        let u = total(&out);
        assert_eq!((u.xid_errors, u.ecc_uncorrected_errors), (1, 0));
        // Both land in the hour holding the reading, like replays.
        assert_eq!(out.iter().filter(|(_, p)| p.xid_errors > 0).count(), 1);
    }

    #[test]
    fn a_busy_interval_is_credited_with_its_clock_deficit_and_price() {
        let mut l = Ledger::new();
        let mut out = Vec::new();
        let t = terms(Some(3.6));
        assert!(l.apply(
            &1,
            &t,
            10_000,
            &sample(100, 2000, 1_000_000),
            300_000,
            &mut out
        ));
        assert!(out.is_empty(), "the first snapshot only starts the clock");
        l.apply(
            &1,
            &t,
            15_000,
            &sample(50, 1500, 2_500_000),
            300_000,
            &mut out,
        );
        let u = total(&out);
        assert_eq!(u.observed_s, 5.0);
        assert_eq!(u.busy_s, 5.0);
        assert_eq!(u.utilized_s, 2.5);
        assert!((u.lost_s - 5.0 * 0.25).abs() < 1e-12);
        assert!((u.energy_j - 1500.0).abs() < 1e-9);
        assert!((u.list_cost - 5.0 * 3.6 / 3600.0).abs() < 1e-12);
        assert!((u.throttle_loss - 1.25 * 3.6 / 3600.0).abs() < 1e-12);
        assert_eq!(u.idle_s, 0.0);
    }

    #[test]
    fn a_replay_changes_nothing_and_a_gap_is_capped() {
        let mut l = Ledger::new();
        let mut out = Vec::new();
        let t = terms(None);
        l.apply(&1, &t, 0, &sample(0, 300, 0), 300_000, &mut out);
        l.apply(&1, &t, 5_000, &sample(0, 300, 10), 300_000, &mut out);
        assert!(!l.apply(&1, &t, 5_000, &sample(0, 300, 10), 300_000, &mut out));
        assert!(!l.apply(&1, &t, 1_000, &sample(0, 300, 10), 300_000, &mut out));
        l.apply(&1, &t, 3_605_000, &sample(0, 300, 20), 300_000, &mut out);
        let u = total(&out);
        assert_eq!(
            u.observed_s,
            5.0 + 15.0,
            "an hour away is credited as 3 intervals"
        );
        assert_eq!(u.unpriced_s, u.observed_s);
        assert_eq!(u.idle_s, u.observed_s);
    }

    #[test]
    fn a_counter_reset_counts_the_new_value() {
        assert_eq!(counter_delta(Some(100), 150, true), 50);
        assert_eq!(counter_delta(Some(100), 30, true), 30);
        assert_eq!(counter_delta(Some(100), 150, false), 150);
        assert_eq!(counter_delta(None, 150, true), 0);
        assert_eq!(counter_delta(None, 150, false), 150);
    }

    #[test]
    fn an_interval_across_the_hour_is_split_in_proportion() {
        let mut l = Ledger::new();
        let mut out = Vec::new();
        let t = terms(Some(1.0));
        l.apply(
            &1,
            &t,
            HOUR_MS - 2_000,
            &sample(100, 2000, 0),
            300_000,
            &mut out,
        );
        l.apply(
            &1,
            &t,
            HOUR_MS + 3_000,
            &sample(100, 2000, 5_000),
            300_000,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, 0);
        assert_eq!(out[1].0, 1);
        assert!((out[0].1.observed_s - 2.0).abs() < 1e-12);
        assert!((out[1].1.observed_s - 3.0).abs() < 1e-12);
        assert_eq!((out[0].1.samples, out[1].1.samples), (0, 1));
    }

    #[test]
    fn a_lost_gpu_is_idle_and_counted() {
        let mut l = Ledger::new();
        let mut out = Vec::new();
        let t = terms(Some(2.0));
        l.apply(&1, &t, 0, &sample(100, 2000, 0), 300_000, &mut out);
        l.apply(
            &1,
            &t,
            5_000,
            &DeviceSample::lost("GPU-1"),
            300_000,
            &mut out,
        );
        let u = total(&out);
        assert_eq!((u.idle_s, u.lost_samples, u.busy_s), (5.0, 1, 0.0));
        assert!((u.idle_cost - u.list_cost).abs() < 1e-15);
    }

    #[test]
    fn every_usage_field_is_declared_once_and_round_trips() {
        let mut names: Vec<&str> = USAGE_FIELDS.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), USAGE_FIELDS.len());
        for (i, (_, reason)) in THROTTLE_REASONS.iter().enumerate() {
            assert_eq!(USAGE_FIELDS[4 + i].name, format!("throttle_{reason}_s"));
        }
        // Each field set to a distinct value and read back: a field missing from the
        // declaration, or two entries naming one field, shows as a mismatch.
        let mut u = Usage::default();
        for (i, f) in USAGE_FIELDS.iter().enumerate() {
            let v = match f.kind {
                FieldKind::Real => FieldValue::Real(i as f64 + 0.5),
                FieldKind::Count => FieldValue::Count(i as u64 + 1),
            };
            (f.set)(&mut u, v);
        }
        let mut doubled = u;
        doubled.add(&u);
        for (i, f) in USAGE_FIELDS.iter().enumerate() {
            let want = match f.kind {
                FieldKind::Real => FieldValue::Real(2.0 * (i as f64 + 0.5)),
                FieldKind::Count => FieldValue::Count(2 * (i as u64 + 1)),
            };
            assert_eq!((f.get)(&doubled), want, "{}", f.name);
        }
        assert_eq!(std::mem::size_of::<Usage>(), USAGE_FIELDS.len() * 8);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One step of a GPU's life: time since the last snapshot, utilisation, SM clock,
        /// counter increments, and whether the driver reloaded before it.
        #[derive(Debug, Clone)]
        struct Step {
            gap_ms: i64,
            util: u32,
            clock: u32,
            energy_inc: u64,
            replay_inc: u64,
            reset: bool,
            lost: bool,
        }

        fn step() -> impl Strategy<Value = Step> {
            (
                1i64..40_000,
                0u32..=100,
                300u32..=2000,
                0u64..5_000_000,
                0u64..5,
                prop::bool::weighted(0.1),
                prop::bool::weighted(0.05),
            )
                .prop_map(
                    |(gap_ms, util, clock, energy_inc, replay_inc, reset, lost)| Step {
                        gap_ms,
                        util,
                        clock,
                        energy_inc,
                        replay_inc,
                        reset,
                        lost,
                    },
                )
        }

        /// Timestamped samples of one GPU from steps, with the true counter increments.
        fn samples(steps: &[Step], start: i64) -> (Vec<(i64, DeviceSample)>, u64, u64) {
            let (mut t, mut energy, mut replays) = (start, 0u64, 0u64);
            let (mut true_energy, mut true_replays) = (0u64, 0u64);
            let mut out = Vec::new();
            for (i, st) in steps.iter().enumerate() {
                t += st.gap_ms;
                // A reset restarts the counters from 0; a reset is visible only when the
                // new value is below the old one, so only those are generated.
                if st.reset && st.energy_inc < energy && st.replay_inc < replays.max(1) {
                    energy = st.energy_inc;
                    replays = st.replay_inc.min(replays.saturating_sub(1));
                    if i > 0 {
                        true_energy += energy;
                        true_replays += replays;
                    }
                } else {
                    energy += st.energy_inc;
                    replays += st.replay_inc;
                    if i > 0 {
                        true_energy += st.energy_inc;
                        true_replays += st.replay_inc;
                    }
                }
                let mut s = sample(st.util, st.clock, energy);
                s.pcie_replays = Reading::Value(replays);
                if st.lost {
                    // A lost GPU's counters are absent; the next reading covers the gap.
                    s = DeviceSample::lost("GPU-1");
                }
                out.push((t, s));
            }
            (out, true_energy, true_replays)
        }

        fn run(
            ledger: &mut Ledger<u32>,
            key: u32,
            t: &GpuTerms,
            seq: &[(i64, DeviceSample)],
        ) -> Usage {
            let mut out = Vec::new();
            for (ts, s) in seq {
                ledger.apply(&key, t, *ts, s, 300_000, &mut out);
            }
            total(&out)
        }

        proptest! {
            #[test]
            fn replays_and_duplicates_change_nothing(
                steps in prop::collection::vec(step(), 1..60),
                dups in prop::collection::vec((0usize..60, 0usize..60), 0..30),
            ) {
                let t = terms(Some(2.5));
                let (seq, _, _) = samples(&steps, 1_700_000_000_000);
                let clean = run(&mut Ledger::new(), 1, &t, &seq);
                // The same stream with batches delivered again: right after themselves,
                // or later, after newer ones (a replay after a reconnect).
                let mut noisy = Vec::new();
                for (i, item) in seq.iter().enumerate() {
                    noisy.push(item.clone());
                    for (at, back) in &dups {
                        if *at == i {
                            let j = i.saturating_sub(*back % (i + 1));
                            noisy.extend(seq[j..=i].iter().cloned());
                        }
                    }
                }
                let replayed = run(&mut Ledger::new(), 1, &t, &noisy);
                prop_assert_eq!(clean, replayed);
            }

            #[test]
            fn counter_resets_lose_nothing(
                steps in prop::collection::vec(step(), 2..60),
            ) {
                // Without lost samples, every increment after the first reading is measured.
                let steps: Vec<Step> = steps.into_iter().map(|s| Step { lost: false, ..s }).collect();
                let t = terms(None);
                let (seq, true_energy, true_replays) = samples(&steps, 0);
                let u = run(&mut Ledger::new(), 1, &t, &seq);
                prop_assert!((u.energy_j - true_energy as f64 / 1000.0).abs() < 1e-6,
                    "{} J measured, {} mJ true", u.energy_j, true_energy);
                prop_assert_eq!(u.pcie_replays, true_replays);
            }

            #[test]
            fn time_is_conserved_across_hour_buckets(
                steps in prop::collection::vec(step(), 1..60),
            ) {
                let t = terms(Some(1.0));
                let (seq, _, _) = samples(&steps, HOUR_MS - 30_000);
                let mut out = Vec::new();
                let mut l = Ledger::new();
                for (ts, s) in &seq {
                    l.apply(&1u32, &t, *ts, s, 300_000, &mut out);
                }
                let credited: i64 = steps
                    .iter()
                    .skip(1)
                    .map(|s| s.gap_ms.min(credit_cap_ms(t.interval_ms, 300_000)))
                    .sum();
                let u = total(&out);
                prop_assert!((u.observed_s - credited as f64 / 1000.0).abs() < 1e-6);
                prop_assert!(u.busy_s + u.idle_s <= u.observed_s + 1e-9);
                prop_assert!((u.list_cost - u.observed_s / 3600.0).abs() < 1e-9);
                prop_assert_eq!(u.samples as usize, seq.len() - 1);
                for (_, part) in &out {
                    prop_assert!(part.observed_s >= 0.0 && part.observed_s <= 3600.0 + 1e-9);
                }
            }
        }
    }
}
