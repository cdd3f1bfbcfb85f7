//! The report page (`/report`): a provider scorecard per GPU model, spend over time,
//! the GPUs that waste the most and, where Kubernetes pods hold GPUs, the namespaces, as one HTML document with server-rendered SVG charts.
//! No script and nothing fetched from elsewhere: it renders the same offline.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::ledger::Usage;
use super::pricing::model_key;
use super::report::{Aggregate, DAY_MS, Dim, ESTIMATE_NOTE, GpuUsage, Summary, Window, rfc3339};

/// Colours for providers in charts, in order of spend (Tableau 10, readable on white).
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];
/// GPUs listed under "worst GPUs".
const WORST_GPUS: usize = 15;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn usd(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("${}", thousands(v.round() as i64))
    } else {
        format!("${v:.2}")
    }
}

/// Whole dollars for an axis, cents only below $10.
fn usd_axis(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("${}", thousands(v.round() as i64))
    } else {
        format!("${v:.2}")
    }
}

/// 1234567 as "1,234,567".
fn thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

/// A quantity (GPU-hours, kWh) with the precision its magnitude needs: whole numbers
/// with separators from 100 up, three significant digits below, so that a short
/// window's 0.25 GPU-hours does not read as 0.
fn quantity(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.abs() >= 100.0 {
        return thousands(v.round() as i64);
    }
    if v == 0.0 {
        return "0".into();
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let text = format!("{v:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    if text == "0" || text == "-0" {
        // Below a millionth: say it is there.
        "<0.000001".into()
    } else {
        text
    }
}

/// GPU indices as ranges: [0, 1, 2, 3, 5] as "0-3, 5".
fn index_ranges(mut indices: Vec<u32>) -> String {
    indices.sort_unstable();
    indices.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end + 1 {
            i += 1;
            end = indices[i];
        }
        parts.push(if end > start {
            format!("{start}-{end}")
        } else {
            start.to_string()
        });
        i += 1;
    }
    parts.join(", ")
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{:.0}%", v * 100.0))
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(unnamed)" } else { s }
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:24px 32px;color:#1f2328;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:16px;margin:20px 0 6px}.note{color:#57606a;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;min-width:140px}
.card .v{font-size:20px;font-weight:600}.card .k{font-size:12px;color:#57606a}
table{border-collapse:collapse;font-size:13px;margin:6px 0 4px}
th,td{padding:4px 10px;border-bottom:1px solid #eaeef2;text-align:right;white-space:nowrap}
th{background:#f6f8fa;font-weight:600}td:first-child,th:first-child{text-align:left}
td.l,th.l{text-align:left}.bad{color:#cf222e;font-weight:600}.muted{color:#8c959f}
.scorecard{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
svg text{font-family:inherit}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
";

/// Renders the page from per-GPU rows over the window and per-GPU-per-day rows.
pub fn render(window: Window, per_gpu: &[GpuUsage], per_day: &[GpuUsage]) -> String {
    let mut total = Aggregate::default();
    for r in per_gpu {
        total.add(r);
    }
    let t = total.summary();
    // Providers in order of spend, each with a colour.
    let mut spend: BTreeMap<String, f64> = BTreeMap::new();
    for r in per_gpu {
        *spend.entry(r.dims.provider.clone()).or_default() += r.usage.list_cost;
    }
    let mut providers: Vec<(String, f64)> = spend.into_iter().collect();
    providers.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let colour: BTreeMap<String, &str> = providers
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (p.clone(), PALETTE[i % PALETTE.len()]))
        .collect();

    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>gpulse cost and efficiency report</title><style>{STYLE}</style></head><body>\
         <h1>GPU cost and efficiency</h1>\
         <div class=\"note\" id=\"window\">{} to {} (UTC) &middot; US dollars &middot; {}</div>",
        esc(&rfc3339(window.from_ms)),
        esc(&rfc3339(window.to_ms)),
        esc(ESTIMATE_NOTE)
    );
    cards(&mut h, &t);
    if per_gpu.is_empty() {
        h.push_str(
            "<p id=\"empty\">No GPU time in this window yet: agents report, and the ledger fills \
             hour by hour.</p></body></html>",
        );
        return h;
    }
    scorecard(&mut h, per_gpu, &colour);
    spend_over_time(&mut h, window, per_day, &providers, &colour);
    worst(&mut h, per_gpu);
    by_namespace(&mut h, per_gpu);
    h.push_str(
        "<p class=\"note\">Effective cost per busy GPU-hour = list cost / busy GPU-hours (busy: \
         utilisation of at least 1%). Idle waste: cost of idle or lost GPU time. Throttle loss: \
         busy time x (1 - SM clock / max SM clock), priced. Errors: XID events and \
         uncorrectable ECC errors; PCIe replays (link-level retries, routine in small numbers) \
         are counted apart. Unpriced GPUs are left out of costs, \
         never counted as free. Same data: <a href=\"/api/v1/report\">/api/v1/report</a> (JSON), \
         <a href=\"/api/v1/report?format=csv\">CSV (FOCUS 1.2)</a>.</p></body></html>",
    );
    h
}

fn cards(h: &mut String, t: &Summary) {
    let cards = [
        ("spend", usd(t.list_cost_usd), "list cost"),
        ("gpu-hours", quantity(t.gpu_hours), "GPU-hours observed"),
        ("busy", pct(t.busy_ratio), "of GPU time busy"),
        (
            "per-busy-hour",
            t.effective_cost_per_busy_gpu_hour_usd
                .map_or_else(|| "–".into(), usd),
            "per busy GPU-hour",
        ),
        ("idle", usd(t.idle_cost_usd), "idle waste"),
        ("throttle", usd(t.throttle_loss_usd), "throttle loss"),
        (
            "energy",
            format!("{} kWh", quantity(t.energy_kwh)),
            "GPU energy",
        ),
        (
            "unpriced",
            quantity(t.unpriced_gpu_hours),
            "unpriced GPU-hours",
        ),
    ];
    h.push_str("<div class=\"cards\">");
    for (id, v, k) in cards {
        let _ = write!(
            h,
            "<div class=\"card\" id=\"card-{id}\"><div class=\"v\">{}</div><div class=\"k\">{}</div></div>",
            esc(&v),
            esc(k)
        );
    }
    h.push_str("</div>");
}

fn scorecard(h: &mut String, rows: &[GpuUsage], colour: &BTreeMap<String, &str>) {
    h.push_str("<h2 id=\"scorecard\">Provider scorecard per GPU model</h2>");
    let by = [Dim::Model, Dim::Provider];
    let groups = super::report::group(rows, &by);
    let mut models: BTreeMap<String, Vec<(String, Aggregate)>> = BTreeMap::new();
    for ((key, _), agg) in groups {
        models
            .entry(key[0].clone())
            .or_default()
            .push((key[1].clone(), agg));
    }
    let mut order: Vec<(String, f64)> = models
        .iter()
        .map(|(m, v)| (m.clone(), v.iter().map(|(_, a)| a.usage.list_cost).sum()))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (model, _) in order {
        let mut entries = models.remove(&model).unwrap_or_default();
        entries.sort_by(|a, b| {
            let ea = a.1.summary().effective_cost_per_busy_gpu_hour_usd;
            let eb = b.1.summary().effective_cost_per_busy_gpu_hour_usd;
            ea.unwrap_or(f64::INFINITY)
                .total_cmp(&eb.unwrap_or(f64::INFINITY))
                .then_with(|| a.0.cmp(&b.0))
        });
        let _ = write!(
            h,
            "<h3>{}</h3><div class=\"scorecard\" data-model=\"{}\">",
            esc(&model.to_uppercase()),
            esc(&model)
        );
        h.push_str(
            "<table class=\"scorecard-table\"><tr><th>provider</th><th>GPUs</th><th>GPU-h</th>\
             <th>$ / busy GPU-h</th><th>busy</th><th>idle waste</th><th>throttle loss</th>\
             <th>energy kWh</th><th>clock under load</th><th>errors / 1k GPU-h</th>\
             <th>PCIe replays / GPU-h</th>\
             <th class=\"l\">fields hidden</th></tr>",
        );
        for (provider, agg) in &entries {
            let s = agg.summary();
            let waste_share = if s.list_cost_usd > 0.0 {
                format!(" ({:.0}%)", s.idle_cost_usd / s.list_cost_usd * 100.0)
            } else {
                String::new()
            };
            let per_busy = match s.effective_cost_per_busy_gpu_hour_usd {
                Some(v) => usd(v),
                None if s.unpriced_gpu_hours > 0.0 => {
                    "<span class=\"muted\">unpriced</span>".into()
                }
                None => "–".into(),
            };
            let clock = match s.clock_under_load_ratio {
                Some(v) if v < 0.85 => format!("<span class=\"bad\">{}</span>", pct(Some(v))),
                v => pct(v),
            };
            let _ = write!(
                h,
                "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
                colour.get(provider).copied().unwrap_or("#999"),
                esc(or_none(provider)),
                s.gpus,
                quantity(s.gpu_hours),
                per_busy,
                pct(s.busy_ratio),
                usd(s.idle_cost_usd),
                waste_share,
                usd(s.throttle_loss_usd),
                quantity(s.energy_kwh),
                clock,
                s.errors_per_1000_gpu_hours
                    .map_or_else(|| "–".into(), quantity),
                s.pcie_replays_per_gpu_hour
                    .map_or_else(|| "–".into(), quantity),
                if s.hidden_fields.is_empty() {
                    "<span class=\"muted\">none</span>".to_string()
                } else {
                    esc(&s.hidden_fields.join(", "))
                },
            );
        }
        h.push_str("</table>");
        bar_chart(h, &model, &entries, colour);
        h.push_str("</div>");
    }
}

/// Horizontal bars of effective cost per busy GPU-hour, one per provider.
fn bar_chart(
    h: &mut String,
    model: &str,
    entries: &[(String, Aggregate)],
    colour: &BTreeMap<String, &str>,
) {
    let bars: Vec<(&str, f64)> = entries
        .iter()
        .filter_map(|(p, a)| {
            a.summary()
                .effective_cost_per_busy_gpu_hour_usd
                .map(|v| (p.as_str(), v))
        })
        .collect();
    if bars.is_empty() {
        return;
    }
    let max = bars
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let (label_w, bar_w, row_h) = (110.0, 260.0, 24.0);
    let height = 28.0 + row_h * bars.len() as f64;
    let _ = write!(
        h,
        "<svg class=\"chart bars\" role=\"img\" aria-label=\"cost per busy GPU-hour, {}\" \
         width=\"{}\" height=\"{height}\" viewBox=\"0 0 {} {height}\">\
         <text x=\"0\" y=\"14\" font-size=\"12\" fill=\"#57606a\">$ per busy GPU-hour</text>",
        esc(model),
        label_w + bar_w + 70.0,
        label_w + bar_w + 70.0
    );
    for (i, (p, v)) in bars.iter().enumerate() {
        let y = 22.0 + i as f64 * row_h;
        let w = (v / max * bar_w).max(1.0);
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"><title>{}: {}</title></rect>\
             <text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{}</text>",
            label_w - 6.0,
            y + 13.0,
            esc(or_none(p)),
            row_h - 6.0,
            colour.get(*p).copied().unwrap_or("#999"),
            esc(p),
            usd(*v),
            label_w + w + 4.0,
            y + 13.0,
            usd(*v)
        );
    }
    h.push_str("</svg>");
}

fn spend_over_time(
    h: &mut String,
    window: Window,
    per_day: &[GpuUsage],
    providers: &[(String, f64)],
    colour: &BTreeMap<String, &str>,
) {
    h.push_str("<h2 id=\"spend\">Spend over time</h2>");
    let first_day = window.from_ms.div_euclid(DAY_MS);
    let last_day = (window.to_ms - 1).div_euclid(DAY_MS);
    let days = (last_day - first_day + 1).max(1) as usize;
    let mut cells: BTreeMap<(i64, &str), f64> = BTreeMap::new();
    for r in per_day {
        if let Some(d) = r.day_ms {
            *cells
                .entry((d.div_euclid(DAY_MS), r.dims.provider.as_str()))
                .or_default() += r.usage.list_cost;
        }
    }
    let mut day_totals = vec![0.0_f64; days];
    for ((d, _), v) in &cells {
        if let Some(t) = usize::try_from(d - first_day)
            .ok()
            .and_then(|i| day_totals.get_mut(i))
        {
            *t += v;
        }
    }
    let max = nice_max(day_totals.iter().copied().fold(0.0, f64::max));
    let (left, top, plot_w, plot_h) = (64.0, 12.0, 1100.0, 240.0);
    let slot = plot_w / days as f64;
    let bar = (slot * 0.8).max(1.0);
    let width = left + plot_w + 20.0;
    let height = top + plot_h + 40.0;
    let _ = write!(
        h,
        "<svg id=\"spend-chart\" class=\"chart\" role=\"img\" aria-label=\"list cost per day by provider\" \
         width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">"
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = top + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = write!(
            h,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eaeef2\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#57606a\">{}</text>",
            left + plot_w,
            left - 6.0,
            y + 4.0,
            usd_axis(v)
        );
    }
    let label_every = days.div_ceil(15).max(1);
    for i in 0..days {
        let day = first_day + i as i64;
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let mut y = top + plot_h;
        for (p, _) in providers {
            let v = cells.get(&(day, p.as_str())).copied().unwrap_or(0.0);
            if v <= 0.0 || max <= 0.0 {
                continue;
            }
            let bh = v / max * plot_h;
            y -= bh;
            let _ = write!(
                h,
                "<rect class=\"spend-bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{} {}: {}</title></rect>",
                colour.get(p).copied().unwrap_or("#999"),
                esc(&rfc3339(day * DAY_MS)[..10]),
                esc(or_none(p)),
                usd(v)
            );
        }
        if i.is_multiple_of(label_every) {
            let _ = write!(
                h,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#57606a\">{}</text>",
                x + bar / 2.0,
                top + plot_h + 16.0,
                esc(&rfc3339(day * DAY_MS)[5..10])
            );
        }
    }
    let mut lx = left;
    for (p, _) in providers {
        let _ = write!(
            h,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{}</text>",
            top + plot_h + 26.0,
            colour.get(p).copied().unwrap_or("#999"),
            lx + 14.0,
            top + plot_h + 35.0,
            esc(or_none(p))
        );
        lx += 24.0 + 7.5 * or_none(p).len() as f64;
    }
    h.push_str("</svg>");
}

/// A round number at or above `v` for an axis maximum.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= step * mag {
            return step * mag;
        }
    }
    10.0 * mag
}

/// Each GPU's rows (one per container holding it) as one: the worst table is per GPU.
fn whole_gpus(per_gpu: &[GpuUsage]) -> Vec<GpuUsage> {
    let mut gpus: BTreeMap<(&str, &str), GpuUsage> = BTreeMap::new();
    for r in per_gpu {
        gpus.entry((&r.dims.host, &r.dims.uuid))
            .and_modify(|g| g.usage.add(&r.usage))
            .or_insert_with(|| r.clone());
    }
    gpus.into_values().collect()
}

/// Idle waste and throttle loss per Kubernetes namespace, most waste first: which
/// namespace pays for idle GPUs, whose GPUs throttle. Left out where no GPU time is held
/// by a pod or known to be unallocated.
fn by_namespace(h: &mut String, per_gpu: &[GpuUsage]) {
    if per_gpu.iter().all(|r| r.dims.namespace.is_empty()) {
        return;
    }
    h.push_str(
        "<h2 id=\"namespaces\">By namespace</h2><p class=\"note\">GPU time goes to the \
         containers holding the GPU, split evenly when several share it or its MIG devices; \
         unallocated: nobody held the GPU; not kubernetes: the host does not say.</p>\
         <table id=\"namespace-table\"><tr><th class=\"l\">namespace</th><th>GPUs</th>\
         <th>GPU-h</th><th>busy</th><th>idle waste</th><th>throttle loss</th>\
         <th>wasted GPU-h</th></tr>",
    );
    let mut groups: Vec<(String, Aggregate)> = super::report::group(per_gpu, &[Dim::Namespace])
        .into_iter()
        .map(|((mut key, _), agg)| (key.remove(0), agg))
        .collect();
    let waste = |a: &Aggregate| a.usage.idle_cost + a.usage.throttle_loss;
    groups.sort_by(|a, b| {
        waste(&b.1)
            .total_cmp(&waste(&a.1))
            .then_with(|| a.0.cmp(&b.0))
    });
    for (namespace, agg) in &groups {
        let s = agg.summary();
        let u = &agg.usage;
        let priced = u.unpriced_s < u.observed_s;
        let money = |v: f64| {
            if priced {
                usd(v)
            } else {
                "<span class=\"muted\">unpriced</span>".into()
            }
        };
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(namespace),
            agg.gpus.len(),
            quantity(s.gpu_hours),
            pct(s.busy_ratio),
            money(u.idle_cost),
            money(u.throttle_loss),
            quantity((u.idle_s + u.lost_s) / 3600.0),
        );
    }
    h.push_str("</table>");
}

fn worst(h: &mut String, per_gpu: &[GpuUsage]) {
    let per_gpu = &whole_gpus(per_gpu);
    h.push_str(
        "<h2 id=\"worst\">GPUs that waste the most</h2><p class=\"note\">Idle waste plus throttle \
         loss; unpriced GPUs by wasted GPU-hours after them. GPUs of one host whose figures \
         read the same share a row; its figures are per GPU.</p>",
    );
    let waste = |u: &Usage| u.idle_cost + u.throttle_loss;
    let wasted_hours = |u: &Usage| (u.idle_s + u.lost_s) / 3600.0;
    let mut rows: Vec<&GpuUsage> = per_gpu.iter().collect();
    rows.sort_by(|a, b| {
        waste(&b.usage)
            .total_cmp(&waste(&a.usage))
            .then_with(|| wasted_hours(&b.usage).total_cmp(&wasted_hours(&a.usage)))
            .then_with(|| a.dims.cmp(&b.dims))
    });
    // Rows in waste order; a GPU joins the first row of its host, model and provider
    // whose cells read exactly as its own would.
    struct Row {
        host: String,
        model: String,
        provider: String,
        cells: String,
        gpus: Vec<u32>,
    }
    let mut table: Vec<Row> = Vec::new();
    for r in rows {
        let mut a = Aggregate::default();
        a.add(r);
        let s = a.summary();
        let priced = r.usage.unpriced_s < r.usage.observed_s;
        let money = |v: f64| {
            if priced {
                usd(v)
            } else {
                "<span class=\"muted\">unpriced</span>".into()
            }
        };
        let cells = format!(
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            quantity(s.gpu_hours),
            pct(s.busy_ratio),
            pct(s.clock_under_load_ratio),
            money(r.usage.idle_cost),
            money(r.usage.throttle_loss),
            quantity(wasted_hours(&r.usage)),
            thousands(
                i64::try_from(
                    r.usage
                        .xid_errors
                        .saturating_add(r.usage.ecc_uncorrected_errors)
                )
                .unwrap_or(i64::MAX),
            ),
            thousands(i64::try_from(r.usage.pcie_replays).unwrap_or(i64::MAX)),
            thousands(i64::try_from(r.usage.lost_samples).unwrap_or(i64::MAX)),
        );
        let model = model_key(&r.dims.model);
        let same = table.iter().position(|row| {
            row.host == r.dims.host
                && row.model == model
                && row.provider == r.dims.provider
                && row.cells == cells
        });
        match same {
            Some(i) => table[i].gpus.push(r.dims.index),
            None if table.len() < WORST_GPUS => table.push(Row {
                host: r.dims.host.clone(),
                model,
                provider: r.dims.provider.clone(),
                cells,
                gpus: vec![r.dims.index],
            }),
            None => {}
        }
    }
    h.push_str(
        "<table id=\"worst-table\"><tr><th>host</th><th>GPUs</th><th class=\"l\">model</th>\
         <th class=\"l\">provider</th><th>GPU-h</th><th>busy</th><th>clock under load</th>\
         <th>idle waste</th><th>throttle loss</th><th>wasted GPU-h</th><th>errors</th><th>PCIe replays</th>\
         <th>lost readings</th></tr>",
    );
    for row in &table {
        let _ = write!(
            h,
            "<tr data-gpus=\"{}\"><td>{}</td><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>{}</tr>",
            row.gpus.len(),
            esc(&row.host),
            esc(&index_ranges(row.gpus.clone())),
            esc(&row.model),
            esc(or_none(&row.provider)),
            row.cells,
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_figures_read_well() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(thousands(21_269), "21,269");
        assert_eq!(thousands(-1_234_567), "-1,234,567");
        assert_eq!(usd(12.5), "$12.50");
        assert_eq!(usd(21_269.4), "$21,269");
        assert_eq!(nice_max(3_600.0), 5_000.0);
        assert_eq!(quantity(0.25), "0.25");
        assert_eq!(quantity(0.004_17), "0.00417");
        assert_eq!(quantity(1.0), "1");
        assert_eq!(quantity(12.345), "12.3");
        assert_eq!(quantity(99.96), "100");
        assert_eq!(quantity(1_234.4), "1,234");
        assert_eq!(quantity(0.0), "0");
        assert_eq!(index_ranges(vec![5, 0, 1, 2, 3, 7, 8]), "0-3, 5, 7-8");
    }

    fn gpu(host: &str, index: u32, idle_s: f64) -> GpuUsage {
        GpuUsage {
            dims: std::sync::Arc::new(crate::cost::store::GpuDims {
                host: host.into(),
                uuid: format!("GPU-{host}-{index}"),
                index,
                model: "NVIDIA H100 80GB HBM3".into(),
                provider: "aws".into(),
                region: String::new(),
                zone: String::new(),
                instance_type: String::new(),
                labels: Default::default(),
                ..Default::default()
            }),
            day_ms: None,
            usage: Usage {
                observed_s: 900.0,
                idle_s,
                busy_s: 900.0 - idle_s,
                utilization_known_s: 900.0,
                list_cost: 1.0,
                idle_cost: idle_s / 900.0,
                pcie_replays: 5,
                samples: 180,
                ..Usage::default()
            },
        }
    }

    /// The worst table's rows: (GPUs cell, number of GPUs).
    fn worst_rows(html: &str) -> Vec<(String, usize)> {
        let table = &html[html.find("id=\"worst-table\"").unwrap()..];
        let table = &table[..table.find("</table>").unwrap()];
        table
            .split("<tr data-gpus=\"")
            .skip(1)
            .map(|row| {
                let n = row[..row.find('"').unwrap()].parse().unwrap();
                let cells: Vec<&str> = row.split("<td>").collect();
                let gpus = cells[2].split('<').next().unwrap().to_string();
                (gpus, n)
            })
            .collect()
    }

    #[test]
    fn identical_gpus_of_a_host_share_a_row() {
        let mut rows: Vec<GpuUsage> = (0..8).map(|i| gpu("a", i, 900.0)).collect();
        // GPU 5 of host a worked: a row of its own; host b's identical GPUs: another.
        rows[5] = gpu("a", 5, 0.0);
        rows.extend((0..4).map(|i| gpu("b", i, 900.0)));
        let html = render(Window::aligned(0, DAY_MS), &rows, &[]);
        let table = worst_rows(&html);
        assert_eq!(
            table,
            vec![
                ("0-4, 6-7".to_string(), 7),
                ("0-3".to_string(), 4),
                ("5".to_string(), 1)
            ],
            "{html}"
        );
        // A quarter of an hour each: GPU-hours read 0.25, not 0.
        assert!(html.contains("<td>0.25</td>"), "{html}");
        assert!(html.contains(">3<"), "the cards: 12 GPUs x 0.25 h: {html}");
    }

    fn held(host: &str, index: u32, idle_s: f64, namespace: &str, pod: &str) -> GpuUsage {
        let mut r = gpu(host, index, idle_s);
        let mut dims = (*r.dims).clone();
        dims.namespace = namespace.into();
        dims.pod = pod.into();
        dims.container = "main".into();
        r.dims = std::sync::Arc::new(dims);
        r
    }

    /// The namespace table's rows: (namespace, GPUs).
    fn namespace_rows(html: &str) -> Vec<(String, String)> {
        let table = &html[html.find("id=\"namespace-table\"").unwrap()..];
        let table = &table[..table.find("</table>").unwrap()];
        table
            .split("<tr><td class=\"l\">")
            .skip(1)
            .map(|row| {
                let cells: Vec<&str> = row.split("</td><td>").collect();
                let namespace = cells[0].to_string();
                (namespace, cells[1].to_string())
            })
            .collect()
    }

    #[test]
    fn namespaces_are_listed_by_waste_and_a_shared_gpu_stays_one_row_among_the_worst() {
        // GPU 0 shared by two namespaces' pods (web's share idles more), GPU 1 idle and
        // unallocated, GPU 2 busy in ml: most waste first, not by name.
        let rows = vec![
            held("a", 0, 100.0, "ml", "train"),
            held("a", 0, 500.0, "web", "serve"),
            held("a", 1, 900.0, crate::cost::holders::UNALLOCATED, ""),
            held("a", 2, 0.0, "ml", "infer"),
        ];
        let html = render(Window::aligned(0, DAY_MS), &rows, &[]);
        assert_eq!(
            namespace_rows(&html),
            [
                ("(unallocated)".to_string(), "1".to_string()),
                ("web".to_string(), "1".to_string()),
                ("ml".to_string(), "2".to_string()),
            ],
            "{html}"
        );
        let worst = worst_rows(&html);
        assert_eq!(
            worst.iter().map(|(_, n)| n).sum::<usize>(),
            3,
            "one row per GPU: {worst:?}"
        );
        assert!(worst.iter().any(|(g, _)| g == "0"), "{worst:?}");
        let without = render(Window::aligned(0, DAY_MS), &[gpu("a", 0, 900.0)], &[]);
        assert!(!without.contains("namespace-table"), "{without}");
    }

    #[test]
    fn an_empty_ledger_says_so() {
        let html = render(Window::aligned(0, DAY_MS), &[], &[]);
        assert!(html.contains("id=\"empty\""), "{html}");
    }
}
