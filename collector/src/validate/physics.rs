//! Values no GPU can report, judged against what its inventory makes possible: memory
//! in use beyond the GPU's memory, and cumulative counters beyond what the GPU could
//! have counted, in all (since the counter began) or since its previous reading.
//!
//! Every cumulative counter has a ceiling rate per second ([`CounterRates`]), derived
//! from the inventory where it says something (power limit, PCIe link) and from a
//! named physical bound otherwise. A counter is refused when it exceeds its rate over
//! [`MAX_COUNTER_AGE_SECONDS`], or when it grew faster than its rate since the GPU's
//! previous reading. A counter that went down was reset (driver reload): not refused,
//! the collector turns it into a delta from zero.

use gpulse_gpu::{DeviceInfo, DeviceSample};

use super::{RejectKind, Rejection};

/// Rates are ceilings: counters and timestamps are read microseconds to milliseconds
/// apart and power can briefly exceed its limit, so an honest reading is kept in by a
/// factor of two and a second of grace.
const SLACK: f64 = 2.0;
const GRACE_SECONDS: f64 = 1.0;

/// The longest a counter may have been counting: NVML's counters start at driver load
/// (energy, replays) or with the board (aggregate ECC, kept in the infoROM); no GPU
/// has served ten years.
pub const MAX_COUNTER_AGE_SECONDS: f64 = 10.0 * 365.25 * 86_400.0;

/// Power when the inventory has no default limit: the largest boards draw about 1.2
/// kW (the same bound as a sample's power reading).
const MAX_POWER_MILLIWATTS: f64 = 10_000_000.0;
/// Memory when the inventory does not say: the largest GPU memory is 288 GB (B300).
pub const MAX_MEMORY_BYTES: u64 = 4 << 40;
/// PCIe bytes per second per lane, generations 1 to 7 (PCI-SIG: 2.5, 5, 8, 16, 32, 64,
/// 128 GT/s less line encoding).
const PCIE_LANE_BYTES_PER_SECOND: [f64; 7] =
    [250e6, 500e6, 985e6, 1_969e6, 3_938e6, 7_563e6, 15_125e6];
/// The largest link the wire accepts: generation 7, x32.
const MAX_PCIE_GENERATION: u32 = 7;
const MAX_PCIE_WIDTH: u32 = 32;
/// The smallest PCIe transaction on the wire is about 24 bytes: a replay resends at
/// least one.
const MIN_TLP_BYTES: f64 = 24.0;
/// NVLink 5 moves 50 GB/s per link and direction; twice that for the next.
const NVLINK_BYTES_PER_SECOND: f64 = 100e9;
/// NVLink flits are 16 bytes: an error counts at most one per flit.
const NVLINK_FLIT_BYTES: f64 = 16.0;
/// ECC errors per second: far above any rate a GPU survives (it retires the pages and
/// stops), low enough that ten years at it stay inside u64, so a counter stuck at
/// 2^64-1 is refused.
const ECC_ERRORS_PER_SECOND: f64 = 1e9;
/// XIDs per second per code: the driver logs each one to the kernel log.
const XIDS_PER_SECOND: f64 = 1e6;
/// Throttled time cannot grow faster than time itself: 1e9 ns per second.
const THROTTLE_NANOSECONDS_PER_SECOND: f64 = 1e9;

/// The highest rate per second at which each counter of one GPU can grow, slack included.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterRates {
    pub energy_millijoules: f64,
    pub pcie_bytes: f64,
    pub pcie_replays: f64,
    pub nvlink_bytes: f64,
    pub nvlink_errors: f64,
    pub ecc_errors: f64,
    pub xids: f64,
    pub throttle_nanoseconds: f64,
}

impl CounterRates {
    /// From the GPU's inventory; `None` (inventory not at hand) gives the widest ceilings.
    pub fn of(info: Option<&DeviceInfo>) -> CounterRates {
        let power = info
            .and_then(|i| i.default_power_limit_milliwatts)
            .map_or(MAX_POWER_MILLIWATTS, f64::from)
            .min(MAX_POWER_MILLIWATTS);
        let generation = info
            .and_then(|i| i.max_pcie_generation)
            .unwrap_or(MAX_PCIE_GENERATION)
            .clamp(1, MAX_PCIE_GENERATION);
        let width = info
            .and_then(|i| i.max_pcie_width)
            .unwrap_or(MAX_PCIE_WIDTH)
            .clamp(1, MAX_PCIE_WIDTH);
        let pcie = PCIE_LANE_BYTES_PER_SECOND[generation as usize - 1] * f64::from(width);
        CounterRates {
            energy_millijoules: power * SLACK,
            pcie_bytes: pcie * SLACK,
            pcie_replays: pcie / MIN_TLP_BYTES * SLACK,
            nvlink_bytes: NVLINK_BYTES_PER_SECOND * SLACK,
            nvlink_errors: NVLINK_BYTES_PER_SECOND / NVLINK_FLIT_BYTES * SLACK,
            ecc_errors: ECC_ERRORS_PER_SECOND * SLACK,
            xids: XIDS_PER_SECOND * SLACK,
            throttle_nanoseconds: THROTTLE_NANOSECONDS_PER_SECOND * SLACK,
        }
    }
}

/// One cumulative counter of a sample: its name, the key telling it from others of
/// the same name (link, XID code, policy), its value and ceiling rate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counter {
    name: &'static str,
    key: u64,
    value: u64,
    rate: f64,
}

impl Counter {
    /// Whether two counters are the same counter (of two readings).
    fn same(&self, other: &Counter) -> bool {
        self.key == other.key && self.name == other.name
    }

    fn order(a: &Counter, b: &Counter) -> std::cmp::Ordering {
        (a.name, a.key).cmp(&(b.name, b.key))
    }
}

/// A reading's cumulative counters with their ceiling rates, listed once and checked
/// against its GPU's ceiling and against the GPU's previous reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters(Vec<Counter>);

impl Counters {
    pub fn of(s: &DeviceSample, info: Option<&DeviceInfo>) -> Counters {
        Counters(counters(s, &CounterRates::of(info)))
    }
}

fn counters(s: &DeviceSample, r: &CounterRates) -> Vec<Counter> {
    let mut out = Vec::new();
    let mut push = |name, key, value: Option<u64>, rate| {
        if let Some(value) = value {
            out.push(Counter {
                name,
                key,
                value,
                rate,
            });
        }
    };
    push(
        "energy_millijoules",
        0,
        s.energy_millijoules.value(),
        r.energy_millijoules,
    );
    push("pcie_replays", 0, s.pcie_replays.value(), r.pcie_replays);
    push("pcie_tx_bytes", 0, s.pcie_tx_bytes.value(), r.pcie_bytes);
    push("pcie_rx_bytes", 0, s.pcie_rx_bytes.value(), r.pcie_bytes);
    push(
        "ecc_corrected_errors",
        0,
        s.ecc_corrected_errors.value(),
        r.ecc_errors,
    );
    push(
        "ecc_uncorrected_errors",
        0,
        s.ecc_uncorrected_errors.value(),
        r.ecc_errors,
    );
    for l in s.nvlinks.get().into_iter().flatten() {
        let k = u64::from(l.link);
        push("nvlink tx_bytes", k, l.tx_bytes, r.nvlink_bytes);
        push("nvlink rx_bytes", k, l.rx_bytes, r.nvlink_bytes);
        push(
            "nvlink crc_flit_errors",
            k,
            l.crc_flit_errors,
            r.nvlink_errors,
        );
        push(
            "nvlink crc_data_errors",
            k,
            l.crc_data_errors,
            r.nvlink_errors,
        );
        push("nvlink replay_errors", k, l.replay_errors, r.nvlink_errors);
        push(
            "nvlink recovery_errors",
            k,
            l.recovery_errors,
            r.nvlink_errors,
        );
    }
    for (code, count) in s.xid_errors.get().into_iter().flatten() {
        push("xid count", *code, Some(*count), r.xids);
    }
    for (policy, ns) in s
        .throttle_time
        .get()
        .into_iter()
        .flat_map(|t| &t.nanoseconds)
    {
        push(
            "throttle nanoseconds",
            *policy as u64,
            Some(*ns),
            r.throttle_nanoseconds,
        );
    }
    out
}

fn impossible(uuid: &str, message: String) -> Rejection {
    Rejection::new(RejectKind::OutOfRange, format!("GPU {uuid}: {message}"))
}

/// Checks a sample against its GPU's inventory alone: memory within the GPU's, each
/// counter within what ten years at its ceiling rate could count. Validation lists a
/// reading's counters once for both checks ([`sample_with`], [`increase_with`]); this
/// and `counter_increase` list them themselves, for the tests.
#[cfg(test)]
pub fn sample(s: &DeviceSample, info: Option<&DeviceInfo>) -> Result<(), Rejection> {
    sample_with(s, info, &Counters::of(s, info))
}

/// Checks a sample against its GPU's inventory alone, given the sample's counters.
pub fn sample_with(
    s: &DeviceSample,
    info: Option<&DeviceInfo>,
    counters: &Counters,
) -> Result<(), Rejection> {
    let total = info
        .and_then(|i| i.memory_total_bytes)
        .unwrap_or(MAX_MEMORY_BYTES);
    let used = s
        .memory_used_bytes
        .value()
        .into_iter()
        .map(|v| ("memory_used_bytes", v));
    let per_process = s.processes.get().into_iter().flatten().filter_map(|p| {
        p.used_memory_bytes
            .map(|v| ("process used_memory_bytes", v))
    });
    if let Some((what, v)) = used.chain(per_process).find(|(_, v)| *v > total) {
        return Err(impossible(
            &s.uuid,
            format!("{what} {v} is more than the GPU's memory of {total} bytes"),
        ));
    }
    for c in &counters.0 {
        let ceiling = c.rate * MAX_COUNTER_AGE_SECONDS;
        if c.value as f64 > ceiling {
            return Err(impossible(
                &s.uuid,
                format!(
                    "{} {} is more than ten years at the GPU's highest rate ({:.0} per second) could count",
                    c.name, c.value, c.rate
                ),
            ));
        }
    }
    Ok(())
}

/// Checks the counters of a GPU's reading against its previous reading, `elapsed_ms`
/// earlier: none may have grown faster than its ceiling rate. A counter that went
/// down was reset and is not refused; one absent from either reading is not compared.
#[cfg(test)]
pub fn counter_increase(
    info: Option<&DeviceInfo>,
    previous: &DeviceSample,
    current: &DeviceSample,
    elapsed_ms: i64,
) -> Result<(), Rejection> {
    increase_with(
        &current.uuid,
        &Counters::of(previous, info),
        &Counters::of(current, info),
        elapsed_ms,
    )
}

/// Checks that no counter grew faster than its ceiling rate between two readings
/// `elapsed_ms` apart, given both readings' counters.
pub fn increase_with(
    uuid: &str,
    previous: &Counters,
    current: &Counters,
    elapsed_ms: i64,
) -> Result<(), Rejection> {
    let (before, now) = (&previous.0, &current.0);
    let seconds = elapsed_ms.max(0) as f64 / 1000.0 + GRACE_SECONDS;
    // Two readings of one GPU list their counters in the same order unless a link,
    // code or policy came or went: pair them by position, and only otherwise by key.
    let aligned = before.len() == now.len() && before.iter().zip(now).all(|(b, c)| b.same(c));
    let sorted = (!aligned).then(|| {
        let mut sorted = before.clone();
        sorted.sort_unstable_by(Counter::order);
        sorted
    });
    for (i, c) in now.iter().enumerate() {
        let b = match &sorted {
            None => &before[i],
            Some(sorted) => match sorted.binary_search_by(|b| Counter::order(b, c)) {
                Ok(j) => &sorted[j],
                Err(_) => continue,
            },
        };
        let increase = c.value.saturating_sub(b.value);
        let ceiling = c.rate * seconds;
        if increase as f64 > ceiling {
            return Err(impossible(
                uuid,
                format!(
                    "{} grew by {increase} in {elapsed_ms} ms, faster than the GPU's highest rate ({:.0} per second) allows",
                    c.name, c.rate
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpulse_gpu::simulator::Simulator;
    use gpulse_gpu::{GpuBackend, Reading};
    use proptest::prelude::*;

    fn h100() -> (DeviceInfo, DeviceSample) {
        let mut sim = Simulator::new(
            "gpus=1,model=h100-sxm,scenario=nvlink-errors"
                .parse()
                .unwrap(),
        );
        let info = sim.inventory()[0].clone();
        let sample = sim.sample(0).remove(0);
        (info, sample)
    }

    #[test]
    fn the_simulator_s_readings_are_possible_for_every_scenario() {
        for (scenario, _) in gpulse_gpu::simulator::Scenario::NAMES {
            let mut sim = Simulator::new(format!("gpus=2,scenario={scenario}").parse().unwrap());
            let inventory = sim.inventory().to_vec();
            let mut previous: Option<Vec<DeviceSample>> = None;
            for t in 0..20 {
                let samples = sim.sample(t * 5000);
                for (s, info) in samples.iter().zip(&inventory) {
                    sample(s, Some(info)).unwrap_or_else(|r| panic!("{scenario}: {}", r.message));
                }
                for ((p, c), info) in previous.iter().flatten().zip(&samples).zip(&inventory) {
                    counter_increase(Some(info), p, c, 5000)
                        .unwrap_or_else(|r| panic!("{scenario}: {}", r.message));
                }
                previous = Some(samples);
            }
        }
    }

    /// Readings whose links differ (one came or went) are paired by key, not position.
    #[test]
    fn counters_are_paired_by_link_when_a_link_came_or_went() {
        let (info, before) = h100();
        let links = |s: &mut DeviceSample| -> Vec<gpulse_gpu::health::NvLinkSample> {
            s.nvlinks.get().cloned().unwrap()
        };
        let mut after = before.clone();
        let mut now = links(&mut after);
        assert!(now.len() > 8, "an H100 has 18 links");
        now.remove(3);
        let seven = now.iter_mut().find(|l| l.link == 7).unwrap();
        // Five seconds of errors a link could count: kept in.
        seven.crc_flit_errors = seven.crc_flit_errors.map(|v| v + 1000);
        after.nvlinks = Reading::Value(now.clone());
        counter_increase(Some(&info), &before, &after, 5000).unwrap();
        // A link's bytes grown by more than 5 s at its rate: refused, whatever its place.
        let seven = now.iter_mut().find(|l| l.link == 7).unwrap();
        seven.tx_bytes = seven.tx_bytes.map(|v| v + 10u64.pow(14));
        after.nvlinks = Reading::Value(now);
        let err = counter_increase(Some(&info), &before, &after, 5000).unwrap_err();
        assert!(err.message.contains("nvlink tx_bytes"), "{}", err.message);
        // The other way round: the earlier reading lacks a link the later one has.
        counter_increase(Some(&info), &after, &before, 5000).unwrap();
    }

    proptest! {
        #[test]
        fn memory_in_use_is_refused_exactly_when_above_the_gpu_s_memory(extra in 0u64..=u64::MAX / 2, over in any::<bool>()) {
            let (info, mut s) = h100();
            let total = info.memory_total_bytes.unwrap();
            let used = if over { total.saturating_add(extra.max(1)) } else { total - extra % (total + 1) };
            s.memory_used_bytes = Reading::Value(used);
            prop_assert_eq!(sample(&s, Some(&info)).is_err(), used > total);
        }

        #[test]
        fn a_counter_near_the_top_of_u64_is_refused(field in 0usize..4, below in 0u64..(1 << 60)) {
            let (info, mut s) = h100();
            let v = u64::MAX - below;
            match field {
                0 => s.energy_millijoules = Reading::Value(v),
                1 => s.pcie_replays = Reading::Value(v),
                2 => s.ecc_corrected_errors = Reading::Value(v),
                _ => s.ecc_uncorrected_errors = Reading::Value(v),
            }
            let r = sample(&s, Some(&info)).unwrap_err();
            prop_assert_eq!(r.kind, RejectKind::OutOfRange);
        }

        /// Growth within rate x (elapsed + grace) passes, beyond it is refused, and a
        /// counter that went down (a reset) always passes.
        #[test]
        fn counter_growth_is_refused_exactly_above_its_rate(
            start in 0u64..(1 << 40),
            elapsed_ms in 0i64..3_600_000,
            fraction in 0.0f64..2.0,
        ) {
            let (info, mut before) = h100();
            before.energy_millijoules = Reading::Value(start);
            let rate = CounterRates::of(Some(&info)).energy_millijoules;
            let ceiling = rate * (elapsed_ms as f64 / 1000.0 + GRACE_SECONDS);
            let increase = (ceiling * fraction) as u64;
            let mut after = before.clone();
            after.energy_millijoules = Reading::Value(start + increase);
            let verdict = counter_increase(Some(&info), &before, &after, elapsed_ms);
            prop_assert_eq!(verdict.is_err(), increase as f64 > ceiling);
            prop_assert!(counter_increase(Some(&info), &after, &before, elapsed_ms).is_ok());
        }
    }
}
