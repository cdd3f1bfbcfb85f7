//! Reads the GPUs on the agent's interval, off the async runtime, and turns each
//! reading into a batch for the uplink and an update of the local view.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

use gpulse_exposition::HostView;
use gpulse_gpu::{BackendError, GpuBackend, HostIdentity, Snapshot};
use gpulse_proto::v1;

use crate::local::LocalHost;
use crate::pod_resources::PodResources;
use crate::uplink::Shared;

/// Opens the GPU backend; called again after a failure, every `retry`.
pub type BackendOpener = Box<dyn Fn() -> Result<Box<dyn GpuBackend>, BackendError> + Send + Sync>;

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The first sequence number of this agent process: microseconds since the epoch, so a
/// restarted agent never reuses a number the collector has already seen for this boot.
pub fn first_seq() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

pub struct Sampler {
    pub opener: BackendOpener,
    pub identity: HostIdentity,
    pub interval: Duration,
    pub retry: Duration,
    /// Seq of the first batch; see [`first_seq`].
    pub first_seq: u64,
    pub shared: Arc<Shared>,
    pub local: Arc<LocalHost>,
    pub hello: watch::Sender<v1::Hello>,
    /// Which pod holds each GPU, when the kubelet's socket is configured.
    pub pod_resources: Option<PodResources>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// Announces the host with `backend`'s inventory, or with none and the reason.
    fn announce(&self, backend: Result<&dyn GpuBackend, &BackendError>) {
        let mut identity = self.identity.clone();
        let inventory = match backend {
            Ok(b) => b.inventory().to_vec(),
            Err(e) => {
                identity.gpu_backend_error = e.kind().to_string();
                Vec::new()
            }
        };
        let interval_ms = self.interval.as_millis() as u64;
        self.hello
            .send_replace(gpulse_proto::hello(&identity, &inventory, interval_ms));
        // The local /metrics carries the same findings as the collector's.
        self.local.update(|v| {
            *v = Some(
                HostView::new(identity, inventory, now_unix_ms())
                    .with_findings_readings(gpulse_exposition::DEFAULT_FINDINGS_READINGS),
            )
        });
    }

    /// Opens the backend; the first failure is an ERROR (an operator must act), later
    /// ones are DEBUG while the agent keeps retrying.
    fn open(&self, first: bool) -> Option<Arc<Mutex<Box<dyn GpuBackend>>>> {
        match (self.opener)() {
            Ok(b) => {
                info!(gpus = b.inventory().len(), "GPU backend ready");
                self.announce(Ok(b.as_ref()));
                Some(Arc::new(Mutex::new(b)))
            }
            Err(e) => {
                if first {
                    error!(reason = e.kind(), retry_every = ?self.retry, "cannot read GPUs: {e}; the agent keeps running, reports the reason and retries");
                } else {
                    debug!(reason = e.kind(), "GPU backend still unavailable: {e}");
                }
                self.announce(Err(&e));
                None
            }
        }
    }

    /// Samples until `stop` turns true; `ready` fires once the first Hello is known.
    pub async fn run_with_ready(
        self,
        mut stop: watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut backend = self.open(true);
        let _ = ready.send(());
        let mut last_attempt = Instant::now();
        let mut seq = self.first_seq;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
            }
            let Some(b) = backend.clone() else {
                if last_attempt.elapsed() >= self.retry {
                    last_attempt = Instant::now();
                    backend = self.open(false);
                }
                continue;
            };
            let now = now_unix_ms();
            let (shared, local) = (self.shared.clone(), self.local.clone());
            let pods = self.pod_resources.clone();
            // Reading NVML blocks, and so may writing the spool: both run off the runtime.
            let done = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let mut backend = b.lock().unwrap_or_else(|p| p.into_inner());
                let mut gpus = backend.sample(now);
                if let Some(pods) = &pods {
                    pods.attach(backend.inventory(), &mut gpus);
                }
                drop(backend);
                shared
                    .metrics
                    .sample_duration
                    .set(started.elapsed().as_secs_f64());
                record(
                    &shared,
                    &local,
                    seq,
                    Snapshot {
                        timestamp_unix_ms: now,
                        gpus,
                    },
                );
            })
            .await;
            if let Err(e) = done {
                warn!(error = %e, "a GPU reading panicked; skipping this interval");
                continue;
            }
            seq += 1;
        }
    }
}

/// What the agent does with each reading once the backend returned it: encode it for
/// the wire, show it on the local /metrics, and queue it for the collector.
pub fn record(shared: &Shared, local: &LocalHost, seq: u64, snapshot: Snapshot) {
    let wire = v1::Snapshot::from(&snapshot);
    let now = snapshot.timestamp_unix_ms;
    let connected = shared.metrics.connected.get() == 1;
    local.update(|v| {
        if let Some(view) = v {
            view.connected = connected;
            view.last_seen_unix_ms = now;
            if let Err(e) = view.apply(snapshot) {
                debug!(error = %e, "local view refused a snapshot");
            }
        }
    });
    shared.enqueue(v1::Batch {
        seq,
        snapshots: vec![wire],
        agent: Some(shared.metrics.stats()),
    });
}
