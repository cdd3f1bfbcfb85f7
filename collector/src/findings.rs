//! Fleet-wide findings: the diagnosis rules that `gpulse-agent diagnose` runs on one
//! host, run by the collector on every GPU's recent readings. Served as JSON at
//! /api/v1/findings and as `gpulse_gpu_finding` on /metrics.

use serde::Serialize;

use gpulse_exposition::HostSource;
use gpulse_gpu::diagnosis::Severity;

use crate::cost::report::{ParamError, rfc3339};

/// Version of the /api/v1/findings document; bumped only for incompatible changes.
pub const JSON_VERSION: u32 = 1;

/// One finding on one GPU of one host.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FleetFinding {
    pub host: String,
    pub provider: String,
    pub gpu: u32,
    pub uuid: String,
    pub model: String,
    pub kind: &'static str,
    pub severity: &'static str,
    pub summary: String,
    pub evidence: Vec<String>,
    pub action: String,
    /// Readings the rules looked at, and the time they span.
    pub readings: usize,
    pub window_seconds: f64,
    #[serde(skip)]
    rank: Severity,
}

/// What /api/v1/findings returns.
#[derive(Debug, Clone, Serialize)]
pub struct FindingsReport {
    pub version: u32,
    pub generated_at: String,
    /// Hosts and GPUs looked at (after the host filter).
    pub hosts: usize,
    pub gpus: usize,
    /// Most severe first, then by host and GPU.
    pub findings: Vec<FleetFinding>,
}

/// Which findings to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only findings at least this severe.
    pub min_severity: Option<Severity>,
    /// Only this host (its agent's hostname).
    pub host: Option<String>,
}

impl Filter {
    /// From query parameters `severity` (info, warning, critical) and `host`.
    pub fn parse(severity: Option<&str>, host: Option<&str>) -> Result<Filter, ParamError> {
        let min_severity = match severity {
            None => None,
            Some("info") => Some(Severity::Info),
            Some("warning") => Some(Severity::Warning),
            Some("critical") => Some(Severity::Critical),
            Some(other) => {
                return Err(ParamError {
                    parameter: "severity",
                    reason: format!("{other:?} is not info, warning or critical"),
                });
            }
        };
        Ok(Filter {
            min_severity,
            host: host.map(str::to_string),
        })
    }
}

/// Runs the rules over every GPU the fleet holds readings for.
pub fn report(fleet: &dyn HostSource, filter: &Filter, now_unix_ms: i64) -> FindingsReport {
    let mut findings = Vec::new();
    let (mut hosts, mut gpus) = (0, 0);
    fleet.for_each_host(&mut |host| {
        if filter
            .host
            .as_ref()
            .is_some_and(|h| *h != host.identity.hostname)
        {
            return;
        }
        hosts += 1;
        for gpu in &host.gpus {
            gpus += 1;
            let window_seconds = gpu.window().seconds();
            for f in gpu.findings() {
                if filter.min_severity.is_some_and(|min| f.severity < min) {
                    continue;
                }
                findings.push(FleetFinding {
                    host: host.identity.hostname.clone(),
                    provider: host.identity.provider.provider.value.clone(),
                    gpu: f.gpu,
                    uuid: f.uuid,
                    model: gpu.info.model.clone(),
                    kind: f.kind.name(),
                    severity: f.severity.name(),
                    summary: f.summary,
                    evidence: f.evidence,
                    action: f.action,
                    readings: gpu.recent.len(),
                    window_seconds,
                    rank: f.severity,
                });
            }
        }
    });
    findings.sort_by(|a, b| {
        b.rank
            .cmp(&a.rank)
            .then_with(|| a.host.cmp(&b.host))
            .then_with(|| a.gpu.cmp(&b.gpu))
            .then_with(|| a.kind.cmp(b.kind))
    });
    FindingsReport {
        version: JSON_VERSION,
        generated_at: rfc3339(now_unix_ms),
        hosts,
        gpus,
        findings,
    }
}
