//! A seeded, deterministic fleet model: the same spec and the same timestamps give
//! the same readings, so tests can assert on them and demos look alive.

mod models;
mod scenario;
mod spec;

pub use models::{GpuModel, ModelSpec};
pub use scenario::Scenario;
pub use spec::{DEFAULT_GPUS, MAX_GPUS, SimSpec};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{
    DeviceInfo, DeviceSample, DeviceState, FieldStatus, GpuBackend, Reading, ThrottleReasons,
};

/// Driver version the simulator reports (a 550-series production branch).
const SIM_DRIVER_VERSION: &str = "550.127.05";
/// PCI bus numbers of the eight GPU slots of a typical HGX board, repeated past eight.
const PCI_BUSES: [u8; 8] = [0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb];
/// Interval assumed before the first reading, for the first energy step.
const FIRST_STEP_MS: i64 = 1000;
/// Share of the default power limit a provider cap leaves (power-cap scenario).
const POWER_CAP_SHARE: f64 = 0.70;

/// Simulated GPUs of one host.
#[derive(Debug)]
pub struct Simulator {
    spec: SimSpec,
    model: ModelSpec,
    inventory: Vec<DeviceInfo>,
    gpus: Vec<SimGpu>,
}

#[derive(Debug)]
struct SimGpu {
    rng: SmallRng,
    temperature: f64,
    energy_millijoules: u64,
    pcie_replays: u64,
    ticks: u64,
    last_unix_ms: Option<i64>,
}

/// A 64-bit mix (splitmix64's finaliser) so nearby seeds give unrelated streams.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn uuid_for(seed: u64, index: u32) -> String {
    let a = mix(seed ^ mix(u64::from(index)));
    let b = mix(a);
    format!(
        "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

impl Simulator {
    pub fn new(spec: SimSpec) -> Simulator {
        let model = spec.model.spec();
        let inventory = (0..spec.gpus)
            .map(|index| DeviceInfo {
                index,
                uuid: uuid_for(spec.seed, index),
                model: model.name.to_string(),
                pci_bus_id: format!(
                    "00000000:{:02X}:00.0",
                    PCI_BUSES[index as usize % PCI_BUSES.len()]
                ),
                memory_total_bytes: Some(model.memory_total_mib * 1024 * 1024),
                max_sm_clock_mhz: Some(model.max_sm_clock_mhz),
                max_memory_clock_mhz: Some(model.max_memory_clock_mhz),
                default_power_limit_milliwatts: Some(model.default_power_limit_watts * 1000),
                slowdown_temperature_celsius: Some(model.slowdown_temperature_celsius),
                shutdown_temperature_celsius: Some(model.shutdown_temperature_celsius),
                max_pcie_generation: Some(model.max_pcie_generation),
                max_pcie_width: Some(model.max_pcie_width),
                nvlink_count: Some(model.nvlink_count),
                mig_enabled: Some(false),
                driver_version: SIM_DRIVER_VERSION.to_string(),
                vbios_version: "96.00.99.00.01".to_string(),
            })
            .collect();
        let gpus = (0..spec.gpus)
            .map(|index| {
                let mut rng = SmallRng::seed_from_u64(mix(spec.seed) ^ u64::from(index));
                SimGpu {
                    // The driver has been up a while: energy starts at some hours' worth.
                    energy_millijoules: rng.random_range(1_000_000_000..10_000_000_000),
                    temperature: 30.0 + rng.random_range(0.0..4.0),
                    rng,
                    pcie_replays: 0,
                    ticks: 0,
                    last_unix_ms: None,
                }
            })
            .collect();
        Simulator {
            spec,
            model,
            inventory,
            gpus,
        }
    }

    pub fn spec(&self) -> &SimSpec {
        &self.spec
    }

    fn sample_gpu(&mut self, index: usize, now_unix_ms: i64) -> DeviceSample {
        let m = self.model;
        let scenario = self.spec.scenario;
        let uuid = self.inventory[index].uuid.clone();
        let last_gpu = index + 1 == self.gpus.len();
        let g = &mut self.gpus[index];
        let step_ms = g
            .last_unix_ms
            .map_or(FIRST_STEP_MS, |last| (now_unix_ms - last).max(0));
        g.last_unix_ms = Some(now_unix_ms);
        g.ticks += 1;
        if scenario == Scenario::Lost && last_gpu && g.ticks > 1 {
            return DeviceSample::lost(uuid);
        }

        let max_sm = f64::from(m.max_sm_clock_mhz);
        let default_limit_w = f64::from(m.default_power_limit_watts);
        let jitter = |rng: &mut SmallRng, spread: f64| rng.random_range(-spread..=spread);

        let (util, mem_util, sm_clock, target_temp, power_w, limit_w, mut reasons): (
            f64,
            f64,
            f64,
            f64,
            f64,
            f64,
            ThrottleReasons,
        ) = match scenario {
            Scenario::Idle => (
                0.0,
                0.0,
                f64::from(m.idle_sm_clock_mhz),
                32.0,
                f64::from(m.idle_power_watts) + jitter(&mut g.rng, 2.0),
                default_limit_w,
                ThrottleReasons::GPU_IDLE,
            ),
            Scenario::Training | Scenario::PcieDegraded | Scenario::Lost => {
                let power = default_limit_w * g.rng.random_range(0.72..0.92);
                (
                    g.rng.random_range(93.0..=100.0),
                    g.rng.random_range(40.0..70.0),
                    max_sm - 15.0 * f64::from(g.rng.random_range(0..6u8)),
                    66.0,
                    power,
                    default_limit_w,
                    ThrottleReasons::empty(),
                )
            }
            Scenario::Thermal => (
                100.0,
                g.rng.random_range(50.0..70.0),
                max_sm * 0.68 + jitter(&mut g.rng, 30.0),
                f64::from(m.slowdown_temperature_celsius) + 1.0,
                default_limit_w * 0.78,
                default_limit_w,
                ThrottleReasons::SW_THERMAL_SLOWDOWN | ThrottleReasons::HW_THERMAL_SLOWDOWN,
            ),
            Scenario::PowerCap => {
                let cap = (default_limit_w * POWER_CAP_SHARE).round();
                (
                    100.0,
                    g.rng.random_range(45.0..65.0),
                    max_sm * 0.80 + jitter(&mut g.rng, 25.0),
                    70.0,
                    cap * g.rng.random_range(0.985..1.0),
                    cap,
                    ThrottleReasons::SW_POWER_CAP,
                )
            }
        };
        // Temperature follows its target with a lag, as a heatsink does.
        g.temperature += (target_temp - g.temperature) * 0.35 + jitter(&mut g.rng, 0.6);
        // Hardware slowdown keeps a real GPU short of its shutdown threshold.
        g.temperature = g
            .temperature
            .min(f64::from(m.shutdown_temperature_celsius) - 1.5);
        if scenario == Scenario::Training && power_w > limit_w * 0.9 {
            reasons |= ThrottleReasons::SW_POWER_CAP;
        }
        let power_mw = (power_w * 1000.0).round() as u64;
        g.energy_millijoules += power_mw * step_ms.unsigned_abs() / 1000;

        let (pcie_gen, pcie_width) = match scenario {
            // Idle links train down to save power: that is normal, not a fault.
            Scenario::Idle => (1, m.max_pcie_width),
            Scenario::PcieDegraded => {
                g.pcie_replays += g.rng.random_range(5..40);
                (
                    m.max_pcie_generation.saturating_sub(2).max(1),
                    m.max_pcie_width / 2,
                )
            }
            _ => (m.max_pcie_generation, m.max_pcie_width),
        };
        let mem_total = m.memory_total_mib * 1024 * 1024;
        let mem_used = if scenario.busy() {
            (mem_total as f64 * g.rng.random_range(0.70..0.92)) as u64
        } else {
            512 * 1024 * 1024
        };

        let mut sample = DeviceSample {
            uuid,
            state: DeviceState::Ok,
            gpu_utilization_percent: Reading::Value(util.round() as u32),
            memory_utilization_percent: Reading::Value(mem_util.round() as u32),
            sm_clock_mhz: Reading::Value(sm_clock.round().clamp(0.0, max_sm) as u32),
            memory_clock_mhz: Reading::Value(m.max_memory_clock_mhz),
            temperature_celsius: Reading::Value(g.temperature.round().max(0.0) as u32),
            power_usage_milliwatts: Reading::Value(power_mw as u32),
            power_limit_milliwatts: Reading::Value((limit_w * 1000.0).round() as u32),
            energy_millijoules: Reading::Value(g.energy_millijoules),
            throttle_reasons: Reading::Value(reasons),
            memory_used_bytes: Reading::Value(mem_used),
            pcie_generation: Reading::Value(pcie_gen),
            pcie_width: Reading::Value(pcie_width),
            pcie_replays: Reading::Value(g.pcie_replays),
        };
        for field in &self.spec.hidden {
            sample.mark(*field, FieldStatus::Unsupported);
        }
        sample
    }
}

impl GpuBackend for Simulator {
    fn inventory(&self) -> &[DeviceInfo] {
        &self.inventory
    }

    fn sample(&mut self, now_unix_ms: i64) -> Vec<DeviceSample> {
        (0..self.gpus.len())
            .map(|i| self.sample_gpu(i, now_unix_ms))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Field;

    fn run(spec: &str, ticks: i64) -> (Simulator, Vec<Vec<DeviceSample>>) {
        let mut sim = Simulator::new(spec.parse().unwrap());
        let samples = (0..ticks).map(|t| sim.sample(t * 5_000)).collect();
        (sim, samples)
    }

    #[test]
    fn the_same_spec_and_timestamps_give_the_same_readings() {
        let (_, a) = run("gpus=4,scenario=training,seed=7", 20);
        let (_, b) = run("gpus=4,scenario=training,seed=7", 20);
        assert_eq!(a, b);
        let (_, c) = run("gpus=4,scenario=training,seed=8", 20);
        assert_ne!(a, c);
    }

    #[test]
    fn uuids_are_unique_across_seeds_and_indexes() {
        let mut uuids: Vec<String> = (0..50)
            .flat_map(|seed| {
                Simulator::new(SimSpec {
                    seed,
                    ..SimSpec::default()
                })
                .inventory
                .into_iter()
                .map(|d| d.uuid)
            })
            .collect();
        let n = uuids.len();
        uuids.sort();
        uuids.dedup();
        assert_eq!(uuids.len(), n);
    }

    #[test]
    fn values_stay_within_each_models_physical_ranges() {
        for (model, _) in GpuModel::NAMES {
            for (scenario, _) in Scenario::NAMES {
                let (sim, ticks) = run(&format!("gpus=2,model={model},scenario={scenario}"), 40);
                let spec = sim.model;
                for s in ticks
                    .iter()
                    .flatten()
                    .filter(|s| s.state == DeviceState::Ok)
                {
                    let sm = s.sm_clock_mhz.value().unwrap();
                    assert!(
                        sm >= spec.idle_sm_clock_mhz && sm <= spec.max_sm_clock_mhz,
                        "{model}/{scenario}: sm {sm}"
                    );
                    let t = s.temperature_celsius.value().unwrap();
                    assert!(
                        (20..spec.shutdown_temperature_celsius).contains(&t),
                        "{model}/{scenario}: temp {t}"
                    );
                    let p = s.power_usage_milliwatts.value().unwrap();
                    assert!(
                        p <= s.power_limit_milliwatts.value().unwrap() + 1000,
                        "{model}/{scenario}: power {p}"
                    );
                    assert!(s.gpu_utilization_percent.value().unwrap() <= 100);
                    assert!(
                        s.memory_used_bytes.value().unwrap() <= spec.memory_total_mib * 1024 * 1024
                    );
                }
            }
        }
    }

    #[test]
    fn energy_and_replays_only_grow() {
        let (_, ticks) = run("gpus=1,scenario=pcie-degraded", 30);
        let energy: Vec<u64> = ticks
            .iter()
            .map(|t| t[0].energy_millijoules.value().unwrap())
            .collect();
        let replays: Vec<u64> = ticks
            .iter()
            .map(|t| t[0].pcie_replays.value().unwrap())
            .collect();
        assert!(energy.windows(2).all(|w| w[1] > w[0]));
        assert!(replays.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn energy_integrates_power_over_the_interval() {
        let (_, ticks) = run("gpus=1,model=l4,scenario=idle", 3);
        let e1 = ticks[1][0].energy_millijoules.value().unwrap();
        let e2 = ticks[2][0].energy_millijoules.value().unwrap();
        let p2 = u64::from(ticks[2][0].power_usage_milliwatts.value().unwrap());
        assert_eq!(e2 - e1, p2 * 5, "5 s at {p2} mW");
    }

    #[test]
    fn each_scenario_shows_its_signature() {
        let last = |spec: &str| run(spec, 30).1.pop().unwrap();
        let h100 = GpuModel::H100Sxm.spec();

        let thermal = &last("gpus=1,scenario=thermal")[0];
        assert!(thermal.temperature_celsius.value().unwrap() >= h100.slowdown_temperature_celsius);
        assert!(
            thermal
                .throttle_reasons
                .value()
                .unwrap()
                .contains(ThrottleReasons::HW_THERMAL_SLOWDOWN)
        );
        assert!(thermal.sm_clock_mhz.value().unwrap() < h100.max_sm_clock_mhz * 3 / 4);

        let capped = &last("gpus=1,scenario=power-cap")[0];
        assert!(
            capped.power_limit_milliwatts.value().unwrap() < h100.default_power_limit_watts * 1000
        );
        assert!(
            capped
                .throttle_reasons
                .value()
                .unwrap()
                .contains(ThrottleReasons::SW_POWER_CAP)
        );

        let pcie = &last("gpus=1,scenario=pcie-degraded")[0];
        assert!(pcie.pcie_generation.value().unwrap() < h100.max_pcie_generation);
        assert!(pcie.pcie_width.value().unwrap() < h100.max_pcie_width);

        let idle = &last("gpus=1,scenario=idle")[0];
        assert_eq!(idle.gpu_utilization_percent.value(), Some(0));
        assert!(
            idle.throttle_reasons
                .value()
                .unwrap()
                .contains(ThrottleReasons::GPU_IDLE)
        );

        let lost = last("gpus=4,scenario=lost");
        assert_eq!(lost[3].state, DeviceState::Lost);
        assert!(lost[..3].iter().all(|s| s.state == DeviceState::Ok));
    }

    #[test]
    fn hidden_fields_are_unsupported_not_zero() {
        let (_, ticks) = run("gpus=1,hide=energy+pcie_replays", 2);
        let s = &ticks[1][0];
        assert!(s.energy_millijoules.is_unsupported());
        assert!(s.pcie_replays.is_unsupported());
        assert_eq!(s.field_status(Field::SmClock), FieldStatus::Read);
    }
}
