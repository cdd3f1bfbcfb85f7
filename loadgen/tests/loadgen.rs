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
