//! Checks on everything an agent sends, before anything is stored. Each refusal has a
//! bounded [`RejectKind`] (a metric label) and a message that names the input.
//!
//! Every string and every list of a message goes through the protocol's generated
//! walk ([`wire`]): a string through [`text::AgentText`], a list against its
//! [`wire::bound`]. Then come what a walk cannot see: keys told apart ([`keys`]),
//! values within their range and within what the GPU's inventory makes possible
//! ([`physics`]).

use std::collections::HashSet;

use gpulse_exposition::GpuView;
use gpulse_gpu::{DeviceInfo, DeviceSample, DeviceState, HostIdentity, Snapshot};
use gpulse_proto::v1;

use crate::config::Limits;

#[cfg(test)]
mod descriptor_tests;
pub mod keys;
pub mod physics;
pub mod text;
pub mod wire;

/// Why a message was refused. The names are metric label values: keep them stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    Unauthenticated,
    Malformed,
    Oversized,
    NoHello,
    HelloTimeout,
    DuplicateHello,
    InvalidIdentity,
    InvalidLabel,
    InvalidInventory,
    TooManyGpus,
    AgentIdConflict,
    /// The Hello's agent id is not one its credential (client certificate or per-agent
    /// token) was issued to.
    CredentialMismatch,
    TooManyAgents,
    TooManySnapshots,
    FutureTimestamp,
    StaleTimestamp,
    UnknownGpu,
    DuplicateGpu,
    OutOfRange,
    UnknownEnum,
    /// A list of a sample (NVLink links, XIDs, processes, ...) longer than its bound.
    TooManyItems,
    /// A keyed list of a sample holding one key twice.
    DuplicateKey,
    /// A string of a sample (GPU uuid, workload name) too long or with a forbidden
    /// character.
    InvalidString,
}

impl RejectKind {
    pub const ALL: [RejectKind; 23] = [
        RejectKind::Unauthenticated,
        RejectKind::Malformed,
        RejectKind::Oversized,
        RejectKind::NoHello,
        RejectKind::HelloTimeout,
        RejectKind::DuplicateHello,
        RejectKind::InvalidIdentity,
        RejectKind::InvalidLabel,
        RejectKind::InvalidInventory,
        RejectKind::TooManyGpus,
        RejectKind::AgentIdConflict,
        RejectKind::CredentialMismatch,
        RejectKind::TooManyAgents,
        RejectKind::TooManySnapshots,
        RejectKind::FutureTimestamp,
        RejectKind::StaleTimestamp,
        RejectKind::UnknownGpu,
        RejectKind::DuplicateGpu,
        RejectKind::OutOfRange,
        RejectKind::UnknownEnum,
        RejectKind::TooManyItems,
        RejectKind::DuplicateKey,
        RejectKind::InvalidString,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Unauthenticated => "unauthenticated",
            RejectKind::Malformed => "malformed",
            RejectKind::Oversized => "oversized",
            RejectKind::NoHello => "no_hello",
            RejectKind::HelloTimeout => "hello_timeout",
            RejectKind::DuplicateHello => "duplicate_hello",
            RejectKind::InvalidIdentity => "invalid_identity",
            RejectKind::InvalidLabel => "invalid_label",
            RejectKind::InvalidInventory => "invalid_inventory",
            RejectKind::TooManyGpus => "too_many_gpus",
            RejectKind::AgentIdConflict => "agent_id_conflict",
            RejectKind::CredentialMismatch => "credential_mismatch",
            RejectKind::TooManyAgents => "too_many_agents",
            RejectKind::TooManySnapshots => "too_many_snapshots",
            RejectKind::FutureTimestamp => "future_timestamp",
            RejectKind::StaleTimestamp => "stale_timestamp",
            RejectKind::UnknownGpu => "unknown_gpu",
            RejectKind::DuplicateGpu => "duplicate_gpu",
            RejectKind::OutOfRange => "out_of_range",
            RejectKind::UnknownEnum => "unknown_enum",
            RejectKind::TooManyItems => "too_many_items",
            RejectKind::DuplicateKey => "duplicate_key",
            RejectKind::InvalidString => "invalid_string",
        }
    }
}

/// A refused message: its kind and what to tell the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub kind: RejectKind,
    pub message: String,
}

impl Rejection {
    pub fn new(kind: RejectKind, message: impl Into<String>) -> Rejection {
        Rejection {
            kind,
            message: message.into(),
        }
    }
}

/// Bounds on sample values, past any GPU's physics: a value beyond them is a bug or an attack.
/// Temperatures: every NVIDIA shutdown threshold is below 110 C.
const MAX_TEMPERATURE_CELSIUS: u32 = 150;
/// Clocks: boost clocks of current GPUs are near 3 GHz.
const MAX_CLOCK_MHZ: u32 = 10_000;
/// Power: the largest boards draw about 1.2 kW.
const MAX_POWER_MILLIWATTS: u32 = 10_000_000;
/// PCIe: generation 7 is the newest specified; widths are powers of two up to x32.
const MAX_PCIE_GENERATION: u32 = 7;
const PCIE_WIDTHS: [u32; 7] = [1, 2, 4, 8, 12, 16, 32];

/// Whether `id` is a usable agent id: 1 to 128 plain characters.
pub(crate) fn is_agent_id(id: &str) -> bool {
    text::is_agent_id(id)
}

/// What validation knows of a host's GPUs.
pub trait KnownGpus {
    /// `None`: the GPU is not in the host's inventory. `Some(None)`: it is, but its
    /// inventory is not at hand (only the widest physical bounds apply).
    fn inventory(&self, uuid: &str) -> Option<Option<&DeviceInfo>>;
    /// The GPU's newest reading already applied, with its timestamp in ms, for the
    /// rate of its counters; `None` when there is none.
    fn previous(&self, _uuid: &str) -> Option<(i64, &DeviceSample)> {
        None
    }
}

/// Only whether a GPU is known.
impl<F: Fn(&str) -> bool> KnownGpus for F {
    fn inventory(&self, uuid: &str) -> Option<Option<&DeviceInfo>> {
        self(uuid).then_some(None)
    }
}

/// A host's GPUs as the fleet keeps them: inventory and newest readings.
#[derive(Debug, Clone, Copy)]
pub struct Inventory<'a>(pub &'a [GpuView]);

impl KnownGpus for Inventory<'_> {
    fn inventory(&self, uuid: &str) -> Option<Option<&DeviceInfo>> {
        self.0
            .iter()
            .find(|g| g.info.uuid == uuid)
            .map(|g| Some(&g.info))
    }

    fn previous(&self, uuid: &str) -> Option<(i64, &DeviceSample)> {
        // `recent` is the only reading kept with its timestamp; with findings off it is
        // empty and counters are checked against their ceiling in all only.
        let gpu = self.0.iter().find(|g| g.info.uuid == uuid)?;
        gpu.recent.last().map(|t| (t.unix_ms, &t.sample))
    }
}

/// Checks a Hello: identity strings, labels, inventory.
pub fn hello(
    identity: &HostIdentity,
    gpus: &[DeviceInfo],
    limits: &Limits,
) -> Result<(), Rejection> {
    // The Hello as the wire carries it: what the walk checks is what gets stored.
    wire::check(&gpulse_proto::hello(identity, gpus, 0), limits)?;
    let mut seen = HashSet::new();
    for g in gpus {
        if g.uuid.is_empty() || !seen.insert(g.uuid.as_str()) {
            return Err(Rejection::new(
                RejectKind::InvalidInventory,
                format!(
                    "GPU index {} has an empty or repeated uuid {:?}",
                    g.index, g.uuid
                ),
            ));
        }
        let total = g.memory_total_bytes.unwrap_or(physics::MAX_MEMORY_BYTES);
        if let Some(m) = g
            .mig_instances
            .iter()
            .find(|m| m.memory_total_bytes.is_some_and(|b| b > total))
        {
            return Err(Rejection::new(
                RejectKind::InvalidInventory,
                format!(
                    "GPU {}: MIG device {:?} has more memory than the GPU's {total} bytes",
                    g.uuid, m.uuid
                ),
            ));
        }
    }
    keys::inventory(gpus)
}

fn out_of_range(uuid: &str, what: &str, value: impl std::fmt::Display, bound: &str) -> Rejection {
    Rejection::new(
        RejectKind::OutOfRange,
        format!("GPU {uuid}: {what} {value} is outside {bound}"),
    )
}

fn check_sample(s: &DeviceSample) -> Result<(), Rejection> {
    if s.state == DeviceState::Lost {
        return Ok(());
    }
    let u = &s.uuid;
    for (what, v) in [
        ("gpu_utilization_percent", s.gpu_utilization_percent.value()),
        (
            "memory_utilization_percent",
            s.memory_utilization_percent.value(),
        ),
    ] {
        if let Some(v) = v.filter(|v| *v > 100) {
            return Err(out_of_range(u, what, v, "0..=100"));
        }
    }
    if let Some(v) = s
        .temperature_celsius
        .value()
        .filter(|v| *v > MAX_TEMPERATURE_CELSIUS)
    {
        return Err(out_of_range(u, "temperature_celsius", v, "0..=150"));
    }
    for (what, v) in [
        ("sm_clock_mhz", s.sm_clock_mhz.value()),
        ("memory_clock_mhz", s.memory_clock_mhz.value()),
    ] {
        if let Some(v) = v.filter(|v| *v > MAX_CLOCK_MHZ) {
            return Err(out_of_range(u, what, v, "0..=10000"));
        }
    }
    for (what, v) in [
        ("power_usage_milliwatts", s.power_usage_milliwatts.value()),
        ("power_limit_milliwatts", s.power_limit_milliwatts.value()),
    ] {
        if let Some(v) = v.filter(|v| *v > MAX_POWER_MILLIWATTS) {
            return Err(out_of_range(u, what, v, "0..=10000000"));
        }
    }
    if let Some(v) = s
        .pcie_generation
        .value()
        .filter(|v| *v > MAX_PCIE_GENERATION)
    {
        return Err(out_of_range(u, "pcie_generation", v, "0..=7"));
    }
    if let Some(v) = s.pcie_width.value().filter(|v| !PCIE_WIDTHS.contains(v)) {
        return Err(out_of_range(u, "pcie_width", v, "{1,2,4,8,12,16,32}"));
    }
    check_health(s)
}

fn check_health(s: &DeviceSample) -> Result<(), Rejection> {
    let u = &s.uuid;
    for (what, v) in [
        ("graphics_clock_mhz", s.graphics_clock_mhz.value()),
        (
            "applications_sm_clock_mhz",
            s.applications_sm_clock_mhz.value(),
        ),
        (
            "applications_memory_clock_mhz",
            s.applications_memory_clock_mhz.value(),
        ),
    ] {
        if let Some(v) = v.filter(|v| *v > MAX_CLOCK_MHZ) {
            return Err(out_of_range(u, what, v, "0..=10000"));
        }
    }
    if let Some(v) = s
        .memory_temperature_celsius
        .value()
        .filter(|v| *v > MAX_TEMPERATURE_CELSIUS)
    {
        return Err(out_of_range(u, "memory_temperature_celsius", v, "0..=150"));
    }
    if let Some(g) = s.gpm.value() {
        for (what, v) in [
            ("gpm.sm_active", g.sm_active),
            ("gpm.sm_occupancy", g.sm_occupancy),
            ("gpm.tensor_active", g.tensor_active),
            ("gpm.dram_active", g.dram_active),
        ] {
            if !v.is_finite() || !(0.0..=1.0).contains(&v) {
                return Err(out_of_range(u, what, v, "0..=1 (finite)"));
            }
        }
    }
    if let Some(l) = s
        .nvlinks
        .get()
        .and_then(|links| links.iter().find(|l| l.link as usize >= wire::MAX_NVLINKS))
    {
        return Err(out_of_range(u, "nvlink link", l.link, "0..18"));
    }
    if let Some(p) = s.processes.get().and_then(|p| {
        p.iter()
            .find(|p| p.sm_utilization_percent.is_some_and(|v| v > 100))
    }) {
        return Err(out_of_range(
            u,
            "process sm_utilization_percent",
            p.sm_utilization_percent.unwrap_or_default(),
            "0..=100",
        ));
    }
    Ok(())
}

/// A batch's snapshots whose every string and list passed the protocol's walk
/// ([`wire::check`]) in wire form. Only the walk makes one, so nothing reaches the
/// fleet or the ledger unwalked.
#[derive(Debug, Clone, PartialEq)]
pub struct Walked(Vec<Snapshot>);

impl Walked {
    /// Walks a batch's snapshots as they arrived, then converts them to the form the
    /// collector keeps (the conversion loses nothing the walk saw).
    pub fn from_wire(snapshots: Vec<v1::Snapshot>, limits: &Limits) -> Result<Walked, Rejection> {
        let batch = v1::Batch {
            seq: 0,
            snapshots,
            agent: None,
        };
        wire::check(&batch, limits)?;
        batch
            .snapshots
            .into_iter()
            .map(Snapshot::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map(Walked)
            .map_err(|e| Rejection::new(RejectKind::UnknownEnum, e.to_string()))
    }

    /// Walks snapshots held in the collector's form (made in this process: the
    /// simulated fleet, tests) by encoding them as an agent would send them.
    pub fn from_snapshots(snapshots: Vec<Snapshot>, limits: &Limits) -> Result<Walked, Rejection> {
        let on_the_wire = v1::Batch {
            seq: 0,
            snapshots: snapshots.iter().map(v1::Snapshot::from).collect(),
            agent: None,
        };
        wire::check(&on_the_wire, limits)?;
        Ok(Walked(snapshots))
    }

    pub fn snapshots(&self) -> &[Snapshot] {
        &self.0
    }

    pub fn into_snapshots(self) -> Vec<Snapshot> {
        self.0
    }
}

/// What [`crate::fleet::Fleet::apply`] takes: snapshots already walked, or snapshots in
/// the collector's form that it walks first.
pub trait IntoWalked {
    fn into_walked(self, limits: &Limits) -> Result<Walked, Rejection>;
}

impl IntoWalked for Walked {
    fn into_walked(self, _: &Limits) -> Result<Walked, Rejection> {
        Ok(self)
    }
}

impl IntoWalked for Vec<Snapshot> {
    fn into_walked(self, limits: &Limits) -> Result<Walked, Rejection> {
        Walked::from_snapshots(self, limits)
    }
}

/// Checks a walked batch's snapshots: timestamps, GPUs, value ranges, keys, and
/// counters against each GPU's previous reading (the newest applied, then each earlier
/// snapshot of the batch).
pub fn snapshots(
    walked: &Walked,
    known: &dyn KnownGpus,
    limits: &Limits,
    now_unix_ms: i64,
) -> Result<(), Rejection> {
    let snapshots = walked.snapshots();
    let skew = limits.max_clock_skew.as_millis() as i64;
    let age = limits.max_sample_age.as_millis() as i64;
    // Each GPU's newest reading so far in this batch, as its counters (a host has few
    // GPUs: a list).
    let mut previous: Vec<(&str, i64, physics::Counters)> = Vec::new();
    for snap in snapshots {
        let t = snap.timestamp_unix_ms;
        if t > now_unix_ms + skew {
            return Err(Rejection::new(
                RejectKind::FutureTimestamp,
                format!(
                    "snapshot timestamp {t} ms is {} s ahead of the collector's clock (limit {} s): check NTP on the agent's host",
                    (t - now_unix_ms) / 1000,
                    skew / 1000
                ),
            ));
        }
        if t < now_unix_ms - age {
            return Err(Rejection::new(
                RejectKind::StaleTimestamp,
                format!(
                    "snapshot timestamp {t} ms is older than limits.max_sample_age ({} s)",
                    age / 1000
                ),
            ));
        }
        if let Some(uuid) = keys::repeated_key(snap.gpus.iter().map(|s| s.uuid.as_str())) {
            return Err(Rejection::new(
                RejectKind::DuplicateGpu,
                format!("GPU {uuid:?} appears twice in one snapshot"),
            ));
        }
        for s in &snap.gpus {
            let Some(info) = known.inventory(&s.uuid) else {
                return Err(Rejection::new(
                    RejectKind::UnknownGpu,
                    format!(
                        "GPU {:?} is not in the inventory the agent sent in its Hello",
                        s.uuid
                    ),
                ));
            };
            check_sample(s)?;
            keys::sample(s)?;
            keys::held_devices(s, info)?;
            let counters = physics::Counters::of(s, info);
            physics::sample_with(s, info, &counters)?;
            let earlier = previous.iter_mut().find(|(u, ..)| *u == s.uuid);
            match &earlier {
                Some((_, then, before)) => {
                    physics::increase_with(&s.uuid, before, &counters, t - then)?
                }
                None => {
                    if let Some((then, p)) = known.previous(&s.uuid) {
                        let before = physics::Counters::of(p, info);
                        physics::increase_with(&s.uuid, &before, &counters, t - then)?;
                    }
                }
            }
            match earlier {
                Some(e) => *e = (&s.uuid, t, counters),
                None => previous.push((&s.uuid, t, counters)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpulse_gpu::simulator::Simulator;
    use gpulse_gpu::{GpuBackend, Reading};

    const NOW: i64 = 1_800_000_000_000;

    fn fixture() -> (HostIdentity, Simulator) {
        let identity = HostIdentity {
            agent_id: "node-1".into(),
            hostname: "node-1".into(),
            ..HostIdentity::default()
        };
        (identity, Simulator::new("gpus=2".parse().unwrap()))
    }

    #[test]
    fn a_good_hello_and_batch_pass() {
        let (id, mut sim) = fixture();
        let limits = Limits::default();
        hello(&id, sim.inventory(), &limits).unwrap();
        let snap = Snapshot {
            timestamp_unix_ms: NOW,
            gpus: sim.sample(0),
        };
        let inv = sim.inventory().to_vec();
        let walked = Walked::from_snapshots(vec![snap], &limits).unwrap();
        snapshots(
            &walked,
            &|u: &str| inv.iter().any(|g| g.uuid == u),
            &limits,
            NOW,
        )
        .unwrap();
    }

    #[test]
    fn bad_hellos_are_refused_with_their_kind() {
        let (id, sim) = fixture();
        let limits = Limits::default();
        let cases: Vec<(HostIdentity, RejectKind, &str)> = vec![
            (
                HostIdentity {
                    agent_id: String::new(),
                    ..id.clone()
                },
                RejectKind::InvalidIdentity,
                "Hello.agent_id \"\" is not an agent id",
            ),
            (
                HostIdentity {
                    agent_id: "a b".into(),
                    ..id.clone()
                },
                RejectKind::InvalidIdentity,
                "\"a b\"",
            ),
            (
                HostIdentity {
                    hostname: "x\ny".into(),
                    ..id.clone()
                },
                RejectKind::InvalidIdentity,
                "control",
            ),
            (
                HostIdentity {
                    hostname: "h".repeat(300),
                    ..id.clone()
                },
                RejectKind::InvalidIdentity,
                "300 bytes",
            ),
            (
                HostIdentity {
                    labels: [("bad-key".into(), "v".into())].into(),
                    ..id.clone()
                },
                RejectKind::InvalidLabel,
                "bad-key",
            ),
        ];
        for (identity, kind, needle) in cases {
            let r = hello(&identity, sim.inventory(), &limits).unwrap_err();
            assert_eq!(r.kind, kind, "{}", r.message);
            assert!(r.message.contains(needle), "{}", r.message);
        }
        let mut gpus = sim.inventory().to_vec();
        gpus[1].uuid = gpus[0].uuid.clone();
        assert_eq!(
            hello(&id, &gpus, &limits).unwrap_err().kind,
            RejectKind::InvalidInventory
        );
        let tight = Limits {
            max_gpus_per_host: 1,
            ..Limits::default()
        };
        assert_eq!(
            hello(&id, sim.inventory(), &tight).unwrap_err().kind,
            RejectKind::TooManyGpus
        );
    }

    #[test]
    fn bad_batches_are_refused_with_their_kind() {
        let (_, mut sim) = fixture();
        let limits = Limits::default();
        let inv = sim.inventory().to_vec();
        let good = sim.sample(0);
        let snap = |t: i64, gpus: Vec<DeviceSample>| Snapshot {
            timestamp_unix_ms: t,
            gpus,
        };
        let mut hot = good.clone();
        hot[0].temperature_celsius = Reading::Value(400);
        let mut busy = good.clone();
        busy[0].gpu_utilization_percent = Reading::Value(101);
        let mut narrow = good.clone();
        narrow[0].pcie_width = Reading::Value(3);
        let mut stranger = good.clone();
        stranger[0].uuid = "GPU-stranger".into();
        let twice = vec![good[0].clone(), good[0].clone()];
        for (batch, kind) in [
            (
                vec![snap(NOW + 3_600_000, good.clone())],
                RejectKind::FutureTimestamp,
            ),
            (
                vec![snap(NOW - 30 * 86_400_000, good.clone())],
                RejectKind::StaleTimestamp,
            ),
            (vec![snap(NOW, hot)], RejectKind::OutOfRange),
            (vec![snap(NOW, busy)], RejectKind::OutOfRange),
            (vec![snap(NOW, narrow)], RejectKind::OutOfRange),
            (vec![snap(NOW, stranger)], RejectKind::UnknownGpu),
            (vec![snap(NOW, twice)], RejectKind::DuplicateGpu),
            (
                vec![snap(NOW, good.clone()); 1025],
                RejectKind::TooManySnapshots,
            ),
        ] {
            let r = Walked::from_snapshots(batch, &limits)
                .and_then(|walked| {
                    snapshots(
                        &walked,
                        &|u: &str| inv.iter().any(|g| g.uuid == u),
                        &limits,
                        NOW,
                    )
                })
                .unwrap_err();
            assert_eq!(r.kind, kind, "{}", r.message);
        }
    }

    /// Values no GPU can report, through the fleet as a batch is applied: against the
    /// inventory alone, and against the GPU's previous reading in an earlier batch.
    #[test]
    fn impossible_values_are_refused_and_leave_the_fleet_as_it_was() {
        let (id, mut sim) = fixture();
        let fleet = crate::fleet::Fleet::new(Limits::default());
        let session = fleet
            .connect(id.clone(), sim.inventory().to_vec(), NOW)
            .unwrap();
        let first = Snapshot {
            timestamp_unix_ms: NOW - 10_000,
            gpus: sim.sample(0),
        };
        fleet.apply(&session, 1, vec![first.clone()], NOW).unwrap();
        let next = Snapshot {
            timestamp_unix_ms: NOW - 5_000,
            gpus: sim.sample(5_000),
        };
        let total = sim.inventory()[0].memory_total_bytes.unwrap();
        type Damage = fn(&mut DeviceSample, u64);
        let damage: [(&str, Damage); 5] = [
            ("memory_used_bytes", |s, total| {
                s.memory_used_bytes = Reading::Value(total + 1)
            }),
            ("memory_used_bytes", |s, _| {
                s.memory_used_bytes = Reading::Value(u64::MAX)
            }),
            ("energy_millijoules", |s, _| {
                s.energy_millijoules = Reading::Value(u64::MAX)
            }),
            ("pcie_replays", |s, _| {
                s.pcie_replays = Reading::Value(u64::MAX)
            }),
            ("ecc_uncorrected_errors", |s, _| {
                s.ecc_uncorrected_errors = Reading::Value(u64::MAX)
            }),
        ];
        let before = fleet.host("node-1");
        for (what, damage) in damage {
            let mut bad = next.clone();
            damage(&mut bad.gpus[0], total);
            let err = fleet.apply(&session, 2, vec![bad], NOW).unwrap_err();
            let crate::fleet::ApplyError::Rejected(r) = err else {
                panic!("{err}");
            };
            assert_eq!(r.kind, RejectKind::OutOfRange, "{what}: {}", r.message);
            assert!(r.message.contains(what), "{}", r.message);
            assert_eq!(fleet.host("node-1"), before, "{what} changed the fleet");
        }
        // Possible in all, impossible in the five seconds since the previous reading:
        // a year of the board's power.
        let mut jump = next.clone();
        let year_of_power =
            u64::from(sim.inventory()[0].default_power_limit_milliwatts.unwrap()) * 365 * 86_400;
        jump.gpus[0].energy_millijoules =
            Reading::Value(first.gpus[0].energy_millijoules.value().unwrap() + year_of_power);
        let err = fleet.apply(&session, 2, vec![jump], NOW).unwrap_err();
        assert!(err.to_string().contains("grew by"), "{err}");
        fleet.apply(&session, 2, vec![next], NOW).unwrap();
    }

    #[test]
    fn reject_kind_names_are_unique_label_values() {
        let mut names: Vec<_> = RejectKind::ALL.iter().map(|k| k.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        names.sort();
        names.dedup();
        assert_eq!(names.len(), RejectKind::ALL.len());
    }
}
