//! Real captures against nvidia-smi. Every capture committed under gpu/fixtures/captures
//! with an `nvidia-smi-samples.csv` beside it (scripts/gpu-capture.sh records nvidia-smi
//! every 500 ms while the agent captures) is compared reading by reading: each value the
//! agent read must lie between the two nvidia-smi readings that bracket it in time (so a
//! clock that changed between two nvidia-smi rows is not a disagreement), widened by the
//! resolution nvidia-smi prints. docs/real-gpu.md records what the comparison found.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gpulse_agent::capture::Capture;
use gpulse_gpu::{DeviceSample, Reading};

/// One nvidia-smi row: unix ms and the columns by header name.
struct SmiRow {
    at_ms: i64,
    index: u32,
    columns: BTreeMap<String, String>,
}

fn parse_smi_time(s: &str) -> i64 {
    // "2026/12/01 00:22:00.498", printed in the host's zone; the capture hosts run in UTC
    // (host.txt's `date -u` and the rows agree).
    let rfc3339 = format!("{}Z", s.trim().replacen('/', "-", 2).replacen(' ', "T", 1));
    let t = humantime::parse_rfc3339_weak(&rfc3339).unwrap_or_else(|e| panic!("{s}: {e}"));
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn read_smi(path: &Path) -> Vec<SmiRow> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(|h| h.trim().split(' ').next().unwrap().to_string())
        .collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let columns: BTreeMap<String, String> = header
                .iter()
                .cloned()
                .zip(l.split(',').map(|v| v.trim().to_string()))
                .collect();
            SmiRow {
                at_ms: parse_smi_time(&columns["timestamp"]),
                index: columns["index"].parse().unwrap(),
                columns,
            }
        })
        .collect()
}

/// A column's number without its unit ("1740 MHz" -> 1740, "0x..04" -> 4).
fn number(row: &SmiRow, column: &str) -> Option<f64> {
    let raw = row.columns.get(column)?;
    let word = raw.split(' ').next()?;
    if let Some(hex) = word.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok().map(|v| v as f64);
    }
    word.parse().ok()
}

/// One compared field: the nvidia-smi column, how to read the agent's value in the same
/// unit, the resolution nvidia-smi prints it with (absolute, or relative when below 1),
/// and for values the driver averages over a window, how long that window can be.
struct Field {
    column: &'static str,
    agent: fn(&DeviceSample) -> Option<f64>,
    slack: f64,
    window_ms: i64,
}

/// nvml.h, nvmlDeviceGetUtilizationRates: "the sample period may be between 1 second and
/// 1/6 second depending on the product being queried". Two readings of a windowed value
/// taken apart in time can differ by whatever changed inside the window.
const UTILIZATION_WINDOW_MS: i64 = 1_000;

fn value<T: Copy + Into<f64>>(r: &Reading<T>) -> Option<f64> {
    match r {
        Reading::Value(v) => Some((*v).into()),
        _ => None,
    }
}

const FIELDS: &[Field] = &[
    Field {
        column: "utilization.gpu",
        agent: |s| value(&s.gpu_utilization_percent),
        slack: 1.0,
        window_ms: UTILIZATION_WINDOW_MS,
    },
    Field {
        column: "utilization.memory",
        agent: |s| value(&s.memory_utilization_percent),
        slack: 1.0,
        window_ms: UTILIZATION_WINDOW_MS,
    },
    Field {
        column: "clocks.current.sm",
        agent: |s| value(&s.sm_clock_mhz),
        slack: 0.0,
        window_ms: 0,
    },
    Field {
        column: "clocks.current.memory",
        agent: |s| value(&s.memory_clock_mhz),
        slack: 0.0,
        window_ms: 0,
    },
    Field {
        column: "temperature.gpu",
        agent: |s| value(&s.temperature_celsius),
        slack: 1.0,
        window_ms: 0,
    },
    Field {
        column: "temperature.memory",
        agent: |s| value(&s.memory_temperature_celsius),
        slack: 1.0,
        window_ms: 0,
    },
    Field {
        column: "power.draw",
        agent: |s| value(&s.power_usage_milliwatts).map(|mw| mw / 1000.0),
        slack: 0.01,
        window_ms: 0,
    },
    Field {
        column: "power.limit",
        agent: |s| value(&s.power_limit_milliwatts).map(|mw| mw / 1000.0),
        slack: 0.01,
        window_ms: 0,
    },
    Field {
        column: "memory.used",
        agent: |s| match s.memory_used_bytes {
            Reading::Value(b) => Some(b as f64 / (1024.0 * 1024.0)),
            _ => None,
        },
        slack: 1.0,
        window_ms: 0,
    },
    Field {
        column: "pcie.link.gen.current",
        agent: |s| value(&s.pcie_generation),
        slack: 0.0,
        window_ms: 0,
    },
    Field {
        column: "pcie.link.width.current",
        agent: |s| value(&s.pcie_width),
        slack: 0.0,
        window_ms: 0,
    },
    Field {
        column: "clocks_event_reasons.active",
        agent: |s| match s.throttle_reasons {
            Reading::Value(r) => Some(r.bits() as f64),
            _ => None,
        },
        slack: 0.0,
        window_ms: 0,
    },
];

/// Per field: readings compared, and those outside the bracket (with one example).
#[derive(Default)]
struct Tally {
    compared: usize,
    outside: usize,
    example: Option<String>,
}

fn captures_with_smi() -> Vec<(PathBuf, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gpu/fixtures/captures");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gpulse"))
        .filter_map(|p| {
            let smi = p.with_extension("").join("nvidia-smi-samples.csv");
            smi.exists().then_some((p, smi))
        })
        .collect();
    found.sort();
    found
}

fn compare(capture: &Capture, smi: &[SmiRow]) -> BTreeMap<&'static str, Tally> {
    let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
    for snap in &capture.snapshots {
        let t = snap.timestamp_unix_ms;
        for (info, s) in capture.inventory.iter().zip(&snap.gpus) {
            let rows: Vec<&SmiRow> = smi.iter().filter(|r| r.index == info.index).collect();
            let before = rows.iter().rev().find(|r| r.at_ms <= t);
            let after = rows.iter().find(|r| r.at_ms >= t);
            // Only readings that nvidia-smi brackets within one of its periods.
            let (Some(b), Some(a)) = (before, after) else {
                continue;
            };
            if a.at_ms - b.at_ms > 1_000 {
                continue;
            }
            for f in FIELDS {
                let (Some(ours), Some(x), Some(y)) =
                    ((f.agent)(s), number(b, f.column), number(a, f.column))
                else {
                    continue;
                };
                // The bracket, widened to every row inside the field's averaging window.
                let (lo, hi) = rows
                    .iter()
                    .filter(|r| (r.at_ms - t).abs() <= f.window_ms)
                    .filter_map(|r| number(r, f.column))
                    .fold((x.min(y), x.max(y)), |(lo, hi), v| (lo.min(v), hi.max(v)));
                let tally = tallies.entry(f.column).or_default();
                tally.compared += 1;
                let slack = if f.slack < 1.0 {
                    f.slack * hi.abs()
                } else {
                    f.slack
                };
                if ours < lo - slack || ours > hi + slack {
                    tally.outside += 1;
                    tally.example.get_or_insert(format!(
                        "GPU {} at {t}: agent {ours}, nvidia-smi {lo} .. {hi}",
                        info.index
                    ));
                }
            }
        }
    }
    tallies
}

/// The agent's readings of a real GPU agree with nvidia-smi's at the same moments.
#[test]
fn real_captures_agree_with_nvidia_smi() {
    let captures = captures_with_smi();
    assert!(
        !captures.is_empty(),
        "no capture with nvidia-smi samples under gpu/fixtures/captures"
    );
    for (capture_path, smi_path) in captures {
        let capture = Capture::read(&capture_path).unwrap();
        let smi = read_smi(&smi_path);
        let tallies = compare(&capture, &smi);
        let mut report = String::new();
        for (column, t) in &tallies {
            report.push_str(&format!(
                "{column}: {} compared, {} outside{}\n",
                t.compared,
                t.outside,
                t.example
                    .as_ref()
                    .map(|e| format!(" (e.g. {e})"))
                    .unwrap_or_default()
            ));
        }
        eprintln!("{}:\n{report}", capture_path.display());
        // Every field nvidia-smi printed was compared, and at least half the capture's
        // readings fell inside nvidia-smi's sampling (they ran side by side).
        for f in FIELDS {
            let t = tallies.get(f.column);
            assert!(
                t.is_some_and(|t| t.compared * 2 >= capture.snapshots.len()),
                "{}: {} barely compared\n{report}",
                capture_path.display(),
                f.column
            );
        }
        let disagreeing: Vec<_> = tallies.iter().filter(|(_, t)| t.outside > 0).collect();
        assert!(
            disagreeing.is_empty(),
            "{}: the agent and nvidia-smi disagree\n{report}",
            capture_path.display()
        );
    }
}
