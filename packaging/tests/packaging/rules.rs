//! The alert and recording rules: promtool checks and unit tests, conventions, runbooks
//! and the Alertmanager example.

use std::collections::BTreeSet;

use crate::common::{
    ALERT_RULES, RECORDING_RULES, RULE_FILES, SCRAPE_EXAMPLE, prometheus_dir, root, rules, tool_ok,
    yaml,
};

/// Where runbook links point (README.md, "Alerting").
const RUNBOOK_BASE: &str = "https://github.com/gpulse/gpulse/blob/main/docs/runbooks/";
const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

fn alerts() -> Vec<serde_yaml::Value> {
    rules(&yaml(&prometheus_dir().join(ALERT_RULES)))
}

fn recording() -> Vec<serde_yaml::Value> {
    rules(&yaml(&prometheus_dir().join(RECORDING_RULES)))
}

#[test]
fn promtool_checks_the_rule_files() {
    let out = tool_ok(
        "promtool",
        &["check", "rules", ALERT_RULES, RECORDING_RULES],
        &prometheus_dir(),
    );
    let alerts = alerts().len();
    assert!(alerts >= 24, "{alerts} alert rules");
    assert!(
        out.contains(&format!("SUCCESS: {alerts} rules found")),
        "{out}"
    );
}

/// The example scrape configuration is one Prometheus accepts, with the rule files
/// beside it and the token file it names.
#[test]
fn promtool_checks_the_example_scrape_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "a-token-of-at-least-16-characters").unwrap();
    let text = std::fs::read_to_string(prometheus_dir().join(SCRAPE_EXAMPLE)).unwrap();
    assert!(text.contains("/etc/gpulse/token"), "{text}");
    std::fs::write(
        dir.path().join(SCRAPE_EXAMPLE),
        text.replace("/etc/gpulse/token", token.to_str().unwrap()),
    )
    .unwrap();
    for file in [ALERT_RULES, RECORDING_RULES] {
        std::fs::copy(prometheus_dir().join(file), dir.path().join(file)).unwrap();
    }
    let out = tool_ok("promtool", &["check", "config", SCRAPE_EXAMPLE], dir.path());
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_unit_tests_pass() {
    let mut tests: Vec<String> = std::fs::read_dir(prometheus_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("test") && n.ends_with(".yml"))
        .collect();
    tests.sort();
    assert_eq!(
        tests,
        ["gpulse-alerts.test.yml", "gpulse-recording.test.yml"]
    );
    let args: Vec<&str> = ["test", "rules"]
        .into_iter()
        .chain(tests.iter().map(String::as_str))
        .collect();
    let out = tool_ok("promtool", &args, &prometheus_dir());
    assert_eq!(out.matches("SUCCESS").count(), 2, "{out}");
}

#[test]
fn every_alert_follows_the_conventions_and_has_a_runbook() {
    let alerts = alerts();
    assert!(alerts.len() >= 20, "{} alerts", alerts.len());
    let index = std::fs::read_to_string(root().join("docs/runbooks/README.md")).unwrap();
    for a in &alerts {
        let name = a["alert"].as_str().expect("an alerting rule");
        assert!(
            name.starts_with("Gpulse") && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "{name}: CamelCase with the Gpulse prefix"
        );
        let severity = a["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            SEVERITIES.contains(&severity),
            "{name}: severity {severity:?}"
        );
        let ann = &a["annotations"];
        for key in ["summary", "description"] {
            let text = ann[key].as_str().unwrap_or("");
            assert!(
                text.contains("$labels"),
                "{name}: {key} should name its labels: {text:?}"
            );
        }
        let url = ann["runbook_url"].as_str().unwrap_or("");
        assert_eq!(
            url,
            format!("{RUNBOOK_BASE}{name}.md"),
            "{name}: runbook_url"
        );
        let page = std::fs::read_to_string(root().join(format!("docs/runbooks/{name}.md")))
            .unwrap_or_else(|_| panic!("docs/runbooks/{name}.md is missing"));
        for heading in ["## Meaning", "## Impact", "## Diagnosis", "## Mitigation"] {
            assert!(
                page.contains(heading),
                "docs/runbooks/{name}.md lacks {heading}"
            );
        }
        assert!(
            page.contains(&format!("**{severity}**")),
            "{name}: runbook severity"
        );
        assert!(
            index.contains(&format!("[{name}]({name}.md)")),
            "runbook index lacks {name}"
        );
    }
    let pages = std::fs::read_dir(root().join("docs/runbooks"))
        .unwrap()
        .count();
    assert_eq!(
        pages,
        alerts.len() + 1,
        "one runbook per alert, plus the index"
    );
}

#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let tests = yaml(&prometheus_dir().join("gpulse-alerts.test.yml"));
    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap().to_string();
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                fired.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for a in alerts() {
        let name = a["alert"].as_str().unwrap();
        assert!(fired.contains(name), "no test sees {name} fire");
        assert!(quiet.contains(name), "no test sees {name} stay quiet");
    }
}

#[test]
fn every_recording_rule_has_an_expression_test() {
    let tests = yaml(&prometheus_dir().join("gpulse-recording.test.yml"));
    let tested: BTreeSet<&str> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| {
            t["promql_expr_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c["expr"].as_str().map(str::to_string))
        .map(|s| &*s.leak())
        .collect();
    let rules = recording();
    assert!(rules.len() >= 10);
    for r in rules {
        let name = r["record"].as_str().expect("a recording rule");
        assert!(
            name.split(':').count() == 3,
            "{name}: level:metric:operations"
        );
        assert!(tested.contains(name), "no promql_expr_test for {name}");
    }
}

/// The names rules read exist: exported by gpulse, Prometheus's own, recorded by the
/// recording rules, or in the list of pending cost metrics.
#[test]
fn rules_read_only_metrics_that_exist() {
    let recorded: BTreeSet<String> = recording()
        .iter()
        .filter_map(|r| r["record"].as_str().map(str::to_string))
        .collect();
    for file in RULE_FILES {
        for r in rules(&yaml(&prometheus_dir().join(file))) {
            let expr = r["expr"].as_str().unwrap();
            let parsed = gpulse_dashboards::parse(expr).unwrap();
            let unknown = gpulse_dashboards::unknown_metrics(&parsed, &recorded);
            assert!(unknown.is_empty(), "{file}: {expr} reads {unknown:?}");
        }
    }
}

#[test]
fn amtool_accepts_the_alertmanager_example_and_routes_by_severity() {
    let dir = root().join("packaging/alertmanager");
    let out = tool_ok("amtool", &["check-config", "alertmanager.yml"], &dir);
    assert!(
        out.contains("SUCCESS") && out.contains("4 inhibit rules"),
        "{out}"
    );
    for (severity, receiver) in [
        ("critical", "gpulse-critical"),
        ("warning", "gpulse-warning"),
        ("info", "gpulse-info"),
    ] {
        let label = format!("severity={severity}");
        let out = crate::common::tool(
            "amtool",
            &[
                "config",
                "routes",
                "test",
                "--config.file=alertmanager.yml",
                "alertname=GpulseGpuLost",
                "host=h1",
                &label,
            ],
            &dir,
        );
        assert!(out.status.success(), "amtool config routes test {label}");
        // stdout is the receiver; stderr holds a note about the flags.
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            receiver,
            "{severity}"
        );
    }
}

/// The alerts that match a finding kind carry that kind's severity from the one table
/// (`FindingKind::severity`); each XID alert carries the severity of its codes.
#[test]
fn alert_severities_follow_the_findings_table() {
    use gpulse_gpu::diagnosis::{FindingKind as K, xid_severity};
    let alerts = alerts();
    let alert = |name: &str| -> (String, String) {
        let rule = alerts
            .iter()
            .find(|a| a["alert"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no alert {name}"));
        (
            rule["labels"]["severity"].as_str().unwrap().to_string(),
            rule["expr"].as_str().unwrap().to_string(),
        )
    };
    let matching = [
        (K::GpuLost, "GpulseGpuLost"),
        (K::ThermalThrottling, "GpulseGpuThermalThrottling"),
        (K::ProviderPowerCap, "GpulseGpuPowerCapped"),
        (K::HardwareSlowdown, "GpulseGpuHardwareSlowdown"),
        (K::PcieDowntrained, "GpulsePcieLinkDegraded"),
        (K::PcieReplays, "GpulsePcieReplaysHigh"),
        (K::NvlinkDown, "GpulseNvlinkDown"),
        (K::NvlinkErrors, "GpulseNvlinkErrors"),
        (K::UncorrectableEcc, "GpulseGpuEccUncorrectable"),
        (K::RowRemapFailed, "GpulseGpuRowRemapFailed"),
        (K::RowRemapPending, "GpulseGpuRowRemapPending"),
    ];
    for (kind, name) in matching {
        let (severity, _) = alert(name);
        assert_eq!(
            Some(severity.as_str()),
            kind.severity().map(|s| s.name()),
            "{name} against finding {}",
            kind.name()
        );
    }
    let mut codes_seen = 0;
    for rule in alerts.iter().filter(|a| {
        a["alert"]
            .as_str()
            .is_some_and(|n| n.starts_with("GpulseGpuXid"))
    }) {
        let name = rule["alert"].as_str().unwrap();
        let (severity, expr) = alert(name);
        let codes = expr
            .split("xid=")
            .nth(1)
            .and_then(|rest| rest.trim_start_matches('~').split('"').nth(1))
            .unwrap_or_else(|| panic!("{name}: no xid matcher in {expr}"));
        for code in codes.split('|') {
            let code: u64 = code.parse().unwrap();
            assert_eq!(
                xid_severity(code).name(),
                severity,
                "{name}: XID {code} against the findings table"
            );
            codes_seen += 1;
        }
    }
    assert!(codes_seen >= 10, "read the XID alerts' codes: {codes_seen}");
}
