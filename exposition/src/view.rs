//! The latest state of one host, as exposition needs it.

use gpulse_gpu::{DeviceInfo, DeviceSample, HostIdentity, Snapshot};

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
    pub latest: Option<DeviceSample>,
    /// The XID code seen most recently (for the DCGM view's last-XID gauge).
    pub last_xid: Option<u64>,
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
}

impl HostView {
    pub fn new(identity: HostIdentity, inventory: Vec<DeviceInfo>, now_unix_ms: i64) -> HostView {
        HostView {
            identity,
            gpus: inventory
                .into_iter()
                .map(|info| GpuView {
                    info,
                    latest: None,
                    last_xid: None,
                })
                .collect(),
            connected: true,
            last_seen_unix_ms: now_unix_ms,
            latest_snapshot_unix_ms: None,
        }
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
                if let Some(xid) = crate::dcgm::newest_xid(gpu.latest.as_ref(), &sample) {
                    gpu.last_xid = Some(xid);
                }
                gpu.latest = Some(sample);
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
        assert_eq!(view.gpus[0].latest.as_ref(), Some(&new[0]));
    }
}
