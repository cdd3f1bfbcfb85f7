//! The SQLite ledger's integrity: a collector refuses to start on a damaged ledger,
//! saying so and how to restore; it starts on one that merely went through a crash;
//! and a backup taken while it runs restores every acknowledged hour.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod agent;
mod support;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use agent::{Agent, spawn_collector};

/// Batches delivered (and acknowledged, so committed) before the crash.
const BATCHES: usize = 6;

fn ledger(dir: &Path) -> PathBuf {
    dir.join("ledger.sqlite")
}

fn beside(dir: &Path, suffix: &str) -> PathBuf {
    dir.join(format!("ledger.sqlite{suffix}"))
}

/// A data directory whose collector acknowledged [`BATCHES`] batches, one commit each,
/// and was then killed (SIGKILL) before it could checkpoint its write-ahead log.
async fn crashed_after_commits() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_collector(dir.path());
    let mut agent = Agent::connect(p.grpc).await;
    for _ in 0..BATCHES {
        agent.deliver().await;
    }
    drop(p);
    let wal = std::fs::metadata(beside(dir.path(), "-wal")).unwrap().len();
    assert!(
        wal > 32,
        "the write-ahead log holds the commits ({wal} bytes)"
    );
    dir
}

/// Moves every commit of the write-ahead log into the database file, as SQLite does
/// from time to time, and removes the log.
fn checkpoint(dir: &Path) {
    let conn = rusqlite::Connection::open(ledger(dir)).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    conn.close().unwrap();
    assert!(!beside(dir, "-wal").exists(), "the log is gone");
}

/// Runs the collector on `dir` expecting it to refuse to start: its error output.
fn refused(dir: &Path, damage: Damage) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpulse-collector"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the collector started on a ledger with {damage:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Overwrites `len` bytes of `path` at `at` with a pattern no SQLite page holds.
fn garble(path: &Path, at: u64, len: usize) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&vec![0xA5; len]).unwrap();
    f.sync_all().unwrap();
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The write-ahead log cut to its first half: its later commits are gone.
    WalCutShort,
    /// Bytes in the middle of the write-ahead log overwritten.
    WalGarbled,
    /// The database file emptied, its log gone.
    EmptyFile,
    /// The database file's header overwritten.
    HeaderGarbled,
}

impl Damage {
    /// A data directory with this damage done.
    async fn done(self) -> tempfile::TempDir {
        let dir = crashed_after_commits().await;
        if !matches!(self, Damage::WalCutShort | Damage::WalGarbled) {
            checkpoint(dir.path());
        }
        let wal = beside(dir.path(), "-wal");
        let wal_len = || std::fs::metadata(&wal).unwrap().len();
        match self {
            Damage::WalCutShort => truncate(&wal, 32 + (wal_len() - 32) / 2),
            Damage::WalGarbled => garble(&wal, wal_len() / 2, 4096),
            Damage::EmptyFile => truncate(&ledger(dir.path()), 0),
            Damage::HeaderGarbled => garble(&ledger(dir.path()), 0, 100),
        }
        dir
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_ledger_is_refused_saying_so_and_how_to_restore() {
    for damage in [
        Damage::WalCutShort,
        Damage::WalGarbled,
        Damage::EmptyFile,
        Damage::HeaderGarbled,
    ] {
        let dir = damage.done().await;
        let err = refused(dir.path(), damage);
        assert!(err.contains("damaged"), "{damage:?}: {err}");
        assert!(
            err.contains("backup") && err.contains("docs/ledger.md"),
            "{damage:?}: says how to restore: {err}"
        );
        for misleading in ["writable", "permission"] {
            assert!(!err.contains(misleading), "{damage:?}: {err}");
        }
    }
}

/// The JSON report of the ledger in `dir` (the `report` subcommand) over a window
/// around now, so two runs read the same hours.
fn report(dir: &Path) -> serde_json::Value {
    let day = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string()[..10].to_string();
    let (now, two_days) = (SystemTime::now(), Duration::from_secs(2 * 86_400));
    let out = collector_command(dir)
        .args(["report", "--format", "json", "--group-by", "gpu"])
        .args([
            "--since",
            &day(now - two_days),
            "--until",
            &day(now + two_days),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn collector_command(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gpulse-collector"));
    c.arg("--data-dir").arg(dir).env("RUST_LOG", "error");
    c
}

fn backup(dir: &Path, to: &Path) -> Output {
    collector_command(dir)
        .arg("backup")
        .arg("--to")
        .arg(to)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_ledger_starts_again_with_every_commit() {
    let dir = crashed_after_commits().await;
    let p = spawn_collector(dir.path());
    let totals = report(dir.path());
    assert!(
        totals["totals"]["gpu_hours"].as_f64().unwrap() > 0.0,
        "{totals}"
    );
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_collecting_restores_every_acknowledged_hour() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_collector(dir.path());
    let mut agent = Agent::connect(p.grpc).await;
    for _ in 0..BATCHES {
        agent.deliver().await;
    }
    let acknowledged = report(dir.path());

    let copies = tempfile::tempdir().unwrap();
    let copy = copies.path().join("ledger-backup.sqlite");
    let out = backup(dir.path(), &copy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("backed up"));
    let again = backup(dir.path(), &copy);
    assert!(!again.status.success(), "a backup never overwrites another");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The collector goes on: what it writes now is not in the copy.
    agent.deliver().await;
    drop(p);

    // Restore as docs/ledger.md says: the copy becomes ledger.sqlite of a data directory.
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(&copy, ledger(restored.path())).unwrap();
    assert_eq!(report(restored.path()), acknowledged);
    let p = spawn_collector(restored.path());
    assert_eq!(report(restored.path()), acknowledged);
    drop(p);
}
