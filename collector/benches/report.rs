//! The ledger on each engine, SQLite and PostgreSQL, in one run:
//! - a 30-day cost report over 1,000 GPUs: 720,000 hourly ledger rows (and their daily
//!   roll-up) read, grouped and rendered, as the report API and page do it. Target:
//!   under 1 s;
//! - ingest: batches of 125 hosts x 8 GPUs x 6 snapshots applied and committed, as
//!   ingest hands them to the ledger.
//!
//! The PostgreSQL part starts its own server (gpulse-testkit) when PostgreSQL is
//! installed, and says it skips otherwise.
//!
//! Run: cargo bench -p gpulse-collector --bench report

#![allow(clippy::unwrap_used, reason = "a bench fails by panicking")]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use gpulse_collector::config::LedgerConfig;
use gpulse_collector::cost::ledger::{GpuTerms, HOUR_MS, Usage};
use gpulse_collector::cost::page;
use gpulse_collector::cost::report::{self, DAY_MS, Dim, Window};
use gpulse_collector::cost::store::{
    self, GpuDims, LedgerGpu, LedgerHost, LedgerSource, LedgerTarget,
};
use gpulse_gpu::simulator::Simulator;
use gpulse_gpu::{GpuBackend, Snapshot};

const GPUS: i64 = 1000;
const DAYS: i64 = 30;
const INGEST_HOSTS: usize = 125;
const SNAPSHOTS_PER_BATCH: i64 = 6;
const SAMPLE_INTERVAL_MS: i64 = 5000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The engines to measure: SQLite always, PostgreSQL when a server can be started.
fn engines(dir: &std::path::Path, name: &str) -> Vec<(&'static str, LedgerTarget)> {
    let mut out = vec![("sqlite", LedgerTarget::Sqlite(dir.join(store::LEDGER_FILE)))];
    if gpulse_testkit::postgres::bin_dir().is_some() {
        let url = gpulse_testkit::postgres::server().database(name);
        out.push(("postgres", LedgerTarget::new(Some(&url), dir).unwrap()));
    } else {
        eprintln!(
            "PostgreSQL is not installed: its part of this bench is skipped \
             (scripts/install-test-deps.sh installs it)"
        );
    }
    out
}

/// Fills a ledger with `GPUS` GPUs on 125 hosts over `DAYS` days, one row per GPU-hour.
fn ledger(target: &LedgerTarget, now_ms: i64) {
    drop(store::start(target, &LedgerConfig::default()).unwrap());
    let providers = [
        (
            "aws",
            "us-east-1",
            "p5.48xlarge",
            "NVIDIA H100 80GB HBM3",
            6.88,
        ),
        (
            "gcp",
            "us-central1",
            "a3-highgpu-8g",
            "NVIDIA H100 80GB HBM3",
            11.06,
        ),
        (
            "coreweave",
            "us-east-04",
            "gd-8xh100ib-i128",
            "NVIDIA H100 80GB HBM3",
            6.16,
        ),
        ("nebius", "eu-north1", "gpu-h200-sxm", "NVIDIA H200", 4.50),
        ("on-prem", "dc1", "dgx-a100", "NVIDIA A100-SXM4-80GB", 0.0),
    ];
    let dims: Vec<(Arc<GpuDims>, f64)> = (0..GPUS)
        .map(|g| {
            let (provider, region, instance, model, price) =
                providers[(g / 8) as usize % providers.len()];
            let dims = GpuDims {
                host: format!("host-{:04}", g / 8),
                uuid: format!("GPU-{g:08}"),
                index: (g % 8) as u32,
                model: model.into(),
                provider: provider.into(),
                region: region.into(),
                zone: String::new(),
                instance_type: instance.into(),
                labels: [("team".to_string(), format!("team-{}", g % 5))].into(),
                ..GpuDims::default()
            };
            (Arc::new(dims), price)
        })
        .collect();
    let last_hour = now_ms / HOUR_MS;
    let rows = ((last_hour - DAYS * 24)..last_hour).flat_map(|h| {
        dims.iter().enumerate().map(move |(g, (d, price))| {
            let g = g as i64;
            let busy = ((g * 7 + h * 3) % 10) as f64 / 10.0 * 3600.0;
            let u = Usage {
                observed_s: 3600.0,
                busy_s: busy,
                utilized_s: busy,
                clock_known_s: busy,
                idle_s: 3600.0 - busy,
                lost_s: busy * 0.05,
                energy_j: 2.0e6,
                energy_known_s: 3600.0,
                utilization_known_s: 3600.0,
                list_cost: *price,
                idle_cost: price * (3600.0 - busy) / 3600.0,
                throttle_loss: price * busy * 0.05 / 3600.0,
                unpriced_s: if *price == 0.0 { 3600.0 } else { 0.0 },
                pcie_replays: ((g + h) % 3) as u64,
                lost_samples: ((g + h) % 3) as u64,
                samples: 720,
                ..Usage::default()
            };
            (d.clone(), h, u)
        })
    });
    store::import(target, rows, 24 * GPUS as usize).unwrap();
}

fn thirty_day_report(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let window = Window::aligned(now - DAYS * DAY_MS, now);
    let mut group = c.benchmark_group("report");
    group.sample_size(10);
    for (engine, target) in engines(dir.path(), "report") {
        let started = Instant::now();
        ledger(&target, now);
        eprintln!(
            "{engine}: 30 days of 1,000 GPUs stored in {:?}",
            started.elapsed()
        );
        let source = LedgerSource::new(target);
        let rows = source.read(|r| report::load(r, window, false)).unwrap();
        assert_eq!(rows.len() as i64, GPUS);
        group.bench_function(format!("{engine}/json_30d_1000_gpus_by_provider"), |b| {
            b.iter(|| {
                let rows = source.read(|r| report::load(r, window, false)).unwrap();
                serde_json::to_string(&report::json(&rows, window, &[Dim::Provider])).unwrap()
            })
        });
        group.bench_function(format!("{engine}/csv_30d_1000_gpus_per_gpu_per_day"), |b| {
            b.iter(|| {
                let rows = source.read(|r| report::load(r, window, true)).unwrap();
                report::csv(&rows, window, &[Dim::Gpu]).unwrap()
            })
        });
        group.bench_function(format!("{engine}/page_30d_1000_gpus"), |b| {
            b.iter(|| {
                let per_day = source.read(|r| report::load(r, window, true)).unwrap();
                let per_gpu = report::per_gpu(&per_day);
                page::render(window, &per_gpu, &per_day)
            })
        });
    }
    group.finish();
}

fn host(i: usize) -> (Arc<LedgerHost>, Simulator) {
    let sim = Simulator::new(
        format!("gpus=8,scenario=training,seed={i}")
            .parse()
            .unwrap(),
    );
    let agent = format!("host-{i:04}");
    let gpus = sim
        .inventory()
        .iter()
        .map(|d| {
            let dims = GpuDims {
                host: agent.clone(),
                uuid: d.uuid.clone(),
                index: d.index,
                model: d.model.clone(),
                provider: "aws".into(),
                instance_type: "p5.48xlarge".into(),
                ..GpuDims::default()
            };
            let terms = GpuTerms {
                max_sm_clock_mhz: d.max_sm_clock_mhz,
                price: None,
                interval_ms: SAMPLE_INTERVAL_MS as u64,
                boot_id: "boot".into(),
            };
            (d.uuid.clone(), LedgerGpu { dims, terms })
        })
        .collect();
    (
        Arc::new(LedgerHost {
            agent_id: agent,
            gpus,
        }),
        sim,
    )
}

fn ledger_ingest(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("ledger_ingest");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(
        (INGEST_HOSTS * 8) as u64 * SNAPSHOTS_PER_BATCH as u64,
    ));
    for (engine, target) in engines(dir.path(), "ingest") {
        let config = LedgerConfig {
            commit_interval: Duration::from_millis(1),
            ..LedgerConfig::default()
        };
        let handle = store::start(&target, &config).unwrap();
        let mut hosts: Vec<_> = (0..INGEST_HOSTS).map(host).collect();
        let mut t = now_ms() - 30 * DAY_MS;
        group.bench_function(format!("{engine}/125_hosts_x_8_gpus_x_6_snapshots"), |b| {
            b.iter_custom(|iters| {
                // Batches built before the clock starts: only the ledger is measured.
                let rounds: Vec<Vec<(Arc<LedgerHost>, Vec<Snapshot>)>> = (0..iters)
                    .map(|_| {
                        let round = hosts
                            .iter_mut()
                            .map(|(h, sim)| {
                                let snaps = (0..SNAPSHOTS_PER_BATCH)
                                    .map(|i| {
                                        let at = t + i * SAMPLE_INTERVAL_MS;
                                        Snapshot {
                                            timestamp_unix_ms: at,
                                            gpus: sim.sample(at),
                                        }
                                    })
                                    .collect();
                                (h.clone(), snaps)
                            })
                            .collect();
                        t += SNAPSHOTS_PER_BATCH * SAMPLE_INTERVAL_MS;
                        round
                    })
                    .collect();
                let started = Instant::now();
                for round in rounds {
                    let pending: Vec<_> = round
                        .into_iter()
                        .map(|(h, snaps)| rt.block_on(handle.apply(h, snaps)).unwrap())
                        .collect();
                    for p in pending {
                        p.blocking_recv().unwrap().unwrap();
                    }
                }
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, thirty_day_report, ledger_ingest);
criterion_main!(benches);
