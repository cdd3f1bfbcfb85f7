//! The collector's self-metrics, registered beside the fleet's series.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use gpulse_exposition::names::{self, Def};

use crate::validate::RejectKind;

/// Counters and gauges about the collector itself.
#[derive(Debug, Clone)]
pub struct SelfMetrics {
    pub agents_connected: IntGauge,
    pub agents_known: IntGauge,
    pub agents_expired: IntCounter,
    pub agents_evicted: IntCounter,
    pub batches_received: IntCounter,
    pub duplicate_batches: IntCounter,
    pub gpu_samples_received: IntCounter,
    pub received_bytes: IntCounter,
    pub rejected_messages: IntCounterVec,
}

fn opts(def: &Def) -> Opts {
    Opts::new(def.name, def.help)
}

impl SelfMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<SelfMetrics> {
        let m = SelfMetrics {
            agents_connected: IntGauge::with_opts(opts(&names::COLLECTOR_AGENTS_CONNECTED))?,
            agents_known: IntGauge::with_opts(opts(&names::COLLECTOR_AGENTS_KNOWN))?,
            agents_expired: IntCounter::with_opts(opts(&names::COLLECTOR_AGENTS_EXPIRED))?,
            agents_evicted: IntCounter::with_opts(opts(&names::COLLECTOR_AGENTS_EVICTED))?,
            batches_received: IntCounter::with_opts(opts(&names::COLLECTOR_BATCHES_RECEIVED))?,
            duplicate_batches: IntCounter::with_opts(opts(&names::COLLECTOR_DUPLICATE_BATCHES))?,
            gpu_samples_received: IntCounter::with_opts(opts(
                &names::COLLECTOR_GPU_SAMPLES_RECEIVED,
            ))?,
            received_bytes: IntCounter::with_opts(opts(&names::COLLECTOR_RECEIVED_BYTES))?,
            rejected_messages: IntCounterVec::new(
                opts(&names::COLLECTOR_REJECTED_MESSAGES),
                &["reason"],
            )?,
        };
        gpulse_exposition::build_info::register(registry)?;
        registry.register(Box::new(m.agents_connected.clone()))?;
        registry.register(Box::new(m.agents_known.clone()))?;
        registry.register(Box::new(m.agents_expired.clone()))?;
        registry.register(Box::new(m.agents_evicted.clone()))?;
        registry.register(Box::new(m.batches_received.clone()))?;
        registry.register(Box::new(m.duplicate_batches.clone()))?;
        registry.register(Box::new(m.gpu_samples_received.clone()))?;
        registry.register(Box::new(m.received_bytes.clone()))?;
        registry.register(Box::new(m.rejected_messages.clone()))?;
        // Every reason exists from the start at 0, so rate() and alerts see the first one.
        for kind in RejectKind::ALL {
            m.rejected_messages.with_label_values(&[kind.as_str()]);
        }
        Ok(m)
    }

    pub fn reject(&self, kind: RejectKind) {
        self.rejected_messages
            .with_label_values(&[kind.as_str()])
            .inc();
    }
}
