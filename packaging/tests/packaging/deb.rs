//! The .deb packages: cargo-deb builds them from the binaries this test run built,
//! dpkg installs them, and what landed is checked, run, then removed and purged.
//!
//! The packages are made from the debug binaries (`cargo deb --no-build --profile dev`),
//! so the suite needs no release build: cargo-deb strips them, which leaves a package
//! of the same shape as a release one. (cargo-deb 3 warns that it may refuse the dev
//! profile one day; scripts/install-test-deps.sh installs cargo-deb 3.) `--fast`
//! compresses less, in a fraction of the time.
//!
//! This installs into the machine's /usr, /etc and dpkg database, so it needs root (CI
//! runs the suite as root) and refuses to run where a gpulse package is already
//! installed. It purges both packages however it ends. The `gpulse` system user the
//! postinst creates stays, as Debian leaves system users on purge.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{
    BINARIES, VERSION, built_binary, deb_asset_dest, packaging_dir, profile_dir, profile_name,
    read, root, tool, tool_ok,
};

/// How long to wait for another dpkg or apt on this machine to let go of dpkg's lock.
const DPKG_LOCK_WAIT: Duration = Duration::from_secs(120);

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs dpkg, waiting while another package manager holds its lock.
fn dpkg(args: &[&str]) -> Output {
    let start = Instant::now();
    loop {
        let out = tool("dpkg", args, Path::new("/"));
        let busy = !out.status.success() && text(&out).contains("lock");
        if !busy || start.elapsed() > DPKG_LOCK_WAIT {
            return out;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn dpkg_ok(args: &[&str]) -> String {
    let out = dpkg(args);
    assert!(
        out.status.success(),
        "dpkg {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        text(&out)
    );
    text(&out)
}

/// dpkg's status of a package, or None when dpkg knows nothing of it.
fn status(package: &str) -> Option<String> {
    let out = tool(
        "dpkg-query",
        &["-W", "-f=${Status}", package],
        Path::new("/"),
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty() && s != "unknown ok not-installed")
}

/// Purges both packages when the test ends, whichever way.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let mut args = vec!["--purge"];
        args.extend(BINARIES);
        let _ = dpkg(&args);
    }
}

/// Builds one package from the binaries already built; returns the .deb's path.
fn cargo_deb(package: &str, out: &Path) -> PathBuf {
    // The target directory is the one these binaries are in (CARGO_TARGET_DIR may point
    // anywhere); cargo-deb maps its target/release/ asset paths onto it and the profile.
    let target_dir = profile_dir()
        .parent()
        .expect("the profile directory sits in the target directory")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let profile = profile_name();
    let result = Command::new(&cargo)
        .args([
            "deb",
            "--no-build",
            "--fast",
            "--profile",
            &profile,
            "-p",
            package,
            "-o",
        ])
        .arg(out)
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo} deb: {e}"));
    assert!(
        result.status.success(),
        "cargo deb -p {package} failed ({}); scripts/install-test-deps.sh installs \
         cargo-deb:\n{}",
        result.status,
        text(&result)
    );
    // <package>_<version>-<revision>_<architecture>.deb
    let prefix = format!("{package}_{VERSION}-1_");
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .unwrap_or_else(|| panic!("no {prefix}*.deb in {}:\n{}", out.display(), text(&result)))
}

/// What one package must hold, from its Cargo.toml metadata.
struct Expected {
    package: &'static str,
    binary: String,
    unit: String,
    conffile: String,
    unit_source: PathBuf,
    conffile_source: PathBuf,
}

impl Expected {
    fn of(package: &'static str) -> Expected {
        let config = package.strip_prefix("gpulse-").unwrap();
        Expected {
            package,
            binary: deb_asset_dest(package, "target/release/"),
            unit: format!("/usr/lib/systemd/system/{package}.service"),
            conffile: deb_asset_dest(package, "../packaging/config/"),
            unit_source: packaging_dir("systemd").join(format!("{package}.service")),
            conffile_source: packaging_dir("config").join(format!("{config}.example.toml")),
        }
    }
}

/// The package's control data and file list, before anything is installed.
fn check_archive(deb: &Path, e: &Expected) {
    let deb_arg = deb.display().to_string();
    let field = |name: &str| {
        tool_ok("dpkg-deb", &["--field", &deb_arg, name], Path::new("/"))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), e.package);
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    assert_eq!(field("Section"), "net");
    assert_eq!(field("Priority"), "optional");
    let depends = field("Depends");
    assert!(
        depends.contains("libc6"),
        "{}: Depends: {depends}",
        e.package
    );
    assert!(
        depends.contains("passwd"),
        "{}: useradd: {depends}",
        e.package
    );
    let description = field("Description");
    assert!(
        description.lines().count() > 3,
        "{}: an extended description: {description}",
        e.package
    );
    let conffiles = tool_ok(
        "dpkg-deb",
        &["--info", &deb_arg, "conffiles"],
        Path::new("/"),
    );
    assert_eq!(conffiles.trim(), e.conffile, "{}: conffiles", e.package);
    let postinst = tool_ok(
        "dpkg-deb",
        &["--info", &deb_arg, "postinst"],
        Path::new("/"),
    );
    assert!(postinst.contains("useradd --system"), "{postinst}");
    // Not started by the package (only restarted on upgrade, when it runs): the
    // configuration comes first. That it is not enabled is checked once installed.
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
}

/// Installed: files in place and equal to the sources, the binary runs.
fn check_installed(e: &Expected) {
    assert_eq!(
        status(e.package).as_deref(),
        Some("install ok installed"),
        "{}",
        e.package
    );
    let listed = dpkg_ok(&["-L", e.package]);
    let listed: Vec<&str> = listed.lines().collect();
    for path in [&e.binary, &e.unit, &e.conffile] {
        assert!(
            listed.contains(&path.as_str()),
            "{}: dpkg -L lacks {path}",
            e.package
        );
        assert!(Path::new(path).is_file(), "{path} is not on disk");
    }
    let wants = format!(
        "/etc/systemd/system/multi-user.target.wants/{}.service",
        e.package
    );
    assert!(
        std::fs::symlink_metadata(&wants).is_err(),
        "{wants}: the package enabled the service; enabling is the operator's step"
    );
    let version = tool_ok(&e.binary, &["--version"], Path::new("/"));
    // "<package> <version> (revision <git revision or unknown>, built <date>)".
    let expected = format!("{} {VERSION} (revision ", e.package);
    assert!(
        version.trim().starts_with(&expected) && version.contains(", built "),
        "{}: {version}",
        e.package
    );
    let mode = std::fs::metadata(&e.binary).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755, "{}", e.binary);
    assert_eq!(read(Path::new(&e.unit)), read(&e.unit_source), "{}", e.unit);
    assert_eq!(
        read(Path::new(&e.conffile)),
        read(&e.conffile_source),
        "{}",
        e.conffile
    );
    // Packaged binaries are stripped: a small fraction of the debug build's size.
    let built = std::fs::metadata(built_binary(e.package)).unwrap().len();
    let installed = std::fs::metadata(&e.binary).unwrap().len();
    assert!(
        installed < built / 2,
        "{} not stripped: {installed} of {built} bytes",
        e.binary
    );
}

#[test]
fn debs_build_install_remove_and_purge() {
    let start = Instant::now();
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid());
    assert_eq!(
        uid.ok(),
        Some(0),
        "this test installs the .deb packages with dpkg, which needs root: run the suite \
         as root (CI does), e.g. sudo scripts/test.sh"
    );
    for package in BINARIES {
        assert_eq!(
            status(package),
            None,
            "{package} is already known to dpkg on this machine; this test installs and \
             purges its own build, so it will not touch it. Remove it first \
             (dpkg --purge {package}) or run the suite elsewhere"
        );
    }
    let expected = BINARIES.map(Expected::of);
    let out = tempfile::tempdir().unwrap();
    let debs: Vec<PathBuf> = BINARIES.iter().map(|p| cargo_deb(p, out.path())).collect();
    let built = start.elapsed();
    for (deb, e) in debs.iter().zip(&expected) {
        check_archive(deb, e);
    }

    let _purge = Purge;
    let mut install = vec!["--install".to_string()];
    install.extend(debs.iter().map(|d| d.display().to_string()));
    let install: Vec<&str> = install.iter().map(String::as_str).collect();
    dpkg_ok(&install);
    for e in &expected {
        check_installed(e);
    }
    let user = tool_ok("getent", &["passwd", "gpulse"], Path::new("/"));
    assert!(user.trim_end().ends_with(":/usr/sbin/nologin"), "{user}");
    // In place, ExecStart's binary exists: systemd verifies the installed units as they are.
    let units: Vec<PathBuf> = expected.iter().map(|e| PathBuf::from(&e.unit)).collect();
    crate::systemd::verify(&units).unwrap_or_else(|e| panic!("installed units: {e}"));

    let mut remove = vec!["--remove"];
    remove.extend(BINARIES);
    dpkg_ok(&remove);
    for e in &expected {
        assert_eq!(
            status(e.package).as_deref(),
            Some("deinstall ok config-files")
        );
        assert!(
            !Path::new(&e.binary).exists(),
            "{} left after removal",
            e.binary
        );
        assert!(
            !Path::new(&e.unit).exists(),
            "{} left after removal",
            e.unit
        );
        assert!(
            Path::new(&e.conffile).is_file(),
            "removal keeps {}",
            e.conffile
        );
    }
    let mut purge = vec!["--purge"];
    purge.extend(BINARIES);
    dpkg_ok(&purge);
    for e in &expected {
        assert_eq!(status(e.package), None, "{} after purge", e.package);
        assert!(
            !Path::new(&e.conffile).exists(),
            "purge leaves {}",
            e.conffile
        );
    }
    eprintln!(
        "packages built in {:.1}s; built, installed, checked, removed and purged in {:.1}s",
        built.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}
