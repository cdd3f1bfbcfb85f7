//! What one GPU's tile on the fleet page says: one state, the class of its throttle
//! reason, and the severity of its worst finding, judged from the readings the
//! collector keeps.

use serde::Serialize;

use gpulse_exposition::GpuView;
use gpulse_gpu::diagnosis::{Activity, Finding, FindingKind, GpuWindow, Severity};
use gpulse_gpu::{DeviceSample, DeviceState, ThrottleReasons};

/// The one state a tile shows, most urgent first when several apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TileState {
    /// The agent's stream is closed: the readings shown are its last ones.
    Down,
    /// The GPU stopped answering (fell off the bus).
    Lost,
    /// The GPU reports errors now: XIDs, ECC, row remapping, retired pages, NVLink or
    /// PCIe replays.
    Erroring,
    /// A limiting clock-event reason holds in at least half the readings kept.
    Throttled,
    /// Working, at full clocks.
    Busy,
    /// Nothing runs.
    Idle,
    /// No reading yet, or none that says whether the GPU works (MIG without
    /// per-process figures).
    Unknown,
}

impl TileState {
    pub const ALL: [TileState; 7] = [
        TileState::Down,
        TileState::Lost,
        TileState::Erroring,
        TileState::Throttled,
        TileState::Busy,
        TileState::Idle,
        TileState::Unknown,
    ];

    /// The stable name used in the page's URL filter and in the event stream.
    pub fn name(self) -> &'static str {
        match self {
            TileState::Down => "down",
            TileState::Lost => "lost",
            TileState::Erroring => "erroring",
            TileState::Throttled => "throttled",
            TileState::Busy => "busy",
            TileState::Idle => "idle",
            TileState::Unknown => "unknown",
        }
    }
}

/// Why a throttled GPU's clocks are held down, grouped as an SRE acts on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonClass {
    /// Too hot: software or hardware thermal slowdown.
    Thermal,
    /// The platform pulls clocks down: hardware slowdown or power brake.
    HardwareSlowdown,
    /// At the enforced power limit (a provider cap shows here).
    Power,
    /// Held by settings: application clocks, sync boost, or a reason this build does
    /// not name.
    Clocks,
}

impl ReasonClass {
    pub const ALL: [ReasonClass; 4] = [
        ReasonClass::Thermal,
        ReasonClass::HardwareSlowdown,
        ReasonClass::Power,
        ReasonClass::Clocks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ReasonClass::Thermal => "thermal",
            ReasonClass::HardwareSlowdown => "hardware_slowdown",
            ReasonClass::Power => "power",
            ReasonClass::Clocks => "clocks",
        }
    }

    /// The class of a reading's reasons; with several, the one listed first in
    /// [`ReasonClass`] (heat before a platform slowdown before power before settings).
    /// `None` when nothing limits the clocks (idle and display settings do not).
    pub fn of(reasons: ThrottleReasons) -> Option<ReasonClass> {
        let limiting = reasons.limiting();
        if limiting.is_empty() {
            None
        } else if limiting
            .intersects(ThrottleReasons::SW_THERMAL_SLOWDOWN | ThrottleReasons::HW_THERMAL_SLOWDOWN)
        {
            Some(ReasonClass::Thermal)
        } else if limiting
            .intersects(ThrottleReasons::HW_SLOWDOWN | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN)
        {
            Some(ReasonClass::HardwareSlowdown)
        } else if limiting.contains(ThrottleReasons::SW_POWER_CAP) {
            Some(ReasonClass::Power)
        } else {
            Some(ReasonClass::Clocks)
        }
    }
}

/// The namespaces holding a GPU or any of its MIG devices, by its newest reading.
fn namespaces(gpu: &GpuView) -> Vec<String> {
    let mut out: Vec<String> = gpu
        .latest()
        .and_then(|s| s.allocation.as_ref())
        .map(|a| a.holders().iter().map(|h| h.namespace.clone()).collect())
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// Whether a finding means the GPU reports errors (the tile then shows `erroring`).
/// Every kind is named, so a new kind needs a decision here.
pub fn is_error(kind: FindingKind) -> bool {
    use FindingKind::*;
    match kind {
        GpuLost | Xid | UncorrectableEcc | RowRemapFailed | RowRemapPending
        | RetiredPagesPending | NvlinkDown | NvlinkErrors | PcieReplays => true,
        ThermalThrottling
        | ProviderPowerCap
        | PowerLimited
        | HardwareSlowdown
        | SyncBoost
        | ApplicationClocksLocked
        | PcieDowntrained
        | IdleWhileHeld
        | HiddenFields => false,
    }
}

/// Utilisation on a tile moves in steps of this many percent, so that a tile changes
/// (and is sent to the page) when what it shows changes; the host view has exact figures.
pub const TILE_UTILIZATION_STEP_PERCENT: u32 = 10;

/// One GPU on the fleet page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tile {
    /// NVML index on its host.
    pub gpu: u32,
    pub model: String,
    pub state: TileState,
    /// Set when `state` is throttled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<ReasonClass>,
    /// The most severe finding's severity and kind, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<&'static str>,
    /// Newest utilisation in steps of [`TILE_UTILIZATION_STEP_PERCENT`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub util: Option<u32>,
    /// Namespaces of the pods holding the GPU or its MIG devices, sorted; empty when
    /// nobody holds it or the host does not say (not Kubernetes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

impl Tile {
    /// The tile of one GPU of a host whose agent is (or is not) connected.
    pub fn of(gpu: &GpuView, connected: bool) -> Tile {
        let findings = gpu.findings();
        let worst = findings.iter().max_by_key(|f| f.severity);
        let (state, reason) = state_of(gpu, connected, &findings);
        Tile {
            gpu: gpu.info.index,
            model: gpu.info.model.clone(),
            state,
            reason,
            severity: worst.map(|f| f.severity.name()),
            finding: worst.map(|f| f.kind.name()),
            util: gpu
                .latest()
                .and_then(|s| s.gpu_utilization_percent.value())
                .map(step_utilization),
            namespaces: namespaces(gpu),
        }
    }

    /// The severity as a rank, for sorting and counting.
    pub fn severity_rank(&self) -> Option<Severity> {
        match self.severity {
            Some("critical") => Some(Severity::Critical),
            Some("warning") => Some(Severity::Warning),
            Some("info") => Some(Severity::Info),
            _ => None,
        }
    }
}

fn step_utilization(percent: u32) -> u32 {
    let step = TILE_UTILIZATION_STEP_PERCENT;
    ((percent.min(100) + step / 2) / step) * step
}

fn state_of(
    gpu: &GpuView,
    connected: bool,
    findings: &[Finding],
) -> (TileState, Option<ReasonClass>) {
    if !connected {
        return (TileState::Down, None);
    }
    let Some(latest) = gpu.latest() else {
        return (TileState::Unknown, None);
    };
    if latest.state == DeviceState::Lost {
        return (TileState::Lost, None);
    }
    if findings.iter().any(|f| is_error(f.kind)) {
        return (TileState::Erroring, None);
    }
    if let Some(class) = held_reason(gpu, latest) {
        return (TileState::Throttled, Some(class));
    }
    match GpuWindow::activity(latest) {
        Activity::Busy => (TileState::Busy, None),
        Activity::Idle => (TileState::Idle, None),
        Activity::Unknown => (TileState::Unknown, None),
    }
}

/// The reason class that holds in at least half the answering readings kept (the
/// newest alone when none are kept), so that one reading at the power limit does not
/// make a tile flicker.
fn held_reason(gpu: &GpuView, latest: &DeviceSample) -> Option<ReasonClass> {
    let kept: Vec<&DeviceSample> = gpu
        .recent
        .iter()
        .map(|t| &t.sample)
        .filter(|s| s.state == DeviceState::Ok)
        .collect();
    let readings = if kept.is_empty() { vec![latest] } else { kept };
    let mut counts = [0usize; ReasonClass::ALL.len()];
    for s in &readings {
        if let Some(class) = s.throttle_reasons.value().and_then(ReasonClass::of) {
            counts[class as usize] += 1;
        }
    }
    ReasonClass::ALL
        .into_iter()
        .zip(counts)
        .filter(|(_, n)| *n * 2 >= readings.len() && *n > 0)
        .max_by_key(|(class, n)| (*n, std::cmp::Reverse(*class)))
        .map(|(class, _)| class)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpulse_exposition::HostView;
    use gpulse_gpu::simulator::Simulator;
    use gpulse_gpu::{GpuBackend, HostIdentity, Snapshot};
    use proptest::prelude::*;

    fn played(spec: &str, readings: i64) -> HostView {
        let mut sim = Simulator::new(spec.parse().expect("a valid spec"));
        let mut view = HostView::new(HostIdentity::default(), sim.inventory().to_vec(), 0)
            .with_findings_readings(6);
        for t in 0..readings {
            view.apply(Snapshot {
                timestamp_unix_ms: t * 5000,
                gpus: sim.sample(t * 5000),
            })
            .expect("the simulator's own GPUs");
        }
        view
    }

    fn states(view: &HostView) -> Vec<(TileState, Option<ReasonClass>)> {
        view.gpus
            .iter()
            .map(|g| {
                let t = Tile::of(g, view.connected);
                (t.state, t.reason)
            })
            .collect()
    }

    #[test]
    fn each_scenario_shows_its_state() {
        use ReasonClass::*;
        use TileState::*;
        let cases: [(&str, (TileState, Option<ReasonClass>)); 8] = [
            ("scenario=thermal", (Throttled, Some(Thermal))),
            ("scenario=power-cap", (Throttled, Some(Power))),
            ("scenario=hw-slowdown", (Throttled, Some(HardwareSlowdown))),
            ("scenario=app-clocks", (Throttled, Some(Clocks))),
            ("scenario=sync-boost", (Throttled, Some(Clocks))),
            ("scenario=idle", (Idle, None)),
            ("scenario=xid", (Erroring, None)),
            ("scenario=nvlink-errors", (Erroring, None)),
        ];
        for (spec, want) in cases {
            let view = played(&format!("gpus=2,{spec}"), 6);
            assert_eq!(states(&view), [want; 2], "{spec}");
        }
        let lost = played("gpus=2,scenario=lost", 6);
        assert_eq!(states(&lost)[1], (Lost, None));
        let mut down = lost.clone();
        down.connected = false;
        assert_eq!(states(&down), [(Down, None); 2]);
        let waiting = played("gpus=1", 0);
        assert_eq!(states(&waiting), [(Unknown, None)]);
    }

    #[test]
    fn a_reading_now_and_then_at_the_power_limit_is_not_throttling() {
        use ReasonClass::Power;
        // Training GPUs touch their power limit in about one reading in ten.
        for seed in 1..40 {
            let view = played(&format!("gpus=8,scenario=training,seed={seed}"), 6);
            for g in &view.gpus {
                let once = g
                    .recent
                    .iter()
                    .filter(|t| {
                        t.sample.throttle_reasons.value().and_then(ReasonClass::of) == Some(Power)
                    })
                    .count();
                let tile = Tile::of(g, true);
                assert_eq!(
                    tile.state == TileState::Throttled,
                    once * 2 >= g.recent.len(),
                    "seed {seed}: {once} of {} readings at the limit",
                    g.recent.len()
                );
            }
        }
    }

    fn reasons() -> impl Strategy<Value = ThrottleReasons> {
        any::<u64>().prop_map(ThrottleReasons::from_bits_retain)
    }

    proptest! {
        /// Every limiting mask has exactly one class, and the class is one of its reasons.
        #[test]
        fn every_limiting_mask_has_the_class_of_one_of_its_reasons(r in reasons()) {
            let class = ReasonClass::of(r);
            prop_assert_eq!(class.is_none(), r.limiting().is_empty());
            if let Some(c) = class {
                let thermal = ThrottleReasons::SW_THERMAL_SLOWDOWN | ThrottleReasons::HW_THERMAL_SLOWDOWN;
                let hardware = ThrottleReasons::HW_SLOWDOWN | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN;
                let expected_bits = match c {
                    ReasonClass::Thermal => r & thermal,
                    ReasonClass::HardwareSlowdown => r & hardware,
                    ReasonClass::Power => r & ThrottleReasons::SW_POWER_CAP,
                    ReasonClass::Clocks => r.limiting() - thermal - hardware - ThrottleReasons::SW_POWER_CAP,
                };
                prop_assert!(!expected_bits.is_empty(), "{:?} -> {:?}", r, c);
            }
        }

        #[test]
        fn tile_utilisation_is_a_step_within_half_a_step(u in 0u32..=100) {
            let s = step_utilization(u);
            prop_assert_eq!(s % TILE_UTILIZATION_STEP_PERCENT, 0);
            prop_assert!(s.abs_diff(u) <= TILE_UTILIZATION_STEP_PERCENT / 2);
        }
    }

    #[test]
    fn every_finding_kind_has_a_decision_and_the_errors_are_the_ones_that_report_faults() {
        let errors: Vec<&str> = FindingKind::ALL
            .into_iter()
            .filter(|k| is_error(*k))
            .map(FindingKind::name)
            .collect();
        assert_eq!(
            errors,
            [
                "gpu_lost",
                "pcie_replays",
                "nvlink_down",
                "nvlink_errors",
                "xid",
                "uncorrectable_ecc",
                "row_remap_failed",
                "row_remap_pending",
                "retired_pages_pending"
            ]
        );
    }
}
