//! Cost and efficiency reports over the ledger: a window, grouped by any dimension, as
//! JSON, FOCUS-shaped CSV or a text table. Figures are estimates from list prices and
//! measured use, not an invoice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::holders::NOT_KUBERNETES;
use super::ledger::{HOUR_MS, THROTTLE_REASONS, Usage};
use super::pricing::{JOULES_PER_KWH, model_key};
use super::store::{GpuDims, LedgerReader, Rollup, StoreError};

/// Milliseconds in a day.
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// Longest window a report covers, to bound the work one request can ask for.
pub const MAX_WINDOW: Duration = Duration::from_secs(800 * 24 * 3600);
/// Window when `from` is not given.
pub const DEFAULT_SINCE: Duration = Duration::from_secs(7 * 24 * 3600);
/// A field is reported hidden for a group when it was known for less than this share of
/// the group's GPU time.
const HIDDEN_BELOW: f64 = 0.5;

/// A bad report parameter: which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{parameter}`: {reason}")]
pub struct ParamError {
    pub parameter: &'static str,
    pub reason: String,
}

fn param(parameter: &'static str, reason: impl Into<String>) -> ParamError {
    ParamError {
        parameter,
        reason: reason.into(),
    }
}

/// What a report groups by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Provider,
    Region,
    Zone,
    InstanceType,
    /// GPU model key (h100, a100-80gb, ...).
    Model,
    Host,
    /// One GPU: host and uuid.
    Gpu,
    /// An operator label's value.
    Label(String),
    /// The Kubernetes namespace holding the GPU time ([`super::holders`]).
    Namespace,
    /// The pod holding the GPU time, as namespace/pod.
    Pod,
    /// The container holding the GPU time, as namespace/pod/container.
    Container,
}

impl Dim {
    pub const NAMES: &'static str = "provider, region, zone, instance_type, model, host, gpu, namespace, pod, container, label:KEY";

    pub fn parse(s: &str) -> Result<Dim, String> {
        Ok(match s.trim() {
            "provider" => Dim::Provider,
            "region" => Dim::Region,
            "zone" => Dim::Zone,
            "instance_type" => Dim::InstanceType,
            "model" => Dim::Model,
            "host" => Dim::Host,
            "gpu" => Dim::Gpu,
            "namespace" => Dim::Namespace,
            "pod" => Dim::Pod,
            "container" => Dim::Container,
            other => match other.strip_prefix("label:") {
                Some(k)
                    if !k.is_empty()
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    Dim::Label(k.to_string())
                }
                _ => return Err(format!("{other:?} is not one of {}", Dim::NAMES)),
            },
        })
    }

    /// Parses a comma-separated list; empty gives `default`.
    pub fn parse_list(s: Option<&str>, default: &[Dim]) -> Result<Vec<Dim>, ParamError> {
        let Some(s) = s.filter(|s| !s.trim().is_empty()) else {
            return Ok(default.to_vec());
        };
        let mut out = Vec::new();
        for part in s.split(',') {
            let d = Dim::parse(part).map_err(|e| param("group_by", e))?;
            if !out.contains(&d) {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub fn name(&self) -> String {
        match self {
            Dim::Provider => "provider".into(),
            Dim::Region => "region".into(),
            Dim::Zone => "zone".into(),
            Dim::InstanceType => "instance_type".into(),
            Dim::Model => "model".into(),
            Dim::Host => "host".into(),
            Dim::Gpu => "gpu".into(),
            Dim::Label(k) => format!("label:{k}"),
            Dim::Namespace => "namespace".into(),
            Dim::Pod => "pod".into(),
            Dim::Container => "container".into(),
        }
    }

    pub fn value(&self, d: &GpuDims) -> String {
        match self {
            Dim::Provider => d.provider.clone(),
            Dim::Region => d.region.clone(),
            Dim::Zone => d.zone.clone(),
            Dim::InstanceType => d.instance_type.clone(),
            Dim::Model => model_key(&d.model),
            Dim::Host => d.host.clone(),
            Dim::Gpu => format!("{}/{}", d.host, d.uuid),
            Dim::Label(k) => d.labels.get(k).cloned().unwrap_or_default(),
            Dim::Namespace => namespace_name(&d.namespace),
            // Time held by no pod (unallocated, not Kubernetes) is its namespace's bucket
            // at every level, so that it reads the same grouped by any of them.
            Dim::Pod if d.pod.is_empty() => namespace_name(&d.namespace),
            Dim::Pod => format!("{}/{}", d.namespace, d.pod),
            Dim::Container if d.pod.is_empty() => namespace_name(&d.namespace),
            Dim::Container => format!("{}/{}/{}", d.namespace, d.pod, d.container),
        }
    }

    /// The CSV's tags for this dimension's `value` in a group: an operator label under
    /// its key, a Kubernetes holder under OpenTelemetry's k8s resource attribute names.
    fn tags(&self, value: &str) -> Vec<(String, String)> {
        let k8s = ["k8s.namespace.name", "k8s.pod.name", "k8s.container.name"];
        let parts = |n: usize| -> Vec<(String, String)> {
            // Kubernetes names hold no '/', so the value splits back into its parts; a
            // bucket (no pod) is a namespace alone.
            k8s.iter()
                .zip(value.splitn(n, '/'))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        match self {
            Dim::Label(k) => vec![(k.clone(), value.to_string())],
            Dim::Namespace => parts(1),
            Dim::Pod => parts(2),
            Dim::Container => parts(3),
            _ => Vec::new(),
        }
    }
}

/// How reports name a stored namespace: the empty one is GPU time of hosts that do not
/// say who holds their GPUs.
pub fn namespace_name(stored: &str) -> String {
    if stored.is_empty() {
        NOT_KUBERNETES.to_string()
    } else {
        stored.to_string()
    }
}

/// Earliest time a report covers: the epoch, where the ledger's hours start.
pub const EARLIEST_MS: i64 = 0;
/// Latest time a report covers: the start of the last hour RFC 3339 writes with a
/// four-digit year (9999-12-31T23:00:00Z), so that `to`, rounded up to its hour, is
/// still a time every report can print.
pub const LATEST_MS: i64 = 253_402_297_200_000;
/// The last second RFC 3339 writes with a four-digit year (9999-12-31T23:59:59Z).
const LAST_WRITABLE_MS: i64 = LATEST_MS + HOUR_MS - 1000;

/// Milliseconds since the epoch, or `None` before it or past `i64`.
fn unix_ms(t: SystemTime) -> Option<i64> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Milliseconds since the epoch as RFC 3339 UTC (`2026-11-01T00:00:00Z`). A time
/// outside 1970..=9999 is written as the nearest one inside: windows never reach
/// there ([`Window::parse`] refuses them), and writing must not fail on the way to
/// saying so.
pub fn rfc3339(ms: i64) -> String {
    let ms = ms.clamp(EARLIEST_MS, LAST_WRITABLE_MS);
    let t = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The range a report covers, for error messages.
fn covered_range() -> String {
    format!("{} to {}", rfc3339(EARLIEST_MS), rfc3339(LATEST_MS))
}

/// Reads a time: RFC 3339 in UTC, a date (midnight UTC), `now`, or a duration before now.
/// Every time read lies in [`EARLIEST_MS`]..=[`LATEST_MS`]; one outside is an error
/// naming `parameter`, as is a duration reaching back before the epoch.
pub fn parse_time(parameter: &'static str, s: &str, now_ms: i64) -> Result<i64, ParamError> {
    let s = s.trim();
    let ms = if s == "now" {
        Some(now_ms)
    } else if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        unix_ms(t)
    } else if let Some(t) = (s.len() == 10)
        .then(|| humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).ok())
        .flatten()
    {
        unix_ms(t)
    } else if let Ok(d) = humantime::parse_duration(s) {
        // A user's number meets the clock here: any duration must give a time or a clear
        // error, never a wrapped one.
        let before_epoch = || {
            param(
                parameter,
                format!(
                    "{s:?} before now is before 1970-01-01T00:00:00Z; a report covers {}",
                    covered_range()
                ),
            )
        };
        let back = i64::try_from(d.as_millis()).map_err(|_| before_epoch())?;
        Some(now_ms.checked_sub(back).ok_or_else(before_epoch)?)
    } else {
        return Err(param(
            parameter,
            format!(
                "{s:?} is neither an RFC 3339 time in UTC (2026-11-01T00:00:00Z), a date \
                 (2026-11-01), `now`, nor a duration before now (7d, 12h)"
            ),
        ));
    };
    match ms {
        Some(ms) if (EARLIEST_MS..=LATEST_MS).contains(&ms) => Ok(ms),
        _ => Err(param(
            parameter,
            format!(
                "{s:?} is outside the times a report covers, {}",
                covered_range()
            ),
        )),
    }
}

/// A report window, aligned to the ledger's hour buckets: `from` rounds down and `to` up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Window {
    /// From optional `from`/`to` parameters; `from` defaults to 7 days before `to` (not
    /// before the epoch). Both ends lie in [`EARLIEST_MS`]..=[`LATEST_MS`], so nothing
    /// computed from them overflows.
    pub fn parse(from: Option<&str>, to: Option<&str>, now_ms: i64) -> Result<Window, ParamError> {
        let to_ms = match to {
            Some(s) => parse_time("to", s, now_ms)?,
            None => now_ms.clamp(EARLIEST_MS, LATEST_MS),
        };
        let from_ms = match from {
            Some(s) => parse_time("from", s, now_ms)?,
            None => to_ms
                .saturating_sub(DEFAULT_SINCE.as_millis() as i64)
                .max(EARLIEST_MS),
        };
        if from_ms >= to_ms {
            return Err(param(
                "from",
                format!(
                    "{} is not before `to` ({})",
                    rfc3339(from_ms),
                    rfc3339(to_ms)
                ),
            ));
        }
        if to_ms - from_ms > MAX_WINDOW.as_millis() as i64 {
            return Err(param(
                "from",
                "the window is longer than 800 days; narrow it",
            ));
        }
        Ok(Window::aligned(from_ms, to_ms))
    }

    /// `from` rounded down and `to` rounded up to whole hours; `to` saturates rather
    /// than overflow.
    pub fn aligned(from_ms: i64, to_ms: i64) -> Window {
        let to_hours = to_ms.div_euclid(HOUR_MS) + i64::from(to_ms.rem_euclid(HOUR_MS) != 0);
        Window {
            from_ms: from_ms.div_euclid(HOUR_MS) * HOUR_MS,
            to_ms: to_hours.saturating_mul(HOUR_MS),
        }
    }

    fn hours(&self) -> (i64, i64) {
        (self.from_ms / HOUR_MS, self.to_ms / HOUR_MS)
    }
}

/// Usage of one GPU over the window, or over one day of it.
#[derive(Debug, Clone)]
pub struct GpuUsage {
    pub dims: Arc<GpuDims>,
    /// Start of the day (ms) when loaded per day.
    pub day_ms: Option<i64>,
    pub usage: Usage,
}

/// Per-GPU usage over the window (`by_day`: per GPU per UTC day). Whole days inside
/// the window come from the daily roll-up; only the hours at its edges from the hourly one.
pub fn load(
    reader: &mut LedgerReader,
    window: Window,
    by_day: bool,
) -> Result<Vec<GpuUsage>, StoreError> {
    let dims: HashMap<i64, Arc<GpuDims>> = reader
        .dims()?
        .into_iter()
        .map(|(id, d)| (id, Arc::new(d)))
        .collect();
    let (from, to) = window.hours();
    // Whole days inside [from, to), in hours: [day_from * 24, day_to * 24).
    let day_from = (from + 23).div_euclid(24);
    let day_to = to.div_euclid(24).max(day_from);
    let (edge_a, edge_b) = if day_from * 24 >= to {
        ((from, to), (0, 0))
    } else {
        ((from, day_from * 24), (day_to * 24, to))
    };
    let mut sums: BTreeMap<(i64, i64), Usage> = BTreeMap::new();
    for (rollup, (a, b)) in [
        (Rollup::Daily, (day_from, day_to)),
        (Rollup::Hourly, edge_a),
        (Rollup::Hourly, edge_b),
    ] {
        if a >= b {
            continue;
        }
        for row in reader.sum_usage(rollup, a, b, by_day)? {
            let day = if by_day { row.day } else { 0 };
            sums.entry((row.gpu, day)).or_default().add(&row.usage);
        }
    }
    Ok(sums
        .into_iter()
        .filter_map(|((gpu, day), usage)| {
            dims.get(&gpu).map(|d| GpuUsage {
                dims: d.clone(),
                day_ms: by_day.then_some(day * DAY_MS),
                usage,
            })
        })
        .collect())
}

/// Per-GPU rows over the whole window from per-GPU-per-day rows.
pub fn per_gpu(per_day: &[GpuUsage]) -> Vec<GpuUsage> {
    let mut by_gpu: BTreeMap<&GpuDims, GpuUsage> = BTreeMap::new();
    for r in per_day {
        by_gpu
            .entry(&r.dims)
            .or_insert_with(|| GpuUsage {
                dims: r.dims.clone(),
                day_ms: None,
                usage: Usage::default(),
            })
            .usage
            .add(&r.usage);
    }
    by_gpu.into_values().collect()
}

/// Usage summed over some GPUs, with what is needed to derive the report's figures.
#[derive(Debug, Clone, Default)]
pub struct Aggregate {
    pub usage: Usage,
    /// Busy seconds of priced GPUs: the denominator of cost per busy GPU-hour.
    pub priced_busy_s: f64,
    pub gpus: BTreeSet<(String, String)>,
    /// Values of each dimension seen, to tell a group's common provider, region, ...
    common: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Aggregate {
    pub fn add(&mut self, g: &GpuUsage) {
        let u = &g.usage;
        self.usage.add(u);
        if u.observed_s > 0.0 {
            self.priced_busy_s += u.busy_s * (1.0 - (u.unpriced_s / u.observed_s).clamp(0.0, 1.0));
        }
        self.gpus.insert((g.dims.host.clone(), g.dims.uuid.clone()));
        for (k, v) in [
            ("provider", &g.dims.provider),
            ("region", &g.dims.region),
            ("zone", &g.dims.zone),
            ("instance_type", &g.dims.instance_type),
            ("model", &g.dims.model),
            ("host", &g.dims.host),
        ] {
            let set = self.common.entry(k).or_default();
            if set.len() < 2 {
                set.insert(v.clone());
            }
        }
    }

    /// The value every GPU of the group shares for `dim`, or "" when they differ.
    pub fn common(&self, dim: &str) -> String {
        match self.common.get(dim) {
            Some(s) if s.len() == 1 => s.iter().next().cloned().unwrap_or_default(),
            _ => String::new(),
        }
    }

    pub fn summary(&self) -> Summary {
        let u = &self.usage;
        let h = |s: f64| s / 3600.0;
        let share = |known: f64| {
            if u.observed_s > 0.0 {
                known / u.observed_s
            } else {
                1.0
            }
        };
        let mut hidden = Vec::new();
        for (name, known) in [
            ("utilization", u.utilization_known_s),
            ("energy", u.energy_known_s),
        ] {
            if u.observed_s > 0.0 && share(known) < HIDDEN_BELOW {
                hidden.push(name);
            }
        }
        if u.busy_s > 0.0 && u.clock_known_s / u.busy_s < HIDDEN_BELOW {
            hidden.push("sm_clock");
        }
        let gpu_hours = h(u.observed_s);
        // Errors are what the driver reports as faults; PCIe replays are routine
        // link-level retries and get a rate of their own.
        let errors = u.xid_errors.saturating_add(u.ecc_uncorrected_errors) as f64;
        Summary {
            gpus: self.gpus.len(),
            gpu_hours,
            busy_gpu_hours: h(u.busy_s),
            idle_gpu_hours: h(u.idle_s),
            utilized_gpu_hours: h(u.utilized_s),
            clock_lost_gpu_hours: h(u.lost_s),
            throttled_hours: THROTTLE_REASONS
                .iter()
                .zip(u.throttle_s)
                .map(|((_, name), s)| (*name, h(s)))
                .collect(),
            energy_kwh: u.energy_j / JOULES_PER_KWH,
            list_cost_usd: u.list_cost,
            idle_cost_usd: u.idle_cost,
            throttle_loss_usd: u.throttle_loss,
            unpriced_gpu_hours: h(u.unpriced_s),
            effective_cost_per_busy_gpu_hour_usd: (self.priced_busy_s > 0.0)
                .then(|| u.list_cost / h(self.priced_busy_s)),
            busy_ratio: (u.observed_s > 0.0).then(|| u.busy_s / u.observed_s),
            clock_under_load_ratio: (u.clock_known_s > 0.0)
                .then(|| 1.0 - u.lost_s / u.clock_known_s),
            pcie_replays: u.pcie_replays,
            pcie_replays_per_gpu_hour: (gpu_hours > 0.0).then(|| u.pcie_replays as f64 / gpu_hours),
            lost_samples: u.lost_samples,
            xid_errors: u.xid_errors,
            ecc_uncorrected_errors: u.ecc_uncorrected_errors,
            errors_per_1000_gpu_hours: (gpu_hours > 0.0).then(|| errors / gpu_hours * 1000.0),
            hidden_fields: hidden,
        }
    }
}

/// A group's figures, as the JSON report gives them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub gpus: usize,
    pub gpu_hours: f64,
    pub busy_gpu_hours: f64,
    pub idle_gpu_hours: f64,
    /// GPU-hours weighted by utilisation.
    pub utilized_gpu_hours: f64,
    /// Busy GPU-hours lost to the SM clock running below its maximum.
    pub clock_lost_gpu_hours: f64,
    /// Hours each limiting clock-event reason was active.
    pub throttled_hours: BTreeMap<&'static str, f64>,
    pub energy_kwh: f64,
    pub list_cost_usd: f64,
    pub idle_cost_usd: f64,
    pub throttle_loss_usd: f64,
    /// GPU-hours with no price: not included in the costs, never counted as free.
    pub unpriced_gpu_hours: f64,
    pub effective_cost_per_busy_gpu_hour_usd: Option<f64>,
    pub busy_ratio: Option<f64>,
    /// SM clock achieved while busy, as a share of the maximum.
    pub clock_under_load_ratio: Option<f64>,
    /// PCIe link-level retransmissions: routine in small numbers, a failing link or
    /// riser when they climb.
    pub pcie_replays: u64,
    pub pcie_replays_per_gpu_hour: Option<f64>,
    /// Readings in which a GPU did not answer.
    pub lost_samples: u64,
    /// XID events the driver reported.
    pub xid_errors: u64,
    /// Uncorrectable ECC errors.
    pub ecc_uncorrected_errors: u64,
    /// XID events and uncorrectable ECC errors per 1,000 GPU-hours.
    pub errors_per_1000_gpu_hours: Option<f64>,
    /// Fields the hosts of this group mostly hide.
    pub hidden_fields: Vec<&'static str>,
}

/// Rows grouped by the values of `group_by` (and by day when the rows are per day).
pub fn group(
    rows: &[GpuUsage],
    group_by: &[Dim],
) -> BTreeMap<(Vec<String>, Option<i64>), Aggregate> {
    let mut out: BTreeMap<(Vec<String>, Option<i64>), Aggregate> = BTreeMap::new();
    for r in rows {
        let key: Vec<String> = group_by.iter().map(|d| d.value(&r.dims)).collect();
        out.entry((key, r.day_ms)).or_default().add(r);
    }
    out
}

/// Everything over the rows.
pub fn total(rows: &[GpuUsage]) -> Aggregate {
    let mut a = Aggregate::default();
    for r in rows {
        a.add(r);
    }
    a
}

#[derive(Debug, Serialize)]
pub struct GroupRow {
    pub key: BTreeMap<String, String>,
    #[serde(flatten)]
    pub summary: Summary,
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub struct JsonReport {
    pub from: String,
    pub to: String,
    pub group_by: Vec<String>,
    pub currency: &'static str,
    pub note: &'static str,
    pub totals: Summary,
    pub groups: Vec<GroupRow>,
}

pub const ESTIMATE_NOTE: &str = "Estimate from list prices and measured GPU use, not an invoice.";

pub fn json(rows: &[GpuUsage], window: Window, group_by: &[Dim]) -> JsonReport {
    let mut groups: Vec<GroupRow> = group(rows, group_by)
        .into_iter()
        .map(|((key, _), agg)| GroupRow {
            key: group_by.iter().map(Dim::name).zip(key).collect(),
            summary: agg.summary(),
        })
        .collect();
    groups.sort_by(|a, b| {
        b.summary
            .list_cost_usd
            .total_cmp(&a.summary.list_cost_usd)
            .then_with(|| a.key.cmp(&b.key))
    });
    JsonReport {
        from: rfc3339(window.from_ms),
        to: rfc3339(window.to_ms),
        group_by: group_by.iter().map(Dim::name).collect(),
        currency: "USD",
        note: ESTIMATE_NOTE,
        totals: total(rows).summary(),
        groups,
    }
}

/// The CSV columns: FOCUS 1.2 first, then gpulse's own (prefixed `x_`).
pub const CSV_COLUMNS: [&str; 48] = [
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ContractedCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "PricingQuantity",
    "PricingUnit",
    "ListUnitPrice",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ProviderName",
    "PublisherName",
    "InvoiceIssuerName",
    "ServiceCategory",
    "ServiceName",
    "RegionId",
    "RegionName",
    "AvailabilityZone",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "SkuId",
    "Tags",
    "x_GroupKey",
    "x_GpuModel",
    "x_GpuCount",
    "x_BusyGpuHours",
    "x_IdleGpuHours",
    "x_UtilizedGpuHours",
    "x_IdleCost",
    "x_ThrottleLossCost",
    "x_ClockLostGpuHours",
    "x_EnergyKWh",
    "x_UnpricedGpuHours",
    "x_PcieReplays",
    "x_LostSamples",
    "x_XidErrors",
    "x_EccUncorrectedErrors",
    "x_Estimate",
];

fn money(v: f64) -> String {
    format!("{v:.6}")
}

fn qty(v: f64) -> String {
    format!("{v:.6}")
}

/// FOCUS-shaped CSV: one row per group per charge period (a UTC day of the window when
/// the rows are per day, else the window). Costs are empty for unpriced GPU time.
pub fn csv(rows: &[GpuUsage], window: Window, group_by: &[Dim]) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_COLUMNS)?;
    for ((key, day), agg) in group(rows, group_by) {
        let (start, end) = match day {
            Some(d) => (d.max(window.from_ms), (d + DAY_MS).min(window.to_ms)),
            None => (window.from_ms, window.to_ms),
        };
        let u = &agg.usage;
        let s = agg.summary();
        let priced_hours = (u.observed_s - u.unpriced_s) / 3600.0;
        let priced = priced_hours > 0.0;
        let cost = |v: f64| if priced { money(v) } else { String::new() };
        let provider = agg.common("provider");
        let model = agg.common("model");
        let single_gpu = agg.gpus.len() == 1;
        let (resource_id, resource_name) = match agg.gpus.iter().next() {
            Some((host, uuid)) if single_gpu => (uuid.clone(), host.clone()),
            _ => (String::new(), String::new()),
        };
        let sku = {
            let t = agg.common("instance_type");
            if t.is_empty() { model_key(&model) } else { t }
        };
        let tags: BTreeMap<String, String> = group_by
            .iter()
            .zip(&key)
            .flat_map(|(d, v)| d.tags(v))
            .collect();
        let group_key = group_by
            .iter()
            .zip(&key)
            .map(|(d, v)| format!("{}={v}", d.name()))
            .collect::<Vec<_>>()
            .join(";");
        let record: [String; 48] = [
            cost(u.list_cost),
            cost(u.list_cost),
            cost(u.list_cost),
            cost(u.list_cost),
            String::new(),
            String::new(),
            "USD".into(),
            rfc3339(start),
            rfc3339(end),
            rfc3339(start),
            rfc3339(end),
            "Usage".into(),
            String::new(),
            format!(
                "GPU time{} (gpulse estimate)",
                if model.is_empty() {
                    String::new()
                } else {
                    format!(" on {model}")
                }
            ),
            qty(s.gpu_hours),
            "GPU-Hours".into(),
            if priced {
                money(u.list_cost / priced_hours)
            } else {
                String::new()
            },
            qty(s.gpu_hours),
            "GPU-Hours".into(),
            provider.clone(),
            provider.clone(),
            provider,
            "Compute".into(),
            "GPU compute".into(),
            agg.common("region"),
            agg.common("region"),
            agg.common("zone"),
            resource_id,
            resource_name,
            "GPU".into(),
            sku,
            if tags.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&tags).expect("a string map serialises")
            },
            group_key,
            model,
            agg.gpus.len().to_string(),
            qty(s.busy_gpu_hours),
            qty(s.idle_gpu_hours),
            qty(s.utilized_gpu_hours),
            cost(u.idle_cost),
            cost(u.throttle_loss),
            qty(s.clock_lost_gpu_hours),
            qty(s.energy_kwh),
            qty(s.unpriced_gpu_hours),
            u.pcie_replays.to_string(),
            u.lost_samples.to_string(),
            u.xid_errors.to_string(),
            u.ecc_uncorrected_errors.to_string(),
            "true".into(),
        ];
        w.write_record(&record)?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8(bytes).expect("CSV of UTF-8 strings is UTF-8"))
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// A plain text table for the terminal.
pub fn table(rows: &[GpuUsage], window: Window, group_by: &[Dim]) -> String {
    let header = [
        group_by.iter().map(Dim::name).collect::<Vec<_>>().join(","),
        "GPUs".into(),
        "GPU-h".into(),
        "busy".into(),
        "list $".into(),
        "idle $".into(),
        "throttle $".into(),
        "$/busy GPU-h".into(),
        "clock".into(),
        "kWh".into(),
        "unpriced GPU-h".into(),
    ];
    let line = |name: String, s: &Summary| -> [String; 11] {
        [
            name,
            s.gpus.to_string(),
            format!("{:.1}", s.gpu_hours),
            fmt_opt(s.busy_ratio, |v| format!("{:.0}%", v * 100.0)),
            format!("{:.2}", s.list_cost_usd),
            format!("{:.2}", s.idle_cost_usd),
            format!("{:.2}", s.throttle_loss_usd),
            fmt_opt(s.effective_cost_per_busy_gpu_hour_usd, |v| {
                format!("{v:.2}")
            }),
            fmt_opt(s.clock_under_load_ratio, |v| format!("{:.0}%", v * 100.0)),
            format!("{:.1}", s.energy_kwh),
            format!("{:.1}", s.unpriced_gpu_hours),
        ]
    };
    let report = json(rows, window, group_by);
    let mut lines: Vec<[String; 11]> = vec![header];
    for g in &report.groups {
        let name = group_by
            .iter()
            .map(|d| g.key.get(&d.name()).map_or("", String::as_str))
            .map(|v| if v.is_empty() { "(none)" } else { v })
            .collect::<Vec<_>>()
            .join(",");
        lines.push(line(name, &g.summary));
    }
    lines.push(line("TOTAL".into(), &report.totals));
    let widths: Vec<usize> = (0..11)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!(
        "gpulse cost report {} .. {} (USD; {})\n",
        report.from, report.to, ESTIMATE_NOTE
    );
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339_dates_or_durations_before_now() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("from", "now", now).unwrap(), now);
        assert_eq!(parse_time("from", "7d", now).unwrap(), now - 7 * DAY_MS);
        assert_eq!(
            parse_time("from", "2026-11-01T00:00:00Z", now).unwrap(),
            parse_time("from", "2026-11-01", now).unwrap()
        );
        let e = parse_time("from", "yesterday-ish", now).unwrap_err();
        assert_eq!(e.parameter, "from");
        assert!(e.to_string().contains("yesterday-ish"), "{e}");
    }

    #[test]
    fn a_window_is_aligned_to_hours_and_checked() {
        let now = 10 * HOUR_MS + 1234;
        let w = Window::parse(Some("2h"), None, now).unwrap();
        assert_eq!((w.from_ms, w.to_ms), (8 * HOUR_MS, 11 * HOUR_MS));
        let e = Window::parse(Some("now"), Some("1h"), now).unwrap_err();
        assert_eq!(e.parameter, "from");
        assert!(Window::parse(Some("1000d"), None, now).is_err());
    }

    #[test]
    fn the_covered_range_is_what_rfc3339_writes() {
        let latest = humantime::parse_rfc3339("9999-12-31T23:00:00Z").unwrap();
        assert_eq!(unix_ms(latest), Some(LATEST_MS));
        assert_eq!(rfc3339(LATEST_MS), "9999-12-31T23:00:00Z");
        assert_eq!(rfc3339(LAST_WRITABLE_MS), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MIN), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn windows_at_the_edge_of_time_are_refused_by_name_or_served() {
        let now = 1_800_000_000_000;
        for (from, to, refused) in [
            ("9999-12-31T00:00:00Z", "9999-12-31T23:30:00Z", Some("to")),
            ("9999-12-31T00:00:00Z", "9999-12-31T23:59:59Z", Some("to")),
            ("18445744073709551s", "now", Some("from")),
            ("18446744073709551615ns", "now", Some("from")),
            ("584942417355y", "now", Some("from")),
            ("9999-12-31T00:00:00Z", "9999-12-31T23:00:00Z", None),
            ("1970-01-01", "1970-01-01T00:00:01Z", None),
        ] {
            match (Window::parse(Some(from), Some(to), now), refused) {
                (Err(e), Some(p)) => assert_eq!(e.parameter, p, "{from}..{to}: {e}"),
                (Ok(w), None) => {
                    assert!(w.from_ms < w.to_ms && w.to_ms <= LATEST_MS, "{w:?}");
                }
                (other, _) => panic!("{from}..{to}: {other:?}"),
            }
        }
        let w = Window::parse(None, Some("1970-01-02"), now).unwrap();
        assert_eq!(
            w.from_ms, EARLIEST_MS,
            "the default window stops at the epoch"
        );
    }

    mod windows {
        use super::*;
        use proptest::prelude::*;

        /// Anything a user may type for a time, built to find the edges.
        fn time_text() -> impl Strategy<Value = String> {
            let units = prop::sample::select(vec![
                "ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", "",
            ]);
            let year = prop_oneof![0u32..10_000, Just(9999), Just(1970), 9998u32..10_000];
            prop_oneof![
                (1u32..21, any::<u64>(), units)
                    .prop_map(|(digits, n, u)| format!("{}{u}", n % 10u64.saturating_pow(digits))),
                (
                    year.clone(),
                    1u32..13,
                    1u32..32,
                    0u32..24,
                    0u32..60,
                    0u32..60
                )
                    .prop_map(|(y, mo, d, h, mi, s)| format!(
                        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"
                    )),
                (year, 1u32..13, 1u32..32).prop_map(|(y, mo, d)| format!("{y:04}-{mo:02}-{d:02}")),
                Just("now".to_string()),
                ".{0,24}",
            ]
        }

        proptest! {
            #[test]
            fn a_time_is_in_the_covered_range_or_an_error_naming_its_parameter(
                text in time_text(),
                now in EARLIEST_MS..=LATEST_MS,
            ) {
                match parse_time("from", &text, now) {
                    Ok(ms) => prop_assert!((EARLIEST_MS..=LATEST_MS).contains(&ms), "{text}: {ms}"),
                    Err(e) => {
                        prop_assert_eq!(e.parameter, "from");
                        prop_assert!(!e.reason.is_empty());
                    }
                }
            }

            #[test]
            fn a_window_is_aligned_inside_the_range_or_refused_by_name(
                from in proptest::option::of(time_text()),
                to in proptest::option::of(time_text()),
                now in EARLIEST_MS..=LATEST_MS,
            ) {
                match Window::parse(from.as_deref(), to.as_deref(), now) {
                    Ok(w) => {
                        prop_assert!(EARLIEST_MS <= w.from_ms && w.from_ms < w.to_ms);
                        prop_assert!(w.to_ms <= LATEST_MS);
                        prop_assert_eq!(w.from_ms % HOUR_MS, 0);
                        prop_assert_eq!(w.to_ms % HOUR_MS, 0);
                        prop_assert!(w.to_ms - w.from_ms <= MAX_WINDOW.as_millis() as i64 + HOUR_MS);
                        // Everything a report prints of the window can be written.
                        rfc3339(w.from_ms);
                        rfc3339(w.to_ms);
                    }
                    Err(e) => prop_assert!(["from", "to"].contains(&e.parameter), "{e}"),
                }
            }

            #[test]
            fn aligning_never_overflows(from in any::<i64>(), to in any::<i64>()) {
                let w = Window::aligned(from, to);
                prop_assert!(w.from_ms <= from && w.from_ms % HOUR_MS == 0);
                prop_assert!(w.to_ms >= to || w.to_ms == i64::MAX / HOUR_MS * HOUR_MS);
            }
        }
    }

    #[test]
    fn group_by_names_the_bad_entry() {
        assert_eq!(
            Dim::parse_list(Some("provider,label:team"), &[]).unwrap(),
            vec![Dim::Provider, Dim::Label("team".into())]
        );
        let e = Dim::parse_list(Some("provider,colour"), &[]).unwrap_err();
        assert_eq!(e.parameter, "group_by");
        assert!(e.reason.contains("colour"), "{e}");
    }

    #[test]
    fn holders_group_by_name_and_tag_the_csv_under_k8s_attribute_names() {
        assert_eq!(
            Dim::parse_list(Some("namespace,pod,container"), &[]).unwrap(),
            vec![Dim::Namespace, Dim::Pod, Dim::Container]
        );
        let row = |namespace: &str, pod: &str, idle_s: f64| GpuUsage {
            dims: Arc::new(GpuDims {
                host: "h".into(),
                uuid: "GPU-1".into(),
                namespace: namespace.into(),
                pod: pod.into(),
                container: if pod.is_empty() { "" } else { "main" }.into(),
                ..GpuDims::default()
            }),
            day_ms: None,
            usage: Usage {
                observed_s: 1800.0,
                idle_s,
                ..Usage::default()
            },
        };
        let rows = [
            row("ml", "train", 0.0),
            row(crate::cost::holders::UNALLOCATED, "", 1800.0),
            row("", "", 900.0),
        ];
        let w = Window::aligned(0, HOUR_MS);
        let report = json(&rows, w, &[Dim::Container]);
        let keys: Vec<&str> = report
            .groups
            .iter()
            .map(|g| g.key["container"].as_str())
            .collect();
        assert_eq!(keys, ["(not kubernetes)", "(unallocated)", "ml/train/main"]);
        assert_eq!(report.groups[1].summary.idle_gpu_hours, 0.5);
        let text = csv(&rows, w, &[Dim::Pod]).unwrap();
        let mut reader = ::csv::Reader::from_reader(text.as_bytes());
        let tags_at = CSV_COLUMNS.iter().position(|c| *c == "Tags").unwrap();
        let tags: Vec<String> = reader
            .records()
            .map(|r| r.unwrap()[tags_at].to_string())
            .collect();
        assert_eq!(
            tags,
            [
                r#"{"k8s.namespace.name":"(not kubernetes)"}"#,
                r#"{"k8s.namespace.name":"(unallocated)"}"#,
                r#"{"k8s.namespace.name":"ml","k8s.pod.name":"train"}"#,
            ]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn row() -> impl Strategy<Value = GpuUsage> {
            (
                0usize..4,
                0usize..3,
                0usize..3,
                0usize..6,
                0.0f64..3600.0,
                0.0f64..1.0,
                0.0f64..20.0,
                prop::bool::ANY,
                0u64..10,
                0usize..4,
            )
                .prop_map(
                    |(p, m, team, host, observed, busy, price, priced, replays, holder)| {
                        // Not Kubernetes, unallocated, and two pods of one namespace.
                        let holders = [
                            ("", "", ""),
                            (crate::cost::holders::UNALLOCATED, "", ""),
                            ("ml", "train", "main"),
                            ("ml", "serve", "main"),
                        ];
                        let (namespace, pod, container) = holders[holder];
                        let providers = ["aws", "gcp", "coreweave", ""];
                        let models = [
                            "NVIDIA H100 80GB HBM3",
                            "NVIDIA A100-SXM4-80GB",
                            "NVIDIA L4",
                        ];
                        let teams = ["llm", "vision", ""];
                        let mut labels = BTreeMap::new();
                        if !teams[team].is_empty() {
                            labels.insert("team".to_string(), teams[team].to_string());
                        }
                        let usage = Usage {
                            observed_s: observed,
                            busy_s: observed * busy,
                            idle_s: observed * (1.0 - busy),
                            list_cost: if priced {
                                observed * price / 3600.0
                            } else {
                                0.0
                            },
                            idle_cost: if priced {
                                observed * (1.0 - busy) * price / 3600.0
                            } else {
                                0.0
                            },
                            unpriced_s: if priced { 0.0 } else { observed },
                            pcie_replays: replays,
                            samples: 1,
                            ..Usage::default()
                        };
                        GpuUsage {
                            dims: Arc::new(GpuDims {
                                host: format!("host-{host}"),
                                uuid: format!("GPU-{host}-{m}"),
                                model: models[m].to_string(),
                                provider: providers[p].to_string(),
                                labels,
                                namespace: namespace.into(),
                                pod: pod.into(),
                                container: container.into(),
                                ..GpuDims::default()
                            }),
                            day_ms: None,
                            usage,
                        }
                    },
                )
        }

        fn dims() -> impl Strategy<Value = Vec<Dim>> {
            prop::collection::vec(
                prop::sample::select(vec![
                    Dim::Provider,
                    Dim::Model,
                    Dim::Host,
                    Dim::Gpu,
                    Dim::Region,
                    Dim::Label("team".into()),
                    Dim::Namespace,
                    Dim::Pod,
                    Dim::Container,
                ]),
                0..3,
            )
        }

        proptest! {
            #[test]
            fn groups_sum_to_the_total(rows in prop::collection::vec(row(), 0..80), by in dims()) {
                let all = total(&rows).usage;
                let mut sum = Usage::default();
                for agg in group(&rows, &by).values() {
                    sum.add(&agg.usage);
                }
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()));
                prop_assert!(close(sum.observed_s, all.observed_s));
                prop_assert!(close(sum.list_cost, all.list_cost));
                prop_assert!(close(sum.idle_cost, all.idle_cost));
                prop_assert!(close(sum.unpriced_s, all.unpriced_s));
                prop_assert_eq!(sum.pcie_replays, all.pcie_replays);
                // The JSON report's groups add up to its totals too.
                let report = json(&rows, Window::aligned(0, HOUR_MS), &by);
                let cost: f64 = report.groups.iter().map(|g| g.summary.list_cost_usd).sum();
                prop_assert!(close(cost, report.totals.list_cost_usd));
                let gpus: usize = report.groups.iter().map(|g| g.summary.gpus).sum();
                prop_assert!(gpus >= report.totals.gpus);
                // And the CSV has one row per group.
                let text = csv(&rows, Window::aligned(0, HOUR_MS), &by).unwrap();
                prop_assert_eq!(text.lines().count(), 1 + report.groups.len());
            }
        }
    }
}
