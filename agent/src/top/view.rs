//! How `top` draws its state: a header, the GPU table, then either every process and
//! every finding, or the selected GPU's detail, and the keys at the bottom. The same
//! drawing serves the live screen and `--once`'s plain-text frame.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    HighlightSpacing, Paragraph, Row, StatefulWidget, Table, TableState, Widget, Wrap,
};

use gpulse_exposition::GpuView;
use gpulse_gpu::diagnosis::{Finding, Severity};
use gpulse_gpu::health::{ProcessSample, WorkloadKind};
use gpulse_gpu::{DeviceState, Reading};

use super::columns::{self, Cell, GIB, Tone};
use super::state::Top;

/// How the screen is drawn: colour where the terminal wants it, block and arrow signs
/// where the locale can show them (the same judgement as `diagnose`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    pub colour: bool,
    pub unicode: bool,
}

impl Look {
    pub fn from_style(style: &crate::diagnose::Style) -> Look {
        Look {
            colour: style.colour,
            unicode: style.unicode,
        }
    }

    fn tone(&self, tone: Tone) -> Style {
        if !self.colour {
            return Style::default();
        }
        match tone {
            Tone::Normal => Style::default(),
            Tone::Muted => Style::default().fg(Color::DarkGray),
            Tone::Warning => Style::default().fg(Color::Yellow),
            Tone::Critical => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        }
    }

    fn severity(&self, severity: Severity) -> Style {
        match severity {
            Severity::Info if self.colour => Style::default().fg(Color::Cyan),
            other => self.tone(Tone::from(other)),
        }
    }

    /// Section titles: bold, which NO_COLOR allows.
    fn title(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }

    /// Column headers.
    fn heading(&self) -> Style {
        Style::default().add_modifier(Modifier::UNDERLINED)
    }

    /// The selected row's mark, visible even where attributes are not.
    fn mark(&self) -> &'static str {
        if self.unicode { "▶ " } else { "> " }
    }

    /// `text` in the terminal's character set, as `diagnose` writes it.
    fn text(&self, text: String) -> String {
        crate::diagnose::Style {
            unicode: self.unicode,
            ..crate::diagnose::Style::PLAIN
        }
        .charset(text)
    }

    fn degrees(&self) -> &'static str {
        if self.unicode { "°C" } else { "C" }
    }

    fn arrows(&self) -> &'static str {
        if self.unicode { "↑↓" } else { "Up/Down" }
    }

    fn direction(&self, descending: bool) -> &'static str {
        match (descending, self.unicode) {
            (true, true) => "↓",
            (false, true) => "↑",
            (true, false) => "(desc)",
            (false, false) => "(asc)",
        }
    }
}

/// The smallest terminal the screen is laid out for; a smaller one is told so.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 12;
/// Lines the panes under the GPU table keep however many GPUs there are.
const MIN_BOTTOM_LINES: u16 = 6;
/// Width of the selection mark before each GPU row.
const MARK_WIDTH: u16 = 2;

/// Draws the live screen on `area` of `buf`.
pub fn render(top: &Top, look: &Look, area: Rect, buf: &mut Buffer) {
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        Paragraph::new(format!(
            "gpulse top needs a terminal of at least {MIN_WIDTH}x{MIN_HEIGHT}; this one is \
             {}x{}. Enlarge it, or press q to quit.",
            area.width, area.height
        ))
        .wrap(Wrap { trim: true })
        .render(area, buf);
        return;
    }
    let gpus = top.host().gpus.len() as u16;
    let table_lines = (1 + gpus).min(area.height - 2 - MIN_BOTTOM_LINES);
    let [header, table, bottom, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(table_lines),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    header_line(top, look).render(header, buf);
    let mut state = TableState::default().with_selected(top.selected_row());
    StatefulWidget::render(
        gpu_table(top, look, table.width, true),
        table,
        buf,
        &mut state,
    );
    if top.detail() {
        Paragraph::new(detail(top, look, bottom.width)).render(bottom, buf);
    } else {
        let processes = process_list(top);
        let findings = finding_lines(top, look);
        let (process_lines, finding_lines_wanted) =
            (processes.lines(), 1 + findings.len().max(1) as u16);
        // The processes get what the findings leave, but never less than half.
        let process_height = process_lines.min(
            bottom
                .height
                .saturating_sub(finding_lines_wanted)
                .max(bottom.height / 2),
        );
        let [procs, finds] =
            Layout::vertical([Constraint::Length(process_height), Constraint::Fill(1)])
                .areas(bottom);
        processes.render(look, procs, buf);
        Paragraph::new(findings_section(top, look, findings)).render(finds, buf);
    }
    footer_line(look).render(footer, buf);
}

/// One frame as plain text `width` columns wide, every GPU, process and finding in it:
/// what `--once` prints. Findings wrap rather than being cut: a script wants them whole.
pub fn render_once(top: &Top, look: &Look, width: u16) -> String {
    let gpus = top.host().gpus.len() as u16;
    let processes = process_list(top);
    let heights = [1, 1 + gpus, processes.lines()];
    let area = Rect::new(0, 0, width, heights.iter().sum());
    let mut buf = Buffer::empty(area);
    let [header, table, procs] = Layout::vertical(heights.map(Constraint::Length)).areas(area);
    header_line(top, look).render(header, &mut buf);
    Widget::render(gpu_table(top, look, width, false), table, &mut buf);
    processes.render(look, procs, &mut buf);
    let mut out = buffer_text(&buf);
    let findings = findings_section(top, look, finding_lines(top, look));
    for line in findings.lines {
        let text: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
        let options =
            textwrap::Options::new(usize::from(width).max(1)).subsequent_indent("         ");
        for wrapped in textwrap::wrap(&text, options) {
            out.push_str(wrapped.trim_end());
            out.push('\n');
        }
    }
    out
}

/// The characters of `buf`, one line per row, without trailing blanks.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        let mut x = area.left();
        while x < area.right() {
            let symbol = buf[(x, y)].symbol();
            line.push_str(symbol);
            // A wide character covers the cells after it.
            x += (Span::raw(symbol).width() as u16).max(1);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn header_line(top: &Top, look: &Look) -> Line<'static> {
    let host = top.host();
    let descending = top.sort() != super::state::SortKey::Index;
    let descending = descending != top.reversed();
    Line::from(vec![
        Span::styled("gpulse top", look.title()),
        Span::raw(format!(
            "  {}  {} GPU{}  every {}  sort: {} {}  readings: {}",
            host.identity.hostname,
            host.gpus.len(),
            if host.gpus.len() == 1 { "" } else { "s" },
            humantime::format_duration(top.rate()),
            top.sort().name(),
            look.direction(descending),
            top.readings(),
        )),
    ])
}

fn footer_line(look: &Look) -> Line<'static> {
    let keys = [
        ("q", "quit"),
        (look.arrows(), "select"),
        ("Enter", "detail"),
        ("s", "sort"),
        ("i/u/t/p/m", "sort by"),
        ("r", "reverse"),
    ];
    let mut spans = Vec::new();
    for (key, what) in keys {
        spans.push(Span::styled(key, look.title()));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

fn styled(cell: Cell, look: &Look) -> ratatui::widgets::Cell<'static> {
    ratatui::widgets::Cell::from(Span::styled(cell.text, look.tone(cell.tone)))
}

/// The worst severity among `findings` for GPU `index`.
fn worst(findings: &[Finding], index: u32) -> Option<Severity> {
    findings
        .iter()
        .filter(|f| f.gpu == index)
        .map(|f| f.severity)
        .max()
}

fn gpu_table(top: &Top, look: &Look, width: u16, live: bool) -> Table<'static> {
    let reserved = if live { MARK_WIDTH } else { 0 };
    let shown = columns::fitting(width, reserved);
    let rows = top.order().into_iter().map(|g| {
        let gpu = &top.host().gpus[g];
        Row::new(shown.iter().map(|c| {
            let mut cell = (c.cell)(gpu);
            if c.header == columns::COLUMNS[0].header {
                cell.tone = worst(top.findings(), gpu.info.index).map_or(Tone::Normal, Tone::from);
            }
            styled(cell, look)
        }))
    });
    let widths = shown.iter().map(|c| {
        if c.flexible {
            Constraint::Min(c.width)
        } else {
            Constraint::Length(c.width)
        }
    });
    let table = Table::new(rows, widths)
        .header(Row::new(shown.iter().map(|c| c.header)).style(look.heading()))
        .column_spacing(columns::SPACING);
    if live {
        table
            .highlight_symbol(look.mark())
            .highlight_spacing(HighlightSpacing::Always)
            .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    } else {
        table.highlight_spacing(HighlightSpacing::Never)
    }
}

/// Every process on the host's GPUs, or why there is none to show.
struct ProcessList {
    rows: Vec<(u32, ProcessSample)>,
    /// GPUs that answered with a process list.
    reporting: usize,
}

impl ProcessList {
    /// Lines the section takes: the title, then a header and a row per process, or
    /// one line saying why there is none.
    fn lines(&self) -> u16 {
        if self.rows.is_empty() {
            2
        } else {
            2 + self.rows.len() as u16
        }
    }

    fn render(self, look: &Look, area: Rect, buf: &mut Buffer) {
        let [title, body] =
            Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
        Line::styled(format!("Processes ({})", self.rows.len()), look.title()).render(title, buf);
        if self.rows.is_empty() {
            let why = if self.reporting == 0 {
                "These GPUs report no process list (unsupported, or not read yet)."
            } else {
                "No process holds a GPU."
            };
            Line::styled(why, look.tone(Tone::Muted)).render(body, buf);
            return;
        }
        let rows = self.rows.into_iter().map(|(gpu, p)| {
            Row::new([
                gpu.to_string(),
                p.pid.to_string(),
                p.sm_utilization_percent
                    .map_or("-".to_string(), |u| format!("{u}%")),
                p.used_memory_bytes
                    .map_or("-".to_string(), |b| format!("{:.1}", b as f64 / GIB)),
                kind_label(p.workload_kind).to_string(),
                p.workload,
            ])
        });
        Widget::render(
            Table::new(
                rows,
                [
                    Constraint::Length(3),
                    Constraint::Length(8),
                    Constraint::Length(4),
                    Constraint::Length(7),
                    Constraint::Length(9),
                    Constraint::Fill(1),
                ],
            )
            .header(
                Row::new(["GPU", "PID", "SM", "MEM GiB", "KIND", "WORKLOAD"]).style(look.heading()),
            )
            .column_spacing(1),
            body,
            buf,
        );
    }
}

/// Processes of every GPU in index order, the largest memory first within a GPU.
fn process_list(top: &Top) -> ProcessList {
    let mut rows = Vec::new();
    let mut reporting = 0;
    for gpu in &top.host().gpus {
        if let Some(list) = answered(gpu).and_then(|s| s.processes.get()) {
            reporting += 1;
            let mut list = list.clone();
            list.sort_by_key(|p| std::cmp::Reverse(p.used_memory_bytes));
            rows.extend(list.into_iter().map(|p| (gpu.info.index, p)));
        }
    }
    ProcessList { rows, reporting }
}

fn answered(gpu: &GpuView) -> Option<&gpulse_gpu::DeviceSample> {
    gpu.latest().filter(|s| s.state == DeviceState::Ok)
}

/// What a workload is, in a word.
fn kind_label(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::KubernetesPod => "pod",
        WorkloadKind::Container => "container",
        WorkloadKind::SlurmJob => "slurm job",
        WorkloadKind::SystemdUnit => "unit",
        WorkloadKind::Process => "process",
    }
}

/// One line per kind of finding and severity, naming every GPU it concerns; the
/// summary is the first GPU's.
fn finding_lines(top: &Top, look: &Look) -> Vec<Line<'static>> {
    let findings = top.findings();
    let mut shown: Vec<(Severity, gpulse_gpu::diagnosis::FindingKind)> = Vec::new();
    let mut lines = Vec::new();
    for f in findings {
        if shown.contains(&(f.severity, f.kind)) {
            continue;
        }
        shown.push((f.severity, f.kind));
        let gpus: Vec<String> = findings
            .iter()
            .filter(|g| g.kind == f.kind && g.severity == f.severity)
            .map(|g| g.gpu.to_string())
            .collect();
        let whom = if gpus.len() == 1 {
            format!("GPU {}", gpus[0])
        } else {
            format!("GPUs {}", gpus.join(","))
        };
        lines.push(Line::from(vec![
            Span::styled(
                format!("{:<8}", f.severity.name().to_uppercase()),
                look.severity(f.severity),
            ),
            Span::raw(look.text(format!(" {whom}  {}: {}", f.kind.name(), f.summary))),
        ]));
    }
    lines
}

/// The findings' title, then each line, or a line saying there is none.
fn findings_section(top: &Top, look: &Look, lines: Vec<Line<'static>>) -> Text<'static> {
    let judged = top.host().gpus.first().map_or(0, |g| g.recent.len());
    let mut text = vec![Line::styled(
        format!(
            "Findings ({}) over the last {judged} reading{}",
            lines.len(),
            if judged == 1 { "" } else { "s" }
        ),
        look.title(),
    )];
    if lines.is_empty() {
        text.push(Line::styled(
            "No findings: no GPU is throttled, erroring, idle while held or hiding fields.",
            look.tone(Tone::Muted),
        ));
    }
    text.extend(lines);
    Text::from(text)
}

/// The selected GPU: what it is, its clocks, limits and links in full, its processes,
/// and its findings with their evidence and what to do.
fn detail(top: &Top, look: &Look, width: u16) -> Text<'static> {
    let Some(gpu) = top.host().gpus.get(top.selected()) else {
        return Text::default();
    };
    let info = &gpu.info;
    let deg = look.degrees();
    let mut lines = vec![Line::styled(
        format!(
            "GPU {}  {}  {}  bus {}",
            info.index, info.model, info.uuid, info.pci_bus_id
        ),
        look.title(),
    )];
    match gpu.latest() {
        None => lines.push(Line::raw("No reading yet.")),
        Some(s) if s.state == DeviceState::Lost => lines.push(Line::styled(
            "The GPU stopped answering (fallen off the bus, or no handle).",
            look.tone(Tone::Critical),
        )),
        Some(s) => {
            let reasons = match s.throttle_reasons {
                Reading::Value(r) => columns::reasons_text(r, |name| name).0,
                Reading::Unsupported => "not exposed".to_string(),
                Reading::Failed => "read failed".to_string(),
            };
            lines.push(Line::raw(format!("clock events: {reasons}")));
            let figure = |r: Option<u32>| r.map_or("-".to_string(), |v| v.to_string());
            lines.push(Line::raw(format!(
                "SM clock {} of {} MHz; temperature {} {deg} (slowdown {}, shutdown {}); \
                 power {} of {} W",
                figure(s.sm_clock_mhz.value()),
                figure(info.max_sm_clock_mhz),
                figure(s.temperature_celsius.value()),
                figure(info.slowdown_temperature_celsius),
                figure(info.shutdown_temperature_celsius),
                figure(s.power_usage_milliwatts.value().map(|mw| mw / 1000)),
                figure(s.power_limit_milliwatts.value().map(|mw| mw / 1000)),
            )));
            lines.push(Line::raw(format!(
                "PCIe gen {} x{} (maximum gen {} x{}); NVLink: {}",
                figure(s.pcie_generation.value()),
                figure(s.pcie_width.value()),
                figure(info.max_pcie_generation),
                figure(info.max_pcie_width),
                nvlink_detail(s),
            )));
        }
    }
    let processes: Vec<ProcessSample> = answered(gpu)
        .and_then(|s| s.processes.get().cloned())
        .unwrap_or_default();
    lines.push(Line::default());
    lines.push(Line::styled(
        format!("Processes ({})", processes.len()),
        look.title(),
    ));
    for p in processes {
        lines.push(Line::raw(format!(
            "  pid {}  SM {}  {} GiB  {} {}",
            p.pid,
            p.sm_utilization_percent
                .map_or("-".to_string(), |u| format!("{u}%")),
            p.used_memory_bytes
                .map_or("-".to_string(), |b| format!("{:.1}", b as f64 / GIB)),
            kind_label(p.workload_kind),
            p.workload
        )));
    }
    let findings: Vec<&Finding> = top
        .findings()
        .iter()
        .filter(|f| f.gpu == info.index)
        .collect();
    lines.push(Line::default());
    lines.push(Line::styled(
        format!("Findings ({})", findings.len()),
        look.title(),
    ));
    for f in findings {
        lines.push(Line::from(vec![
            Span::styled(
                format!("{:<8}", f.severity.name().to_uppercase()),
                look.severity(f.severity),
            ),
            Span::raw(look.text(format!(" {}: {}", f.kind.name(), f.summary))),
        ]));
        for e in &f.evidence {
            lines.extend(wrapped(&look.text(e.clone()), width, "  - ", "    "));
        }
        let action = look.text(format!("what to do: {}", f.action));
        lines.extend(wrapped(&action, width, "  ", "  "));
    }
    Text::from(lines)
}

/// `text` wrapped to `width`, the first line after `first`, the others after `rest`.
fn wrapped(text: &str, width: u16, first: &str, rest: &str) -> Vec<Line<'static>> {
    let options = textwrap::Options::new(usize::from(width).max(1))
        .initial_indent(first)
        .subsequent_indent(rest);
    textwrap::wrap(text, options)
        .into_iter()
        .map(|l| Line::raw(l.into_owned()))
        .collect()
}

/// Links up of all, and which are down.
fn nvlink_detail(s: &gpulse_gpu::DeviceSample) -> String {
    match &s.nvlinks {
        Reading::Value(links) if !links.is_empty() => {
            let down: Vec<String> = links
                .iter()
                .filter(|l| !l.active)
                .map(|l| l.link.to_string())
                .collect();
            let up = links.len() - down.len();
            if down.is_empty() {
                format!("{up} of {} links up", links.len())
            } else {
                format!(
                    "{up} of {} links up; down: {}",
                    links.len(),
                    down.join(", ")
                )
            }
        }
        Reading::Value(_) | Reading::Unsupported => "none on this GPU".to_string(),
        Reading::Failed => "read failed".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::keys::Command;
    use crate::top::state::tests::screen;
    use gpulse_gpu::simulator::Scenario;
    use proptest::prelude::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    const PLAIN: Look = Look {
        colour: false,
        unicode: true,
    };

    /// The live screen of `top` on a `width` x `height` test terminal, as text.
    fn drawn(top: &Top, look: &Look, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal
            .draw(|frame| render(top, look, frame.area(), frame.buffer_mut()))
            .unwrap();
        buffer_text(terminal.backend().buffer())
    }

    /// The GPU table's row of GPU `index` in `text`, with or without the selection mark.
    fn row(text: &str, index: u32) -> Option<&str> {
        text.lines()
            .skip_while(|l| !l.contains("SM MHz"))
            .skip(1)
            .take_while(|l| {
                l.starts_with("▶ ") || l.starts_with(' ') || l.starts_with(char::is_numeric)
            })
            .find(|l| {
                let l = l.strip_prefix("▶ ").unwrap_or(l);
                l.split_whitespace().next() == Some(&index.to_string())
            })
    }

    #[test]
    fn every_scenario_fits_80x24_and_200x50_with_every_gpu_whole() {
        for (name, _) in Scenario::NAMES {
            let mut top = screen(&format!("gpus=8,scenario={name}"), 3);
            for detail in [false, true] {
                if detail {
                    top.command(Command::ToggleDetail);
                }
                for (width, height) in [(80, 24), (200, 50)] {
                    let text = drawn(&top, &PLAIN, width, height);
                    let lines: Vec<&str> = text.lines().collect();
                    assert_eq!(lines.len(), usize::from(height));
                    assert!(lines[0].starts_with("gpulse top  h  8 GPUs"), "{text}");
                    assert!(lines[lines.len() - 1].starts_with("q quit"), "{text}");
                    for gpu in &top.host().gpus {
                        let row = row(&text, gpu.info.index).unwrap_or_else(|| {
                            panic!(
                                "{name} {width}x{height}: GPU {} missing:\n{text}",
                                gpu.info.index
                            )
                        });
                        // Every figure is whole: the widest cells are the first to be cut.
                        for column in columns::fitting(width, MARK_WIDTH) {
                            let cell = (column.cell)(gpu).text;
                            if !column.flexible {
                                assert!(
                                    row.contains(&cell),
                                    "{name} {width}x{height}: {} {cell:?} cut in {row:?}",
                                    column.header
                                );
                            }
                        }
                    }
                    if width == 200 {
                        assert!(text.contains("MODEL") && text.contains("PROCS"), "{text}");
                    }
                    if detail {
                        assert!(text.contains("clock events:"), "{name}:\n{text}");
                    } else {
                        assert!(
                            text.contains("Processes (") && text.contains("Findings ("),
                            "{text}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_selected_gpu_is_marked_and_its_detail_shows_its_findings() {
        let mut top = screen("gpus=4,scenario=thermal", 2);
        top.command(Command::Down);
        let text = drawn(&top, &PLAIN, 120, 40);
        assert!(row(&text, 1).unwrap().starts_with("▶ 1"), "{text}");
        assert!(row(&text, 0).unwrap().starts_with("  0"), "{text}");
        top.command(Command::ToggleDetail);
        let text = drawn(&top, &PLAIN, 120, 40);
        let uuid = &top.host().gpus[1].info.uuid;
        assert!(
            text.contains("GPU 1  NVIDIA") && text.contains(uuid.as_str()),
            "{text}"
        );
        assert!(
            text.contains("thermal_throttling") && text.contains("what to do:"),
            "{text}"
        );
        assert!(text.contains("pid 10001"), "the GPU's own process:\n{text}");
        assert!(
            !text.contains("pid 10000"),
            "another GPU's process:\n{text}"
        );
    }

    #[test]
    fn the_throttle_reason_and_the_finding_show_for_a_hot_gpu() {
        let top = screen("gpus=2,scenario=thermal", 2);
        let text = drawn(&top, &PLAIN, 120, 30);
        assert!(row(&text, 0).unwrap().contains("thermal"), "{text}");
        assert!(
            text.contains("WARNING  GPUs 0,1  thermal_throttling"),
            "{text}"
        );
    }

    #[test]
    fn more_gpus_than_lines_scroll_to_the_selection() {
        let mut top = screen("gpus=16", 1);
        top.command(Command::Last);
        let text = drawn(&top, &PLAIN, 80, 24);
        assert!(row(&text, 15).unwrap().starts_with("▶ 15"), "{text}");
        assert!(row(&text, 0).is_none(), "GPU 0 scrolled away:\n{text}");
    }

    #[test]
    fn a_terminal_too_small_is_told_its_size() {
        let top = screen("gpus=2", 1);
        let text = drawn(&top, &PLAIN, 40, 8);
        // The message wraps: read it as words.
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            text.contains("at least 60x12") && text.contains("40x8"),
            "{text}"
        );
    }

    #[test]
    fn ascii_where_the_locale_is_not_utf8() {
        let mut top = screen("gpus=2,scenario=thermal", 2);
        let ascii = Look {
            colour: false,
            unicode: false,
        };
        let text = drawn(&top, &ascii, 100, 30);
        assert!(text.is_ascii(), "{text}");
        top.command(Command::ToggleDetail);
        let text = drawn(&top, &ascii, 100, 40);
        assert!(text.is_ascii() && text.contains("> 0"), "{text}");
    }

    #[test]
    fn once_shows_every_gpu_process_and_finding_within_its_width() {
        for (name, _) in Scenario::NAMES {
            let top = screen(&format!("gpus=8,scenario={name}"), 2);
            for width in [80u16, 132] {
                let text = render_once(&top, &PLAIN, width);
                for line in text.lines() {
                    assert!(line.chars().count() <= usize::from(width), "{name}: {line}");
                }
                for gpu in &top.host().gpus {
                    assert!(
                        row(&text, gpu.info.index).is_some(),
                        "{name}: GPU {}:\n{text}",
                        gpu.info.index
                    );
                    if let Some(list) = answered(gpu).and_then(|s| s.processes.get()) {
                        for p in list {
                            assert!(
                                text.contains(&format!("{}", p.pid)),
                                "{name}: pid {}",
                                p.pid
                            );
                        }
                    }
                }
                for f in top.findings() {
                    assert!(
                        text.contains(f.kind.name()),
                        "{name}: {}:\n{text}",
                        f.kind.name()
                    );
                }
                assert!(!text.contains('▶'), "no selection in a snapshot:\n{text}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the terminal's size, the screen draws within it without panicking,
        /// and one big enough always ends with the keys.
        #[test]
        fn any_terminal_size_draws(width in 1u16..260, height in 1u16..70, gpus in 1u32..=16, detail: bool, down in 0usize..20) {
            let mut top = screen(&format!("gpus={gpus},scenario=nvlink-errors"), 1);
            for _ in 0..down {
                top.command(Command::Down);
            }
            if detail {
                top.command(Command::ToggleDetail);
            }
            let text = drawn(&top, &PLAIN, width, height);
            prop_assert_eq!(text.lines().count(), usize::from(height));
            if width >= MIN_WIDTH && height >= MIN_HEIGHT {
                prop_assert!(text.lines().last().unwrap().starts_with("q quit"));
                let selected = top.host().gpus[top.selected()].info.index;
                let marked = format!("▶ {selected}");
                prop_assert!(row(&text, selected).is_some_and(|r| r.starts_with(&marked)), "{}", text);
            }
        }
    }
}
