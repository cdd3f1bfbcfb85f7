//! Cost and efficiency: what each GPU costs ([`pricing`]), what it did with the time
//! ([`ledger`]), kept per GPU per hour behind one storage boundary ([`store`]: SQLite
//! by default, [`sqlite`], or PostgreSQL shared by several collectors, [`postgres`]), and reports
//! over any window ([`report`], [`page`]) and as Prometheus counters ([`metrics`]).

pub mod holders;
pub mod ledger;
pub mod metrics;
pub mod page;
pub mod postgres;
pub mod pricing;
pub mod report;
pub mod sqlite;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use gpulse_gpu::{DeviceInfo, HostIdentity};

use crate::config::CollectorConfig;
use ledger::GpuTerms;
use pricing::{PriceQuery, Pricing, PricingError};
use store::{GpuDims, LedgerGpu, LedgerHost, LedgerTarget, StoreError, StoreHandle};

/// Why cost accounting could not start.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error(transparent)]
    Pricing(#[from] PricingError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Prices and the ledger's store, shared by ingest, HTTP and exposition.
#[derive(Debug, Clone)]
pub struct Cost {
    pub pricing: Arc<Pricing>,
    pub store: StoreHandle,
}

impl Cost {
    /// Loads the catalogues and opens the ledger: `ledger.url`, else the SQLite file
    /// under the data directory.
    pub fn start(config: &CollectorConfig) -> Result<Cost, CostError> {
        let pricing = Pricing::load(config.pricing_file.as_deref(), &config.bare_metal)?;
        let target = LedgerTarget::new(config.ledger.url.as_deref(), &config.data_dir)?;
        let store = store::start(&target, &config.ledger)?;
        Ok(Cost {
            pricing: Arc::new(pricing),
            store,
        })
    }

    /// How the ledger sees a host that just said Hello: its GPUs, their dimensions and
    /// prices, and its sampling interval.
    pub fn ledger_host(
        &self,
        identity: &HostIdentity,
        inventory: &[DeviceInfo],
        interval_ms: u64,
    ) -> LedgerHost {
        ledger_host(&self.pricing, identity, inventory, interval_ms)
    }
}

/// As [`Cost::ledger_host`], with the pricing given.
pub fn ledger_host(
    pricing: &Pricing,
    identity: &HostIdentity,
    inventory: &[DeviceInfo],
    interval_ms: u64,
) -> LedgerHost {
    let p = &identity.provider;
    let mut gpus = HashMap::with_capacity(inventory.len());
    for d in inventory {
        let price = pricing.price(&PriceQuery {
            provider: &p.provider.value,
            instance_type: &p.instance_type.value,
            model: &d.model,
            labels: &identity.labels,
        });
        gpus.insert(
            d.uuid.clone(),
            LedgerGpu {
                dims: GpuDims {
                    host: identity.agent_id.clone(),
                    uuid: d.uuid.clone(),
                    index: d.index,
                    model: d.model.clone(),
                    provider: p.provider.value.clone(),
                    region: p.region.value.clone(),
                    zone: p.zone.value.clone(),
                    instance_type: p.instance_type.value.clone(),
                    labels: identity.labels.clone(),
                    // Who holds the GPU comes with each reading: the writer sets it.
                    ..GpuDims::default()
                },
                terms: GpuTerms {
                    max_sm_clock_mhz: d.max_sm_clock_mhz,
                    price,
                    interval_ms,
                    boot_id: identity.boot_id.clone(),
                },
            },
        );
    }
    LedgerHost {
        agent_id: identity.agent_id.clone(),
        gpus,
    }
}
