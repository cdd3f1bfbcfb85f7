//! `gpulse-agent diagnose`: samples this host's GPUs at a high rate for a short window,
//! runs the diagnosis rules and prints findings with their evidence and what to do.
//! No collector needed.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

use gpulse_gpu::diagnosis::{self, Finding, GpuWindow, Severity, Timed};
use gpulse_gpu::{DeviceInfo, GpuBackend};

use crate::sampler::now_unix_ms;

/// Default window.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);
/// Default time between readings: NVML's utilisation counters cover about 1/6 s.
pub const DEFAULT_RATE: Duration = Duration::from_millis(250);
/// Version of the `--json` document; bumped only for incompatible changes.
pub const JSON_VERSION: u32 = 1;
/// Columns of a sparkline.
const SPARK_WIDTH: usize = 24;

/// Exit status when a critical finding was seen.
pub const EXIT_CRITICAL: i32 = 2;

/// Minimum, mean and maximum of a reading over the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Option<Stats> {
        let first = *values.first()?;
        let (min, max) = values
            .iter()
            .fold((first, first), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        Some(Stats {
            min,
            mean: values.iter().sum::<f64>() / values.len() as f64,
            max,
        })
    }
}

/// One GPU in the report.
#[derive(Debug, Clone, Serialize)]
pub struct GpuReport {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub readings: usize,
    pub sm_clock_mhz: Option<Stats>,
    pub max_sm_clock_mhz: Option<u32>,
    pub temperature_celsius: Option<Stats>,
    pub slowdown_temperature_celsius: Option<u32>,
    #[serde(skip)]
    sm_clock_series: Vec<f64>,
    #[serde(skip)]
    temperature_series: Vec<f64>,
    #[serde(skip)]
    shutdown_temperature_celsius: Option<u32>,
}

/// One finding in the report.
#[derive(Debug, Clone, Serialize)]
pub struct FindingReport {
    pub gpu: u32,
    pub uuid: String,
    pub kind: &'static str,
    pub severity: &'static str,
    pub summary: String,
    pub evidence: Vec<String>,
    pub action: String,
}

impl From<&Finding> for FindingReport {
    fn from(f: &Finding) -> Self {
        FindingReport {
            gpu: f.gpu,
            uuid: f.uuid.clone(),
            kind: f.kind.name(),
            severity: f.severity.name(),
            summary: f.summary.clone(),
            evidence: f.evidence.clone(),
            action: f.action.clone(),
        }
    }
}

/// The whole diagnosis: what `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: u32,
    pub host: String,
    pub duration_seconds: f64,
    pub interval_seconds: f64,
    pub gpus: Vec<GpuReport>,
    /// Most severe first.
    pub findings: Vec<FindingReport>,
    /// Whether any finding is critical (the exit status is then 2).
    pub critical: bool,
}

/// Samples `backend` every `rate` for `duration` and diagnoses every GPU.
/// `progress` is called with the elapsed share (0..=1) after each reading.
pub fn run(
    backend: &mut dyn GpuBackend,
    host: &str,
    duration: Duration,
    rate: Duration,
    mut progress: impl FnMut(f64),
) -> Report {
    let inventory: Vec<DeviceInfo> = backend.inventory().to_vec();
    let mut windows: Vec<Vec<Timed>> = vec![Vec::new(); inventory.len()];
    let started = Instant::now();
    let mut next = started;
    loop {
        let now = now_unix_ms();
        for (i, sample) in backend
            .sample(now)
            .into_iter()
            .enumerate()
            .take(windows.len())
        {
            windows[i].push(Timed {
                unix_ms: now,
                sample,
            });
        }
        let elapsed = started.elapsed();
        progress((elapsed.as_secs_f64() / duration.as_secs_f64().max(1e-9)).min(1.0));
        if elapsed >= duration {
            break;
        }
        next += rate;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait.min(duration.saturating_sub(elapsed)));
        }
    }
    let mut findings: Vec<Finding> = inventory
        .iter()
        .zip(&windows)
        .flat_map(|(info, samples)| diagnosis::diagnose(&GpuWindow { info, samples }))
        .collect();
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.gpu.cmp(&b.gpu)));
    let gpus = inventory
        .iter()
        .zip(&windows)
        .map(|(info, samples)| {
            let ok = || samples.iter().map(|t| &t.sample);
            let clocks: Vec<f64> = ok()
                .filter_map(|s| s.sm_clock_mhz.value())
                .map(f64::from)
                .collect();
            let temps: Vec<f64> = ok()
                .filter_map(|s| s.temperature_celsius.value())
                .map(f64::from)
                .collect();
            GpuReport {
                index: info.index,
                uuid: info.uuid.clone(),
                model: info.model.clone(),
                readings: samples.len(),
                sm_clock_mhz: Stats::of(&clocks),
                max_sm_clock_mhz: info.max_sm_clock_mhz,
                temperature_celsius: Stats::of(&temps),
                slowdown_temperature_celsius: info.slowdown_temperature_celsius,
                sm_clock_series: clocks,
                temperature_series: temps,
                shutdown_temperature_celsius: info.shutdown_temperature_celsius,
            }
        })
        .collect();
    Report {
        version: JSON_VERSION,
        host: host.to_string(),
        duration_seconds: started.elapsed().as_secs_f64(),
        interval_seconds: rate.as_secs_f64(),
        gpus,
        critical: findings.iter().any(|f| f.severity == Severity::Critical),
        findings: findings.iter().map(FindingReport::from).collect(),
    }
}

/// A sparkline of `values` scaled to `lo..=hi`, resampled to at most `width` columns.
pub fn sparkline(values: &[f64], lo: f64, hi: f64, width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let columns = values.len().min(width);
    (0..columns)
        .map(|c| {
            let from = c * values.len() / columns;
            let to = ((c + 1) * values.len() / columns).max(from + 1);
            let chunk = &values[from..to];
            let v = chunk.iter().sum::<f64>() / chunk.len() as f64;
            let t = if hi > lo {
                ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
            } else {
                1.0
            };
            BARS[(t * (BARS.len() - 1) as f64).round() as usize]
        })
        .collect()
}

/// The human report: a table with a sparkline per GPU, then the findings.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let readings = r.gpus.first().map_or(0, |g| g.readings);
    out.push_str(&format!(
        "gpulse diagnose: {} GPU(s) on {}, {:.0} s at {:.0} ms ({readings} readings each)\n\n",
        r.gpus.len(),
        r.host,
        r.duration_seconds,
        r.interval_seconds * 1000.0
    ));
    out.push_str(&format!(
        "{:<4} {:<24} {:<w$} {:>9}  {:<w$} {:>6}  {}\n",
        "GPU",
        "MODEL",
        "SM CLOCK",
        "mean",
        "TEMPERATURE",
        "max",
        "FINDINGS",
        w = SPARK_WIDTH
    ));
    for g in &r.gpus {
        let clock_hi = g
            .max_sm_clock_mhz
            .map(f64::from)
            .unwrap_or_else(|| g.sm_clock_mhz.map_or(1.0, |s| s.max));
        let temp_hi = g
            .shutdown_temperature_celsius
            .map(f64::from)
            .unwrap_or(100.0);
        let counts = |sev: &str| {
            r.findings
                .iter()
                .filter(|f| f.gpu == g.index && f.severity == sev)
                .count()
        };
        let summary = match (counts("critical"), counts("warning"), counts("info")) {
            (0, 0, 0) => "ok".to_string(),
            (c, w, i) => [(c, "critical"), (w, "warning"), (i, "info")]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, s)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let model: String = g.model.chars().take(24).collect();
        out.push_str(&format!(
            "{:<4} {:<24} {:<w$} {:>9}  {:<w$} {:>6}  {}\n",
            g.index,
            model,
            sparkline(&g.sm_clock_series, 0.0, clock_hi, SPARK_WIDTH),
            g.sm_clock_mhz
                .map_or("-".to_string(), |s| format!("{:.0} MHz", s.mean)),
            sparkline(&g.temperature_series, 20.0, temp_hi, SPARK_WIDTH),
            g.temperature_celsius
                .map_or("-".to_string(), |s| format!("{:.0} °C", s.max)),
            summary,
            w = SPARK_WIDTH
        ));
    }
    out.push('\n');
    if r.findings.is_empty() {
        out.push_str("No findings: every GPU ran without throttling, errors or hidden fields.\n");
    }
    // The same finding on several GPUs is shown once, with the GPUs it concerns and the
    // evidence of the first of them.
    let mut shown: Vec<(&str, &str)> = Vec::new();
    for f in &r.findings {
        if shown.contains(&(f.severity, f.kind)) {
            continue;
        }
        shown.push((f.severity, f.kind));
        let gpus: Vec<String> = r
            .findings
            .iter()
            .filter(|g| g.kind == f.kind && g.severity == f.severity)
            .map(|g| g.gpu.to_string())
            .collect();
        let (label, note) = if gpus.len() == 1 {
            (format!("GPU {}", gpus[0]), String::new())
        } else {
            (
                format!("GPUs {}", gpus.join(",")),
                format!(" (evidence of GPU {})", f.gpu),
            )
        };
        out.push_str(&format!(
            "{:<8}  {label}  {}: {}{note}\n",
            f.severity.to_uppercase(),
            f.kind,
            f.summary
        ));
        for e in &f.evidence {
            out.push_str(&format!("          - {e}\n"));
        }
        out.push_str(&format!("          what to do: {}\n\n", f.action));
    }
    out
}

/// Prints progress on stderr when it is a terminal, as a bar that redraws in place.
pub fn terminal_progress() -> impl FnMut(f64) {
    let tty = std::io::stderr().is_terminal();
    move |share: f64| {
        if tty {
            let filled = (share * 30.0).round() as usize;
            let mut err = std::io::stderr();
            let _ = write!(
                err,
                "\rsampling [{}{}] {:3.0}%",
                "#".repeat(filled),
                " ".repeat(30 - filled.min(30)),
                share * 100.0
            );
            if share >= 1.0 {
                let _ = write!(err, "\r{}\r", " ".repeat(50));
            }
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_and_resample() {
        assert_eq!(sparkline(&[0.0, 50.0, 100.0], 0.0, 100.0, 10), "▁▅█");
        assert_eq!(sparkline(&[100.0; 100], 0.0, 100.0, 8).chars().count(), 8);
        assert_eq!(sparkline(&[], 0.0, 1.0, 8), "");
    }

    #[test]
    fn stats_are_min_mean_max() {
        let s = Stats::of(&[1.0, 2.0, 6.0]).unwrap();
        assert_eq!((s.min, s.mean, s.max), (1.0, 3.0, 6.0));
        assert!(Stats::of(&[]).is_none());
    }
}
