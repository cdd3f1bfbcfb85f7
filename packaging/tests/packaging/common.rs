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
/// The example scrape configuration.
pub const SCRAPE_EXAMPLE: &str = "prometheus.example.yml";

/// The `metric_relabel_configs` of the example's `job` scrape job.
pub fn example_metric_relabelling(job: &str) -> serde_yaml::Value {
    let config = yaml(&prometheus_dir().join(SCRAPE_EXAMPLE));
    config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .find(|j| j["job_name"] == job)
        .unwrap_or_else(|| panic!("the example scrapes no job {job}"))["metric_relabel_configs"]
        .clone()
}
pub const RECORDING_RULES: &str = "gpulse-recording.yml";
pub const RULE_FILES: [&str; 2] = [ALERT_RULES, RECORDING_RULES];

/// The workspace's version: the packages, images and manifests carry it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const AGENT: &str = "gpulse-agent";
pub const COLLECTOR: &str = "gpulse-collector";
pub const BINARIES: [&str; 2] = [AGENT, COLLECTOR];

/// The profile directory the workspace's binaries were built into, found from this test
/// executable (`<target>/<profile>/deps/<test>`): CARGO_TARGET_DIR, a custom profile or
/// `--release` move both together. `env!("CARGO_BIN_EXE_...")` names only the binaries
/// of this crate, not the agent's and collector's.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe
        .parent()
        .expect("the test executable sits in a directory");
    assert_eq!(
        deps.file_name().and_then(|n| n.to_str()),
        Some("deps"),
        "{} is not in <target>/<profile>/deps: cannot find the workspace's binaries",
        exe.display()
    );
    deps.parent()
        .expect("deps/ sits in the profile directory")
        .to_path_buf()
}

/// The cargo profile of [`profile_dir`]: its directory is named after it, except `dev`'s.
pub fn profile_name() -> String {
    let dir = profile_dir();
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => panic!("{} has no name", dir.display()),
    }
}

/// A binary of the workspace built with this test run. `cargo test --workspace` (what
/// scripts/test.sh runs) builds them; `cargo test -p gpulse-packaging` alone does not.
pub fn built_binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: these checks package and run the workspace's binaries. \
         Run the whole suite (scripts/test.sh, or cargo test --workspace), or build them \
         first: cargo build -p gpulse-agent -p gpulse-collector",
        path.display()
    );
    path
}

pub fn packaging_dir(sub: &str) -> PathBuf {
    root().join("packaging").join(sub)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A package's `[package.metadata.deb]` table.
pub fn deb_metadata(package: &str) -> toml::Table {
    let dir = package.strip_prefix("gpulse-").expect("a gpulse package");
    let manifest: toml::Table = toml::from_str(&read(&root().join(dir).join("Cargo.toml")))
        .unwrap_or_else(|e| panic!("{dir}/Cargo.toml: {e}"));
    manifest["package"]["metadata"]["deb"]
        .as_table()
        .unwrap_or_else(|| panic!("{dir}/Cargo.toml has no [package.metadata.deb]"))
        .clone()
}

/// Where a package's asset lands, by the start of its source path, e.g. the binary
/// ("target/release/gpulse-agent") or the example config ("../packaging/config/").
pub fn deb_asset_dest(package: &str, source_prefix: &str) -> String {
    let meta = deb_metadata(package);
    let assets = meta["assets"].as_array().expect("assets listed");
    let found = assets
        .iter()
        .filter_map(|a| a.as_array())
        .find(|a| a[0].as_str().is_some_and(|s| s.starts_with(source_prefix)))
        .unwrap_or_else(|| panic!("{package}: no asset from {source_prefix}"));
    let (source, dest) = (found[0].as_str().unwrap(), found[1].as_str().unwrap());
    let file = Path::new(source).file_name().unwrap().to_str().unwrap();
    if dest.ends_with('/') {
        format!("/{dest}{file}")
    } else {
        format!("/{dest}")
    }
}
