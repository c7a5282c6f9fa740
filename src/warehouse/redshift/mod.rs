//! The Redshift warehouse: every statement goes through the Redshift Data API; rows reach
//! staging by `COPY … MANIFEST` from gzip CSV parts in S3.
//!
//! What it owns: the Data API statement runner (submit, poll, retry, results), the S3 staging
//! objects of open batches, and the rendering of values into SQL text. Every statement comes
//! from [`super::sql`] (Redshift dialect), the commit's set-wise forms of the per-file ledger
//! statements included (a batch holds at most 40 statements, and one micro-batch may hold
//! hundreds of files).
//!
//! # A micro-batch
//!
//! Nothing touches the warehouse before `commit`: the sink keeps the open batch itself.
//! * `admit` asks the ledger in one query (this version recorded? a newer version of the key
//!   recorded?) and also looks at the files already in the open batch.
//! * Rows go through [`stage::PartWriter`], which holds a file's CSV lines uncompressed while
//!   the file is small (below `part_bytes.min(stage::SMALL_FILE_BYTES)`) and otherwise writes
//!   them into gzip CSV parts of the file's own, uploaded as they are cut to
//!   `<staging_uri><batch id>/part-NNNNN.csv.gz`. When a small file ends, its lines are appended
//!   to the batch's one shared gzip stream, cut into a part (same names) each time it reaches
//!   `part_bytes` and finished at commit, so a batch of small files makes few parts of the size
//!   COPY loads well instead of one tiny part per file. Memory stays bounded: the open file's
//!   held lines or its own part, and the shared part. Dropping an open file
//!   (`discard_file_rows`, `abandon_file`) deletes exactly its own parts and drops its held
//!   lines; nothing of it is in the shared stream yet. A finished file never leaves the batch
//!   (a forced version the batch already holds is a duplicate, `ledger::admit`); a version
//!   another writer recorded first has its rows removed by the commit whatever part held them
//!   (docs/design.md, "Shared staging parts").
//! * Rejects are kept in memory while the batch's in-memory rejects stay within a bound
//!   ([`DEFAULT_REJECT_MEMORY_ROWS`] rejects and [`DEFAULT_REJECT_MEMORY_BYTES`] of text, all
//!   files together). The file whose rejects would pass it spills: its rejects so far and all
//!   later ones are rendered as gzip CSV (the rejects table's columns) into
//!   `<staging_uri><batch id>/rejects-NNNNN.csv.gz` parts cut at the row parts' size and
//!   uploaded as they are cut. Those parts are the file's, like its row parts, and go with it.
//! * `commit` uploads a manifest, then runs ONE BatchExecuteStatement (one transaction):
//!   `LOCK wau_ingest_lock` first (the writers' lock, before anything takes the snapshot: see
//!   docs/design.md, Isolation), the batch's ledger rows into a temporary table, the
//!   replaced-version marks of forced reloads, the ledger insert guarded by `WHERE NOT EXISTS`,
//!   the supersede marks both ways (older versions this batch outdates; versions of this batch
//!   another writer outdated meanwhile), the batch's table narrowed to the versions that did not
//!   get their ledger row in this batch (another writer recorded them first), `COPY` of staging,
//!   the removal of those versions' staged rows, the reject rows, and the same removal for them.
//!   The reject rows go in as VALUES when none were spilled and they fit the batch, else ALL
//!   of them by one COPY from a manifest naming the spilled parts and one last part holding
//!   the rejects still in memory (a batch never loads rejects both ways).
//!   A concurrency conflict (either of Redshift's texts) reruns the whole batch. After the
//!   batch ended, its staging objects are deleted (best effort).
//! * `commit_begin` does the same in two steps: it uploads and submits, and returns a
//!   [`PendingCommit`] that polls the statement to its end (rerunning it on a conflict), deletes
//!   the staging objects and reports. Meanwhile the next batch opens; until the commit is known
//!   ended, `admit` counts its files as recorded (a version in it is a duplicate, an older
//!   version of its keys superseded), and no other commit may begin.
//! * Because the race with another writer is only settled inside that transaction,
//!   `finish_file` always returns true here: a version another process recorded first is not
//!   loaded twice (the guard and the staging removal see to it) but is counted as loaded by
//!   this writer's caller. The `BatchReport` counts what the ledger really holds.
//!
//! # Values in SQL text
//!
//! BatchExecuteStatement gets no parameters: values are rendered as literals by
//! [`sql_string`] and [`render`]. Redshift treats a backslash in a string literal as an escape
//! and PostgreSQL (the test emulator) does not, so backslashes are never written inside
//! quotes (`CHR(92)` instead): a reject's raw line cannot end a literal early on either engine.
//!
//! # Batch ids
//!
//! There is no sequence to draw from: a batch id is the commit's epoch microseconds times
//! 1000 plus a random salt, strictly increasing within a process. Ids of different processes
//! are ordered by their clocks, which is what the merge's "latest batch wins" tie-break and the
//! merge watermark need, and they are unique without coordination.
//!
//! # Async
//!
//! The [`Warehouse`]/[`BatchSink`] methods are `async fn`s that await the SDK directly. The one
//! piece of CPU work of note, gzip-encoding a chunk of rows into a staging part (a few ms for
//! a chunk of 4,096 rows), runs on tokio's blocking pool (`spawn_blocking`, one chunk at a
//! time, see [`RedshiftSink`]), so it never stalls a runtime worker; the pipeline keeps
//! validating the next chunk meanwhile.
//!
//! # Files
//!
//! Split by role; each file's docs say what it owns and what it must not touch.
//! * `mod.rs` (here): the constants, [`RedshiftWarehouse`] and its [`Warehouse`] impl (migrate,
//!   lookups, merge, reports), the staging location and its S3 calls, selftest's access.
//! * `data_api.rs`: the statement runner over the Data API (submit, poll, reruns, retries,
//!   results, cancel) and the classification of failures.
//! * `literal.rs`: values as SQL text and CSV; the twin of `deploy/glue/merge_job.py`'s
//!   `render_parameters`.
//! * `plan.rs`: the commit as statements, pure.
//! * `batch.rs`: the open batch and the sink ([`RedshiftSink`]), admission, the commit in flight.
//! * `spill.rs`: the in-memory bound on rejects and the parts they spill to.
//!
//! [`stage::PartWriter`]: super::stage::PartWriter
//! [`PendingCommit`]: super::PendingCommit

mod batch;
mod data_api;
#[cfg(test)]
mod fixtures;
mod literal;
mod plan;
mod spill;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_redshiftdata::error::DisplayErrorContext;
use backon::Retryable;
use chrono::Utc;
use tracing::warn;

pub use batch::RedshiftSink;
pub use data_api::{failure_class, is_serialization_conflict, Cell};
pub use literal::{render, sql_string, Lit};

use data_api::{int_at, DataApi, RunError, RunningStatement, Target};
use literal::timestamp_text;
use spill::Held;

use super::sql::{Dialect, MergeStepKind, Sql, Tables};
use super::{BatchSink, FileStatus, LedgerTotals, MergeReport, PageStart, Recorded, Warehouse, WarehouseError, WauRow};
use crate::aws::{call_error, retry};
use crate::config::WarehouseConfig;
use crate::contract::{parse_timestamp, Contract};
use crate::metrics::Metrics;

/// Statements one BatchExecuteStatement takes at most.
pub const MAX_BATCH_STATEMENTS: usize = 40;
/// The Data API's limit on one statement's text.
pub const MAX_STATEMENT_BYTES: usize = 100 * 1024;
/// What statements built here stay under (headroom below [`MAX_STATEMENT_BYTES`]).
const STATEMENT_BUDGET_BYTES: usize = MAX_STATEMENT_BYTES - 4 * 1024;
/// What the statements of one BatchExecuteStatement stay under together. The documentation
/// gives 100 KB for "the statement" without saying whether a batch counts as one; the product
/// assumes it does (`selftest` measures it), so a batch is never larger than one statement may be.
pub const BATCH_BUDGET_BYTES: usize = STATEMENT_BUDGET_BYTES;
/// Uncompressed bytes after which a staging part is cut (gzip makes it several times smaller;
/// Redshift loads parts of 1 MB–1 GB compressed best).
pub const DEFAULT_PART_BYTES: usize = 64 << 20;
/// Rejects an open batch keeps in memory (all its files together) before spilling to staging.
pub const DEFAULT_REJECT_MEMORY_ROWS: usize = 10_000;
/// Bytes of reject text (plus the size of a `Reject` for each) an open batch keeps in memory
/// before spilling; about the size of the same rejects rendered as CSV.
pub const DEFAULT_REJECT_MEMORY_BYTES: usize = 8 << 20;
/// The per-commit temporary table holding the batch's ledger rows.
const BATCH_FILES: &str = "wau_batch_files";

// ------------------------------------------------------------------------------------------
// Staging objects

/// `s3://bucket/prefix/` split; the prefix is empty or ends with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StagingLocation {
    bucket: String,
    prefix: String,
}

impl StagingLocation {
    fn parse(uri: &str) -> Result<StagingLocation, String> {
        let (bucket, prefix) = crate::aws::parse_s3_uri(uri)
            .ok_or_else(|| format!("warehouse.staging_uri {uri:?} is not an s3://bucket/prefix URI"))?;
        let prefix = if prefix.is_empty() || prefix.ends_with('/') { prefix.to_string() } else { format!("{prefix}/") };
        Ok(StagingLocation { bucket, prefix })
    }

    fn key(&self, batch_id: i64, name: &str) -> String {
        format!("{}{batch_id}/{name}", self.prefix)
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

// ------------------------------------------------------------------------------------------
// The warehouse

struct Inner {
    api: DataApi,
    s3: aws_sdk_s3::Client,
    contract: Contract,
    tables: Tables,
    staging: StagingLocation,
    copy_role: String,
}

impl Inner {
    fn sql(&self) -> Sql<'_> {
        Sql::new(Dialect::Redshift, &self.contract, &self.tables)
    }

    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), WarehouseError> {
        let call = || async {
            self.s3
                .put_object()
                .bucket(&self.staging.bucket)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from(body.clone()))
                .send()
                .await
                .map_err(call_error)
        };
        call.retry(retry::transient())
            .when(|e| e.transient)
            .notify(|e, _| warn!(key, error = %e.text, "staging upload retried"))
            .await
            .map(|_| ())
            .map_err(|e| WarehouseError::Other(format!("uploading s3://{}/{key}: {}", self.staging.bucket, e.text)))
    }

    /// Deletes staging objects; failures are logged, never returned (leftovers are harmless:
    /// no manifest names them once their batch ended).
    async fn delete(&self, keys: Vec<String>) {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        for chunk in keys.chunks(1000) {
            let ids: Vec<ObjectIdentifier> =
                chunk.iter().filter_map(|k| ObjectIdentifier::builder().key(k).build().ok()).collect();
            let delete = match Delete::builder().set_objects(Some(ids)).quiet(true).build() {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot build the staging delete request");
                    continue;
                }
            };
            match self.s3.delete_objects().bucket(&self.staging.bucket).delete(delete).send().await {
                Ok(out) => {
                    for e in out.errors() {
                        warn!(bucket = %self.staging.bucket, key = e.key().unwrap_or(""), error = e.message().unwrap_or(""), "staging object not deleted");
                    }
                }
                Err(e) => {
                    warn!(bucket = %self.staging.bucket, objects = chunk.len(), error = %DisplayErrorContext(&e), "staging objects not deleted")
                }
            }
        }
    }
}

pub struct RedshiftWarehouse {
    inner: Arc<Inner>,
    part_bytes: usize,
    reject_memory: Held,
    merging: RunningStatement,
}

impl RedshiftWarehouse {
    /// A warehouse on the Data API target `cfg` names (Serverless `workgroup_name`, or
    /// `cluster_identifier` with `db_user` or `secret_arn`), staging under `cfg.staging_uri`
    /// through `s3`.
    pub fn new(
        cfg: &WarehouseConfig,
        contract: &Contract,
        sdk: &aws_config::SdkConfig,
        s3: aws_sdk_s3::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WarehouseError> {
        let invalid = |m: String| WarehouseError::Other(m);
        let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        let secret_arn = non_empty(&cfg.secret_arn);
        let target = match (non_empty(&cfg.workgroup_name), non_empty(&cfg.cluster_identifier)) {
            (Some(w), None) => Target::Workgroup(w),
            (None, Some(id)) => {
                let db_user = if secret_arn.is_some() { None } else { non_empty(&cfg.db_user) };
                if db_user.is_none() && secret_arn.is_none() {
                    return Err(invalid(format!("warehouse.cluster_identifier {id:?} needs db_user or secret_arn")));
                }
                Target::Cluster { id, db_user }
            }
            (Some(_), Some(_)) => {
                return Err(invalid("set warehouse.workgroup_name or warehouse.cluster_identifier, not both".into()))
            }
            (None, None) => {
                return Err(invalid(
                    "the redshift warehouse needs warehouse.workgroup_name or warehouse.cluster_identifier".into(),
                ))
            }
        };
        let database = non_empty(&cfg.database)
            .ok_or_else(|| invalid("the redshift warehouse needs warehouse.database".into()))?;
        let staging = StagingLocation::parse(&cfg.staging_uri).map_err(invalid)?;
        let api = DataApi::new(aws_sdk_redshiftdata::Client::new(sdk), target, secret_arn, database, metrics);
        Ok(RedshiftWarehouse {
            inner: Arc::new(Inner {
                api,
                s3,
                contract: contract.clone(),
                tables: Tables::for_contract(contract),
                staging,
                copy_role: cfg.copy_role_arn.trim().to_string(),
            }),
            part_bytes: DEFAULT_PART_BYTES,
            reject_memory: Held { rows: DEFAULT_REJECT_MEMORY_ROWS, bytes: DEFAULT_REJECT_MEMORY_BYTES },
            merging: RunningStatement::default(),
        })
    }

    /// Uncompressed bytes after which sinks made from now on cut a staging part.
    pub fn with_part_bytes(mut self, bytes: usize) -> Self {
        self.part_bytes = bytes.max(1);
        self
    }

    /// How many rejects (and bytes of them, see [`DEFAULT_REJECT_MEMORY_BYTES`]) an open batch of
    /// sinks made from now on keeps in memory before spilling them to staging parts. 0 spills
    /// every reject.
    pub fn with_reject_memory(mut self, rejects: usize, bytes: usize) -> Self {
        self.reject_memory = Held { rows: rejects, bytes };
        self
    }

    /// Runs one query (autocommit) and returns every row: for operators and tests.
    pub async fn query(&self, sql: &str) -> Result<Vec<Vec<Cell>>, WarehouseError> {
        self.inner.api.query("query", sql.to_string()).await
    }

    /// Runs one statement on its own (autocommit, so also what cannot run in a transaction,
    /// such as `CREATE DATABASE`).
    pub async fn execute(&self, sql: &str) -> Result<(), WarehouseError> {
        self.inner.api.run("query", &[sql.to_string()], false, None).await.map(|_| ())
    }

    async fn query_params(&self, sql: &str, params: &[(&str, Lit)]) -> Result<Vec<Vec<Cell>>, WarehouseError> {
        let sql = render(sql, params).map_err(WarehouseError::Other)?;
        self.inner.api.query("query", sql).await
    }
}

fn status_of(rows: &[Vec<Cell>]) -> Option<FileStatus> {
    rows.first().and_then(|r| r.first()).and_then(Cell::as_str).and_then(FileStatus::parse)
}

#[async_trait]
impl Warehouse for RedshiftWarehouse {
    async fn merge(&self) -> Result<MergeReport, WarehouseError> {
        let inner = &self.inner;
        let api = &inner.api;
        let pending = api.query("merge", inner.sql().unmerged_count()).await?;
        if int_at(&pending, 0, 0) == 0 {
            return Ok(MergeReport::default());
        }
        let now = timestamp_text(Utc::now());
        let params = [("merged_at", Lit::Str(now)), ("rows_deleted", Lit::Null), ("rows_inserted", Lit::Null)];
        let mut steps = inner.sql().merge().into_iter();
        let lock =
            steps.next().filter(|s| s.kind == MergeStepKind::Lock).expect("a Redshift merge begins with the lock");
        // The report's inputs are read inside the merge's own transaction (after the lock, before
        // anything changes), so they describe exactly what this merge published.
        let mut statements = vec![lock.sql, inner.sql().unmerged_loaded_count(), inner.sql().unmerged_event_times()];
        let (loaded_at, event_times_at) = (1, 2);
        let (mut deleted_at, mut inserted_at) = (None, None);
        for step in steps {
            match step.kind {
                MergeStepKind::DeleteTarget => deleted_at = Some(statements.len()),
                MergeStepKind::InsertWinners => inserted_at = Some(statements.len()),
                _ => {}
            }
            statements.push(render(&step.sql, &params).map_err(WarehouseError::Other)?);
        }
        self.merging.cancelled.store(false, Ordering::SeqCst);
        let done = api.run("merge", &statements, true, Some(&self.merging)).await?;
        let sub = |i: usize| {
            done.subs
                .get(i)
                .cloned()
                .ok_or_else(|| WarehouseError::Other(format!("redshift merge {}: no sub-statement {}", done.id, i + 1)))
        };
        let loaded = api.rows(&sub(loaded_at)?.id).await?;
        let event_times = api
            .rows(&sub(event_times_at)?.id)
            .await?
            .iter()
            .filter_map(|r| r.first().and_then(Cell::as_str).and_then(parse_timestamp))
            .collect();
        let rows_of = |i: Option<usize>| -> Result<u64, WarehouseError> {
            Ok(i.map(&sub).transpose()?.map_or(0, |s| s.result_rows.max(0) as u64))
        };
        Ok(MergeReport {
            files: int_at(&loaded, 0, 0) as u64,
            rows_deleted: rows_of(deleted_at)?,
            rows_inserted: rows_of(inserted_at)?,
            event_times,
        })
    }

    /// The lock table first, on its own; then everything else as one batch behind the lock, so
    /// tasks that start together (autoscaling, a deploy) do not race their DDL.
    async fn migrate(&self) -> Result<(), WarehouseError> {
        let sql = self.inner.sql();
        // Tables behind the contract: refused before any DDL (`wau-ingest migrate` first).
        super::evolve::require_current(&super::evolve::plan(&sql, self).await?)?;
        let lock_table = sql.lock_table();
        let mut statements = vec![sql.lock_writers()];
        statements.extend(sql.migrate().into_iter().filter(|s| *s != lock_table));
        {
            // Two `CREATE TABLE IF NOT EXISTS` of the lock table at once can fail on the
            // catalog (the loser sees the table half made); a moment later it exists.
            let mut tries = 0u64;
            loop {
                match self.inner.api.run("migrate", std::slice::from_ref(&lock_table), false, None).await {
                    Ok(_) => break,
                    Err(e)
                        if tries >= 3
                            || !e.class().retryable()
                                && !e.to_string().contains("already exists")
                                && !e.to_string().contains("duplicate key") =>
                    {
                        return Err(e)
                    }
                    Err(e) => {
                        tries += 1;
                        warn!(error = %e, "creating the lock table raced another task; trying again");
                        tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                    }
                }
            }
            self.inner.api.run("migrate", &statements, true, None).await.map(|_| ())
        }
    }

    async fn execute_ddl(&self, statement: &str) -> Result<(), WarehouseError> {
        self.execute(statement).await
    }

    fn sink(&self) -> Result<Box<dyn BatchSink>, WarehouseError> {
        Ok(Box::new(RedshiftSink::new(self.inner.clone(), self.part_bytes, self.reject_memory)))
    }

    async fn lookup(&self, bucket: &str, key: &str, version: &str) -> Result<Option<FileStatus>, WarehouseError> {
        let rows = self
            .query_params(
                &self.inner.sql().lookup_version(),
                &[
                    ("bucket", Lit::Str(bucket.into())),
                    ("key", Lit::Str(key.into())),
                    ("version", Lit::Str(version.into())),
                ],
            )
            .await?;
        Ok(status_of(&rows))
    }

    async fn lookup_stamp(
        &self,
        bucket: &str,
        key: &str,
        sequencer: &str,
        size: u64,
    ) -> Result<Option<FileStatus>, WarehouseError> {
        let rows = self
            .query_params(
                &self.inner.sql().lookup_stamp(),
                &[
                    ("bucket", Lit::Str(bucket.into())),
                    ("key", Lit::Str(key.into())),
                    ("sequencer", Lit::Str(sequencer.into())),
                    ("size_bytes", Lit::Int(size as i64)),
                ],
            )
            .await?;
        Ok(status_of(&rows))
    }

    /// One statement per page; the page's rows come back through GetStatementResult's own
    /// paging. A page of `limit` pairs stays far inside the Data API's result-size limit
    /// (100 MB in the older documentation): a key is at most 1,024 bytes, a sequencer 32.
    async fn recorded_page(
        &self,
        bucket: &str,
        start: &PageStart,
        limit: usize,
    ) -> Result<Vec<Recorded>, WarehouseError> {
        let (form, key, sequencer) = start.bound();
        let rows = self
            .query_params(
                &self.inner.sql().recorded_page(form, limit),
                &[
                    ("bucket", Lit::Str(bucket.into())),
                    ("key", Lit::Str(key.into())),
                    ("sequencer", Lit::Str(sequencer.into())),
                ],
            )
            .await?;
        rows.into_iter()
            .map(|r| match (r.first().and_then(Cell::text), r.get(1).and_then(Cell::text)) {
                (Some(key), Some(sequencer)) => Ok(Recorded { key, sequencer }),
                _ => Err(WarehouseError::Other(format!("redshift: a recorded (key, sequencer) came back as {r:?}"))),
            })
            .collect()
    }

    async fn interrupt_merge(&self) {
        self.merging.cancelled.store(true, Ordering::SeqCst);
        let id = self.merging.id.lock().expect("statement lock").clone();
        if let Some(id) = id {
            match self.inner.api.cancel(&id).await {
                Ok(()) => warn!(statement = %id, "merge cancelled"),
                // It may have ended meanwhile; the merge reports how it ended.
                Err(e) => warn!(statement = %id, error = %e, "cancelling the merge failed"),
            }
        }
    }

    async fn ping(&self) -> Result<(), WarehouseError> {
        let rows = self.query("SELECT 1").await?;
        match int_at(&rows, 0, 0) {
            1 => Ok(()),
            _ => Err(WarehouseError::Other(format!("redshift ping: SELECT 1 returned {rows:?}"))),
        }
    }

    async fn weekly_active_users(&self, since: &str, customer: Option<&str>) -> Result<Vec<WauRow>, WarehouseError> {
        let rows = self
            .query_params(
                &self.inner.sql().report(),
                &[("since", Lit::Str(since.into())), ("customer", Lit::Str(customer.unwrap_or("").into()))],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| WauRow {
                customer: r.first().and_then(Cell::text).unwrap_or_default(),
                iso_week: r.get(1).and_then(Cell::text).unwrap_or_default(),
                week_start: r.get(2).and_then(Cell::text).unwrap_or_default(),
                active_users: r.get(3).and_then(Cell::as_i64).unwrap_or(0),
            })
            .collect())
    }

    async fn totals(&self) -> Result<LedgerTotals, WarehouseError> {
        let sql = self.inner.sql().totals();
        let rows = self.query(&sql).await?;
        let g = |i| int_at(&rows, 0, i).max(0) as u64;
        Ok(LedgerTotals {
            files_loaded: g(0),
            files_rejected: g(1),
            files_superseded: g(2),
            rows_read: g(3),
            rows_loaded: g(4),
            rows_rejected: g(5),
            unbalanced_files: g(6),
            target_rows: g(7),
            staging_rows: g(8),
            reject_rows: g(9),
        })
    }

    async fn read_text(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WarehouseError> {
        Ok(self.query(sql).await?.iter().map(|r| r.iter().map(Cell::text).collect()).collect())
    }

    async fn record_reconcile(&self, run: &super::sql::ReconcileRecord) -> Result<(), WarehouseError> {
        self.execute(&self.inner.sql().insert_reconcile(run)).await
    }
}
// selftest's access: the statement runner and the staging location, for `wau-ingest selftest`
// (`crate::selftest`), which checks on a real workgroup what the product assumes of Redshift.
impl RedshiftWarehouse {
    /// One BatchExecuteStatement (one transaction) through the product's runner: a
    /// serialization conflict reruns it, as it does a commit. Rows affected per statement.
    pub async fn run_batch(&self, sqls: &[String]) -> Result<Vec<i64>, WarehouseError> {
        let done = self.inner.api.run("selftest", sqls, true, None).await?;
        Ok(done.subs.iter().map(|s| s.result_rows).collect())
    }

    /// One BatchExecuteStatement, submitted once and never rerun: the error text Redshift gave.
    pub async fn try_batch_once(&self, sqls: &[String]) -> Result<(), String> {
        self.inner.api.attempt("selftest", sqls, true, None).await.map(|_| ()).map_err(|e| match e {
            RunError::Conflict(t) | RunError::Failed(t) | RunError::Aborted(t) | RunError::Call { text: t, .. } => t,
        })
    }

    /// The COPY the product would run for `sql`'s staging table from the manifest at `manifest_url`.
    pub fn copy_staging_sql(&self, sql: &Sql<'_>, manifest_url: &str) -> String {
        sql.copy_staging(manifest_url, &self.inner.copy_role)
    }

    /// Uploads `body` as `<staging_uri><name>`; returns its `s3://` URL.
    pub async fn put_staging(&self, name: &str, body: Vec<u8>) -> Result<String, WarehouseError> {
        let key = format!("{}{name}", self.inner.staging.prefix);
        self.inner.put(&key, body).await?;
        Ok(self.inner.staging.url(&key))
    }

    /// Deletes every object under `<staging_uri><prefix>`; how many there were.
    pub async fn delete_staging_prefix(&self, prefix: &str) -> Result<usize, WarehouseError> {
        let (inner, bucket) = (&self.inner, &self.inner.staging.bucket);
        let full = format!("{}{prefix}", inner.staging.prefix);
        let failed = |what: &str, e: String| WarehouseError::Other(format!("{what} s3://{bucket}/{full}: {e}"));
        {
            let mut keys = Vec::new();
            let mut pages = inner.s3.list_objects_v2().bucket(bucket).prefix(&full).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| failed("listing", DisplayErrorContext(&e).to_string()))?;
                keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            }
            for key in &keys {
                inner
                    .s3
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| failed("deleting an object under", DisplayErrorContext(&e).to_string()))?;
            }
            Ok(keys.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_uri_parses_into_bucket_and_prefix() {
        let s = StagingLocation::parse("s3://b/staging").unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("b", "staging/"));
        assert_eq!(s.key(7, "part-00000.csv.gz"), "staging/7/part-00000.csv.gz");
        assert_eq!(s.url("staging/7/m.json"), "s3://b/staging/7/m.json");
        assert_eq!(StagingLocation::parse("s3://b").unwrap().prefix, "");
        assert_eq!(StagingLocation::parse("s3://b/x/y/").unwrap().prefix, "x/y/");
        assert!(StagingLocation::parse("/tmp/x").is_err());
        assert!(StagingLocation::parse("s3:///x").is_err());
    }
}
