//! Fleet state: one entry per agent, with the dedup cursor and the host view that
//! exposition reads. All changes are checked first and applied whole, so a refused
//! message leaves what is stored untouched.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use gpulse_exposition::{HostSource, HostView};
use gpulse_gpu::{DeviceInfo, HostIdentity, Snapshot};

use crate::config::Limits;
use crate::validate::{self, RejectKind, Rejection};

/// One open stream of one agent. A newer stream from the same agent supersedes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub agent_id: String,
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
    /// Highest sequence number applied for the current boot.
    last_seq: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    agents: HashMap<String, AgentEntry>,
    next_session: u64,
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

    /// Registers an agent's Hello and opens a session for its stream.
    pub fn connect(
        &self,
        identity: HostIdentity,
        inventory: Vec<DeviceInfo>,
        now_unix_ms: i64,
    ) -> Result<Session, Rejection> {
        validate::hello(&identity, &inventory, &self.limits)?;
        let mut inner = self.write();
        let agent_id = identity.agent_id.clone();
        let last_seq = match inner.agents.get(&agent_id) {
            Some(existing) => {
                let theirs = &existing.view.identity.facts.machine_id;
                let ours = &identity.facts.machine_id;
                if existing.session.is_some() && !theirs.is_empty() && theirs != ours {
                    return Err(Rejection::new(
                        RejectKind::AgentIdConflict,
                        format!(
                            "agent id {agent_id:?} is already connected from another machine \
                             (machine id {theirs}); give each host its own agent_id"
                        ),
                    ));
                }
                // The same boot continues its sequence; a new boot starts a new one.
                if existing.view.identity.boot_id == identity.boot_id {
                    existing.last_seq
                } else {
                    None
                }
            }
            None if inner.agents.len() >= self.limits.max_agents => {
                return Err(Rejection::new(
                    RejectKind::TooManyAgents,
                    format!(
                        "the collector already tracks {} agents (limits.max_agents); \
                         add a collector or raise the limit",
                        inner.agents.len()
                    ),
                ));
            }
            None => None,
        };
        inner.next_session += 1;
        let id = inner.next_session;
        inner.agents.insert(
            agent_id.clone(),
            AgentEntry {
                view: HostView::new(identity, inventory, now_unix_ms)
                    .with_findings_readings(self.findings_readings),
                session: Some(id),
                last_seq,
            },
        );
        Ok(Session { agent_id, id })
    }

    /// Applies one batch, or refuses it whole.
    pub fn apply(
        &self,
        session: &Session,
        seq: u64,
        snapshots: Vec<Snapshot>,
        now_unix_ms: i64,
    ) -> Result<Applied, ApplyError> {
        let mut inner = self.write();
        let entry = inner
            .agents
            .get_mut(&session.agent_id)
            .filter(|e| e.session == Some(session.id))
            .ok_or_else(|| ApplyError::Superseded(session.agent_id.clone()))?;
        entry.view.last_seen_unix_ms = now_unix_ms;
        if entry.last_seq.is_some_and(|last| seq <= last) {
            return Ok(Applied::Duplicate);
        }
        let view = &entry.view;
        let known = |uuid: &str| view.gpus.iter().any(|g| g.info.uuid == uuid);
        validate::snapshots(&snapshots, &known, &self.limits, now_unix_ms)?;
        let gpu_samples = snapshots.iter().map(|s| s.gpus.len()).sum();
        for snapshot in snapshots {
            entry
                .view
                .apply(snapshot)
                .expect("validated against the same inventory");
        }
        entry.last_seq = Some(seq);
        Ok(Applied::New { gpu_samples })
    }

    /// Records what an agent says of its own delivery (sent with each new batch).
    pub fn set_agent_stats(&self, session: &Session, stats: gpulse_exposition::AgentStats) {
        let mut inner = self.write();
        if let Some(entry) = inner
            .agents
            .get_mut(&session.agent_id)
            .filter(|e| e.session == Some(session.id))
        {
            entry.view.agent_stats = Some(stats);
        }
    }

    /// Marks a session's agent as disconnected, unless a newer stream replaced it.
    pub fn disconnect(&self, session: &Session, now_unix_ms: i64) {
        let mut inner = self.write();
        if let Some(entry) = inner
            .agents
            .get_mut(&session.agent_id)
            .filter(|e| e.session == Some(session.id))
        {
            entry.session = None;
            entry.view.connected = false;
            entry.view.last_seen_unix_ms = now_unix_ms;
        }
    }

    /// Forgets agents disconnected for longer than `expiry_ms`; returns their ids.
    pub fn expire(&self, now_unix_ms: i64, expiry_ms: i64) -> Vec<String> {
        let mut inner = self.write();
        let gone: Vec<String> = inner
            .agents
            .iter()
            .filter(|(_, e)| {
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
        let connected = inner
            .agents
            .values()
            .filter(|e| e.session.is_some())
            .count();
        (connected, inner.agents.len())
    }

    /// A copy of one agent's view, for tests and the API.
    pub fn host(&self, agent_id: &str) -> Option<HostView> {
        self.read().agents.get(agent_id).map(|e| e.view.clone())
    }
}

impl HostSource for Fleet {
    fn for_each_host(&self, f: &mut dyn FnMut(&HostView)) {
        let inner = self.read();
        let mut ids: Vec<&String> = inner.agents.keys().collect();
        // Stable order makes the exposition diffable and the golden file possible.
        ids.sort();
        for id in ids {
            f(&inner.agents[id].view);
        }
    }
}
