//! Per-GPU cost series for Prometheus: the hourly price, whether the GPU is priced, and
//! counters of cost, idle cost, throttle loss, busy and observed seconds from the ledger.
//! Series follow the fleet: a GPU whose agent expired disappears with its other series.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use gpulse_exposition::names::{self, Def, Kind};
use gpulse_exposition::{HostSource, HostView};

use super::pricing::{PriceQuery, Pricing};
use super::store::Totals;

/// A `prometheus::core::Collector` of the cost series of every GPU a source knows.
#[derive(Debug)]
pub struct CostCollector<S> {
    source: S,
    pricing: Arc<Pricing>,
    totals: Arc<Totals>,
    /// Fixed descriptors: the families are known, and a registry tells collectors apart by them.
    descs: Vec<Desc>,
}

impl<S: HostSource> CostCollector<S> {
    pub fn new(source: S, pricing: Arc<Pricing>, totals: Arc<Totals>) -> Self {
        let labels = [
            names::LABEL_HOST,
            names::LABEL_GPU,
            names::LABEL_UUID,
            names::LABEL_MODEL,
        ]
        .map(String::from)
        .to_vec();
        let descs = names::COST
            .iter()
            .map(|d| {
                Desc::new(
                    d.name.to_string(),
                    d.help.to_string(),
                    labels.clone(),
                    Default::default(),
                )
                .expect("the cost metric names and labels are valid")
            })
            .collect();
        CostCollector {
            source,
            pricing,
            totals,
            descs,
        }
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn metric(def: &Def, labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut m = Metric::from_label(labels);
    match def.kind {
        Kind::Gauge => {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        Kind::Counter => {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        }
    }
    m
}

impl<S: HostSource> CostCollector<S> {
    fn add_host(&self, host: &HostView, buckets: &mut [Vec<Metric>]) {
        let id = &host.identity;
        let totals = self.totals.read().unwrap_or_else(|p| p.into_inner());
        for gpu in &host.gpus {
            let d = &gpu.info;
            let index = d.index.to_string();
            let labels = || {
                vec![
                    label(names::LABEL_HOST, &id.agent_id),
                    label(names::LABEL_GPU, &index),
                    label(names::LABEL_UUID, &d.uuid),
                    label(names::LABEL_MODEL, &d.model),
                ]
            };
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
            let mut push = |def: &Def, value: Option<f64>| {
                if let (Some(i), Some(v)) =
                    (names::COST.iter().position(|x| x.name == def.name), value)
                {
                    buckets[i].push(metric(def, labels(), v));
                }
            };
            push(
                &names::GPU_HOURLY_PRICE,
                price.as_ref().map(|p| p.usd_per_gpu_hour),
            );
            push(
                &names::GPU_PRICED,
                Some(f64::from(u8::from(price.is_some()))),
            );
            push(&names::GPU_COST, Some(t.list_cost));
            push(&names::GPU_IDLE_COST, Some(t.idle_cost));
            push(&names::GPU_THROTTLE_LOSS, Some(t.throttle_loss));
            push(&names::GPU_BUSY_SECONDS, Some(t.busy_s));
            push(&names::GPU_OBSERVED_SECONDS, Some(t.observed_s));
        }
    }
}

impl<S: HostSource> Collector for CostCollector<S> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut buckets = vec![Vec::new(); names::COST.len()];
        self.source
            .for_each_host(&mut |host| self.add_host(host, &mut buckets));
        names::COST
            .iter()
            .zip(buckets)
            .filter(|(_, m)| !m.is_empty())
            .map(|(def, metrics)| {
                let mut f = MetricFamily::default();
                f.set_name(def.name.to_string());
                f.set_help(def.help.to_string());
                f.set_field_type(match def.kind {
                    Kind::Gauge => MetricType::GAUGE,
                    Kind::Counter => MetricType::COUNTER,
                });
                f.set_metric(metrics);
                f
            })
            .collect()
    }
}
