//! Fleet state: one entry per agent, with the dedup cursor and the host view that
//! exposition reads. All changes are checked first and applied whole, so a refused
//! message leaves what is stored untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use gpulse_exposition::{HostSource, HostView};
use gpulse_gpu::{DeviceInfo, HostIdentity, Snapshot};

use crate::config::Limits;
use crate::delivery::{self, SeqMark, Verdict};
use crate::validate::{self, IntoWalked, RejectKind, Rejection, Walked};

/// One open stream of one agent. A newer stream from the same agent supersedes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub agent_id: String,
    /// The host boot the stream's sequence numbers belong to (from its Hello).
    pub boot_id: String,
    id: u64,
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// New data: this many GPU samples were applied.
    New { gpu_samples: usize },
    /// Already applied (a replay after a reconnect): nothing changed.
    Duplicate,
}

/// Why a batch was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("a newer stream from agent {0:?} replaced this one")]
    Superseded(String),
}

#[derive(Debug)]
struct AgentEntry {
    view: HostView,
    session: Option<u64>,
    /// The highest batch applied, and its boot ([`delivery::verdict`] decides on it).
    mark: Option<SeqMark>,
}

impl AgentEntry {
    /// Checks a batch whole (its seq and every snapshot) without changing anything.
    fn check(
        &self,
        seq: u64,
        snapshots: &Walked,
        limits: &Limits,
        now_unix_ms: i64,
    ) -> Result<(), Rejection> {
        delivery::check_seq(seq, now_unix_ms, limits.max_clock_skew)?;
        // The inventory and the readings kept for findings: what a value may be, and
        // how fast a counter may have grown since the last reading.
        let known = validate::Inventory(&self.view.gpus);
        validate::snapshots(snapshots, &known, limits, now_unix_ms)
    }

    /// Applies a checked batch and moves the mark to it; returns the GPU samples applied.
    fn apply_checked(&mut self, seq: u64, snapshots: Vec<Snapshot>) -> usize {
        let gpu_samples = snapshots.iter().map(|s| s.gpus.len()).sum();
        for snapshot in snapshots {
            self.view
                .apply(snapshot)
                .expect("checked against the same inventory");
        }
        self.mark = Some(SeqMark {
            boot_id: self.view.identity.boot_id.clone(),
            seq,
        });
        gpu_samples
    }
}

/// One agent's entry behind its own lock: a batch of one agent, or a scrape reading it,
/// never waits on another agent's.
type Shared = Arc<Mutex<AgentEntry>>;

fn lock(entry: &Mutex<AgentEntry>) -> MutexGuard<'_, AgentEntry> {
    // Changes are checked before any write, so a poisoned entry is still consistent.
    entry.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default)]
struct Inner {
    /// An entry stays the same allocation while its id is known: a reconnect replaces
    /// what it holds, so a stream holding the old session finds it superseded.
    agents: HashMap<String, Shared>,
    /// Entries with an open stream, kept as they change rather than counted per Hello.
    connected: usize,
    next_session: u64,
}

impl Inner {
    fn entry(&self, agent_id: &str) -> Option<Shared> {
        self.agents.get(agent_id).cloned()
    }

    /// Forgets the disconnected agents gone longest until at most `keep` remain.
    fn evict_departed(&mut self, keep: usize) -> Vec<String> {
        let mut evicted = Vec::new();
        while self.agents.len() - self.connected > keep {
            let Some(oldest) = self
                .agents
                .iter()
                .filter_map(|(id, e)| {
                    let e = lock(e);
                    e.session.is_none().then(|| (e.view.last_seen_unix_ms, id))
                })
                .min()
                .map(|(_, id)| id.clone())
            else {
                break;
            };
            self.agents.remove(&oldest);
            evicted.push(oldest);
        }
        evicted
    }
}

/// Whether two Hellos come from the same host: by machine id when both carry one, else
/// by the kernel's boot id (random for each boot of a host) when both carry one. A Hello
/// with neither cannot show that it comes from the host that holds the id.
fn same_host(a: &HostIdentity, b: &HostIdentity) -> bool {
    let present = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match (present(&a.facts.machine_id), present(&b.facts.machine_id)) {
        (Some(x), Some(y)) => x == y,
        _ => matches!(
            (present(&a.boot_id), present(&b.boot_id)),
            (Some(x), Some(y)) if x == y
        ),
    }
}

/// How a host identified itself, for a refusal's message.
fn host_evidence(identity: &HostIdentity) -> String {
    match (
        identity.facts.machine_id.as_str(),
        identity.boot_id.as_str(),
    ) {
        ("", "") => "no machine id or boot id".into(),
        ("", boot) => format!("no machine id, boot id {boot}"),
        (machine, _) => format!("machine id {machine}"),
    }
}

/// The collector's view of every agent it knows.
#[derive(Debug)]
pub struct Fleet {
    inner: RwLock<Inner>,
    limits: Limits,
    /// Readings kept per GPU for findings; 0: none.
    findings_readings: usize,
}

impl Fleet {
    /// A fleet that keeps the default number of readings per GPU for findings.
    pub fn new(limits: Limits) -> Arc<Fleet> {
        Fleet::with_findings_readings(limits, crate::config::DEFAULT_FINDINGS_READINGS)
    }

    pub fn with_findings_readings(limits: Limits, findings_readings: usize) -> Arc<Fleet> {
        Arc::new(Fleet {
            inner: RwLock::new(Inner::default()),
            limits,
            findings_readings,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    // A panic while holding the lock cannot leave a half-applied change (changes are
    // checked before any write), so a poisoned lock is still consistent.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry of a session's agent, taken under the fleet's lock for a moment.
    fn current(&self, session: &Session) -> Result<Shared, ApplyError> {
        self.read()
            .entry(&session.agent_id)
            .ok_or_else(|| ApplyError::Superseded(session.agent_id.clone()))
    }

    /// The entry, if the session is still the one its agent streams on.
    fn owned_by<'e>(
        entry: &'e mut AgentEntry,
        session: &Session,
    ) -> Result<&'e mut AgentEntry, ApplyError> {
        if entry.session == Some(session.id) {
            Ok(entry)
        } else {
            Err(ApplyError::Superseded(session.agent_id.clone()))
        }
    }

    /// Registers an agent's Hello and opens a session for its stream.
    ///
    /// An id whose stream is open is taken over only by a Hello from the same host (a
    /// reconnect); `limits.max_agents` bounds the agents connected at once. Agents that
    /// went away never count against it: they are forgotten, the one gone longest first,
    /// once more than `max_agents` of them are remembered.
    pub fn connect(
        &self,
        identity: HostIdentity,
        inventory: Vec<DeviceInfo>,
        now_unix_ms: i64,
    ) -> Result<Session, Rejection> {
        validate::hello(&identity, &inventory, &self.limits)?;
        let mut inner = self.write();
        let agent_id = identity.agent_id.clone();
        let shared = inner.entry(&agent_id);
        let existing = shared.as_deref().map(lock);
        let reconnect = existing.as_ref().is_some_and(|e| e.session.is_some());
        if let Some(existing) = existing.as_ref().filter(|_| reconnect) {
            let theirs = &existing.view.identity;
            if !same_host(theirs, &identity) {
                return Err(Rejection::new(
                    RejectKind::AgentIdConflict,
                    format!(
                        "agent id {agent_id:?} is already connected from another host ({}; this                          Hello has {}); give each host its own agent_id",
                        host_evidence(theirs),
                        host_evidence(&identity)
                    ),
                ));
            }
        }
        if !reconnect && inner.connected >= self.limits.max_agents {
            return Err(Rejection::new(
                RejectKind::TooManyAgents,
                format!(
                    "{} agents are connected, the limit (limits.max_agents);                      add a collector or raise the limit",
                    inner.connected
                ),
            ));
        }
        // The mark outlives the stream: a replay after reconnecting is still a duplicate.
        let mark = existing.as_ref().and_then(|e| e.mark.clone());
        inner.next_session += 1;
        let id = inner.next_session;
        let boot_id = identity.boot_id.clone();
        let fresh = AgentEntry {
            view: HostView::new(identity, inventory, now_unix_ms)
                .with_findings_readings(self.findings_readings),
            session: Some(id),
            mark,
        };
        match existing {
            Some(mut e) => *e = fresh,
            None => {
                inner
                    .agents
                    .insert(agent_id.clone(), Arc::new(Mutex::new(fresh)));
            }
        }
        if !reconnect {
            inner.connected += 1;
        }
        Ok(Session {
            agent_id,
            boot_id,
            id,
        })
    }

    /// Checks a batch (its seq and every snapshot) without applying it: what is checked
    /// here is applied by [`Fleet::apply_new`] once the ledger has decided it is new.
    pub fn check(
        &self,
        session: &Session,
        seq: u64,
        snapshots: &Walked,
        now_unix_ms: i64,
    ) -> Result<(), ApplyError> {
        let shared = self.current(session)?;
        let mut entry = lock(&shared);
        let entry = Self::owned_by(&mut entry, session)?;
        entry.view.last_seen_unix_ms = now_unix_ms;
        Ok(entry.check(seq, snapshots, &self.limits, now_unix_ms)?)
    }

    /// Applies a batch that [`Fleet::check`] passed and the ledger found new; returns the
    /// GPU samples applied.
    pub fn apply_new(
        &self,
        session: &Session,
        seq: u64,
        snapshots: Vec<Snapshot>,
    ) -> Result<usize, ApplyError> {
        let shared = self.current(session)?;
        let mut entry = lock(&shared);
        let entry = Self::owned_by(&mut entry, session)?;
        Ok(entry.apply_checked(seq, snapshots))
    }

    /// Checks and applies one batch whole, deciding by the fleet's own marks whether it is
    /// new: for a collector without a ledger.
    pub fn apply(
        &self,
        session: &Session,
        seq: u64,
        snapshots: impl IntoWalked,
        now_unix_ms: i64,
    ) -> Result<Applied, ApplyError> {
        let snapshots = snapshots.into_walked(&self.limits)?;
        let shared = self.current(session)?;
        let mut entry = lock(&shared);
        let entry = Self::owned_by(&mut entry, session)?;
        entry.view.last_seen_unix_ms = now_unix_ms;
        entry.check(seq, &snapshots, &self.limits, now_unix_ms)?;
        match delivery::verdict(entry.mark.as_ref(), &session.boot_id, seq) {
            Verdict::Duplicate => Ok(Applied::Duplicate),
            Verdict::New => Ok(Applied::New {
                gpu_samples: entry.apply_checked(seq, snapshots.into_snapshots()),
            }),
        }
    }

    /// Records what an agent says of its own delivery (sent with each new batch).
    pub fn set_agent_stats(&self, session: &Session, stats: gpulse_exposition::AgentStats) {
        let Ok(shared) = self.current(session) else {
            return;
        };
        let mut entry = lock(&shared);
        if let Ok(entry) = Self::owned_by(&mut entry, session) {
            entry.view.agent_stats = Some(stats);
        }
    }

    /// Marks a session's agent as disconnected, unless a newer stream replaced it; returns
    /// the ids of agents forgotten to keep at most `limits.max_agents` departed ones.
    pub fn disconnect(&self, session: &Session, now_unix_ms: i64) -> Vec<String> {
        let mut inner = self.write();
        let Some(shared) = inner.entry(&session.agent_id) else {
            return Vec::new();
        };
        {
            let mut entry = lock(&shared);
            let Ok(entry) = Self::owned_by(&mut entry, session) else {
                return Vec::new();
            };
            entry.session = None;
            entry.view.connected = false;
            entry.view.last_seen_unix_ms = now_unix_ms;
        }
        inner.connected -= 1;
        inner.evict_departed(self.limits.max_agents)
    }

    /// Forgets agents disconnected for longer than `expiry_ms`; returns their ids.
    pub fn expire(&self, now_unix_ms: i64, expiry_ms: i64) -> Vec<String> {
        let mut inner = self.write();
        let gone: Vec<String> = inner
            .agents
            .iter()
            .filter(|(_, e)| {
                let e = lock(e);
                e.session.is_none() && now_unix_ms - e.view.last_seen_unix_ms > expiry_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            inner.agents.remove(id);
        }
        gone
    }

    /// (connected, known) agent counts.
    pub fn agent_counts(&self) -> (usize, usize) {
        let inner = self.read();
        (inner.connected, inner.agents.len())
    }

    /// A copy of one agent's view, for tests and the API.
    pub fn host(&self, agent_id: &str) -> Option<HostView> {
        let shared = self.read().entry(agent_id)?;
        let view = lock(&shared).view.clone();
        Some(view)
    }
}

impl HostSource for Fleet {
    fn for_each_host(&self, f: &mut dyn FnMut(&HostView)) {
        // The entries are taken under the fleet's lock and read after it is released,
        // each under its own: a scrape never holds up a Hello or another agent's batch.
        let mut entries: Vec<(String, Shared)> = self
            .read()
            .agents
            .iter()
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect();
        // Stable order makes the exposition diffable and the golden file possible.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (_, entry) in entries {
            f(&lock(&entry).view);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpulse_gpu::GpuBackend;
    use gpulse_gpu::simulator::Simulator;
    use proptest::prelude::*;

    fn identity(agent_id: &str, machine_id: &str, boot_id: &str) -> HostIdentity {
        let mut id = HostIdentity {
            agent_id: agent_id.into(),
            boot_id: boot_id.into(),
            hostname: agent_id.into(),
            ..HostIdentity::default()
        };
        id.facts.machine_id = machine_id.into();
        id
    }

    fn inventory() -> Vec<DeviceInfo> {
        Simulator::new("gpus=1,seed=1".parse().unwrap())
            .inventory()
            .to_vec()
    }

    fn limits(max_agents: usize) -> Limits {
        Limits {
            max_agents,
            ..Limits::default()
        }
    }

    /// Host identities as agents send them: a machine id and a boot id, either missing.
    fn host() -> impl Strategy<Value = (String, String)> {
        let part = |p: &'static str| {
            prop_oneof![
                Just(String::new()),
                "[ab]".prop_map(move |s| format!("{p}-{s}"))
            ]
        };
        (part("machine"), part("boot"))
    }

    proptest! {
        /// While a stream holds an id, a Hello from a host that shares neither its machine
        /// id nor its boot id is refused, whichever of them either side leaves empty; the
        /// holding host itself reconnects whenever it sends either.
        #[test]
        fn a_held_id_goes_only_to_a_hello_from_the_same_host(
            (m1, b1) in host(),
            (m2, b2) in host(),
        ) {
            let fleet = Fleet::new(Limits::default());
            fleet.connect(identity("node", &m1, &b1), inventory(), 1).unwrap();
            let shares_a_part = (!m1.is_empty() && m1 == m2) || (!b1.is_empty() && b1 == b2);
            let machine_ids_differ = !m1.is_empty() && !m2.is_empty() && m1 != m2;
            let second = fleet.connect(identity("node", &m2, &b2), inventory(), 2);
            let second_ok = second.is_ok();
            if !shares_a_part || machine_ids_differ {
                let r = second.unwrap_err();
                prop_assert_eq!(r.kind, RejectKind::AgentIdConflict);
                prop_assert!(r.message.contains("give each host its own agent_id"), "{}", r.message);
            } else {
                prop_assert!(second.is_ok(), "{:?}", second);
            }
            let again = fleet.connect(identity("node", &m1, &b1), inventory(), 3);
            prop_assert_eq!(again.is_ok(), !m1.is_empty() || !b1.is_empty() || second_ok);
        }
    }

    #[test]
    fn a_departed_agent_never_keeps_a_new_one_out_and_the_longest_gone_go_first() {
        let fleet = Fleet::new(limits(3));
        // A burst of Hellos from ids that leave at once.
        let mut evicted = Vec::new();
        for i in 0..50 {
            let s = fleet
                .connect(identity(&format!("burst-{i:02}"), "", ""), inventory(), i)
                .unwrap_or_else(|r| panic!("burst-{i:02} refused: {r}"));
            evicted.extend(fleet.disconnect(&s, 100 + i));
        }
        assert_eq!(fleet.agent_counts(), (0, 3));
        assert_eq!(evicted.len(), 47);
        assert_eq!(
            evicted[0], "burst-00",
            "the longest gone is forgotten first"
        );
        for kept in ["burst-47", "burst-48", "burst-49"] {
            assert!(fleet.host(kept).is_some(), "{kept}");
        }
        let new = fleet.connect(identity("newcomer", "m-new", "b"), inventory(), 1000);
        assert!(new.is_ok(), "{new:?}");
    }

    #[test]
    fn max_agents_bounds_the_agents_connected_at_once() {
        let fleet = Fleet::new(limits(2));
        let a = fleet
            .connect(identity("a", "m-a", "b"), inventory(), 1)
            .unwrap();
        fleet
            .connect(identity("b", "m-b", "b"), inventory(), 1)
            .unwrap();
        let r = fleet
            .connect(identity("c", "m-c", "b"), inventory(), 1)
            .unwrap_err();
        assert_eq!(r.kind, RejectKind::TooManyAgents);
        assert!(r.message.contains("limits.max_agents"), "{}", r.message);
        // A connected agent's reconnect replaces its stream and takes no new place.
        fleet
            .connect(identity("a", "m-a", "b"), inventory(), 2)
            .unwrap();
        assert_eq!(fleet.agent_counts(), (2, 2));
        // The superseded stream's end changes nothing; a real departure frees a place.
        assert!(fleet.disconnect(&a, 3).is_empty());
        assert_eq!(fleet.agent_counts(), (2, 2));
    }

    #[test]
    fn a_seq_beyond_the_start_time_scheme_is_refused_and_the_agent_keeps_sending() {
        let fleet = Fleet::new(Limits::default());
        let s = fleet
            .connect(identity("node", "m", "b"), inventory(), 1)
            .unwrap();
        let now = 1_790_000_000_000;
        let uuid = inventory()[0].uuid.clone();
        let snap = |t: i64| Snapshot {
            timestamp_unix_ms: t,
            gpus: vec![gpulse_gpu::DeviceSample {
                uuid: uuid.clone(),
                ..Default::default()
            }],
        };
        let e = fleet.apply(&s, u64::MAX, vec![snap(now)], now).unwrap_err();
        assert!(
            matches!(&e, ApplyError::Rejected(r) if r.kind == RejectKind::OutOfRange),
            "{e:?}"
        );
        let seq = now as u64 * 1000;
        assert_eq!(
            fleet.apply(&s, seq, vec![snap(now + 1)], now + 1),
            Ok(Applied::New { gpu_samples: 1 })
        );
    }
}
