//! A 30-day cost report over 1,000 GPUs: 720,000 hourly ledger rows read, grouped and
//! rendered, as the report API and page do it. Target: under 1 s.
//!
//! Run: cargo bench -p gpulse-collector --bench report

#![allow(clippy::unwrap_used, reason = "a bench fails by panicking")]

use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use rusqlite::Connection;

use gpulse_collector::config::LedgerConfig;
use gpulse_collector::cost::ledger::HOUR_MS;
use gpulse_collector::cost::report::{self, DAY_MS, Dim, Window};
use gpulse_collector::cost::{page, store};

const GPUS: i64 = 1000;
const DAYS: i64 = 30;

/// Fills a ledger with `GPUS` GPUs on 125 hosts over `DAYS` days, one row per GPU-hour.
fn ledger(dir: &std::path::Path, now_ms: i64) {
    let handle = store::start(dir, &LedgerConfig::default()).unwrap();
    let mut conn = Connection::open(handle.path()).unwrap();
    let tx = conn.transaction().unwrap();
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
    for g in 0..GPUS {
        let (provider, region, instance, model, _) = providers[(g / 8) as usize % providers.len()];
        tx.execute(
            "INSERT INTO gpus (id, host, uuid, gpu_index, model, provider, region, zone, instance_type, labels)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '', ?8, ?9)",
            rusqlite::params![
                g,
                format!("host-{:04}", g / 8),
                format!("GPU-{g:08}"),
                g % 8,
                model,
                provider,
                region,
                instance,
                format!("{{\"team\":\"team-{}\"}}", g % 5)
            ],
        )
        .unwrap();
    }
    let cols = store::USAGE_COLUMNS.join(", ");
    let marks = (0..store::USAGE_COLUMNS.len() + 3)
        .map(|i| format!("?{}", i + 1))
        .collect::<Vec<_>>()
        .join(", ");
    {
        let mut insert = tx
            .prepare(&format!(
                "INSERT INTO usage (hour, gpu, {cols}, samples) VALUES ({marks})"
            ))
            .unwrap();
        let last_hour = now_ms / HOUR_MS;
        for h in (last_hour - DAYS * 24)..last_hour {
            for g in 0..GPUS {
                let price = providers[(g / 8) as usize % providers.len()].4;
                let busy = ((g * 7 + h * 3) % 10) as f64 / 10.0 * 3600.0;
                let mut v: Vec<rusqlite::types::Value> = vec![h.into(), g.into()];
                for c in store::USAGE_COLUMNS {
                    let x = match c {
                        "observed_s" => 3600.0,
                        "busy_s" | "utilized_s" | "clock_known_s" => busy,
                        "idle_s" => 3600.0 - busy,
                        "lost_s" => busy * 0.05,
                        "energy_j" => 2.0e6,
                        "energy_known_s" | "utilization_known_s" => 3600.0,
                        "list_cost" => price,
                        "idle_cost" => price * (3600.0 - busy) / 3600.0,
                        "throttle_loss" => price * busy * 0.05 / 3600.0,
                        "unpriced_s" if price == 0.0 => 3600.0,
                        "pcie_replays" | "lost_samples" => {
                            v.push(((g + h) % 3).into());
                            continue;
                        }
                        _ => 0.0,
                    };
                    v.push(x.into());
                }
                v.push(720i64.into());
                insert.execute(rusqlite::params_from_iter(v)).unwrap();
            }
        }
    }
    // The writer keeps a daily roll-up beside the hourly rows; build it the same way.
    let sums = store::usage_sums("");
    tx.execute(
        &format!("INSERT INTO usage_daily (day, gpu, {cols}, samples) SELECT hour / 24, gpu, {sums} FROM usage GROUP BY hour / 24, gpu"),
        [],
    )
    .unwrap();
    tx.commit().unwrap();
}

fn thirty_day_report(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    ledger(dir.path(), now);
    let path = dir.path().join(store::LEDGER_FILE);
    let window = Window::aligned(now - DAYS * DAY_MS, now);
    let conn = store::open_reader(&path).unwrap();
    let rows = report::load(&conn, window, false).unwrap();
    assert_eq!(rows.len() as i64, GPUS);
    let mut group = c.benchmark_group("report");
    group.sample_size(10);
    group.bench_function("json_30d_1000_gpus_by_provider", |b| {
        b.iter(|| {
            let conn = store::open_reader(&path).unwrap();
            let rows = report::load(&conn, window, false).unwrap();
            serde_json::to_string(&report::json(&rows, window, &[Dim::Provider])).unwrap()
        })
    });
    group.bench_function("csv_30d_1000_gpus_per_gpu_per_day", |b| {
        b.iter(|| {
            let conn = store::open_reader(&path).unwrap();
            let rows = report::load(&conn, window, true).unwrap();
            report::csv(&rows, window, &[Dim::Gpu]).unwrap()
        })
    });
    group.bench_function("page_30d_1000_gpus", |b| {
        b.iter(|| {
            let conn = store::open_reader(&path).unwrap();
            let per_day = report::load(&conn, window, true).unwrap();
            let per_gpu = report::per_gpu(&per_day);
            page::render(window, &per_gpu, &per_day)
        })
    });
    group.finish();
}

criterion_group!(benches, thirty_day_report);
criterion_main!(benches);
