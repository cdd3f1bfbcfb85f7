//! The systemd units: their hardening, read from the files; `systemd-analyze verify`
//! and `systemd-analyze security` on them; and their agreement with the .deb's layout.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::{
    AGENT, BINARIES, COLLECTOR, built_binary, deb_asset_dest, packaging_dir, read, tool,
};

/// Highest `systemd-analyze security` exposure accepted, in tenths (its --threshold
/// scale: 0 is fully locked down, 100 is fully exposed). Today the agent rates 1.6 and
/// the collector 1.1; the agent's device access and full /proc cost it the rest.
const MAX_EXPOSURE: [(&str, u32); 2] = [(AGENT, 20), (COLLECTOR, 15)];

/// One unit file, as (section, key, value) in file order.
struct Unit {
    name: String,
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load(binary: &str) -> Unit {
        Unit::parse(binary, &read(&unit_path(binary)))
    }

    fn parse(binary: &str, text: &str) -> Unit {
        let mut section = String::new();
        let mut entries = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{binary}.service: not key=value: {line}"));
            assert!(
                !value.ends_with('\\'),
                "{binary}.service: keep directives on one line"
            );
            entries.push((section.clone(), key.trim().into(), value.trim().into()));
        }
        Unit {
            name: format!("{binary}.service"),
            entries,
        }
    }

    /// Every value a [Service] key has; an empty assignment resets the list, as in systemd.
    fn all(&self, key: &str) -> Vec<&str> {
        let mut values = Vec::new();
        for (section, k, v) in &self.entries {
            if section == "Service" && k == key {
                if v.is_empty() {
                    values.clear();
                }
                values.push(v.as_str());
            }
        }
        values
    }

    /// The one value of a [Service] key, failing when it is unset or set twice.
    fn one(&self, key: &str) -> &str {
        match self.all(key)[..] {
            [v] => v,
            [] => panic!("{}: {key}= is not set", self.name),
            _ => panic!("{}: {key}= is set more than once", self.name),
        }
    }

    fn section_value(&self, section: &str, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
    }
}

fn unit_path(binary: &str) -> PathBuf {
    packaging_dir("systemd").join(format!("{binary}.service"))
}

/// The hardening both units carry (systemd.exec(5)).
const HARDENING: [(&str, &str); 21] = [
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateMounts", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("RemoveIPC", "yes"),
    ("SystemCallArchitectures", "native"),
    ("Restart", "on-failure"),
];

#[test]
fn both_units_are_hardened() {
    for binary in BINARIES {
        let unit = Unit::load(binary);
        let name = &unit.name;
        for (key, value) in HARDENING {
            assert_eq!(unit.one(key), value, "{name}: {key}=");
        }
        let families: BTreeSet<&str> = unit.one("RestrictAddressFamilies").split(' ').collect();
        assert_eq!(
            families,
            BTreeSet::from(["AF_UNIX", "AF_INET", "AF_INET6"]),
            "{name}: RestrictAddressFamilies="
        );
        assert_eq!(
            unit.all("SystemCallFilter"),
            ["@system-service", "~@privileged @resources"],
            "{name}: SystemCallFilter="
        );
        assert_eq!(unit.one("SystemCallErrorNumber"), "EPERM", "{name}");
        assert_eq!(unit.one("UMask"), "0077", "{name}");
        // A user of its own, created by the package's postinst.
        assert_eq!(unit.one("User"), "gpulse", "{name}");
        assert_eq!(unit.one("Group"), "gpulse", "{name}");
        assert!(unit.all("DynamicUser").is_empty(), "{name}");
        assert_eq!(
            unit.section_value("Install", "WantedBy"),
            Some("multi-user.target"),
            "{name}"
        );
        for forbidden in ["PermissionsStartOnly", "PrivilegedExecStart"] {
            assert!(unit.all(forbidden).is_empty(), "{name}: {forbidden}");
        }
    }
}

/// What the agent needs from the host: the GPUs, other processes' /proc, DMI.
#[test]
fn the_agent_reaches_the_gpus_and_the_hosts_processes() {
    let unit = Unit::load(AGENT);
    assert_eq!(unit.one("DevicePolicy"), "closed");
    let allowed: BTreeSet<&str> = unit.all("DeviceAllow").into_iter().collect();
    assert_eq!(
        allowed,
        BTreeSet::from([
            "/dev/nvidiactl rw",
            "char-nvidia-frontend rw",
            "char-nvidia-caps r"
        ])
    );
    assert_eq!(unit.one("SupplementaryGroups"), "video");
    // Hiding devices or other processes would blind it.
    for (key, breaks) in [
        ("PrivateDevices", "/dev/nvidia*"),
        ("ProtectProc", "workload attribution"),
        ("ProcSubset", "the boot id and host facts"),
        ("PrivateUsers", "reading other users' processes"),
    ] {
        assert!(
            unit.all(key).is_empty(),
            "{AGENT}: {key}= would break {breaks}"
        );
    }
    // /sys stays readable under ProtectKernelTunables; nothing makes it inaccessible.
    for key in ["InaccessiblePaths", "TemporaryFileSystem"] {
        assert!(unit.all(key).is_empty(), "{AGENT}: {key}=");
    }
    assert!(
        unit.section_value("Unit", "After")
            .is_some_and(|a| a.contains("nvidia-persistenced.service")),
        "start after the driver's persistence daemon"
    );
}

#[test]
fn the_collector_keeps_its_ledger_in_its_state_directory() {
    let unit = Unit::load(COLLECTOR);
    assert_eq!(unit.one("StateDirectory"), "gpulse-collector");
    assert_eq!(unit.one("StateDirectoryMode"), "0700");
    assert_eq!(unit.one("WorkingDirectory"), "/var/lib/gpulse-collector");
    // The default data_dir is relative, so it lands in the working directory: the one
    // writable place under ProtectSystem=strict.
    let default = gpulse_collector::config::CollectorConfig::default().data_dir;
    assert!(default.is_relative(), "{}", default.display());
    for (key, value) in [
        ("PrivateDevices", "yes"),
        ("PrivateUsers", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
    ] {
        assert_eq!(unit.one(key), value, "{COLLECTOR}: {key}=");
    }
    let nofile: u64 = unit.one("LimitNOFILE").parse().unwrap();
    assert!(nofile >= 65536, "one connection per agent: {nofile}");
}

/// The agent may write one place, its state directory, where the documented spool_dir
/// points; everything else stays read-only.
#[test]
fn the_agent_can_keep_its_spool_in_its_state_directory() {
    let unit = Unit::load(AGENT);
    assert_eq!(unit.one("StateDirectory"), "gpulse-agent");
    assert_eq!(unit.one("StateDirectoryMode"), "0700");
    assert_eq!(unit.one("ProtectSystem"), "strict");
    let text = std::fs::read_to_string(unit_path(AGENT)).unwrap();
    assert!(text.contains("spool_dir = \"/var/lib/gpulse-agent/spool\""));
    assert!(
        gpulse_agent::config::AgentConfig::default()
            .spool_dir
            .is_none()
    );
}

/// ExecStart runs the binary where the .deb puts it, with the config the .deb installs.
#[test]
fn the_units_run_what_the_packages_install() {
    for binary in BINARIES {
        let unit = Unit::load(binary);
        let bin = deb_asset_dest(binary, "target/release/");
        let config = deb_asset_dest(binary, "../packaging/config/");
        assert_eq!(
            unit.one("ExecStart"),
            format!("{bin} --config {config}"),
            "{binary}"
        );
        assert_eq!(
            unit.one("Type"),
            "exec",
            "{binary}: a failed exec fails the start"
        );
    }
}

/// Copies of the units whose ExecStart runs the binaries this test run built:
/// `systemd-analyze verify` requires ExecStart's program to exist, and /usr/bin has
/// none before the .deb is installed.
fn units_for_this_build(dir: &Path) -> Vec<PathBuf> {
    BINARIES
        .iter()
        .map(|binary| {
            let installed = deb_asset_dest(binary, "target/release/");
            let built = built_binary(binary);
            let text = read(&unit_path(binary));
            let line = format!("ExecStart={installed} ");
            assert!(text.contains(&line), "{binary}: {line}");
            let text = text.replace(&line, &format!("ExecStart={} ", built.display()));
            let path = dir.join(format!("{binary}.service"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// `systemd-analyze verify` on unit files; Err with its report when it finds anything.
/// It exits 0 on unknown keys and bad values, which it only prints, so any output at
/// all is a finding. It needs no running systemd: in a container without one (systemd
/// 252, Debian 12) it prints nothing for these units, so nothing is filtered out. An
/// environment that adds messages of its own gets those exact lines filtered here,
/// never the whole output.
pub fn verify(units: &[PathBuf]) -> Result<(), String> {
    let mut args = vec!["verify".to_string(), "--man=no".to_string()];
    args.extend(units.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tool("systemd-analyze", &args, &std::env::temp_dir());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("systemd-analyze verify ({}):\n{text}", out.status))
    }
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let dir = tempfile::tempdir().unwrap();
    let units = units_for_this_build(dir.path());
    verify(&units).unwrap_or_else(|e| panic!("{e}"));

    // The check sees a mistake: a misspelt directive is only a warning to systemd.
    let broken = dir.path().join("broken").join(format!("{AGENT}.service"));
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    let text = read(&units[0]).replace("ProtectSystem=strict", "ProtectSytem=strict");
    std::fs::write(&broken, text).unwrap();
    let err = verify(std::slice::from_ref(&broken)).expect_err("a misspelt directive");
    assert!(err.contains("ProtectSytem"), "{err}");
}

#[test]
fn systemd_analyze_security_rates_the_units_ok() {
    let dir = tempfile::tempdir().unwrap();
    let units = units_for_this_build(dir.path());
    for ((binary, threshold), unit) in MAX_EXPOSURE.iter().zip(&units) {
        assert!(unit.ends_with(format!("{binary}.service")));
        let threshold_arg = format!("--threshold={threshold}");
        let unit_arg = unit.display().to_string();
        // --offline reads the file alone (systemd 250 and later), no running manager.
        let out = tool(
            "systemd-analyze",
            &["security", "--offline=yes", &threshold_arg, &unit_arg],
            dir.path(),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let overall = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| {
                panic!(
                    "systemd-analyze security gave no rating for {binary} (it needs \
                     systemd 250 or later for --offline):\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        assert!(
            out.status.success(),
            "{binary}: exposure above {}.{}: {overall}\n{text}",
            threshold / 10,
            threshold % 10
        );
    }
}
