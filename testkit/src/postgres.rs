//! A throwaway PostgreSQL server for one test binary: `initdb` in a temporary
//! directory, the server on a free loopback port (its socket in that directory too),
//! `fsync=off` and small buffers, one database per test. It also serves TLS, with a
//! certificate for `localhost` from a CA of its own ([`PgServer::ca_file`]), for tests
//! of `sslmode`. Debian's `postgresql` package
//! provides the programs (scripts/install-test-deps.sh installs it).
//!
//! PostgreSQL refuses to run as root, and tests often do: then the server runs as
//! `nobody` through `setpriv` (util-linux), which needs no password. The server is
//! stopped, and its directory removed, when the test binary exits however it exits
//! (a panic, a kill): a watchdog shell waits for the test process to go, then stops the
//! server with SIGQUIT (PostgreSQL's immediate shutdown) and removes the directory.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where Debian installs the server programs, per major version.
const DEBIAN_BIN_GLOB_DIR: &str = "/usr/lib/postgresql";
/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The account a root test process runs the server under.
const UNPRIVILEGED_USER: &str = "nobody";
const UNPRIVILEGED_GROUP: &str = "nogroup";
/// The superuser initdb creates; connections are trusted on this private server.
pub const SUPERUSER: &str = "postgres";

/// A running server, shared by the tests of one binary.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    databases: AtomicUsize,
}

static SERVER: OnceLock<PgServer> = OnceLock::new();

/// The binary's server, started on first use. Panics, saying what to install, when
/// PostgreSQL is not there.
pub fn server() -> &'static PgServer {
    SERVER.get_or_init(|| PgServer::start().unwrap_or_else(|e| panic!("{e}")))
}

/// The directory of PostgreSQL's server programs (`initdb`, `postgres`), newest version.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GPULSE_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_BIN_GLOB_DIR)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program args...`, as the unprivileged user when this process is root.
fn command(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={UNPRIVILEGED_USER}"),
            &format!("--regid={UNPRIVILEGED_GROUP}"),
            "--clear-groups",
            "--",
        ])
        .arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PgServer {
    fn start() -> Result<PgServer, String> {
        let bin = bin_dir().ok_or_else(|| {
            format!(
                "no PostgreSQL server programs under {DEBIAN_BIN_GLOB_DIR}/*/bin (or $GPULSE_PG_BIN): \
                 run scripts/install-test-deps.sh, which installs Debian's postgresql"
            )
        })?;
        let dir = tempfile::Builder::new()
            .prefix("gpulse-pg-")
            .tempdir()
            .map_err(|e| format!("cannot create the server's directory: {e}"))?
            .keep();
        if is_root() {
            let status = Command::new("chown")
                .arg(format!("{UNPRIVILEGED_USER}:{UNPRIVILEGED_GROUP}"))
                .arg(&dir)
                .status()
                .map_err(|e| format!("cannot run chown: {e}"))?;
            if !status.success() {
                return Err(format!("chown {} failed", dir.display()));
            }
        }
        let data = dir.join("data");
        let out = command(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .output()
            .map_err(|e| format!("cannot run initdb from {}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let (cert, key) = write_tls_files(&dir)?;
        if is_root() {
            let status = Command::new("chown")
                .arg(format!("{UNPRIVILEGED_USER}:{UNPRIVILEGED_GROUP}"))
                .args([&cert, &key])
                .status()
                .map_err(|e| format!("cannot run chown: {e}"))?;
            if !status.success() {
                return Err(format!("chown {} failed", key.display()));
            }
        }
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let log = dir.join("server.log");
        let mut server = command(&bin, "postgres");
        server
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                // Durability is not under test here, speed is wanted.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=200",
                "-c",
                "ssl=on",
            ])
            .arg("-c")
            .arg(format!("ssl_cert_file={}", cert.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", key.display()));
        // The watchdog: runs the server, and stops it once this process is gone.
        let script = format!(
            "{server} >>{log} 2>&1 & pg=$!; \
             while kill -0 {parent} 2>/dev/null && kill -0 $pg 2>/dev/null; do sleep 0.2; done; \
             kill -QUIT $pg 2>/dev/null; wait $pg; rm -rf {dir}",
            server = shell_line(&server),
            log = quote(&log.display().to_string()),
            parent = std::process::id(),
            dir = quote(&dir.display().to_string()),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        let s = PgServer {
            bin,
            dir,
            port,
            databases: AtomicUsize::new(0),
        };
        s.wait_ready(&log)?;
        Ok(s)
    }

    fn wait_ready(&self, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres did not accept connections on 127.0.0.1:{} within {START_TIMEOUT:?}: {}",
                    self.port,
                    std::fs::read_to_string(log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The PEM file of the CA that signed the server's certificate (for `localhost`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A new, empty database named after `name`, and its URL (TCP, no TLS).
    pub fn database(&self, name: &str) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let db: String = format!("{name}_{n}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(60)
            .collect();
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                &db,
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run createdb: {e}"));
        assert!(
            out.status.success(),
            "createdb {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&db)
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL in database `db` with psql, returning its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
            ])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A CA (`ca.crt`) and a server certificate for `localhost` signed by it, in `dir`;
/// returns the server's certificate and key files. PostgreSQL wants the key private.
fn write_tls_files(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: rcgen::Error| format!("cannot make the test certificates: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "gpulse test PostgreSQL CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::write(path, text)
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(&dir.join("ca.crt"), &ca_cert.pem(), 0o644)?;
    write(&cert_file, &cert.pem(), 0o644)?;
    write(&key_file, &key.serialize_pem(), 0o600)?;
    Ok((cert_file, key_file))
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn shell_line(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_and_gives_each_test_its_database() {
        if bin_dir().is_none() {
            eprintln!("PostgreSQL is not installed; run scripts/install-test-deps.sh");
            return;
        }
        let s = server();
        let a = s.database("one");
        let b = s.database("one");
        assert_ne!(a, b);
        let db = a.rsplit('/').next().unwrap().split('?').next().unwrap();
        assert_eq!(s.psql(db, "SELECT 1 + 1").trim(), "2");
    }
}
