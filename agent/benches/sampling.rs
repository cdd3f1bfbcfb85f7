//! The agent's cost per GPU-sample, apart from the time NVML itself takes: what the
//! agent does with a reading (wire encoding, local view, queueing), and the NVML
//! backend's own work on top of a test library that exports the NVML C ABI.
//!
//! Run: cargo bench -p gpulse-agent --bench sampling

#![allow(clippy::unwrap_used, reason = "a bench fails by panicking")]

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use gpulse_agent::local::{self, LocalHost};
use gpulse_agent::sampler::record;
use gpulse_agent::uplink::Shared;
use gpulse_exposition::HostView;
use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, HostIdentity, Snapshot};

const GPUS: u64 = 8;

fn agent_per_reading(c: &mut Criterion) {
    let mut sim = Simulator::new(format!("gpus={GPUS},scenario=training").parse().unwrap());
    let readings: Vec<Snapshot> = (0..64)
        .map(|t| Snapshot {
            timestamp_unix_ms: t * 1000,
            gpus: sim.sample(t * 1000),
        })
        .collect();
    let local = Arc::new(LocalHost::default());
    local.update(|v| {
        *v = Some(HostView::new(
            HostIdentity::default(),
            sim.inventory().to_vec(),
            0,
        ))
    });
    let (_registry, metrics) = local::registry().unwrap();
    let shared = Shared::new(720, metrics);
    let mut seq = 0u64;
    let mut group = c.benchmark_group("agent");
    group.throughput(Throughput::Elements(GPUS));
    group.bench_function("record_reading_8_gpus", |b| {
        b.iter(|| {
            seq += 1;
            record(
                &shared,
                &local,
                seq,
                readings[seq as usize % readings.len()].clone(),
            );
        })
    });
    group.finish();
}

criterion_group!(benches, agent_per_reading);
criterion_main!(benches);
