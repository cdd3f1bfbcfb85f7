//! The container images' Dockerfile. No container engine runs where the suite does, so
//! the image is not built here: its structure is checked instead (stages, bases, users,
//! what is copied from the builder, ports, volume, flags), and the collector's
//! HEALTHCHECK command is run against a real collector. README.md says how to build it.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{AGENT, BINARIES, COLLECTOR, built_binary, packaging_dir, read, tool_ok};

/// The runtime images' user and group (Dockerfile `USER`; Kubernetes' runAsUser).
pub const IMAGE_UID: u32 = 10001;
const DATA_DIR: &str = "/var/lib/gpulse-collector";
/// How long the collector may take to become ready under the healthcheck.
const READY_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    name: String,
    base: String,
    body: Vec<Instruction>,
}

impl Stage {
    fn all(&self, keyword: &str) -> impl Iterator<Item = &str> {
        self.body
            .iter()
            .filter(move |i| i.keyword == keyword)
            .map(|i| i.args.as_str())
    }
}

/// The Dockerfile's stages, with continuation lines joined and comments dropped (as
/// Docker reads them: a comment line inside a continued instruction is skipped too).
fn stages() -> Vec<Stage> {
    let text = read(&packaging_dir("container").join("Dockerfile"));
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part.trim());
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
        instructions.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        });
        current.clear();
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside an instruction"
    );
    let mut stages: Vec<Stage> = Vec::new();
    for i in instructions {
        if i.keyword == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let [base, as_, name] = words[..] else {
                panic!("every stage is named: FROM {}", i.args)
            };
            assert!(as_.eq_ignore_ascii_case("AS"), "FROM {}", i.args);
            stages.push(Stage {
                name: name.to_string(),
                base: base.to_string(),
                body: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("{} before the first FROM", i.keyword))
                .body
                .push(i);
        }
    }
    stages
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

/// The stage and the stages it is built on, nearest first.
fn chain<'a>(stages: &'a [Stage], name: &str) -> Vec<&'a Stage> {
    let mut out = vec![stage(stages, name)];
    while let Some(parent) = stages.iter().find(|s| s.name == out.last().unwrap().base) {
        out.push(parent);
    }
    out
}

fn json_array(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not the JSON (exec) form: {args}: {e}"))
}

/// A binary's flags, from its --help.
fn flags(binary: &str) -> BTreeSet<String> {
    let help = tool_ok(
        built_binary(binary).to_str().unwrap(),
        &["--help"],
        Path::new("/"),
    );
    help.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(',').to_string())
        .collect()
}

#[test]
fn the_dockerfile_has_a_builder_and_one_stage_per_binary() {
    let stages = stages();
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["builder", "runtime", AGENT_STAGE, COLLECTOR_STAGE]);
    for s in &stages {
        if names.contains(&s.base.as_str()) {
            continue;
        }
        let (image, tag) = s
            .base
            .split_once(':')
            .unwrap_or_else(|| panic!("stage {}: {} has no tag", s.name, s.base));
        assert!(!image.is_empty() && !tag.is_empty(), "{}", s.base);
        assert_ne!(tag, "latest", "stage {}: pin a version, not latest", s.name);
    }
    // The builder and the runtime are the same Debian release, so the binaries find the
    // glibc they were linked against.
    let builder = stage(&stages, "builder");
    assert!(builder.base.starts_with("rust:") && builder.base.ends_with("-bookworm"));
    assert_eq!(stage(&stages, "runtime").base, "debian:bookworm-slim");

    let build = builder.all("RUN").collect::<Vec<_>>().join(" ");
    assert!(build.contains("cargo build --release --locked"), "{build}");
    for binary in BINARIES {
        assert!(
            build.contains(&format!("-p {binary}")),
            "builds {binary}: {build}"
        );
        assert!(
            build.contains(&format!("target/release/{binary}")) && build.contains("/out"),
            "copies {binary} to /out: {build}"
        );
    }
    let ignore = read(&packaging_dir("container").join("Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "/target"), "{ignore}");
}

const AGENT_STAGE: &str = "agent";
const COLLECTOR_STAGE: &str = "collector";

#[test]
fn each_image_runs_its_binary_as_an_unprivileged_user() {
    let stages = stages();
    let runtime = stage(&stages, "runtime");
    let setup = runtime.all("RUN").collect::<Vec<_>>().join(" ");
    assert!(
        setup.contains(&format!("--uid {IMAGE_UID}"))
            && setup.contains(&format!("--gid {IMAGE_UID}")),
        "the runtime creates user {IMAGE_UID}: {setup}"
    );
    for (name, binary) in [(AGENT_STAGE, AGENT), (COLLECTOR_STAGE, COLLECTOR)] {
        let chain = chain(&stages, name);
        assert_eq!(
            chain.last().unwrap().name,
            "runtime",
            "{name} builds on runtime"
        );
        // The effective USER is the last one set along the chain; numeric, so
        // Kubernetes' runAsNonRoot can check it.
        let user = chain
            .iter()
            .find_map(|s| s.all("USER").last())
            .unwrap_or_else(|| panic!("{name}: no USER: it would run as root"));
        assert_eq!(user, format!("{IMAGE_UID}:{IMAGE_UID}"), "{name}");
        let s = chain[0];
        let copies: Vec<&str> = s.all("COPY").collect();
        let [copy] = copies[..] else {
            panic!("{name}: one COPY, of its binary: {copies:?}")
        };
        let words: Vec<&str> = copy.split_whitespace().collect();
        let dest = format!("/usr/local/bin/{binary}");
        assert_eq!(
            words,
            ["--from=builder", &format!("/out/{binary}"), &dest],
            "{name}"
        );
        let entry = json_array(s.all("ENTRYPOINT").last().expect("an ENTRYPOINT"));
        assert_eq!(entry, [dest.as_str()], "{name}");
        // The other binary is not in this image.
        let other = BINARIES.iter().find(|b| **b != binary).unwrap();
        assert!(!copy.contains(other), "{name} copies {other}");
    }
}

#[test]
fn the_agent_image_asks_the_nvidia_toolkit_for_nvml_only() {
    let stages = stages();
    let env = stage(&stages, AGENT_STAGE)
        .all("ENV")
        .collect::<Vec<_>>()
        .join(" ");
    for pair in [
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=utility",
    ] {
        assert!(env.split_whitespace().any(|w| w == pair), "{pair}: {env}");
    }
}

#[test]
fn the_collector_image_exposes_its_ports_and_keeps_its_ledger_in_a_volume() {
    let stages = stages();
    let s = stage(&stages, COLLECTOR_STAGE);
    let defaults = gpulse_collector::config::CollectorConfig::default();
    let exposed: BTreeSet<u16> = s
        .all("EXPOSE")
        .flat_map(str::split_whitespace)
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([defaults.grpc_listen.port(), defaults.http_listen.port()])
    );
    let volumes: Vec<String> = s.all("VOLUME").flat_map(json_array).collect();
    assert_eq!(volumes, [DATA_DIR]);
    assert!(
        s.all("RUN")
            .any(|r| r.contains(&format!("-o {IMAGE_UID}")) && r.contains(DATA_DIR)),
        "{DATA_DIR} is created for user {IMAGE_UID} before it becomes a volume"
    );
    let cmd = json_array(s.all("CMD").last().expect("default flags"));
    let known = flags(COLLECTOR);
    for flag in cmd.iter().filter(|a| a.starts_with("--")) {
        assert!(
            known.contains(flag),
            "gpulse-collector has no {flag}: {known:?}"
        );
    }
    let pairs: Vec<(&str, &str)> = cmd
        .chunks(2)
        .map(|c| (c[0].as_str(), c.get(1).map_or("", String::as_str)))
        .collect();
    let grpc = format!("0.0.0.0:{}", defaults.grpc_listen.port());
    let http = format!("0.0.0.0:{}", defaults.http_listen.port());
    assert_eq!(
        pairs,
        [
            ("--grpc-listen", grpc.as_str()),
            ("--http-listen", http.as_str()),
            ("--data-dir", DATA_DIR)
        ]
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The collector's HEALTHCHECK command, made to ask `port` instead of the image's.
fn healthcheck(port: u16) -> Command {
    let stages = stages();
    let check = stage(&stages, COLLECTOR_STAGE)
        .all("HEALTHCHECK")
        .last()
        .expect("a HEALTHCHECK")
        .to_string();
    let (options, cmd) = check.split_once("CMD ").expect("HEALTHCHECK ... CMD [...]");
    assert!(options.contains("--timeout="), "{options}");
    let argv = json_array(cmd);
    let http = gpulse_collector::config::CollectorConfig::default()
        .http_listen
        .port();
    let target = format!("/dev/tcp/127.0.0.1/{http}");
    assert!(argv[2].contains(&target), "asks {target}: {argv:?}");
    assert!(argv[2].contains("GET /readyz"), "{argv:?}");
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..2])
        .arg(argv[2].replace(&target, &format!("/dev/tcp/127.0.0.1/{port}")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_collector_images_healthcheck_passes_once_the_collector_is_ready() {
    let http = free_port();
    let status = healthcheck(http)
        .status()
        .expect("bash runs the healthcheck");
    assert!(!status.success(), "healthy with nothing listening");

    let data = tempfile::tempdir().unwrap();
    let mut collector = Kill(
        Command::new(built_binary(COLLECTOR))
            .arg("--grpc-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{http}"))
            .arg("--data-dir")
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    loop {
        if healthcheck(http).status().unwrap().success() {
            break;
        }
        if let Ok(Some(exit)) = collector.0.try_wait() {
            panic!("the collector exited ({exit})");
        }
        assert!(
            start.elapsed() < READY_WAIT,
            "never healthy in {READY_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
