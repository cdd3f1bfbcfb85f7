//! Helpers shared by the packaging checks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("packaging/ sits in the workspace")
        .to_path_buf()
}

/// Runs a tool the test script installs, failing with what to do when it is missing.
pub fn tool(program: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e}; run scripts/install-test-deps.sh, which installs it")
        })
}

/// Runs a tool and requires success, showing its output otherwise.
pub fn tool_ok(program: &str, args: &[&str], dir: &Path) -> String {
    let out = tool(program, args, dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

/// Reads a YAML file of the repository.
pub fn yaml(path: &Path) -> serde_yaml::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// Every rule (alerting or recording) of a Prometheus rule file's `groups`.
pub fn rules(groups: &serde_yaml::Value) -> Vec<serde_yaml::Value> {
    groups["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .collect()
}

pub fn prometheus_dir() -> PathBuf {
    root().join("packaging/prometheus")
}

pub const ALERT_RULES: &str = "gpulse-alerts.yml";
pub const RECORDING_RULES: &str = "gpulse-recording.yml";
pub const RULE_FILES: [&str; 2] = [ALERT_RULES, RECORDING_RULES];
