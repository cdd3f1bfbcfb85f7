//! End to end with the real peers: a collector fed by a simulated fleet over real gRPC,
//! a real Prometheus (Debian's `prometheus`) scraping it and the agents' own /metrics
//! with the shipped rules, and a real Alertmanager (`prometheus-alertmanager`) with the
//! shipped example configuration receiving the alerts.
//!
//! Every dashboard query and variable must return data, every recording rule must
//! have a result, and the fleet's scenarios must fire their alerts into Alertmanager
//! (thermal throttling first of all), while an idle host's trained-down PCIe link
//! must not. Expressions reading a metric in PENDING_COST_METRICS are skipped, and
//! only those.
//!
//! The shipped rules wait minutes (`for: 10m`) before firing; this test runs them with
//! every `for:` shortened to 1s, and no other change: the promtool unit tests check the
//! real durations, this test checks the rules, Prometheus and Alertmanager work
//! together. Agents sample every second, Prometheus scrapes and evaluates every second.
//! Every wait is bounded, and the child processes are killed on every exit path.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use gpulse_agent::config::AgentConfig;
use gpulse_collector::config::CollectorConfig;
use gpulse_dashboards::{Dashboard, Expansion, PENDING_COST_METRICS, expand, parse, uses_pending};
use gpulse_exposition::dcgm::DcgmCompat;
use gpulse_gpu::{HostFacts, HostIdentity, Learned, ProviderIdentity};

use crate::common::{
    ALERT_RULES, RECORDING_RULES, example_metric_relabelling, prometheus_dir, root, rules, yaml,
};

/// How long any one phase may wait for the peers.
const WAIT: Duration = Duration::from_secs(90);
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Grafana's $__rate_interval for a 1 s scrape is at least 4 scrapes; a little more
/// keeps a missed scrape from emptying a rate.
const RATE_INTERVAL: &str = "10s";
const JOB_COLLECTOR: &str = "gpulse-collector";
const JOB_AGENT: &str = "gpulse-agent";

/// (host, provider, simulator spec or None for a host whose NVML cannot be opened).
/// Two hosts play Kubernetes pods (`pods=`): aws-train with one GPU nobody holds, and
/// lambda-idle whose pods hold idle GPUs, so the namespace views have busy, idle and
/// unheld GPUs; the other hosts know no allocation, as off Kubernetes.
const FLEET: [(&str, &str, Option<&str>); 11] = [
    (
        "aws-thermal",
        "aws",
        Some("gpus=2,model=h100-sxm,scenario=thermal,seed=21"),
    ),
    (
        "aws-train",
        "aws",
        Some("gpus=4,model=h100-sxm,scenario=training,seed=22,pods=3"),
    ),
    (
        "gcp-cap",
        "gcp",
        Some("gpus=2,model=a100,scenario=power-cap,seed=23"),
    ),
    (
        "azure-pcie",
        "azure",
        Some("gpus=2,model=h100-sxm,scenario=pcie-degraded,seed=24"),
    ),
    (
        "azure-nvlink",
        "azure",
        Some("gpus=2,model=h100-sxm,scenario=nvlink-errors,seed=25"),
    ),
    (
        "nebius-xid",
        "nebius",
        Some("gpus=1,model=h200,scenario=xid,seed=26"),
    ),
    (
        "onprem-ecc",
        "on-prem",
        Some("gpus=1,model=a100,scenario=ecc,seed=27"),
    ),
    (
        "cw-lost",
        "coreweave",
        Some("gpus=2,model=h100-sxm,scenario=lost,seed=28"),
    ),
    (
        "oci-hw",
        "oci",
        Some("gpus=2,model=h100-sxm,scenario=hw-slowdown,seed=29"),
    ),
    (
        "lambda-idle",
        "lambda",
        Some("gpus=2,model=l4,scenario=idle,seed=30,hide=energy+pcie_replays,pods=2"),
    ),
    ("onprem-nonvml", "on-prem", None),
];

/// (alert, host) pairs the fleet must raise in Alertmanager.
const EXPECTED_ALERTS: [(&str, &str); 14] = [
    ("GpulseGpuThermalThrottling", "aws-thermal"),
    ("GpulseGpuStraggler", "aws-thermal"),
    ("GpulseGpuHardwareSlowdown", "oci-hw"),
    ("GpulseGpuPowerCapped", "gcp-cap"),
    ("GpulsePcieLinkDegraded", "azure-pcie"),
    ("GpulsePcieReplaysHigh", "azure-pcie"),
    ("GpulseNvlinkDown", "azure-nvlink"),
    ("GpulseNvlinkErrors", "azure-nvlink"),
    ("GpulseGpuXidApplication", "nebius-xid"),
    ("GpulseGpuXidMemoryError", "onprem-ecc"),
    ("GpulseGpuRowRemapPending", "onprem-ecc"),
    ("GpulseGpuLost", "cw-lost"),
    ("GpulseHostGpuBackendError", "onprem-nonvml"),
    ("GpulseGpuStraggler", "oci-hw"),
];

/// (alert, host) pairs that must stay quiet: idle links train down, and everything of
/// gpulse itself is healthy.
const QUIET_ALERTS: [(&str, &str); 4] = [
    ("GpulsePcieLinkDegraded", "lambda-idle"),
    ("GpulseGpuThermalThrottling", "aws-train"),
    ("GpulseAgentDown", ""),
    ("GpulseCollectorDown", ""),
];

/// A child process killed and reaped however the test ends.
struct Guard {
    name: &'static str,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Guard {
    fn spawn(name: &'static str, program: &str, args: &[String]) -> Guard {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program}: {e}; run scripts/install-test-deps.sh")
            });
        Guard { name, child, log }
    }

    /// The end of the process's log, for failure messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!("--- {} log ---\n{}", self.name, lines[from..].join("\n"))
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status})\n{}", self.name, self.tail());
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A GET over HTTP/1.0 (no chunking, the server closes), on loopback only.
fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    assert!(addr.ip().is_loopback());
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, json) = body.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(json).ok()
}

/// Runs an instant query; Some(number of series) when Prometheus answered.
fn query(prom: SocketAddr, q: &str) -> Option<usize> {
    let v = get_json(prom, &format!("/api/v1/query?query={}", percent_encode(q)))?;
    if v["status"] != "success" {
        return None;
    }
    match v["data"]["resultType"].as_str()? {
        "scalar" | "string" => Some(1),
        _ => v["data"]["result"].as_array().map(Vec::len),
    }
}

/// The value of a one-series instant query.
fn value(prom: SocketAddr, q: &str) -> Option<f64> {
    let v = get_json(prom, &format!("/api/v1/query?query={}", percent_encode(q)))?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Polls until `done` holds or the wait is over; returns whether it held.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    done()
}

fn identity(host: &str, provider: &str) -> HostIdentity {
    HostIdentity {
        agent_id: host.into(),
        boot_id: "boot-1".into(),
        hostname: host.into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        provider: ProviderIdentity {
            provider: Learned::from_config(provider),
            region: Learned::from_config("region-1"),
            zone: Learned::from_config("zone-a"),
            instance_type: Learned::from_config("gpu-8x"),
        },
        facts: HostFacts {
            machine_id: format!("machine-{host}"),
            os: "Debian GNU/Linux 12".into(),
            kernel: "6.1.0".into(),
            ..HostFacts::default()
        },
        labels: BTreeMap::new(),
        gpu_backend_error: String::new(),
    }
}

/// The shipped rules with every `for:` shortened to 1s, written into `dir`.
fn fast_rules(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for file in [ALERT_RULES, RECORDING_RULES] {
        let text = std::fs::read_to_string(prometheus_dir().join(file)).unwrap();
        let fast: String = text
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 1s", &l[..l.len() - l.trim_start().len()]),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(
            file == ALERT_RULES,
            fast.trim_end() == text.trim_end(),
            "{file}: only the alert rules wait"
        );
        let path = dir.join(file);
        std::fs::write(&path, fast + "\n").unwrap();
        files.push(path.display().to_string());
    }
    files
}

#[test]
fn a_real_prometheus_and_alertmanager_see_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The collector (with the DCGM view and per-process series too: the dashboards have
    // panels for both) and the fleet, in this process.
    let (collector, agents) = rt.block_on(async {
        let collector = gpulse_collector::start(CollectorConfig {
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("collector"),
            dcgm_compat: DcgmCompat::Also,
            process_series: true,
            ..CollectorConfig::default()
        })
        .await
        .unwrap();
        let mut agents = Vec::new();
        for (host, provider, spec) in FLEET {
            let config = AgentConfig {
                collector: format!("http://{}", collector.grpc_addr),
                interval: SAMPLE_INTERVAL,
                simulate: spec.map(str::to_string),
                agent_id: Some(host.to_string()),
                http_listen: Some("127.0.0.1:0".parse().unwrap()),
                // A library that is not there: the host reports library_not_found.
                nvml_library: spec
                    .is_none()
                    .then(|| dir.path().join("no-such/libnvidia-ml.so.1")),
                ..AgentConfig::default()
            };
            let opener = gpulse_agent::backend_opener(&config).unwrap();
            agents.push(
                gpulse_agent::start(config, identity(host, provider), opener)
                    .await
                    .unwrap(),
            );
        }
        (collector, agents)
    });
    let agent_targets: Vec<String> = agents
        .iter()
        .map(|a| format!("'{}'", a.http_addr.unwrap()))
        .collect();

    let am_port = free_port();
    let am_addr: SocketAddr = format!("127.0.0.1:{am_port}").parse().unwrap();
    let mut alertmanager = Guard::spawn(
        "alertmanager",
        "prometheus-alertmanager",
        &[
            format!(
                "--config.file={}",
                root()
                    .join("packaging/alertmanager/alertmanager.yml")
                    .display()
            ),
            format!("--storage.path={}", dir.path().join("am").display()),
            format!("--web.listen-address={am_addr}"),
            // No cluster: it would listen on every interface.
            "--cluster.listen-address=".to_string(),
        ],
    );

    let rule_files = fast_rules(dir.path());
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files: [{rules}]\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{am_addr}']\n\
         scrape_configs:\n\
         \x20 - job_name: {JOB_COLLECTOR}\n    static_configs:\n      - targets: ['{collector}']\n\
         \x20   metric_relabel_configs: {dcgm_instance}\n\
         \x20 - job_name: {JOB_AGENT}\n    static_configs:\n      - targets: [{agents}]\n\
         \x20   metric_relabel_configs:\n\
         \x20     - source_labels: [__name__]\n\
         \x20       regex: 'gpulse_agent_(batches_.*|buffered_batches|connects_total|connected|sample_duration_seconds)'\n\
         \x20       action: keep\n",
        rules = rule_files.join(", "),
        collector = collector.http_addr,
        // The example's relabelling, as JSON (which YAML reads as a flow sequence).
        dcgm_instance = serde_json::to_string(&example_metric_relabelling(JOB_COLLECTOR)).unwrap(),
        agents = agent_targets.join(", "),
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, &config).unwrap();
    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut prometheus = Guard::spawn(
        "prometheus",
        "prometheus",
        &[
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            format!("--web.listen-address={prom_addr}"),
        ],
    );

    // Every target up.
    let targets = FLEET.len() + 1;
    let up = wait_for(|| value(prom_addr, "count(up == 1)") == Some(targets as f64));
    prometheus.assert_running();
    alertmanager.assert_running();
    assert!(
        up,
        "Prometheus never scraped all {targets} targets\n{}",
        prometheus.tail()
    );

    // Every dashboard query and variable returns data.
    let mut skipped = BTreeSet::new();
    let mut pending_exprs: Vec<(String, String)> = Vec::new();
    for d in gpulse_dashboards::load_all() {
        let vars = d.variables();
        let exprs = d
            .queries()
            .into_iter()
            .map(|q| (format!("{} panel {:?}", d.file, q.panel), q.expr))
            .chain(
                vars.iter()
                    .filter_map(|v| Dashboard::variable_selector(v).map(|s| (v, s)))
                    .map(|(v, s)| (format!("{} variable {}", d.file, v["name"]), s)),
            );
        for (what, e) in exprs {
            let live = expand(
                &e,
                &vars,
                Expansion::Live {
                    rate_interval: RATE_INTERVAL,
                },
            );
            if uses_pending(&parse(&live).unwrap()) {
                skipped.insert(what);
                continue;
            }
            pending_exprs.push((what, live));
        }
    }
    let all_have_data = wait_for(|| {
        pending_exprs.retain(|(_, q)| query(prom_addr, q).is_none_or(|n| n == 0));
        pending_exprs.is_empty()
    });
    assert!(
        all_have_data,
        "dashboard queries without data after {WAIT:?}:\n{}",
        pending_exprs
            .iter()
            .map(|(w, q)| format!("{w}: {q}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Every recording rule evaluates.
    let mut unrecorded: Vec<String> = rules(&yaml(&prometheus_dir().join(RECORDING_RULES)))
        .iter()
        .filter(|r| !uses_pending(&parse(r["expr"].as_str().unwrap()).unwrap()))
        .map(|r| r["record"].as_str().unwrap().to_string())
        .collect();
    assert!(unrecorded.len() >= 5, "{unrecorded:?}");
    let recorded = wait_for(|| {
        unrecorded.retain(|name| query(prom_addr, name).is_none_or(|n| n == 0));
        unrecorded.is_empty()
    });
    assert!(recorded, "recording rules without a result: {unrecorded:?}");

    // The namespace and pod variables: All keeps the GPUs of hosts that know no
    // allocation, and one namespace keeps exactly the GPUs it holds.
    let fleet = gpulse_dashboards::load_all()
        .into_iter()
        .find(|d| d.file == "gpulse-fleet.json")
        .expect("the fleet dashboard");
    let gpus_panel = fleet
        .queries()
        .into_iter()
        .find(|q| q.panel == "GPUs")
        .expect("the fleet's GPUs panel")
        .expr;
    let gpus_in = |namespace: &str| {
        let mut vars: Vec<Value> = fleet.variables().into_iter().cloned().collect();
        for v in &mut vars {
            if v["name"] == "namespace" {
                v["allValue"] = Value::from(namespace);
            }
        }
        let vars: Vec<&Value> = vars.iter().collect();
        let live = expand(
            &gpus_panel,
            &vars,
            Expansion::Live {
                rate_interval: RATE_INTERVAL,
            },
        );
        value(prom_addr, &live)
    };
    let all_gpus = value(prom_addr, "count(gpulse_gpu_info)");
    assert!(all_gpus.is_some_and(|n| n > 5.0), "{all_gpus:?}");
    assert_eq!(gpus_in(".*"), all_gpus, "All shows every GPU");
    for namespace in ["ml-training", "inference"] {
        let held = value(
            prom_addr,
            &format!("count(gpulse_gpu_allocation_info{{namespace=\"{namespace}\"}})"),
        );
        assert!(held.is_some_and(|n| n >= 2.0), "{namespace}: {held:?}");
        assert_eq!(gpus_in(namespace), held, "{namespace} shows its own GPUs");
    }

    // The DCGM view is scraped too, each host its own `instance` as behind
    // dcgm-exporter (the example's relabelling), while gpulse's own series keep the
    // collector's.
    assert!(query(prom_addr, "DCGM_FI_DEV_GPU_TEMP").is_some_and(|n| n > 10));
    let instances = |q: &str| -> BTreeSet<String> {
        get_json(
            prom_addr,
            &format!("/api/v1/query?query={}", percent_encode(q)),
        )
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["metric"]["instance"].as_str().map(str::to_string))
        .collect()
    };
    let simulated: BTreeSet<String> = FLEET
        .iter()
        .filter(|(_, _, spec)| spec.is_some())
        .map(|(host, _, _)| host.to_string())
        .collect();
    assert_eq!(
        instances("count by (instance) (DCGM_FI_DEV_GPU_TEMP)"),
        simulated,
        "one instance per host on the DCGM series"
    );
    assert_eq!(
        instances("count by (instance) (DCGM_FI_DEV_GPU_TEMP{gpu=\"0\"})").len(),
        simulated.len(),
        "GPU 0 of each host is its own series in a per-instance legend"
    );
    assert_eq!(
        instances("count by (instance) (gpulse_gpu_temperature_celsius)"),
        BTreeSet::from([collector.http_addr.to_string()]),
    );

    // The scenarios fire their alerts into Alertmanager.
    let alerts_in_am = || -> Vec<(String, String, String)> {
        get_json(am_addr, "/api/v2/alerts")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["labels"]["host"].as_str().unwrap_or("").to_string(),
                    a["status"]["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let mut missing: Vec<(&str, &str)> = EXPECTED_ALERTS.to_vec();
    let fired = wait_for(|| {
        let got = alerts_in_am();
        missing.retain(|(a, h)| !got.iter().any(|(ga, gh, _)| ga == a && gh == h));
        missing.is_empty()
    });
    let got = alerts_in_am();
    assert!(
        fired,
        "alerts missing from Alertmanager after {WAIT:?}: {missing:?}\nthere: {got:?}\n{}",
        prometheus.tail()
    );
    let thermal = got
        .iter()
        .find(|(a, h, _)| a == "GpulseGpuThermalThrottling" && h == "aws-thermal")
        .unwrap();
    assert_eq!(
        thermal.2, "active",
        "thermal throttling is routed, not silenced"
    );
    for (a, h) in QUIET_ALERTS {
        assert!(
            !got.iter()
                .any(|(ga, gh, _)| ga == a && (h.is_empty() || gh == h)),
            "{a} fired for {h:?}: {got:?}"
        );
    }
    // Only expressions reading PENDING_COST_METRICS were skipped.
    assert!(!PENDING_COST_METRICS.is_empty() || skipped.is_empty());
    eprintln!(
        "end to end: skipped {} expression(s) that read pending cost metrics",
        skipped.len()
    );

    prometheus.assert_running();
    alertmanager.assert_running();
    drop(prometheus);
    drop(alertmanager);
    rt.block_on(async {
        for a in agents {
            a.shutdown().await;
        }
        collector.shutdown().await;
    });
}
