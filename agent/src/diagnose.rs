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
    pub utilization_percent: Option<Stats>,
    pub power_watts: Option<Stats>,
    /// The highest enforced power limit read over the window.
    pub power_limit_watts: Option<f64>,
    /// What the GPU was doing: "busy" in every reading that says, "idle" in every one,
    /// "mixed", or "unknown" where nothing read says (MIG without process figures).
    pub activity: &'static str,
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
            let utilization: Vec<f64> = ok()
                .filter_map(|s| s.gpu_utilization_percent.value())
                .map(f64::from)
                .collect();
            let power: Vec<f64> = ok()
                .filter_map(|s| s.power_usage_milliwatts.value())
                .map(|mw| f64::from(mw) / 1000.0)
                .collect();
            let power_limit_watts = ok()
                .filter_map(|s| s.power_limit_milliwatts.value())
                .max()
                .map(|mw| f64::from(mw) / 1000.0);
            let window = GpuWindow { info, samples };
            let activity = if window.answering().next().is_none() {
                "unknown"
            } else if window.always_idle() {
                "idle"
            } else if window.surely_busy().count() == window.answering().count() {
                "busy"
            } else if window.surely_busy().next().is_some() {
                "mixed"
            } else {
                "unknown"
            };
            GpuReport {
                index: info.index,
                uuid: info.uuid.clone(),
                model: info.model.clone(),
                readings: samples.len(),
                sm_clock_mhz: Stats::of(&clocks),
                max_sm_clock_mhz: info.max_sm_clock_mhz,
                temperature_celsius: Stats::of(&temps),
                slowdown_temperature_celsius: info.slowdown_temperature_celsius,
                utilization_percent: Stats::of(&utilization),
                power_watts: Stats::of(&power),
                power_limit_watts,
                activity,
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

/// How the text report is drawn: as wide as the terminal (80 columns at least, and for
/// a pipe), coloured on a terminal unless NO_COLOR says not, and in ASCII where the
/// locale cannot show block characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub width: usize,
    pub colour: bool,
    pub unicode: bool,
}

/// Columns the table is laid out for at least: a classic terminal.
pub const MIN_WIDTH: usize = 80;

impl Style {
    /// Plain text for 80 columns: no colour, block-character sparklines.
    pub const PLAIN: Style = Style {
        width: MIN_WIDTH,
        colour: false,
        unicode: true,
    };

    /// The style for standard output, from the terminal and the environment.
    pub fn detect() -> Style {
        let tty = std::io::stdout().is_terminal();
        let width = terminal_size::terminal_size().map(|(w, _)| usize::from(w.0));
        Style::from_env(tty, width, |name| std::env::var(name).ok())
    }

    /// The style given whether stdout is a terminal, its width, and the environment:
    /// `COLUMNS` overrides the width; `NO_COLOR` (any non-empty value, no-color.org)
    /// and `TERM=dumb` turn colour off; the first of `LC_ALL`, `LC_CTYPE` and `LANG`
    /// that is set names the character set (unset means the C locale: ASCII).
    pub fn from_env(
        tty: bool,
        terminal_width: Option<usize>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Style {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let width = set("COLUMNS")
            .and_then(|c| c.trim().parse::<usize>().ok())
            .or(terminal_width.filter(|_| tty))
            .unwrap_or(MIN_WIDTH)
            .max(MIN_WIDTH);
        let colour = tty && set("NO_COLOR").is_none() && set("TERM").as_deref() != Some("dumb");
        let locale = set("LC_ALL")
            .or_else(|| set("LC_CTYPE"))
            .or_else(|| set("LANG"));
        let unicode = locale.is_some_and(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("utf-8") || l.contains("utf8")
        });
        Style {
            width,
            colour,
            unicode,
        }
    }

    fn bars(&self) -> &'static [char] {
        if self.unicode {
            &['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█']
        } else {
            &['_', '.', ':', '-', '=', '+', '*', '#']
        }
    }

    fn degrees(&self) -> &'static str {
        if self.unicode { "°C" } else { "C" }
    }

    /// `text` in the terminal's character set: where it is not UTF-8, the few
    /// non-ASCII signs the rules write in their ASCII form, anything else as '?'.
    pub fn charset(&self, text: String) -> String {
        if self.unicode {
            return text;
        }
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                c if c.is_ascii() => out.push(c),
                '°' => {}
                '–' | '—' | '−' => out.push('-'),
                '×' => out.push('x'),
                '…' => out.push_str("..."),
                '≤' => out.push_str("<="),
                '≥' => out.push_str(">="),
                _ => out.push('?'),
            }
        }
        out
    }

    /// `text` in the colour of `severity` ("ok" for none) when colour is on.
    fn paint(&self, severity: &str, text: &str) -> String {
        use anstyle::{AnsiColor, Style as Ansi};
        if !self.colour {
            return text.to_string();
        }
        let style = match severity {
            "critical" => Ansi::new().fg_color(Some(AnsiColor::Red.into())).bold(),
            "warning" => Ansi::new().fg_color(Some(AnsiColor::Yellow.into())),
            "info" => Ansi::new().fg_color(Some(AnsiColor::Cyan.into())),
            _ => Ansi::new().fg_color(Some(AnsiColor::Green.into())),
        };
        format!("{style}{text}{style:#}")
    }
}

/// A sparkline of `values` scaled to `lo..=hi`, resampled to at most `width` columns.
pub fn sparkline(values: &[f64], lo: f64, hi: f64, width: usize) -> String {
    sparkline_with(&Style::PLAIN, values, lo, hi, width)
}

fn sparkline_with(style: &Style, values: &[f64], lo: f64, hi: f64, width: usize) -> String {
    let bars = style.bars();
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
            bars[(t * (bars.len() - 1) as f64).round() as usize]
        })
        .collect()
}

/// Widths of the table's flexible columns for a terminal `width` columns wide: at 80
/// columns the model and the sparklines are narrow; extra columns widen them up to a
/// readable maximum.
struct Layout {
    model: usize,
    spark: usize,
}

/// Columns of the table besides the model and the two sparklines: GPU 3, UTIL 4,
/// clock figures 9, temperature figures 7, power 9, state 8, and the gaps.
const FIXED_COLUMNS: usize = 52;
const MODEL_COLUMNS: (usize, usize) = (14, 24);
const SPARK_COLUMNS: (usize, usize) = (7, SPARK_WIDTH);

impl Layout {
    fn for_width(width: usize) -> Layout {
        let mut extra = width.saturating_sub(FIXED_COLUMNS + MODEL_COLUMNS.0 + 2 * SPARK_COLUMNS.0);
        let model = MODEL_COLUMNS.0 + (extra / 3).min(MODEL_COLUMNS.1 - MODEL_COLUMNS.0);
        extra -= model - MODEL_COLUMNS.0;
        let spark = SPARK_COLUMNS.0 + (extra / 2).min(SPARK_COLUMNS.1 - SPARK_COLUMNS.0);
        Layout { model, spark }
    }
}

/// The worst severity among `r`'s findings for GPU `gpu`, or "ok".
fn worst_severity(r: &Report, gpu: u32) -> &'static str {
    ["critical", "warning", "info"]
        .into_iter()
        .find(|sev| {
            r.findings
                .iter()
                .any(|f| f.gpu == gpu && f.severity == *sev)
        })
        .unwrap_or("ok")
}

/// `model` without the vendor prefix every model shares, cut to `width` characters.
fn short_model(model: &str, width: usize) -> String {
    model
        .strip_prefix("NVIDIA ")
        .unwrap_or(model)
        .chars()
        .take(width)
        .collect()
}

/// What the GPUs were doing, for a report without findings: "no findings" alone does
/// not say whether the rules had anything to judge.
fn observed(r: &Report) -> String {
    let count = |a: &str| r.gpus.iter().filter(|g| g.activity == a).count();
    let (busy, idle, mixed, unknown) = (
        count("busy"),
        count("idle"),
        count("mixed"),
        count("unknown"),
    );
    let total = r.gpus.len();
    let mut parts = Vec::new();
    for (n, what) in [
        (busy, "busy"),
        (mixed, "busy part of the time"),
        (idle, "idle"),
        (unknown, "of unknown activity (MIG without process figures)"),
    ] {
        if n > 0 {
            let whom = match (n == total, total) {
                (true, 1) => "the GPU was".to_string(),
                (true, _) => format!("all {n} GPUs were"),
                (false, _) if n == 1 => "1 GPU was".to_string(),
                (false, _) => format!("{n} GPUs were"),
            };
            parts.push(format!("{whom} {what}"));
        }
    }
    let mut out = format!("No findings: {}", parts.join(", "));
    if busy + mixed == 0 {
        out.push_str(
            " throughout, so there was no work to throttle; no errors or hidden fields \
             either. Run diagnose while the workload runs to judge its clocks.",
        );
    } else {
        out.push_str(if total == 1 {
            ", and it was not throttled, erroring or hiding fields."
        } else {
            ", and no GPU was throttled, erroring or hiding fields."
        });
    }
    out
}

/// Lines of `text` wrapped to `width`, the first starting with `first`, the others
/// with `rest`.
fn wrapped(text: &str, width: usize, first: &str, rest: &str) -> String {
    let options = textwrap::Options::new(width)
        .initial_indent(first)
        .subsequent_indent(rest);
    textwrap::wrap(text, options)
        .iter()
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The human report: a table with sparklines per GPU, then the findings.
pub fn render_text(r: &Report, style: &Style) -> String {
    let layout = Layout::for_width(style.width);
    let (m, s) = (layout.model, layout.spark);
    let mut out = String::new();
    let readings = r.gpus.first().map_or(0, |g| g.readings);
    out.push_str(&wrapped(
        &format!(
            "gpulse diagnose: {} GPU(s) on {}, {:.0} s at {:.0} ms ({readings} readings each)",
            r.gpus.len(),
            r.host,
            r.duration_seconds,
            r.interval_seconds * 1000.0
        ),
        style.width,
        "",
        "  ",
    ));
    out.push('\n');
    let deg = style.degrees();
    out.push_str(&format!(
        "{:<3} {:<m$} {:>4}  {:<cw$}  {:<tw$}  {:>9}  {}\n",
        "GPU",
        "MODEL",
        "UTIL",
        "SM CLOCK (MHz)",
        format!("TEMP ({deg})"),
        "POWER (W)",
        "FINDINGS",
        cw = s + 10,
        tw = s + 8,
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
        let clock = match (g.sm_clock_mhz, g.max_sm_clock_mhz) {
            (Some(c), Some(max)) => format!("{:.0}/{max}", c.mean),
            (Some(c), None) => format!("{:.0}", c.mean),
            (None, _) => "-".to_string(),
        };
        let temp = match (g.temperature_celsius, g.slowdown_temperature_celsius) {
            (Some(t), Some(slow)) => format!("{:.0}/{slow}", t.max),
            (Some(t), None) => format!("{:.0}", t.max),
            (None, _) => "-".to_string(),
        };
        let power = match (g.power_watts, g.power_limit_watts) {
            (Some(p), Some(limit)) => format!("{:.0}/{limit:.0}", p.mean),
            (Some(p), None) => format!("{:.0}", p.mean),
            (None, _) => "-".to_string(),
        };
        let util = g
            .utilization_percent
            .map_or("-".to_string(), |u| format!("{:.0}%", u.mean));
        let worst = worst_severity(r, g.index);
        out.push_str(&format!(
            "{:<3} {:<m$} {:>4}  {:<s$} {:>9}  {:<s$} {:>7}  {:>9}  {}\n",
            g.index,
            short_model(&g.model, m),
            util,
            sparkline_with(style, &g.sm_clock_series, 0.0, clock_hi, s),
            clock,
            sparkline_with(style, &g.temperature_series, 20.0, temp_hi, s),
            temp,
            power,
            style.paint(worst, worst),
        ));
    }
    out.push_str(&wrapped(
        &format!(
            "SM clock: mean/maximum; temperature: highest/slowdown threshold; power: \
             mean/enforced limit; sparklines over the window, scaled to the maximum \
             clock and 20 {deg} to the shutdown temperature."
        ),
        style.width,
        "",
        "",
    ));
    out.push('\n');
    if r.findings.is_empty() {
        out.push_str(&wrapped(&observed(r), style.width, "", ""));
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
        let severity = f.severity.to_uppercase();
        let head = wrapped(
            &format!("{severity:<8}  {label}  {}: {}{note}", f.kind, f.summary),
            style.width,
            "",
            "          ",
        );
        // Coloured after wrapping, so that escape codes never count as width.
        out.push_str(&head.replacen(&severity, &style.paint(f.severity, &severity), 1));
        for e in &f.evidence {
            out.push_str(&wrapped(e, style.width, "          - ", "            "));
        }
        out.push_str(&wrapped(
            &format!("what to do: {}", f.action),
            style.width,
            "          ",
            "          ",
        ));
        out.push('\n');
    }
    style.charset(out)
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

    use gpulse_gpu::simulator::{Scenario, Simulator};

    /// A short diagnosis of `spec` (a few readings are enough for the layout).
    fn report(spec: &str) -> Report {
        let mut sim = Simulator::new(spec.parse().unwrap());
        run(
            &mut sim,
            "gpu-host-with-a-rather-long-name.example.internal",
            Duration::from_millis(40),
            Duration::from_millis(10),
            |_| {},
        )
    }

    /// `text` without its ANSI escape sequences.
    fn unpainted(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn every_scenario_fits_the_terminal_in_every_style() {
        for (name, _) in Scenario::NAMES {
            let r = report(&format!("gpus=3,scenario={name}"));
            for width in [80, 81, 100, 132, 200, 300] {
                for (colour, unicode) in [(false, true), (false, false), (true, true)] {
                    let style = Style {
                        width,
                        colour,
                        unicode,
                    };
                    let text = render_text(&r, &style);
                    for line in unpainted(&text).lines() {
                        assert!(
                            line.chars().count() <= width,
                            "{name} at {width} columns: {} columns: {line}",
                            line.chars().count()
                        );
                    }
                    if !unicode {
                        assert!(text.is_ascii(), "{name}: not ASCII:\n{text}");
                    }
                    assert!(
                        text.contains("UTIL") && text.contains("POWER (W)"),
                        "{text}"
                    );
                }
            }
        }
    }

    #[test]
    fn wider_terminals_get_wider_sparklines() {
        let mut sim = Simulator::new("gpus=1,scenario=thermal".parse().unwrap());
        let r = run(
            &mut sim,
            "h",
            Duration::from_millis(300),
            Duration::from_millis(5),
            |_| {},
        );
        let spark = |width| {
            let text = render_text(
                &r,
                &Style {
                    width,
                    ..Style::PLAIN
                },
            );
            let row = text
                .lines()
                .find(|l| l.starts_with("0 "))
                .unwrap()
                .to_string();
            row.chars().filter(|c| ('▁'..='█').contains(c)).count()
        };
        assert!(spark(80) < spark(132), "{} vs {}", spark(80), spark(132));
        assert_eq!(spark(300), 2 * SPARK_WIDTH);
    }

    #[test]
    fn colour_is_for_terminals_that_want_it() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let utf8 = &[("LANG", "en_GB.UTF-8")];
        assert!(Style::from_env(true, Some(120), env(utf8)).colour);
        assert!(
            !Style::from_env(false, Some(120), env(utf8)).colour,
            "a pipe"
        );
        assert!(!Style::from_env(true, None, env(&[("NO_COLOR", "1")])).colour);
        assert!(
            Style::from_env(true, None, env(&[("NO_COLOR", "")])).colour,
            "empty is unset"
        );
        assert!(!Style::from_env(true, None, env(&[("TERM", "dumb")])).colour);
        // Width: the terminal's, COLUMNS over it, never under 80; a pipe gets 80.
        assert_eq!(Style::from_env(true, Some(120), env(utf8)).width, 120);
        assert_eq!(Style::from_env(false, Some(120), env(utf8)).width, 80);
        assert_eq!(Style::from_env(true, Some(60), env(utf8)).width, 80);
        assert_eq!(
            Style::from_env(false, None, env(&[("COLUMNS", "150")])).width,
            150
        );
        // Character set: the first of LC_ALL, LC_CTYPE, LANG that is set; none is C.
        assert!(Style::from_env(false, None, env(utf8)).unicode);
        assert!(Style::from_env(false, None, env(&[("LC_ALL", "C.utf8")])).unicode);
        assert!(!Style::from_env(false, None, env(&[])).unicode);
        assert!(
            !Style::from_env(
                false,
                None,
                env(&[("LC_ALL", "C"), ("LANG", "en_US.UTF-8")])
            )
            .unicode
        );
        assert!(!Style::from_env(false, None, env(&[("LANG", "de_DE.ISO-8859-1")])).unicode);

        // Painted: the severity words in colour, and the same text without the codes.
        let r = report("gpus=2,scenario=xid");
        let plain = render_text(&r, &Style::PLAIN);
        let painted = render_text(
            &r,
            &Style {
                colour: true,
                ..Style::PLAIN
            },
        );
        assert!(painted.contains("\x1b["), "{painted}");
        assert_eq!(unpainted(&painted), plain);
    }

    #[test]
    fn no_findings_says_what_was_observed() {
        let idle = render_text(&report("gpus=2,scenario=idle"), &Style::PLAIN);
        assert!(idle.contains("No findings: all 2 GPUs were idle"), "{idle}");
        let mut sim = Simulator::new("gpus=1,scenario=training".parse().unwrap());
        let mut r = run(
            &mut sim,
            "h",
            Duration::from_millis(400),
            Duration::from_millis(10),
            |_| {},
        );
        // Whatever a short window of training shows, the words for no findings are
        // about the activity.
        r.findings.clear();
        let busy = render_text(&r, &Style::PLAIN);
        assert!(busy.contains("No findings: the GPU was busy"), "{busy}");
    }

    #[test]
    fn stats_are_min_mean_max() {
        let s = Stats::of(&[1.0, 2.0, 6.0]).unwrap();
        assert_eq!((s.min, s.mean, s.max), (1.0, 3.0, 6.0));
        assert!(Stats::of(&[]).is_none());
    }
}
