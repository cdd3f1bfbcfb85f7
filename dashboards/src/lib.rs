//! gpulse-dashboards: the shipped Grafana dashboards (`dashboards/*.json`) as data,
//! and the PromQL checks that dashboards and alert rules share.
//!
//! It loads the dashboards, lists their panels and queries, substitutes Grafana's
//! variables (the way grafana/dashboard-linter does for linting, or with each
//! variable's "All" value for a live Prometheus), parses queries with `promql-parser`
//! and names the metrics an expression reads, checked against what the collector
//! exports ([`gpulse_exposition::names`]).
//!
//! It is not a Grafana client and is never published: only the tests use it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr};
use serde_json::Value;

/// Metrics that rules and dashboards use before the collector exports them: they are
/// exported by the cost ledger. Every use of them anywhere in the checks goes through
/// this list, so that once they exist it can be emptied and everything is checked.
pub const PENDING_COST_METRICS: [&str; 0] = [];

/// Series Prometheus itself makes for every scrape target.
pub const PROMETHEUS_SERIES: [&str; 1] = ["up"];

/// The range put in place of `$__rate_interval` when linting, so a parsed range equal
/// to it proves the query used the variable. grafana/dashboard-linter uses
/// 8869990787ms, which promql-parser's millisecond durations cannot hold; any
/// duration no dashboard writes by hand does the same job.
pub const LINT_RATE_INTERVAL: Duration = Duration::from_secs(8_869_990);

/// The folder holding the dashboards.
pub fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// One dashboard file.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub file: String,
    pub json: Value,
}

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct Query {
    pub dashboard: String,
    pub panel: String,
    pub expr: String,
}

/// Every `*.json` in the dashboards folder, sorted by file name. Panics with the file
/// name when one does not parse: a broken dashboard fails the tests.
pub fn load_all() -> Vec<Dashboard> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .expect("the dashboards folder is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            Dashboard {
                file: path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                json,
            }
        })
        .collect()
}

impl Dashboard {
    pub fn title(&self) -> &str {
        self.json["title"].as_str().unwrap_or("")
    }

    /// Every panel, those nested in rows included.
    pub fn panels(&self) -> Vec<&Value> {
        fn collect<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for p in panels.as_array().into_iter().flatten() {
                out.push(p);
                collect(&p["panels"], out);
            }
        }
        let mut out = Vec::new();
        collect(&self.json["panels"], &mut out);
        out
    }

    /// The template variables.
    pub fn variables(&self) -> Vec<&Value> {
        self.json["templating"]["list"]
            .as_array()
            .map(|l| l.iter().collect())
            .unwrap_or_default()
    }

    /// Every panel query, in panel order.
    pub fn queries(&self) -> Vec<Query> {
        self.panels()
            .into_iter()
            .flat_map(|p| {
                let panel = p["title"].as_str().unwrap_or("").to_string();
                p["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t["expr"].as_str())
                    .map(move |expr| Query {
                        dashboard: self.file.clone(),
                        panel: panel.clone(),
                        expr: expr.to_string(),
                    })
            })
            .collect()
    }

    /// A variable's query as Grafana runs it: `label_values(<selector>, label)` gives
    /// the selector.
    pub fn variable_selector(var: &Value) -> Option<String> {
        let q = match &var["query"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o.get("query")?.as_str()?.to_string(),
            _ => return None,
        };
        let inner = q.strip_prefix("label_values(")?.strip_suffix(')')?;
        // The selector ends at the last top-level comma: the label name follows it.
        let cut = inner.rfind(',')?;
        Some(inner[..cut].trim().to_string())
    }
}

/// How Grafana variables are replaced before a query is parsed.
#[derive(Debug, Clone, Copy)]
pub enum Expansion<'a> {
    /// As grafana/dashboard-linter does: outside double quotes only, variables become
    /// sample values (`$__rate_interval` a recognisable duration, others their name),
    /// while `job=~"$job"` keeps the literal `$job` for the matcher checks.
    Lint,
    /// As Grafana does with every variable at "All": each one, quoted or not, becomes
    /// its `allValue`, and `$__rate_interval` the given range (e.g. "10s").
    Live { rate_interval: &'a str },
}

/// Replaces Grafana variables in `expr`.
pub fn expand(expr: &str, vars: &[&Value], how: Expansion<'_>) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut in_quotes = false;
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == '"' {
            in_quotes = !in_quotes;
            out.push(c);
            i += 1;
            continue;
        }
        if c != '$' || (in_quotes && matches!(how, Expansion::Lint)) {
            out.push(c);
            i += 1;
            continue;
        }
        // $name or ${name}
        let (name, next) = if bytes.get(i + 1) == Some(&'{') {
            let end = bytes[i + 2..]
                .iter()
                .position(|c| *c == '}')
                .map_or(bytes.len(), |p| i + 2 + p);
            (bytes[i + 2..end].iter().collect::<String>(), end + 1)
        } else {
            let end = bytes[i + 1..]
                .iter()
                .position(|c| !(c.is_alphanumeric() || *c == '_'))
                .map_or(bytes.len(), |p| i + 1 + p);
            (bytes[i + 1..end].iter().collect::<String>(), end)
        };
        out.push_str(&value_of(&name, vars, how));
        i = next;
    }
    out
}

fn value_of(name: &str, vars: &[&Value], how: Expansion<'_>) -> String {
    match how {
        Expansion::Lint => match name {
            "__rate_interval" => format!("{}s", LINT_RATE_INTERVAL.as_secs()),
            "__interval" => "4867856s".into(),
            "__range" => "6069770s".into(),
            other => other.to_string(),
        },
        Expansion::Live { rate_interval } => match name {
            "__rate_interval" | "__interval" => rate_interval.to_string(),
            "__range" => "1h".into(),
            other => vars
                .iter()
                .find(|v| v["name"] == other)
                .and_then(|v| v["allValue"].as_str())
                .unwrap_or(".*")
                .to_string(),
        },
    }
}

/// Parses a PromQL expression, saying which one failed.
pub fn parse(expr: &str) -> Result<Expr, String> {
    parser::parse(expr).map_err(|e| format!("{expr:?} is not valid PromQL: {e}"))
}

/// Calls `f` on every node of `expr` with the chain of its ancestors, outermost first.
pub fn walk<'a>(expr: &'a Expr, f: &mut dyn FnMut(&'a Expr, &[&'a Expr])) {
    fn go<'a>(e: &'a Expr, parents: &mut Vec<&'a Expr>, f: &mut dyn FnMut(&'a Expr, &[&'a Expr])) {
        f(e, parents);
        parents.push(e);
        match e {
            Expr::Aggregate(a) => {
                go(&a.expr, parents, f);
                if let Some(p) = &a.param {
                    go(p, parents, f);
                }
            }
            Expr::Unary(u) => go(&u.expr, parents, f),
            Expr::Binary(b) => {
                go(&b.lhs, parents, f);
                go(&b.rhs, parents, f);
            }
            Expr::Paren(p) => go(&p.expr, parents, f),
            Expr::Subquery(s) => go(&s.expr, parents, f),
            Expr::Call(c) => {
                for a in &c.args.args {
                    go(a, parents, f);
                }
            }
            Expr::MatrixSelector(_)
            | Expr::VectorSelector(_)
            | Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::Extension(_) => {}
        }
        parents.pop();
    }
    go(expr, &mut Vec::new(), f)
}

/// The metric names an expression reads.
pub fn metric_names(expr: &Expr) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    walk(expr, &mut |e, _| {
        let vs = match e {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return,
        };
        if let Some(n) = &vs.name {
            names.insert(n.clone());
        }
        for m in &vs.matchers.matchers {
            if m.name == "__name__" && m.op == MatchOp::Equal {
                names.insert(m.value.clone());
            }
        }
    });
    names
}

/// Every metric name the collector, the agent and the DCGM view export.
pub fn exported() -> BTreeSet<&'static str> {
    use gpulse_exposition::names;
    names::FLEET
        .iter()
        .chain(names::COLLECTOR.iter())
        .chain(names::AGENT.iter())
        .chain(names::COST.iter())
        .map(|d| d.name)
        .chain(gpulse_exposition::dcgm::defs().iter().map(|d| d.name))
        .collect()
}

/// Names in `expr` that nothing exports: not gpulse's, not Prometheus's own, not in
/// `also` (recording rules, say) and not in [`PENDING_COST_METRICS`].
pub fn unknown_metrics(expr: &Expr, also: &BTreeSet<String>) -> Vec<String> {
    let exported = exported();
    metric_names(expr)
        .into_iter()
        .filter(|n| {
            !exported.contains(n.as_str())
                && !PROMETHEUS_SERIES.contains(&n.as_str())
                && !PENDING_COST_METRICS.contains(&n.as_str())
                && !also.contains(n)
        })
        .collect()
}

/// Whether an expression reads a metric the collector does not export yet.
pub fn uses_pending(expr: &Expr) -> bool {
    metric_names(expr)
        .iter()
        .any(|n| PENDING_COST_METRICS.contains(&n.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_expansion_keeps_quoted_variables_and_marks_the_rate_interval() {
        let e = expand(
            "rate(x{job=~\"$job\"}[$__rate_interval])",
            &[],
            Expansion::Lint,
        );
        assert_eq!(e, "rate(x{job=~\"$job\"}[8869990s])");
    }

    #[test]
    fn live_expansion_uses_all_values() {
        let var = serde_json::json!({"name": "job", "allValue": ".+"});
        let e = expand(
            "rate(x{job=~\"$job\",gpu=~\"${gpu}\"}[$__rate_interval])",
            &[&var],
            Expansion::Live {
                rate_interval: "10s",
            },
        );
        assert_eq!(e, "rate(x{job=~\".+\",gpu=~\".*\"}[10s])");
    }

    #[test]
    fn names_come_from_selectors_and_name_matchers() {
        let e = parse("sum(rate(a_total[5m])) / on(x) group_left b * {__name__=\"c\"}").unwrap();
        let names: Vec<String> = metric_names(&e).into_iter().collect();
        assert_eq!(names, ["a_total", "b", "c"]);
        assert_eq!(unknown_metrics(&e, &BTreeSet::new()), ["a_total", "b", "c"]);
        let known = parse("gpulse_gpu_lost + up + gpulse_gpu_priced").unwrap();
        assert!(unknown_metrics(&known, &BTreeSet::new()).is_empty());
        // The cost series are exported now: nothing is pending.
        assert!(!uses_pending(&known));
    }
}
