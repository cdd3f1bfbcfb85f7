//! The agent's cost per GPU-sample, apart from the time NVML itself takes: what the
//! agent does with a reading (wire encoding, local view, queueing), what sending it
//! costs (protobuf bytes, gzipped as tonic's gzip does on the stream), and the NVML
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
    // The same with a disk spool: each reading is written and fdatasync'ed before it
    // counts as kept. The spool lives in the target directory, on the disk the agent's
    // would be on, not in a tmpfs.
    let spool_dir = tempfile::Builder::new()
        .prefix("spool-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let (spool, _) = gpulse_agent::spool::Spool::open(spool_dir.path(), 64 << 20).unwrap();
    let (_registry, metrics) = local::registry().unwrap();
    let spooled = Shared::with_buffer(
        gpulse_agent::buffer::Buffer::with_spool(720, spool),
        metrics,
    );
    group.bench_function("record_reading_8_gpus_spooled", |b| {
        b.iter(|| {
            seq += 1;
            record(
                &spooled,
                &local,
                seq,
                readings[seq as usize % readings.len()].clone(),
            );
        })
    });
    group.finish();
}

/// The NVML backend reading GPUs through the NVML test library (libgpulse_nvml_mock):
/// the backend's own work plus the library's, which stands in for the driver. The
/// library takes its GPUs from GPULSE_NVML_MOCK when NVML initialises.
///
/// Run: cargo build --release -p gpulse-nvml-mock &&
///      GPULSE_NVML_MOCK=gpus=8,model=h100-sxm cargo bench -p gpulse-agent --bench sampling
fn nvml_backend_over_test_library(c: &mut Criterion) {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let lib = profile_dir.join("libgpulse_nvml_mock.so");
    if !lib.exists() || std::env::var_os("GPULSE_NVML_MOCK").is_none() {
        eprintln!(
            "skipping the NVML backend case: build {} and set GPULSE_NVML_MOCK (see this file)",
            lib.display()
        );
        return;
    }
    let mut backend = gpulse_gpu::nvml::NvmlBackend::open(Some(lib.as_os_str())).unwrap();
    let gpus = backend.inventory().len() as u64;
    let mut group = c.benchmark_group("agent");
    group.throughput(Throughput::Elements(gpus));
    group.bench_function("nvml_backend_sample_test_library", |b| {
        b.iter(|| backend.sample(0))
    });
    group.finish();
}

/// What the uplink's transport does with each batch: tonic encodes the message and, with
/// `compression = "gzip"`, gzips it (flate2 at level 6, tonic/src/codec/compression.rs).
fn sending_a_batch(c: &mut Criterion) {
    use std::io::Write;

    use gpulse_proto::v1;
    use prost::Message;

    let mut sim = Simulator::new(format!("gpus={GPUS},scenario=training").parse().unwrap());
    let messages: Vec<v1::AgentMessage> = (0..64)
        .map(|t| v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Batch(v1::Batch {
                seq: t as u64,
                snapshots: vec![v1::Snapshot::from(&Snapshot {
                    timestamp_unix_ms: t * 5000,
                    gpus: sim.sample(t * 5000),
                })],
                agent: Some(v1::AgentStats::default()),
            })),
        })
        .collect();
    let mut group = c.benchmark_group("agent");
    group.throughput(Throughput::Elements(GPUS));
    let mut i = 0usize;
    group.bench_function("encode_batch_8_gpus", |b| {
        b.iter(|| {
            i += 1;
            messages[i % messages.len()].encode_to_vec()
        })
    });
    group.bench_function("encode_and_gzip_batch_8_gpus", |b| {
        b.iter(|| {
            i += 1;
            let bytes = messages[i % messages.len()].encode_to_vec();
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(bytes.len() / 2),
                flate2::Compression::new(6),
            );
            gz.write_all(&bytes).unwrap();
            gz.finish().unwrap()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    agent_per_reading,
    sending_a_batch,
    nvml_backend_over_test_library
);
criterion_main!(benches);
