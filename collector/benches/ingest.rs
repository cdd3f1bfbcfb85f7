//! The collector's hot paths: decoding and applying an agent's batch, and rendering
//! /metrics and the fleet-wide findings for a large fleet (1,000 hosts x 8 GPUs), each
//! with findings on (the default 6 readings per GPU) and off.
//!
//! Run: cargo bench -p gpulse-collector --bench ingest

#![allow(clippy::unwrap_used, reason = "a bench fails by panicking")]

use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prometheus::Registry;
use prost::Message;

use gpulse_collector::fleet::Fleet;
use gpulse_collector::validate::Walked;
use gpulse_exposition::ExpositionOptions;
use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, HostIdentity, Snapshot};
use gpulse_proto::v1::{self, agent_message};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn identity(i: usize) -> HostIdentity {
    HostIdentity {
        agent_id: format!("host-{i:04}"),
        hostname: format!("host-{i:04}.example"),
        boot_id: "boot".into(),
        provider: gpulse_gpu::ProviderIdentity {
            provider: gpulse_gpu::Learned::from_config("aws"),
            instance_type: gpulse_gpu::Learned::from_config("p5.48xlarge"),
            ..Default::default()
        },
        ..HostIdentity::default()
    }
}

fn decode_and_apply(c: &mut Criterion) {
    for readings in [0, 6] {
        decode_and_apply_with(c, readings);
    }
}

fn decode_and_apply_with(c: &mut Criterion, readings: usize) {
    let fleet = Fleet::with_findings_readings(Default::default(), readings);
    let mut sim = Simulator::new("gpus=8,scenario=training".parse().unwrap());
    let session = fleet
        .connect(identity(0), sim.inventory().to_vec(), now_ms())
        .unwrap();
    let t = now_ms();
    let snapshot = Snapshot {
        timestamp_unix_ms: t,
        gpus: sim.sample(t),
    };
    let bytes = v1::AgentMessage {
        msg: Some(agent_message::Msg::Batch(v1::Batch {
            seq: 0,
            snapshots: vec![v1::Snapshot::from(&snapshot)],
            agent: None,
        })),
    }
    .encode_to_vec();
    let mut seq = 0u64;
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(8));
    let name = match readings {
        0 => "decode_validate_apply_batch_8_gpus_findings_off".to_string(),
        n => format!("decode_validate_apply_batch_8_gpus_{n}_readings"),
    };
    if readings == 0 {
        // The floor: protobuf decode alone of the same bytes.
        group.bench_function("decode_only_batch_8_gpus", |b| {
            b.iter(|| v1::AgentMessage::decode(bytes.as_slice()).unwrap())
        });
    }
    group.bench_function(name, |b| {
        b.iter(|| {
            let msg = v1::AgentMessage::decode(bytes.as_slice()).unwrap();
            let Some(agent_message::Msg::Batch(batch)) = msg.msg else {
                unreachable!()
            };
            // As the ingest service does: walk the batch as it arrived, then check and
            // apply it.
            let walked = Walked::from_wire(batch.snapshots, fleet.limits()).unwrap();
            seq += 1;
            fleet.apply(&session, seq, walked, t).unwrap()
        })
    });
    group.finish();
}

/// 1,000 hosts x 8 GPUs, each with `readings` readings 5 s apart.
fn large_fleet(readings: usize) -> std::sync::Arc<Fleet> {
    let fleet = Fleet::with_findings_readings(Default::default(), readings);
    let t = now_ms();
    for i in 0..1000 {
        let mut sim = Simulator::new(format!("gpus=8,seed={i}").parse().unwrap());
        let session = fleet
            .connect(identity(i), sim.inventory().to_vec(), t)
            .unwrap();
        let snapshots: Vec<Snapshot> = (0..readings.max(1) as i64)
            .map(|k| {
                let at = t - 5_000 * (readings.max(1) as i64 - 1 - k);
                Snapshot {
                    timestamp_unix_ms: at,
                    gpus: sim.sample(at),
                }
            })
            .collect();
        fleet.apply(&session, 1, snapshots, t).unwrap();
    }
    fleet
}

fn render_large_fleet(c: &mut Criterion) {
    let registry = Registry::new();
    let mut group = c.benchmark_group("exposition");
    group.sample_size(10);
    for readings in [0, 6] {
        let fleet = large_fleet(readings);
        let render = || gpulse_exposition::render(&fleet, ExpositionOptions::default(), &registry);
        let size = render().len();
        eprintln!("exposition for 1,000 hosts x 8 GPUs, {readings} readings: {size} bytes");
        let name = match readings {
            0 => "render_1000_hosts_x_8_gpus_findings_off".to_string(),
            n => format!("render_1000_hosts_x_8_gpus_{n}_readings"),
        };
        group.bench_function(name, |b| b.iter(render));
        if readings > 0 {
            let filter = gpulse_collector::findings::Filter::default();
            group.bench_function("findings_json_1000_hosts_x_8_gpus", |b| {
                b.iter(|| {
                    serde_json::to_string(&gpulse_collector::findings::report(
                        fleet.as_ref(),
                        &filter,
                        now_ms(),
                    ))
                    .unwrap()
                })
            });
        }
    }
    group.finish();
}

/// The whole /metrics scrape as the collector serves it: the fleet, every GPU's cost
/// series (priced from the shipped catalogue, totals from the ledger) and the
/// collector's self-metrics.
fn scrape_with_cost(c: &mut Criterion) {
    use gpulse_collector::cost::ledger::Usage;
    use gpulse_collector::cost::metrics::CostSeries;
    use gpulse_collector::cost::pricing::Pricing;
    let fleet = large_fleet(gpulse_exposition::DEFAULT_FINDINGS_READINGS);
    let pricing = std::sync::Arc::new(
        Pricing::load(None, &gpulse_collector::config::BareMetalConfig::default()).unwrap(),
    );
    let mut totals = std::collections::HashMap::new();
    gpulse_exposition::HostSource::for_each_host(fleet.as_ref(), &mut |h| {
        for g in &h.gpus {
            let usage = Usage {
                observed_s: 3600.0,
                busy_s: 3000.0,
                list_cost: 98.3,
                ..Usage::default()
            };
            totals.insert((h.identity.agent_id.clone(), g.info.uuid.clone()), usage);
        }
    });
    let scrape = gpulse_collector::http::Scrape {
        fleet,
        options: ExpositionOptions::default(),
        registry: Registry::new(),
        cost: Some(CostSeries::new(
            pricing,
            std::sync::Arc::new(std::sync::RwLock::new(totals)),
        )),
    };
    let render = || scrape.render();
    eprintln!(
        "scrape with cost for 1,000 hosts x 8 GPUs: {} bytes",
        render().len()
    );
    let mut group = c.benchmark_group("exposition");
    group.sample_size(10);
    group.bench_function("scrape_1000_hosts_x_8_gpus_with_cost", |b| b.iter(render));
    // What a scraper that asks for gzip costs when the body is not cached: the render,
    // then the compression.
    let gzipped = gpulse_collector::scrape_cache::compress(render().as_bytes()).unwrap();
    eprintln!(
        "scrape with cost for 1,000 hosts x 8 GPUs, gzip: {} bytes",
        gzipped.len()
    );
    group.bench_function("scrape_1000_hosts_x_8_gpus_with_cost_gzip", |b| {
        b.iter(|| gpulse_collector::scrape_cache::compress(render().as_bytes()).unwrap())
    });
    group.finish();
}

criterion_group!(
    benches,
    decode_and_apply,
    render_large_fleet,
    scrape_with_cost
);
criterion_main!(benches);
