//! The ledger on PostgreSQL, shared by any number of collectors: each writes its groups
//! in transactions that lock the cursors of the GPUs they touch (`SELECT ... FOR
//! UPDATE`), so a batch one collector already applied changes nothing when another gets
//! it, and usage rows add up (`x = usage.x + EXCLUDED.x`) whoever writes them. The
//! collector creates and migrates the schema itself (`gpulse_schema_migrations`).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, config::Host, config::SslMode};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::ledger::{Cursor, FieldKind, FieldValue, USAGE_FIELDS, Usage};
use super::store::{
    EngineError, GpuDims, GpuKey, ReadEngine, Rollup, RollupSql, Rows, StoreError, Stored,
    UsageRow, WriteEngine, usage_columns,
};
use crate::delivery::SeqMark;

/// The newest schema this collector knows: migrations 1..=this are in [`migration`].
pub const SCHEMA_VERSION: i64 = 4;
/// How long connecting may take when the URL does not say (`connect_timeout`).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Serialises migrations of collectors that start together (an arbitrary key,
/// "gpulse ledger" in ASCII, for `pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x6770_756c_7365_6c67;
const OPEN_HINT: &str = "check that the PostgreSQL server is reachable and that --ledger-url \
     (ledger.url, GPULSE_COLLECTOR_LEDGER_URL) names the right host, port, database, user and password";

/// A PostgreSQL ledger: where and how to connect. Shown without its password.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    /// `None`: no TLS (`sslmode=disable`).
    tls: Option<Arc<rustls::ClientConfig>>,
    shown: String,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The URL with any password replaced, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => format!("{scheme}://{authority}{tail}"),
    };
    // A password may also come as a query parameter.
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some(("password", _)) => "password=***".to_string(),
                _ => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{base}{query}");
    }
    out
}

impl PgTarget {
    /// Reads `postgres://user:password@host:port/db?sslmode=...&sslrootcert=...`.
    ///
    /// TLS: `sslmode=disable` connects in plain text; `prefer` (the default) uses TLS
    /// when the server offers it; `require`, `verify-ca` and `verify-full` insist on it.
    /// Whenever TLS is used the server's certificate is verified, against `sslrootcert`
    /// (a PEM file) when given, else the system's roots: a certificate that cannot be
    /// verified is refused rather than trusted blindly.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::BadUrl {
            url: redact(url),
            reason,
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad(
                "must start with postgres:// or postgresql://, e.g. postgres://gpulse@db:5432/gpulse".into(),
            ));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let mut root_file = None;
        let mut tls_mode = None;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("sslrootcert", v)) => root_file = Some(v.to_string()),
                Some(("sslmode", v)) => tls_mode = Some(v.to_string()),
                _ => kept.push(kv.to_string()),
            }
        }
        let mode = match tls_mode.as_deref() {
            None | Some("prefer") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require" | "verify-ca" | "verify-full") => SslMode::Require,
            Some(other) => {
                return Err(bad(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        };
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = Config::from_str(&rest).map_err(|e| bad(e.to_string()))?;
        if config.get_dbname().is_none() {
            return Err(bad(
                "names no database: add it as the path, e.g. postgres://gpulse@db:5432/gpulse"
                    .into(),
            ));
        }
        config.ssl_mode(mode);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let tls = match mode {
            SslMode::Disable => None,
            _ => Some(Arc::new(client_tls(root_file.as_deref()).map_err(bad)?)),
        };
        let shown = shown(&config, mode);
        Ok(PgTarget { config, tls, shown })
    }

    fn connect(&self) -> Result<Client, StoreError> {
        let connected = match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                    (**tls).clone(),
                )),
        };
        connected.map_err(|e| StoreError::Open {
            target: self.shown.clone(),
            reason: describe(&e),
            hint: OPEN_HINT,
        })
    }
}

/// `postgres://user@host:port/db (tls)`: who and where, never the password.
fn shown(config: &Config, mode: SslMode) -> String {
    let hosts = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    let tls = match mode {
        SslMode::Disable => "no TLS",
        SslMode::Require => "TLS required",
        _ => "TLS preferred",
    };
    format!(
        "postgres://{}@{hosts}/{} ({tls})",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

fn client_tls(root_file: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match root_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("sslrootcert {path}: {e}; give a readable PEM file"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("sslrootcert {path} holds no PEM certificate"));
            }
        }
        None => {
            // Unreadable system certificates are skipped: the ones that load still count.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// An error with its server-side detail, when the server gave one.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn engine(e: postgres::Error) -> EngineError {
    let conflict = matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    );
    EngineError {
        message: describe(&e),
        conflict,
    }
}

fn read(e: postgres::Error) -> StoreError {
    StoreError::Read(describe(&e))
}

fn column_type(kind: FieldKind) -> &'static str {
    match kind {
        FieldKind::Real => "DOUBLE PRECISION",
        FieldKind::Count => "BIGINT",
    }
}

/// The schema each version adds. Version 1's usage columns come from [`USAGE_FIELDS`];
/// a field added later comes with a migration of its own (`ADD COLUMN IF NOT EXISTS`),
/// so a ledger created before it gets the column too.
fn migration(version: i64) -> Option<String> {
    let usage_cols = USAGE_FIELDS
        .iter()
        .map(|f| format!("{} {} NOT NULL DEFAULT 0", f.name, column_type(f.kind)))
        .collect::<Vec<_>>()
        .join(",\n  ");
    match version {
        1 => Some(format!(
            "CREATE TABLE gpus (
               id BIGSERIAL PRIMARY KEY,
               host TEXT NOT NULL, uuid TEXT NOT NULL, gpu_index BIGINT NOT NULL,
               model TEXT NOT NULL, provider TEXT NOT NULL, region TEXT NOT NULL,
               zone TEXT NOT NULL, instance_type TEXT NOT NULL, labels TEXT NOT NULL);
             -- Labels by digest: a btree entry must stay under a page's third.
             CREATE UNIQUE INDEX gpus_identity ON gpus
               (host, uuid, gpu_index, model, provider, region, zone, instance_type, md5(labels));
             CREATE TABLE usage (
               hour BIGINT NOT NULL, gpu BIGINT NOT NULL REFERENCES gpus (id),
               {usage_cols},
               PRIMARY KEY (hour, gpu));
             CREATE TABLE usage_daily (
               day BIGINT NOT NULL, gpu BIGINT NOT NULL REFERENCES gpus (id),
               {usage_cols},
               PRIMARY KEY (day, gpu));
             -- A row with no timestamp: a GPU whose first snapshot is being applied.
             CREATE TABLE cursors (
               host TEXT NOT NULL, uuid TEXT NOT NULL, timestamp_ms BIGINT, boot_id TEXT,
               energy_mj BIGINT, pcie_replays BIGINT, xid_total BIGINT, ecc_uncorrected BIGINT,
               PRIMARY KEY (host, uuid));
             CREATE TABLE totals (
               host TEXT NOT NULL, uuid TEXT NOT NULL,
               {usage_cols},
               PRIMARY KEY (host, uuid));"
        )),
        // Each agent's mark: the highest batch applied and its boot (seqs kept bit for
        // bit in a BIGINT); a row without one is an agent whose first batch is being
        // applied. And the row a probe rewrites.
        2 => Some(
            "CREATE TABLE agent_seqs (agent_id TEXT PRIMARY KEY, boot_id TEXT, seq BIGINT);
             CREATE TABLE write_probe (
               id INTEGER PRIMARY KEY CHECK (id = 1), at_unix_ms BIGINT NOT NULL);"
                .into(),
        ),
        // XID and uncorrectable ECC errors per hour, and the cursors' counters for them
        // (already there in a ledger created by this version's migration 1).
        3 => Some(
            ["usage", "usage_daily", "totals"]
                .iter()
                .flat_map(|table| {
                    ["xid_errors", "ecc_uncorrected_errors"].map(|column| {
                        format!(
                            "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} BIGINT NOT NULL DEFAULT 0;"
                        )
                    })
                })
                .chain([
                    "ALTER TABLE cursors ADD COLUMN IF NOT EXISTS xid_total BIGINT;".to_string(),
                    "ALTER TABLE cursors ADD COLUMN IF NOT EXISTS ecc_uncorrected BIGINT;"
                        .to_string(),
                ])
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        // The Kubernetes container holding the GPU joins its identity: a GPU held by two
        // pods over an hour has a row for each. Older rows belong to no known holder.
        4 => Some(
            "ALTER TABLE gpus ADD COLUMN IF NOT EXISTS namespace TEXT NOT NULL DEFAULT '',
               ADD COLUMN IF NOT EXISTS pod TEXT NOT NULL DEFAULT '',
               ADD COLUMN IF NOT EXISTS container TEXT NOT NULL DEFAULT '';
             DROP INDEX IF EXISTS gpus_identity;
             CREATE UNIQUE INDEX gpus_identity ON gpus
               (host, uuid, gpu_index, model, provider, region, zone, instance_type, md5(labels),
                namespace, pod, container);"
                .into(),
        ),
        _ => None,
    }
}

/// Creates or migrates the schema; refuses one newer than this collector knows.
fn migrate(client: &mut Client, target: &PgTarget) -> Result<(), StoreError> {
    let open = |e: postgres::Error| StoreError::Open {
        target: target.to_string(),
        reason: describe(&e),
        hint: "check that the user may create tables in the database",
    };
    let mut tx = client.transaction().map_err(open)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(open)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS gpulse_schema_migrations (
           version BIGINT PRIMARY KEY,
           applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
           collector_version TEXT NOT NULL)",
    )
    .map_err(open)?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM gpulse_schema_migrations",
            &[],
        )
        .map_err(open)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            target: target.to_string(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    for version in found + 1..=SCHEMA_VERSION {
        let Some(sql) = migration(version) else {
            continue;
        };
        tx.batch_execute(&sql).map_err(open)?;
        tx.execute(
            "INSERT INTO gpulse_schema_migrations (version, collector_version) VALUES ($1, $2)",
            &[&version, &env!("CARGO_PKG_VERSION")],
        )
        .map_err(open)?;
        tracing::info!(ledger = %target, version, "ledger schema migrated");
    }
    tx.commit().map_err(open)
}

/// Reads the usage columns from `at`; NULL (an empty sum) is 0.
fn usage_from_row(row: &postgres::Row, at: usize) -> Result<Usage, postgres::Error> {
    let mut u = Usage::default();
    for (i, f) in USAGE_FIELDS.iter().enumerate() {
        let v = match f.kind {
            FieldKind::Real => {
                FieldValue::Real(row.try_get::<_, Option<f64>>(at + i)?.unwrap_or(0.0))
            }
            FieldKind::Count => {
                FieldValue::Count(row.try_get::<_, Option<i64>>(at + i)?.unwrap_or(0).max(0) as u64)
            }
        };
        (f.set)(&mut u, v);
    }
    Ok(u)
}

/// One column of a multi-row statement, sent as an array.
enum Column {
    Real(Vec<f64>),
    Count(Vec<i64>),
}

impl Column {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Real(v) => v,
            Column::Count(v) => v,
        }
    }
}

/// The usage fields of `rows` as one array per column.
fn usage_arrays<'a>(rows: impl Iterator<Item = &'a Usage> + Clone) -> Vec<Column> {
    USAGE_FIELDS
        .iter()
        .map(|f| match f.kind {
            FieldKind::Real => Column::Real(
                rows.clone()
                    .map(|u| match (f.get)(u) {
                        FieldValue::Real(x) => x,
                        FieldValue::Count(n) => n as f64,
                    })
                    .collect(),
            ),
            FieldKind::Count => Column::Count(
                rows.clone()
                    .map(|u| match (f.get)(u) {
                        FieldValue::Count(n) => FieldValue::count_i64(n),
                        FieldValue::Real(x) => x as i64,
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// `INSERT INTO table (keys, usage columns) SELECT * FROM unnest(...) ON CONFLICT (keys)
/// DO UPDATE` adding each column; counts saturate at the largest BIGINT rather than fail
/// the transaction (and with it every later batch of the GPU).
fn upsert_sql(table: &str, keys: [(&str, &str); 2], returning: bool) -> String {
    let cols = usage_columns().collect::<Vec<_>>().join(", ");
    let arrays = keys
        .iter()
        .map(|(_, ty)| *ty)
        .chain(USAGE_FIELDS.iter().map(|f| match f.kind {
            FieldKind::Real => "float8[]",
            FieldKind::Count => "bigint[]",
        }))
        .enumerate()
        .map(|(i, ty)| format!("${}::{ty}", i + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let updates = USAGE_FIELDS
        .iter()
        .map(|f| match f.kind {
            FieldKind::Real => format!("{c} = {table}.{c} + EXCLUDED.{c}", c = f.name),
            FieldKind::Count => format!(
                "{c} = LEAST({table}.{c}::numeric + EXCLUDED.{c}, 9223372036854775807)::bigint",
                c = f.name
            ),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let (k0, k1) = (keys[0].0, keys[1].0);
    let returning = if returning {
        format!(" RETURNING {k0}, {k1}, {cols}")
    } else {
        String::new()
    };
    format!(
        "INSERT INTO {table} ({k0}, {k1}, {cols}) SELECT * FROM unnest({arrays})
         ON CONFLICT ({k0}, {k1}) DO UPDATE SET {updates}{returning}"
    )
}

/// The writer's connection, opened again when the server closed it (a restart, a
/// failover), so a ledger that comes back takes writes again.
pub struct PgWriter {
    client: Client,
    target: PgTarget,
}

impl PgWriter {
    pub fn open(target: &PgTarget) -> Result<Self, StoreError> {
        let mut client = target.connect()?;
        migrate(&mut client, target)?;
        Ok(PgWriter {
            client,
            target: target.clone(),
        })
    }
}

impl WriteEngine for PgWriter {
    fn load(&mut self) -> Result<Stored, EngineError> {
        // Cursors are read, locked, in each transaction: other collectors move them.
        let cols = usage_columns().collect::<Vec<_>>().join(", ");
        let rows = self
            .client
            .query(&format!("SELECT host, uuid, {cols} FROM totals"), &[])
            .map_err(engine)?;
        let mut totals = HashMap::with_capacity(rows.len());
        for r in rows {
            totals.insert((r.get(0), r.get(1)), usage_from_row(&r, 2).map_err(engine)?);
        }
        Ok((HashMap::new(), totals))
    }

    fn begin(&mut self) -> Result<(), EngineError> {
        if self.client.is_closed() {
            self.client = self
                .target
                .connect()
                .map_err(|e| EngineError::new(e.to_string()))?;
        }
        self.client.batch_execute("BEGIN").map_err(engine)
    }

    fn lock_cursors(
        &mut self,
        keys: &[GpuKey],
    ) -> Result<Option<HashMap<GpuKey, Cursor>>, EngineError> {
        if keys.is_empty() {
            return Ok(Some(HashMap::new()));
        }
        let hosts: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let uuids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        // A row for each GPU first, so a GPU no collector has seen is locked too: two
        // collectors applying its first batches then take turns instead of both counting.
        self.client
            .execute(
                "INSERT INTO cursors (host, uuid) SELECT * FROM unnest($1::text[], $2::text[])
                 ON CONFLICT DO NOTHING",
                &[&hosts, &uuids],
            )
            .map_err(engine)?;
        let rows = self
            .client
            .query(
                "SELECT host, uuid, timestamp_ms, boot_id, energy_mj, pcie_replays, xid_total,
                   ecc_uncorrected FROM cursors
                 WHERE (host, uuid) IN (SELECT * FROM unnest($1::text[], $2::text[]))
                 ORDER BY host, uuid FOR UPDATE",
                &[&hosts, &uuids],
            )
            .map_err(engine)?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let (Some(timestamp_ms), Some(boot_id)) =
                (r.get::<_, Option<i64>>(2), r.get::<_, Option<String>>(3))
            else {
                continue;
            };
            out.insert(
                (r.get(0), r.get(1)),
                Cursor {
                    timestamp_ms,
                    boot_id,
                    energy_mj: r.get::<_, Option<i64>>(4).map(|v| v as u64),
                    pcie_replays: r.get::<_, Option<i64>>(5).map(|v| v as u64),
                    xid_total: r.get::<_, Option<i64>>(6).map(|v| v as u64),
                    ecc_uncorrected: r.get::<_, Option<i64>>(7).map(|v| v as u64),
                },
            );
        }
        Ok(Some(out))
    }

    fn dim_id(&mut self, dims: &GpuDims) -> Result<i64, EngineError> {
        let labels = dims.labels_json();
        let index = i64::from(dims.index);
        let key: [&(dyn ToSql + Sync); 12] = [
            &dims.host,
            &dims.uuid,
            &index,
            &dims.model,
            &dims.provider,
            &dims.region,
            &dims.zone,
            &dims.instance_type,
            &labels,
            &dims.namespace,
            &dims.pod,
            &dims.container,
        ];
        let inserted = self
            .client
            .query_opt(
                "INSERT INTO gpus (host, uuid, gpu_index, model, provider, region, zone, instance_type, labels,
                                   namespace, pod, container)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (host, uuid, gpu_index, model, provider, region, zone, instance_type, md5(labels),
                              namespace, pod, container)
                 DO NOTHING RETURNING id",
                &key,
            )
            .map_err(engine)?;
        if let Some(row) = inserted {
            return Ok(row.get(0));
        }
        self.client
            .query_one(
                "SELECT id FROM gpus WHERE host = $1 AND uuid = $2 AND gpu_index = $3 AND model = $4
                   AND provider = $5 AND region = $6 AND zone = $7 AND instance_type = $8
                   AND md5(labels) = md5($9) AND labels = $9
                   AND namespace = $10 AND pod = $11 AND container = $12",
                &key,
            )
            .map(|r| r.get(0))
            .map_err(engine)
    }

    fn write(&mut self, rows: &Rows) -> Result<Vec<(GpuKey, Usage)>, EngineError> {
        for (table, key, rows) in [
            ("usage", "hour", &rows.hourly),
            ("usage_daily", "day", &rows.daily),
        ] {
            if rows.is_empty() {
                continue;
            }
            let buckets: Vec<i64> = rows.keys().map(|k| k.0).collect();
            let gpus: Vec<i64> = rows.keys().map(|k| k.1).collect();
            let usage = usage_arrays(rows.values());
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&buckets, &gpus];
            params.extend(usage.iter().map(Column::as_sql));
            let sql = upsert_sql(table, [(key, "bigint[]"), ("gpu", "bigint[]")], false);
            self.client.execute(&sql, &params).map_err(engine)?;
        }
        let mut fresh = Vec::with_capacity(rows.totals.len());
        if !rows.totals.is_empty() {
            let hosts: Vec<&str> = rows.totals.keys().map(|k| k.0.as_str()).collect();
            let uuids: Vec<&str> = rows.totals.keys().map(|k| k.1.as_str()).collect();
            let usage = usage_arrays(rows.totals.values());
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&hosts, &uuids];
            params.extend(usage.iter().map(Column::as_sql));
            let sql = upsert_sql("totals", [("host", "text[]"), ("uuid", "text[]")], true);
            for r in self.client.query(&sql, &params).map_err(engine)? {
                fresh.push(((r.get(0), r.get(1)), usage_from_row(&r, 2).map_err(engine)?));
            }
        }
        if !rows.cursors.is_empty() {
            let c = &rows.cursors;
            let hosts: Vec<&str> = c.iter().map(|(k, _)| k.0.as_str()).collect();
            let uuids: Vec<&str> = c.iter().map(|(k, _)| k.1.as_str()).collect();
            let times: Vec<i64> = c.iter().map(|(_, c)| c.timestamp_ms).collect();
            let boots: Vec<&str> = c.iter().map(|(_, c)| c.boot_id.as_str()).collect();
            // Counters travel as u64 and are kept bit for bit in a BIGINT.
            let energy: Vec<Option<i64>> = c
                .iter()
                .map(|(_, c)| c.energy_mj.map(|v| v as i64))
                .collect();
            let replays: Vec<Option<i64>> = c
                .iter()
                .map(|(_, c)| c.pcie_replays.map(|v| v as i64))
                .collect();
            let xids: Vec<Option<i64>> = c
                .iter()
                .map(|(_, c)| c.xid_total.map(|v| v as i64))
                .collect();
            let ecc: Vec<Option<i64>> = c
                .iter()
                .map(|(_, c)| c.ecc_uncorrected.map(|v| v as i64))
                .collect();
            self.client
                .execute(
                    "INSERT INTO cursors (host, uuid, timestamp_ms, boot_id, energy_mj, pcie_replays,
                       xid_total, ecc_uncorrected)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
                       $6::bigint[], $7::bigint[], $8::bigint[])
                     ON CONFLICT (host, uuid) DO UPDATE SET timestamp_ms = EXCLUDED.timestamp_ms,
                       boot_id = EXCLUDED.boot_id, energy_mj = EXCLUDED.energy_mj,
                       pcie_replays = EXCLUDED.pcie_replays, xid_total = EXCLUDED.xid_total,
                       ecc_uncorrected = EXCLUDED.ecc_uncorrected",
                    &[&hosts, &uuids, &times, &boots, &energy, &replays, &xids, &ecc],
                )
                .map_err(engine)?;
        }
        Ok(fresh)
    }

    fn commit(&mut self) -> Result<(), EngineError> {
        self.client.batch_execute("COMMIT").map_err(engine)
    }

    fn rollback(&mut self) {
        let _ = self.client.batch_execute("ROLLBACK");
    }

    fn load_marks(&mut self) -> Result<HashMap<String, SeqMark>, EngineError> {
        // Marks are read, locked, in each transaction: other collectors move them.
        Ok(HashMap::new())
    }

    fn lock_marks(
        &mut self,
        agents: &[String],
    ) -> Result<Option<HashMap<String, SeqMark>>, EngineError> {
        if agents.is_empty() {
            return Ok(Some(HashMap::new()));
        }
        // A row for each agent first, so that two collectors applying an agent's first
        // batches take turns, as with cursors.
        self.client
            .execute(
                "INSERT INTO agent_seqs (agent_id) SELECT * FROM unnest($1::text[])
                 ON CONFLICT DO NOTHING",
                &[&agents],
            )
            .map_err(engine)?;
        let rows = self
            .client
            .query(
                "SELECT agent_id, boot_id, seq FROM agent_seqs
                 WHERE agent_id = ANY($1::text[]) ORDER BY agent_id FOR UPDATE",
                &[&agents],
            )
            .map_err(engine)?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            if let (Some(boot_id), Some(seq)) =
                (r.get::<_, Option<String>>(1), r.get::<_, Option<i64>>(2))
            {
                out.insert(
                    r.get(0),
                    SeqMark {
                        boot_id,
                        seq: seq as u64,
                    },
                );
            }
        }
        Ok(Some(out))
    }

    fn write_marks(&mut self, marks: &[(String, SeqMark)]) -> Result<(), EngineError> {
        if marks.is_empty() {
            return Ok(());
        }
        let agents: Vec<&str> = marks.iter().map(|(a, _)| a.as_str()).collect();
        let boots: Vec<&str> = marks.iter().map(|(_, m)| m.boot_id.as_str()).collect();
        let seqs: Vec<i64> = marks.iter().map(|(_, m)| m.seq as i64).collect();
        self.client
            .execute(
                "INSERT INTO agent_seqs (agent_id, boot_id, seq)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
                 ON CONFLICT (agent_id) DO UPDATE SET boot_id = EXCLUDED.boot_id, seq = EXCLUDED.seq",
                &[&agents, &boots, &seqs],
            )
            .map(|_| ())
            .map_err(engine)
    }

    fn probe(&mut self) -> Result<(), EngineError> {
        self.client
            .execute(
                "INSERT INTO write_probe (id, at_unix_ms)
                 VALUES (1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                 ON CONFLICT (id) DO UPDATE SET at_unix_ms = EXCLUDED.at_unix_ms",
                &[],
            )
            .map(|_| ())
            .map_err(engine)
    }

    fn prune(&mut self, cutoff_hour: i64) -> Result<usize, EngineError> {
        let hours = self
            .client
            .execute("DELETE FROM usage WHERE hour < $1", &[&cutoff_hour])
            .map_err(engine)?;
        // A day goes once all its hours have.
        let days = self
            .client
            .execute(
                "DELETE FROM usage_daily WHERE day < $1",
                &[&cutoff_hour.div_euclid(24)],
            )
            .map_err(engine)?;
        Ok((hours + days) as usize)
    }
}

/// A reporting connection.
pub struct PgReader {
    client: Client,
}

impl PgReader {
    pub fn open(target: &PgTarget) -> Result<Self, StoreError> {
        let mut client = target.connect()?;
        let found: Option<i64> = client
            .query_opt("SELECT MAX(version) FROM gpulse_schema_migrations", &[])
            .ok()
            .flatten()
            .and_then(|r| r.get(0));
        match found {
            None => Err(StoreError::Open {
                target: target.to_string(),
                reason: "the database holds no gpulse ledger".into(),
                hint: "start a collector with this --ledger-url first; it creates the ledger",
            }),
            Some(v) if v > SCHEMA_VERSION => Err(StoreError::NewerSchema {
                target: target.to_string(),
                found: v,
                known: SCHEMA_VERSION,
            }),
            Some(_) => Ok(PgReader { client }),
        }
    }
}

impl ReadEngine for PgReader {
    fn dims(&mut self) -> Result<HashMap<i64, GpuDims>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT id, host, uuid, gpu_index, model, provider, region, zone, instance_type, labels,
                        namespace, pod, container FROM gpus",
                &[],
            )
            .map_err(read)?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let labels: String = r.get(9);
                (
                    r.get::<_, i64>(0),
                    GpuDims {
                        host: r.get(1),
                        uuid: r.get(2),
                        index: u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
                        model: r.get(4),
                        provider: r.get(5),
                        region: r.get(6),
                        zone: r.get(7),
                        instance_type: r.get(8),
                        labels: serde_json::from_str(&labels).unwrap_or_default(),
                        namespace: r.get(10),
                        pod: r.get(11),
                        container: r.get(12),
                    },
                )
            })
            .collect())
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
        // SUM of a BIGINT is NUMERIC: brought back to BIGINT, saturating.
        let sums = USAGE_FIELDS
            .iter()
            .map(|f| match f.kind {
                FieldKind::Real => format!("SUM({})", f.name),
                FieldKind::Count => {
                    format!("LEAST(SUM({}), 9223372036854775807)::bigint", f.name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT gpu, MIN({day}), {sums} FROM {table} WHERE {key} >= $1 AND {key} < $2 GROUP BY {group}"
        );
        let rows = self.client.query(&sql, &[&from, &to]).map_err(read)?;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    gpu: r.get(0),
                    day: r.get(1),
                    usage: usage_from_row(r, 2).map_err(read)?,
                })
            })
            .collect()
    }

    fn usable(&self) -> bool {
        !self.client.is_closed()
    }
}

impl std::fmt::Debug for PgWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgWriter")
    }
}

impl std::fmt::Debug for PgReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgReader")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows() {
        for url in [
            "postgres://gpulse:s3cret@db.example:5432/gpulse?sslmode=require",
            "postgresql://gpulse@db.example/gpulse?password=s3cret",
        ] {
            let t = PgTarget::parse(url).unwrap();
            assert!(!format!("{t} {t:?}").contains("s3cret"), "{t}");
            assert!(!redact(url).contains("s3cret"), "{}", redact(url));
        }
        let e = PgTarget::parse("postgres://gpulse:s3cret@db/gpulse?sslmode=sometimes")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("s3cret") && e.contains("sslmode=sometimes"),
            "{e}"
        );
    }

    #[test]
    fn bad_urls_are_named_with_what_to_do() {
        for (url, says) in [
            ("mysql://db/gpulse", "must start with postgres://"),
            ("postgres://db:5432", "names no database"),
            (
                "postgres://db/gpulse?sslmode=sometimes",
                "is not one of disable",
            ),
            (
                "postgres://db/gpulse?sslmode=require&sslrootcert=/no/such/ca.pem",
                "sslrootcert /no/such/ca.pem",
            ),
            ("postgres://db:notaport/gpulse", "ledger.url"),
        ] {
            let e = PgTarget::parse(url).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("--ledger-url"), "{url}: {e}");
        }
    }

    #[test]
    fn the_target_shows_user_host_database_and_tls() {
        let t = PgTarget::parse("postgres://gpulse:pw@db.example:6543/ledger?sslmode=verify-full")
            .unwrap();
        assert_eq!(
            t.to_string(),
            "postgres://gpulse@db.example:6543/ledger (TLS required)"
        );
        let t = PgTarget::parse("postgres://gpulse@db/ledger?sslmode=disable").unwrap();
        assert!(t.tls.is_none());
    }
}
