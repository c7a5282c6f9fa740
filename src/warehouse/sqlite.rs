//! The embedded warehouse: one SQLite file in WAL mode.
//!
//! A micro-batch is one `BEGIN IMMEDIATE … COMMIT` transaction; each file in it is a
//! savepoint, so a file rejected (or abandoned) mid-stream leaves nothing behind while the
//! batch goes on. Rows stream straight into staging, so memory does not grow with file size.
//!
//! # Blocking, privately
//!
//! rusqlite blocks, the [`Warehouse`]/[`BatchSink`] traits are async, and nothing blocking may
//! run on the runtime. So a sink ([`SqliteSink`]) is a handle to a thread of its own that owns
//! the writer's connection and the open batch: each call is a command sent to that thread and
//! its reply awaited. The warehouse's reads, the migration and the merge run on tokio's
//! blocking pool (`spawn_blocking`) inside this module. Nothing outside it knows.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{Connection, Statement, ToSql};
use tokio::sync::{mpsc, oneshot};

use super::ledger::{self, Verdict};
use super::sql::{Dialect, MergeStepKind, Sql, Tables};
use super::{
    Admission, BatchReport, BatchSink, FileMeta, FileStatus, FileSummary, LedgerTotals, MergeReport, PageStart,
    Recorded, Warehouse, WarehouseError, WauRow,
};
use crate::contract::{format_timestamp, parse_timestamp, Contract};
use crate::validate::{Reject, RowChunk};

/// The embedded warehouse: a handle on [`Store`], whose blocking calls run on tokio's
/// blocking pool.
pub struct SqliteWarehouse {
    store: Arc<Store>,
}

/// What the warehouse is, with its blocking calls.
struct Store {
    path: PathBuf,
    contract: Contract,
    tables: Tables,
    reader: Mutex<Option<Connection>>,
    /// The running merge's connection, so shutdown can interrupt it.
    merging: Mutex<Option<rusqlite::InterruptHandle>>,
    /// Where statement latency goes (the service's registry), when given.
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    /// Merge with the shared SQL text ([`Sql::merge`]) instead of SQLite's own winner
    /// selection ([`Sql::merge_sqlite`]): for the differential test.
    shared_merge: bool,
}

pub fn now_text() -> String {
    format_timestamp(Utc::now())
}

fn open(path: &Path) -> Result<Connection, WarehouseError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    // FULL: a commit is on disk before we acknowledge anything it covers.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -16384; PRAGMA temp_store = FILE;",
    )?;
    Ok(conn)
}

/// Binds only the named parameters the statement uses (the shared SQL text names more than
/// some statements need).
fn bind_named(stmt: &mut Statement<'_>, params: &[(&str, &dyn ToSql)]) -> Result<(), WarehouseError> {
    for (name, value) in params {
        if let Some(i) = stmt.parameter_index(name)? {
            stmt.raw_bind_parameter(i, *value)?;
        }
    }
    Ok(())
}

fn exec_named(conn: &Connection, sql: &str, params: &[(&str, &dyn ToSql)]) -> Result<usize, WarehouseError> {
    let mut stmt = conn.prepare_cached(sql)?;
    bind_named(&mut stmt, params)?;
    Ok(stmt.raw_execute()?)
}

impl SqliteWarehouse {
    pub fn open(path: &Path, contract: &Contract) -> Result<SqliteWarehouse, WarehouseError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| WarehouseError::Other(format!("creating {}: {e}", dir.display())))?;
        }
        Ok(SqliteWarehouse {
            store: Arc::new(Store {
                path: path.to_path_buf(),
                contract: contract.clone(),
                tables: Tables::for_contract(contract),
                reader: Mutex::new(None),
                merging: Mutex::new(None),
                metrics: None,
                shared_merge: false,
            }),
        })
    }

    /// Settings are made before the warehouse is shared (right after `open`).
    fn settings(&mut self) -> &mut Store {
        Arc::get_mut(&mut self.store).expect("a SqliteWarehouse is configured before it is used")
    }

    /// Records the merge's latency as `statement_seconds{operation="merge"}`, as the Redshift
    /// warehouse records each of its statements.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> SqliteWarehouse {
        self.settings().metrics = Some(metrics);
        self
    }

    /// Merges with the shared SQL text, the `ROW_NUMBER()` winner selection every engine runs,
    /// instead of SQLite's anti-join: what `tests/merge_differential.rs` compares against.
    #[doc(hidden)]
    pub fn with_shared_merge(mut self) -> SqliteWarehouse {
        self.settings().shared_merge = true;
        self
    }

    pub fn path(&self) -> &Path {
        &self.store.path
    }

    /// Runs `f` on the store on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, WarehouseError> + Send + 'static,
    ) -> Result<T, WarehouseError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| WarehouseError::Other(format!("sqlite: a blocking call failed: {e}")))?
    }
}

impl Store {
    fn sql(&self) -> Sql<'_> {
        Sql::new(Dialect::Sqlite, &self.contract, &self.tables)
    }

    fn merge_steps(&self) -> Vec<super::sql::MergeStep> {
        if self.shared_merge {
            self.sql().merge()
        } else {
            self.sql().merge_sqlite()
        }
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, WarehouseError>) -> Result<T, WarehouseError> {
        let mut guard = self.reader.lock().expect("reader lock");
        if guard.is_none() {
            *guard = Some(open(&self.path)?);
        }
        f(guard.as_ref().expect("opened"))
    }

    fn merge_on(&self, conn: &Connection) -> Result<MergeReport, WarehouseError> {
        let sql = self.sql();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            let pending: i64 = conn.query_row(&sql.unmerged_count(), [], |r| r.get(0))?;
            if pending == 0 {
                return Ok(MergeReport::default());
            }
            let mut event_times = Vec::new();
            {
                let mut stmt = conn.prepare(&sql.unmerged_event_times())?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    if let Some(t) = parse_timestamp(&r.get::<_, String>(0)?) {
                        event_times.push(t);
                    }
                }
            }
            let files: i64 = conn.query_row(&sql.unmerged_loaded_count(), [], |r| r.get(0))?;
            let now = now_text();
            // Statements in order; the target's delete and insert counts feed the history row.
            let (mut deleted, mut inserted) = (0i64, 0i64);
            for step in self.merge_steps() {
                let stmt = step.sql;
                let started = std::time::Instant::now();
                let n = exec_named(
                    conn,
                    &stmt,
                    &[(":merged_at", &now), (":rows_deleted", &deleted), (":rows_inserted", &inserted)],
                )? as i64;
                match step.kind {
                    MergeStepKind::DeleteTarget => deleted += n,
                    MergeStepKind::InsertWinners => inserted += n,
                    _ => {}
                }
                tracing::debug!(rows = n, ms = started.elapsed().as_millis() as u64, sql = %stmt.lines().next().unwrap_or(""), "merge statement");
            }
            Ok(MergeReport {
                files: files as u64,
                rows_deleted: deleted as u64,
                rows_inserted: inserted as u64,
                event_times,
            })
        })();
        match result {
            Ok(report) => {
                conn.execute_batch("COMMIT")?;
                Ok(report)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// The warehouse's calls, blocking: [`SqliteWarehouse`] runs them on the blocking pool.
impl Store {
    fn migrate(&self) -> Result<(), WarehouseError> {
        // Tables behind the contract first: then nothing is changed (an index could name a
        // column they lack).
        let sql = self.sql();
        let columns = self.read_text(&super::evolve::columns_query(&sql))?;
        super::evolve::require_current(&super::evolve::plan_from(&sql, &columns))?;
        let conn = open(&self.path)?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for stmt in sql.migrate() {
            conn.execute_batch(&stmt)?;
        }
        conn.execute_batch("COMMIT")?;
        Ok(())
    }

    fn execute_ddl(&self, statement: &str) -> Result<(), WarehouseError> {
        open(&self.path)?.execute_batch(statement)?;
        Ok(())
    }

    fn lookup(&self, bucket: &str, key: &str, version: &str) -> Result<Option<FileStatus>, WarehouseError> {
        let sql = self.sql().lookup_version();
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            bind_named(&mut stmt, &[(":bucket", &bucket), (":key", &key), (":version", &version)])?;
            let mut rows = stmt.raw_query();
            Ok(match rows.next()? {
                Some(r) => FileStatus::parse(&r.get::<_, String>(0)?),
                None => None,
            })
        })
    }

    fn lookup_stamp(
        &self,
        bucket: &str,
        key: &str,
        sequencer: &str,
        size: u64,
    ) -> Result<Option<FileStatus>, WarehouseError> {
        let sql = self.sql().lookup_stamp();
        let size = size as i64;
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            bind_named(
                &mut stmt,
                &[(":bucket", &bucket), (":key", &key), (":sequencer", &sequencer), (":size_bytes", &size)],
            )?;
            let mut rows = stmt.raw_query();
            Ok(match rows.next()? {
                Some(r) => FileStatus::parse(&r.get::<_, String>(0)?),
                None => None,
            })
        })
    }

    fn recorded_page(&self, bucket: &str, start: &PageStart, limit: usize) -> Result<Vec<Recorded>, WarehouseError> {
        let (form, key, sequencer) = start.bound();
        let sql = self.sql().recorded_page(form, limit);
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            bind_named(&mut stmt, &[(":bucket", &bucket), (":key", &key), (":sequencer", &sequencer)])?;
            let mut rows = stmt.raw_query();
            let mut page = Vec::with_capacity(limit.min(16 * 1024));
            while let Some(r) = rows.next()? {
                page.push(Recorded { key: r.get(0)?, sequencer: r.get(1)? });
            }
            Ok(page)
        })
    }

    fn merge(&self) -> Result<MergeReport, WarehouseError> {
        let conn = open(&self.path)?;
        *self.merging.lock().expect("merging lock") = Some(conn.get_interrupt_handle());
        let started = std::time::Instant::now();
        let result = self.merge_on(&conn);
        *self.merging.lock().expect("merging lock") = None;
        if let (Some(m), Ok(_)) = (&self.metrics, &result) {
            m.statement("merge", started.elapsed().as_secs_f64());
        }
        result
    }

    fn interrupt_merge(&self) {
        if let Some(h) = self.merging.lock().expect("merging lock").as_ref() {
            h.interrupt();
        }
    }

    fn ping(&self) -> Result<(), WarehouseError> {
        self.with_reader(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
    }

    fn weekly_active_users(&self, since: &str, customer: Option<&str>) -> Result<Vec<WauRow>, WarehouseError> {
        let sql = self.sql().report();
        let customer = customer.unwrap_or("");
        self.with_reader(|c| {
            let mut stmt = c.prepare(&sql)?;
            bind_named(&mut stmt, &[(":since", &since), (":customer", &customer)])?;
            let mut rows = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(WauRow {
                    customer: r.get(0)?,
                    iso_week: r.get(1)?,
                    week_start: r.get(2)?,
                    active_users: r.get(3)?,
                });
            }
            Ok(out)
        })
    }

    fn totals(&self) -> Result<LedgerTotals, WarehouseError> {
        let sql = self.sql().totals();
        self.with_reader(|c| {
            Ok(c.query_row(&sql, [], |r| {
                let g = |i| r.get::<_, i64>(i).map(|v| v as u64);
                Ok(LedgerTotals {
                    files_loaded: g(0)?,
                    files_rejected: g(1)?,
                    files_superseded: g(2)?,
                    rows_read: g(3)?,
                    rows_loaded: g(4)?,
                    rows_rejected: g(5)?,
                    unbalanced_files: g(6)?,
                    target_rows: g(7)?,
                    staging_rows: g(8)?,
                    reject_rows: g(9)?,
                })
            })?)
        })
    }

    fn read_text(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WarehouseError> {
        use rusqlite::types::ValueRef;
        self.with_reader(|c| {
            let mut stmt = c.prepare(sql)?;
            let n = stmt.column_count();
            let mut rows = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut row = Vec::with_capacity(n);
                for i in 0..n {
                    row.push(match r.get_ref(i)? {
                        ValueRef::Null => None,
                        ValueRef::Integer(v) => Some(v.to_string()),
                        ValueRef::Real(v) => Some(v.to_string()),
                        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
                    });
                }
                out.push(row);
            }
            Ok(out)
        })
    }

    fn record_reconcile(&self, run: &super::sql::ReconcileRecord) -> Result<(), WarehouseError> {
        open(&self.path)?.execute_batch(&self.sql().insert_reconcile(run))?;
        Ok(())
    }
}

#[async_trait]
impl Warehouse for SqliteWarehouse {
    async fn migrate(&self) -> Result<(), WarehouseError> {
        self.blocking(|s| s.migrate()).await
    }

    async fn execute_ddl(&self, statement: &str) -> Result<(), WarehouseError> {
        let statement = statement.to_string();
        self.blocking(move |s| s.execute_ddl(&statement)).await
    }

    fn sink(&self) -> Result<Box<dyn BatchSink>, WarehouseError> {
        let s = &self.store;
        Ok(Box::new(SqliteSink::spawn(s.path.clone(), s.contract.clone(), s.tables.clone())?))
    }

    async fn lookup(&self, bucket: &str, key: &str, version: &str) -> Result<Option<FileStatus>, WarehouseError> {
        let (b, k, v) = (bucket.to_string(), key.to_string(), version.to_string());
        self.blocking(move |s| s.lookup(&b, &k, &v)).await
    }

    async fn lookup_stamp(
        &self,
        bucket: &str,
        key: &str,
        sequencer: &str,
        size: u64,
    ) -> Result<Option<FileStatus>, WarehouseError> {
        let (b, k, q) = (bucket.to_string(), key.to_string(), sequencer.to_string());
        self.blocking(move |s| s.lookup_stamp(&b, &k, &q, size)).await
    }

    async fn recorded_page(
        &self,
        bucket: &str,
        start: &PageStart,
        limit: usize,
    ) -> Result<Vec<Recorded>, WarehouseError> {
        let (b, start) = (bucket.to_string(), start.clone());
        self.blocking(move |s| s.recorded_page(&b, &start, limit)).await
    }

    /// On the blocking pool; [`Warehouse::interrupt_merge`] from another task stops it.
    async fn merge(&self) -> Result<MergeReport, WarehouseError> {
        self.blocking(|s| s.merge()).await
    }

    async fn interrupt_merge(&self) {
        self.store.interrupt_merge()
    }

    async fn ping(&self) -> Result<(), WarehouseError> {
        self.blocking(|s| s.ping()).await
    }

    async fn weekly_active_users(&self, since: &str, customer: Option<&str>) -> Result<Vec<WauRow>, WarehouseError> {
        let (since, customer) = (since.to_string(), customer.map(str::to_string));
        self.blocking(move |s| s.weekly_active_users(&since, customer.as_deref())).await
    }

    async fn totals(&self) -> Result<LedgerTotals, WarehouseError> {
        self.blocking(|s| s.totals()).await
    }

    async fn read_text(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WarehouseError> {
        let sql = sql.to_string();
        self.blocking(move |s| s.read_text(&sql)).await
    }

    async fn record_reconcile(&self, run: &super::sql::ReconcileRecord) -> Result<(), WarehouseError> {
        let run = run.clone();
        self.blocking(move |s| s.record_reconcile(&run)).await
    }
}

struct OpenBatch {
    batch_id: i64,
    now: String,
    /// What the batch's ledger rows say so far (the commit's report).
    files: u64,
    rows_loaded: u64,
    rows_rejected: u64,
    /// Rows and bytes written, the open file's included (the flush policy's measure).
    rows: u64,
    bytes: u64,
    /// The open file's share of `rows` and `bytes`, given back when it is dropped.
    file_rows: u64,
    file_bytes: u64,
}

/// The writer's connection and open batch: lives on the sink's own thread ([`SqliteSink`]).
struct Writer {
    conn: Connection,
    contract: Contract,
    tables: Tables,
    insert_staging: String,
    batch: Option<OpenBatch>,
    file: Option<FileMeta>,
}

impl Writer {
    /// The open file's rows leave the batch (discarded or abandoned): so do they from `pending`.
    fn drop_file_share(&mut self) {
        if let Some(b) = self.batch.as_mut() {
            b.rows -= std::mem::take(&mut b.file_rows);
            b.bytes -= std::mem::take(&mut b.file_bytes);
        }
    }

    fn new(conn: Connection, contract: Contract, tables: Tables) -> Writer {
        let insert_staging = Sql::new(Dialect::Sqlite, &contract, &tables).insert_staging();
        Writer { conn, contract, tables, insert_staging, batch: None, file: None }
    }

    fn sql(&self) -> Sql<'_> {
        Sql::new(Dialect::Sqlite, &self.contract, &self.tables)
    }

    fn open_file(&self) -> Result<&FileMeta, WarehouseError> {
        self.file.as_ref().ok_or_else(|| WarehouseError::Other("no file is open in the batch".into()))
    }

    fn batch(&self) -> &OpenBatch {
        self.batch.as_ref().expect("a batch is open while a file is")
    }

    fn record(&self, file: &FileMeta, summary: &FileSummary, merged_at: Option<&str>) -> Result<bool, WarehouseError> {
        let b = self.batch();
        let event_at = format_timestamp(file.event_time);
        let (size, read, loaded, rejected) =
            (file.size as i64, summary.rows_read as i64, summary.rows_loaded as i64, summary.rows_rejected as i64);
        let n = exec_named(
            &self.conn,
            &self.sql().insert_ledger(),
            &[
                (":bucket", &file.bucket),
                (":key", &file.key),
                (":version", &file.version),
                (":sequencer", &file.sequencer),
                (":size_bytes", &size),
                (":rows_read", &read),
                (":rows_loaded", &loaded),
                (":rows_rejected", &rejected),
                (":status", &summary.status.as_str()),
                (":reason", &summary.reason),
                (":batch_id", &b.batch_id),
                (":event_at", &event_at),
                (":loaded_at", &b.now),
                (":merged_at", &merged_at),
                (":contract_version", &file.contract_version),
                (":customer", &summary.customer),
            ],
        )?;
        Ok(n == 1)
    }
}

/// The sink's calls, blocking, on the writer's thread.
impl Writer {
    fn admit(&mut self, file: &FileMeta, force: bool) -> Result<Admission, WarehouseError> {
        if self.file.is_some() {
            return Err(WarehouseError::Other(format!("admit {} while another file is open", file.key)));
        }
        if self.batch.is_none() {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let batch_id: i64 = self.conn.query_row(&self.sql().next_batch_id(), [], |r| r.get(0))?;
            self.batch = Some(OpenBatch {
                batch_id,
                now: now_text(),
                files: 0,
                rows_loaded: 0,
                rows_rejected: 0,
                rows: 0,
                bytes: 0,
                file_rows: 0,
                file_bytes: 0,
            });
        }
        let id: [(&str, &dyn ToSql); 4] = [
            (":bucket", &file.bucket),
            (":key", &file.key),
            (":version", &file.version),
            (":sequencer", &file.sequencer),
        ];
        // The open batch's own rows are in the transaction, so the newest load may be its copy.
        let existing: Option<(String, i64)> = {
            let mut stmt = self.conn.prepare_cached(&self.sql().lookup_version())?;
            bind_named(&mut stmt, &id)?;
            let mut rows = stmt.raw_query();
            rows.next()?.map(|r| Ok::<_, rusqlite::Error>((r.get(0)?, r.get(1)?))).transpose()?
        };
        let in_open_batch = existing.as_ref().is_some_and(|(_, batch)| *batch == self.batch().batch_id);
        let existing = existing.as_ref().and_then(|(status, _)| FileStatus::parse(status));
        if let (Some(status), false) = (existing, force) {
            return Ok(Admission::Duplicate(status)); // no need to ask for a newer version
        }
        let newer: i64 = {
            let mut stmt = self.conn.prepare_cached(&self.sql().newer_version_exists())?;
            bind_named(&mut stmt, &id)?;
            let mut rows = stmt.raw_query();
            rows.next()?.map(|r| r.get(0)).transpose()?.unwrap_or(0)
        };
        match ledger::admit(existing, newer > 0, force, in_open_batch) {
            Verdict::Duplicate(status) => return Ok(Admission::Duplicate(status)),
            Verdict::Superseded => {
                let summary = FileSummary::superseded(file);
                let now = self.batch().now.clone();
                self.record(file, &summary, Some(&now))?;
                self.batch.as_mut().expect("open").files += 1;
                return Ok(Admission::Superseded);
            }
            Verdict::Reload => {
                exec_named(&self.conn, &self.sql().replace_version(), &id)?;
            }
            Verdict::Load => {}
        }
        self.conn.execute_batch("SAVEPOINT file")?;
        self.file = Some(file.clone());
        Ok(Admission::Load)
    }

    fn write_rows(&mut self, chunk: &RowChunk) -> Result<(), WarehouseError> {
        let file = self.open_file()?;
        let batch_id = self.batch().batch_id;
        let mut stmt = self.conn.prepare_cached(&self.insert_staging)?;
        let ncols = chunk.ncols;
        // The provenance every row of the chunk shares is bound once: a step keeps its bindings.
        stmt.raw_bind_parameter(ncols + 1, &file.key)?;
        stmt.raw_bind_parameter(ncols + 2, &file.version)?;
        stmt.raw_bind_parameter(ncols + 4, batch_id)?;
        for i in 0..chunk.len() {
            for (c, v) in chunk.row(i).enumerate() {
                stmt.raw_bind_parameter(c + 1, v)?;
            }
            stmt.raw_bind_parameter(ncols + 3, chunk.lines[i] as i64)?;
            stmt.raw_execute()?;
        }
        let b = self.batch.as_mut().expect("open");
        b.rows += chunk.len() as u64;
        b.bytes += chunk.bytes as u64;
        b.file_rows += chunk.len() as u64;
        b.file_bytes += chunk.bytes as u64;
        Ok(())
    }

    fn write_rejects(&mut self, rejects: &[Reject]) -> Result<(), WarehouseError> {
        let file = self.open_file()?;
        let (batch_id, now) = (self.batch().batch_id, self.batch().now.clone());
        let sql = self.sql().insert_reject();
        let mut stmt = self.conn.prepare_cached(&sql)?;
        for r in rejects {
            let line = r.line as i64;
            bind_named(
                &mut stmt,
                &[
                    (":bucket", &file.bucket),
                    (":key", &file.key),
                    (":version", &file.version),
                    (":batch_id", &batch_id),
                    (":line", &line),
                    (":column_name", &r.column),
                    (":rule", &r.rule),
                    (":reason", &r.reason),
                    (":value", &r.value),
                    (":raw_line", &r.raw),
                    (":contract_version", &file.contract_version),
                    (":rejected_at", &now),
                ],
            )?;
            stmt.raw_execute()?;
        }
        Ok(())
    }

    fn discard_file_rows(&mut self) -> Result<(), WarehouseError> {
        self.open_file()?;
        self.conn.execute_batch("ROLLBACK TO file")?;
        self.drop_file_share();
        Ok(())
    }

    fn finish_file(&mut self, summary: &FileSummary) -> Result<bool, WarehouseError> {
        let file = self.open_file()?.clone();
        let merged_at = (summary.status != FileStatus::Loaded).then(|| self.batch().now.clone());
        if !self.record(&file, summary, merged_at.as_deref())? {
            self.abandon_file()?;
            return Ok(false);
        }
        exec_named(
            &self.conn,
            &self.sql().supersede_older(),
            &[
                (":bucket", &file.bucket),
                (":key", &file.key),
                (":version", &file.version),
                (":sequencer", &file.sequencer),
            ],
        )?;
        self.conn.execute_batch("RELEASE file")?;
        self.file = None;
        let b = self.batch.as_mut().expect("open");
        b.files += 1;
        b.rows_loaded += summary.rows_loaded;
        b.rows_rejected += summary.rows_rejected;
        b.file_rows = 0;
        b.file_bytes = 0;
        Ok(true)
    }

    fn abandon_file(&mut self) -> Result<(), WarehouseError> {
        if self.file.take().is_some() {
            self.conn.execute_batch("ROLLBACK TO file; RELEASE file")?;
            self.drop_file_share();
        }
        Ok(())
    }

    fn pending(&self) -> (u64, u64) {
        self.batch.as_ref().map_or((0, 0), |b| (b.rows, b.bytes))
    }

    fn commit(&mut self) -> Result<Option<BatchReport>, WarehouseError> {
        if self.file.is_some() {
            return Err(WarehouseError::Other("commit while a file is open".into()));
        }
        let Some(b) = self.batch.take() else { return Ok(None) };
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        // A batch that only looked (every file a duplicate) committed nothing worth reporting.
        Ok((b.files > 0).then_some(BatchReport {
            batch_id: b.batch_id,
            files: b.files,
            rows_loaded: b.rows_loaded,
            rows_rejected: b.rows_rejected,
        }))
    }

    fn rollback(&mut self) {
        self.file = None;
        if self.batch.take().is_some() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.rollback();
    }
}

// ------------------------------------------------------------------------------------------
// The sink: a handle to the writer's thread

/// A command to the writer's thread, with where its reply goes.
enum Cmd {
    Admit {
        file: FileMeta,
        force: bool,
        reply: oneshot::Sender<Result<Admission, WarehouseError>>,
    },
    Rows {
        chunk: RowChunk,
        reply: oneshot::Sender<Result<(), WarehouseError>>,
    },
    Rejects {
        rejects: Vec<Reject>,
        reply: oneshot::Sender<Result<(), WarehouseError>>,
    },
    Discard {
        reply: oneshot::Sender<Result<(), WarehouseError>>,
    },
    Finish {
        summary: FileSummary,
        reply: oneshot::Sender<Result<bool, WarehouseError>>,
    },
    Abandon {
        reply: oneshot::Sender<Result<(), WarehouseError>>,
    },
    Commit {
        reply: oneshot::Sender<Result<Option<BatchReport>, WarehouseError>>,
    },
    Rollback {
        reply: oneshot::Sender<()>,
    },
    /// A bug in the writer, for the test of how the sink meets one.
    #[cfg(test)]
    Panic,
}

/// One writer of the embedded warehouse: its connection and open batch live on a thread of its
/// own, which stops (rolling back what is open) when the sink is dropped.
pub struct SqliteSink {
    tx: mpsc::Sender<Cmd>,
    /// The writer's `pending`, as of its last command.
    pending: Arc<Mutex<(u64, u64)>>,
}

fn gone() -> WarehouseError {
    WarehouseError::Other("the sqlite writer thread stopped".into())
}

impl SqliteSink {
    /// Starts the writer's thread; it opens its connection first (a failure to open is every
    /// call's answer).
    fn spawn(path: PathBuf, contract: Contract, tables: Tables) -> Result<SqliteSink, WarehouseError> {
        let (tx, mut rx) = mpsc::channel::<Cmd>(1);
        let pending = Arc::new(Mutex::new((0, 0)));
        let published = pending.clone();
        std::thread::Builder::new()
            .name("wau-sqlite-writer".into())
            .spawn(move || {
                let mut writer = match open(&path) {
                    Ok(conn) => Writer::new(conn, contract, tables),
                    Err(e) => {
                        let (class, message) = (e.class(), e.to_string());
                        let failed = || WarehouseError::classified(class, message.clone());
                        while let Some(cmd) = rx.blocking_recv() {
                            let _ = match cmd {
                                Cmd::Admit { reply, .. } => reply.send(Err(failed())).map_err(drop),
                                Cmd::Finish { reply, .. } => reply.send(Err(failed())).map_err(drop),
                                Cmd::Commit { reply } => reply.send(Err(failed())).map_err(drop),
                                Cmd::Rows { reply, .. }
                                | Cmd::Rejects { reply, .. }
                                | Cmd::Discard { reply }
                                | Cmd::Abandon { reply } => reply.send(Err(failed())).map_err(drop),
                                Cmd::Rollback { reply } => reply.send(()).map_err(drop),
                                #[cfg(test)]
                                Cmd::Panic => panic!("sink bug"),
                            };
                        }
                        return;
                    }
                };
                while let Some(cmd) = rx.blocking_recv() {
                    match cmd {
                        Cmd::Admit { file, force, reply } => {
                            let _ = reply.send(writer.admit(&file, force));
                        }
                        Cmd::Rows { chunk, reply } => {
                            let _ = reply.send(writer.write_rows(&chunk));
                        }
                        Cmd::Rejects { rejects, reply } => {
                            let _ = reply.send(writer.write_rejects(&rejects));
                        }
                        Cmd::Discard { reply } => {
                            let _ = reply.send(writer.discard_file_rows());
                        }
                        Cmd::Finish { summary, reply } => {
                            let _ = reply.send(writer.finish_file(&summary));
                        }
                        Cmd::Abandon { reply } => {
                            let _ = reply.send(writer.abandon_file());
                        }
                        Cmd::Commit { reply } => {
                            let _ = reply.send(writer.commit());
                        }
                        Cmd::Rollback { reply } => {
                            writer.rollback();
                            let _ = reply.send(());
                        }
                        #[cfg(test)]
                        Cmd::Panic => panic!("sink bug"),
                    }
                    *published.lock().expect("pending lock") = writer.pending();
                }
            })
            .map_err(|e| WarehouseError::Other(format!("starting the sqlite writer thread: {e}")))?;
        Ok(SqliteSink { tx, pending })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, WarehouseError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

#[async_trait]
impl BatchSink for SqliteSink {
    async fn admit(&mut self, file: &FileMeta, force: bool) -> Result<Admission, WarehouseError> {
        let file = file.clone();
        self.ask(|reply| Cmd::Admit { file, force, reply }).await?
    }
    async fn write_rows(&mut self, chunk: RowChunk) -> Result<(), WarehouseError> {
        self.ask(|reply| Cmd::Rows { chunk, reply }).await?
    }
    async fn write_rejects(&mut self, rejects: Vec<Reject>) -> Result<(), WarehouseError> {
        self.ask(|reply| Cmd::Rejects { rejects, reply }).await?
    }
    async fn discard_file_rows(&mut self) -> Result<(), WarehouseError> {
        self.ask(|reply| Cmd::Discard { reply }).await?
    }
    async fn finish_file(&mut self, summary: &FileSummary) -> Result<bool, WarehouseError> {
        let summary = summary.clone();
        self.ask(|reply| Cmd::Finish { summary, reply }).await?
    }
    async fn abandon_file(&mut self) -> Result<(), WarehouseError> {
        self.ask(|reply| Cmd::Abandon { reply }).await?
    }
    fn pending(&self) -> (u64, u64) {
        *self.pending.lock().expect("pending lock")
    }
    async fn commit(&mut self) -> Result<Option<BatchReport>, WarehouseError> {
        self.ask(|reply| Cmd::Commit { reply }).await?
    }
    async fn rollback(&mut self) {
        let _ = self.ask(|reply| Cmd::Rollback { reply }).await;
    }
    fn alive(&self) -> bool {
        !self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    //! What is particular to SQLite. The warehouse contract (admission, supersede, force, rejects,
    //! discard and abandon, visibility, merge, the WAU view, concurrent writers) is checked for
    //! every engine by `tests/conformance.rs`.
    use super::*;
    use crate::warehouse::ErrorClass;

    fn setup() -> (tempfile::TempDir, SqliteWarehouse) {
        let dir = tempfile::tempdir().unwrap();
        let w = SqliteWarehouse::open(&dir.path().join("w.sqlite"), &Contract::builtin()).unwrap();
        w.store.migrate().unwrap();
        (dir, w)
    }

    fn meta(key: &str) -> FileMeta {
        FileMeta {
            bucket: "b".into(),
            key: key.into(),
            version: "v".into(),
            sequencer: "1".into(),
            size: 1,
            event_time: chrono::Utc::now(),
            contract_version: 1,
            customer: None,
        }
    }

    /// A bug on the writer's thread (a panic) stops the sink for good: every call says so,
    /// `alive` is false (the service then stops), and nothing of the open batch is committed.
    #[tokio::test]
    async fn a_panicking_writer_stops_the_sink_and_every_call_says_so() {
        let (_d, w) = setup();
        let s = &w.store;
        let mut sink = SqliteSink::spawn(s.path.clone(), s.contract.clone(), s.tables.clone()).unwrap();
        assert_eq!(sink.admit(&meta("k"), false).await.unwrap(), Admission::Load);
        assert!(sink.alive());
        sink.tx.send(Cmd::Panic).await.unwrap();
        let summary = FileSummary {
            status: FileStatus::Loaded,
            rows_read: 0,
            rows_loaded: 0,
            rows_rejected: 0,
            reason: None,
            customer: None,
        };
        let err = sink.finish_file(&summary).await.unwrap_err();
        assert!(err.to_string().contains("writer thread stopped"), "{err}");
        assert!(!sink.alive());
        assert!(sink.commit().await.is_err(), "nothing can be committed through a dead writer");
        assert!(sink.admit(&meta("k2"), false).await.is_err());
        assert_eq!(w.totals().await.unwrap(), LedgerTotals::default(), "the open batch was rolled back");
    }

    /// A writer that cannot open its database answers every call with that failure, classified.
    #[tokio::test]
    async fn a_writer_that_cannot_open_its_database_says_so_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let w = SqliteWarehouse::open(&dir.path().join("w.sqlite"), &Contract::builtin()).unwrap();
        std::fs::create_dir(dir.path().join("w.sqlite")).unwrap(); // a folder where the file should be
        let mut sink = w.sink().unwrap();
        for _ in 0..2 {
            let err = sink.admit(&meta("k"), false).await.unwrap_err();
            assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
        }
        assert!(sink.commit().await.is_err());
        assert!(sink.alive(), "the thread is fine; its database is not");
    }

    fn plan(conn: &Connection, stmt: &str) -> Vec<String> {
        let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {stmt}")).unwrap();
        let mut rows = plan.raw_query();
        let mut steps: Vec<String> = Vec::new();
        while let Some(r) = rows.next().unwrap() {
            steps.push(r.get(3).unwrap());
        }
        steps
    }

    /// The merge must stay proportional to what it touches: on SQLite no statement of either
    /// form (the shared text and SQLite's own) may scan the target or staging whole.
    #[test]
    fn merge_statements_use_indexes_on_sqlite() {
        let (_d, w) = setup();
        let sql = w.store.sql();
        for (form, steps) in [("shared", sql.merge()), ("sqlite", sql.merge_sqlite())] {
            let conn = open(w.path()).unwrap();
            // The key set is built first (the statements after it name it).
            let building =
                steps.iter().take_while(|s| s.kind == MergeStepKind::CollectKeys || s.kind == MergeStepKind::IndexKeys);
            let built = building.count();
            for s in &steps[..built] {
                conn.execute_batch(&s.sql).unwrap();
            }
            for step in &steps[built..steps.len() - 1] {
                let plan = plan(&conn, &step.sql);
                for line in &plan {
                    // `s` and `s2` are staging's aliases in the merge text; an index walked whole is a scan too.
                    for table in ["wau_audit_logs", "wau_audit_logs_staging", "s", "s2"] {
                        let scan = format!("SCAN {table}");
                        assert!(
                            !(line == &scan || line.starts_with(&format!("{scan} "))),
                            "{form}: full scan of {table} in {}: {plan:?}",
                            step.sql
                        );
                    }
                }
            }
        }
    }

    /// SQLite's delete finds each touched key by the target's primary key; the shared text's
    /// `customer IN (…)` would walk all of a touched customer's rows.
    #[test]
    fn the_sqlite_merge_deletes_by_the_targets_key() {
        let (_d, w) = setup();
        let conn = open(w.path()).unwrap();
        let steps = w.store.sql().merge_sqlite();
        let mut delete = None;
        for s in &steps {
            match s.kind {
                MergeStepKind::CollectKeys => conn.execute_batch(&s.sql).unwrap(),
                MergeStepKind::DeleteTarget => delete = Some(s.sql.clone()),
                _ => {}
            }
        }
        let delete = delete.expect("the merge deletes touched keys");
        assert_eq!(
            plan(&conn, &delete)[0],
            "SEARCH wau_audit_logs USING PRIMARY KEY (customer=? AND event_id=?)",
            "{delete}"
        );
        assert!(steps.iter().all(|s| s.kind != MergeStepKind::IndexKeys), "the key set is keyed: no index to build");
        assert_eq!(steps.iter().filter(|s| s.kind == MergeStepKind::InsertWinners).count(), 2);
        assert_eq!(steps.last().map(|s| s.kind), Some(MergeStepKind::DropKeys));
    }
}
