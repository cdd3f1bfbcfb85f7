//! The latest state of one host, as exposition needs it.

use gpulse_gpu::diagnosis::{self, Finding, GpuWindow, Timed};
use gpulse_gpu::{DeviceInfo, DeviceSample, HostIdentity, Snapshot};

/// The most readings kept per GPU for findings: the rules are evaluated on every
/// scrape, and a reading with full telemetry takes about 2.7 KB.
pub const MAX_FINDINGS_READINGS: usize = 64;
/// Readings per GPU the diagnosis rules look at by default: 30 s at the agent's
/// default 5 s interval.
pub const DEFAULT_FINDINGS_READINGS: usize = 6;

/// A snapshot named a GPU the host did not list in its inventory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GPU {uuid:?} is not in the inventory this agent sent in its Hello")]
pub struct UnknownGpu {
    pub uuid: String,
}

/// One GPU: what it is and its latest reading.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuView {
    pub info: DeviceInfo,
    /// The newest reading while none are kept for findings; with readings kept it is
    /// the last of them (kept once: [`GpuView::latest`] finds it in either place).
    newest: Option<DeviceSample>,
    /// The XID code seen most recently (for the DCGM view's last-XID gauge).
    pub last_xid: Option<u64>,
    /// The newest readings, oldest first, for the diagnosis rules (see
    /// [`HostView::with_findings_readings`]); empty when findings are off.
    pub recent: Vec<Timed>,
}

impl GpuView {
    /// The newest reading applied.
    pub fn latest(&self) -> Option<&DeviceSample> {
        match self.recent.last() {
            Some(t) => Some(&t.sample),
            None => self.newest.as_ref(),
        }
    }

    /// This GPU's recent readings as the diagnosis rules see them.
    pub fn window(&self) -> GpuWindow<'_> {
        GpuWindow {
            info: &self.info,
            samples: &self.recent,
        }
    }

    /// What the diagnosis rules find in this GPU's recent readings.
    pub fn findings(&self) -> Vec<Finding> {
        if self.recent.is_empty() {
            return Vec::new();
        }
        diagnosis::diagnose(&self.window())
    }
}

/// An agent's own delivery counters, as its newest batch reported them (cumulative
/// since the agent process started; the last two are gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentStats {
    pub batches_dropped: u64,
    pub batches_rejected: u64,
    pub spool_errors: u64,
    pub buffered_batches: u64,
    pub spool_bytes: u64,
}

/// One host: who it is, its GPUs, and whether its agent is connected.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    pub identity: HostIdentity,
    pub gpus: Vec<GpuView>,
    /// Whether the agent's stream is open now.
    pub connected: bool,
    /// When the collector last heard from the agent (ms since the Unix epoch).
    pub last_seen_unix_ms: i64,
    /// Timestamp of the newest snapshot applied; older ones do not overwrite it.
    pub latest_snapshot_unix_ms: Option<i64>,
    /// Readings kept per GPU for findings; 0: no findings.
    pub findings_readings: usize,
    /// What the agent says of its own delivery; `None` until a batch says it (and
    /// always on the agent's local view, whose registry shows its own).
    pub agent_stats: Option<AgentStats>,
}

impl HostView {
    pub fn new(identity: HostIdentity, inventory: Vec<DeviceInfo>, now_unix_ms: i64) -> HostView {
        HostView {
            identity,
            gpus: inventory
                .into_iter()
                .map(|info| GpuView {
                    info,
                    newest: None,
                    last_xid: None,
                    recent: Vec::new(),
                })
                .collect(),
            connected: true,
            last_seen_unix_ms: now_unix_ms,
            latest_snapshot_unix_ms: None,
            findings_readings: 0,
            agent_stats: None,
        }
    }

    /// Keeps the newest `readings` readings of each GPU (at most
    /// [`MAX_FINDINGS_READINGS`]) so that the diagnosis rules can run on them.
    pub fn with_findings_readings(mut self, readings: usize) -> HostView {
        self.findings_readings = readings.min(MAX_FINDINGS_READINGS);
        self
    }

    fn position(&self, uuid: &str) -> Option<usize> {
        self.gpus.iter().position(|g| g.info.uuid == uuid)
    }

    /// Checks that every GPU in the snapshot is in the inventory, without changing anything.
    pub fn check(&self, snapshot: &Snapshot) -> Result<(), UnknownGpu> {
        match snapshot
            .gpus
            .iter()
            .find(|s| self.position(&s.uuid).is_none())
        {
            Some(s) => Err(UnknownGpu {
                uuid: s.uuid.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Applies a snapshot. A snapshot older than the newest one applied leaves the view
    /// as it is (a replay after a reconnect can deliver one late). Either every GPU of
    /// the snapshot is applied or, when one is unknown, none is.
    pub fn apply(&mut self, snapshot: Snapshot) -> Result<(), UnknownGpu> {
        self.check(&snapshot)?;
        if self
            .latest_snapshot_unix_ms
            .is_some_and(|t| snapshot.timestamp_unix_ms < t)
        {
            return Ok(());
        }
        self.latest_snapshot_unix_ms = Some(snapshot.timestamp_unix_ms);
        for sample in snapshot.gpus {
            if let Some(i) = self.position(&sample.uuid) {
                let gpu = &mut self.gpus[i];
                if let Some(xid) = crate::dcgm::newest_xid(gpu.latest(), &sample) {
                    gpu.last_xid = Some(xid);
                }
                if self.findings_readings > 0 {
                    // Exactly as many as are kept, not the next power of two.
                    gpu.recent
                        .reserve_exact(self.findings_readings.saturating_sub(gpu.recent.len()));
                    if gpu.recent.len() >= self.findings_readings {
                        // At most 64 entries: shifting them is cheaper than a ring the
                        // rules could not read as one slice.
                        gpu.recent.remove(0);
                    }
                    gpu.recent.push(Timed {
                        unix_ms: snapshot.timestamp_unix_ms,
                        sample,
                    });
                } else {
                    gpu.newest = Some(sample);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpulse_gpu::GpuBackend;
    use gpulse_gpu::simulator::Simulator;

    fn host() -> (HostView, Simulator) {
        let sim = Simulator::new("gpus=2".parse().unwrap());
        let view = HostView::new(HostIdentity::default(), sim.inventory().to_vec(), 0);
        (view, sim)
    }

    #[test]
    fn an_unknown_gpu_changes_nothing() {
        let (mut view, mut sim) = host();
        let mut gpus = sim.sample(0);
        gpus[1].uuid = "GPU-not-here".into();
        let before = view.clone();
        let err = view
            .apply(Snapshot {
                timestamp_unix_ms: 1,
                gpus,
            })
            .unwrap_err();
        assert_eq!(err.uuid, "GPU-not-here");
        assert_eq!(view, before);
    }

    #[test]
    fn a_late_snapshot_does_not_overwrite_a_newer_one() {
        let (mut view, mut sim) = host();
        let old = sim.sample(0);
        let new = sim.sample(5000);
        view.apply(Snapshot {
            timestamp_unix_ms: 5000,
            gpus: new.clone(),
        })
        .unwrap();
        view.apply(Snapshot {
            timestamp_unix_ms: 0,
            gpus: old,
        })
        .unwrap();
        assert_eq!(view.gpus[0].latest(), Some(&new[0]));
    }

    #[test]
    fn findings_come_from_the_newest_readings_only() {
        let mut sim = Simulator::new("gpus=2,scenario=thermal".parse().unwrap());
        let mut view = HostView::new(HostIdentity::default(), sim.inventory().to_vec(), 0)
            .with_findings_readings(4);
        for t in 0..10 {
            view.apply(Snapshot {
                timestamp_unix_ms: t * 5000,
                gpus: sim.sample(t * 5000),
            })
            .unwrap();
        }
        for gpu in &view.gpus {
            let times: Vec<i64> = gpu.recent.iter().map(|t| t.unix_ms).collect();
            assert_eq!(times, [30_000, 35_000, 40_000, 45_000]);
            let kinds: Vec<&str> = gpu.findings().iter().map(|f| f.kind.name()).collect();
            assert!(kinds.contains(&"thermal_throttling"), "{kinds:?}");
        }
    }

    #[test]
    fn without_a_window_nothing_is_kept_or_found() {
        let mut sim = Simulator::new("gpus=1,scenario=thermal".parse().unwrap());
        let mut view = HostView::new(HostIdentity::default(), sim.inventory().to_vec(), 0);
        for t in 0..5 {
            view.apply(Snapshot {
                timestamp_unix_ms: t * 5000,
                gpus: sim.sample(t * 5000),
            })
            .unwrap();
        }
        assert!(view.gpus[0].recent.is_empty());
        assert!(view.gpus[0].findings().is_empty());
        assert_eq!(
            HostView::new(HostIdentity::default(), vec![], 0)
                .with_findings_readings(1000)
                .findings_readings,
            MAX_FINDINGS_READINGS
        );
    }
}
