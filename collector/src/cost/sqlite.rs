//! The ledger on SQLite (WAL), in one file under the data directory: the default. One
//! collector writes it; reports read it while it does.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::ledger::{Cursor, FieldKind, FieldValue, USAGE_FIELDS, Usage};
use super::store::{
    EngineError, GpuDims, GpuKey, ReadEngine, Rollup, RollupSql, Rows, StoreError, Stored,
    UsageRow, WriteEngine, usage_columns, usage_sums,
};
use crate::delivery::SeqMark;

/// The file under the data directory.
pub const LEDGER_FILE: &str = "ledger.sqlite";
/// Schema version written in `meta`; a newer one on disk is refused.
const SCHEMA_VERSION: i64 = 2;
/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const OPEN_HINT: &str = "check that --data-dir is writable and not used by another collector";
/// What to do with a damaged ledger; docs/ledger.md says it step by step.
const RESTORE_HINT: &str = "do not start a collector on it: stop, move ledger.sqlite and its \
     -wal, -shm and -committed files aside, copy your latest backup (gpulse-collector backup) \
     to ledger.sqlite and start again; docs/ledger.md, \"Backup and restore\"";
/// Beside the ledger: how many transactions it has committed, written after each commit.
/// SQLite drops the commits of a write-ahead log cut short without a word; the ledger
/// then counts fewer than this file says, which is how the loss is seen.
pub const COMMITTED_SUFFIX: &str = "-committed";
/// Messages of `PRAGMA quick_check` shown in an error; the rest are counted.
const QUICK_CHECK_SHOWN: usize = 3;

/// A ledger whose file is not what the collector wrote.
fn damaged(path: &Path, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        target: path.display().to_string(),
        reason: format!("the ledger is damaged: {reason}"),
        hint: RESTORE_HINT,
    }
}

/// Whether SQLite found the file is not a database, or a damaged one: no permission
/// or setting fixes that.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

fn open_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| {
        if is_damage(&e) {
            return damaged(path, e);
        }
        StoreError::Open {
            target: path.display().to_string(),
            reason: e.to_string(),
            hint: OPEN_HINT,
        }
    }
}

/// The record of committed transactions beside `ledger`.
pub fn committed_path(ledger: &Path) -> PathBuf {
    let mut name = ledger.as_os_str().to_owned();
    name.push(COMMITTED_SUFFIX);
    PathBuf::from(name)
}

/// Checks a ledger file before anything writes to it: not emptied, readable as a
/// database, SQLite's quick check clean, and holding every commit its record says it
/// made. Returns the commits it holds.
fn check_integrity(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let record = read_committed(path)?;
    if len == 0 && record.is_some() {
        return Err(damaged(path, "the file is empty (0 bytes)"));
    }
    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(|e| {
            if is_damage(&e) {
                damaged(path, e)
            } else {
                open_error(path)(e)
            }
        })?;
    if problems != ["ok"] {
        let shown = problems
            .iter()
            .take(QUICK_CHECK_SHOWN)
            .cloned()
            .collect::<Vec<_>>();
        return Err(damaged(
            path,
            format!(
                "SQLite's quick check found {} problem(s): {}",
                problems.len(),
                shown.join("; ")
            ),
        ));
    }
    let has_meta: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )
        .map_err(open_error(path))?;
    let held: i64 = if has_meta {
        conn.query_row("SELECT value FROM meta WHERE key = 'commits'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(open_error(path))?
        .unwrap_or(0)
    } else {
        0
    };
    if let Some(recorded) = record
        && recorded > held
    {
        return Err(damaged(
            path,
            format!(
                "it holds {held} commits but {} records {recorded}: its write-ahead log \
                 (-wal) was cut short or garbled and acknowledged hours are missing",
                committed_path(path).display()
            ),
        ));
    }
    Ok(held)
}

/// The count of commits recorded beside the ledger; `None` when there is no record
/// (a new ledger, or one from a collector that kept none).
fn read_committed(path: &Path) -> Result<Option<i64>, StoreError> {
    let record = committed_path(path);
    match std::fs::read_to_string(&record) {
        Ok(text) => text.trim().parse::<i64>().map(Some).map_err(|_| {
            damaged(
                path,
                format!(
                    "{} holds {:?}, not a count of commits",
                    record.display(),
                    text.chars().take(40).collect::<String>()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Open {
            target: record.display().to_string(),
            reason: e.to_string(),
            hint: OPEN_HINT,
        }),
    }
}

/// The open record of commits, rewritten in place after each commit: a fixed-width
/// number, so a rewrite never leaves a longer old one's tail behind.
struct CommittedRecord {
    file: File,
    path: PathBuf,
}

impl CommittedRecord {
    fn open(ledger: &Path, commits: i64) -> Result<CommittedRecord, StoreError> {
        let path = committed_path(ledger);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Open {
                target: path.display().to_string(),
                reason: e.to_string(),
                hint: OPEN_HINT,
            })?;
        let record = CommittedRecord { file, path };
        record.write(commits).map_err(|e| StoreError::Open {
            target: record.path.display().to_string(),
            reason: e.to_string(),
            hint: OPEN_HINT,
        })?;
        Ok(record)
    }

    /// Not synced: the ledger's commit already is, and a record that lags it after a
    /// power cut only checks less.
    fn write(&self, commits: i64) -> std::io::Result<()> {
        self.file
            .write_all_at(format!("{commits:020}\n").as_bytes(), 0)
    }
}

fn engine(e: rusqlite::Error) -> EngineError {
    EngineError::new(e)
}

fn read(e: rusqlite::Error) -> StoreError {
    StoreError::Read(e.to_string())
}

fn sql_value(v: FieldValue) -> Value {
    match v {
        FieldValue::Real(x) => Value::Real(x),
        FieldValue::Count(n) => Value::Integer(FieldValue::count_i64(n)),
    }
}

fn usage_values(u: &Usage) -> impl Iterator<Item = Value> + '_ {
    USAGE_FIELDS.iter().map(move |f| sql_value((f.get)(u)))
}

/// Reads the usage columns starting at column `at`; NULL (an empty sum) is 0.
fn usage_from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Usage> {
    let mut u = Usage::default();
    for (i, f) in USAGE_FIELDS.iter().enumerate() {
        let v = match f.kind {
            FieldKind::Real => FieldValue::Real(row.get::<_, Option<f64>>(at + i)?.unwrap_or(0.0)),
            FieldKind::Count => {
                FieldValue::Count(row.get::<_, Option<i64>>(at + i)?.unwrap_or(0).max(0) as u64)
            }
        };
        (f.set)(&mut u, v);
    }
    Ok(u)
}

/// The GPUs table, `name` with what precedes it: a GPU's identity is everything it is
/// reported under, the Kubernetes container its time is attributed to included.
fn gpus_table(name: &str) -> String {
    format!(
        "CREATE TABLE {name} (
           id INTEGER PRIMARY KEY,
           host TEXT NOT NULL, uuid TEXT NOT NULL, gpu_index INTEGER NOT NULL,
           model TEXT NOT NULL, provider TEXT NOT NULL, region TEXT NOT NULL,
           zone TEXT NOT NULL, instance_type TEXT NOT NULL, labels TEXT NOT NULL,
           namespace TEXT NOT NULL DEFAULT '', pod TEXT NOT NULL DEFAULT '',
           container TEXT NOT NULL DEFAULT '',
           UNIQUE (host, uuid, gpu_index, model, provider, region, zone, instance_type, labels,
                   namespace, pod, container))"
    )
}

/// A ledger from before GPU time was attributed to Kubernetes containers gets the
/// holder columns. SQLite cannot change a UNIQUE constraint in place, so the table is
/// rebuilt and copied, ids kept (the usage rows refer to them), in one transaction: a
/// crash leaves the old table whole. Its rows belong to no known holder.
fn add_holder_columns(conn: &Connection) -> rusqlite::Result<()> {
    let has_namespace: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('gpus') WHERE name = 'namespace'",
        [],
        |r| r.get(0),
    )?;
    if has_namespace {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(&format!(
        "{};
         INSERT INTO gpus_with_holders
           (id, host, uuid, gpu_index, model, provider, region, zone, instance_type, labels)
           SELECT id, host, uuid, gpu_index, model, provider, region, zone, instance_type, labels
           FROM gpus;
         DROP TABLE gpus;
         ALTER TABLE gpus_with_holders RENAME TO gpus;",
        gpus_table("gpus_with_holders")
    ))?;
    tx.commit()
}

fn init(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let open = open_error(path);
    // WAL: readers (reports) never block the writer. synchronous=FULL: a commit is on disk
    // before the agent is told, even across a power cut.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(&open)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(&open)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&open)?;
    let usage_cols = USAGE_FIELDS
        .iter()
        .map(|f| {
            let t = match f.kind {
                FieldKind::Real => "REAL",
                FieldKind::Count => "INTEGER",
            };
            format!("{} {t} NOT NULL DEFAULT 0", f.name)
        })
        .collect::<Vec<_>>()
        .join(",\n  ");
    let gpus = gpus_table("IF NOT EXISTS gpus");
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
         {gpus};
         CREATE TABLE IF NOT EXISTS usage (
           hour INTEGER NOT NULL, gpu INTEGER NOT NULL,
           {usage_cols},
           PRIMARY KEY (hour, gpu)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS cursors (
           host TEXT NOT NULL, uuid TEXT NOT NULL, timestamp_ms INTEGER NOT NULL,
           boot_id TEXT NOT NULL, energy_mj INTEGER, pcie_replays INTEGER,
           xid_total INTEGER, ecc_uncorrected INTEGER,
           PRIMARY KEY (host, uuid)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS usage_daily (
           day INTEGER NOT NULL, gpu INTEGER NOT NULL,
           {usage_cols},
           PRIMARY KEY (day, gpu)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS totals (
           host TEXT NOT NULL, uuid TEXT NOT NULL,
           {usage_cols},
           PRIMARY KEY (host, uuid)) WITHOUT ROWID;"
    ))
    .map_err(&open)?;
    init_delivery(conn).map_err(&open)?;
    add_missing_columns(conn).map_err(&open)?;
    add_holder_columns(conn).map_err(&open)?;
    let found: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(&open)?;
    match found {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::NewerSchema {
                target: path.display().to_string(),
                found: v,
                known: SCHEMA_VERSION,
            });
        }
        // Older: migrated above. Recorded, so that an older collector refuses it
        // rather than write rows without holders.
        Some(_) | None => {
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION],
            )
            .map_err(&open)?;
        }
    }
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('commits', 0)",
        [],
    )
    .map_err(&open)?;
    Ok(())
}

/// The tables of delivery: each agent's mark (the highest batch applied, and its boot;
/// seqs kept bit for bit in an INTEGER) and the row a probe rewrites. Added to a ledger
/// of any age as they are: an older collector ignores them.
fn init_delivery(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS agent_seqs (
           agent_id TEXT PRIMARY KEY, boot_id TEXT NOT NULL, seq INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS write_probe (
           id INTEGER PRIMARY KEY CHECK (id = 1), at_unix_ms INTEGER NOT NULL);",
    )
}

/// Columns added after a ledger was first created: every [`USAGE_FIELDS`] column in
/// the usage tables, and the cursors' later counters. A ledger of any age gets them
/// (SQLite has no ADD COLUMN IF NOT EXISTS, so the table's columns are read first);
/// older collectors ignore them.
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    let columns = |table: &str| -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
        names.collect()
    };
    for table in ["usage", "usage_daily", "totals"] {
        let have = columns(table)?;
        for f in USAGE_FIELDS
            .iter()
            .filter(|f| !have.iter().any(|c| c == f.name))
        {
            let t = match f.kind {
                FieldKind::Real => "REAL",
                FieldKind::Count => "INTEGER",
            };
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {} {t} NOT NULL DEFAULT 0",
                f.name
            ))?;
        }
    }
    let have = columns("cursors")?;
    for column in ["xid_total", "ecc_uncorrected"] {
        if !have.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE cursors ADD COLUMN {column} INTEGER"))?;
        }
    }
    Ok(())
}

/// The writer's connection.
pub struct SqliteWriter {
    conn: Connection,
    /// Transactions committed, as `meta` holds them.
    commits: i64,
    committed: CommittedRecord,
}

impl SqliteWriter {
    /// Opens the ledger after checking its integrity ([`check_integrity`]); a damaged
    /// one is refused with what to do, before anything is written to it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(open_error(path))?;
        let commits = check_integrity(&conn, path)?;
        init(&conn, path)?;
        let committed = CommittedRecord::open(path, commits)?;
        tracing::info!(ledger = %path.display(), commits, "the ledger passed its integrity check");
        Ok(SqliteWriter {
            conn,
            commits,
            committed,
        })
    }
}

impl WriteEngine for SqliteWriter {
    fn load(&mut self) -> Result<Stored, EngineError> {
        let mut cursors = HashMap::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT host, uuid, timestamp_ms, boot_id, energy_mj, pcie_replays, xid_total,
                   ecc_uncorrected FROM cursors",
            )
            .map_err(engine)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                    Cursor {
                        timestamp_ms: r.get(2)?,
                        boot_id: r.get(3)?,
                        energy_mj: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                        pcie_replays: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                        xid_total: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                        ecc_uncorrected: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                    },
                ))
            })
            .map_err(engine)?;
        for row in rows {
            let (k, c) = row.map_err(engine)?;
            cursors.insert(k, c);
        }
        let mut totals = HashMap::new();
        let cols = usage_columns().collect::<Vec<_>>().join(", ");
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT host, uuid, {cols} FROM totals"))
            .map_err(engine)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                    usage_from_row(r, 2)?,
                ))
            })
            .map_err(engine)?;
        for row in rows {
            let (k, u) = row.map_err(engine)?;
            totals.insert(k, u);
        }
        Ok((cursors, totals))
    }

    fn begin(&mut self) -> Result<(), EngineError> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(engine)
    }

    fn lock_cursors(
        &mut self,
        _keys: &[GpuKey],
    ) -> Result<Option<HashMap<GpuKey, Cursor>>, EngineError> {
        // One collector writes the file: the cursors it holds are the stored ones.
        Ok(None)
    }

    fn dim_id(&mut self, dims: &GpuDims) -> Result<i64, EngineError> {
        let labels = dims.labels_json();
        let key = params![
            dims.host,
            dims.uuid,
            dims.index,
            dims.model,
            dims.provider,
            dims.region,
            dims.zone,
            dims.instance_type,
            labels,
            dims.namespace,
            dims.pod,
            dims.container
        ];
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO gpus (host, uuid, gpu_index, model, provider, region, zone, instance_type, labels,
                                         namespace, pod, container)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut s| s.execute(key))
            .map_err(engine)?;
        self.conn
            .prepare_cached(
                "SELECT id FROM gpus WHERE host = ?1 AND uuid = ?2 AND gpu_index = ?3 AND model = ?4
                   AND provider = ?5 AND region = ?6 AND zone = ?7 AND instance_type = ?8 AND labels = ?9
                   AND namespace = ?10 AND pod = ?11 AND container = ?12",
            )
            .and_then(|mut s| s.query_row(key, |r| r.get(0)))
            .map_err(engine)
    }

    fn write(&mut self, rows: &Rows) -> Result<Vec<(GpuKey, Usage)>, EngineError> {
        let cols = usage_columns().collect::<Vec<_>>().join(", ");
        let placeholders = (0..USAGE_FIELDS.len())
            .map(|i| format!("?{}", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let updates = usage_columns()
            .map(|c| format!("{c} = {c} + excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        for (table, key, rows) in [
            ("usage", "hour", &rows.hourly),
            ("usage_daily", "day", &rows.daily),
        ] {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "INSERT INTO {table} ({key}, gpu, {cols}) VALUES (?1, ?2, {placeholders})
                     ON CONFLICT ({key}, gpu) DO UPDATE SET {updates}"
                ))
                .map_err(engine)?;
            for ((bucket, gpu), u) in rows {
                let values = [Value::from(*bucket), Value::from(*gpu)]
                    .into_iter()
                    .chain(usage_values(u));
                stmt.execute(rusqlite::params_from_iter(values))
                    .map_err(engine)?;
            }
        }
        let mut totals = self
            .conn
            .prepare_cached(&format!(
                "INSERT INTO totals (host, uuid, {cols}) VALUES (?1, ?2, {placeholders})
                 ON CONFLICT (host, uuid) DO UPDATE SET {updates}
                 RETURNING {cols}"
            ))
            .map_err(engine)?;
        let mut fresh = Vec::with_capacity(rows.totals.len());
        for ((host, uuid), u) in &rows.totals {
            let values = [Value::from(host.clone()), Value::from(uuid.clone())]
                .into_iter()
                .chain(usage_values(u));
            let now = totals
                .query_row(rusqlite::params_from_iter(values), |r| usage_from_row(r, 0))
                .map_err(engine)?;
            fresh.push(((host.clone(), uuid.clone()), now));
        }
        let mut cursors = self
            .conn
            .prepare_cached(
                "INSERT INTO cursors (host, uuid, timestamp_ms, boot_id, energy_mj, pcie_replays,
                   xid_total, ecc_uncorrected)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (host, uuid) DO UPDATE SET timestamp_ms = excluded.timestamp_ms,
                   boot_id = excluded.boot_id, energy_mj = excluded.energy_mj,
                   pcie_replays = excluded.pcie_replays, xid_total = excluded.xid_total,
                   ecc_uncorrected = excluded.ecc_uncorrected",
            )
            .map_err(engine)?;
        for ((host, uuid), c) in &rows.cursors {
            cursors
                .execute(params![
                    host,
                    uuid,
                    c.timestamp_ms,
                    c.boot_id,
                    c.energy_mj.map(|v| v as i64),
                    c.pcie_replays.map(|v| v as i64),
                    c.xid_total.map(|v| v as i64),
                    c.ecc_uncorrected.map(|v| v as i64)
                ])
                .map_err(engine)?;
        }
        Ok(fresh)
    }

    fn commit(&mut self) -> Result<(), EngineError> {
        self.conn
            .execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'commits'",
                [],
            )
            .map_err(engine)?;
        self.conn.execute_batch("COMMIT").map_err(engine)?;
        self.commits += 1;
        if let Err(e) = self.committed.write(self.commits) {
            // The commit stands; only the check of a later start sees less.
            tracing::warn!(record = %self.committed.path.display(), error = %e,
                "cannot record the ledger's commit count");
        }
        Ok(())
    }

    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    fn load_marks(&mut self) -> Result<HashMap<String, SeqMark>, EngineError> {
        let mut stmt = self
            .conn
            .prepare("SELECT agent_id, boot_id, seq FROM agent_seqs")
            .map_err(engine)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    SeqMark {
                        boot_id: r.get(1)?,
                        seq: r.get::<_, i64>(2)? as u64,
                    },
                ))
            })
            .map_err(engine)?;
        rows.collect::<rusqlite::Result<_>>().map_err(engine)
    }

    fn lock_marks(
        &mut self,
        _agents: &[String],
    ) -> Result<Option<HashMap<String, SeqMark>>, EngineError> {
        // One collector writes the file: the marks it holds are the stored ones.
        Ok(None)
    }

    fn write_marks(&mut self, marks: &[(String, SeqMark)]) -> Result<(), EngineError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO agent_seqs (agent_id, boot_id, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (agent_id) DO UPDATE SET boot_id = excluded.boot_id, seq = excluded.seq",
            )
            .map_err(engine)?;
        for (agent, m) in marks {
            stmt.execute(params![agent, m.boot_id, m.seq as i64])
                .map_err(engine)?;
        }
        Ok(())
    }

    fn probe(&mut self) -> Result<(), EngineError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.conn
            .execute(
                "INSERT INTO write_probe (id, at_unix_ms) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET at_unix_ms = excluded.at_unix_ms",
                [now],
            )
            .map(|_| ())
            .map_err(engine)
    }

    fn prune(&mut self, cutoff_hour: i64) -> Result<usize, EngineError> {
        let hours = self
            .conn
            .execute("DELETE FROM usage WHERE hour < ?1", [cutoff_hour])
            .map_err(engine)?;
        // A day goes once all its hours have.
        let days = self
            .conn
            .execute(
                "DELETE FROM usage_daily WHERE day < ?1",
                [cutoff_hour.div_euclid(24)],
            )
            .map_err(engine)?;
        Ok(hours + days)
    }
}

/// Why a backup was not made; nothing is left at the destination.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "no ledger at {0}: point --data-dir (or data_dir in --config) at the collector's data directory"
    )]
    NoLedger(PathBuf),
    #[error("{0} exists: give the backup a new name, so no earlier backup is overwritten")]
    Exists(PathBuf),
    #[error(transparent)]
    Source(#[from] StoreError),
    #[error(
        "cannot write the backup {path}: {reason}; check that its directory exists, is writable and has room"
    )]
    Write { path: PathBuf, reason: String },
    #[error("the copy at {path} failed SQLite's quick check ({reason}); it was removed: try again")]
    Check { path: PathBuf, reason: String },
}

/// Waits between backup attempts while another connection holds a lock SQLite's
/// backup must wait for.
const BACKUP_RETRY: Duration = Duration::from_millis(50);

/// Copies the ledger at `ledger` to a new file `to`, with SQLite's online backup API:
/// one read transaction, so the copy is the ledger as of one commit, taken while a
/// collector keeps writing. The copy is a single file (no -wal) that passed SQLite's
/// quick check; it is written beside `to` and renamed into place, so `to` is either
/// absent or whole. Returns its size in bytes.
pub fn backup(ledger: &Path, to: &Path) -> Result<u64, BackupError> {
    if !ledger.exists() {
        return Err(BackupError::NoLedger(ledger.to_path_buf()));
    }
    if to.exists() {
        return Err(BackupError::Exists(to.to_path_buf()));
    }
    let partial = {
        let mut name = to.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    };
    let result = copy_checked(ledger, &partial).and_then(|()| {
        let write = |e: std::io::Error| BackupError::Write {
            path: to.to_path_buf(),
            reason: e.to_string(),
        };
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(write)?;
        std::fs::rename(&partial, to).map_err(write)?;
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(write)?;
        }
        std::fs::metadata(to).map(|m| m.len()).map_err(write)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn copy_checked(ledger: &Path, partial: &Path) -> Result<(), BackupError> {
    let _ = std::fs::remove_file(partial);
    let write = |e: rusqlite::Error| BackupError::Write {
        path: partial.to_path_buf(),
        reason: e.to_string(),
    };
    let source = SqliteReader::open(ledger)?.conn;
    let mut copy = Connection::open(partial).map_err(write)?;
    {
        let backup = rusqlite::backup::Backup::new(&source, &mut copy).map_err(write)?;
        loop {
            // -1: every page in one step, in one read transaction of the source.
            match backup.step(-1).map_err(|e| open_error(ledger)(e))? {
                rusqlite::backup::StepResult::Done => break,
                _ => std::thread::sleep(BACKUP_RETRY),
            }
        }
    }
    // One self-contained file: a restored copy needs nothing beside it.
    copy.pragma_update(None, "journal_mode", "DELETE")
        .map_err(write)?;
    let verdict: String = copy
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(write)?;
    if verdict != "ok" {
        return Err(BackupError::Check {
            path: partial.to_path_buf(),
            reason: verdict,
        });
    }
    copy.close().map_err(|(_, e)| write(e))
}

/// A read-only connection; works while a collector writes to the file (WAL).
pub struct SqliteReader {
    conn: Connection,
    path: PathBuf,
}

impl SqliteReader {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Open {
                target: path.display().to_string(),
                reason: "no such file".into(),
                hint: "point --data-dir (or data_dir in --config) at the collector's data directory, or set --ledger-url",
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_error(path))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error(path))?;
        Ok(SqliteReader {
            conn,
            path: path.to_path_buf(),
        })
    }
}

impl ReadEngine for SqliteReader {
    fn dims(&mut self) -> Result<HashMap<i64, GpuDims>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, host, uuid, gpu_index, model, provider, region, zone, instance_type, labels,
                        namespace, pod, container FROM gpus",
            )
            .map_err(read)?;
        let rows = stmt
            .query_map([], |r| {
                let labels: String = r.get(9)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    GpuDims {
                        host: r.get(1)?,
                        uuid: r.get(2)?,
                        index: r.get(3)?,
                        model: r.get(4)?,
                        provider: r.get(5)?,
                        region: r.get(6)?,
                        zone: r.get(7)?,
                        instance_type: r.get(8)?,
                        labels: serde_json::from_str(&labels).unwrap_or_default(),
                        namespace: r.get(10)?,
                        pod: r.get(11)?,
                        container: r.get(12)?,
                    },
                ))
            })
            .map_err(read)?;
        rows.collect::<rusqlite::Result<_>>().map_err(read)
    }

    fn sum_usage(
        &mut self,
        rollup: Rollup,
        from: i64,
        to: i64,
        per_day: bool,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let RollupSql {
            table,
            key,
            day,
            group,
        } = rollup.sql(per_day);
        let sql = format!(
            "SELECT gpu, MIN({day}), {sums} FROM {table} WHERE {key} >= ?1 AND {key} < ?2 GROUP BY {group}",
            sums = usage_sums("")
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(read)?;
        let rows = stmt
            .query_map([from, to], |r| {
                Ok(UsageRow {
                    gpu: r.get(0)?,
                    day: r.get(1)?,
                    usage: usage_from_row(r, 2)?,
                })
            })
            .map_err(read)?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| StoreError::Read(format!("{}: {e}", self.path.display())))
    }
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteWriter")
    }
}

impl std::fmt::Debug for SqliteReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteReader")
    }
}
