//! The ledger's durable store: SQLite (WAL) under the data directory, written by one
//! thread of its own with group commits, so ingest never blocks the async runtime and a
//! batch is acknowledged only once its ledger rows are on disk.
//!
//! Tables: `gpus` (one row per GPU and identity: host, uuid, model, provider, region,
//! zone, instance type, labels), `usage` (per GPU per hour bucket, every [`Usage`] field),
//! `usage_daily` (the same per UTC day, written in the same transaction, so a report over
//! weeks reads days and only its edge hours),
//! `cursors` (per GPU: the last snapshot applied and its counters, written in the same
//! transaction as the usage it produced, so a replay after a restart changes nothing),
//! and `totals` (per GPU since first seen, for the Prometheus counters).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info};

use gpulse_gpu::Snapshot;

use super::ledger::{Cursor, GpuTerms, HOUR_MS, Ledger, Usage};
use crate::config::LedgerConfig;

/// The file under the data directory.
pub const LEDGER_FILE: &str = "ledger.sqlite";
/// Schema version written in `meta`; a newer one on disk is refused.
const SCHEMA_VERSION: i64 = 1;
/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Why the ledger store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the ledger {path}: {source}; check that --data-dir is writable and not used by another collector"
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the ledger {path} has schema version {found}, newer than this collector's {SCHEMA_VERSION}: upgrade the collector"
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("ledger write failed: {0}; the batch is not acknowledged and the agent will resend it")]
    Write(String),
    #[error("ledger query failed: {0}")]
    Read(#[from] rusqlite::Error),
    #[error("the ledger writer has stopped; the collector is shutting down")]
    Closed,
}

/// The usage columns, in [`Usage`] field order (throttle reasons in ledger order).
pub const USAGE_COLUMNS: [&str; 22] = [
    "observed_s",
    "busy_s",
    "utilized_s",
    "idle_s",
    "throttle_sw_power_cap_s",
    "throttle_hw_slowdown_s",
    "throttle_sw_thermal_slowdown_s",
    "throttle_hw_thermal_slowdown_s",
    "throttle_hw_power_brake_slowdown_s",
    "throttle_sync_boost_s",
    "throttle_applications_clocks_setting_s",
    "lost_s",
    "energy_j",
    "energy_known_s",
    "utilization_known_s",
    "clock_known_s",
    "list_cost",
    "idle_cost",
    "throttle_loss",
    "unpriced_s",
    "pcie_replays",
    "lost_samples",
];

fn usage_values(u: &Usage) -> [rusqlite::types::Value; 22] {
    use rusqlite::types::Value::{Integer, Real};
    let t = u.throttle_s;
    [
        Real(u.observed_s),
        Real(u.busy_s),
        Real(u.utilized_s),
        Real(u.idle_s),
        Real(t[0]),
        Real(t[1]),
        Real(t[2]),
        Real(t[3]),
        Real(t[4]),
        Real(t[5]),
        Real(t[6]),
        Real(u.lost_s),
        Real(u.energy_j),
        Real(u.energy_known_s),
        Real(u.utilization_known_s),
        Real(u.clock_known_s),
        Real(u.list_cost),
        Real(u.idle_cost),
        Real(u.throttle_loss),
        Real(u.unpriced_s),
        // SQLite integers are i64: a count past it is stored as the largest one.
        Integer(i64::try_from(u.pcie_replays).unwrap_or(i64::MAX)),
        Integer(i64::try_from(u.lost_samples).unwrap_or(i64::MAX)),
    ]
}

/// Reads the 22 usage columns (plus `samples` after them) starting at column `at`.
pub fn usage_from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Usage> {
    let f = |i: usize| -> rusqlite::Result<f64> {
        Ok(row.get::<_, Option<f64>>(at + i)?.unwrap_or(0.0))
    };
    let n = |i: usize| -> rusqlite::Result<u64> {
        Ok(row.get::<_, Option<i64>>(at + i)?.unwrap_or(0).max(0) as u64)
    };
    Ok(Usage {
        observed_s: f(0)?,
        busy_s: f(1)?,
        utilized_s: f(2)?,
        idle_s: f(3)?,
        throttle_s: [f(4)?, f(5)?, f(6)?, f(7)?, f(8)?, f(9)?, f(10)?],
        lost_s: f(11)?,
        energy_j: f(12)?,
        energy_known_s: f(13)?,
        utilization_known_s: f(14)?,
        clock_known_s: f(15)?,
        list_cost: f(16)?,
        idle_cost: f(17)?,
        throttle_loss: f(18)?,
        unpriced_s: f(19)?,
        pcie_replays: n(20)?,
        lost_samples: n(21)?,
        samples: n(22)?,
    })
}

/// `SUM(c1), SUM(c2), ...` over the usage columns and `samples`, for report queries.
pub fn usage_sums(prefix: &str) -> String {
    USAGE_COLUMNS
        .iter()
        .chain(std::iter::once(&"samples"))
        .map(|c| format!("SUM({prefix}{c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Who a GPU is and where it runs: the dimensions reports group by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct GpuDims {
    pub host: String,
    pub uuid: String,
    pub index: u32,
    /// GPU name as NVML reports it.
    pub model: String,
    pub provider: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    pub labels: BTreeMap<String, String>,
}

impl GpuDims {
    fn labels_json(&self) -> String {
        serde_json::to_string(&self.labels).expect("a string map serialises")
    }
}

/// One GPU of a host, as the ledger sees it.
#[derive(Debug, Clone)]
pub struct LedgerGpu {
    pub dims: GpuDims,
    pub terms: GpuTerms,
}

/// One connected host's GPUs, keyed by uuid: built once per stream from its Hello.
#[derive(Debug, Clone, Default)]
pub struct LedgerHost {
    pub agent_id: String,
    pub gpus: HashMap<String, LedgerGpu>,
}

/// Per-GPU totals since the GPU was first seen, keyed by (host, uuid).
pub type Totals = RwLock<HashMap<(String, String), Usage>>;

enum Request {
    Apply {
        host: Arc<LedgerHost>,
        snapshots: Vec<Snapshot>,
        done: oneshot::Sender<Result<(), Arc<StoreError>>>,
    },
}

/// The async side of the store: submit batches, read totals, open readers.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Request>,
    totals: Arc<Totals>,
    path: PathBuf,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

/// A pending acknowledgement: resolves once the batch's ledger rows are committed.
pub type Durable = oneshot::Receiver<Result<(), Arc<StoreError>>>;

impl StoreHandle {
    /// Queues a batch's snapshots (already validated) for the ledger. Waits only when the
    /// queue is full; the returned receiver resolves at the group commit.
    pub async fn apply(
        &self,
        host: Arc<LedgerHost>,
        snapshots: Vec<Snapshot>,
    ) -> Result<Durable, StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Request::Apply {
                host,
                snapshots,
                done,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// Per-GPU totals since each GPU was first seen.
    pub fn totals(&self) -> &Arc<Totals> {
        &self.totals
    }

    /// The SQLite file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens the ledger read-only (reports, the `report` command); works while a collector
/// writes to it (WAL).
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(StoreError::Read)?;
    Ok(conn)
}

fn init(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let open = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    // WAL: readers (reports) never block the writer. synchronous=FULL: a commit is on disk
    // before the agent is told, even across a power cut.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(open)?;
    let usage_cols = |ty: &str| {
        USAGE_COLUMNS
            .iter()
            .map(|c| {
                let t = if matches!(*c, "pcie_replays" | "lost_samples") {
                    "INTEGER"
                } else {
                    ty
                };
                format!("{c} {t} NOT NULL DEFAULT 0")
            })
            .collect::<Vec<_>>()
            .join(",\n  ")
    };
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS gpus (
           id INTEGER PRIMARY KEY,
           host TEXT NOT NULL, uuid TEXT NOT NULL, gpu_index INTEGER NOT NULL,
           model TEXT NOT NULL, provider TEXT NOT NULL, region TEXT NOT NULL,
           zone TEXT NOT NULL, instance_type TEXT NOT NULL, labels TEXT NOT NULL,
           UNIQUE (host, uuid, gpu_index, model, provider, region, zone, instance_type, labels));
         CREATE TABLE IF NOT EXISTS usage (
           hour INTEGER NOT NULL, gpu INTEGER NOT NULL,
           {},
           samples INTEGER NOT NULL DEFAULT 0,
           PRIMARY KEY (hour, gpu)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS cursors (
           host TEXT NOT NULL, uuid TEXT NOT NULL, timestamp_ms INTEGER NOT NULL,
           boot_id TEXT NOT NULL, energy_mj INTEGER, pcie_replays INTEGER,
           PRIMARY KEY (host, uuid)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS usage_daily (
           day INTEGER NOT NULL, gpu INTEGER NOT NULL,
           {},
           samples INTEGER NOT NULL DEFAULT 0,
           PRIMARY KEY (day, gpu)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS totals (
           host TEXT NOT NULL, uuid TEXT NOT NULL,
           {},
           samples INTEGER NOT NULL DEFAULT 0,
           PRIMARY KEY (host, uuid)) WITHOUT ROWID;",
        usage_cols("REAL"),
        usage_cols("REAL"),
        usage_cols("REAL"),
    ))
    .map_err(open)?;
    let found: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(open)?;
    match found {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found: v,
            });
        }
        Some(_) => {}
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION],
            )
            .map_err(open)?;
        }
    }
    Ok(())
}

type GpuKey = (String, String);

struct Writer {
    conn: Connection,
    ledger: Ledger<GpuKey>,
    dims: HashMap<GpuDims, i64>,
    totals: Arc<Totals>,
    config: LedgerConfig,
    last_prune: Option<Instant>,
}

/// What one group commit collects.
#[derive(Default)]
struct Group {
    usage: HashMap<(i64, i64), Usage>,
    daily: HashMap<(i64, i64), Usage>,
    totals: HashMap<GpuKey, Usage>,
    /// Cursors as they were before this group touched them, to restore on failure.
    prior: HashMap<GpuKey, Option<Cursor>>,
    new_dims: Vec<GpuDims>,
    waiters: Vec<oneshot::Sender<Result<(), Arc<StoreError>>>>,
    error: Option<String>,
    batches: usize,
}

/// Opens (or creates) the ledger under `data_dir` and starts its writer thread.
pub fn start(data_dir: &Path, config: &LedgerConfig) -> Result<StoreHandle, StoreError> {
    let path = data_dir.join(LEDGER_FILE);
    let conn = Connection::open(&path).map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    init(&conn, &path)?;
    let (cursors, totals) = load(&conn).map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    info!(path = %path.display(), gpus = cursors.len(), "ledger opened");
    let totals = Arc::new(RwLock::new(totals));
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let mut writer = Writer {
        conn,
        ledger: Ledger::with_cursors(cursors),
        dims: HashMap::new(),
        totals: totals.clone(),
        config: config.clone(),
        last_prune: None,
    };
    writer.prune();
    std::thread::Builder::new()
        .name("gpulse-ledger".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| StoreError::Write(format!("cannot start the ledger thread: {e}")))?;
    Ok(StoreHandle { tx, totals, path })
}

type Loaded = (HashMap<GpuKey, Cursor>, HashMap<GpuKey, Usage>);

fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let mut cursors = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT host, uuid, timestamp_ms, boot_id, energy_mj, pcie_replays FROM cursors",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
            Cursor {
                timestamp_ms: r.get(2)?,
                boot_id: r.get(3)?,
                energy_mj: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                pcie_replays: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
            },
        ))
    })?;
    for row in rows {
        let (k, c) = row?;
        cursors.insert(k, c);
    }
    let mut totals = HashMap::new();
    let cols = USAGE_COLUMNS.join(", ");
    let mut stmt = conn.prepare(&format!("SELECT host, uuid, {cols}, samples FROM totals"))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
            usage_from_row(r, 2)?,
        ))
    })?;
    for row in rows {
        let (k, u) = row?;
        totals.insert(k, u);
    }
    Ok((cursors, totals))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let deadline = Instant::now() + self.config.commit_interval;
            let mut group = Group::default();
            if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
                group.error = Some(e.to_string());
            }
            self.process(first, &mut group);
            let mut open = true;
            while group.batches < self.config.commit_max_batches {
                match rx.try_recv() {
                    Ok(r) => self.process(r, &mut group),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.commit(group);
            if self.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                self.prune();
            }
            if !open {
                break;
            }
        }
        debug!("ledger writer stopped");
    }

    fn dim_id(&mut self, dims: &GpuDims, group: &mut Group) -> rusqlite::Result<i64> {
        if let Some(id) = self.dims.get(dims) {
            return Ok(*id);
        }
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
            labels
        ];
        self.conn.execute(
            "INSERT OR IGNORE INTO gpus (host, uuid, gpu_index, model, provider, region, zone, instance_type, labels)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            key,
        )?;
        let id: i64 = self.conn.query_row(
            "SELECT id FROM gpus WHERE host = ?1 AND uuid = ?2 AND gpu_index = ?3 AND model = ?4
               AND provider = ?5 AND region = ?6 AND zone = ?7 AND instance_type = ?8 AND labels = ?9",
            key,
            |r| r.get(0),
        )?;
        self.dims.insert(dims.clone(), id);
        group.new_dims.push(dims.clone());
        Ok(id)
    }

    fn process(&mut self, request: Request, group: &mut Group) {
        let Request::Apply {
            host,
            snapshots,
            done,
        } = request;
        group.waiters.push(done);
        group.batches += 1;
        if group.error.is_some() {
            return;
        }
        let max_gap = self.config.max_credited_gap.as_millis() as i64;
        let mut out = Vec::new();
        for snap in &snapshots {
            for s in &snap.gpus {
                let Some(gpu) = host.gpus.get(&s.uuid) else {
                    continue;
                };
                let key = (host.agent_id.clone(), s.uuid.clone());
                let before = self.ledger.cursor(&key).cloned();
                out.clear();
                if !self.ledger.apply(
                    &key,
                    &gpu.terms,
                    snap.timestamp_unix_ms,
                    s,
                    max_gap,
                    &mut out,
                ) {
                    continue;
                }
                group.prior.entry(key.clone()).or_insert(before);
                if out.is_empty() {
                    continue;
                }
                let id = match self.dim_id(&gpu.dims, group) {
                    Ok(id) => id,
                    Err(e) => {
                        group.error = Some(e.to_string());
                        return;
                    }
                };
                let total = group.totals.entry(key).or_default();
                for (hour, u) in &out {
                    total.add(u);
                    group.usage.entry((*hour, id)).or_default().add(u);
                    group
                        .daily
                        .entry((hour.div_euclid(24), id))
                        .or_default()
                        .add(u);
                }
            }
        }
    }

    fn write(&self, group: &Group) -> rusqlite::Result<()> {
        let cols = USAGE_COLUMNS.join(", ");
        let n = USAGE_COLUMNS.len();
        let placeholders = (0..n + 1)
            .map(|i| format!("?{}", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let updates = USAGE_COLUMNS
            .iter()
            .chain(std::iter::once(&"samples"))
            .map(|c| format!("{c} = {c} + excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        for (table, key, rows) in [
            ("usage", "hour", &group.usage),
            ("usage_daily", "day", &group.daily),
        ] {
            let mut stmt = self.conn.prepare_cached(&format!(
                "INSERT INTO {table} ({key}, gpu, {cols}, samples) VALUES (?1, ?2, {placeholders})
                 ON CONFLICT ({key}, gpu) DO UPDATE SET {updates}"
            ))?;
            for ((bucket, gpu), u) in rows {
                let mut values: Vec<rusqlite::types::Value> = vec![(*bucket).into(), (*gpu).into()];
                values.extend(usage_values(u));
                values.push((u.samples as i64).into());
                stmt.execute(rusqlite::params_from_iter(values))?;
            }
        }
        let mut totals = self.conn.prepare_cached(&format!(
            "INSERT INTO totals (host, uuid, {cols}, samples) VALUES (?1, ?2, {placeholders})
             ON CONFLICT (host, uuid) DO UPDATE SET {updates}"
        ))?;
        for ((host, uuid), u) in &group.totals {
            let mut values: Vec<rusqlite::types::Value> =
                vec![host.clone().into(), uuid.clone().into()];
            values.extend(usage_values(u));
            values.push((u.samples as i64).into());
            totals.execute(rusqlite::params_from_iter(values))?;
        }
        let mut cursors = self.conn.prepare_cached(
            "INSERT INTO cursors (host, uuid, timestamp_ms, boot_id, energy_mj, pcie_replays)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (host, uuid) DO UPDATE SET timestamp_ms = excluded.timestamp_ms,
               boot_id = excluded.boot_id, energy_mj = excluded.energy_mj,
               pcie_replays = excluded.pcie_replays",
        )?;
        for key in group.prior.keys() {
            if let Some(c) = self.ledger.cursor(key) {
                cursors.execute(params![
                    key.0,
                    key.1,
                    c.timestamp_ms,
                    c.boot_id,
                    c.energy_mj.map(|v| v as i64),
                    c.pcie_replays.map(|v| v as i64)
                ])?;
            }
        }
        Ok(())
    }

    fn commit(&mut self, mut group: Group) {
        let result = match group.error.take() {
            Some(e) => Err(e),
            None => self
                .write(&group)
                .and_then(|()| self.conn.execute_batch("COMMIT"))
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => {
                {
                    let mut totals = self.totals.write().unwrap_or_else(|p| p.into_inner());
                    for (k, u) in group.totals.drain() {
                        totals.entry(k).or_default().add(&u);
                    }
                }
                debug!(
                    batches = group.batches,
                    rows = group.usage.len(),
                    "ledger group committed"
                );
                for w in group.waiters {
                    let _ = w.send(Ok(()));
                }
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                // Forget what this group did in memory, so a resend is applied afresh.
                for (k, prior) in group.prior.drain() {
                    self.ledger.restore(k, prior);
                }
                for d in &group.new_dims {
                    self.dims.remove(d);
                }
                error!(error = %e, batches = group.batches, "ledger commit failed: these batches are not acknowledged and agents will resend them; check the data directory's disk");
                let err = Arc::new(StoreError::Write(e));
                for w in group.waiters {
                    let _ = w.send(Err(err.clone()));
                }
            }
        }
    }

    fn prune(&mut self) {
        self.last_prune = Some(Instant::now());
        let keep_ms = self.config.retention.as_millis() as i64;
        let cutoff_hour = (now_ms() - keep_ms).div_euclid(HOUR_MS);
        match self
            .conn
            .execute("DELETE FROM usage WHERE hour < ?1", [cutoff_hour])
            .and_then(|n| {
                // A day goes once all its hours have.
                let days = self.conn.execute(
                    "DELETE FROM usage_daily WHERE day < ?1",
                    [cutoff_hour.div_euclid(24)],
                )?;
                Ok(n + days)
            }) {
            Ok(0) => {}
            Ok(n) => info!(rows = n, "pruned ledger rows older than the retention"),
            Err(e) => error!(error = %e, "cannot prune old ledger rows; the ledger keeps growing"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::report::{self, DAY_MS, Window};
    use gpulse_gpu::GpuBackend;
    use gpulse_gpu::simulator::Simulator;

    #[tokio::test]
    async fn reports_over_days_and_edge_hours_match_the_hourly_rows() {
        let dir = tempfile::tempdir().unwrap();
        let handle = start(dir.path(), &LedgerConfig::default()).unwrap();
        let mut sim = Simulator::new("gpus=2,scenario=training,seed=9".parse().unwrap());
        let interval = 10 * 60_000;
        let t0 = 1_790_000_000_000 - 3 * DAY_MS;
        let host = LedgerHost {
            agent_id: "h".into(),
            gpus: sim
                .inventory()
                .iter()
                .map(|d| {
                    (
                        d.uuid.clone(),
                        LedgerGpu {
                            dims: GpuDims {
                                host: "h".into(),
                                uuid: d.uuid.clone(),
                                model: d.model.clone(),
                                provider: "aws".into(),
                                ..GpuDims::default()
                            },
                            terms: GpuTerms {
                                max_sm_clock_mhz: d.max_sm_clock_mhz,
                                price: None,
                                interval_ms: interval as u64,
                                boot_id: "b".into(),
                            },
                        },
                    )
                })
                .collect(),
        };
        let host = Arc::new(host);
        let snaps: Vec<Snapshot> = (0..3 * 144)
            .map(|i| {
                let t = t0 + i * interval;
                Snapshot {
                    timestamp_unix_ms: t,
                    gpus: sim.sample(t),
                }
            })
            .collect();
        for chunk in snaps.chunks(50) {
            let done = handle.apply(host.clone(), chunk.to_vec()).await.unwrap();
            done.await.unwrap().unwrap();
        }
        let conn = open_reader(handle.path()).unwrap();
        let hourly = |w: Window| -> f64 {
            conn.query_row(
                "SELECT COALESCE(SUM(observed_s), 0) FROM usage WHERE hour >= ?1 AND hour < ?2",
                [w.from_ms / HOUR_MS, w.to_ms / HOUR_MS],
                |r| r.get(0),
            )
            .unwrap()
        };
        for (from, to) in [
            (t0, t0 + 3 * DAY_MS),
            (t0 + 5 * HOUR_MS, t0 + 2 * DAY_MS + 7 * HOUR_MS),
            (t0 + 30 * HOUR_MS, t0 + 40 * HOUR_MS),
            (t0 - DAY_MS, t0 + 10 * DAY_MS),
        ] {
            let w = Window::aligned(from, to);
            let expect = hourly(w);
            assert!(expect > 0.0);
            for by_day in [false, true] {
                let rows = report::load(&conn, w, by_day).unwrap();
                let got: f64 = rows.iter().map(|r| r.usage.observed_s).sum();
                assert!(
                    (got - expect).abs() < 1e-6,
                    "{w:?} by_day={by_day}: {got} vs {expect}"
                );
            }
        }
    }
}
