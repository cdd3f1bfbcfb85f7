//! The columns of `top`'s GPU table: what each shows of a GPU's newest reading, how
//! wide it is, and which go first when the terminal is too narrow for all of them.

use gpulse_exposition::GpuView;
use gpulse_gpu::diagnosis::{Activity, GpuWindow, Severity};
use gpulse_gpu::{DeviceState, Reading, ThrottleReasons};

/// How a cell asks to be drawn; the view turns it into colour (or nothing, without).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Normal,
    /// Nothing to see: idle, no reason, not exposed.
    Muted,
    /// Performance is being lost.
    Warning,
    /// Past a hardware limit, or the GPU is gone.
    Critical,
}

impl From<Severity> for Tone {
    fn from(severity: Severity) -> Tone {
        match severity {
            Severity::Critical => Tone::Critical,
            Severity::Warning => Tone::Warning,
            Severity::Info => Tone::Normal,
        }
    }
}

/// One cell: its text and how to draw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub tone: Tone,
}

impl Cell {
    fn new(text: impl Into<String>, tone: Tone) -> Cell {
        Cell {
            text: text.into(),
            tone,
        }
    }

    fn normal(text: impl Into<String>) -> Cell {
        Cell::new(text, Tone::Normal)
    }
}

/// One column of the GPU table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// ASCII only, so that it reads the same in every locale.
    pub header: &'static str,
    /// Columns the widest value takes (the throttle column takes whatever is left
    /// beyond this).
    pub width: u16,
    /// Narrow terminals drop the lowest first; [`KEEP_ALWAYS`] never goes.
    pub keep: u8,
    /// Whether the column takes the width the others leave.
    pub flexible: bool,
    pub cell: fn(&GpuView) -> Cell,
}

/// The keep rank of columns every width shows.
pub const KEEP_ALWAYS: u8 = u8::MAX;

/// Every column, left to right.
pub const COLUMNS: [Column; 11] = [
    Column {
        header: "GPU",
        width: 3,
        keep: KEEP_ALWAYS,
        flexible: false,
        cell: index,
    },
    Column {
        header: "MODEL",
        width: 14,
        keep: 1,
        flexible: false,
        cell: model,
    },
    Column {
        header: "UTIL",
        width: 4,
        keep: KEEP_ALWAYS,
        flexible: false,
        cell: utilization,
    },
    Column {
        header: "SM MHz",
        width: 9,
        keep: KEEP_ALWAYS,
        flexible: false,
        cell: sm_clock,
    },
    Column {
        header: "THROTTLE",
        width: 10,
        keep: KEEP_ALWAYS,
        flexible: true,
        cell: throttle,
    },
    Column {
        header: "TEMP C",
        width: 7,
        keep: KEEP_ALWAYS,
        flexible: false,
        cell: temperature,
    },
    Column {
        header: "POWER W",
        width: 9,
        keep: KEEP_ALWAYS,
        flexible: false,
        cell: power,
    },
    Column {
        header: "MEM GiB",
        width: 9,
        keep: KEEP_ALWAYS,
        flexible: false,
        cell: memory,
    },
    Column {
        header: "PCIE",
        width: 9,
        keep: 4,
        flexible: false,
        cell: pcie,
    },
    Column {
        header: "NVLINK",
        width: 6,
        keep: 3,
        flexible: false,
        cell: nvlink,
    },
    Column {
        header: "PROCS",
        width: 5,
        keep: 2,
        flexible: false,
        cell: processes,
    },
];

/// Columns between two cells.
pub const SPACING: u16 = 1;

/// The columns that fit in `width` terminal columns (after `reserved` for the
/// selection mark), dropping the lowest keep rank first.
pub fn fitting(width: u16, reserved: u16) -> Vec<Column> {
    let mut shown: Vec<Column> = COLUMNS.to_vec();
    let needed = |cols: &[Column]| {
        cols.iter().map(|c| c.width).sum::<u16>() + SPACING * (cols.len() as u16).saturating_sub(1)
    };
    while needed(&shown) + reserved > width {
        let Some(drop) = shown
            .iter()
            .enumerate()
            .filter(|(_, c)| c.keep != KEEP_ALWAYS)
            .min_by_key(|(_, c)| c.keep)
            .map(|(i, _)| i)
        else {
            break;
        };
        shown.remove(drop);
    }
    shown
}

/// A reading's text: the value, "-" where the GPU does not expose it, "?" where the
/// read failed this time.
fn reading<T: Copy>(r: &Reading<T>, show: impl Fn(T) -> String) -> Cell {
    match r {
        Reading::Value(v) => Cell::normal(show(*v)),
        Reading::Unsupported => Cell::new("-", Tone::Muted),
        Reading::Failed => Cell::new("?", Tone::Warning),
    }
}

/// The newest reading when the GPU answered it; `None` before the first and once lost.
fn answered(gpu: &GpuView) -> Option<&gpulse_gpu::DeviceSample> {
    gpu.latest().filter(|s| s.state == DeviceState::Ok)
}

/// `f` of the newest reading, or the cell a missing one shows.
fn with_sample(gpu: &GpuView, f: impl Fn(&gpulse_gpu::DeviceSample) -> Cell) -> Cell {
    answered(gpu).map_or_else(|| Cell::new("-", Tone::Muted), f)
}

/// The index; the view tones it by the GPU's worst finding, which it already holds.
fn index(gpu: &GpuView) -> Cell {
    Cell::normal(gpu.info.index.to_string())
}

/// The model without the vendor prefix every model shares.
fn model(gpu: &GpuView) -> Cell {
    let m = &gpu.info.model;
    Cell::normal(m.strip_prefix("NVIDIA ").unwrap_or(m))
}

fn utilization(gpu: &GpuView) -> Cell {
    with_sample(gpu, |s| {
        reading(&s.gpu_utilization_percent, |u| format!("{u}%"))
    })
}

fn sm_clock(gpu: &GpuView) -> Cell {
    let max = gpu.info.max_sm_clock_mhz;
    with_sample(gpu, |s| {
        reading(&s.sm_clock_mhz, |c| match max {
            Some(max) => format!("{c}/{max}"),
            None => c.to_string(),
        })
    })
}

/// A short label for a clock-event reason (the table's throttle column); the detail
/// pane shows the stable names.
pub fn reason_label(name: &str) -> &str {
    match name {
        "gpu_idle" => "idle",
        "applications_clocks_setting" => "app clocks",
        "sw_power_cap" => "power cap",
        "hw_slowdown" => "hw slowdown",
        "sync_boost" => "sync boost",
        "sw_thermal_slowdown" => "sw thermal",
        "hw_thermal_slowdown" => "hw thermal",
        "hw_power_brake_slowdown" => "power brake",
        "display_clock_setting" => "display",
        other => other,
    }
}

/// The reasons clocks are held down, as labels: the limiting ones; "idle" when the GPU
/// is only idle; "none" when no reason is set.
pub fn reasons_text(reasons: ThrottleReasons, label: impl Fn(&str) -> &str) -> (String, Tone) {
    let limiting = reasons.limiting();
    if limiting.is_empty() {
        return if reasons.contains(ThrottleReasons::GPU_IDLE) {
            (label("gpu_idle").to_string(), Tone::Muted)
        } else {
            ("none".to_string(), Tone::Muted)
        };
    }
    let mut names: Vec<&str> = limiting.names().map(&label).collect();
    // Bits a newer driver sets that this build does not name still hold clocks down.
    let named = ThrottleReasons::NAMED
        .iter()
        .fold(ThrottleReasons::empty(), |all, (flag, _)| all | *flag);
    if !(limiting - named).is_empty() {
        names.push("other");
    }
    let hot = ThrottleReasons::HW_THERMAL_SLOWDOWN
        | ThrottleReasons::HW_SLOWDOWN
        | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN;
    let tone = if limiting.intersects(hot) {
        Tone::Critical
    } else {
        Tone::Warning
    };
    (names.join(","), tone)
}

fn throttle(gpu: &GpuView) -> Cell {
    if gpu.latest().is_some_and(|s| s.state == DeviceState::Lost) {
        return Cell::new("LOST", Tone::Critical);
    }
    with_sample(gpu, |s| match s.throttle_reasons {
        Reading::Value(r) => {
            let (text, tone) = reasons_text(r, reason_label);
            Cell::new(text, tone)
        }
        ref other => reading(other, |_| String::new()),
    })
}

/// Degrees within which of the slowdown threshold the temperature is a warning.
const NEAR_SLOWDOWN_CELSIUS: u32 = 5;

fn temperature(gpu: &GpuView) -> Cell {
    let slowdown = gpu.info.slowdown_temperature_celsius;
    with_sample(gpu, |s| {
        let mut cell = reading(&s.temperature_celsius, |t| match slowdown {
            Some(slow) => format!("{t}/{slow}"),
            None => t.to_string(),
        });
        if let (Some(t), Some(slow)) = (s.temperature_celsius.value(), slowdown) {
            if t >= slow {
                cell.tone = Tone::Critical;
            } else if t + NEAR_SLOWDOWN_CELSIUS >= slow {
                cell.tone = Tone::Warning;
            }
        }
        cell
    })
}

/// Share of the limit at which the power reading is a warning: the power cap acts
/// about there.
const NEAR_POWER_LIMIT: f64 = 0.98;

fn power(gpu: &GpuView) -> Cell {
    with_sample(gpu, |s| {
        let limit = s.power_limit_milliwatts.value();
        let mut cell = reading(&s.power_usage_milliwatts, |mw| match limit {
            Some(l) => format!("{:.0}/{:.0}", f64::from(mw) / 1e3, f64::from(l) / 1e3),
            None => format!("{:.0}", f64::from(mw) / 1e3),
        });
        if let (Some(mw), Some(l)) = (s.power_usage_milliwatts.value(), limit)
            && l > 0
            && f64::from(mw) >= NEAR_POWER_LIMIT * f64::from(l)
        {
            cell.tone = Tone::Warning;
        }
        cell
    })
}

pub const GIB: f64 = (1u64 << 30) as f64;
/// Share of memory in use at which the next allocation may fail.
const NEAR_MEMORY_FULL: f64 = 0.95;

fn memory(gpu: &GpuView) -> Cell {
    let total = gpu.info.memory_total_bytes;
    with_sample(gpu, |s| {
        let mut cell = reading(&s.memory_used_bytes, |b| match total {
            Some(t) => format!("{:.1}/{:.0}", b as f64 / GIB, t as f64 / GIB),
            None => format!("{:.1}", b as f64 / GIB),
        });
        if let (Some(b), Some(t)) = (s.memory_used_bytes.value(), total)
            && t > 0
            && b as f64 >= NEAR_MEMORY_FULL * t as f64
        {
            cell.tone = Tone::Warning;
        }
        cell
    })
}

fn pcie(gpu: &GpuView) -> Cell {
    let (max_gen, max_width) = (gpu.info.max_pcie_generation, gpu.info.max_pcie_width);
    with_sample(gpu, |s| {
        let (Some(g), Some(w)) = (s.pcie_generation.value(), s.pcie_width.value()) else {
            // Half a link state says little; show the generation alone where only it reads.
            return reading(&s.pcie_generation, |g| format!("gen{g}"));
        };
        let text = match (max_gen, max_width) {
            (Some(mg), Some(mw)) => format!("{g}x{w}/{mg}x{mw}"),
            _ => format!("{g}x{w}"),
        };
        // An idle link trains down to save power; only a busy one below its maximum
        // costs anything.
        let below = max_gen.is_some_and(|m| g < m) || max_width.is_some_and(|m| w < m);
        let busy = GpuWindow::activity(s) == Activity::Busy;
        Cell::new(
            text,
            if below && busy {
                Tone::Warning
            } else {
                Tone::Normal
            },
        )
    })
}

/// Links up of the links the GPU has; "-" for a GPU without NVLink.
fn nvlink(gpu: &GpuView) -> Cell {
    with_sample(gpu, |s| match &s.nvlinks {
        Reading::Value(links) if !links.is_empty() => {
            let up = links.iter().filter(|l| l.active).count();
            Cell::new(
                format!("{up}/{}", links.len()),
                if up < links.len() {
                    Tone::Warning
                } else {
                    Tone::Normal
                },
            )
        }
        Reading::Value(_) | Reading::Unsupported => Cell::new("-", Tone::Muted),
        Reading::Failed => Cell::new("?", Tone::Warning),
    })
}

fn processes(gpu: &GpuView) -> Cell {
    with_sample(gpu, |s| {
        reading(&s.processes.as_ref(), |p| p.len().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_terminals_drop_the_lowest_ranks_first() {
        let all = fitting(500, 2);
        assert_eq!(all.len(), COLUMNS.len());
        let names = |cols: Vec<Column>| cols.iter().map(|c| c.header).collect::<Vec<_>>();
        let at_80 = names(fitting(80, 2));
        assert!(
            !at_80.contains(&"MODEL") && !at_80.contains(&"PROCS"),
            "{at_80:?}"
        );
        assert!(
            at_80.contains(&"PCIE") && at_80.contains(&"NVLINK"),
            "{at_80:?}"
        );
        // However narrow, the columns every width keeps stay.
        let at_10 = names(fitting(10, 2));
        let always: Vec<_> = COLUMNS
            .iter()
            .filter(|c| c.keep == KEEP_ALWAYS)
            .map(|c| c.header)
            .collect();
        assert_eq!(at_10, always);
        for width in 0..200 {
            let cols = fitting(width, 2);
            let need: u16 = cols.iter().map(|c| c.width + SPACING).sum::<u16>() + 2 - SPACING;
            assert!(need <= width || cols.len() == always.len(), "{width}");
        }
    }

    #[test]
    fn every_named_reason_has_a_short_label_and_unknown_bits_show() {
        for (flag, name) in ThrottleReasons::NAMED {
            assert_ne!(reason_label(name), name, "{name} has no short label");
            let (text, _) = reasons_text(flag, reason_label);
            if flag.limiting().is_empty() && flag != ThrottleReasons::GPU_IDLE {
                assert_eq!(text, "none", "{name} does not hold clocks down");
            } else {
                assert_eq!(text, reason_label(name));
            }
        }
        let unknown = ThrottleReasons::from_bits_retain(1 << 40) | ThrottleReasons::SW_POWER_CAP;
        assert_eq!(reasons_text(unknown, reason_label).0, "power cap,other");
        assert_eq!(
            reasons_text(ThrottleReasons::HW_THERMAL_SLOWDOWN, reason_label).1,
            Tone::Critical
        );
    }
}
