//! One host in depth, for the page's host view: each GPU's readings as series against
//! their limits, the host's findings as /api/v1/findings words them, where each
//! identity value came from, and the fields the host hides.

use std::collections::BTreeMap;

use serde::Serialize;

use gpulse_exposition::{GpuView, HostSource, HostView};
use gpulse_gpu::{DeviceSample, Learned};

use super::tile::Tile;
use crate::findings::{self, FleetFinding};

/// A value and how it was learned (config, dmi, metadata or unknown).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sourced {
    pub value: String,
    pub source: &'static str,
}

impl From<&Learned> for Sourced {
    fn from(l: &Learned) -> Sourced {
        Sourced {
            value: l.value.clone(),
            source: l.source.name(),
        }
    }
}

/// A series of one reading over the readings kept, oldest first; `null` where a
/// reading lacks the value.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Series {
    pub unix_ms: Vec<i64>,
    pub sm_clock_mhz: Vec<Option<u32>>,
    pub temperature_celsius: Vec<Option<u32>>,
    pub power_watts: Vec<Option<f64>>,
    pub utilization_percent: Vec<Option<u32>>,
}

/// A limit a series is drawn against, and where it comes from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Limit {
    pub value: f64,
    pub source: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GpuDetail {
    pub gpu: u32,
    pub uuid: String,
    pub model: String,
    pub tile: Tile,
    pub series: Series,
    pub max_sm_clock_mhz: Option<Limit>,
    pub slowdown_celsius: Option<Limit>,
    pub power_limit_watts: Option<Limit>,
    /// Fields the newest reading says this GPU does not expose.
    pub hidden_fields: Vec<&'static str>,
}

/// What /api/v1/fleet/host returns.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostDetail {
    pub id: String,
    pub host: String,
    pub connected: bool,
    pub last_seen_unix_ms: i64,
    pub provider: Sourced,
    pub region: Sourced,
    pub zone: Sourced,
    pub instance_type: Sourced,
    pub agent_version: String,
    pub os: String,
    pub kernel: String,
    pub labels: BTreeMap<String, String>,
    /// Fields at least one GPU of the host hides, by its newest reading (a field the
    /// model does not have is not hidden: the `hidden_fields` finding's rule).
    pub hidden_fields: Vec<&'static str>,
    pub gpus: Vec<GpuDetail>,
    /// Most severe first, exactly as /api/v1/findings?host= has them.
    pub findings: Vec<FleetFinding>,
}

fn series(gpu: &GpuView) -> Series {
    let mut s = Series::default();
    let newest = gpu.latest().into_iter().map(|l| (None, l));
    let readings: Vec<(Option<i64>, &DeviceSample)> = if gpu.recent.is_empty() {
        newest.collect()
    } else {
        gpu.recent
            .iter()
            .map(|t| (Some(t.unix_ms), &t.sample))
            .collect()
    };
    for (at, r) in readings {
        s.unix_ms.push(at.unwrap_or_default());
        s.sm_clock_mhz.push(r.sm_clock_mhz.value());
        s.temperature_celsius.push(r.temperature_celsius.value());
        s.power_watts.push(
            r.power_usage_milliwatts
                .value()
                .map(|mw| f64::from(mw) / 1000.0),
        );
        s.utilization_percent
            .push(r.gpu_utilization_percent.value());
    }
    s
}

fn gpu_detail(gpu: &GpuView, connected: bool) -> GpuDetail {
    let info = &gpu.info;
    let enforced = gpu.latest().and_then(|l| l.power_limit_milliwatts.value());
    let power_limit_watts = match (enforced, info.default_power_limit_milliwatts) {
        (Some(mw), _) => Some(Limit {
            value: f64::from(mw) / 1000.0,
            source: "enforced limit, newest reading",
        }),
        (None, Some(mw)) => Some(Limit {
            value: f64::from(mw) / 1000.0,
            source: "default limit, inventory",
        }),
        (None, None) => None,
    };
    GpuDetail {
        gpu: info.index,
        uuid: info.uuid.clone(),
        model: info.model.clone(),
        tile: Tile::of(gpu, connected),
        series: series(gpu),
        max_sm_clock_mhz: info.max_sm_clock_mhz.map(|v| Limit {
            value: f64::from(v),
            source: "inventory",
        }),
        slowdown_celsius: info.slowdown_temperature_celsius.map(|v| Limit {
            value: f64::from(v),
            source: "inventory",
        }),
        power_limit_watts,
        // The diagnosis rules' own notion: a field the model lacks is not hidden.
        hidden_fields: gpu
            .latest()
            .map(|l| {
                gpulse_gpu::diagnosis::hidden_fields(info, l)
                    .into_iter()
                    .map(|f| f.name())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn host_detail(view: &HostView) -> HostDetail {
    let id = &view.identity;
    let gpus: Vec<GpuDetail> = view
        .gpus
        .iter()
        .map(|g| gpu_detail(g, view.connected))
        .collect();
    let mut hidden: Vec<&'static str> = gpus.iter().flat_map(|g| g.hidden_fields.clone()).collect();
    hidden.sort_unstable();
    hidden.dedup();
    HostDetail {
        id: id.agent_id.clone(),
        host: id.hostname.clone(),
        connected: view.connected,
        last_seen_unix_ms: view.last_seen_unix_ms,
        provider: (&id.provider.provider).into(),
        region: (&id.provider.region).into(),
        zone: (&id.provider.zone).into(),
        instance_type: (&id.provider.instance_type).into(),
        agent_version: id.agent_version.clone(),
        os: id.facts.os.clone(),
        kernel: id.facts.kernel.clone(),
        labels: id.labels.clone(),
        hidden_fields: hidden,
        gpus,
        findings: Vec::new(),
    }
}

/// The host named `host` (its hostname), or `None` when the fleet has no such host.
pub fn of(source: &dyn HostSource, host: &str, now_unix_ms: i64) -> Option<HostDetail> {
    let mut found = None;
    source.for_each_host(&mut |view| {
        if found.is_none() && view.identity.hostname == host {
            found = Some(host_detail(view));
        }
    });
    let mut detail = found?;
    let filter = findings::Filter {
        min_severity: None,
        host: Some(host.to_string()),
    };
    detail.findings = findings::report(source, &filter, now_unix_ms).findings;
    Some(detail)
}
