//! A seeded, deterministic fleet model: the same spec and the same timestamps give
//! the same readings, so tests can assert on them and demos look alive.

mod models;
mod pods;
mod scenario;
mod spec;

pub use models::{GpuModel, ModelSpec};
pub use scenario::Scenario;
pub use spec::{DEFAULT_GPUS, MAX_GPUS, MAX_MIG_INSTANCES, SimSpec};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::health::{
    GpmActivity, MigInstance, NvLinkSample, ProcessSample, RemappedRows, ThrottlePolicy,
    ThrottleTime, ThrottleTimeSource, WorkloadKind,
};
use crate::{
    DeviceInfo, DeviceSample, DeviceState, Field, FieldStatus, GpuBackend, Reading, ThrottleReasons,
};

/// Driver version the simulator reports (a 550-series production branch).
const SIM_DRIVER_VERSION: &str = "550.127.05";
/// PCI bus numbers of the eight GPU slots of a typical HGX board, repeated past eight.
const PCI_BUSES: [u8; 8] = [0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb];
/// Interval assumed before the first reading, for the first energy step.
const FIRST_STEP_MS: i64 = 1000;
/// Share of the default power limit a provider cap leaves (power-cap scenario).
const POWER_CAP_SHARE: f64 = 0.70;
/// Share of the maximum SM clock that locked application clocks leave (app-clocks scenario).
const APP_CLOCK_SHARE: f64 = 0.65;

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
    pcie_tx_bytes: u64,
    pcie_rx_bytes: u64,
    throttle_ns: [u64; ThrottlePolicy::ALL.len()],
    nvlinks: Vec<NvLinkSample>,
    ecc_corrected: u64,
    ecc_uncorrected: u64,
    remapped: RemappedRows,
    /// (XID code, cumulative count), sorted by code.
    xids: Vec<(u64, u64)>,
    ticks: u64,
    last_unix_ms: Option<i64>,
}

impl SimGpu {
    fn count_xid(&mut self, code: u64) {
        match self.xids.binary_search_by_key(&code, |(c, _)| *c) {
            Ok(i) => self.xids[i].1 += 1,
            Err(i) => self.xids.insert(i, (code, 1)),
        }
    }
}

/// A 64-bit mix (splitmix64's finaliser) so nearby seeds give unrelated streams.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The seed the UUIDs come from: the spec's seed, mixed with the host's identity when
/// one is given (FNV-1a over its bytes), so that different hosts never share UUIDs.
fn uuid_seed(spec: &SimSpec) -> u64 {
    if spec.host.is_empty() {
        return spec.seed;
    }
    let host = spec.host.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    mix(spec.seed ^ mix(host))
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
                uuid: uuid_for(uuid_seed(&spec), index),
                model: model.name.to_string(),
                pci_bus_id: format!(
                    "00000000:{:02X}:00.0",
                    PCI_BUSES[index as usize % PCI_BUSES.len()]
                ),
                // NVML returns total and used memory from one call, and NVLink state per
                // link: a host that hides those hides the inventory values too.
                memory_total_bytes: Some(model.memory_total_mib * 1024 * 1024)
                    .filter(|_| !spec.hidden.contains(&Field::MemoryUsed)),
                max_sm_clock_mhz: Some(model.max_sm_clock_mhz),
                max_memory_clock_mhz: Some(model.max_memory_clock_mhz),
                default_power_limit_milliwatts: Some(model.default_power_limit_watts * 1000),
                slowdown_temperature_celsius: Some(model.slowdown_temperature_celsius),
                shutdown_temperature_celsius: Some(model.shutdown_temperature_celsius),
                max_pcie_generation: Some(model.max_pcie_generation),
                max_pcie_width: Some(model.max_pcie_width),
                nvlink_count: Some(if spec.hidden.contains(&Field::NvLink) {
                    0
                } else {
                    model.nvlink_count
                }),
                mig_enabled: Some(spec.mig > 0),
                driver_version: SIM_DRIVER_VERSION.to_string(),
                vbios_version: "96.00.99.00.01".to_string(),
                max_graphics_clock_mhz: Some(model.max_sm_clock_mhz),
                memory_max_temperature_celsius: Some(model.memory_max_temperature_celsius)
                    .filter(|t| *t > 0),
                gpu_max_operating_temperature_celsius: Some(
                    model.gpu_max_operating_temperature_celsius,
                )
                .filter(|t| *t > 0),
                ecc_enabled: Some(true),
                architecture: model.architecture.to_string(),
                mig_instances: (0..spec.mig)
                    .map(|k| MigInstance {
                        uuid: uuid_for(uuid_seed(&spec) ^ 0x6d69_6700, index * 16 + k)
                            .replacen("GPU-", "MIG-", 1),
                        // One GPU instance with one compute instance per slice, as the
                        // 1g profiles are laid out.
                        gpu_instance_id: Some(k + 1),
                        compute_instance_id: Some(0),
                        memory_total_bytes: Some(
                            model.memory_total_mib * 1024 * 1024 / u64::from(spec.mig),
                        ),
                    })
                    .collect(),
            })
            .collect();
        let gpus = (0..spec.gpus)
            .map(|index| {
                let mut rng = SmallRng::seed_from_u64(mix(spec.seed) ^ u64::from(index));
                let energy_millijoules = rng.random_range(1_000_000_000..10_000_000_000);
                let cool = 30.0 + rng.random_range(0.0..4.0);
                SimGpu {
                    // The driver has been up a while: energy starts at some hours' worth.
                    energy_millijoules,
                    // A thermal GPU is hot from its first reading, past its slowdown
                    // threshold as its throttle flags say: the scenario is a GPU that is too
                    // hot, not one warming up with flags it could not yet have.
                    temperature: if spec.scenario == Scenario::Thermal {
                        f64::from(model.slowdown_temperature_celsius) + 1.0
                    } else {
                        cool
                    },
                    pcie_tx_bytes: rng.random_range(1u64 << 30..1u64 << 40),
                    pcie_rx_bytes: rng.random_range(1u64 << 30..1u64 << 40),
                    nvlinks: (0..model.nvlink_count)
                        .map(|link| NvLinkSample {
                            link,
                            active: true,
                            tx_bytes: Some(0),
                            rx_bytes: Some(0),
                            crc_flit_errors: Some(0),
                            crc_data_errors: Some(0),
                            replay_errors: Some(0),
                            recovery_errors: Some(0),
                        })
                        .collect(),
                    rng,
                    pcie_replays: 0,
                    throttle_ns: [0; ThrottlePolicy::ALL.len()],
                    ecc_corrected: 0,
                    ecc_uncorrected: 0,
                    remapped: RemappedRows::default(),
                    xids: Vec::new(),
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
        let mig = self.spec.mig > 0;
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
        let busy_power = |rng: &mut SmallRng| default_limit_w * rng.random_range(0.72..0.92);
        let near_max = |rng: &mut SmallRng| max_sm - 15.0 * f64::from(rng.random_range(0..6u8));

        // (gpu util %, memory util %, SM clock MHz, target temperature, power W, limit W, reasons)
        let (util, mem_util, sm_clock, target_temp, power_w, limit_w, mut reasons): (
            f64,
            f64,
            f64,
            f64,
            f64,
            f64,
            ThrottleReasons,
        ) = match scenario {
            Scenario::Idle | Scenario::IdleHeld => (
                0.0,
                0.0,
                f64::from(m.idle_sm_clock_mhz),
                32.0,
                f64::from(m.idle_power_watts) + jitter(&mut g.rng, 2.0),
                default_limit_w,
                ThrottleReasons::GPU_IDLE,
            ),
            Scenario::Training
            | Scenario::PcieDegraded
            | Scenario::Lost
            | Scenario::NvlinkErrors
            | Scenario::Xid
            | Scenario::Ecc => (
                g.rng.random_range(93.0..=100.0),
                g.rng.random_range(40.0..70.0),
                near_max(&mut g.rng),
                66.0,
                busy_power(&mut g.rng),
                default_limit_w,
                ThrottleReasons::empty(),
            ),
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
            Scenario::HwSlowdown => (
                100.0,
                g.rng.random_range(30.0..50.0),
                max_sm * 0.50 + jitter(&mut g.rng, 20.0),
                60.0,
                default_limit_w * 0.45,
                default_limit_w,
                ThrottleReasons::HW_SLOWDOWN | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
            ),
            Scenario::SyncBoost => (
                g.rng.random_range(90.0..=100.0),
                g.rng.random_range(40.0..60.0),
                max_sm * 0.88,
                64.0,
                default_limit_w * 0.70,
                default_limit_w,
                ThrottleReasons::SYNC_BOOST,
            ),
            Scenario::AppClocks => (
                g.rng.random_range(93.0..=100.0),
                g.rng.random_range(40.0..60.0),
                (max_sm * APP_CLOCK_SHARE).round(),
                58.0,
                default_limit_w * 0.60,
                default_limit_w,
                ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
            ),
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
        let step = step_ms.unsigned_abs();
        let power_mw = (power_w * 1000.0).round() as u64;
        g.energy_millijoules += power_mw * step / 1000;

        // Violation counters advance by the step for every policy whose reason is active.
        let step_ns = step * 1_000_000;
        for (i, policy) in ThrottlePolicy::ALL.into_iter().enumerate() {
            if crate::throttle_time::policy_of(reasons, policy) {
                g.throttle_ns[i] += step_ns;
            }
        }

        let (pcie_gen, pcie_width) = match scenario {
            // Idle links train down to save power: that is normal, not a fault.
            Scenario::Idle | Scenario::IdleHeld => (1, m.max_pcie_width),
            Scenario::PcieDegraded => {
                g.pcie_replays += g.rng.random_range(5..40);
                (
                    m.max_pcie_generation.saturating_sub(2).max(1),
                    m.max_pcie_width / 2,
                )
            }
            _ => (m.max_pcie_generation, m.max_pcie_width),
        };
        // PCIe traffic in bytes per second: host-to-device input pipelines while busy.
        let (tx_rate, rx_rate) = if scenario.busy() {
            (
                2.0e9 * g.rng.random_range(0.5..1.5),
                6.0e9 * g.rng.random_range(0.5..1.5),
            )
        } else {
            (1.0e5, 1.0e5)
        };
        g.pcie_tx_bytes += (tx_rate * step as f64 / 1000.0) as u64;
        g.pcie_rx_bytes += (rx_rate * step as f64 / 1000.0) as u64;

        // NVLink: collective traffic while busy, about 15 GB/s per link each way.
        let link_rate = if scenario.busy() { 15.0e9 } else { 0.0 };
        let ticks = g.ticks;
        for l in &mut g.nvlinks {
            let down = scenario == Scenario::NvlinkErrors && l.link == 3;
            // NVML reads the links of a MIG-enabled GPU as inactive (a known NVML bug;
            // DCGM treats such links as disabled: bug 200682374, in
            // dcgmlib/src/DcgmTopology.cpp UpdateNvLinkLinkStateFromNvml and
            // modules/health/DcgmHealthWatch.cpp DcgmHealthWatch::MonitorNVLinkStatus);
            // traffic still flows.
            l.active = !down && !mig;
            if !down {
                // Whole KiB: NVML counts NVLink traffic in KiB.
                let bytes = (link_rate * step as f64 / 1000.0) as u64 / 1024 * 1024;
                l.tx_bytes = l.tx_bytes.map(|b| b + bytes);
                l.rx_bytes = l.rx_bytes.map(|b| b + bytes);
            }
            if scenario == Scenario::NvlinkErrors && l.link == 5 {
                l.crc_flit_errors = l.crc_flit_errors.map(|e| e + 12);
                l.replay_errors = l.replay_errors.map(|e| e + 3);
                if ticks.is_multiple_of(10) {
                    l.recovery_errors = l.recovery_errors.map(|e| e + 1);
                }
            }
        }

        match scenario {
            Scenario::Xid => {
                if ticks % 5 == 1 {
                    g.count_xid(13);
                }
                if ticks == 3 {
                    g.count_xid(31);
                }
            }
            Scenario::Ecc if index == 0 && ticks == 2 => {
                g.ecc_uncorrected += 1;
                g.remapped.uncorrectable += 1;
                g.remapped.pending = true;
                g.count_xid(94);
            }
            _ => {}
        }

        let mem_total = m.memory_total_mib * 1024 * 1024;
        let mem_used = if scenario.busy() || scenario == Scenario::IdleHeld {
            (mem_total as f64 * g.rng.random_range(0.70..0.92)) as u64
        } else {
            512 * 1024 * 1024
        };
        let app_clock = if scenario == Scenario::AppClocks {
            (max_sm * APP_CLOCK_SHARE).round() as u32
        } else {
            m.max_sm_clock_mhz
        };
        let sm_clock = sm_clock.round().clamp(0.0, max_sm) as u32;
        let util_pct = util.round() as u32;
        let gpm = if m.gpm {
            let busy = util / 100.0;
            Reading::Value(GpmActivity {
                sm_active: busy * g.rng.random_range(0.78..0.92),
                sm_occupancy: busy * g.rng.random_range(0.35..0.55),
                tensor_active: busy * g.rng.random_range(0.30..0.60),
                dram_active: busy * g.rng.random_range(0.25..0.50),
            })
        } else {
            Reading::Unsupported
        };
        let processes = if scenario.busy() || scenario == Scenario::IdleHeld {
            vec![ProcessSample {
                pid: 10_000 + index as u32,
                used_memory_bytes: Some(mem_used.saturating_sub(512 * 1024 * 1024)),
                sm_utilization_percent: Some(util_pct),
                workload_kind: WorkloadKind::KubernetesPod,
                workload: format!(
                    "{:08x}-{:04x}-4000-8000-{:012x}",
                    mix(self.spec.seed) >> 32,
                    index,
                    mix(self.spec.seed ^ 0x5eed) & 0xffff_ffff_ffff
                ),
            }]
        } else {
            Vec::new()
        };

        let mut sample = DeviceSample {
            uuid,
            state: DeviceState::Ok,
            gpu_utilization_percent: Reading::Value(util_pct),
            memory_utilization_percent: Reading::Value(mem_util.round() as u32),
            sm_clock_mhz: Reading::Value(sm_clock),
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
            graphics_clock_mhz: Reading::Value(sm_clock),
            applications_sm_clock_mhz: Reading::Value(app_clock),
            applications_memory_clock_mhz: Reading::Value(m.max_memory_clock_mhz),
            memory_temperature_celsius: if m.memory_max_temperature_celsius > 0 {
                Reading::Value((g.temperature + 4.0).round() as u32)
            } else {
                Reading::Unsupported
            },
            throttle_time: Reading::Value(ThrottleTime {
                source: ThrottleTimeSource::ViolationStatus,
                nanoseconds: ThrottlePolicy::ALL.into_iter().zip(g.throttle_ns).collect(),
            }),
            pcie_tx_bytes: Reading::Value(g.pcie_tx_bytes),
            pcie_rx_bytes: Reading::Value(g.pcie_rx_bytes),
            nvlinks: if g.nvlinks.is_empty() {
                Reading::Unsupported
            } else {
                Reading::Value(g.nvlinks.clone())
            },
            ecc_corrected_errors: Reading::Value(g.ecc_corrected),
            ecc_uncorrected_errors: Reading::Value(g.ecc_uncorrected),
            remapped_rows: Reading::Value(g.remapped),
            // Page retirement is the pre-Ampere mechanism: none of the simulated models has it.
            retired_pages: Reading::Unsupported,
            xid_errors: Reading::Value(g.xids.clone()),
            gpm,
            processes: Reading::Value(processes),
            allocation: None,
        };
        for field in &self.spec.hidden {
            sample.mark(*field, FieldStatus::Unsupported);
        }
        if self.spec.mig > 0 {
            // A GPU in MIG mode has no whole-GPU utilisation or GPM: NVML answers
            // NOT_SUPPORTED for them (per-instance readings need the MIG handles).
            sample.mark(Field::GpuUtilization, FieldStatus::Unsupported);
            sample.mark(Field::MemoryUtilization, FieldStatus::Unsupported);
            sample.mark(Field::Gpm, FieldStatus::Unsupported);
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
            .map(|i| {
                let mut sample = self.sample_gpu(i, now_unix_ms);
                // A lost GPU is still held by its pod: the kubelet does not know it fell
                // off the bus.
                sample.allocation = pods::allocation(&self.spec, &self.inventory[i]);
                sample
            })
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
    fn hosts_with_the_same_seed_get_different_uuids() {
        let uuids = |host: &str| -> Vec<String> {
            let spec = SimSpec {
                host: host.to_string(),
                ..SimSpec::default()
            };
            Simulator::new(spec)
                .inventory
                .into_iter()
                .map(|d| d.uuid)
                .collect()
        };
        let mut all: Vec<String> = ["sim-a", "sim-b", "sim-c", ""]
            .iter()
            .flat_map(|h| uuids(h))
            .collect();
        assert_eq!(uuids("sim-a"), uuids("sim-a"), "stable for one host");
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "no two hosts share a UUID");
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
