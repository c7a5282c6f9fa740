//! `wau-ingest selftest`: checks, once, on a real Redshift workgroup or cluster, each assumption
//! the product makes of Redshift that the documentation does not settle and the emulator can
//! only imitate (DESIGN.md: "What it cannot settle from the documentation, the product avoids,
//! and `selftest` checks on a real workgroup once, before the first deployment").
//!
//! Everything happens in a scratch schema of its own (`wau_selftest_<random>`): the product's
//! own DDL ([`Sql::migrate`]) creates the product's tables there, schema-qualified, beside a few
//! helper tables. Each check sends what production sends wherever production has the text or
//! the writer: the COPY of [`Sql::copy_staging`], parts
//! from [`PartWriter`] and [`stage::manifest`] holding values in the contract's stored form
//! ([`check_value`]), the guarded ledger insert of [`Sql::insert_ledger`], literals rendered by
//! [`render`] and [`Lit`], the WAU view of the product's migrate, and the Data API runner of
//! [`RedshiftWarehouse`] with its conflict reruns. The schema is dropped with CASCADE and the
//! staging objects written under `<staging_uri>selftest-<schema>/` are deleted at the end,
//! whatever happened before.
//!
//! The staging table carries one column the configured contract does not have,
//! `selftest_probe` (an optional string of at most 64 bytes, which the product's DDL makes
//! `VARCHAR(64)` on Redshift): the NULL and byte-length checks load into it through the
//! product's COPY with every other column as production fills it.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::config::WarehouseKind;
use crate::contract::{check_value, Column, ColumnType, Contract, Format};
use crate::metrics::Metrics;
use crate::validate::RowChunk;
use crate::warehouse::redshift::{
    is_serialization_conflict, render, sql_string, Cell, Lit, RedshiftWarehouse, MAX_STATEMENT_BYTES,
};
use crate::warehouse::sql::{Dialect, RecordedPage, Sql, Tables, LOADED};
use crate::warehouse::stage::{self, PartWriter};
use crate::warehouse::Warehouse;
use crate::Setup;

/// Concurrent writers in the lock check.
pub const WRITERS: usize = 4;
/// Rows of the table the race-widening statement reads.
pub const WIDEN_ROWS: usize = 300_000;
/// The column the NULL and byte-length checks load into.
pub const PROBE_COLUMN: &str = "selftest_probe";
/// The probe column's contract width (bytes, `max_length`); the product's Redshift DDL makes it
/// `VARCHAR(this)`.
const PROBE_BYTES: usize = 64;
/// Characters of an error text a report line keeps.
const ERROR_CHARS: usize = 600;
/// How often a concurrency check is tried before it says the race could not be provoked.
const RACE_ATTEMPTS: usize = 3;

/// Why the selftest could not run at all (exit 2): nothing was checked.
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    #[error("selftest needs warehouse.kind = \"redshift\" (the configuration says {0:?})")]
    NotRedshift(String),
    #[error("the redshift warehouse configuration is not usable: {0}")]
    Config(String),
    #[error("cannot run a statement on redshift (credentials, permissions or the workgroup/cluster name?): {0}")]
    Connect(String),
    #[error("creating the scratch schema {schema} failed: {reason}")]
    CreateSchema { schema: String, reason: String },
    #[error("creating the scratch tables in {schema} failed: {reason} (cleanup: {cleanup})")]
    Setup { schema: String, reason: String, cleanup: String },
    #[error("the selftest stopped unexpectedly: {0}")]
    Panicked(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
}

/// One check's result: what was observed, and on FAIL what to change.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub observed: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
    /// Informational findings that do not decide the verdict.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub seconds: f64,
}

impl Check {
    fn pass(name: &'static str, observed: impl Into<String>) -> Check {
        Check { name, verdict: Verdict::Pass, observed: observed.into(), advice: None, notes: Vec::new(), seconds: 0.0 }
    }

    fn fail(name: &'static str, observed: impl Into<String>, advice: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Fail,
            observed: observed.into(),
            advice: Some(advice.into()),
            notes: Vec::new(),
            seconds: 0.0,
        }
    }

    fn note(mut self, note: impl Into<String>) -> Check {
        self.notes.push(note.into());
        self
    }
}

/// What the cleanup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cleanup {
    pub schema_dropped: bool,
    pub objects_deleted: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Cleanup {
    pub fn ok(&self) -> bool {
        self.schema_dropped && self.errors.is_empty()
    }
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let schema = if self.schema_dropped { "schema dropped" } else { "schema NOT dropped" };
        write!(f, "{schema}, {} staging object(s) deleted", self.objects_deleted)?;
        for e in &self.errors {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

/// The whole run: where it ran, every check in order, and the cleanup.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `workgroup NAME` or `cluster ID`, and the database.
    pub target: String,
    pub database: String,
    pub schema: String,
    pub staging: String,
    pub checks: Vec<Check>,
    pub cleanup: Cleanup,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.verdict == Verdict::Pass) && self.cleanup.ok()
    }

    /// 0 when every check passed and the scratch objects are gone, else 1.
    pub fn exit_code(&self) -> u8 {
        if self.passed() {
            0
        } else {
            1
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wau-ingest selftest on {}, database {} (scratch schema {}, staging {})",
            self.target, self.database, self.schema, self.staging
        )?;
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let v = match c.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
            };
            writeln!(f, "{v}  {:<width$}  {} ({:.1} s)", c.name, c.observed, c.seconds)?;
            for n in &c.notes {
                writeln!(f, "      {:<width$}  note: {n}", "")?;
            }
            if let Some(a) = &c.advice {
                writeln!(f, "      {:<width$}  change: {a}", "")?;
            }
        }
        writeln!(f, "{}  {:<width$}  {}", if self.cleanup.ok() { "PASS" } else { "FAIL" }, "cleanup", self.cleanup)?;
        let failed = self.checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
        write!(f, "{} of {} checks passed", self.checks.len() - failed, self.checks.len())?;
        if !self.cleanup.ok() {
            write!(f, "; the cleanup did not finish: drop schema {} and the staging objects by hand", self.schema)?;
        }
        Ok(())
    }
}

/// Runs every check on the configured Redshift warehouse. `Err` only when nothing could be
/// checked; a failing check is a FAIL in the report.
pub async fn run(setup: &Setup) -> Result<Report, SelftestError> {
    let cfg = &setup.config.warehouse;
    if cfg.kind != WarehouseKind::Redshift {
        return Err(SelftestError::NotRedshift(format!("{:?}", cfg.kind).to_lowercase()));
    }
    let contract = probe_contract(&setup.contract);
    let sdk = setup.sdk().await;
    let s3 = crate::aws::s3_client(sdk, &setup.config.aws);
    // Metrics of its own: the conflict check counts the runner's reruns.
    let metrics = Arc::new(Metrics::new());
    let w = RedshiftWarehouse::new(cfg, &contract, sdk, s3, metrics.clone())
        .map_err(|e| SelftestError::Config(e.to_string()))?;
    let target = if cfg.workgroup_name.trim().is_empty() {
        format!("cluster {}", cfg.cluster_identifier.trim())
    } else {
        format!("workgroup {}", cfg.workgroup_name.trim())
    };
    let database = cfg.database.trim().to_string();
    let staging_uri = cfg.staging_uri.clone();
    // A task of its own: a check that panics is reported, and the cleanup guard still runs.
    tokio::spawn(run_checks(Arc::new(w), metrics, contract, Where { target, database, staging_uri }))
        .await
        .map_err(|e| SelftestError::Panicked(e.to_string()))?
}

struct Where {
    target: String,
    database: String,
    staging_uri: String,
}

async fn run_checks(
    w: Arc<RedshiftWarehouse>,
    metrics: Arc<Metrics>,
    contract: Contract,
    at: Where,
) -> Result<Report, SelftestError> {
    let (metrics, contract) = (metrics.as_ref(), &contract);
    w.ping().await.map_err(|e| SelftestError::Connect(e.to_string()))?;
    let schema = format!("wau_selftest_{}", random_hex());
    let dir = format!("selftest-{schema}/");
    w.execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .map_err(|e| SelftestError::CreateSchema { schema: schema.clone(), reason: e.to_string() })?;
    // From here on the schema and the staging objects go, whatever happens (also on a panic).
    let mut guard = CleanupGuard { w: w.clone(), schema: schema.clone(), dir: dir.clone(), done: None };
    let x = Scratch::new(&w, metrics, contract, &schema, &dir);
    if let Err(reason) = x.create().await {
        let cleanup = guard.run().await;
        return Err(SelftestError::Setup { schema, reason, cleanup: cleanup.to_string() });
    }
    let checks = [
        "isolation_level",
        "writer_lock",
        "batch_size",
        "copy_fractional_seconds",
        "copy_null_and_empty",
        "varchar_bytes",
        "iso_week",
        "conflict_retry",
        "ledger_key_order",
        "add_column",
    ];
    let mut results = Vec::new();
    for name in checks {
        let started = Instant::now();
        // One check: runs in the scratch schema, never fails to return a verdict.
        let mut c = match name {
            "isolation_level" => isolation_level(&x).await,
            "writer_lock" => writer_lock(&x).await,
            "batch_size" => batch_size(&x).await,
            "copy_fractional_seconds" => copy_fractional_seconds(&x).await,
            "copy_null_and_empty" => copy_null_and_empty(&x).await,
            "varchar_bytes" => varchar_bytes(&x).await,
            "iso_week" => iso_week(&x).await,
            "conflict_retry" => conflict_retry(&x).await,
            "ledger_key_order" => ledger_key_order(&x).await,
            "add_column" => add_column(&x).await,
            other => unreachable!("no check {other}"),
        };
        debug_assert_eq!(c.name, name);
        c.seconds = started.elapsed().as_secs_f64();
        results.push(c);
    }
    let cleanup = guard.run().await;
    Ok(Report {
        target: at.target,
        database: at.database,
        schema,
        staging: format!("{}{dir}", at.staging_uri),
        checks: results,
        cleanup,
    })
}

/// Drops the scratch schema and deletes the staging objects once: explicitly, or when dropped
/// (then as a task on the runtime, when the checks panicked).
struct CleanupGuard {
    w: Arc<RedshiftWarehouse>,
    schema: String,
    dir: String,
    done: Option<Cleanup>,
}

impl CleanupGuard {
    async fn run(&mut self) -> Cleanup {
        if let Some(c) = &self.done {
            return c.clone();
        }
        let mut c = Cleanup::default();
        match self.w.execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema)).await {
            Ok(()) => c.schema_dropped = true,
            Err(e) => c.errors.push(format!("dropping schema {}: {}", self.schema, brief(e))),
        }
        match self.w.delete_staging_prefix(&self.dir).await {
            Ok(n) => c.objects_deleted = n,
            Err(e) => c.errors.push(brief(e)),
        }
        self.done = Some(c.clone());
        c
    }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if self.done.is_some() {
            return;
        }
        let mut left = CleanupGuard {
            w: self.w.clone(),
            schema: std::mem::take(&mut self.schema),
            dir: std::mem::take(&mut self.dir),
            done: Some(Cleanup::default()),
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                left.done = None;
                left.run().await;
            });
        }
    }
}

/// 48 random bits as hex (no RNG crate: the std hasher's random keys, plus the clock).
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// The configured contract plus the probe column (optional, at most [`PROBE_BYTES`] bytes).
fn probe_contract(contract: &Contract) -> Contract {
    let mut c = contract.clone();
    c.columns.retain(|col| col.name != PROBE_COLUMN);
    let mut probe = Column::new(PROBE_COLUMN, ColumnType::String);
    probe.max_length = Some(PROBE_BYTES);
    c.columns.push(probe);
    c
}

/// The product's tables, named as configured, in `schema`.
fn scratch_tables(contract: &Contract, schema: &str) -> Tables {
    let mut t = Tables::for_contract(contract);
    for name in [
        &mut t.target,
        &mut t.staging,
        &mut t.files,
        &mut t.rejects,
        &mut t.merges,
        &mut t.wau_view,
        &mut t.freshness_view,
        &mut t.lock,
        &mut t.reconciles,
    ] {
        let bare = name.rsplit('.').next().unwrap_or(name).to_string();
        *name = format!("{schema}.{bare}");
    }
    t
}

/// A valid raw value of a column, as a producer would send it.
fn filler(col: &Column) -> &'static str {
    match (col.ty, col.format) {
        (ColumnType::String, Some(Format::Email)) => "selftest@example.com",
        (ColumnType::String, Some(Format::Ip)) => "192.0.2.1",
        (ColumnType::String, None) => "selftest",
        (ColumnType::Integer, _) => "1",
        (ColumnType::Float, _) => "1.5",
        (ColumnType::Boolean, _) => "true",
        (ColumnType::Timestamp, _) => "2026-01-02T03:04:05Z",
        (ColumnType::Date, _) => "2026-01-02",
    }
}

/// An error as a line of the report: without the SDK's dump of the raw response, at most
/// [`ERROR_CHARS`] characters.
fn brief(e: impl ToString) -> String {
    let text = e.to_string();
    let text = text.split(" (ServiceError(").next().unwrap_or(&text).trim();
    let short: String = text.chars().take(ERROR_CHARS).collect();
    if short.len() < text.len() {
        format!("{short}…")
    } else {
        short
    }
}

/// Runs `f(0..n)` concurrently, released together; results in order.
async fn concurrently<T, F: std::future::Future<Output = T>>(n: usize, f: impl Fn(usize) -> F) -> Vec<T> {
    let barrier = tokio::sync::Barrier::new(n);
    futures::future::join_all((0..n).map(|i| {
        let (barrier, f) = (&barrier, &f);
        async move {
            barrier.wait().await;
            f(i).await
        }
    }))
    .await
}

/// The scratch schema and what the checks share.
struct Scratch<'a> {
    w: &'a RedshiftWarehouse,
    metrics: &'a Metrics,
    contract: &'a Contract,
    tables: Tables,
    digits: String,
    widen: String,
    counter: String,
    pad: String,
    /// Staging objects go under `<staging_uri><dir>`.
    dir: String,
}

impl<'a> Scratch<'a> {
    fn new(w: &'a RedshiftWarehouse, metrics: &'a Metrics, contract: &'a Contract, schema: &str, dir: &str) -> Self {
        Scratch {
            w,
            metrics,
            contract,
            tables: scratch_tables(contract, schema),
            digits: format!("{schema}.selftest_digits"),
            widen: format!("{schema}.selftest_widen"),
            counter: format!("{schema}.selftest_counter"),
            pad: format!("{schema}.selftest_pad"),
            dir: dir.to_string(),
        }
    }

    fn sql(&self) -> Sql<'_> {
        Sql::new(Dialect::Redshift, self.contract, &self.tables)
    }

    /// The product's tables (its own DDL, the writer lock table too) and the helper tables, in one batch.
    async fn create(&self) -> Result<(), String> {
        let mut sqls = self.sql().migrate();
        let digits = (0..10).map(|d| format!("({d})")).collect::<Vec<_>>().join(", ");
        // 10^5 × 3 rows: a cross join, since Redshift cannot INSERT from generate_series.
        let (d, joins) = (&self.digits, ["b", "c", "e", "f", "g"]);
        let from = joins.iter().fold(format!("{d} a"), |acc, j| format!("{acc} CROSS JOIN {d} {j}"));
        sqls.extend([
            format!("CREATE TABLE {d} (n INT)"),
            format!("INSERT INTO {d} (n) VALUES {digits}"),
            format!(
                "CREATE TABLE {} AS SELECT a.n + 10 * b.n + 100 * c.n + 1000 * e.n + 10000 * f.n + 100000 * g.n AS n FROM {from} WHERE g.n < {}",
                self.widen,
                WIDEN_ROWS / 100_000
            ),
            format!("CREATE TABLE {} (id INT, v INT)", self.counter),
            format!("INSERT INTO {} (id, v) VALUES (1, 0)", self.counter),
            format!("CREATE TABLE {} (v VARCHAR(65535))", self.pad),
        ]);
        self.w.run_batch(&sqls).await.map(|_| ()).map_err(brief)
    }

    /// A statement that reads [`WIDEN_ROWS`] rows and hashes each: it takes the transaction's
    /// snapshot and keeps it open long enough for concurrent writers to overlap.
    fn widen(&self) -> String {
        format!("SELECT SUM(LENGTH(MD5(CAST(n AS VARCHAR(16))))) FROM {}", self.widen)
    }

    /// The product's guarded ledger insert of one file version (the same for every writer but
    /// the batch id, as two writers recording one file would send it).
    fn guarded_ledger_insert(&self, key: &str, batch_id: i64) -> Result<String, String> {
        render(
            &self.sql().insert_ledger(),
            &[
                ("bucket", Lit::Str("selftest".into())),
                ("key", Lit::Str(key.into())),
                ("version", Lit::Str("v1".into())),
                ("sequencer", Lit::Str("0000000001".into())),
                ("size_bytes", Lit::Int(1)),
                ("rows_read", Lit::Int(0)),
                ("rows_loaded", Lit::Int(0)),
                ("rows_rejected", Lit::Int(0)),
                ("status", Lit::Str(LOADED.into())),
                ("reason", Lit::Null),
                ("batch_id", Lit::Int(batch_id)),
                ("event_at", Lit::Null),
                ("loaded_at", Lit::Str("2026-01-02 03:04:05.000000".into())),
                ("merged_at", Lit::Null),
                ("contract_version", Lit::Int(self.contract.version as i64)),
                ("customer", Lit::Str("selftest".into())),
            ],
        )
    }

    async fn count(&self, sql: &str) -> Result<i64, String> {
        let rows = self.w.query(sql).await.map_err(brief)?;
        rows.first()
            .and_then(|r| r.first())
            .and_then(Cell::as_i64)
            .ok_or_else(|| format!("{sql}: no count in {rows:?}"))
    }

    /// The conflict reruns the product's runner has made so far.
    fn reruns(&self) -> u64 {
        self.metrics
            .render()
            .lines()
            .find(|l| l.contains("retries_total{") && l.contains("operation=\"data_api_statement\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// A staging row (contract columns in the contract's stored form, then provenance):
    /// `overrides` are stored values set as they are.
    fn staging_row(&self, overrides: &[(&str, Option<&str>)]) -> Vec<Option<String>> {
        self.contract
            .columns
            .iter()
            .map(|c| match overrides.iter().find(|(n, _)| *n == c.name) {
                Some((_, v)) => v.map(str::to_string),
                None => check_value(c, filler(c)).expect("the filler passes the contract"),
            })
            .collect()
    }

    /// Loads `rows` (one file `file_key`, lines 1…) through the product's part writer,
    /// manifest and COPY; the batch's error text if it failed.
    async fn copy_rows(&self, name: &str, file_key: &str, rows: &[Vec<Option<String>>]) -> Result<(), String> {
        let mut chunk = RowChunk::new(self.contract.columns.len());
        for (i, r) in rows.iter().enumerate() {
            let values: Vec<Option<&str>> = r.iter().map(Option::as_deref).collect();
            chunk.push_row(&values, i as u64 + 1);
        }
        let mut writer = PartWriter::new(usize::MAX);
        let mut parts = writer.write_chunk(&chunk, file_key, "v1", 1).map_err(brief)?;
        match writer.finish().map_err(brief)? {
            stage::FileRows::Own(last) => parts.extend(last),
            stage::FileRows::Buffered(_) => unreachable!("a writer made by PartWriter::new holds no rows"),
        }
        let mut urls = Vec::new();
        for p in parts {
            let part = format!("{}{name}/part-{:05}.csv.gz", self.dir, p.index);
            urls.push(self.w.put_staging(&part, p.bytes).await.map_err(brief)?);
        }
        let manifest = self
            .w
            .put_staging(&format!("{}{name}/manifest.json", self.dir), stage::manifest(&urls).into_bytes())
            .await
            .map_err(brief)?;
        self.w.run_batch(&[self.w.copy_staging_sql(&self.sql(), &manifest)]).await.map(|_| ()).map_err(brief)
    }

    /// One staging row by `INSERT … VALUES` with the product's literals.
    async fn insert_staging_row(&self, file_key: &str, row: &[Option<String>]) -> Result<(), String> {
        let mut cols: Vec<&str> = self.contract.columns.iter().map(|c| c.name.as_str()).collect();
        cols.extend(crate::warehouse::sql::STAGING_PROVENANCE);
        let mut values: Vec<String> =
            row.iter().map(|v| v.as_deref().map_or(Lit::Null, |s| Lit::Str(s.into())).sql()).collect();
        values.extend([Lit::Str(file_key.into()).sql(), Lit::Str("v1".into()).sql(), "1".into(), "1".into()]);
        let sql = format!("INSERT INTO {} ({}) VALUES ({})", self.tables.staging, cols.join(", "), values.join(", "));
        self.w.run_batch(&[sql]).await.map(|_| ()).map_err(brief)
    }

    /// `_line` → the probe column's value, for one file of staging.
    async fn probe_values(&self, file_key: &str) -> Result<Vec<(i64, Option<String>)>, String> {
        let rows = self
            .w
            .query(&format!(
                "SELECT _line, {PROBE_COLUMN} FROM {} WHERE _file_key = {} ORDER BY _line",
                self.tables.staging,
                sql_string(file_key)
            ))
            .await
            .map_err(brief)?;
        Ok(rows
            .iter()
            .map(|r| (r.first().and_then(Cell::as_i64).unwrap_or(-1), r.get(1).and_then(Cell::text)))
            .collect())
    }
}

// ------------------------------------------------------------------------------------------
// The checks

/// What to change when a COPY could not reach its staging objects; None for other failures.
fn staging_trouble(error: &str) -> Option<&'static str> {
    if error.contains("uploading s3://") {
        Some("the service cannot write under warehouse.staging_uri: allow it s3:PutObject, s3:ListBucket and s3:DeleteObject there")
    } else if error.to_ascii_lowercase().contains("access denied") || error.contains("AccessDenied") {
        Some("COPY cannot read the staging objects: warehouse.copy_role_arn must name a role associated with the workgroup/cluster that may s3:GetObject under warehouse.staging_uri")
    } else {
        None
    }
}

/// What to change when a COPY check could not load: the staging access, or `otherwise`.
fn copy_advice(error: &str, otherwise: &str) -> String {
    staging_trouble(error).unwrap_or(otherwise).to_string()
}

/// 1. Which isolation level the database runs (both are supported; informational).
async fn isolation_level(x: &Scratch<'_>) -> Check {
    const NAME: &str = "isolation_level";
    let sql = "SELECT isolation_level FROM stv_db_isolation_level WHERE db_name = current_database()";
    match x.w.query(sql).await {
        Ok(rows) => match rows.first().and_then(|r| r.first()).and_then(Cell::text) {
            Some(level) => {
                let level = level.trim();
                let l = level.to_ascii_lowercase();
                let said = if l.contains("snapshot") {
                    "SNAPSHOT: concurrent writers pass a NOT EXISTS guard together unless the writer lock serializes them"
                } else if l.contains("serializ") {
                    "SERIALIZABLE: concurrent writers conflict (error 1023) and the product reruns them"
                } else {
                    return Check::fail(
                        NAME,
                        format!("unknown isolation level {level:?}"),
                        "the product knows SNAPSHOT and SERIALIZABLE; find out what this level means for concurrent writers before deploying",
                    );
                };
                Check::pass(NAME, format!("{level} ({said}); both levels are supported"))
            }
            None => Check::fail(
                NAME,
                "stv_db_isolation_level has no row for the current database",
                "check that the service's user may read stv_db_isolation_level",
            ),
        },
        Err(e) => Check::fail(
            NAME,
            format!("cannot read stv_db_isolation_level: {}", brief(e)),
            "let the service's user read stv_db_isolation_level (or run selftest as a user who can)",
        ),
    }
}

/// What N concurrent writers of one new ledger row left behind.
struct Race {
    rows: i64,
    failures: Vec<String>,
    reruns: u64,
}

async fn guard_race(x: &Scratch<'_>, key: &str, lock: bool) -> Result<Race, String> {
    let mut batches = Vec::new();
    for i in 0..WRITERS {
        let mut sqls = Vec::new();
        if lock {
            sqls.push(x.sql().lock_writers());
        }
        sqls.push(x.widen());
        sqls.push(x.guarded_ledger_insert(key, i as i64 + 1)?);
        batches.push(sqls);
    }
    let before = x.reruns();
    let results = concurrently(WRITERS, |i| x.w.run_batch(&batches[i])).await;
    let reruns = x.reruns() - before;
    let failures = results.into_iter().filter_map(Result::err).map(brief).collect();
    let rows = x
        .count(&format!(
            "SELECT COUNT(*) FROM {} WHERE bucket = 'selftest' AND key = {}",
            x.tables.files,
            sql_string(key)
        ))
        .await?;
    Ok(Race { rows, failures, reruns })
}

/// 2. The writer lock serializes the guarded ledger insert of concurrent writers.
async fn writer_lock(x: &Scratch<'_>) -> Check {
    const NAME: &str = "writer_lock";
    let locked = match guard_race(x, "selftest/lock/locked", true).await {
        Ok(r) => r,
        Err(e) => return Check::fail(NAME, format!("could not run the race: {e}"), "see the error"),
    };
    let observed = format!(
        "{WRITERS} concurrent batches (LOCK {}, a read of {WIDEN_ROWS} rows, the guarded ledger insert of one new row) left {} row(s), {} failed, {} rerun(s)",
        x.tables.lock, locked.rows, locked.failures.len(), locked.reruns
    );
    let mut check = if let Some(e) = locked.failures.first() {
        Check::fail(
            NAME,
            format!("{observed}: {e}"),
            "a locked commit must not fail: let the service's user LOCK the lock table (it owns it when migrate created it) and rerun",
        )
    } else if locked.rows != 1 {
        Check::fail(
            NAME,
            observed,
            "the LOCK did not serialize the writers, so the ledger guard is not exactly-once here: run a single writer (one task, no replay beside it) until this passes",
        )
    } else {
        Check::pass(NAME, observed)
    };
    match guard_race(x, "selftest/lock/unlocked", false).await {
        Ok(r) => {
            let meaning = if r.rows > 1 {
                "the anomaly the lock exists for (SNAPSHOT isolation)"
            } else if r.reruns > 0 || !r.failures.is_empty() {
                "the level detected the race as conflicts (SERIALIZABLE behaviour)"
            } else {
                "the writers did not overlap this time"
            };
            check = check.note(format!(
                "without the LOCK: {} row(s), {} failed, {} rerun(s): {meaning}",
                r.rows,
                r.failures.len(),
                r.reruns
            ));
            if let Some(e) = r.failures.first() {
                check = check.note(format!("an unlocked batch failed: {e}"));
            }
        }
        Err(e) => check = check.note(format!("the unlocked race could not run: {e}")),
    }
    check
}

/// `n` statements inserting padding into `table`, `total` bytes of SQL text in all.
fn pad_statements(table: &str, n: usize, total: usize) -> Vec<String> {
    let stmt = |k: usize| format!("INSERT INTO {table} (v) VALUES ({})", sql_string(&"x".repeat(k)));
    let base = stmt(0).len();
    (0..n)
        .map(|i| {
            let len = total / n + if i == n - 1 { total % n } else { 0 };
            stmt(len.saturating_sub(base))
        })
        .collect()
}

/// 3. A batch whose text is just under the limit runs; whether the limit is per statement.
async fn batch_size(x: &Scratch<'_>) -> Check {
    const NAME: &str = "batch_size";
    let near = pad_statements(&x.pad, 4, MAX_STATEMENT_BYTES - 512);
    let bytes: usize = near.iter().map(String::len).sum();
    let mut check = match x.w.run_batch(&near).await {
        Ok(_) => Check::pass(NAME, format!("a batch of {} statements, {bytes} bytes of SQL in all, ran", near.len())),
        Err(e) => Check::fail(
            NAME,
            format!("a batch of {} statements, {bytes} bytes of SQL in all, was refused: {}", near.len(), brief(e)),
            format!(
                "the Data API limit is below the product's MAX_STATEMENT_BYTES ({MAX_STATEMENT_BYTES}): lower it (and the budget derived from it) in warehouse/redshift/mod.rs"
            ),
        ),
    };
    let two = pad_statements(&x.pad, 2, 2 * 60 * 1024);
    let bytes: usize = two.iter().map(String::len).sum();
    check = check.note(match x.w.run_batch(&two).await {
        Ok(_) => format!(
            "two statements of 60 KB ({bytes} bytes) in one batch were accepted: the limit is per statement; keeping the whole batch under it, as the product does, is conservative"
        ),
        Err(e) => format!(
            "two statements of 60 KB ({bytes} bytes) in one batch were refused ({}): the limit is per batch, as the product assumes",
            brief(e)
        ),
    });
    check
}

/// 4. Six-digit fractional seconds survive the product's part writer and COPY.
async fn copy_fractional_seconds(x: &Scratch<'_>) -> Check {
    const NAME: &str = "copy_fractional_seconds";
    let expected = "2026-01-02 03:04:05.123456";
    let col = &x.contract.event_time_column;
    let Some(column) = x.contract.columns.iter().find(|c| &c.name == col) else {
        return Check::fail(NAME, format!("the contract has no event-time column {col}"), "fix the contract");
    };
    // What a producer sends, in the contract's stored form (what production writes to parts).
    let stored = match check_value(column, "2026-01-02T03:04:05.123456Z") {
        Ok(Some(v)) => v,
        other => {
            return Check::fail(NAME, format!("the contract stores the timestamp as {other:?}"), "fix the contract")
        }
    };
    let key = "selftest/copy/fractional-seconds.csv";
    if let Err(e) = x.copy_rows("fractional-seconds", key, &[x.staging_row(&[(col, Some(&stored))])]).await {
        return Check::fail(
            NAME,
            format!("the COPY of {stored:?} failed: {e}"),
            copy_advice(
                &e,
                "the COPY options of Sql::copy_staging (TIMEFORMAT 'YYYY-MM-DD HH:MI:SS') refuse fractional seconds here: change its TIMEFORMAT (e.g. 'auto') and rerun selftest",
            ),
        );
    }
    let sql = format!(
        "SELECT TO_CHAR({col}, 'YYYY-MM-DD HH24:MI:SS.US') FROM {} WHERE _file_key = {}",
        x.tables.staging,
        sql_string(key)
    );
    match x.w.query(&sql).await {
        Ok(rows) => match rows.first().and_then(|r| r.first()).and_then(Cell::text) {
            Some(got) if got == expected => {
                Check::pass(NAME, format!("{stored:?} through the product's COPY reads back as {got}"))
            }
            got => Check::fail(
                NAME,
                format!("{stored:?} through the product's COPY reads back as {got:?}, not {expected}"),
                "the COPY options of Sql::copy_staging lose sub-second digits: change its TIMEFORMAT so microseconds are kept",
            ),
        },
        Err(e) => Check::fail(NAME, format!("reading the row back failed: {}", brief(e)), "see the error"),
    }
}

/// 5. What `\N`, an empty unquoted field and a quoted `""` load as through the product's COPY.
async fn copy_null_and_empty(x: &Scratch<'_>) -> Check {
    const NAME: &str = "copy_null_and_empty";
    let key = "selftest/copy/null-and-empty.csv";
    // Lines 1–3: the text `\N` (the contract keeps it as text), NULL (an empty optional value,
    // written as an empty unquoted field), and "" (never produced by the contract; informational).
    let rows = [
        x.staging_row(&[(PROBE_COLUMN, Some("\\N"))]),
        x.staging_row(&[(PROBE_COLUMN, None)]),
        x.staging_row(&[(PROBE_COLUMN, Some(""))]),
    ];
    if let Err(e) = x.copy_rows("null-and-empty", key, &rows).await {
        return Check::fail(
            NAME,
            format!("the COPY failed: {e}"),
            copy_advice(&e, "see the error: the product's COPY must load these fields"),
        );
    }
    let got = match x.probe_values(key).await {
        Ok(v) => v,
        Err(e) => return Check::fail(NAME, format!("reading the rows back failed: {e}"), "see the error"),
    };
    let at = |line: i64| got.iter().find(|(l, _)| *l == line).map(|(_, v)| v.clone());
    let show = |v: &Option<Option<String>>| match v {
        None => "missing".to_string(),
        Some(None) => "NULL".to_string(),
        Some(Some(s)) if s.is_empty() => "an empty string".to_string(),
        Some(Some(s)) => format!("the text '{s}'"),
    };
    let (backslash_n, empty, quoted) = (at(1), at(2), at(3));
    let observed = format!(
        "a field \\N loads as {}, an empty field as {}, a quoted \"\" as {}",
        show(&backslash_n),
        show(&empty),
        show(&quoted)
    );
    let mut advice = Vec::new();
    if backslash_n != Some(Some("\\N".into())) {
        advice.push("COPY reads \\N as NULL (its default NULL string): add NULL AS '' to Sql::copy_staging so the text \\N stays text");
    }
    if empty != Some(None) {
        advice.push("an empty field must load as NULL: keep EMPTYASNULL (and NULL AS '') in Sql::copy_staging");
    }
    let check =
        if advice.is_empty() { Check::pass(NAME, observed) } else { Check::fail(NAME, observed, advice.join("; ")) };
    check.note("the product never writes \"\": the contract turns an empty optional value into NULL")
}

/// 6. VARCHAR widths are bytes: 32 two-byte characters fit VARCHAR(64), 33 do not; and the
///    contract (`max_length` in bytes) draws the line where the warehouse does.
async fn varchar_bytes(x: &Scratch<'_>) -> Check {
    const NAME: &str = "varchar_bytes";
    let fits = "é".repeat(PROBE_BYTES / 2);
    let over = "é".repeat(PROBE_BYTES / 2 + 1);
    // The over-long value is set as it is: the contract would refuse it before any load.
    let row = |v: &str| x.staging_row(&[(PROBE_COLUMN, Some(v))]);
    let outcome = |r: &Result<(), String>| match r {
        Ok(()) => "loaded".to_string(),
        Err(e) => format!("refused ({e})"),
    };
    let insert_fits = x.insert_staging_row("selftest/bytes/insert-fits", &row(&fits)).await;
    let insert_over = x.insert_staging_row("selftest/bytes/insert-over", &row(&over)).await;
    let copy_fits = x.copy_rows("bytes-fits", "selftest/bytes/copy-fits", &[row(&fits)]).await;
    let copy_over = x.copy_rows("bytes-over", "selftest/bytes/copy-over", &[row(&over)]).await;
    let observed = format!(
        "VARCHAR({PROBE_BYTES}) (the product's DDL for max_length = {PROBE_BYTES}): 'é'×{} ({} bytes) by INSERT {}, by COPY {}; 'é'×{} ({} bytes) by INSERT {}, by COPY {}",
        PROBE_BYTES / 2,
        fits.len(),
        outcome(&insert_fits),
        outcome(&copy_fits),
        PROBE_BYTES / 2 + 1,
        over.len(),
        outcome(&insert_over),
        outcome(&copy_over)
    );
    let probe = x.contract.columns.iter().find(|c| c.name == PROBE_COLUMN).expect("the probe column");
    let contract_agrees = check_value(probe, &fits).is_ok() && check_value(probe, &over).is_err();
    let mut advice = Vec::new();
    if let Some(trouble) = copy_fits.as_ref().err().and_then(|e| staging_trouble(e)) {
        advice.push(trouble);
    } else if insert_fits.is_err() || copy_fits.is_err() {
        advice.push("VARCHAR(n) did not hold n bytes of multi-byte text: the product's DDL (VARCHAR(max_length)) is too narrow here; widen it");
    }
    if insert_over.is_ok() || copy_over.is_ok() {
        advice.push("VARCHAR(n) took more than n bytes: widths are not counted in bytes here (Redshift counts bytes; so must the emulator)");
    }
    if !contract_agrees {
        advice.push("the contract's max_length check does not count bytes: a value the warehouse refuses would fail a whole COPY; fix contract::check_value");
    }
    let check =
        if advice.is_empty() { Check::pass(NAME, observed) } else { Check::fail(NAME, observed, advice.join("; ")) };
    check.note(if contract_agrees {
        "the contract accepts the first and rejects the second as a row (max_length counts bytes)"
    } else {
        "the contract does not reject the second value"
    })
}

/// 7. The WAU view's ISO week (`TO_CHAR(ts, 'IYYY-"W"IW')`) at the year boundaries.
async fn iso_week(x: &Scratch<'_>) -> Check {
    const NAME: &str = "iso_week";
    let cases = [("2021-01-03 12:00:00", "2020-W53"), ("2024-12-30 12:00:00", "2025-W01")];
    let c = x.contract;
    let mut cols: Vec<&str> = c.columns.iter().map(|c| c.name.as_str()).collect();
    cols.extend(["_file_key", "_file_version", "_line", "_loaded_at"]);
    let mut rows = Vec::new();
    for (i, (ts, _)) in cases.iter().enumerate() {
        let customer = format!("selftest-week-{i}");
        let values: Vec<String> = c
            .columns
            .iter()
            .map(|col| {
                let v = if col.name == c.customer_column {
                    Some(customer.clone())
                } else if col.name == c.event_time_column {
                    Some(ts.to_string())
                } else {
                    check_value(col, filler(col)).expect("the filler passes the contract")
                };
                v.map_or(Lit::Null, Lit::Str).sql()
            })
            .chain([
                Lit::Str("selftest/week".into()).sql(),
                Lit::Str("v1".into()).sql(),
                Lit::Int(i as i64 + 1).sql(),
                Lit::Str("2026-01-02 03:04:05".into()).sql(),
            ])
            .collect();
        rows.push(format!("({})", values.join(", ")));
    }
    let insert = format!("INSERT INTO {} ({}) VALUES {}", x.tables.target, cols.join(", "), rows.join(", "));
    if let Err(e) = x.w.run_batch(&[insert]).await {
        return Check::fail(NAME, format!("inserting the rows failed: {}", brief(e)), "see the error");
    }
    let got = match x
        .w
        .query(&format!(
            "SELECT customer, iso_week FROM {} WHERE customer LIKE 'selftest-week-%' ORDER BY customer",
            x.tables.wau_view
        ))
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            return Check::fail(NAME, format!("reading the product's view failed: {}", brief(e)), "see the error")
        }
    };
    let weeks: Vec<Option<String>> = got.iter().map(|r| r.get(1).and_then(Cell::text)).collect();
    let observed = cases
        .iter()
        .enumerate()
        .map(|(i, (ts, _))| {
            format!("{} → {}", &ts[..10], weeks.get(i).cloned().flatten().unwrap_or_else(|| "no row".into()))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let ok = cases.iter().enumerate().all(|(i, (_, want))| weeks.get(i).cloned().flatten().as_deref() == Some(*want));
    if ok {
        Check::pass(NAME, format!("the product's WAU view gives {observed}"))
    } else {
        Check::fail(
            NAME,
            format!("the product's WAU view gives {observed}, expected 2020-W53 and 2025-W01"),
            "the ISO week expression of Sql::wau_view (TO_CHAR(ts, 'IYYY-\"W\"IW')) is wrong here: change it",
        )
    }
}

/// Two concurrent batches adding to the same row without a lock: how they ended, and the value.
async fn update_race(x: &Scratch<'_>, once: bool) -> Result<(Vec<Result<(), String>>, i64), String> {
    x.w.run_batch(&[format!("UPDATE {} SET v = 0 WHERE id = 1", x.counter)]).await.map_err(brief)?;
    let batches: Vec<Vec<String>> = [1, 10]
        .iter()
        .map(|add| vec![x.widen(), format!("UPDATE {} SET v = v + {add} WHERE id = 1", x.counter)])
        .collect();
    let results = concurrently(2, |i| {
        let batch = &batches[i];
        async move {
            if once {
                x.w.try_batch_once(batch).await.map_err(brief)
            } else {
                x.w.run_batch(batch).await.map(|_| ()).map_err(brief)
            }
        }
    })
    .await;
    let value = x.count(&format!("SELECT v FROM {} WHERE id = 1", x.counter)).await?;
    Ok((results, value))
}

/// 9. Reconcile's ledger side (`Sql::recorded_page`) where byte and locale orders differ.
///
/// Is the database's `ORDER BY` on VARCHAR byte order? Reconcile is correct
/// either way (it calls an object recorded only on a byte-equal key and sequencer); it is exact
/// only if so. Otherwise recorded objects it passes by go to the pipeline, which finds them
/// duplicates (one HeadObject and one ledger lookup each).
async fn ledger_key_order(x: &Scratch<'_>) -> Check {
    const NAME: &str = "ledger_key_order";
    const BUCKET: &str = "s3://selftest-order";
    let keys = ["k/B", "k/a-b", "k/a.csv", "k/a/x", "k/a_b", "k/z", "k/~", "k/é"];
    let rows: Vec<String> = keys
        .iter()
        .map(|k| {
            let values = [
                Lit::Str(BUCKET.into()),
                Lit::Str((*k).into()),
                Lit::Str("v1".into()),
                Lit::Str("00000001".into()),
                Lit::Int(1),
                Lit::Int(1),
                Lit::Int(0),
                Lit::Str(LOADED.into()),
                Lit::Int(1),
                Lit::Str("2026-01-02 03:04:05".into()),
                Lit::Int(1),
            ];
            format!("({})", values.iter().map(Lit::sql).collect::<Vec<_>>().join(", "))
        })
        .collect();
    let insert = format!(
        "INSERT INTO {} (bucket, key, version, sequencer, rows_read, rows_loaded, rows_rejected, status, batch_id, \
         loaded_at, contract_version) VALUES {}",
        x.tables.files,
        rows.join(", ")
    );
    if let Err(e) = x.w.run_batch(&[insert]).await {
        return Check::fail(NAME, format!("inserting the ledger rows failed: {}", brief(e)), "see the error");
    }
    let page = |start: RecordedPage, key: &'static str, sequencer: &'static str| async move {
        let params = [
            ("bucket", Lit::Str(BUCKET.into())),
            ("key", Lit::Str(key.into())),
            ("sequencer", Lit::Str(sequencer.into())),
        ];
        let sql = render(&x.sql().recorded_page(start, 100), &params)?;
        let rows = x.w.query(&sql).await.map_err(brief)?;
        Ok::<Vec<String>, String>(rows.iter().filter_map(|r| r.first().and_then(Cell::text)).collect())
    };
    let (all, after_third) =
        match (page(RecordedPage::AtKey, "k/", "").await, page(RecordedPage::After, "k/a.csv", "00000001").await) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                return Check::fail(NAME, format!("reading the pages failed: {e}"), "see the error")
            }
        };
    let mut bytewise: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    bytewise.sort();
    let rest: Vec<String> = bytewise.iter().filter(|k| k.as_str() > "k/a.csv").cloned().collect();
    let observed = format!("ORDER BY key gives {all:?}; after k/a.csv: {after_third:?}");
    if all == bytewise && after_third == rest {
        Check::pass(NAME, format!("{observed}: byte order, so reconcile's merge-join is exact"))
    } else {
        Check::fail(
            NAME,
            format!("{observed}; byte order is {bytewise:?}"),
            "nothing to change for correctness: reconcile hands the objects it passes by to the pipeline, which \
             counts them duplicates; expect `reconcile` to report out-of-order ledger rows and to run slower",
        )
    }
}

/// 8. A concurrency conflict is recognised and rerun by the product's statement runner.
async fn conflict_retry(x: &Scratch<'_>) -> Check {
    const NAME: &str = "conflict_retry";
    // First without the runner's reruns, to see the error Redshift gives.
    let mut error = None;
    for _ in 0..RACE_ATTEMPTS {
        match update_race(x, true).await {
            Ok((results, _)) => {
                if let Some(e) = results.into_iter().find_map(Result::err) {
                    error = Some(e);
                    break;
                }
            }
            Err(e) => return Check::fail(NAME, format!("could not run the race: {e}"), "see the error"),
        }
    }
    let Some(error) = error else {
        return Check::fail(
            NAME,
            format!("{RACE_ATTEMPTS} races of two concurrent updates of one row never conflicted"),
            "the race did not show on this workgroup: rerun selftest; if it persists, the conflict path cannot be checked here",
        );
    };
    let recognised = is_serialization_conflict(&error);
    // Then through the runner: both updates must end up in the row.
    let mut last = None;
    for _ in 0..RACE_ATTEMPTS {
        let before = x.reruns();
        match update_race(x, false).await {
            Ok((results, value)) => {
                let reruns = x.reruns() - before;
                let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
                last = Some((failed, value, reruns));
                if reruns > 0 || last.as_ref().is_some_and(|(f, _, _)| !f.is_empty()) {
                    break;
                }
            }
            Err(e) => return Check::fail(NAME, format!("could not run the race: {e}"), "see the error"),
        }
    }
    let (failed, value, reruns) = last.expect("at least one attempt");
    let observed = format!(
        "the losing batch failed with \"{error}\" (is_serialization_conflict: {}); through the runner: {} rerun(s), {} failed, the row holds {value} (11 = both updates)",
        if recognised { "recognised" } else { "NOT recognised" },
        reruns,
        failed.len()
    );
    if !recognised {
        return Check::fail(
            NAME,
            observed,
            "add this error text to is_serialization_conflict in warehouse/redshift/data_api.rs, so commits and merges that meet it are rerun",
        );
    }
    if !failed.is_empty() || value != 11 {
        let why = failed.first().cloned().unwrap_or_default();
        return Check::fail(
            NAME,
            format!("{observed}: {why}"),
            "the runner did not rerun the conflicting batch to success: see the error",
        );
    }
    let check = Check::pass(NAME, observed);
    if reruns == 0 {
        check.note("the runner's races did not conflict this time; the recognition above is what decides the rerun")
    } else {
        check
    }
}

/// 10. `migrate` adds an optional column as the product writes it (`Sql::add_column`, one
///     statement on its own): on a table with rows it works, the rows read NULL in it, the
///     product's catalog query (`Sql::table_columns`, SVV_COLUMNS) sees it with its byte width,
///     and the WAU view over the target still answers.
async fn add_column(x: &Scratch<'_>) -> Check {
    const NAME: &str = "add_column";
    let sql = x.sql();
    let row = x.staging_row(&[]);
    if let Err(e) = x.insert_staging_row("selftest/add-column", &row).await {
        return Check::fail(NAME, format!("could not insert a staging row: {e}"), "see the error");
    }
    let added = crate::warehouse::sql::WantedColumn {
        name: "selftest_added".into(),
        ty: "VARCHAR(64)".into(),
        not_null: false,
    };
    for table in [&x.tables.staging, &x.tables.target] {
        if let Err(e) = x.w.execute(&sql.add_column(table, &added)).await {
            return Check::fail(
                NAME,
                format!("ALTER TABLE {table} ADD COLUMN {} failed: {}", added.ddl(), brief(e)),
                "migrate cannot add optional columns here: apply a contract's new column by hand (see docs/design.md, Schema evolution)",
            );
        }
    }
    let mut advice = Vec::new();
    let nulls = x
        .count(&format!(
            "SELECT COUNT(*) FROM {} WHERE _file_key = 'selftest/add-column' AND {} IS NULL",
            x.tables.staging, added.name
        ))
        .await;
    if nulls != Ok(1) {
        advice.push(format!("the row already there does not read NULL in the new column ({nulls:?})"));
    }
    let catalog = x.w.read_text(&sql.table_columns(&[x.tables.staging.as_str()])).await.map_err(brief);
    let seen = match &catalog {
        Ok(rows) => rows.iter().filter_map(|r| sql.actual_column(&r[1..])).find(|c| c.name == added.name),
        Err(_) => None,
    };
    let want = crate::warehouse::sql::ActualColumn { name: added.name.clone(), ty: added.ty.clone(), not_null: false };
    if seen.as_ref() != Some(&want) {
        advice.push(format!(
            "SVV_COLUMNS does not describe the new column as {} (saw {seen:?}; {catalog:?}): fix Sql::table_columns / actual_column",
            added.ty
        ));
    }
    // The form every command runs at start: a bare name, looked up in the current schema.
    if let Err(e) = x.w.read_text(&sql.table_columns(&["wau_selftest_no_such_table"])).await {
        advice.push(format!("the catalog query for a table of the current schema failed: {}", brief(e)));
    }
    let view = x.count(&format!("SELECT COUNT(*) FROM {}", x.tables.wau_view)).await;
    if let Err(e) = &view {
        advice.push(format!("the WAU view no longer answers after ADD COLUMN on its table: {e}"));
    }
    let observed = format!(
        "ADD COLUMN {} on staging (1 row) and the target: the row reads NULL: {}; SVV_COLUMNS: {seen:?}; the WAU view answers: {}",
        added.ddl(),
        nulls == Ok(1),
        view.is_ok()
    );
    if advice.is_empty() {
        Check::pass(NAME, observed)
    } else {
        Check::fail(NAME, observed, advice.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_column_is_64_bytes_on_redshift() {
        let c = probe_contract(&Contract::builtin());
        let t = scratch_tables(&c, "wau_selftest_x");
        let ddl = Sql::new(Dialect::Redshift, &c, &t).migrate().join("\n");
        assert!(ddl.contains("CREATE TABLE IF NOT EXISTS wau_selftest_x.wau_audit_logs_staging"), "{ddl}");
        assert!(ddl.contains(&format!("{PROBE_COLUMN} VARCHAR(64)")), "{ddl}");
        assert!(ddl.contains("CREATE OR REPLACE VIEW wau_selftest_x.wau_weekly_active_users"), "{ddl}");
        assert!(ddl.contains("CREATE OR REPLACE VIEW wau_selftest_x.wau_ingest_customer_freshness"), "{ddl}");
        for stmt in Sql::new(Dialect::Redshift, &c, &t).migrate() {
            let created = stmt.split_whitespace().find(|w| w.contains("wau_")).unwrap_or_default();
            assert!(created.starts_with("wau_selftest_x."), "every object in the scratch schema: {stmt}");
        }
        assert_eq!(probe_contract(&c).columns.len(), c.columns.len(), "added once");
    }

    #[test]
    fn fillers_pass_the_builtin_contract() {
        for col in &Contract::builtin().columns {
            assert!(check_value(col, filler(col)).unwrap().is_some(), "{}", col.name);
        }
    }

    #[test]
    fn errors_are_cut_to_what_a_person_reads() {
        let e = "warehouse: BatchExecuteStatement: service error: ValidationException: too long (ServiceError(ServiceError { raw: … }))";
        assert_eq!(brief(e), "warehouse: BatchExecuteStatement: service error: ValidationException: too long");
        let long = "é".repeat(ERROR_CHARS + 5);
        assert_eq!(brief(&long).chars().count(), ERROR_CHARS + 1);
    }

    #[test]
    fn padding_adds_up_to_the_asked_size() {
        for (n, total) in [(4, MAX_STATEMENT_BYTES - 512), (2, 2 * 60 * 1024)] {
            let sqls = pad_statements("s.selftest_pad", n, total);
            assert_eq!(sqls.len(), n);
            assert_eq!(sqls.iter().map(String::len).sum::<usize>(), total);
        }
    }

    #[test]
    fn the_report_says_pass_fail_and_what_to_change() {
        let r = Report {
            target: "workgroup w".into(),
            database: "dev".into(),
            schema: "wau_selftest_1".into(),
            staging: "s3://b/staging/selftest-wau_selftest_1/".into(),
            checks: vec![
                Check::pass("isolation_level", "SNAPSHOT"),
                Check::fail("varchar_bytes", "took 66 bytes", "count bytes").note("informational"),
            ],
            cleanup: Cleanup { schema_dropped: true, objects_deleted: 3, errors: vec![] },
        };
        assert_eq!(r.exit_code(), 1);
        let text = r.to_string();
        assert!(text.contains("PASS  isolation_level  SNAPSHOT"), "{text}");
        assert!(text.contains("FAIL  varchar_bytes    took 66 bytes"), "{text}");
        assert!(text.contains("change: count bytes"), "{text}");
        assert!(text.contains("note: informational"), "{text}");
        assert!(text.ends_with("1 of 2 checks passed"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["checks"][1]["verdict"], "FAIL");
        assert_eq!(json["checks"][0].get("advice"), None);
    }
}
