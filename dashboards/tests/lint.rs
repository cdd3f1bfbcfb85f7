//! The rules of grafana/dashboard-linter (lint/rule_*.go), applied to every shipped
//! dashboard, plus gpulse's own: every query parses and reads only metrics the
//! collector exports (or the cost metrics listed as pending).

use std::collections::BTreeSet;

use promql_parser::label::MatchOp;
use promql_parser::parser::{BinaryExpr, Expr, LabelModifier, VectorSelector};
use serde_json::Value;

use gpulse_dashboards::{Dashboard, Expansion, LINT_RATE_INTERVAL, expand, load_all, parse, walk};

/// Units Grafana knows, as the linter lists them (rule_panel_units.go), for the
/// categories gpulse's panels use.
const VALID_UNITS: [&str; 40] = [
    "none",
    "short",
    "percent",
    "percentunit",
    "bytes",
    "decbytes",
    "bits",
    "Bps",
    "binBps",
    "bps",
    "watt",
    "kwatt",
    "watth",
    "kwatth",
    "joule",
    "celsius",
    "hertz",
    "ns",
    "µs",
    "ms",
    "s",
    "m",
    "h",
    "d",
    "dtdurations",
    "cps",
    "ops",
    "reqps",
    "rps",
    "wps",
    "iops",
    "cpm",
    "opm",
    "currencyUSD",
    "currencyEUR",
    "currencyGBP",
    "bool",
    "bool_yes_no",
    "dateTimeAsIso",
    "string",
];

/// Panel types whose queries and units the linter checks.
const QUERY_PANELS: [&str; 7] = [
    "singlestat",
    "gauge",
    "table",
    "stat",
    "state-timeline",
    "timeseries",
    "graph",
];

fn dashboards() -> Vec<Dashboard> {
    let all = load_all();
    assert!(
        all.len() >= 5,
        "expected the five dashboards, found {}",
        all.len()
    );
    all
}

fn datasource_uid(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

/// Collects every failure instead of stopping at the first, so one run lists them all.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} finding(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

#[test]
fn template_datasource_rule() {
    let mut f = Findings::default();
    for d in dashboards() {
        let ds: Vec<&Value> = d
            .variables()
            .into_iter()
            .filter(|v| v["type"] == "datasource")
            .collect();
        f.check(ds.len() == 1, || {
            format!("{}: wants one templated data source", d.file)
        });
        for v in ds {
            f.check(v["name"] == "datasource", || {
                format!("{}: data source variable must be named datasource", d.file)
            });
            f.check(v["label"] == "Data source", || {
                format!(
                    "{}: data source variable label must be 'Data source'",
                    d.file
                )
            });
            f.check(v["query"] == "prometheus", || {
                format!(
                    "{}: data source variable must be of type prometheus",
                    d.file
                )
            });
        }
    }
    f.assert_none();
}

#[test]
fn template_job_and_instance_rules() {
    let mut f = Findings::default();
    for d in dashboards() {
        for (name, label) in [("job", "Job"), ("instance", "Instance")] {
            let vars = d.variables();
            let Some(v) = vars.iter().find(|v| v["name"] == name) else {
                f.0.push(format!("{}: is missing the {name} template", d.file));
                continue;
            };
            let uid = datasource_uid(&v["datasource"]);
            f.check(uid == "$datasource" || uid == "${datasource}", || {
                format!(
                    "{}: {name} template should use $datasource, uses {uid}",
                    d.file
                )
            });
            f.check(v["type"] == "query", || {
                format!("{}: {name} template should be a query", d.file)
            });
            f.check(v["label"] == label, || {
                format!("{}: {name} template should be labelled {label}", d.file)
            });
            f.check(v["multi"] == true, || {
                format!("{}: {name} template should be multi-select", d.file)
            });
            f.check(v["allValue"] == ".+", || {
                format!("{}: {name} template allValue should be .+", d.file)
            });
        }
    }
    f.assert_none();
}

#[test]
fn template_label_promql_and_reload_rules() {
    let mut f = Findings::default();
    for d in dashboards() {
        let vars = d.variables();
        for v in vars.iter().filter(|v| v["type"] == "query") {
            let name = v["name"].as_str().unwrap_or("");
            f.check(v["refresh"] == 2, || {
                format!(
                    "{}: variable {name} should refresh on time range change (2)",
                    d.file
                )
            });
            match Dashboard::variable_selector(v) {
                None => f.0.push(format!(
                    "{}: variable {name} should be label_values(<selector>, <label>)",
                    d.file
                )),
                Some(sel) => {
                    let e = expand(&sel, &vars, Expansion::Lint);
                    if let Err(err) = parse(&e) {
                        f.0.push(format!("{}: variable {name}: {err}", d.file));
                    }
                }
            }
        }
    }
    f.assert_none();
}

#[test]
fn uneditable_rule() {
    for d in dashboards() {
        assert_eq!(d.json["editable"], false, "{}: set editable: false", d.file);
    }
}

#[test]
fn panel_datasource_title_units_and_targets_rules() {
    let mut f = Findings::default();
    for d in dashboards() {
        for p in d.panels() {
            let ty = p["type"].as_str().unwrap_or("");
            let title = p["title"].as_str().unwrap_or("");
            let at = || format!("{} panel {title:?}", d.file);
            if ty == "row" {
                continue;
            }
            f.check(QUERY_PANELS.contains(&ty), || {
                format!("{}: type {ty} is not one the linter checks", at())
            });
            let uid = datasource_uid(&p["datasource"]);
            f.check(uid == "$datasource" || uid == "${datasource}", || {
                format!("{}: uses data source {uid:?}, not $datasource", at())
            });
            f.check(
                !title.is_empty() && !p["description"].as_str().unwrap_or("").is_empty(),
                || format!("{}: needs a title and a description", at()),
            );
            let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
            f.check(VALID_UNITS.contains(&unit), || {
                format!("{}: has no or an unknown unit {unit:?}", at())
            });
            let targets = p["targets"].as_array().map_or(0, Vec::len);
            f.check(targets > 0, || format!("{}: has no targets", at()));
            for t in p["targets"].as_array().into_iter().flatten() {
                let tu = datasource_uid(&t["datasource"]);
                f.check(tu == "$datasource" || tu == "${datasource}", || {
                    format!("{}: a target uses data source {tu:?}", at())
                });
            }
        }
    }
    f.assert_none();
}

/// target-promql-rule, target-rate-interval-rule, target-job-rule,
/// target-instance-rule and target-counter-agg-rule.
#[test]
fn target_rules() {
    let mut f = Findings::default();
    let mut queries = 0;
    for d in dashboards() {
        let vars = d.variables();
        for q in d.queries() {
            queries += 1;
            let at = format!("{} panel {:?}: {}", q.dashboard, q.panel, q.expr);
            let expanded = expand(&q.expr, &vars, Expansion::Lint);
            let expr = match parse(&expanded) {
                Ok(e) => e,
                Err(e) => {
                    f.0.push(format!("{at}: {e}"));
                    continue;
                }
            };
            walk(&expr, &mut |node, parents| {
                check_node(node, parents, &at, &mut f);
            });
        }
    }
    assert!(queries > 40, "only {queries} queries found");
    f.assert_none();
}

fn check_node(node: &Expr, parents: &[&Expr], at: &str, f: &mut Findings) {
    match node {
        Expr::MatrixSelector(m) => {
            // Stricter than the linter, which checks rate and irate only: every range
            // is $__rate_interval, increase() and *_over_time() included.
            f.check(m.range == LINT_RATE_INTERVAL, || {
                format!("{at}: a range is not $__rate_interval")
            });
        }
        Expr::VectorSelector(vs) => {
            for (label, value) in [("job", "$job"), ("instance", "$instance")] {
                let ok =
                    vs.matchers.matchers.iter().any(|m| {
                        m.name == label && matches!(m.op, MatchOp::Re(_)) && m.value == value
                    });
                f.check(ok, || {
                    format!("{at}: selector {vs} lacks {label}=~\"{value}\"")
                });
            }
            let counter = vs.name.as_deref().is_some_and(|n| n.ends_with("_total"));
            if counter {
                // The parent is the range, and the range's parent rate, irate or increase.
                let agg = parents.len() >= 2
                    && matches!(parents[parents.len() - 1], Expr::MatrixSelector(_))
                    && matches!(parents[parents.len() - 2], Expr::Call(c)
                        if ["rate", "irate", "increase"].contains(&c.func.name));
                f.check(agg, || {
                    format!("{at}: counter {vs} is not aggregated with rate, irate or increase")
                });
            }
        }
        _ => {}
    }
}

#[test]
fn every_query_reads_only_exported_metrics() {
    let mut f = Findings::default();
    let mut names = BTreeSet::new();
    for d in dashboards() {
        let vars = d.variables();
        let selectors = vars
            .iter()
            .filter_map(|v| Dashboard::variable_selector(v))
            .collect::<Vec<_>>();
        let exprs = d
            .queries()
            .into_iter()
            .map(|q| (format!("panel {:?}", q.panel), q.expr))
            .chain(selectors.into_iter().map(|s| ("a variable".to_string(), s)));
        for (what, e) in exprs {
            let expanded = expand(
                &e,
                &vars,
                Expansion::Live {
                    rate_interval: "1m",
                },
            );
            match parse(&expanded) {
                Ok(expr) => {
                    let unknown = gpulse_dashboards::unknown_metrics(&expr, &BTreeSet::new());
                    f.check(unknown.is_empty(), || {
                        format!(
                            "{} {what}: reads {unknown:?}, which the collector does not export",
                            d.file
                        )
                    });
                    names.extend(gpulse_dashboards::metric_names(&expr));
                }
                Err(err) => f.0.push(format!("{} {what}: {err}", d.file)),
            }
        }
    }
    f.assert_none();
    // The dashboards between them show the collector's and the agents' own health.
    for needed in [
        "gpulse_collector_rejected_messages_total",
        "gpulse_agent_buffered_batches",
        "gpulse_gpu_throttle_active",
        "gpulse_gpu_nvlink_errors_total",
        "gpulse_gpu_cost_dollars_total",
    ] {
        assert!(names.contains(needed), "no dashboard shows {needed}");
    }
}

/// Whether `vs` picks GPUs by the `namespace` and `pod` variables.
fn filters_by_allocation(vs: &VectorSelector) -> bool {
    ["namespace", "pod"].iter().all(|label| {
        vs.matchers.matchers.iter().any(|m| {
            m.name == *label && matches!(m.op, MatchOp::Re(_)) && m.value == format!("${label}")
        })
    })
}

/// Whether `b` keeps only the left-hand GPUs its right-hand side picks by namespace and
/// pod, matching one GPU on (instance, host, uuid).
fn is_allocation_filter(b: &BinaryExpr) -> bool {
    let on_gpu = b
        .modifier
        .as_ref()
        .and_then(|m| m.matching.as_ref())
        .is_some_and(|m| {
            matches!(m, LabelModifier::Include(_))
                && ["instance", "host", "uuid"]
                    .iter()
                    .all(|l| m.labels().labels.iter().any(|have| have == l))
        });
    let mut picks = false;
    walk(&b.rhs, &mut |e, _| {
        if let Expr::VectorSelector(vs) = e {
            picks |= filters_by_allocation(vs);
        }
    });
    on_gpu && picks
}

/// A dashboard with a `gpu` variable has `namespace` and `pod` variables over the
/// allocation series, and every per-GPU selector in it is either such a filter or sits
/// on the left of one: picking a namespace must narrow every panel, never only some.
#[test]
fn every_gpu_panel_follows_the_namespace_and_pod_variables() {
    let mut f = Findings::default();
    let mut filtered = 0;
    for d in dashboards() {
        let vars = d.variables();
        if !vars.iter().any(|v| v["name"] == "gpu") {
            continue;
        }
        for name in ["namespace", "pod"] {
            let v = vars.iter().find(|v| v["name"] == name);
            f.check(v.is_some(), || {
                format!("{}: lacks the {name} variable", d.file)
            });
            let Some(v) = v else { continue };
            let selector = Dashboard::variable_selector(v).unwrap_or_default();
            f.check(selector.starts_with("gpulse_gpu_allocation_info{"), || {
                format!("{}: {name} should list gpulse_gpu_allocation_info", d.file)
            });
            // All must match the empty namespace of GPUs nobody holds and of hosts
            // whose agent knows no allocation.
            f.check(v["allValue"] == ".*" && v["multi"] == true, || {
                format!("{}: {name} should be multi-select with allValue .*", d.file)
            });
        }
        for q in d.queries() {
            let at = format!("{} panel {:?}: {}", q.dashboard, q.panel, q.expr);
            let Ok(expr) = parse(&expand(&q.expr, &vars, Expansion::Lint)) else {
                continue; // target_rules reports it
            };
            walk(&expr, &mut |node, parents| {
                let Expr::VectorSelector(vs) = node else {
                    return;
                };
                let per_gpu = vs.matchers.matchers.iter().any(|m| m.name == "gpu");
                if !per_gpu || filters_by_allocation(vs) {
                    return;
                }
                let on_the_left = parents.iter().enumerate().any(|(i, p)| match p {
                    Expr::Binary(b) if is_allocation_filter(b) => {
                        let child: &Expr = parents.get(i + 1).copied().unwrap_or(node);
                        std::ptr::eq(child, b.lhs.as_ref())
                    }
                    _ => false,
                });
                filtered += usize::from(on_the_left);
                f.check(on_the_left, || {
                    format!("{at}: {vs} is not filtered by namespace and pod")
                });
            });
        }
    }
    f.assert_none();
    assert!(filtered > 40, "only {filtered} filtered selectors");
}
