//! The agent's own metrics and its optional local /metrics, which shows this host
//! under the same names the collector uses.

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use gpulse_exposition::names::{self, Def};
use gpulse_exposition::{ExpositionOptions, HostSource, HostView};

/// The latest view of this host, for the local /metrics.
#[derive(Debug, Default)]
pub struct LocalHost {
    view: RwLock<Option<HostView>>,
}

impl LocalHost {
    pub fn update(&self, f: impl FnOnce(&mut Option<HostView>)) {
        let mut guard = self.view.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }

    pub fn snapshot(&self) -> Option<HostView> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl HostSource for LocalHost {
    fn for_each_host(&self, f: &mut dyn FnMut(&HostView)) {
        if let Some(v) = self.view.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            f(v);
        }
    }
}

/// Counters and gauges about the agent itself.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    pub batches_sent: IntCounter,
    pub batches_acked: IntCounter,
    pub batches_rejected: IntCounter,
    pub batches_dropped: IntCounter,
    pub buffered_batches: IntGauge,
    pub spool_bytes: IntGauge,
    pub spool_errors: IntCounter,
    pub connects: IntCounterVec,
    pub connected: IntGauge,
    /// 1 for the reason the agent is not connected; all 0 while it is.
    pub connection_error: IntGaugeVec,
    /// 1 for the kubelet's state as the pod-resources client last saw it.
    pub kubelet_state: IntGaugeVec,
    pub sample_duration: Gauge,
}

fn opts(def: &Def) -> Opts {
    Opts::new(def.name, def.help)
}

impl AgentMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<AgentMetrics> {
        let m = AgentMetrics {
            batches_sent: IntCounter::with_opts(opts(&names::AGENT_BATCHES_SENT))?,
            batches_acked: IntCounter::with_opts(opts(&names::AGENT_BATCHES_ACKED))?,
            batches_rejected: IntCounter::with_opts(opts(&names::AGENT_BATCHES_REJECTED))?,
            batches_dropped: IntCounter::with_opts(opts(&names::AGENT_BATCHES_DROPPED))?,
            buffered_batches: IntGauge::with_opts(opts(&names::AGENT_BUFFERED_BATCHES))?,
            spool_bytes: IntGauge::with_opts(opts(&names::AGENT_SPOOL_BYTES))?,
            spool_errors: IntCounter::with_opts(opts(&names::AGENT_SPOOL_ERRORS))?,
            connects: IntCounterVec::new(opts(&names::AGENT_CONNECTS), &["result"])?,
            connected: IntGauge::with_opts(opts(&names::AGENT_CONNECTED))?,
            connection_error: IntGaugeVec::new(opts(&names::AGENT_CONNECTION_ERROR), &["reason"])?,
            kubelet_state: IntGaugeVec::new(opts(&names::AGENT_KUBELET_STATE), &["state"])?,
            sample_duration: Gauge::with_opts(opts(&names::AGENT_SAMPLE_DURATION))?,
        };
        registry.register(Box::new(m.batches_sent.clone()))?;
        registry.register(Box::new(m.batches_acked.clone()))?;
        registry.register(Box::new(m.batches_rejected.clone()))?;
        registry.register(Box::new(m.batches_dropped.clone()))?;
        registry.register(Box::new(m.buffered_batches.clone()))?;
        registry.register(Box::new(m.spool_bytes.clone()))?;
        registry.register(Box::new(m.spool_errors.clone()))?;
        registry.register(Box::new(m.connects.clone()))?;
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.connection_error.clone()))?;
        registry.register(Box::new(m.kubelet_state.clone()))?;
        registry.register(Box::new(m.sample_duration.clone()))?;
        m.set_kubelet_state(&crate::pod_resources::KubeletState::Starting);
        for result in ["ok", "error"] {
            m.connects.with_label_values(&[result]);
        }
        // Not connected yet, and no attempt has failed: every reason 0.
        for kind in crate::link::LinkError::ALL {
            m.connection_error.with_label_values(&[kind.as_str()]);
        }
        Ok(m)
    }
}

impl AgentMetrics {
    /// Connected (`None`), or not and why: `gpulse_agent_connected` and
    /// `gpulse_agent_connection_error{reason}` always agree.
    pub fn set_link_error(&self, error: Option<crate::link::LinkError>) {
        self.connected.set(i64::from(error.is_none()));
        for kind in crate::link::LinkError::ALL {
            self.connection_error
                .with_label_values(&[kind.as_str()])
                .set(i64::from(error == Some(kind)));
        }
    }

    /// `gpulse_agent_kubelet_state{state}`: 1 for `state`, 0 for the others.
    pub fn set_kubelet_state(&self, state: &crate::pod_resources::KubeletState) {
        for label in crate::pod_resources::KubeletState::LABELS {
            self.kubelet_state
                .with_label_values(&[label])
                .set(i64::from(label == state.label()));
        }
    }

    /// The delivery counters the collector shows for this agent (sent in every batch).
    pub fn stats(&self) -> gpulse_proto::v1::AgentStats {
        gpulse_proto::v1::AgentStats {
            batches_dropped: self.batches_dropped.get(),
            batches_rejected: self.batches_rejected.get(),
            spool_errors: self.spool_errors.get(),
            buffered_batches: self.buffered_batches.get().max(0) as u64,
            spool_bytes: self.spool_bytes.get().max(0) as u64,
        }
    }
}

/// A registry with the agent's own metrics; the host's series are rendered beside it.
pub fn registry() -> prometheus::Result<(Registry, AgentMetrics)> {
    let registry = Registry::new();
    let metrics = AgentMetrics::new(&registry)?;
    gpulse_exposition::build_info::register(&registry)?;
    Ok((registry, metrics))
}

pub fn router(registry: Registry, host: Arc<LocalHost>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state((registry, host))
}

async fn metrics(State((registry, host)): State<(Registry, Arc<LocalHost>)>) -> impl IntoResponse {
    // One host: every process on its own is affordable, and what `top` and a person
    // on the host want.
    let options = ExpositionOptions {
        per_process: true,
        ..ExpositionOptions::default()
    };
    let body = gpulse_exposition::render(&host, options, &registry);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
