//! The ledger's storage boundary. Everything else (ingest, HTTP reports, the `report`
//! command, the benches) sees [`StoreHandle`] (write side: batches in, totals out) and
//! [`LedgerReader`] (read side: usage over a window, per roll-up), never a database
//! connection. Each engine is one file behind [`WriteEngine`] and [`ReadEngine`]:
//! [`super::sqlite`] (the default, a file under the data directory) and
//! [`super::postgres`] (shared by several collectors).
//!
//! Writes go through one thread of the collector's own with group commits, so ingest
//! never blocks the async runtime and a batch is acknowledged only once its ledger rows
//! are committed. In one transaction a group writes: per GPU per hour bucket every
//! [`Usage`] field (`usage`), the same per UTC day (`usage_daily`, so a report over weeks
//! reads days and only its edge hours), per GPU the last snapshot applied and its
//! counters (`cursors`, so a replay changes nothing, whichever collector gets it), and
//! per GPU totals since first seen (`totals`, for the Prometheus counters). A batch
//! with a sequence number is applied only if [`delivery::verdict`] finds it new against
//! its agent's mark (`agent_seqs`), which moves in the same transaction: the ledger
//! and the fleet follow one rule, across restarts of the collector.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info};

use gpulse_gpu::Snapshot;

use super::holders;
use super::ledger::{Cursor, GpuTerms, HOUR_MS, Ledger, USAGE_FIELDS, Usage};
use super::postgres::PgTarget;
use crate::config::LedgerConfig;
use crate::delivery::{self, SeqMark, Verdict};

pub use super::sqlite::LEDGER_FILE;

/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Times a group is tried when the database aborts it for a conflict with another
/// writer (a serialization failure or a deadlock); each try starts from what is
/// committed then.
const CONFLICT_TRIES: usize = 5;

/// Why the ledger store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the ledger {target}: {reason}; {hint}")]
    Open {
        target: String,
        reason: String,
        hint: &'static str,
    },
    #[error(
        "the ledger {target} has schema version {found}, newer than this collector's {known}: \
         upgrade the collector to a version that knows schema {found}, or point it at another ledger"
    )]
    NewerSchema {
        target: String,
        found: i64,
        known: i64,
    },
    #[error("ledger.url (--ledger-url, GPULSE_COLLECTOR_LEDGER_URL) {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("ledger write failed: {0}; the batch is not acknowledged and the agent will resend it")]
    Write(String),
    #[error("ledger query failed: {0}")]
    Read(String),
    #[error("the ledger writer has stopped; the collector is shutting down")]
    Closed,
}

/// The usage columns and `samples`, in [`USAGE_FIELDS`] order.
pub fn usage_columns() -> impl Iterator<Item = &'static str> {
    USAGE_FIELDS.iter().map(|f| f.name)
}

/// `SUM(c1), SUM(c2), ...` over the usage columns, for report queries.
pub fn usage_sums(prefix: &str) -> String {
    usage_columns()
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
    /// The Kubernetes container the time is attributed to ([`super::holders`]): empty
    /// when the host does not say, [`super::holders::UNALLOCATED`] when nobody holds the
    /// GPU. A GPU held by two pods over an hour has a row for each.
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl GpuDims {
    pub fn labels_json(&self) -> String {
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

/// A GPU as the cursors and totals know it: (agent id, uuid).
pub type GpuKey = (String, String);

/// What a writer starts from: each GPU's cursor and totals as stored.
pub type Stored = (HashMap<GpuKey, Cursor>, HashMap<GpuKey, Usage>);

/// Where the ledger lives.
#[derive(Debug, Clone)]
pub enum LedgerTarget {
    /// A SQLite file: one collector writes it.
    Sqlite(PathBuf),
    /// A PostgreSQL database: any number of collectors share it.
    Postgres(Arc<PgTarget>),
}

impl LedgerTarget {
    /// `url` when set (`ledger.url`), else the SQLite file under `data_dir`.
    pub fn new(url: Option<&str>, data_dir: &std::path::Path) -> Result<Self, StoreError> {
        match url {
            Some(u) => Ok(LedgerTarget::Postgres(Arc::new(PgTarget::parse(u)?))),
            None => Ok(LedgerTarget::Sqlite(data_dir.join(LEDGER_FILE))),
        }
    }

    /// What to call the ledger in logs and errors: never a password.
    pub fn describe(&self) -> String {
        match self {
            LedgerTarget::Sqlite(p) => p.display().to_string(),
            LedgerTarget::Postgres(t) => t.to_string(),
        }
    }

    fn writer(&self) -> Result<Box<dyn WriteEngine>, StoreError> {
        Ok(match self {
            LedgerTarget::Sqlite(p) => Box::new(super::sqlite::SqliteWriter::open(p)?),
            LedgerTarget::Postgres(t) => Box::new(super::postgres::PgWriter::open(t)?),
        })
    }

    fn reader(&self) -> Result<Box<dyn ReadEngine>, StoreError> {
        Ok(match self {
            LedgerTarget::Sqlite(p) => Box::new(super::sqlite::SqliteReader::open(p)?),
            LedgerTarget::Postgres(t) => Box::new(super::postgres::PgReader::open(t)?),
        })
    }
}

/// A database error as the writer sees it: whether trying again may succeed.
#[derive(Debug)]
pub struct EngineError {
    pub message: String,
    /// The database aborted the transaction for a conflict with another writer.
    pub conflict: bool,
}

impl EngineError {
    pub fn new(message: impl std::fmt::Display) -> Self {
        EngineError {
            message: message.to_string(),
            conflict: false,
        }
    }
}

/// What one transaction writes.
#[derive(Debug, Default)]
pub struct Rows {
    /// Per (hour, GPU dimension id).
    pub hourly: HashMap<(i64, i64), Usage>,
    /// Per (UTC day, GPU dimension id).
    pub daily: HashMap<(i64, i64), Usage>,
    /// Added to each GPU's totals.
    pub totals: HashMap<GpuKey, Usage>,
    /// Each GPU's cursor after the transaction.
    pub cursors: Vec<(GpuKey, Cursor)>,
}

/// The write side of one engine. Used by one thread; every call but `begin` runs inside
/// the transaction `begin` opened.
pub trait WriteEngine: Send {
    /// Cursors and totals as stored, at start.
    fn load(&mut self) -> Result<Stored, EngineError>;
    fn begin(&mut self) -> Result<(), EngineError>;
    /// The stored cursors of `keys` (sorted), locked until the transaction ends, when
    /// other writers may have moved them; `None` when this writer is the only one and its
    /// own cursors are the truth.
    fn lock_cursors(
        &mut self,
        keys: &[GpuKey],
    ) -> Result<Option<HashMap<GpuKey, Cursor>>, EngineError>;
    /// The id of a GPU's dimensions row, created when new.
    fn dim_id(&mut self, dims: &GpuDims) -> Result<i64, EngineError>;
    /// Adds the rows to what is stored; returns the new totals of the GPUs written.
    fn write(&mut self, rows: &Rows) -> Result<Vec<(GpuKey, Usage)>, EngineError>;
    fn commit(&mut self) -> Result<(), EngineError>;
    fn rollback(&mut self);
    /// Deletes hourly rows before `cutoff_hour` and daily rows before its day.
    fn prune(&mut self, cutoff_hour: i64) -> Result<usize, EngineError>;
    /// Every agent's delivery mark as stored, at start; empty when `lock_marks` reads
    /// them in each transaction instead.
    fn load_marks(&mut self) -> Result<HashMap<String, SeqMark>, EngineError>;
    /// The stored marks of `agents` (sorted), locked until the transaction ends, when
    /// other writers may have moved them; `None` when this writer's own are the truth.
    fn lock_marks(
        &mut self,
        agents: &[String],
    ) -> Result<Option<HashMap<String, SeqMark>>, EngineError>;
    /// Stores agents' marks, inside the transaction that applies their batches.
    fn write_marks(&mut self, marks: &[(String, SeqMark)]) -> Result<(), EngineError>;
    /// The smallest real write, inside a transaction: whether the ledger can take a
    /// batch now.
    fn probe(&mut self) -> Result<(), EngineError>;
}

/// Which roll-up a report reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    /// Keyed by hour since the epoch.
    Hourly,
    /// Keyed by UTC day since the epoch.
    Daily,
}

/// Where a roll-up's rows are and how a sum over them groups, in SQL both engines
/// read alike.
pub(crate) struct RollupSql {
    pub table: &'static str,
    /// The key column a range is over.
    pub key: &'static str,
    /// The UTC day of a row.
    pub day: &'static str,
    /// The GROUP BY list: per GPU, or per GPU per day.
    pub group: String,
}

impl Rollup {
    pub(crate) fn sql(self, per_day: bool) -> RollupSql {
        let (table, key, day) = match self {
            Rollup::Hourly => ("usage", "hour", "hour / 24"),
            Rollup::Daily => ("usage_daily", "day", "day"),
        };
        RollupSql {
            table,
            key,
            day,
            group: if per_day {
                format!("gpu, {day}")
            } else {
                "gpu".into()
            },
        }
    }
}

/// Usage of one GPU (its dimension id) summed over a range, or over one day of it.
#[derive(Debug, Clone)]
pub struct UsageRow {
    pub gpu: i64,
    /// The UTC day (since the epoch) when summed per day; else the range's first row's.
    pub day: i64,
    pub usage: Usage,
}

/// The read side of one engine.
pub trait ReadEngine: Send {
    /// Every GPU's dimensions by id.
    fn dims(&mut self) -> Result<HashMap<i64, GpuDims>, StoreError>;
    /// Per-GPU sums of the roll-up's rows with keys in [from, to); `per_day`: per GPU and
    /// UTC day (an hour's day is hour / 24).
    fn sum_usage(
        &mut self,
        rollup: Rollup,
        from: i64,
        to: i64,
        per_day: bool,
    ) -> Result<Vec<UsageRow>, StoreError>;
    /// Whether the connection can serve another request.
    fn usable(&self) -> bool {
        true
    }
}

/// A reader of the ledger: reports, the `report` command, benches and tests.
pub struct LedgerReader {
    engine: Box<dyn ReadEngine>,
}

impl std::fmt::Debug for LedgerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerReader")
    }
}

impl LedgerReader {
    /// Opens the ledger read-only; works while collectors write to it.
    pub fn open(target: &LedgerTarget) -> Result<Self, StoreError> {
        Ok(LedgerReader {
            engine: target.reader()?,
        })
    }

    pub fn dims(&mut self) -> Result<HashMap<i64, GpuDims>, StoreError> {
        self.engine.dims()
    }

    pub fn sum_usage(
        &mut self,
        rollup: Rollup,
        from: i64,
        to: i64,
        per_day: bool,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.engine.sum_usage(rollup, from, to, per_day)
    }
}

/// Where reports read the ledger, keeping one idle connection for the next report.
#[derive(Debug, Clone)]
pub struct LedgerSource {
    target: LedgerTarget,
    idle: Arc<Mutex<Option<LedgerReader>>>,
}

impl LedgerSource {
    pub fn new(target: LedgerTarget) -> Self {
        LedgerSource {
            target,
            idle: Arc::new(Mutex::new(None)),
        }
    }

    pub fn target(&self) -> &LedgerTarget {
        &self.target
    }

    /// Runs `f` on a reader (blocking: call it off the async workers).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&mut LedgerReader) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut reader = match idle.filter(|r| r.engine.usable()) {
            Some(r) => r,
            None => LedgerReader::open(&self.target)?,
        };
        let out = f(&mut reader)?;
        *self.idle.lock().unwrap_or_else(|p| p.into_inner()) = Some(reader);
        Ok(out)
    }
}

/// A batch as its agent numbered it: the host boot and the sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchId {
    pub boot_id: String,
    pub seq: u64,
}

enum Request {
    Apply {
        host: Arc<LedgerHost>,
        /// `None`: rows from elsewhere (benches, tests), applied by their timestamps only.
        batch: Option<BatchId>,
        snapshots: Vec<Snapshot>,
        done: oneshot::Sender<Result<Verdict, Arc<StoreError>>>,
    },
    /// Try a write, to learn whether a failing ledger works again.
    Probe,
}

/// Whether the ledger's last write (a group commit, or a probe while failing) worked:
/// what readiness reports.
#[derive(Debug, Default)]
pub struct LedgerHealth {
    failure: Mutex<Option<String>>,
    probe_queued: AtomicBool,
}

impl LedgerHealth {
    /// Why the last write failed; `None` when it worked (or none was tried yet).
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self, outcome: Result<(), &str>) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = outcome.err().map(str::to_string);
    }
}

/// The async side of the store: submit batches, read totals, open readers.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Request>,
    totals: Arc<Totals>,
    source: LedgerSource,
    health: Arc<LedgerHealth>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

/// A pending acknowledgement: resolves once the batch's ledger rows are committed, to
/// whether the batch was new (applied) or a duplicate (nothing written but its
/// agent's unchanged mark).
pub type Durable = oneshot::Receiver<Result<Verdict, Arc<StoreError>>>;

impl StoreHandle {
    /// Queues snapshots (already validated) for the ledger, applied by their timestamps
    /// alone: how rows from elsewhere (benches, tests) come in. Waits only when the
    /// queue is full; the returned receiver resolves at the group commit.
    pub async fn apply(
        &self,
        host: Arc<LedgerHost>,
        snapshots: Vec<Snapshot>,
    ) -> Result<Durable, StoreError> {
        self.submit(host, None, snapshots).await
    }

    /// Queues an agent's batch (already validated): applied only if
    /// [`delivery::verdict`] finds it new against the agent's stored mark, decided in
    /// the transaction that commits it.
    pub async fn apply_batch(
        &self,
        host: Arc<LedgerHost>,
        batch: BatchId,
        snapshots: Vec<Snapshot>,
    ) -> Result<Durable, StoreError> {
        self.submit(host, Some(batch), snapshots).await
    }

    async fn submit(
        &self,
        host: Arc<LedgerHost>,
        batch: Option<BatchId>,
        snapshots: Vec<Snapshot>,
    ) -> Result<Durable, StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Request::Apply {
                host,
                batch,
                snapshots,
                done,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// Whether the ledger can durably take a batch now, as its last write showed; when it
    /// could not, a probe write is queued (one at a time) so that a ledger that works
    /// again is seen as such even while no agent sends.
    pub fn writable(&self) -> Result<(), String> {
        let Some(failure) = self.health.failure() else {
            return Ok(());
        };
        if !self.health.probe_queued.swap(true, Ordering::AcqRel)
            && self.tx.try_send(Request::Probe).is_err()
        {
            // The queue is full of batches: their commit will tell.
            self.health.probe_queued.store(false, Ordering::Release);
        }
        Err(failure)
    }

    /// Per-GPU totals since each GPU was first seen.
    pub fn totals(&self) -> &Arc<Totals> {
        &self.totals
    }

    /// Where reports read this ledger.
    pub fn source(&self) -> &LedgerSource {
        &self.source
    }
}

/// Opens (or creates, or migrates) the ledger and starts its writer thread. The engine
/// is opened on that thread: a PostgreSQL client runs its own runtime, which may not be
/// started from the async runtime's workers.
pub fn start(target: &LedgerTarget, config: &LedgerConfig) -> Result<StoreHandle, StoreError> {
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let (opened_tx, opened) = std::sync::mpsc::sync_channel(1);
    let (thread_target, config) = (target.clone(), config.clone());
    std::thread::Builder::new()
        .name("gpulse-ledger".into())
        .spawn(move || {
            let mut writer = match Writer::open(&thread_target, config) {
                Ok(w) => w,
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            let _ = opened_tx.send(Ok((writer.totals.clone(), writer.health.clone())));
            writer.prune();
            writer.run(rx);
        })
        .map_err(|e| StoreError::Write(format!("cannot start the ledger thread: {e}")))?;
    let (totals, health) = opened.recv().map_err(|_| StoreError::Closed)??;
    Ok(StoreHandle {
        tx,
        totals,
        source: LedgerSource::new(target.clone()),
        health,
    })
}

/// Adds hourly rows (and their daily roll-up and totals) to a ledger in one transaction
/// per `chunk` rows: how a ledger is filled from elsewhere (the benches' 30 days).
pub fn import(
    target: &LedgerTarget,
    rows: impl IntoIterator<Item = (Arc<GpuDims>, i64, Usage)>,
    chunk: usize,
) -> Result<(), StoreError> {
    let mut engine = target.writer()?;
    let fail = |e: EngineError| StoreError::Write(e.message);
    let mut ids: HashMap<Arc<GpuDims>, i64> = HashMap::new();
    let mut batch = Rows::default();
    let mut n = 0;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        engine.begin().map_err(fail)?;
        for (dims, hour, u) in rows.by_ref() {
            let id = match ids.get(&dims) {
                Some(id) => *id,
                None => {
                    let id = engine.dim_id(&dims).map_err(fail)?;
                    ids.insert(dims.clone(), id);
                    id
                }
            };
            batch.hourly.entry((hour, id)).or_default().add(&u);
            batch
                .daily
                .entry((hour.div_euclid(24), id))
                .or_default()
                .add(&u);
            batch
                .totals
                .entry((dims.host.clone(), dims.uuid.clone()))
                .or_default()
                .add(&u);
            n += 1;
            if n % chunk.max(1) == 0 {
                break;
            }
        }
        engine.write(&batch).map_err(fail)?;
        engine.commit().map_err(fail)?;
        batch = Rows::default();
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Writer {
    engine: Box<dyn WriteEngine>,
    ledger: Ledger<GpuKey>,
    /// Each agent's delivery mark, as committed (or as this transaction moves it).
    marks: HashMap<String, SeqMark>,
    health: Arc<LedgerHealth>,
    dims: HashMap<GpuDims, i64>,
    totals: Arc<Totals>,
    config: LedgerConfig,
    last_prune: Option<Instant>,
}

/// What one transaction of a group collects.
#[derive(Default)]
struct Group {
    rows: Rows,
    /// Cursors as they were before this try touched them, to restore on failure.
    prior: HashMap<GpuKey, Option<Cursor>>,
    /// Agents' marks as they were before this try touched them, likewise.
    prior_marks: HashMap<String, Option<SeqMark>>,
    /// Per request, in order: whether it was new.
    verdicts: Vec<Verdict>,
    new_dims: Vec<GpuDims>,
}

impl Writer {
    fn open(target: &LedgerTarget, config: LedgerConfig) -> Result<Writer, StoreError> {
        let mut engine = target.writer()?;
        let opening = |e: EngineError| StoreError::Open {
            target: target.describe(),
            reason: e.message,
            hint: "check the ledger's settings",
        };
        let (cursors, totals) = engine.load().map_err(opening)?;
        let marks = engine.load_marks().map_err(opening)?;
        info!(ledger = %target.describe(), gpus = totals.len(), "ledger opened");
        Ok(Writer {
            engine,
            ledger: Ledger::with_cursors(cursors),
            marks,
            health: Arc::default(),
            dims: HashMap::new(),
            totals: Arc::new(RwLock::new(totals)),
            config,
            last_prune: None,
        })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let deadline = Instant::now() + self.config.commit_interval;
            let mut requests = vec![first];
            let mut open = true;
            while requests.len() < self.config.commit_max_batches {
                match rx.try_recv() {
                    Ok(r) => requests.push(r),
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
            let probes = requests.len();
            requests.retain(|r| matches!(r, Request::Apply { .. }));
            let probes = probes - requests.len();
            if !requests.is_empty() {
                self.commit_group(requests);
            } else if probes > 0 {
                self.probe();
            }
            if probes > 0 {
                self.health.probe_queued.store(false, Ordering::Release);
            }
            if self.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                self.prune();
            }
            if !open {
                break;
            }
        }
        debug!("ledger writer stopped");
    }

    /// Applies and commits the requests in one transaction, trying again from what is
    /// committed when the database reports a conflict with another writer.
    fn commit_group(&mut self, requests: Vec<Request>) {
        let mut tries = 0;
        let result = loop {
            tries += 1;
            let mut group = Group::default();
            match self.try_group(&requests, &mut group) {
                Ok(totals) => break Ok((group, totals)),
                Err(e) => {
                    self.engine.rollback();
                    // Forget what this try did in memory, so the next one (or a resend)
                    // is applied afresh.
                    for (k, prior) in group.prior.drain() {
                        self.ledger.restore(k, prior);
                    }
                    for (agent, prior) in group.prior_marks.drain() {
                        match prior {
                            Some(m) => self.marks.insert(agent, m),
                            None => self.marks.remove(&agent),
                        };
                    }
                    for d in &group.new_dims {
                        self.dims.remove(d);
                    }
                    if e.conflict && tries < CONFLICT_TRIES {
                        debug!(error = %e.message, tries, "ledger transaction conflicted with another writer; trying again");
                        continue;
                    }
                    break Err(e.message);
                }
            }
        };
        let batches = requests.len();
        let waiters = requests.into_iter().filter_map(|r| match r {
            Request::Apply { done, .. } => Some(done),
            Request::Probe => None,
        });
        self.health
            .record(result.as_ref().map(|_| ()).map_err(String::as_str));
        match result {
            Ok((group, fresh)) => {
                {
                    let mut totals = self.totals.write().unwrap_or_else(|p| p.into_inner());
                    for (k, u) in fresh {
                        totals.insert(k, u);
                    }
                }
                debug!(
                    batches,
                    rows = group.rows.hourly.len(),
                    "ledger group committed"
                );
                for (w, verdict) in waiters.zip(group.verdicts) {
                    let _ = w.send(Ok(verdict));
                }
            }
            Err(e) => {
                error!(error = %e, batches, "ledger commit failed: these batches are not acknowledged and agents will resend them; check the ledger's disk or database");
                let err = Arc::new(StoreError::Write(e));
                for w in waiters {
                    let _ = w.send(Err(err.clone()));
                }
            }
        }
    }

    fn try_group(
        &mut self,
        requests: &[Request],
        group: &mut Group,
    ) -> Result<Vec<(GpuKey, Usage)>, EngineError> {
        self.engine.begin()?;
        let keys: BTreeSet<GpuKey> = requests
            .iter()
            .flat_map(|r| match r {
                Request::Apply {
                    host, snapshots, ..
                } => Some(snapshots.iter().flat_map(move |snap| {
                    snap.gpus
                        .iter()
                        .filter(|s| host.gpus.contains_key(&s.uuid))
                        .map(|s| (host.agent_id.clone(), s.uuid.clone()))
                })),
                Request::Probe => None,
            })
            .flatten()
            .collect();
        let keys: Vec<GpuKey> = keys.into_iter().collect();
        if let Some(mut stored) = self.engine.lock_cursors(&keys)? {
            // Another collector may have applied some of these since this one last
            // did: what is committed is the truth, whatever this one remembers.
            for k in keys {
                let now = stored.remove(&k);
                let before = self.ledger.cursor(&k).cloned();
                if now != before {
                    group.prior.insert(k.clone(), before);
                    self.ledger.restore(k, now);
                }
            }
        }
        self.refresh_marks(requests, group)?;
        for r in requests {
            let verdict = self.process(r, group)?;
            group.verdicts.push(verdict);
        }
        group.rows.cursors = group
            .prior
            .keys()
            .filter_map(|k| self.ledger.cursor(k).map(|c| (k.clone(), c.clone())))
            .collect();
        let totals = self.engine.write(&group.rows)?;
        let marks: Vec<(String, SeqMark)> = group
            .prior_marks
            .keys()
            .filter_map(|a| self.marks.get(a).map(|m| (a.clone(), m.clone())))
            .collect();
        self.engine.write_marks(&marks)?;
        self.engine.commit()?;
        Ok(totals)
    }

    /// Takes the stored marks of the group's agents as the truth when other writers may
    /// have moved them.
    fn refresh_marks(
        &mut self,
        requests: &[Request],
        group: &mut Group,
    ) -> Result<(), EngineError> {
        let agents: BTreeSet<String> = requests
            .iter()
            .filter_map(|r| match r {
                Request::Apply {
                    host,
                    batch: Some(_),
                    ..
                } => Some(host.agent_id.clone()),
                _ => None,
            })
            .collect();
        let agents: Vec<String> = agents.into_iter().collect();
        if let Some(mut stored) = self.engine.lock_marks(&agents)? {
            for agent in agents {
                let now = stored.remove(&agent);
                let before = self.marks.get(&agent).cloned();
                if now != before {
                    group.prior_marks.insert(agent.clone(), before);
                    match now {
                        Some(m) => self.marks.insert(agent, m),
                        None => self.marks.remove(&agent),
                    };
                }
            }
        }
        Ok(())
    }

    /// A write and its commit, to see whether a failing ledger works again.
    fn probe(&mut self) {
        let outcome = self
            .engine
            .begin()
            .and_then(|()| self.engine.probe())
            .and_then(|()| self.engine.commit());
        match &outcome {
            Ok(()) => info!("the ledger takes writes again"),
            Err(e) => {
                self.engine.rollback();
                debug!(error = %e.message, "the ledger still cannot take a write");
            }
        }
        self.health
            .record(outcome.as_ref().map(|_| ()).map_err(|e| e.message.as_str()));
    }

    fn dim_id(&mut self, dims: &GpuDims, group: &mut Group) -> Result<i64, EngineError> {
        if let Some(id) = self.dims.get(dims) {
            return Ok(*id);
        }
        let id = self.engine.dim_id(dims)?;
        self.dims.insert(dims.clone(), id);
        group.new_dims.push(dims.clone());
        Ok(id)
    }

    /// Applies one request unless its batch is a duplicate; says which it was.
    fn process(&mut self, request: &Request, group: &mut Group) -> Result<Verdict, EngineError> {
        let Request::Apply {
            host,
            batch,
            snapshots,
            ..
        } = request
        else {
            return Ok(Verdict::Duplicate);
        };
        if let Some(b) = batch {
            let mark = self.marks.get(&host.agent_id);
            if delivery::verdict(mark, &b.boot_id, b.seq) == Verdict::Duplicate {
                return Ok(Verdict::Duplicate);
            }
            let before = mark.cloned();
            group
                .prior_marks
                .entry(host.agent_id.clone())
                .or_insert(before);
            self.marks.insert(
                host.agent_id.clone(),
                SeqMark {
                    boot_id: b.boot_id.clone(),
                    seq: b.seq,
                },
            );
        }
        let max_gap = self.config.max_credited_gap.as_millis() as i64;
        let mut out = Vec::new();
        for snap in snapshots {
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
                // Each holder's share gets a row of its own, under the GPU's dimensions
                // and the holder's; the GPU's totals stay whole.
                let shares = holders::shares(s.allocation.as_ref());
                let mut ids = Vec::with_capacity(shares.len());
                for (holder, _) in &shares {
                    let dims = GpuDims {
                        namespace: holder.namespace.clone(),
                        pod: holder.pod.clone(),
                        container: holder.container.clone(),
                        ..gpu.dims.clone()
                    };
                    ids.push(self.dim_id(&dims, group)?);
                }
                let total = group.rows.totals.entry(key).or_default();
                for (hour, u) in &out {
                    total.add(u);
                    for (id, (_, part)) in ids.iter().zip(holders::split(u, &shares)) {
                        group
                            .rows
                            .hourly
                            .entry((*hour, *id))
                            .or_default()
                            .add(&part);
                        group
                            .rows
                            .daily
                            .entry((hour.div_euclid(24), *id))
                            .or_default()
                            .add(&part);
                    }
                }
            }
        }
        Ok(Verdict::New)
    }

    fn prune(&mut self) {
        self.last_prune = Some(Instant::now());
        let keep_ms = self.config.retention.as_millis() as i64;
        let cutoff_hour = (now_ms() - keep_ms).div_euclid(HOUR_MS);
        match self.engine.prune(cutoff_hour) {
            Ok(0) => {}
            Ok(n) => info!(rows = n, "pruned ledger rows older than the retention"),
            Err(e) => {
                error!(error = %e.message, "cannot prune old ledger rows; the ledger keeps growing");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cost::ledger::FieldValue;
    use crate::cost::report::{self, DAY_MS, Window};
    use gpulse_gpu::GpuBackend;
    use gpulse_gpu::simulator::Simulator;

    /// Each engine's ledger, new and empty: the tests below run on every one.
    pub(crate) fn engines(dir: &std::path::Path, name: &str) -> Vec<LedgerTarget> {
        vec![
            LedgerTarget::Sqlite(dir.join(LEDGER_FILE)),
            LedgerTarget::new(
                Some(&gpulse_testkit::postgres::server().database(name)),
                dir,
            )
            .unwrap(),
        ]
    }

    /// A host of `gpus` simulated GPUs sampled every `interval_ms`.
    pub(crate) fn sim_host(
        agent: &str,
        spec: &str,
        interval_ms: u64,
    ) -> (Arc<LedgerHost>, Simulator) {
        let sim = Simulator::new(spec.parse().unwrap());
        let host = LedgerHost {
            agent_id: agent.into(),
            gpus: sim
                .inventory()
                .iter()
                .map(|d| {
                    (
                        d.uuid.clone(),
                        LedgerGpu {
                            dims: GpuDims {
                                host: agent.into(),
                                uuid: d.uuid.clone(),
                                model: d.model.clone(),
                                provider: "aws".into(),
                                ..GpuDims::default()
                            },
                            terms: GpuTerms {
                                max_sm_clock_mhz: d.max_sm_clock_mhz,
                                price: None,
                                interval_ms,
                                boot_id: "b".into(),
                            },
                        },
                    )
                })
                .collect(),
        };
        (Arc::new(host), sim)
    }

    /// `n` snapshots of `sim`, `interval_ms` apart from `t0`.
    fn snapshots(sim: &mut Simulator, t0: i64, interval_ms: u64, n: i64) -> Vec<Snapshot> {
        (0..n)
            .map(|i| {
                let t = t0 + i * interval_ms as i64;
                Snapshot {
                    timestamp_unix_ms: t,
                    gpus: sim.sample(t),
                }
            })
            .collect()
    }

    /// Applies each chunk and waits for its commit, from outside any runtime (the
    /// PostgreSQL client blocks).
    pub(crate) fn apply_all(
        rt: &tokio::runtime::Runtime,
        handle: &StoreHandle,
        host: &Arc<LedgerHost>,
        snaps: &[Snapshot],
        chunk: usize,
    ) {
        for c in snaps.chunks(chunk) {
            let done = rt.block_on(handle.apply(host.clone(), c.to_vec())).unwrap();
            done.blocking_recv().unwrap().unwrap();
        }
    }

    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn reports_over_days_and_edge_hours_match_the_hourly_rows() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        for target in engines(dir.path(), "edges") {
            let handle = start(&target, &LedgerConfig::default()).unwrap();
            let interval = 10 * 60_000;
            let (host, mut sim) = sim_host("h", "gpus=2,scenario=training,seed=9", interval);
            let t0 = 1_790_000_000_000 - 3 * DAY_MS;
            let snaps = snapshots(&mut sim, t0, interval, 3 * 144);
            apply_all(&rt, &handle, &host, &snaps, 50);
            let mut reader = LedgerReader::open(&target).unwrap();
            let mut hourly = |w: Window| -> f64 {
                reader
                    .sum_usage(
                        Rollup::Hourly,
                        w.from_ms / HOUR_MS,
                        w.to_ms / HOUR_MS,
                        false,
                    )
                    .unwrap()
                    .iter()
                    .map(|r| r.usage.observed_s)
                    .sum()
            };
            let windows = [
                (t0, t0 + 3 * DAY_MS),
                (t0 + 5 * HOUR_MS, t0 + 2 * DAY_MS + 7 * HOUR_MS),
                (t0 + 30 * HOUR_MS, t0 + 40 * HOUR_MS),
                (t0 - DAY_MS, t0 + 10 * DAY_MS),
            ]
            .map(|(from, to)| Window::aligned(from, to));
            let expected: Vec<f64> = windows.iter().map(|w| hourly(*w)).collect();
            for (w, expect) in windows.iter().zip(expected) {
                assert!(expect > 0.0);
                for by_day in [false, true] {
                    let rows = report::load(&mut reader, *w, by_day).unwrap();
                    let got: f64 = rows.iter().map(|r| r.usage.observed_s).sum();
                    assert!(
                        (got - expect).abs() < 1e-6,
                        "{target:?} {w:?} by_day={by_day}: {got} vs {expect}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_engine_stores_and_reads_the_same_usage() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let interval = 60_000;
        let t0 = 1_790_000_000_000 - DAY_MS;
        let mut reports = Vec::new();
        for target in engines(dir.path(), "same") {
            let handle = start(&target, &LedgerConfig::default()).unwrap();
            let (host, mut sim) = sim_host("h", "gpus=3,scenario=training,seed=4", interval);
            let snaps = snapshots(&mut sim, t0, interval, 200);
            apply_all(&rt, &handle, &host, &snaps, 7);
            // A replay, whole and in pieces, changes nothing.
            apply_all(&rt, &handle, &host, &snaps, 13);
            let w = Window::aligned(t0 - DAY_MS, t0 + DAY_MS);
            let mut reader = LedgerReader::open(&target).unwrap();
            let rows = report::load(&mut reader, w, true).unwrap();
            let totals = handle.totals().read().unwrap().clone();
            reports.push((report::json(&rows, w, &[report::Dim::Gpu]), totals));
        }
        let (sqlite, pg) = (&reports[0], &reports[1]);
        assert_close(
            &serde_json::to_value(&sqlite.0).unwrap(),
            &serde_json::to_value(&pg.0).unwrap(),
            "report",
        );
        assert!(!sqlite.1.is_empty());
        assert_eq!(sqlite.1.len(), pg.1.len());
        for (k, a) in &sqlite.1 {
            let b = pg.1[k];
            for f in &USAGE_FIELDS {
                let (x, y) = ((f.get)(a), (f.get)(&b));
                match (x, y) {
                    (FieldValue::Real(x), FieldValue::Real(y)) => {
                        assert!(
                            (x - y).abs() <= 1e-9 * (1.0 + x.abs()),
                            "{}: {x} vs {y}",
                            f.name
                        )
                    }
                    _ => assert_eq!(x, y, "{}", f.name),
                }
            }
        }
    }

    /// Several writers (as several collectors would) on one PostgreSQL ledger, each
    /// delivering every batch of the same hosts at once: every snapshot counts once, and
    /// whatever each writer adds to the same GPU-hours adds up.
    #[test]
    fn concurrent_writers_on_one_database_count_every_snapshot_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = gpulse_testkit::postgres::server().database("concurrent");
        let shared = LedgerTarget::new(Some(&url), dir.path()).unwrap();
        let interval = 30_000;
        let t0 = 1_790_000_000_000 - DAY_MS;
        let hosts: Vec<(Arc<LedgerHost>, Vec<Snapshot>)> = (0..3)
            .map(|h| {
                let (host, mut sim) = sim_host(
                    &format!("h{h}"),
                    &format!("gpus=2,scenario=training,seed={h}"),
                    interval,
                );
                let snaps = snapshots(&mut sim, t0, interval, 240);
                (host, snaps)
            })
            .collect();
        let config = LedgerConfig {
            commit_interval: Duration::from_millis(1),
            ..LedgerConfig::default()
        };
        std::thread::scope(|scope| {
            for (w, chunk) in [5usize, 7, 11, 3].into_iter().enumerate() {
                let (hosts, shared, config) = (&hosts, &shared, &config);
                scope.spawn(move || {
                    let rt = runtime();
                    let handle = start(shared, config).unwrap();
                    // Every host's batches in order, the hosts interleaved, each writer
                    // starting at another host.
                    let mut pending = Vec::new();
                    for i in 0..240usize.div_ceil(chunk) {
                        for h in 0..hosts.len() {
                            let (host, snaps) = &hosts[(h + w) % hosts.len()];
                            let part = &snaps[(i * chunk).min(240)..((i + 1) * chunk).min(240)];
                            pending.push(
                                rt.block_on(handle.apply(host.clone(), part.to_vec()))
                                    .unwrap(),
                            );
                        }
                    }
                    for p in pending {
                        p.blocking_recv().unwrap().unwrap();
                    }
                });
            }
        });
        // The same batches, once, through one writer on SQLite.
        let rt = runtime();
        let alone = LedgerTarget::Sqlite(dir.path().join(LEDGER_FILE));
        let handle = start(&alone, &LedgerConfig::default()).unwrap();
        for (host, snaps) in &hosts {
            apply_all(&rt, &handle, host, snaps, 240);
        }
        let w = Window::aligned(t0 - DAY_MS, t0 + DAY_MS);
        let report = |target: &LedgerTarget| {
            let mut reader = LedgerReader::open(target).unwrap();
            let rows = report::load(&mut reader, w, true).unwrap();
            serde_json::to_value(report::json(&rows, w, &[report::Dim::Gpu])).unwrap()
        };
        let (once, shared_report) = (report(&alone), report(&shared));
        assert_close(&once, &shared_report, "report");
        let samples = shared_report["totals"]["gpu_hours"].as_f64().unwrap();
        assert!(samples > 0.0);
        // Totals for the Prometheus counters: what the database holds, whoever wrote it.
        let handle = start(&shared, &LedgerConfig::default()).unwrap();
        let totals = handle.totals().read().unwrap().clone();
        let want = start(&alone, &LedgerConfig::default())
            .unwrap()
            .totals()
            .read()
            .unwrap()
            .clone();
        assert_eq!(totals.len(), 6);
        for (k, u) in &want {
            assert_eq!(totals[k].samples, u.samples, "{k:?}");
            assert!((totals[k].observed_s - u.observed_s).abs() < 1e-6, "{k:?}");
        }
    }

    fn batch(boot: &str, seq: u64) -> BatchId {
        BatchId {
            boot_id: boot.into(),
            seq,
        }
    }

    /// Submits one agent batch and waits for its verdict, from outside any runtime.
    fn commit_batch(
        rt: &tokio::runtime::Runtime,
        handle: &StoreHandle,
        host: &Arc<LedgerHost>,
        id: BatchId,
        snaps: &[Snapshot],
    ) -> Verdict {
        let done = rt
            .block_on(handle.apply_batch(host.clone(), id, snaps.to_vec()))
            .unwrap();
        done.blocking_recv().unwrap().unwrap()
    }

    /// A seq already committed is a duplicate whatever it holds, on every engine and
    /// after the writer starts again: only the agent's mark decides, never the content.
    #[test]
    fn a_reused_seq_with_other_content_changes_no_ledger_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let interval = 5_000;
        let t0 = 1_790_000_000_000 - DAY_MS;
        for target in engines(dir.path(), "reused_seq") {
            let (host, mut sim) = sim_host("h", "gpus=2,scenario=training,seed=5", interval);
            let snaps = snapshots(&mut sim, t0, interval, 30);
            let handle = start(&target, &LedgerConfig::default()).unwrap();
            let totals = |h: &StoreHandle| h.totals().read().unwrap().clone();
            assert_eq!(
                commit_batch(&rt, &handle, &host, batch("b1", 7), &snaps[..10]),
                Verdict::New
            );
            let committed = totals(&handle);
            assert!(!committed.is_empty());
            // Newer snapshots under a seq already committed: counters that went up by
            // ten times, time that the first batch never covered.
            for seq in [7, 3] {
                assert_eq!(
                    commit_batch(&rt, &handle, &host, batch("b1", seq), &snaps[10..20]),
                    Verdict::Duplicate,
                    "{target:?} seq {seq}"
                );
            }
            assert_eq!(totals(&handle), committed, "{target:?}");
            drop(handle);
            let handle = start(&target, &LedgerConfig::default()).unwrap();
            assert_eq!(
                commit_batch(&rt, &handle, &host, batch("b1", 7), &snaps[10..20]),
                Verdict::Duplicate,
                "{target:?} after a restart"
            );
            assert_eq!(totals(&handle), committed, "{target:?} after a restart");
            assert_eq!(
                commit_batch(&rt, &handle, &host, batch("b1", 8), &snaps[10..20]),
                Verdict::New
            );
            assert_ne!(totals(&handle), committed);
            // A new boot starts a new sequence.
            assert_eq!(
                commit_batch(&rt, &handle, &host, batch("b2", 1), &snaps[20..]),
                Verdict::New
            );
        }
    }

    /// A ledger written before XID and ECC errors were counted gains their columns on
    /// either engine, keeps every hour it had, and counts errors from then on.
    #[test]
    fn a_ledger_from_before_error_counts_gains_them_and_keeps_its_hours() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let interval = 5_000;
        let t0 = 1_790_000_000_000 - DAY_MS;
        let pg = gpulse_testkit::postgres::server();
        let url = pg.database("before_errors");
        let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
        let targets = [
            LedgerTarget::Sqlite(dir.path().join(LEDGER_FILE)),
            LedgerTarget::new(Some(&url), dir.path()).unwrap(),
        ];
        for target in targets {
            let (host, mut sim) = sim_host("h", "gpus=2,scenario=xid,seed=3", interval);
            let snaps = snapshots(&mut sim, t0, interval, 40);
            let totals = |h: &StoreHandle| h.totals().read().unwrap().clone();
            let handle = start(&target, &LedgerConfig::default()).unwrap();
            commit_batch(&rt, &handle, &host, batch("b1", 1), &snaps[..20]);
            let before = totals(&handle);
            drop(handle);
            // Back to the schema before: no error columns anywhere.
            let tables = ["usage", "usage_daily", "totals"];
            match &target {
                LedgerTarget::Sqlite(path) => {
                    let conn = rusqlite::Connection::open(path).unwrap();
                    for t in tables {
                        for c in ["xid_errors", "ecc_uncorrected_errors"] {
                            conn.execute_batch(&format!("ALTER TABLE {t} DROP COLUMN {c}"))
                                .unwrap();
                        }
                    }
                    for c in ["xid_total", "ecc_uncorrected"] {
                        conn.execute_batch(&format!("ALTER TABLE cursors DROP COLUMN {c}"))
                            .unwrap();
                    }
                }
                LedgerTarget::Postgres(_) => {
                    for t in tables {
                        pg.psql(
                            db,
                            &format!(
                                "ALTER TABLE {t} DROP COLUMN xid_errors, DROP COLUMN ecc_uncorrected_errors"
                            ),
                        );
                    }
                    pg.psql(
                        db,
                        "ALTER TABLE cursors DROP COLUMN xid_total, DROP COLUMN ecc_uncorrected;
                         DELETE FROM gpulse_schema_migrations WHERE version >= 3",
                    );
                }
            }
            let handle = start(&target, &LedgerConfig::default()).unwrap();
            let reopened = totals(&handle);
            assert_eq!(reopened.len(), before.len(), "{target:?}");
            for (gpu, u) in before.iter() {
                let mut without_errors = *u;
                without_errors.xid_errors = 0;
                without_errors.ecc_uncorrected_errors = 0;
                assert_eq!(reopened[gpu], without_errors, "{target:?} {gpu:?}");
            }
            commit_batch(&rt, &handle, &host, batch("b1", 2), &snaps[20..]);
            let after = totals(&handle);
            assert!(
                after.values().any(|u| u.xid_errors > 0),
                "{target:?}: the xid scenario's events are counted: {after:?}"
            );
        }
    }

    /// Every field of `a` equals `b`'s, reals to rounding.
    fn assert_usage_close(a: &Usage, b: &Usage, at: &str) {
        for f in &USAGE_FIELDS {
            match ((f.get)(a), (f.get)(b)) {
                (FieldValue::Real(x), FieldValue::Real(y)) => assert!(
                    (x - y).abs() <= 1e-9 * (1.0 + y.abs()),
                    "{at} {}: {x} vs {y}",
                    f.name
                ),
                (x, y) => assert_eq!(x, y, "{at} {}", f.name),
            }
        }
    }

    /// GPUs held by pods, one of them shared by two pods for part of the time and handed
    /// over to nobody after: each holder gets its rows, the unheld time its bucket, and
    /// the report's namespaces add up to the fleet.
    #[test]
    fn gpu_time_is_split_over_its_holders_and_namespaces_add_up_to_the_fleet() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let interval = 60_000;
        let t0 = 1_790_000_000_000 - DAY_MS;
        for target in engines(dir.path(), "holders") {
            let handle = start(&target, &LedgerConfig::default()).unwrap();
            let (host, mut sim) = sim_host("h", "gpus=4,pods=2,scenario=training,seed=6", interval);
            let mut snaps = snapshots(&mut sim, t0, interval, 120);
            let shared = snaps[0].gpus[0].uuid.clone();
            for (i, snap) in snaps.iter_mut().enumerate() {
                let gpu = &mut snap.gpus[0];
                gpu.allocation = Some(if i < 60 {
                    gpulse_gpu::Allocation::new(
                        ["team-a", "team-b"]
                            .map(|ns| gpulse_gpu::DeviceHolder {
                                device_uuid: shared.clone(),
                                namespace: ns.into(),
                                pod: "trainer".into(),
                                container: "main".into(),
                            })
                            .to_vec(),
                    )
                } else {
                    gpulse_gpu::Allocation::default()
                });
            }
            apply_all(&rt, &handle, &host, &snaps, 11);
            let w = Window::aligned(t0 - DAY_MS, t0 + DAY_MS);
            let mut reader = LedgerReader::open(&target).unwrap();
            let rows = report::load(&mut reader, w, false).unwrap();
            let fleet = report::total(&rows);
            assert_eq!(fleet.gpus.len(), 4, "{target:?}: a shared GPU counts once");
            let by_namespace = report::group(&rows, &[report::Dim::Namespace]);
            let names: Vec<&str> = by_namespace.keys().map(|(k, _)| k[0].as_str()).collect();
            assert!(
                names.contains(&"team-a") && names.contains(&"team-b"),
                "{names:?}"
            );
            assert!(names.contains(&holders::UNALLOCATED), "{names:?}");
            assert!(!names.contains(&holders::NOT_KUBERNETES), "{names:?}");
            let mut summed = Usage::default();
            for agg in by_namespace.values() {
                summed.add(&agg.usage);
            }
            assert_usage_close(&summed, &fleet.usage, &format!("{target:?}"));
            // The shared GPU's hour is halved between its two pods.
            let a = &by_namespace[&(vec!["team-a".to_string()], None)].usage;
            let b = &by_namespace[&(vec!["team-b".to_string()], None)].usage;
            assert!(a.observed_s > 0.0, "{target:?}");
            assert!((a.observed_s - b.observed_s).abs() < 1e-6, "{a:?} {b:?}");
            // The ledger's per-GPU totals stay whole.
            let totals = handle.totals().read().unwrap().clone();
            let mut whole = Usage::default();
            for u in totals.values() {
                whole.add(u);
            }
            assert_usage_close(&fleet.usage, &whole, &format!("{target:?} totals"));
        }
    }

    /// A ledger written before GPU time had holders opens with its hours kept, under no
    /// holder (reported as not Kubernetes), and takes holders from then on.
    #[test]
    fn a_ledger_from_before_holders_keeps_its_hours_and_gains_them() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let interval = 60_000;
        let t0 = 1_790_000_000_000 - DAY_MS;
        let pg = gpulse_testkit::postgres::server();
        let url = pg.database("before_holders");
        let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
        let targets = [
            LedgerTarget::Sqlite(dir.path().join(LEDGER_FILE)),
            LedgerTarget::new(Some(&url), dir.path()).unwrap(),
        ];
        let w = Window::aligned(t0 - DAY_MS, t0 + DAY_MS);
        for target in targets {
            let (host, mut sim) = sim_host("h", "gpus=2,scenario=training,seed=3", interval);
            let snaps = snapshots(&mut sim, t0, interval, 60);
            let handle = start(&target, &LedgerConfig::default()).unwrap();
            apply_all(&rt, &handle, &host, &snaps[..30], 7);
            drop(handle);
            let mut reader = LedgerReader::open(&target).unwrap();
            let before = report::total(&report::load(&mut reader, w, false).unwrap());
            drop(reader);
            // Back to the schema before: the GPUs table without holders.
            match &target {
                LedgerTarget::Sqlite(path) => {
                    let conn = rusqlite::Connection::open(path).unwrap();
                    conn.execute_batch(
                        "CREATE TABLE gpus_before (
                           id INTEGER PRIMARY KEY,
                           host TEXT NOT NULL, uuid TEXT NOT NULL, gpu_index INTEGER NOT NULL,
                           model TEXT NOT NULL, provider TEXT NOT NULL, region TEXT NOT NULL,
                           zone TEXT NOT NULL, instance_type TEXT NOT NULL, labels TEXT NOT NULL,
                           UNIQUE (host, uuid, gpu_index, model, provider, region, zone,
                                   instance_type, labels));
                         INSERT INTO gpus_before SELECT id, host, uuid, gpu_index, model,
                           provider, region, zone, instance_type, labels FROM gpus;
                         DROP TABLE gpus;
                         ALTER TABLE gpus_before RENAME TO gpus;
                         UPDATE meta SET value = 1 WHERE key = 'schema_version';",
                    )
                    .unwrap();
                }
                LedgerTarget::Postgres(_) => {
                    pg.psql(
                    db,
                    "DROP INDEX gpus_identity;
                     ALTER TABLE gpus DROP COLUMN namespace, DROP COLUMN pod, DROP COLUMN container;
                     CREATE UNIQUE INDEX gpus_identity ON gpus
                       (host, uuid, gpu_index, model, provider, region, zone, instance_type, md5(labels));
                     DELETE FROM gpulse_schema_migrations WHERE version = 4",
                    );
                }
            }
            let handle = start(&target, &LedgerConfig::default()).unwrap();
            let mut reader = LedgerReader::open(&target).unwrap();
            let reopened = report::load(&mut reader, w, false).unwrap();
            assert_usage_close(
                &report::total(&reopened).usage,
                &before.usage,
                &format!("{target:?} reopened"),
            );
            let names: Vec<String> = report::group(&reopened, &[report::Dim::Namespace])
                .into_keys()
                .map(|(k, _)| k[0].clone())
                .collect();
            assert_eq!(names, [holders::NOT_KUBERNETES], "{target:?}");
            // From now on the GPUs are held by pods.
            let mut later = snaps[30..].to_vec();
            for snap in &mut later {
                for gpu in &mut snap.gpus {
                    gpu.allocation = Some(gpulse_gpu::Allocation::new(vec![
                        gpulse_gpu::DeviceHolder {
                            device_uuid: gpu.uuid.clone(),
                            namespace: "ml".into(),
                            pod: "trainer".into(),
                            container: "main".into(),
                        },
                    ]));
                }
            }
            apply_all(&rt, &handle, &host, &later, 7);
            let rows = report::load(&mut reader, w, false).unwrap();
            let pods: Vec<String> = report::group(&rows, &[report::Dim::Pod])
                .into_keys()
                .map(|(k, _)| k[0].clone())
                .collect();
            assert_eq!(pods, [holders::NOT_KUBERNETES, "ml/trainer"], "{target:?}");
        }
    }

    #[test]
    fn a_ledger_with_a_newer_schema_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let pg = gpulse_testkit::postgres::server();
        let url = pg.database("newer");
        let target = LedgerTarget::new(Some(&url), dir.path()).unwrap();
        drop(start(&target, &LedgerConfig::default()).unwrap());
        // Starting again on a migrated ledger changes nothing.
        drop(start(&target, &LedgerConfig::default()).unwrap());
        let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
        assert_eq!(
            pg.psql(db, "SELECT count(*) FROM gpulse_schema_migrations")
                .trim(),
            crate::cost::postgres::SCHEMA_VERSION.to_string()
        );
        pg.psql(
            db,
            "INSERT INTO gpulse_schema_migrations (version, collector_version) VALUES (99, 'later')",
        );
        let known = crate::cost::postgres::SCHEMA_VERSION;
        for e in [
            start(&target, &LedgerConfig::default()).unwrap_err(),
            LedgerReader::open(&target).unwrap_err(),
        ] {
            let e = e.to_string();
            assert!(
                e.contains("schema version 99") && e.contains(&format!("collector's {known}")),
                "{e}"
            );
            assert!(e.contains("upgrade the collector"), "{e}");
        }
    }

    #[test]
    fn tls_to_the_database_is_verified_when_the_url_asks_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let pg = gpulse_testkit::postgres::server();
        let url = pg.database("tls");
        let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
        let base = format!("postgres://postgres@localhost:{}/{db}", pg.port());
        let ca = pg.ca_file();
        for mode in ["require", "verify-full"] {
            let url = format!("{base}?sslmode={mode}&sslrootcert={}", ca.display());
            let target = LedgerTarget::new(Some(&url), dir.path()).unwrap();
            drop(start(&target, &LedgerConfig::default()).unwrap());
            // Both modes insist on TLS: connecting at all means the handshake, and
            // the certificate check against the CA, succeeded.
            LedgerReader::open(&target).unwrap().dims().unwrap();
        }
        // A certificate the system's roots do not vouch for is refused, not trusted.
        let target =
            LedgerTarget::new(Some(&format!("{base}?sslmode=require")), dir.path()).unwrap();
        let e = start(&target, &LedgerConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TLS required") && e.contains("--ledger-url"),
            "{e}"
        );
    }

    #[test]
    fn an_unreachable_database_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://gpulse:hunter2@127.0.0.1:{port}/gpulse?sslmode=disable");
        let target = LedgerTarget::new(Some(&url), dir.path()).unwrap();
        let e = start(&target, &LedgerConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("127.0.0.1:{port}/gpulse")), "{e}");
        assert!(e.contains("--ledger-url") && !e.contains("hunter2"), "{e}");
    }

    /// Equal but for the last bits of floating point sums, which engines add up in
    /// their own order.
    pub(crate) fn assert_close(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
        use serde_json::Value;
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() <= 1e-9 * (1.0 + x.abs()), "{at}: {x} vs {y}");
            }
            (Value::Array(x), Value::Array(y)) => {
                assert_eq!(x.len(), y.len(), "{at}");
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    assert_close(x, y, &format!("{at}[{i}]"));
                }
            }
            (Value::Object(x), Value::Object(y)) => {
                assert_eq!(
                    x.keys().collect::<Vec<_>>(),
                    y.keys().collect::<Vec<_>>(),
                    "{at}"
                );
                for (k, v) in x {
                    assert_close(v, &y[k], &format!("{at}.{k}"));
                }
            }
            _ => assert_eq!(a, b, "{at}"),
        }
    }
}
