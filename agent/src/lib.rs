//! gpulse-agent: the daemon on every GPU host.
//!
//! It reads the host's GPUs through a [`gpulse_gpu::GpuBackend`] (NVML, or the
//! simulator with `--simulate`) on its interval ([`sampler`]), keeps every batch until
//! the collector acknowledges it ([`buffer`]) and streams them over gRPC, reconnecting
//! with jittered backoff and replaying what was not acknowledged ([`uplink`]), over
//! TLS to an `https://` collector ([`tls`]). It can
//! also serve its own host on a local /metrics ([`local`]). At start-up it learns where
//! it runs: provider, region, zone and instance type ([`provider`]).
//!
//! It does not aggregate across hosts, price anything or evaluate alerts: the
//! collector does.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod buffer;
pub mod capture;
pub mod config;
pub mod diagnose;
pub mod identity;
pub mod link;
pub mod local;
pub mod pod_resources;
pub mod provider;
pub mod sampler;
pub mod spool;
pub mod tls;
pub mod top;
pub mod uplink;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{BackendError, GpuBackend, HostIdentity};

use crate::buffer::Buffer;
use crate::config::{AgentConfig, ConfigError};
use crate::local::{AgentMetrics, LocalHost};
use crate::sampler::{BackendOpener, Sampler};
use crate::uplink::{Shared, UplinkConfig};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot listen for local /metrics on {addr}: {source}; is another process using the port?"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read auth token file {path}: {source}")]
    Token {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The backend the configuration asks for: the simulator, or NVML.
pub fn backend_opener(config: &AgentConfig) -> Result<BackendOpener, ConfigError> {
    if let Some(path) = &config.replay {
        let capture = capture::Capture::read(path).map_err(|e| ConfigError::Invalid {
            setting: "replay",
            reason: e.to_string(),
        })?;
        return Ok(Box::new(move || {
            Ok(Box::new(capture::Replay::new(capture.clone())) as Box<dyn GpuBackend>)
        }));
    }
    if let Some(mut spec) = config.sim_spec()? {
        // Two simulated agents with the same seed must not report the same GPUs.
        spec.host = config
            .agent_id
            .clone()
            .unwrap_or_else(|| sysinfo::System::host_name().unwrap_or_default());
        return Ok(Box::new(move || {
            Ok(Box::new(Simulator::new(spec.clone())) as Box<dyn GpuBackend>)
        }));
    }
    let library = config.nvml_library.clone();
    let procs = gpulse_gpu::workload::ProcReader::new(config.proc_root.clone());
    Ok(Box::new(move || {
        gpulse_gpu::nvml::NvmlBackend::open_with(
            library.as_deref().map(|p| p.as_os_str()),
            procs.clone(),
        )
        .map(|b| Box::new(b) as Box<dyn GpuBackend>)
    }))
}

/// Whether NVML can be opened here (used to choose real GPUs over the simulator).
pub fn nvml_available() -> Result<usize, BackendError> {
    gpulse_gpu::nvml::NvmlBackend::open(None).map(|b| b.inventory().len())
}

/// A running agent.
#[derive(Debug)]
pub struct RunningAgent {
    /// Where the local /metrics listens, when enabled.
    pub http_addr: Option<SocketAddr>,
    pub metrics: AgentMetrics,
    pub local: Arc<LocalHost>,
    /// Which pod holds each GPU, when the kubelet's socket is configured.
    pub pod_resources: Option<pod_resources::PodResources>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningAgent {
    /// Stops sampling and closes the stream. Unacknowledged batches stay in the spool
    /// when there is one; otherwise they are lost.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts an agent with the given identity and backend. `config` must be valid.
pub async fn start(
    config: AgentConfig,
    identity: HostIdentity,
    opener: BackendOpener,
) -> Result<RunningAgent, AgentError> {
    config.validate()?;
    let auth_token = match &config.auth_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| AgentError::Token {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let tls = tls::ClientTls::from_config(&config);
    if let Some(tls) = &tls {
        tls.load()?;
    }
    let local = Arc::new(LocalHost::default());
    let (registry, metrics) = local::registry()?;
    let (stop, stop_rx) = watch::channel(false);
    let pod_resources = (!config.pod_resources_socket.as_os_str().is_empty()).then(|| {
        let metrics = metrics.clone();
        pod_resources::PodResources::spawn(
            config.pod_resources_socket.clone(),
            config.pod_resources_refresh,
            pod_resources::DEFAULT_TIMEOUT,
            stop_rx.clone(),
            move |view| metrics.set_kubelet_state(&view.state),
        )
    });
    let mut tasks = Vec::new();

    let http_addr = match config.http_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Bind { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| AgentError::Bind { addr, source })?;
            let mut http_stop = stop_rx.clone();
            let local = local.clone();
            tasks.push(tokio::spawn(async move {
                let serve = axum::serve(listener, local::router(registry, local))
                    .with_graceful_shutdown(async move {
                        let _ = http_stop.wait_for(|s| *s).await;
                    });
                if let Err(e) = serve.await {
                    error!(error = %e, "local /metrics server failed");
                }
            }));
            info!(addr = %bound, "local /metrics listening");
            Some(bound)
        }
        None => None,
    };

    let mut first_seq = sampler::first_seq();
    let buffer = match &config.spool_dir {
        Some(dir) => {
            let (spool, recovery) = spool::Spool::open(dir, config.spool_max_bytes)?;
            if recovery != spool::Recovery::default() {
                info!(
                    dir = %dir.display(),
                    batches = recovery.batches,
                    damaged = recovery.damaged,
                    truncated_bytes = recovery.truncated_bytes,
                    "spool recovered; its batches are sent first"
                );
            }
            metrics.spool_errors.inc_by(recovery.damaged);
            // A clock that went back must not number new batches below spooled ones.
            if let Some(max) = spool.max_seq() {
                first_seq = first_seq.max(max + 1);
            }
            Buffer::with_spool(config.max_buffered_batches, spool)
        }
        None => Buffer::new(config.max_buffered_batches),
    };
    let shared = Arc::new(Shared::with_buffer(buffer, metrics.clone()));
    let (hello_tx, hello_rx) = watch::channel(gpulse_proto::hello(&identity, &[], 0));
    let jitter_seed = identity
        .agent_id
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let sampler = Sampler {
        opener,
        identity,
        interval: config.interval,
        retry: config.nvml_retry,
        first_seq,
        shared: shared.clone(),
        local: local.clone(),
        hello: hello_tx,
        pod_resources: pod_resources.clone(),
    };
    // The first Hello must carry the inventory: open the backend before connecting.
    let sampler_stop = stop_rx.clone();
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    tasks.push(tokio::spawn(async move {
        sampler.run_with_ready(sampler_stop, opened_tx).await;
    }));
    let _ = opened_rx.await;
    let uplink_config = UplinkConfig {
        collectors: std::iter::once(config.collector.clone())
            .chain(config.failover_collectors.iter().cloned())
            .collect(),
        connect_timeout: config.connect_timeout,
        backoff_initial: config.backoff_initial,
        backoff_max: config.backoff_max,
        auth_token,
        tls,
        jitter_seed,
        compression: config.compression,
    };
    tasks.push(tokio::spawn(uplink::run(
        shared,
        uplink_config,
        hello_rx,
        stop_rx,
    )));
    Ok(RunningAgent {
        http_addr,
        metrics,
        local,
        pod_resources,
        stop,
        tasks,
    })
}
