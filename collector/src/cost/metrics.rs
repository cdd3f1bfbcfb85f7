//! Per-GPU cost series for Prometheus: the hourly price, whether the GPU is priced, and
//! counters of cost, idle cost, throttle loss, busy and observed seconds from the ledger.
//! Series follow the fleet: a GPU whose agent expired disappears with its other series.
//!
//! Written straight into the scrape's text, as the fleet's series are: seven series per
//! GPU through `prometheus::proto` objects cost a quarter of a large fleet's scrape.

use std::sync::Arc;

use gpulse_exposition::names::{self, Def};
use gpulse_exposition::{Families, HostSource, HostView, SeriesSink};

use super::pricing::{PriceQuery, Pricing};
use super::store::Totals;

/// The cost series of every GPU a fleet holds.
#[derive(Debug, Clone)]
pub struct CostSeries {
    pricing: Arc<Pricing>,
    totals: Arc<Totals>,
}

impl CostSeries {
    pub fn new(pricing: Arc<Pricing>, totals: Arc<Totals>) -> Self {
        CostSeries { pricing, totals }
    }

    /// Appends the cost families of every GPU of `source` to `out`.
    pub fn render(&self, source: &dyn HostSource, out: &mut String) {
        let mut families = Families::new(&names::COST);
        self.write(source, &mut families);
        families.finish(out);
    }

    /// Writes the cost series of every GPU of `source` into `sink`.
    pub fn write<S: SeriesSink>(&self, source: &dyn HostSource, sink: &mut S) {
        source.for_each_host(&mut |host| self.add_host(host, sink));
    }

    fn add_host<S: SeriesSink>(&self, host: &HostView, families: &mut S) {
        let id = &host.identity;
        // Taken per host, inside the fleet's lock, as the ledger writer never takes the
        // fleet's: one lock order.
        let totals = self.totals.read().unwrap_or_else(|p| p.into_inner());
        for gpu in &host.gpus {
            let d = &gpu.info;
            let index = d.index.to_string();
            let base = [
                (names::LABEL_HOST, id.agent_id.as_str()),
                (names::LABEL_GPU, index.as_str()),
                (names::LABEL_UUID, d.uuid.as_str()),
                (names::LABEL_MODEL, d.model.as_str()),
            ];
            let price = self.pricing.price(&PriceQuery {
                provider: &id.provider.provider.value,
                instance_type: &id.provider.instance_type.value,
                model: &d.model,
                labels: &id.labels,
            });
            let t = totals
                .get(&(id.agent_id.clone(), d.uuid.clone()))
                .copied()
                .unwrap_or_default();
            let series: [(&Def, Option<f64>); 7] = [
                (
                    &names::GPU_HOURLY_PRICE,
                    price.as_ref().map(|p| p.usd_per_gpu_hour),
                ),
                (
                    &names::GPU_PRICED,
                    Some(f64::from(u8::from(price.is_some()))),
                ),
                (&names::GPU_COST, Some(t.list_cost)),
                (&names::GPU_IDLE_COST, Some(t.idle_cost)),
                (&names::GPU_THROTTLE_LOSS, Some(t.throttle_loss)),
                (&names::GPU_BUSY_SECONDS, Some(t.busy_s)),
                (&names::GPU_OBSERVED_SECONDS, Some(t.observed_s)),
            ];
            for (def, value) in series {
                if let Some(v) = value {
                    families.series(def, &base, &[], v);
                }
            }
        }
    }
}
