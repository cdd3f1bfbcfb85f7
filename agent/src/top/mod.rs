//! `gpulse-agent top`: this host's GPUs live in the terminal, refreshed every reading:
//! utilisation, clocks and why they are held down, temperature, power, memory, PCIe and
//! NVLink, the processes on each GPU with their workload, and the findings of the
//! diagnosis rules over a rolling window of readings, as the collector judges them.
//! `--once` prints one frame as plain text for scripts. No collector needed.

mod columns;
mod keys;
mod state;
mod terminal;
mod view;

use std::io::IsTerminal;
use std::time::Duration;

use gpulse_gpu::{GpuBackend, Snapshot};

pub use keys::KEYS;
pub use state::SortKey;
pub use view::{MIN_HEIGHT, MIN_WIDTH};

use crate::diagnose::Style;
use crate::sampler::now_unix_ms;

/// Default time between readings (and redraws).
pub const DEFAULT_RATE: Duration = Duration::from_secs(1);
/// The shortest time between readings: NVML's utilisation counters cover about 1/6 s,
/// so faster readings repeat themselves.
pub const MIN_RATE: Duration = Duration::from_millis(100);
/// Default readings per GPU the findings are judged over: 30 s at the default rate.
pub const DEFAULT_WINDOW: usize = 30;
/// The most readings per GPU the findings can be judged over: what the collector's
/// view of a host keeps at most.
pub const MAX_WINDOW: usize = gpulse_exposition::MAX_FINDINGS_READINGS;

/// Why `top` cannot run.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(
        "--rate {}: must be at least {} (NVML's utilisation counters do not change faster)",
        humantime::format_duration(*.0),
        humantime::format_duration(MIN_RATE)
    )]
    RateTooShort(Duration),
    #[error(
        "--window {0}: give between 1 and {MAX_WINDOW} readings per GPU to judge findings over"
    )]
    Window(usize),
    #[error(
        "standard output is not a terminal, and `gpulse-agent top` draws a full-screen view. \
         For one plain-text frame use `gpulse-agent top --once`; for a report a script can \
         read use `gpulse-agent diagnose --json`"
    )]
    NotATerminal,
    #[error("cannot drive the terminal: {source}")]
    Terminal { source: std::io::Error },
    #[error("the GPU readings stopped (the backend failed); see the message above")]
    ReadingsStopped,
}

/// How `top` reads and judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopOptions {
    rate: Duration,
    window: usize,
}

impl TopOptions {
    /// `rate` between readings, at least [`MIN_RATE`]; findings over the newest
    /// `window` readings of each GPU, 1 to [`MAX_WINDOW`].
    pub fn try_new(rate: Duration, window: usize) -> Result<TopOptions, TopError> {
        if rate < MIN_RATE {
            return Err(TopError::RateTooShort(rate));
        }
        if !(1..=MAX_WINDOW).contains(&window) {
            return Err(TopError::Window(window));
        }
        Ok(TopOptions { rate, window })
    }

    pub fn rate(&self) -> Duration {
        self.rate
    }

    pub fn window(&self) -> usize {
        self.window
    }
}

impl Default for TopOptions {
    fn default() -> Self {
        TopOptions {
            rate: DEFAULT_RATE,
            window: DEFAULT_WINDOW,
        }
    }
}

/// The GPU table's column headers, left to right (docs/top.md explains each).
pub fn column_headers() -> impl Iterator<Item = &'static str> {
    columns::COLUMNS.iter().map(|c| c.header)
}

/// Refuses before anything is opened when standard output is not a terminal.
pub fn require_terminal() -> Result<(), TopError> {
    if std::io::stdout().is_terminal() {
        Ok(())
    } else {
        Err(TopError::NotATerminal)
    }
}

/// Runs the live screen on this terminal until the user quits.
pub fn run(
    backend: Box<dyn GpuBackend>,
    hostname: &str,
    options: TopOptions,
) -> Result<(), TopError> {
    require_terminal()?;
    let top = state::Top::new(
        hostname,
        backend.inventory().to_vec(),
        options.window,
        options.rate,
    );
    terminal::run(top, backend, view::Look::from_style(&Style::detect()))
}

/// One frame as plain text, for scripts: two readings one `rate` apart, so that the
/// rules that look at counters (replays, XIDs, link errors) see them move, drawn as
/// wide as `style` says with every GPU, process and finding.
pub fn once(
    backend: &mut dyn GpuBackend,
    hostname: &str,
    options: TopOptions,
    style: &Style,
) -> String {
    let mut top = state::Top::new(
        hostname,
        backend.inventory().to_vec(),
        options.window,
        options.rate,
    );
    for reading in 0..2 {
        if reading > 0 {
            std::thread::sleep(options.rate);
        }
        let at = now_unix_ms();
        top.apply(Snapshot {
            timestamp_unix_ms: at,
            gpus: backend.sample(at),
        });
    }
    let look = view::Look {
        colour: false,
        unicode: style.unicode,
    };
    let width = u16::try_from(style.width).unwrap_or(u16::MAX);
    style.charset(view::render_once(&top, &look, width))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = include_str!("../../../docs/top.md");

    #[test]
    fn the_docs_explain_every_column_and_every_key() {
        for header in column_headers() {
            assert!(
                DOC.contains(&format!("| {header} |")),
                "docs/top.md lacks column {header}"
            );
        }
        for (keys, _) in KEYS {
            for key in keys.split(", ").flat_map(|k| k.split('/')) {
                assert!(
                    DOC.contains(&format!("`{key}`")),
                    "docs/top.md lacks key {key}"
                );
            }
        }
    }

    #[test]
    fn settings_are_bounded_and_say_which_flag() {
        assert!(TopOptions::try_new(MIN_RATE, 1).is_ok());
        assert!(TopOptions::try_new(DEFAULT_RATE, MAX_WINDOW).is_ok());
        let short = TopOptions::try_new(Duration::from_millis(99), 5).unwrap_err();
        assert!(
            short
                .to_string()
                .starts_with("--rate 99ms: must be at least 100ms"),
            "{short}"
        );
        for window in [0, MAX_WINDOW + 1] {
            let err = TopOptions::try_new(DEFAULT_RATE, window).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("--window {window}: give between 1 and 64")),
                "{err}"
            );
        }
        let d = TopOptions::default();
        assert_eq!(TopOptions::try_new(d.rate(), d.window()).unwrap(), d);
    }

    #[test]
    fn once_in_ascii_where_the_locale_is_not_utf8() {
        let mut sim =
            gpulse_gpu::simulator::Simulator::new("gpus=2,scenario=thermal".parse().unwrap());
        let style = Style {
            width: 90,
            colour: false,
            unicode: false,
        };
        let options = TopOptions::try_new(MIN_RATE, 4).unwrap();
        let text = once(&mut sim, "h", options, &style);
        assert!(text.is_ascii(), "{text}");
        assert!(
            text.contains("thermal_throttling") && text.contains("(asc)"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.len() <= 90), "{text}");
    }
}
