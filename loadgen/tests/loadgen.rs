//! The load generator against a collector in its own process: every batch it sends
//! is acknowledged and its figures come out as JSON.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::process::Command;

#[test]
fn a_short_run_is_fully_acknowledged_and_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpulse-loadgen"))
        .args([
            "--agents",
            "20",
            "--gpus",
            "2",
            "--interval",
            "200ms",
            "--duration",
            "2s",
            "--scrape-interval",
            "500ms",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let sent = s["batches_sent"].as_u64().unwrap();
    // 20 agents, one batch per 200 ms for 2 s, started over the first interval.
    assert!(sent >= 20 * 8, "{s}");
    assert_eq!(s["batches_acked"].as_u64(), Some(sent), "{s}");
    assert_eq!(s["batches_rejected"], 0);
    assert_eq!(s["streams_failed"], 0);
    assert!(s["gpu_samples_per_second"].as_f64().unwrap() > 0.0);
    let p50 = s["ack_latency_ms_p50"].as_f64().unwrap();
    let p99 = s["ack_latency_ms_p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{s}");
    assert!(s["scrape_bytes"].as_u64().unwrap() > 0);
    assert!(s["resident_mib"].as_f64().unwrap() > 0.0);
    // Scraped every 500 ms, and the acks awaited meanwhile given apart.
    assert!(s["scrapes"].as_u64().unwrap() >= 3, "{s}");
    assert!(s["acks_during_scrape"].as_u64().unwrap() > 0, "{s}");
    assert!(
        s["ack_latency_ms_p99_during_scrape"].as_f64().is_some(),
        "{s}"
    );
    // Every agent got in and had a batch acknowledged within the run.
    assert!(s["all_connected_seconds"].as_f64().unwrap() < 2.0, "{s}");
    assert!(s["all_first_acked_seconds"].as_f64().unwrap() < 2.0, "{s}");
    // Gzipped by default: smaller on the wire than encoded, and far smaller than text.
    assert_eq!(s["compression"], "gzip");
    let encoded = s["encoded_bytes_per_gpu_sample"].as_f64().unwrap();
    let wire = s["wire_bytes_per_gpu_sample"].as_f64().unwrap();
    assert!(wire > 0.0 && wire < encoded, "{s}");
    assert!(s["exposition_per_wire"].as_f64().unwrap() > 1.0, "{s}");
    assert!(
        s["transport_sent_bytes_per_gpu_sample"].as_f64().unwrap() > wire,
        "{s}"
    );
    assert_eq!(s["gzip_by_batch_size"].as_array().unwrap().len(), 3, "{s}");
    // The collector in this process: its CPU and memory are this process's.
    assert_eq!(s["collector_measured"], "this process");
    assert!(s["collector_cpu_seconds"].as_f64().unwrap() > 0.0, "{s}");
    assert!(
        s["collector_cpu_us_per_gpu_sample"].as_f64().unwrap() > 0.0,
        "{s}"
    );
    assert!(s["collector_rss_peak_mib"].as_f64().unwrap() > 0.0, "{s}");
}

#[test]
fn uncompressed_streams_are_sent_and_counted_as_they_are() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpulse-loadgen"))
        .args(["--agents", "3", "--gpus", "2", "--interval", "200ms"])
        .args(["--duration", "1s", "--compression", "none", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["compression"], "none");
    assert_eq!(s["gzip_ratio"].as_f64(), Some(1.0), "{s}");
}

#[test]
fn bad_arguments_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpulse-loadgen"))
        .args(["--gpus", "40", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--gpus 40 must be 1 to 16"), "{stderr}");
}
