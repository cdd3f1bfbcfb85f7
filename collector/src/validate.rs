//! Checks on everything an agent sends, before anything is stored. Each refusal has a
//! bounded [`RejectKind`] (a metric label) and a message that names the input.

use std::collections::HashSet;

use gpulse_gpu::{DeviceInfo, DeviceSample, DeviceState, HostIdentity, Snapshot};

use crate::config::Limits;

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
}

impl RejectKind {
    pub const ALL: [RejectKind; 20] = [
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

/// Agent ids and label keys travel into metric labels and file names: keep them plain.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')
}

/// Whether `id` is a usable agent id: 1 to 128 plain characters.
pub(crate) fn is_agent_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(is_id_char)
}

fn is_label_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_string(what: &str, value: &str, limits: &Limits) -> Result<(), Rejection> {
    if value.len() > limits.max_string_bytes {
        return Err(Rejection::new(
            RejectKind::InvalidIdentity,
            format!(
                "{what} is {} bytes, more than the limit of {}",
                value.len(),
                limits.max_string_bytes
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::new(
            RejectKind::InvalidIdentity,
            format!("{what} {value:?} contains control characters"),
        ));
    }
    Ok(())
}

/// Checks a Hello: identity strings, labels, inventory.
pub fn hello(
    identity: &HostIdentity,
    gpus: &[DeviceInfo],
    limits: &Limits,
) -> Result<(), Rejection> {
    let id = &identity.agent_id;
    if !is_agent_id(id) {
        return Err(Rejection::new(
            RejectKind::InvalidIdentity,
            format!(
                "agent id {id:?} is not 1 to 128 characters of A-Z a-z 0-9 . _ - : ; set agent_id in the agent's config"
            ),
        ));
    }
    let p = &identity.provider;
    let f = &identity.facts;
    for (what, value) in [
        ("boot_id", &identity.boot_id),
        ("hostname", &identity.hostname),
        ("agent_version", &identity.agent_version),
        ("provider", &p.provider.value),
        ("region", &p.region.value),
        ("zone", &p.zone.value),
        ("instance_type", &p.instance_type.value),
        ("machine_id", &f.machine_id),
        ("os", &f.os),
        ("kernel", &f.kernel),
        ("cpu_model", &f.cpu_model),
    ] {
        check_string(what, value, limits)?;
    }
    let reason = &identity.gpu_backend_error;
    if reason.len() > 32 || !reason.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return Err(Rejection::new(
            RejectKind::InvalidIdentity,
            format!(
                "gpu_backend_error {reason:?} is not a kind of at most 32 characters of a-z and _"
            ),
        ));
    }
    if identity.labels.len() > limits.max_labels {
        return Err(Rejection::new(
            RejectKind::InvalidLabel,
            format!(
                "{} labels, more than the limit of {}",
                identity.labels.len(),
                limits.max_labels
            ),
        ));
    }
    for (k, v) in &identity.labels {
        if !is_label_key(k) || k.len() > 64 {
            return Err(Rejection::new(
                RejectKind::InvalidLabel,
                format!(
                    "label key {k:?} must match [a-zA-Z_][a-zA-Z0-9_]* and be at most 64 bytes"
                ),
            ));
        }
        check_string(&format!("label {k}"), v, limits)
            .map_err(|r| Rejection::new(RejectKind::InvalidLabel, r.message))?;
    }
    if gpus.len() > limits.max_gpus_per_host {
        return Err(Rejection::new(
            RejectKind::TooManyGpus,
            format!(
                "inventory lists {} GPUs, more than the limit of {} (limits.max_gpus_per_host)",
                gpus.len(),
                limits.max_gpus_per_host
            ),
        ));
    }
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
        for (what, value) in [
            ("uuid", &g.uuid),
            ("model", &g.model),
            ("pci_bus_id", &g.pci_bus_id),
            ("driver_version", &g.driver_version),
            ("vbios_version", &g.vbios_version),
        ] {
            check_string(&format!("GPU {} {what}", g.index), value, limits)
                .map_err(|r| Rejection::new(RejectKind::InvalidInventory, r.message))?;
        }
    }
    Ok(())
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

/// nvml.h NVML_NVLINK_MAX_LINKS.
const MAX_NVLINKS: usize = 18;
/// Processes listed per GPU; a GPU shared by more is summarised by the largest.
const MAX_PROCESSES_PER_GPU: usize = 256;
/// Distinct XID codes per GPU (NVIDIA's catalogue has under 200).
const MAX_XID_CODES: usize = 256;
/// Workload names (pod UIDs, unit names) longer than this are not names.
const MAX_WORKLOAD_BYTES: usize = 256;

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
    if let Some(links) = s.nvlinks.get()
        && (links.len() > MAX_NVLINKS || links.iter().any(|l| l.link as usize >= MAX_NVLINKS))
    {
        return Err(out_of_range(
            u,
            "nvlinks",
            links.len(),
            "at most 18 links numbered 0..18",
        ));
    }
    if let Some(x) = s.xid_errors.get().filter(|x| x.len() > MAX_XID_CODES) {
        return Err(out_of_range(u, "xid codes", x.len(), "0..=256"));
    }
    if let Some(procs) = s.processes.get() {
        if procs.len() > MAX_PROCESSES_PER_GPU {
            return Err(out_of_range(u, "processes", procs.len(), "0..=256"));
        }
        for p in procs {
            if let Some(v) = p.sm_utilization_percent.filter(|v| *v > 100) {
                return Err(out_of_range(
                    u,
                    "process sm_utilization_percent",
                    v,
                    "0..=100",
                ));
            }
            if p.workload.len() > MAX_WORKLOAD_BYTES || p.workload.chars().any(char::is_control) {
                return Err(Rejection::new(
                    RejectKind::OutOfRange,
                    format!(
                        "GPU {u}: process {} has a workload name that is too long or has control characters",
                        p.pid
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Checks a batch's snapshots: count, timestamps, GPUs, value ranges.
pub fn snapshots(
    snapshots: &[Snapshot],
    known_gpu: &dyn Fn(&str) -> bool,
    limits: &Limits,
    now_unix_ms: i64,
) -> Result<(), Rejection> {
    if snapshots.len() > limits.max_snapshots_per_batch {
        return Err(Rejection::new(
            RejectKind::TooManySnapshots,
            format!(
                "batch holds {} snapshots, more than the limit of {}",
                snapshots.len(),
                limits.max_snapshots_per_batch
            ),
        ));
    }
    let skew = limits.max_clock_skew.as_millis() as i64;
    let age = limits.max_sample_age.as_millis() as i64;
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
        let mut seen = HashSet::new();
        for s in &snap.gpus {
            if !known_gpu(&s.uuid) {
                return Err(Rejection::new(
                    RejectKind::UnknownGpu,
                    format!(
                        "GPU {:?} is not in the inventory the agent sent in its Hello",
                        s.uuid
                    ),
                ));
            }
            if !seen.insert(s.uuid.as_str()) {
                return Err(Rejection::new(
                    RejectKind::DuplicateGpu,
                    format!("GPU {:?} appears twice in one snapshot", s.uuid),
                ));
            }
            check_sample(s)?;
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
        snapshots(&[snap], &|u| inv.iter().any(|g| g.uuid == u), &limits, NOW).unwrap();
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
                "agent id \"\"",
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
            let r =
                snapshots(&batch, &|u| inv.iter().any(|g| g.uuid == u), &limits, NOW).unwrap_err();
            assert_eq!(r.kind, kind, "{}", r.message);
        }
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
