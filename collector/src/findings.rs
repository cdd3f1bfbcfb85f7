//! Fleet-wide findings: the diagnosis rules that `gpulse-agent diagnose` runs on one
//! host, run by the collector on every GPU's recent readings. Served as JSON at
//! /api/v1/findings and as `gpulse_gpu_finding` on /metrics.

use serde::Serialize;

use gpulse_exposition::HostSource;
use gpulse_gpu::DeviceHolder;
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
    /// The Kubernetes containers holding the GPU or its MIG devices when the finding
    /// was made: empty when none does, null where the host's agent does not know
    /// (not a Kubernetes node). Added in version 1 without a bump: readers that do not
    /// know it skip it.
    pub held_by: Option<Vec<HeldBy>>,
    #[serde(skip)]
    rank: Severity,
}

/// One container holding a GPU or one of its MIG devices.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HeldBy {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The GPU's uuid, or the MIG device's the container holds.
    pub device_uuid: String,
}

impl From<&DeviceHolder> for HeldBy {
    fn from(h: &DeviceHolder) -> Self {
        HeldBy {
            namespace: h.namespace.clone(),
            pod: h.pod.clone(),
            container: h.container.clone(),
            device_uuid: h.device_uuid.clone(),
        }
    }
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
            let held_by: Option<Vec<HeldBy>> = gpu
                .latest()
                .and_then(|s| s.allocation.as_ref())
                .map(|a| a.holders().iter().map(HeldBy::from).collect());
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
                    held_by: held_by.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use gpulse_gpu::simulator::Simulator;
    use gpulse_gpu::{GpuBackend, HostIdentity, Snapshot};

    use crate::fleet::Fleet;

    fn findings_of(spec: &str) -> Vec<FleetFinding> {
        let fleet = Fleet::new(Default::default());
        let mut sim = Simulator::new(spec.parse().unwrap());
        let identity = HostIdentity {
            agent_id: "k8s-node".into(),
            hostname: "k8s-node".into(),
            ..HostIdentity::default()
        };
        let t0 = 1_790_000_000_000;
        let session = fleet
            .connect(identity, sim.inventory().to_vec(), t0)
            .unwrap();
        for k in 0..8 {
            let t = t0 + k * 5000;
            let gpus = sim.sample(t);
            fleet
                .apply(
                    &session,
                    k as u64 + 1,
                    vec![Snapshot {
                        timestamp_unix_ms: t,
                        gpus,
                    }],
                    t,
                )
                .unwrap();
        }
        report(fleet.as_ref(), &Filter::default(), t0 + 40_000).findings
    }

    #[test]
    fn a_finding_names_the_pod_holding_the_gpu() {
        let findings = findings_of("gpus=2,scenario=thermal,pods=1");
        let on = |gpu: u32| {
            findings
                .iter()
                .find(|f| f.gpu == gpu && f.kind == "thermal_throttling")
                .unwrap_or_else(|| panic!("GPU {gpu} throttles: {findings:#?}"))
        };
        let held = on(0)
            .held_by
            .as_ref()
            .expect("pods= makes the allocation known");
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].namespace, "ml-training");
        assert_eq!(held[0].device_uuid, on(0).uuid);
        assert_eq!(on(1).held_by, Some(vec![]), "GPU 1 is held by nobody");
        let json = serde_json::to_value(on(0)).unwrap();
        assert_eq!(json["held_by"][0]["namespace"], "ml-training");
    }

    #[test]
    fn where_pods_are_unknown_the_finding_says_so() {
        let findings = findings_of("gpus=1,scenario=thermal");
        assert!(!findings.is_empty());
        for f in &findings {
            assert_eq!(f.held_by, None);
            assert!(serde_json::to_value(f).unwrap()["held_by"].is_null());
        }
    }
}
