//! What `gpulse-agent top` knows and which GPU the user looks at: the host's newest
//! readings with a rolling window for the diagnosis rules (the collector's own
//! [`HostView`]), the sort order, the selection and whether the detail pane is open.
//! No terminal here: the view draws it and the key map drives it.

use std::time::Duration;

use gpulse_exposition::HostView;
use gpulse_gpu::diagnosis::Finding;
use gpulse_gpu::{DeviceInfo, DeviceSample, DeviceState, HostIdentity, Snapshot};

use super::keys::Command;

/// The column the GPU table is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Index,
    Utilization,
    Temperature,
    Power,
    Memory,
}

impl SortKey {
    /// The order `s` steps through.
    pub const ALL: [SortKey; 5] = [
        SortKey::Index,
        SortKey::Utilization,
        SortKey::Temperature,
        SortKey::Power,
        SortKey::Memory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Index => "index",
            SortKey::Utilization => "utilisation",
            SortKey::Temperature => "temperature",
            SortKey::Power => "power",
            SortKey::Memory => "memory",
        }
    }

    fn next(self) -> SortKey {
        let at = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(at + 1) % Self::ALL.len()]
    }

    /// The figure this key sorts by, where the reading has it. Index sorts by nothing
    /// else: ties (and missing figures) fall back to the index anyway.
    fn figure(self, sample: Option<&DeviceSample>) -> Option<u64> {
        let s = sample.filter(|s| s.state == DeviceState::Ok)?;
        match self {
            SortKey::Index => None,
            SortKey::Utilization => s.gpu_utilization_percent.value().map(u64::from),
            SortKey::Temperature => s.temperature_celsius.value().map(u64::from),
            SortKey::Power => s.power_usage_milliwatts.value().map(u64::from),
            SortKey::Memory => s.memory_used_bytes.value(),
        }
    }

    /// Index reads naturally upwards; every figure is most useful largest first.
    fn descending_by_default(self) -> bool {
        self != SortKey::Index
    }
}

/// Whether the view goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// The state of one `top` screen.
#[derive(Debug, Clone)]
pub struct Top {
    host: HostView,
    rate: Duration,
    sort: SortKey,
    reversed: bool,
    /// Position in the inventory of the selected GPU: the selection follows the GPU,
    /// not the row, when the order changes.
    selected: usize,
    detail: bool,
    readings: u64,
    /// Every GPU's findings over the window, most severe first, then by GPU.
    findings: Vec<Finding>,
}

impl Top {
    /// A screen for `hostname`'s GPUs read every `rate`, judging findings over the
    /// newest `window` readings of each (the caller bounds it to what [`HostView`] keeps).
    pub fn new(hostname: &str, inventory: Vec<DeviceInfo>, window: usize, rate: Duration) -> Top {
        let identity = HostIdentity {
            hostname: hostname.to_string(),
            ..HostIdentity::default()
        };
        Top {
            host: HostView::new(identity, inventory, 0).with_findings_readings(window),
            rate,
            sort: SortKey::Index,
            reversed: false,
            selected: 0,
            detail: false,
            readings: 0,
            findings: Vec::new(),
        }
    }

    /// Takes a new reading of every GPU and judges the window again.
    pub fn apply(&mut self, snapshot: Snapshot) {
        // The backend reports exactly its own inventory, so no GPU can be unknown; were
        // one ever, the reading is dropped whole rather than shown half.
        if self.host.apply(snapshot).is_ok() {
            self.readings += 1;
        }
        let mut findings: Vec<Finding> = self.host.gpus.iter().flat_map(|g| g.findings()).collect();
        findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.gpu.cmp(&b.gpu)));
        self.findings = findings;
    }

    /// Acts on a command.
    pub fn command(&mut self, command: Command) -> Flow {
        match command {
            Command::Quit => return Flow::Quit,
            Command::Back if !self.detail => return Flow::Quit,
            Command::Back => self.detail = false,
            Command::ToggleDetail => self.detail = !self.detail,
            Command::Up => self.step(-1),
            Command::Down => self.step(1),
            Command::First => self.select_row(0),
            Command::Last => self.select_row(self.host.gpus.len().saturating_sub(1)),
            Command::SortBy(key) => {
                self.sort = key;
                self.reversed = false;
            }
            Command::NextSort => {
                self.sort = self.sort.next();
                self.reversed = false;
            }
            Command::ReverseSort => self.reversed = !self.reversed,
        }
        Flow::Continue
    }

    fn step(&mut self, by: isize) {
        let row = self.selected_row().unwrap_or(0);
        let last = self.host.gpus.len().saturating_sub(1);
        self.select_row(row.saturating_add_signed(by).min(last));
    }

    fn select_row(&mut self, row: usize) {
        if let Some(&gpu) = self.order().get(row) {
            self.selected = gpu;
        }
    }

    /// Inventory positions in the order the table shows them.
    pub fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.host.gpus.len()).collect();
        let figure = |i: usize| self.sort.figure(self.host.gpus[i].latest());
        let descending = self.sort.descending_by_default() != self.reversed;
        order.sort_by(|&a, &b| {
            // A GPU without the figure goes last whichever way the sort runs.
            let by_figure = match (figure(a), figure(b)) {
                (Some(x), Some(y)) if descending => y.cmp(&x),
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            let by_index = self.host.gpus[a]
                .info
                .index
                .cmp(&self.host.gpus[b].info.index);
            by_figure.then(if self.sort == SortKey::Index && self.reversed {
                by_index.reverse()
            } else {
                by_index
            })
        });
        order
    }

    /// The row the selected GPU is on.
    pub fn selected_row(&self) -> Option<usize> {
        self.order().iter().position(|&g| g == self.selected)
    }

    /// The selected GPU's position in the inventory.
    pub fn selected(&self) -> usize {
        self.selected
    }

    pub fn host(&self) -> &HostView {
        &self.host
    }

    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    pub fn sort(&self) -> SortKey {
        self.sort
    }

    pub fn reversed(&self) -> bool {
        self.reversed
    }

    pub fn detail(&self) -> bool {
        self.detail
    }

    /// Readings taken since the screen opened.
    pub fn readings(&self) -> u64 {
        self.readings
    }

    /// Time between readings.
    pub fn rate(&self) -> Duration {
        self.rate
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gpulse_gpu::GpuBackend;
    use gpulse_gpu::simulator::Simulator;

    /// A screen after `readings` readings of `spec`, one second apart.
    pub(crate) fn screen(spec: &str, readings: i64) -> Top {
        let mut sim = Simulator::new(spec.parse().unwrap());
        let mut top = Top::new("h", sim.inventory().to_vec(), 8, Duration::from_secs(1));
        for t in 0..readings {
            let at = 1_700_000_000_000 + t * 1000;
            top.apply(Snapshot {
                timestamp_unix_ms: at,
                gpus: sim.sample(at),
            });
        }
        top
    }

    fn figures(top: &Top, key: SortKey) -> Vec<Option<u64>> {
        top.order()
            .into_iter()
            .map(|g| key.figure(top.host().gpus[g].latest()))
            .collect()
    }

    #[test]
    fn every_sort_key_orders_the_rows_by_its_figure() {
        let mut top = screen("gpus=8,scenario=thermal", 3);
        for key in SortKey::ALL {
            top.command(Command::SortBy(key));
            let order = top.order();
            let mut seen = order.clone();
            seen.sort();
            assert_eq!(seen, (0..8).collect::<Vec<_>>(), "{key:?}: each GPU once");
            if key == SortKey::Index {
                assert_eq!(order, seen);
                continue;
            }
            let values = figures(&top, key);
            assert!(
                values.windows(2).all(|w| w[0] >= w[1]),
                "{key:?} runs largest first: {values:?}"
            );
            top.command(Command::ReverseSort);
            let values = figures(&top, key);
            assert!(
                values.windows(2).all(|w| w[0] <= w[1]),
                "{key:?} reversed runs smallest first: {values:?}"
            );
        }
        top.command(Command::SortBy(SortKey::Index));
        top.command(Command::ReverseSort);
        assert_eq!(top.order(), (0..8).rev().collect::<Vec<_>>());
    }

    #[test]
    fn next_sort_steps_through_every_key_and_back() {
        let mut top = screen("gpus=2", 1);
        let mut seen = vec![top.sort()];
        for _ in 0..SortKey::ALL.len() {
            top.command(Command::NextSort);
            seen.push(top.sort());
        }
        assert_eq!(&seen[..5], SortKey::ALL);
        assert_eq!(seen[5], SortKey::Index);
    }

    #[test]
    fn the_selection_follows_its_gpu_when_the_order_changes() {
        let mut top = screen("gpus=8,scenario=training", 2);
        top.command(Command::Down);
        top.command(Command::Down);
        assert_eq!((top.selected(), top.selected_row()), (2, Some(2)));
        top.command(Command::SortBy(SortKey::Power));
        assert_eq!(top.selected(), 2, "the same GPU stays selected");
        assert_eq!(top.order()[top.selected_row().unwrap()], 2);
        // Moving is by rows on screen.
        let row = top.selected_row().unwrap();
        top.command(Command::Down);
        let expected = top.order().get(row + 1).copied().unwrap_or(top.order()[7]);
        assert_eq!(top.selected(), expected);
    }

    #[test]
    fn the_selection_stops_at_either_end() {
        let mut top = screen("gpus=3", 1);
        top.command(Command::Up);
        assert_eq!(top.selected_row(), Some(0));
        for _ in 0..5 {
            top.command(Command::Down);
        }
        assert_eq!(top.selected_row(), Some(2));
        top.command(Command::First);
        assert_eq!(top.selected_row(), Some(0));
        top.command(Command::Last);
        assert_eq!(top.selected_row(), Some(2));
    }

    #[test]
    fn escape_closes_the_detail_before_it_quits() {
        let mut top = screen("gpus=1", 1);
        assert_eq!(top.command(Command::ToggleDetail), Flow::Continue);
        assert!(top.detail());
        assert_eq!(top.command(Command::Back), Flow::Continue);
        assert!(!top.detail());
        assert_eq!(top.command(Command::Back), Flow::Quit);
        top.command(Command::ToggleDetail);
        assert_eq!(top.command(Command::Quit), Flow::Quit, "q quits at once");
    }

    #[test]
    fn findings_come_from_the_window_most_severe_first() {
        let top = screen("gpus=2,scenario=thermal", 2);
        assert!(
            top.findings()
                .iter()
                .any(|f| f.kind == gpulse_gpu::diagnosis::FindingKind::ThermalThrottling),
            "{:?}",
            top.findings()
        );
        let lost = screen("gpus=3,scenario=lost", 3);
        let severities: Vec<_> = lost.findings().iter().map(|f| f.severity).collect();
        assert!(
            severities.windows(2).all(|w| w[0] >= w[1]),
            "{severities:?}"
        );
        assert_eq!(lost.readings(), 3);
        assert!(
            lost.host().gpus.iter().all(|g| g.recent.len() == 3),
            "every reading is in the window"
        );
        let long = screen("gpus=1", 20);
        assert_eq!(
            long.host().gpus[0].recent.len(),
            8,
            "the window keeps its size"
        );
    }

    #[test]
    fn a_gpu_without_a_figure_sorts_last_either_way() {
        let mut top = screen("gpus=3,scenario=lost", 2);
        let lost = top.host().gpus.len() - 1;
        for reversed in [false, true] {
            top.command(Command::SortBy(SortKey::Temperature));
            if reversed {
                top.command(Command::ReverseSort);
            }
            assert_eq!(*top.order().last().unwrap(), lost, "reversed: {reversed}");
        }
    }
}
