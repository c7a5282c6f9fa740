//! The Redshift warehouse: every statement goes through the Redshift Data API; rows reach
//! staging by `COPY … MANIFEST` from gzip CSV parts in S3.
//!
//! What it owns: the Data API statement runner (submit, poll, retry, results), the S3 staging
//! objects of open batches, and the rendering of values into SQL text. The SQL itself comes
//! from [`super::sql`] (Redshift dialect); the few statements written here are the set-wise
//! forms of the shared per-file ledger statements, because a batch holds at most 40 statements
//! and one micro-batch may hold hundreds of files.
//!
//! # A micro-batch
//!
//! Nothing touches the warehouse before `commit`: the sink keeps the open batch itself.
//! * `admit` asks the ledger in one query (this version recorded? a newer version of the key
//!   recorded?) and also looks at the files already in the open batch.
//! * Rows go through [`stage::PartWriter`] into gzip CSV parts, uploaded as they are cut to
//!   `<staging_uri><batch id>/part-NNNNN.csv.gz`, so memory stays bounded. A part never mixes
//!   files, so dropping a file (`discard_file_rows`, `abandon_file`, a forced reload of a
//!   version already in the batch) deletes exactly its parts.
//! * Rejects are kept in memory while the batch's in-memory rejects stay within a bound
//!   ([`DEFAULT_REJECT_MEMORY_ROWS`] rejects and [`DEFAULT_REJECT_MEMORY_BYTES`] of text, all
//!   files together). The file whose rejects would pass it spills: its rejects so far and all
//!   later ones are rendered as gzip CSV (the rejects table's columns) into
//!   `<staging_uri><batch id>/rejects-NNNNN.csv.gz` parts cut at the row parts' size and
//!   uploaded as they are cut. Those parts are the file's, like its row parts, and go with it.
//! * `commit` uploads a manifest, then runs ONE BatchExecuteStatement (one transaction):
//!   the batch's ledger rows into a temporary table, the replaced-version marks of forced
//!   reloads, the ledger insert guarded by `WHERE NOT EXISTS`, the supersede marks, `COPY`
//!   of staging, the removal of staged rows whose version did not get its ledger row in this
//!   batch (another writer recorded it first), the reject rows, and the same removal for them.
//!   The reject rows go in as VALUES when none were spilled and they fit the batch, else ALL
//!   of them by one COPY from a manifest naming the spilled parts and one last part holding
//!   the rejects still in memory (a batch never loads rejects both ways).
//!   A serialization conflict (Redshift error 1023) reruns the whole batch. After the batch
//!   ended, its staging objects are deleted (best effort).
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
//! # Blocking
//!
//! The [`Warehouse`]/[`BatchSink`] traits are synchronous; each call runs the SDK future with
//! `block_in_place(|| handle.block_on(..))` on the runtime captured by [`RedshiftWarehouse::new`].
//! That works on a multi-thread runtime's workers, on `spawn_blocking` threads and on plain
//! threads (the writer thread); a current-thread runtime is refused at construction.

use std::borrow::Cow;
use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_redshiftdata::error::DisplayErrorContext;
use aws_sdk_redshiftdata::operation::describe_statement::DescribeStatementOutput;
use aws_sdk_redshiftdata::types::{Field, StatementStatusString, StatusString};
use backon::Retryable;
use chrono::{DateTime, Utc};
use tracing::{debug, warn};

use super::ledger::{self, is_newer, same_version, Verdict};
use super::sql::{column_names, ledger_table, rejects_table, sql_literal_body, Dialect, MergeStepKind, Sql, Tables};
use super::stage::{self, GzParts, PartWriter};
use super::{
    Admission, BatchReport, BatchSink, ErrorClass, FileMeta, FileStatus, FileSummary, LedgerTotals, MergeReport,
    PendingCommit, Warehouse, WarehouseError, WauRow,
};
use crate::aws::{call_error, retry, CallError};
use crate::config::WarehouseConfig;
use crate::contract::{parse_timestamp, Contract};
use crate::metrics::Metrics;
use crate::validate::{Reject, RowChunk};

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
// Values as SQL text

/// A SQL string literal that reads back as `s` on Redshift (backslash escapes in literals) and
/// on PostgreSQL (none): quotes doubled by [`sql_literal_body`], every backslash written as
/// `CHR(92)` outside the quotes. NUL, which neither engine stores in text, becomes U+FFFD.
pub fn sql_string(s: &str) -> String {
    let s: Cow<'_, str> = if s.contains('\0') { Cow::Owned(s.replace('\0', "\u{FFFD}")) } else { Cow::Borrowed(s) };
    if !s.contains('\\') {
        return format!("'{}'", sql_literal_body(&s));
    }
    let mut parts: Vec<String> = Vec::new();
    for (i, segment) in s.split('\\').enumerate() {
        if i > 0 {
            parts.push("CHR(92)".into());
        }
        if !segment.is_empty() {
            parts.push(format!("'{}'", sql_literal_body(segment)));
        }
    }
    format!("({})", parts.join(" || "))
}

/// One value rendered into SQL text.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Int(i64),
    Null,
}

impl Lit {
    pub fn sql(&self) -> String {
        match self {
            Lit::Str(s) => sql_string(s),
            Lit::Int(i) => i.to_string(),
            Lit::Null => "NULL".into(),
        }
    }

    fn opt(s: Option<&str>) -> Lit {
        s.map_or(Lit::Null, |s| Lit::Str(s.to_string()))
    }

    /// The CSV field COPY reads back as this value (NULL is an empty unquoted field).
    fn csv(&self, out: &mut Vec<u8>) {
        match self {
            Lit::Str(s) => stage::csv_field(out, Some(&s.replace('\0', "\u{FFFD}"))),
            Lit::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Lit::Null => {}
        }
    }
}

/// Fills the `:name` parameters of shared SQL text with literals, the way the Glue merge job
/// does (`deploy/glue/merge_job.py`). Quoted text and `::casts` are left alone; a parameter
/// without a value is an error (the text is not what the caller thinks it is).
pub fn render(sql: &str, params: &[(&str, Lit)]) -> Result<String, String> {
    let b = sql.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = String::with_capacity(sql.len() + 64);
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b':' if b.get(i + 1) == Some(&b':') => i += 2,
            b':' if (i == 0 || !word(b[i - 1]))
                && b.get(i + 1).is_some_and(|&c| c.is_ascii_alphabetic() || c == b'_') =>
            {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && word(b[end]) {
                    end += 1;
                }
                let name = &sql[start..end];
                let (_, value) =
                    params.iter().find(|(n, _)| *n == name).ok_or_else(|| format!("no value for parameter :{name}"))?;
                out.push_str(&sql[copied..i]);
                out.push_str(&value.sql());
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// `s` as a VARCHAR(`max`) holds it: NUL (which no engine stores) replaced by U+FFFD first,
/// then cut to at most `max` bytes at a character boundary (Redshift VARCHAR widths are bytes),
/// so the replacement can never push the text past the width.
fn fit(s: &str, max: usize) -> Cow<'_, str> {
    let s: Cow<'_, str> = if s.contains('\0') { Cow::Owned(s.replace('\0', "\u{FFFD}")) } else { Cow::Borrowed(s) };
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(&b[..end]),
        Cow::Owned(mut o) => {
            o.truncate(end);
            Cow::Owned(o)
        }
    }
}

/// A timestamp as the warehouse's TIMESTAMP columns take it (microseconds, like the Glue job).
fn timestamp_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Rows rendered as `INSERT … VALUES` statements, each within `budget` bytes, rows in order.
/// `None` when one row alone does not fit (the caller then loads the rows by COPY).
fn values_statements(head: &str, rows: &[String], budget: usize) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut current = String::new();
    for row in rows {
        if head.len() + " VALUES ".len() + row.len() > budget {
            return None;
        }
        if !current.is_empty() && current.len() + 2 + row.len() > budget {
            out.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current = format!("{head} VALUES {row}");
        } else {
            current.push_str(",\n");
            current.push_str(row);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    Some(out)
}

fn values_row(values: &[Lit]) -> String {
    format!("({})", values.iter().map(Lit::sql).collect::<Vec<_>>().join(", "))
}

fn csv_line(values: &[Lit], out: &mut Vec<u8>) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        v.csv(out);
    }
    out.push(b'\n');
}

// ------------------------------------------------------------------------------------------
// Error classification

/// A FAILED statement worth rerunning whole: a concurrency abort. Redshift reports them two
/// ways — `ERROR: 1023 DETAIL: Serializable isolation violation …` and, under SNAPSHOT isolation
/// or from `INSERT … SELECT … WHERE EXISTS`, `could not complete because of conflict with
/// concurrent transaction` — and PostgreSQL as `could not serialize access …` or a deadlock.
/// "1023" counts only as a number of its own. `deploy/glue/merge_job.py` has the same rule
/// (`is_conflict`); `.ci/deploy-checks` runs it on these texts.
pub fn is_serialization_conflict(error: &str) -> bool {
    let lower = error.to_ascii_lowercase();
    if lower.contains("serializ")
        || lower.contains("conflict with concurrent transaction")
        || lower.contains("deadlock detected")
    {
        return true;
    }
    let b = error.as_bytes();
    error.match_indices("1023").any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| b[j]);
        let after = b.get(i + 4).copied();
        !before.is_some_and(|c| c.is_ascii_alphanumeric()) && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// How a FAILED statement's text is met. Conflicts are rerun before this is asked.
pub fn failure_class(error: &str) -> ErrorClass {
    let lower = error.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if is_serialization_conflict(error) {
        ErrorClass::Conflict
    } else if any(&["does not exist", "permission denied", "not authorized", "must be owner", "access denied"]) {
        ErrorClass::Fatal
    } else if any(&[
        "value too long",
        "string length exceeds ddl length",
        "invalid timestamp",
        "invalid input syntax",
        "load into table",
        "out of range",
        "invalid byte sequence",
    ]) {
        ErrorClass::RejectedData
    } else if any(&["syntax error", "cannot process query string larger", "is longer than"]) {
        ErrorClass::Misuse
    } else {
        ErrorClass::Transient
    }
}

/// Why a statement run ended without FINISHED.
#[derive(Debug)]
enum RunError {
    /// FAILED with a serialization conflict: rerun from the start.
    Conflict(String),
    Failed(String),
    Aborted(String),
    /// A Data API call failed (after its retries, when it was transient).
    Call {
        text: String,
        transient: bool,
    },
}

impl RunError {
    fn class(&self) -> ErrorClass {
        match self {
            RunError::Conflict(_) => ErrorClass::Conflict,
            RunError::Failed(text) => failure_class(text),
            RunError::Aborted(_) => ErrorClass::Transient,
            RunError::Call { transient: true, .. } => ErrorClass::Transient,
            // Refused outright (denied, unknown workgroup or database, invalid request):
            // asking again cannot help.
            RunError::Call { transient: false, .. } => ErrorClass::Fatal,
        }
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Conflict(e) => write!(f, "concurrency conflict: {e}"),
            RunError::Failed(e) => write!(f, "failed: {e}"),
            RunError::Aborted(e) => write!(f, "aborted: {e}"),
            RunError::Call { text, .. } => write!(f, "{text}"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Results

/// One field of a query result.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Str(String),
    Long(i64),
    Double(f64),
    Bool(bool),
}

impl Cell {
    fn from_field(f: &Field) -> Cell {
        match f {
            Field::StringValue(s) => Cell::Str(s.clone()),
            Field::LongValue(v) => Cell::Long(*v),
            Field::DoubleValue(v) => Cell::Double(*v),
            Field::BooleanValue(v) => Cell::Bool(*v),
            Field::BlobValue(b) => Cell::Str(String::from_utf8_lossy(b.as_ref()).into_owned()),
            _ => Cell::Null,
        }
    }

    /// Integers arrive as `longValue`, sums (NUMERIC) as strings.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Cell::Long(v) => Some(*v),
            Cell::Str(s) => s.trim().parse().ok().or_else(|| s.trim().parse::<f64>().ok().map(|f| f as i64)),
            Cell::Double(f) => Some(*f as i64),
            Cell::Bool(b) => Some(*b as i64),
            Cell::Null => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Cell::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Any non-NULL value as text.
    pub fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Str(s) => Some(s.clone()),
            Cell::Long(v) => Some(v.to_string()),
            Cell::Double(v) => Some(v.to_string()),
            Cell::Bool(v) => Some(v.to_string()),
        }
    }
}

fn int_at(rows: &[Vec<Cell>], row: usize, col: usize) -> i64 {
    rows.get(row).and_then(|r| r.get(col)).and_then(Cell::as_i64).unwrap_or(0)
}

// ------------------------------------------------------------------------------------------
// The statement runner

/// Where statements run: Serverless (workgroup, IAM) or a provisioned cluster (db user or a
/// Secrets Manager secret).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Workgroup(String),
    Cluster { id: String, db_user: Option<String> },
}

macro_rules! with_target {
    ($builder:expr, $api:expr) => {{
        let api = $api;
        let mut b = $builder.database(&api.database);
        match &api.target {
            Target::Workgroup(w) => b = b.workgroup_name(w),
            Target::Cluster { id, db_user } => {
                b = b.cluster_identifier(id);
                if let Some(u) = db_user {
                    b = b.db_user(u);
                }
            }
        }
        if let Some(arn) = &api.secret_arn {
            b = b.secret_arn(arn);
        }
        b
    }};
}

/// A finished statement (or batch) and its sub-statements.
#[derive(Debug, Clone, Default)]
struct Done {
    id: String,
    subs: Vec<SubDone>,
}

#[derive(Debug, Clone)]
struct SubDone {
    id: String,
    /// Rows returned or affected; -1 when unknown.
    result_rows: i64,
}

/// The statement a running merge waits on, so another thread can cancel it.
#[derive(Debug, Default)]
struct RunningStatement {
    id: Mutex<Option<String>>,
    cancelled: AtomicBool,
}

struct DataApi {
    client: aws_sdk_redshiftdata::Client,
    target: Target,
    secret_arn: Option<String>,
    database: String,
    metrics: Arc<Metrics>,
}

/// What one SQL text is, for messages: its first line, shortened.
fn headline(sql: &str) -> String {
    let line = sql.trim_start().lines().next().unwrap_or("");
    let short: String = line.chars().take(100).collect();
    if short.len() < line.len() {
        format!("{short}…")
    } else {
        short
    }
}

/// A ClientToken: one per submission, reused by its transient retries so that a request
/// that reached the service before its connection failed does not run twice.
fn client_token() -> String {
    let a = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
    h.write_u32(std::process::id());
    format!("wau-{a:016x}{:016x}", h.finish())
}

impl DataApi {
    /// Runs `sqls` — one ExecuteStatement (autocommit) when `batch` is false, else one
    /// BatchExecuteStatement (one transaction) — until it ends. A serialization conflict reruns
    /// it; `running` (the merge) exposes the statement id for cancelling.
    async fn run(
        &self,
        op: &'static str,
        sqls: &[String],
        batch: bool,
        running: Option<&RunningStatement>,
    ) -> Result<Done, WarehouseError> {
        self.run_from(op, sqls, batch, running, None, Instant::now()).await
    }

    /// As [`DataApi::run`], for `sqls` already `submitted` (its statement id) at `started`: waits
    /// for it; a serialization conflict submits the same SQL again.
    async fn run_from(
        &self,
        op: &'static str,
        sqls: &[String],
        batch: bool,
        running: Option<&RunningStatement>,
        submitted: Option<String>,
        started: Instant,
    ) -> Result<Done, WarehouseError> {
        debug_assert!(batch || sqls.len() == 1);
        let submitted = Mutex::new(submitted);
        let result = (|| async {
            let first = submitted.lock().expect("submitted lock").take();
            match first {
                Some(id) => self.wait(&id, sqls).await,
                None => self.attempt(op, sqls, batch, running).await,
            }
        })
            .retry(retry::conflict())
            .when(|e| matches!(e, RunError::Conflict(_)))
            .notify(|e, after| {
                self.metrics.retry("data_api_statement");
                warn!(operation = op, retry_in_ms = after.as_millis() as u64, error = %e, "redshift statement rerun after a concurrency conflict");
            })
            .await;
        self.metrics.statement(op, started.elapsed().as_secs_f64());
        result.map_err(|e| self.failed(op, sqls, e))
    }

    fn failed(&self, op: &'static str, sqls: &[String], e: RunError) -> WarehouseError {
        self.metrics.error("data_api_statement");
        let what = match sqls {
            [one] => headline(one),
            many => format!("batch of {} statements", many.len()),
        };
        let reruns = if matches!(e, RunError::Conflict(_)) { " (reruns exhausted)" } else { "" };
        WarehouseError::classified(e.class(), format!("redshift {op}: {what}{reruns}: {e}"))
    }

    async fn attempt(
        &self,
        op: &'static str,
        sqls: &[String],
        batch: bool,
        running: Option<&RunningStatement>,
    ) -> Result<Done, RunError> {
        if running.is_some_and(|r| r.cancelled.load(Ordering::SeqCst)) {
            return Err(RunError::Aborted("interrupted".into()));
        }
        let id = self.submit(op, sqls, batch).await?;
        if let Some(r) = running {
            *r.id.lock().expect("statement lock") = Some(id.clone());
        }
        let result = self.wait(&id, sqls).await;
        if let Some(r) = running {
            *r.id.lock().expect("statement lock") = None;
        }
        result
    }

    async fn submit(&self, op: &'static str, sqls: &[String], batch: bool) -> Result<String, RunError> {
        let token = client_token();
        let name = format!("wau-ingest-{op}");
        let call = || async {
            if batch {
                let b = with_target!(self.client.batch_execute_statement(), self);
                let out = b
                    .set_sqls(Some(sqls.to_vec()))
                    .statement_name(&name)
                    .client_token(&token)
                    .send()
                    .await
                    .map_err(call_error)?;
                out.id().map(str::to_string).ok_or_else(|| CallError {
                    transient: false,
                    text: "BatchExecuteStatement returned no statement id".into(),
                })
            } else {
                let b = with_target!(self.client.execute_statement(), self);
                let out =
                    b.sql(&sqls[0]).statement_name(&name).client_token(&token).send().await.map_err(call_error)?;
                out.id().map(str::to_string).ok_or_else(|| CallError {
                    transient: false,
                    text: "ExecuteStatement returned no statement id".into(),
                })
            }
        };
        let what = if batch { "BatchExecuteStatement" } else { "ExecuteStatement" };
        self.retrying(what, op, call)
            .await
            .map_err(|e| RunError::Call { text: format!("{what}: {}", e.text), transient: e.transient })
    }

    /// One Data API call, retried with backoff while its errors are transient.
    async fn retrying<T, Fut>(
        &self,
        what: &'static str,
        subject: &str,
        call: impl FnMut() -> Fut,
    ) -> Result<T, CallError>
    where
        Fut: Future<Output = Result<T, CallError>>,
    {
        call.retry(retry::transient())
            .when(|e| e.transient)
            .notify(|e, _| {
                self.metrics.retry("data_api_statement");
                warn!(call = what, subject, error = %e.text, "Data API call retried");
            })
            .await
    }

    async fn describe(&self, id: &str) -> Result<DescribeStatementOutput, RunError> {
        self.retrying("DescribeStatement", id, || async {
            self.client.describe_statement().id(id).send().await.map_err(call_error)
        })
        .await
        .map_err(|e| RunError::Call { text: format!("DescribeStatement {id}: {}", e.text), transient: e.transient })
    }

    /// Polls until FINISHED, FAILED or ABORTED, backing off from 20 ms to 250 ms: a query
    /// usually ends within the first polls, and a load is seen done at most 250 ms late
    /// (four DescribeStatement calls a second is far below the Data API's quota).
    async fn wait(&self, id: &str, sqls: &[String]) -> Result<Done, RunError> {
        let mut delay = Duration::from_millis(20);
        loop {
            let d = self.describe(id).await?;
            match d.status() {
                Some(StatusString::Finished) => {
                    let subs = d
                        .sub_statements()
                        .iter()
                        .map(|s| SubDone { id: s.id().to_string(), result_rows: s.result_rows() })
                        .collect();
                    return Ok(Done { id: id.to_string(), subs });
                }
                Some(StatusString::Failed) => {
                    let text = failure_text(&d, sqls);
                    return Err(if is_serialization_conflict(&text) {
                        RunError::Conflict(text)
                    } else {
                        RunError::Failed(text)
                    });
                }
                Some(StatusString::Aborted) => {
                    return Err(RunError::Aborted(d.error().unwrap_or("statement cancelled").to_string()));
                }
                None | Some(StatusString::Submitted | StatusString::Picked | StatusString::Started) => {}
                Some(other) => return Err(RunError::Failed(format!("statement {id} is in unexpected state {other}"))),
            }
            tokio::time::sleep(delay).await;
            delay = delay.mul_f64(1.5).min(Duration::from_millis(250));
        }
    }

    /// Every row of a finished statement (a sub-statement id `…:N` for a batch), page by page.
    async fn rows(&self, id: &str) -> Result<Vec<Vec<Cell>>, WarehouseError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let token = next.clone();
            let page = self
                .retrying("GetStatementResult", id, || async {
                    self.client
                        .get_statement_result()
                        .id(id)
                        .set_next_token(token.clone())
                        .send()
                        .await
                        .map_err(call_error)
                })
                .await
                .map_err(|e| {
                    self.metrics.error("data_api_statement");
                    WarehouseError::Other(format!("redshift GetStatementResult {id}: {}", e.text))
                })?;
            out.extend(page.records().iter().map(|r| r.iter().map(Cell::from_field).collect::<Vec<_>>()));
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// One query, autocommit, all its rows.
    async fn query(&self, op: &'static str, sql: String) -> Result<Vec<Vec<Cell>>, WarehouseError> {
        let done = self.run(op, std::slice::from_ref(&sql), false, None).await?;
        self.rows(&done.id).await
    }

    async fn cancel(&self, id: &str) -> Result<(), String> {
        self.client.cancel_statement().id(id).send().await.map(|_| ()).map_err(|e| DisplayErrorContext(&e).to_string())
    }
}

/// The statement's error, and for a batch which sub-statement failed and what it was.
fn failure_text(d: &DescribeStatementOutput, sqls: &[String]) -> String {
    let mut text = d.error().unwrap_or("no error text").to_string();
    for (n, sub) in d.sub_statements().iter().enumerate() {
        if sub.status() == Some(&StatementStatusString::Failed) {
            let sql = sqls.get(n).map(|s| headline(s)).unwrap_or_default();
            text = format!("statement {} of {} ({sql}): {}", n + 1, sqls.len(), sub.error().unwrap_or(&text));
            break;
        }
    }
    text
}

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
    handle: tokio::runtime::Handle,
    contract: Contract,
    tables: Tables,
    staging: StagingLocation,
    copy_role: String,
}

impl Inner {
    /// Runs an SDK future to completion from synchronous code.
    fn block_on<F: Future>(&self, f: F) -> F::Output {
        tokio::task::block_in_place(|| self.handle.block_on(f))
    }

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
    /// through `s3`. Call from within a multi-thread tokio runtime: its handle is captured.
    pub fn new(
        cfg: &WarehouseConfig,
        contract: &Contract,
        sdk: &aws_config::SdkConfig,
        s3: aws_sdk_s3::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WarehouseError> {
        let invalid = |m: String| WarehouseError::Other(m);
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| invalid("the redshift warehouse must be created inside a tokio runtime".into()))?;
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return Err(invalid(
                "the redshift warehouse needs a multi-thread tokio runtime (it blocks in place)".into(),
            ));
        }
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
        let api = DataApi { client: aws_sdk_redshiftdata::Client::new(sdk), target, secret_arn, database, metrics };
        Ok(RedshiftWarehouse {
            inner: Arc::new(Inner {
                api,
                s3,
                handle,
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
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<Cell>>, WarehouseError> {
        self.inner.block_on(self.inner.api.query("query", sql.to_string()))
    }

    /// Runs one statement on its own (autocommit, so also what cannot run in a transaction,
    /// such as `CREATE DATABASE`).
    pub fn execute(&self, sql: &str) -> Result<(), WarehouseError> {
        self.inner.block_on(self.inner.api.run("query", &[sql.to_string()], false, None)).map(|_| ())
    }

    fn query_params(&self, sql: &str, params: &[(&str, Lit)]) -> Result<Vec<Vec<Cell>>, WarehouseError> {
        let sql = render(sql, params).map_err(WarehouseError::Other)?;
        self.inner.block_on(self.inner.api.query("query", sql))
    }

    async fn merge_async(&self) -> Result<MergeReport, WarehouseError> {
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
}

fn status_of(rows: &[Vec<Cell>]) -> Option<FileStatus> {
    rows.first().and_then(|r| r.first()).and_then(Cell::as_str).and_then(FileStatus::parse)
}

impl Warehouse for RedshiftWarehouse {
    /// The lock table first, on its own; then everything else as one batch behind the lock, so
    /// tasks that start together (autoscaling, a deploy) do not race their DDL.
    fn migrate(&self) -> Result<(), WarehouseError> {
        let sql = self.inner.sql();
        let lock_table = sql.lock_table();
        let mut statements = vec![sql.lock_writers()];
        statements.extend(sql.migrate().into_iter().filter(|s| *s != lock_table));
        self.inner.block_on(async {
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
        })
    }

    fn sink(&self) -> Result<Box<dyn BatchSink>, WarehouseError> {
        Ok(Box::new(RedshiftSink {
            inner: self.inner.clone(),
            part_bytes: self.part_bytes,
            reject_memory: self.reject_memory,
            batch: None,
            file: None,
            in_flight: None,
        }))
    }

    fn lookup(&self, bucket: &str, key: &str, version: &str) -> Result<Option<FileStatus>, WarehouseError> {
        let rows = self.query_params(
            &self.inner.sql().lookup_version(),
            &[
                ("bucket", Lit::Str(bucket.into())),
                ("key", Lit::Str(key.into())),
                ("version", Lit::Str(version.into())),
            ],
        )?;
        Ok(status_of(&rows))
    }

    fn lookup_stamp(
        &self,
        bucket: &str,
        key: &str,
        sequencer: &str,
        size: u64,
    ) -> Result<Option<FileStatus>, WarehouseError> {
        let rows = self.query_params(
            &self.inner.sql().lookup_stamp(),
            &[
                ("bucket", Lit::Str(bucket.into())),
                ("key", Lit::Str(key.into())),
                ("sequencer", Lit::Str(sequencer.into())),
                ("size_bytes", Lit::Int(size as i64)),
            ],
        )?;
        Ok(status_of(&rows))
    }

    fn recorded_sequencers(&self, bucket: &str) -> Result<HashSet<(String, String)>, WarehouseError> {
        let rows =
            self.query_params(&self.inner.sql().recorded_sequencers(), &[("bucket", Lit::Str(bucket.into()))])?;
        Ok(rows.into_iter().filter_map(|r| Some((r.first()?.text()?, r.get(1)?.text()?))).collect())
    }

    fn merge(&self) -> Result<MergeReport, WarehouseError> {
        self.inner.block_on(self.merge_async())
    }

    fn interrupt_merge(&self) {
        self.merging.cancelled.store(true, Ordering::SeqCst);
        let id = self.merging.id.lock().expect("statement lock").clone();
        if let Some(id) = id {
            match self.inner.block_on(self.inner.api.cancel(&id)) {
                Ok(()) => warn!(statement = %id, "merge cancelled"),
                // It may have ended meanwhile; the merge reports how it ended.
                Err(e) => warn!(statement = %id, error = %e, "cancelling the merge failed"),
            }
        }
    }

    fn ping(&self) -> Result<(), WarehouseError> {
        let rows = self.query("SELECT 1")?;
        match int_at(&rows, 0, 0) {
            1 => Ok(()),
            _ => Err(WarehouseError::Other(format!("redshift ping: SELECT 1 returned {rows:?}"))),
        }
    }

    fn weekly_active_users(&self, since: &str, customer: Option<&str>) -> Result<Vec<WauRow>, WarehouseError> {
        let rows = self.query_params(
            &self.inner.sql().report(),
            &[("since", Lit::Str(since.into())), ("customer", Lit::Str(customer.unwrap_or("").into()))],
        )?;
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

    fn totals(&self) -> Result<LedgerTotals, WarehouseError> {
        let sql = self.inner.sql().totals();
        let rows = self.query(&sql)?;
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
}

// ------------------------------------------------------------------------------------------
// The sink

/// A file of the open batch whose ledger row will be written at commit.
#[derive(Debug, Clone)]
struct Entry {
    meta: FileMeta,
    status: FileStatus,
    rows_read: u64,
    rows_loaded: u64,
    rows_rejected: u64,
    reason: Option<String>,
    /// `Some(now)` for files the merge has nothing to do for (rejected, superseded on arrival).
    merged_at: Option<String>,
    /// `force`: earlier loads of this version are marked replaced first.
    replaces: bool,
    /// Staging objects holding this file's rows.
    parts: Vec<String>,
    staged_rows: u64,
    staged_bytes: u64,
    /// Rejects held in memory (empty when the file spilled).
    rejects: Vec<Reject>,
    /// Staging objects holding this file's spilled rejects.
    reject_parts: Vec<String>,
}

struct OpenFile {
    meta: FileMeta,
    replaces: bool,
    writer: PartWriter,
    parts: Vec<String>,
    rows: u64,
    bytes: u64,
    /// Rejects held in memory until the file spills, and what they take.
    rejects: Vec<Reject>,
    held: Held,
    /// Once set, every reject of the file goes to `reject_writer` (and its parts to `reject_parts`).
    spilling: bool,
    reject_writer: CsvParts,
    reject_parts: Vec<String>,
}

impl OpenFile {
    fn new(meta: FileMeta, replaces: bool, part_bytes: usize) -> OpenFile {
        OpenFile {
            meta,
            replaces,
            writer: PartWriter::new(part_bytes),
            parts: Vec::new(),
            rows: 0,
            bytes: 0,
            rejects: Vec::new(),
            held: Held::default(),
            spilling: false,
            reject_writer: CsvParts::new(part_bytes),
            reject_parts: Vec::new(),
        }
    }
}

struct OpenBatch {
    id: i64,
    now: String,
    entries: Vec<Entry>,
    next_part: usize,
    /// What the entries' in-memory rejects take (the open file's are counted apart).
    held: Held,
}

impl OpenBatch {
    fn staged(&self) -> (u64, u64) {
        self.entries.iter().fold((0, 0), |(r, b), e| (r + e.staged_rows, b + e.staged_bytes))
    }
}

/// Rejects held in memory: how many, and roughly how many bytes (their text plus the struct),
/// which is about what they take rendered as CSV. Also the bound on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    rows: usize,
    bytes: usize,
}

impl Held {
    fn of(rejects: &[Reject]) -> Held {
        let text = |r: &Reject| {
            r.reason.len()
                + r.column.as_ref().map_or(0, String::len)
                + r.value.as_ref().map_or(0, String::len)
                + r.raw.as_ref().map_or(0, String::len)
        };
        Held { rows: rejects.len(), bytes: rejects.iter().map(|r| std::mem::size_of::<Reject>() + text(r)).sum() }
    }

    fn plus(self, o: Held) -> Held {
        Held { rows: self.rows.saturating_add(o.rows), bytes: self.bytes.saturating_add(o.bytes) }
    }

    fn minus(self, o: Held) -> Held {
        Held { rows: self.rows.saturating_sub(o.rows), bytes: self.bytes.saturating_sub(o.bytes) }
    }

    fn within(self, bound: Held) -> bool {
        self.rows <= bound.rows && self.bytes <= bound.bytes
    }
}

/// Rows rendered as literals into gzip CSV parts (the form COPY … CSV reads, as
/// [`RowSet::as_copy`] writes it), cut at `max_raw_bytes` uncompressed.
/// Rows of literals (rejects, ledger rows) as CSV lines into [`GzParts`].
struct CsvParts {
    parts: GzParts,
    line: Vec<u8>,
}

impl CsvParts {
    fn new(max_raw_bytes: usize) -> CsvParts {
        CsvParts { parts: GzParts::new(max_raw_bytes), line: Vec::new() }
    }

    /// Adds one row; returns the part it finished, if it did.
    fn push(&mut self, values: &[Lit]) -> std::io::Result<Option<Vec<u8>>> {
        self.line.clear();
        csv_line(values, &mut self.line);
        Ok(self.parts.push_line(&self.line)?.map(|p| p.bytes))
    }

    /// Finishes the open part, if it has rows.
    fn finish(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.parts.finish()?.map(|p| p.bytes))
    }
}

pub struct RedshiftSink {
    inner: Arc<Inner>,
    part_bytes: usize,
    /// In-memory rejects of the open batch, beyond which they spill to staging.
    reject_memory: Held,
    batch: Option<OpenBatch>,
    file: Option<OpenFile>,
    /// The files of the batch whose commit began and may not have ended.
    in_flight: Option<Arc<InFlight>>,
}

/// The ledger rows a begun commit writes, as admission must see them until it has ended.
struct InFlight {
    files: Vec<(FileMeta, FileStatus)>,
    ended: AtomicBool,
}

impl InFlight {
    fn of(b: &OpenBatch) -> InFlight {
        InFlight {
            files: b.entries.iter().map(|e| (e.meta.clone(), e.status)).collect(),
            ended: AtomicBool::new(false),
        }
    }

    fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

/// Marks its commit ended when dropped: after the wait, and also if the wait panicked or never
/// ran, so that admission falls back on the ledger (and the guarded insert) instead of counting
/// a batch that may never be recorded as recorded forever.
struct EndsOnDrop(Arc<InFlight>);

impl Drop for EndsOnDrop {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::SeqCst);
    }
}

/// A batch whose BatchExecuteStatement was submitted: [`PendingCommit::wait`] polls it to its
/// end (a serialization conflict submits it again), deletes its staging objects and reports.
struct RedshiftCommit {
    inner: Arc<Inner>,
    batch: OpenBatch,
    plan: Plan,
    statement: String,
    started: Instant,
    objects: Vec<String>,
    in_flight: EndsOnDrop,
}

impl PendingCommit for RedshiftCommit {
    fn wait(self: Box<Self>) -> Result<Option<BatchReport>, WarehouseError> {
        let RedshiftCommit { inner, batch, plan, statement, started, objects, in_flight } = *self;
        inner.block_on(async {
            let done = inner.api.run_from("load", &plan.statements, true, None, Some(statement), started).await;
            // Ended either way: from now on the ledger answers for these files (or, on failure,
            // the caller rolls back the batch that was told about them).
            drop(in_flight);
            inner.delete(objects).await;
            batch_report(&inner, &batch, &plan, done?).await
        })
    }
}

impl Entry {
    /// Its staging objects: row parts and spilled reject parts.
    fn objects(&self) -> impl Iterator<Item = String> + '_ {
        self.parts.iter().chain(&self.reject_parts).cloned()
    }
}

/// Uploads one spilled reject part of the open file. The key is recorded before the upload,
/// so an object a failed upload may still have left is deleted with the file.
fn upload_reject_part(
    inner: &Inner,
    batch: &mut OpenBatch,
    f: &mut OpenFile,
    body: Vec<u8>,
) -> Result<(), WarehouseError> {
    let key = inner.staging.key(batch.id, &format!("rejects-{:05}.csv.gz", batch.next_part));
    batch.next_part += 1;
    f.reject_parts.push(key.clone());
    inner.block_on(inner.put(&key, body))
}

/// A batch id unique across processes without a sequence (see the module docs).
fn new_batch_id() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let salt = (h.finish() % 1000) as i64;
    let candidate = Utc::now().timestamp_micros() * 1000 + salt;
    let mut prev = LAST.load(Ordering::SeqCst);
    loop {
        let next = candidate.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// The ledger's existing status and whether a newer version is recorded, in one round trip
/// (the shared `lookup_version` and `newer_version_exists`, as one UNION ALL).
fn admission_query(sql: &Sql<'_>, file: &FileMeta) -> Result<String, String> {
    render(
        &sql.admission(),
        &[
            ("bucket", Lit::Str(file.bucket.clone())),
            ("key", Lit::Str(file.key.clone())),
            ("version", Lit::Str(file.version.clone())),
            ("sequencer", Lit::Str(file.sequencer.clone())),
        ],
    )
}

/// (status of the newest recorded load of this version, count of newer versions).
fn read_admission(rows: &[Vec<Cell>]) -> (Option<FileStatus>, i64) {
    let mut existing: Option<(i64, Option<FileStatus>)> = None;
    let mut newer = 0;
    for r in rows {
        match r.first().and_then(Cell::as_i64) {
            Some(0) => {
                let batch = r.get(2).and_then(Cell::as_i64).unwrap_or(i64::MIN);
                if existing.is_none_or(|(b, _)| batch > b) {
                    existing = Some((batch, r.get(1).and_then(Cell::as_str).and_then(FileStatus::parse)));
                }
            }
            Some(1) => newer = r.get(2).and_then(Cell::as_i64).unwrap_or(0),
            _ => {}
        }
    }
    (existing.and_then(|(_, s)| s), newer)
}

impl RedshiftSink {
    fn open_file(&mut self) -> Result<&mut OpenFile, WarehouseError> {
        self.file.as_mut().ok_or_else(|| WarehouseError::Other("no file is open in the batch".into()))
    }

    fn upload_parts(&mut self, parts: Vec<stage::StagedPart>) -> Result<(), WarehouseError> {
        if parts.is_empty() {
            return Ok(());
        }
        let batch = self.batch.as_mut().expect("a batch is open while a file is");
        let file = self.file.as_mut().expect("checked");
        for part in parts {
            let key = self.inner.staging.key(batch.id, &format!("part-{:05}.csv.gz", batch.next_part));
            batch.next_part += 1;
            self.inner.block_on(self.inner.put(&key, part.bytes))?;
            file.parts.push(key);
        }
        Ok(())
    }

    /// Renders rejects of the open file into its reject parts, uploading each part as it is cut.
    fn spill_rejects(&mut self, rejects: &[Reject]) -> Result<(), WarehouseError> {
        let inner = &self.inner;
        let batch = self.batch.as_mut().expect("a batch is open while a file is");
        let f = self.file.as_mut().expect("checked");
        for r in rejects {
            let cut = f.reject_writer.push(&reject_values(&f.meta, r, batch.id, &batch.now));
            if let Some(body) =
                cut.map_err(|e| WarehouseError::Other(format!("staging rejects of {}: {e}", f.meta.key)))?
            {
                upload_reject_part(inner, batch, f, body)?;
            }
        }
        Ok(())
    }

    /// Forgets the open file's rows and rejects so far and deletes its parts.
    fn drop_open_rows(&mut self) {
        if let Some(f) = self.file.as_mut() {
            let mut parts = std::mem::take(&mut f.parts);
            parts.append(&mut f.reject_parts);
            f.writer = PartWriter::new(self.part_bytes);
            f.rows = 0;
            f.bytes = 0;
            f.rejects = Vec::new();
            f.held = Held::default();
            f.spilling = false;
            f.reject_writer = CsvParts::new(self.part_bytes);
            if !parts.is_empty() {
                self.inner.block_on(self.inner.delete(parts));
            }
        }
    }

    /// Every staging object of the open batch (and open file).
    fn staged_objects(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.batch.iter().flat_map(|b| b.entries.iter().flat_map(Entry::objects)).collect();
        keys.extend(self.file.iter().flat_map(|f| f.parts.iter().chain(&f.reject_parts).cloned()));
        keys
    }

    /// Uploads the batch's objects and submits its one BatchExecuteStatement. On any failure
    /// the batch has ended and its objects are deleted.
    fn begin_batch(&mut self, b: OpenBatch) -> Result<RedshiftCommit, WarehouseError> {
        let inner = self.inner.clone();
        let started = Instant::now();
        let mut objects: Vec<String> = b.entries.iter().flat_map(Entry::objects).collect();
        let plan = plan_commit(&inner.sql(), &inner.staging, &b, &inner.copy_role);
        if let Ok(plan) = &plan {
            objects.extend(plan.uploads.iter().map(|(k, _)| k.clone()));
        }
        let submitted = inner.block_on(async {
            let plan = plan.as_ref().map_err(|e| match e {
                WarehouseError::Other(m) => WarehouseError::Other(m.clone()),
                other => WarehouseError::Other(other.to_string()),
            })?;
            futures::future::try_join_all(plan.uploads.iter().map(|(key, body)| inner.put(key, body.clone()))).await?;
            inner
                .api
                .submit("load", &plan.statements, true)
                .await
                .map_err(|e| inner.api.failed("load", &plan.statements, e))
        });
        let statement = match submitted {
            Ok(id) => id,
            Err(e) => {
                // The batch has ended (never run): its objects are spent.
                inner.block_on(inner.delete(objects));
                return Err(e);
            }
        };
        let plan = plan?;
        let in_flight = Arc::new(InFlight::of(&b));
        self.in_flight = Some(in_flight.clone());
        Ok(RedshiftCommit { inner, batch: b, plan, statement, started, objects, in_flight: EndsOnDrop(in_flight) })
    }

    /// The batch in flight, unless its commit is known to have ended.
    fn in_flight(&self) -> Option<Arc<InFlight>> {
        self.in_flight.clone().filter(|f| !f.ended())
    }
}

/// The report of a finished batch statement: what the ledger holds of the batch.
async fn batch_report(
    inner: &Inner,
    b: &OpenBatch,
    plan: &Plan,
    done: Done,
) -> Result<Option<BatchReport>, WarehouseError> {
    let recorded = done.subs.get(plan.ledger_insert).map_or(-1, |s| s.result_rows);
    let (rows_loaded, _) = b.staged();
    let mut report = BatchReport {
        batch_id: b.id,
        files: b.entries.len() as u64,
        rows_loaded,
        rows_rejected: b.entries.iter().map(|e| e.rows_rejected).sum(),
    };
    if recorded != b.entries.len() as i64 {
        // Another writer recorded some of these versions first: count what the ledger holds.
        let rows = inner.api.query("query", inner.sql().batch_totals(b.id)).await?;
        report.files = int_at(&rows, 0, 0).max(0) as u64;
        report.rows_loaded = int_at(&rows, 0, 1).max(0) as u64;
        report.rows_rejected = int_at(&rows, 0, 2).max(0) as u64;
        warn!(
            batch_id = b.id,
            planned = b.entries.len(),
            recorded = report.files,
            "some files of the batch were recorded by another writer first"
        );
    }
    debug!(batch_id = b.id, statements = plan.statements.len(), files = report.files, "batch committed");
    Ok((report.files > 0).then_some(report))
}

impl BatchSink for RedshiftSink {
    fn admit(&mut self, file: &FileMeta, force: bool) -> Result<Admission, WarehouseError> {
        if self.file.is_some() {
            return Err(WarehouseError::Other(format!("admit {} while another file is open", file.key)));
        }
        // Taken before the ledger is asked: a commit that ends during the query may or may not
        // be seen by it, so its files count as this writer's until then.
        let in_flight = self.in_flight();
        let flying = in_flight.as_ref().map_or(&[][..], |f| f.files.as_slice());
        if !force {
            // A version this batch (or the one committing) already holds needs no round trip.
            let held = self.batch.iter().flat_map(|b| b.entries.iter().map(|e| (&e.meta, e.status)));
            if let Some((_, status)) =
                held.chain(flying.iter().map(|(m, s)| (m, *s))).find(|(m, _)| same_version(m, file))
            {
                return Ok(Admission::Duplicate(status));
            }
        }
        let sql = admission_query(&self.inner.sql(), file).map_err(WarehouseError::Other)?;
        let rows = self.inner.block_on(self.inner.api.query("query", sql))?;
        let (recorded, newer_recorded) = read_admission(&rows);
        // The batch committing is part of the ledger as this writer sees it, newer than what the
        // query saw.
        let recorded = flying.iter().find(|(m, _)| same_version(m, file)).map(|(_, s)| *s).or(recorded);
        let newer_in_flight = flying.iter().any(|(m, status)| is_newer(m, *status, file));
        let batch = self.batch.get_or_insert_with(|| OpenBatch {
            id: new_batch_id(),
            now: timestamp_text(Utc::now()),
            entries: Vec::new(),
            next_part: 0,
            held: Held::default(),
        });
        // The open batch is part of the ledger as this writer sees it; its rows are the newest.
        let in_batch = batch.entries.iter().position(|e| same_version(&e.meta, file));
        let existing = in_batch.map(|i| batch.entries[i].status).or(recorded);
        let newer_in_batch = batch.entries.iter().any(|e| is_newer(&e.meta, e.status, file));
        match ledger::admit(existing, newer_recorded > 0 || newer_in_batch || newer_in_flight, force) {
            Verdict::Duplicate(status) => Ok(Admission::Duplicate(status)),
            Verdict::Superseded => {
                batch.entries.push(Entry {
                    meta: file.clone(),
                    status: FileStatus::Superseded,
                    rows_read: 0,
                    rows_loaded: 0,
                    rows_rejected: 0,
                    reason: None,
                    merged_at: Some(batch.now.clone()),
                    replaces: false,
                    parts: Vec::new(),
                    staged_rows: 0,
                    staged_bytes: 0,
                    rejects: Vec::new(),
                    reject_parts: Vec::new(),
                });
                Ok(Admission::Superseded)
            }
            Verdict::Load | Verdict::Reload => {
                let mut replaces = recorded.is_some();
                if let Some(i) = in_batch {
                    // `force` on a version this batch already holds: the earlier copy never
                    // reaches the warehouse.
                    let earlier = batch.entries.remove(i);
                    replaces |= earlier.replaces;
                    batch.held = batch.held.minus(Held::of(&earlier.rejects));
                    let objects: Vec<String> = earlier.objects().collect();
                    if !objects.is_empty() {
                        self.inner.block_on(self.inner.delete(objects));
                    }
                }
                self.file = Some(OpenFile::new(file.clone(), replaces, self.part_bytes));
                Ok(Admission::Load)
            }
        }
    }

    fn write_rows(&mut self, chunk: &RowChunk) -> Result<(), WarehouseError> {
        let batch_id = self.batch.as_ref().map_or(0, |b| b.id);
        let f = self.open_file()?;
        let parts = f
            .writer
            .write_chunk(chunk, &f.meta.key, &f.meta.version, batch_id)
            .map_err(|e| WarehouseError::Other(format!("staging rows of {}: {e}", f.meta.key)))?;
        f.rows += chunk.len() as u64;
        f.bytes += chunk.bytes as u64;
        self.upload_parts(parts)
    }

    /// Held in memory while the batch's in-memory rejects stay within the bound; the file
    /// that would pass it spills (see the module docs).
    fn write_rejects(&mut self, rejects: &[Reject]) -> Result<(), WarehouseError> {
        self.open_file()?;
        if rejects.is_empty() {
            return Ok(());
        }
        let batch_held = self.batch.as_ref().map_or(Held::default(), |b| b.held);
        let f = self.file.as_mut().expect("checked");
        if !f.spilling {
            let add = Held::of(rejects);
            if batch_held.plus(f.held).plus(add).within(self.reject_memory) {
                f.rejects.extend_from_slice(rejects);
                f.held = f.held.plus(add);
                return Ok(());
            }
            f.spilling = true;
            f.held = Held::default();
            let earlier = std::mem::take(&mut f.rejects);
            debug!(key = %f.meta.key, held = earlier.len(), "rejects pass the memory bound: spilling them to staging");
            self.spill_rejects(&earlier)?;
        }
        self.spill_rejects(rejects)
    }

    fn discard_file_rows(&mut self) -> Result<(), WarehouseError> {
        self.open_file()?;
        self.drop_open_rows();
        Ok(())
    }

    /// Always true when the file was open: whether another writer recorded this version
    /// first is only known inside the commit's transaction, where the guarded ledger insert
    /// keeps the version from being recorded (and its rows from being loaded) twice.
    fn finish_file(&mut self, summary: &FileSummary) -> Result<bool, WarehouseError> {
        let key = self.open_file()?.meta.key.clone();
        let last = self
            .file
            .as_mut()
            .expect("checked")
            .writer
            .finish()
            .map_err(|e| WarehouseError::Other(format!("staging rows of {key}: {e}")))?;
        self.upload_parts(last.into_iter().collect())?;
        {
            let batch = self.batch.as_mut().expect("a batch is open while a file is");
            let f = self.file.as_mut().expect("checked");
            let last = f
                .reject_writer
                .finish()
                .map_err(|e| WarehouseError::Other(format!("staging rejects of {key}: {e}")))?;
            if let Some(body) = last {
                upload_reject_part(&self.inner, batch, f, body)?;
            }
        }
        let f = self.file.take().expect("checked");
        let batch = self.batch.as_mut().expect("a batch is open while a file is");
        batch.held = batch.held.plus(f.held);
        // What the shared `supersede_older` does for versions of this batch (the commit does
        // it set-wise for versions recorded earlier).
        for e in batch.entries.iter_mut() {
            if e.meta.bucket == f.meta.bucket
                && e.meta.key == f.meta.key
                && e.meta.version != f.meta.version
                && e.status == FileStatus::Loaded
                && e.meta.sequencer <= f.meta.sequencer
            {
                e.status = FileStatus::Superseded;
                e.merged_at = None;
            }
        }
        batch.entries.push(Entry {
            meta: f.meta,
            status: summary.status,
            rows_read: summary.rows_read,
            rows_loaded: summary.rows_loaded,
            rows_rejected: summary.rows_rejected,
            reason: summary.reason.clone(),
            merged_at: (summary.status != FileStatus::Loaded).then(|| batch.now.clone()),
            replaces: f.replaces,
            parts: f.parts,
            staged_rows: f.rows,
            staged_bytes: f.bytes,
            rejects: f.rejects,
            reject_parts: f.reject_parts,
        });
        Ok(true)
    }

    fn abandon_file(&mut self) -> Result<(), WarehouseError> {
        self.drop_open_rows();
        self.file = None;
        Ok(())
    }

    fn pending(&self) -> (u64, u64) {
        let (rows, bytes) = self.batch.as_ref().map_or((0, 0), OpenBatch::staged);
        let (r, b) = self.file.as_ref().map_or((0, 0), |f| (f.rows, f.bytes));
        (rows + r, bytes + b)
    }

    fn commit(&mut self) -> Result<Option<BatchReport>, WarehouseError> {
        match self.commit_begin()? {
            Some(pending) => pending.wait(),
            None => Ok(None),
        }
    }

    /// Uploads the manifest and submits the batch; the returned commit waits for it.
    fn commit_begin(&mut self) -> Result<Option<Box<dyn PendingCommit>>, WarehouseError> {
        if self.file.is_some() {
            return Err(WarehouseError::Other("commit while a file is open".into()));
        }
        if self.in_flight().is_some() {
            return Err(WarehouseError::Other("commit while the previous commit has not ended".into()));
        }
        let Some(b) = self.batch.take() else { return Ok(None) };
        if b.entries.is_empty() {
            return Ok(None);
        }
        Ok(Some(Box::new(self.begin_batch(b)?)))
    }

    fn rollback(&mut self) {
        let objects = self.staged_objects();
        self.file = None;
        self.batch = None;
        if !objects.is_empty() {
            self.inner.block_on(self.inner.delete(objects));
        }
    }
}

impl Drop for RedshiftSink {
    fn drop(&mut self) {
        // Never block in drop (it may run on any thread): the deletion runs as a task.
        let objects = self.staged_objects();
        if !objects.is_empty() {
            let inner = self.inner.clone();
            self.inner.handle.spawn(async move { inner.delete(objects).await });
        }
    }
}

// ------------------------------------------------------------------------------------------
// The commit, as statements

/// The batch's ledger rows as the temporary table [`BATCH_FILES`] holds them: the ledger's
/// columns, then whether the row replaces an earlier load of its version (a forced replay).
fn batch_files_columns() -> Vec<&'static str> {
    let mut cols = column_names(&ledger_table::COLUMNS);
    cols.push("replaces");
    cols
}

/// An object to upload before the batch runs: key and body.
type Upload = (String, Vec<u8>);

/// One commit: the objects to upload first, then the statements of its one transaction.
#[derive(Debug)]
struct Plan {
    uploads: Vec<Upload>,
    statements: Vec<String>,
    /// Which statement is the guarded ledger insert (its row count is the files recorded).
    ledger_insert: usize,
}

fn ledger_values(e: &Entry, batch: &OpenBatch) -> Vec<Lit> {
    let m = &e.meta;
    vec![
        Lit::Str(m.bucket.clone()),
        Lit::Str(m.key.clone()),
        Lit::Str(m.version.clone()),
        Lit::Str(m.sequencer.clone()),
        Lit::Int(m.size as i64),
        Lit::Int(e.rows_read as i64),
        Lit::Int(e.rows_loaded as i64),
        Lit::Int(e.rows_rejected as i64),
        Lit::Str(e.status.as_str().into()),
        Lit::opt(e.reason.as_deref().map(|r| fit(r, ledger_table::REASON.width())).as_deref()),
        Lit::Int(batch.id),
        Lit::Str(timestamp_text(m.event_time)),
        Lit::Str(batch.now.clone()),
        Lit::opt(e.merged_at.as_deref()),
        Lit::Int(m.contract_version as i64),
        Lit::Int(e.replaces as i64),
    ]
}

fn reject_values(m: &FileMeta, r: &Reject, batch_id: i64, now: &str) -> Vec<Lit> {
    vec![
        Lit::Str(m.bucket.clone()),
        Lit::Str(m.key.clone()),
        Lit::Str(m.version.clone()),
        Lit::Int(batch_id),
        Lit::Int(r.line as i64),
        Lit::opt(r.column.as_deref().map(|c| fit(c, rejects_table::COLUMN_NAME.width())).as_deref()),
        Lit::Str(fit(r.rule, rejects_table::RULE.width()).into()),
        Lit::Str(fit(&r.reason, rejects_table::REASON.width()).into()),
        Lit::opt(r.value.as_deref().map(|v| fit(v, rejects_table::VALUE.width())).as_deref()),
        Lit::opt(r.raw.as_deref().map(|v| fit(v, rejects_table::RAW_LINE.width())).as_deref()),
        Lit::Int(m.contract_version as i64),
        Lit::Str(now.to_string()),
    ]
}

/// A row set destined for one table: as `INSERT … VALUES` statements, or as a gzip CSV + COPY.
struct RowSet {
    table: String,
    columns: Vec<&'static str>,
    rows: Vec<Vec<Lit>>,
    values: Option<Vec<String>>,
}

impl RowSet {
    fn new(table: &str, columns: Vec<&'static str>, rows: Vec<Vec<Lit>>) -> RowSet {
        let head = format!("INSERT INTO {table} ({})", columns.join(", "));
        let rendered: Vec<String> = rows.iter().map(|r| values_row(r)).collect();
        let values = values_statements(&head, &rendered, STATEMENT_BUDGET_BYTES);
        RowSet { table: table.to_string(), columns, rows, values }
    }

    /// One that can only be loaded by COPY (its VALUES are not rendered).
    fn copy_only(table: &str, columns: Vec<&'static str>, rows: Vec<Vec<Lit>>) -> RowSet {
        RowSet { table: table.to_string(), columns, rows, values: None }
    }

    /// The gzip CSV (none when the set is empty), its manifest, and the COPY that loads it.
    /// The manifest also names `uploaded`: parts of the same rows uploaded earlier.
    fn as_copy(
        &self,
        staging: &StagingLocation,
        batch_id: i64,
        name: &str,
        role: &str,
        uploaded: &[String],
    ) -> Result<(Vec<Upload>, String), WarehouseError> {
        let mut objects = Vec::new();
        let mut urls: Vec<String> = uploaded.iter().map(|k| staging.url(k)).collect();
        if !self.rows.is_empty() {
            let mut one = CsvParts::new(usize::MAX);
            let failed = |e: std::io::Error| WarehouseError::Other(format!("staging {name}: {e}"));
            for r in &self.rows {
                one.push(r).map_err(failed)?;
            }
            let data = one.finish().map_err(failed)?.unwrap_or_default();
            let data_key = staging.key(batch_id, &format!("{name}.csv.gz"));
            urls.push(staging.url(&data_key));
            objects.push((data_key, data));
        }
        let manifest_key = staging.key(batch_id, &format!("{name}.manifest.json"));
        let manifest = stage::manifest(&urls);
        let copy = Sql::copy_manifest(&self.table, &self.columns, &staging.url(&manifest_key), role);
        objects.push((manifest_key, manifest.into_bytes()));
        Ok((objects, copy))
    }
}

/// The statements of one commit, in order (see the module docs): the writers' lock first, then
/// the rest. At most [`MAX_BATCH_STATEMENTS`] statements and [`BATCH_BUDGET_BYTES`] of text in
/// all: ledger rows and rejects go in as VALUES while they fit, else (rejects first) as a
/// staged CSV loaded by COPY. Rejects spilled to staging put all the batch's rejects in by
/// COPY, the in-memory ones as one more part.
fn plan_commit(sql: &Sql<'_>, staging: &StagingLocation, b: &OpenBatch, role: &str) -> Result<Plan, WarehouseError> {
    let t = sql.t;
    let ledger =
        RowSet::new(BATCH_FILES, batch_files_columns(), b.entries.iter().map(|e| ledger_values(e, b)).collect());
    let reject_rows: Vec<Vec<Lit>> =
        b.entries.iter().flat_map(|e| e.rejects.iter().map(move |r| reject_values(&e.meta, r, b.id, &b.now))).collect();
    let spilled: Vec<String> = b.entries.iter().flat_map(|e| e.reject_parts.iter().cloned()).collect();
    let rejects = if spilled.is_empty() {
        RowSet::new(&t.rejects, column_names(&rejects_table::COLUMNS), reject_rows)
    } else {
        RowSet::copy_only(&t.rejects, column_names(&rejects_table::COLUMNS), reject_rows)
    };
    // The first routing that fits, measured on the statements themselves.
    for (ledger_by_values, rejects_by_values) in [(true, true), (true, false), (false, false)] {
        if (ledger_by_values && ledger.values.is_none()) || (rejects_by_values && rejects.values.is_none()) {
            continue;
        }
        let plan = commit_statements(sql, staging, b, role, &ledger, ledger_by_values, &rejects, rejects_by_values)?;
        if plan.statements.len() <= MAX_BATCH_STATEMENTS && batch_bytes(&plan.statements) <= BATCH_BUDGET_BYTES {
            return Ok(plan);
        }
    }
    Err(WarehouseError::Other(format!(
        "commit of batch {}: its statements do not fit one BatchExecuteStatement ({} statements, {} KB)",
        b.id,
        MAX_BATCH_STATEMENTS,
        BATCH_BUDGET_BYTES / 1024
    )))
}

/// The text a BatchExecuteStatement sends: its statements' bytes together.
fn batch_bytes(statements: &[String]) -> usize {
    statements.iter().map(String::len).sum()
}

#[allow(clippy::too_many_arguments)]
fn commit_statements(
    sql: &Sql<'_>,
    staging: &StagingLocation,
    b: &OpenBatch,
    role: &str,
    ledger: &RowSet,
    ledger_by_values: bool,
    rejects: &RowSet,
    rejects_by_values: bool,
) -> Result<Plan, WarehouseError> {
    let id = b.id;
    let spilled: Vec<String> = b.entries.iter().flat_map(|e| e.reject_parts.iter().cloned()).collect();
    let has_rejects = !rejects.rows.is_empty() || !spilled.is_empty();
    let parts: Vec<String> = b.entries.iter().flat_map(|e| e.parts.iter().cloned()).collect();
    let replaces = b.entries.iter().any(|e| e.replaces);
    let mut uploads = Vec::new();
    let mut statements = vec![sql.lock_writers()];
    statements.push(sql.batch_files_table(BATCH_FILES));
    if ledger_by_values {
        statements.extend(ledger.values.clone().unwrap_or_default());
    } else {
        let (objects, copy) = ledger.as_copy(staging, id, "ledger", role, &[])?;
        uploads.extend(objects);
        statements.push(copy);
    }
    if replaces {
        statements.push(sql.replace_batch_versions(BATCH_FILES));
    }
    // A version recorded meanwhile by another writer is skipped.
    let ledger_insert = statements.len();
    statements.push(sql.insert_batch_ledger(BATCH_FILES));
    // Versions within the batch were settled in memory; against the ledger, both ways: older
    // versions the batch outdates, and versions of the batch another writer outdated meanwhile.
    statements.push(sql.supersede_older_than_batch(id));
    statements.push(sql.supersede_batch_versions_already_older(id));
    if !parts.is_empty() {
        let manifest_key = staging.key(id, "manifest.json");
        let urls: Vec<String> = parts.iter().map(|k| staging.url(k)).collect();
        uploads.push((manifest_key.clone(), stage::manifest(&urls).into_bytes()));
        statements.push(sql.copy_staging(&staging.url(&manifest_key), role));
        statements.push(sql.drop_unrecorded_staging(id));
    }
    if has_rejects {
        if rejects_by_values {
            statements.extend(rejects.values.clone().unwrap_or_default());
        } else {
            let (objects, copy) = rejects.as_copy(staging, id, "rejects", role, &spilled)?;
            uploads.extend(objects);
            statements.push(copy);
        }
        statements.push(sql.drop_unrecorded_rejects(id));
    }
    statements.push(format!("DROP TABLE {BATCH_FILES}"));
    Ok(Plan { uploads, statements, ledger_insert })
}

// selftest's access: the statement runner and the staging location, for `wau-ingest selftest`
// (`crate::selftest`), which checks on a real workgroup what the product assumes of Redshift.
impl RedshiftWarehouse {
    /// One BatchExecuteStatement (one transaction) through the product's runner: a
    /// serialization conflict reruns it, as it does a commit. Rows affected per statement.
    pub fn run_batch(&self, sqls: &[String]) -> Result<Vec<i64>, WarehouseError> {
        let done = self.inner.block_on(self.inner.api.run("selftest", sqls, true, None))?;
        Ok(done.subs.iter().map(|s| s.result_rows).collect())
    }

    /// One BatchExecuteStatement, submitted once and never rerun: the error text Redshift gave.
    pub fn try_batch_once(&self, sqls: &[String]) -> Result<(), String> {
        self.inner.block_on(self.inner.api.attempt("selftest", sqls, true, None)).map(|_| ()).map_err(|e| match e {
            RunError::Conflict(t) | RunError::Failed(t) | RunError::Aborted(t) | RunError::Call { text: t, .. } => t,
        })
    }

    /// The COPY the product would run for `sql`'s staging table from the manifest at `manifest_url`.
    pub fn copy_staging_sql(&self, sql: &Sql<'_>, manifest_url: &str) -> String {
        sql.copy_staging(manifest_url, &self.inner.copy_role)
    }

    /// Uploads `body` as `<staging_uri><name>`; returns its `s3://` URL.
    pub fn put_staging(&self, name: &str, body: Vec<u8>) -> Result<String, WarehouseError> {
        let key = format!("{}{name}", self.inner.staging.prefix);
        self.inner.block_on(self.inner.put(&key, body))?;
        Ok(self.inner.staging.url(&key))
    }

    /// Deletes every object under `<staging_uri><prefix>`; how many there were.
    pub fn delete_staging_prefix(&self, prefix: &str) -> Result<usize, WarehouseError> {
        let (inner, bucket) = (&self.inner, &self.inner.staging.bucket);
        let full = format!("{}{prefix}", inner.staging.prefix);
        let failed = |what: &str, e: String| WarehouseError::Other(format!("{what} s3://{bucket}/{full}: {e}"));
        inner.block_on(async {
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_what_retrying_can_change() {
        use ErrorClass::*;
        for (text, class) in [
            ("ERROR: could not complete because of conflict with concurrent transaction", Conflict),
            ("ERROR: 1023 DETAIL: Serializable isolation violation on table - 100345", Conflict),
            ("ERROR: relation \"wau_ingest_files\" does not exist", Fatal),
            ("ERROR: database \"wau\" does not exist", Fatal),
            ("ERROR: permission denied for relation wau_ingest_files", Fatal),
            ("ERROR: value too long for type character varying(64)", RejectedData),
            ("ERROR: Load into table 'wau_audit_logs_staging' failed. String length exceeds DDL length", RejectedData),
            ("ERROR: syntax error at or near \"FROM\"", Misuse),
            ("ERROR: connection reset by peer", Transient),
        ] {
            assert_eq!(failure_class(text), class, "{text}");
        }
        let call = |transient| RunError::Call { text: "AccessDeniedException".into(), transient };
        assert_eq!((call(false).class(), call(true).class()), (Fatal, Transient));
        assert_eq!(RunError::Aborted("cancelled".into()).class(), Transient);
        assert!(Conflict.retryable() && Transient.retryable());
        assert!(!Fatal.retryable() && !Misuse.retryable() && !RejectedData.retryable());
    }

    #[test]
    fn string_literals_mean_the_same_text_with_or_without_backslash_escapes() {
        assert_eq!(sql_string("plain"), "'plain'");
        assert_eq!(sql_string("it's"), "'it''s'");
        assert_eq!(sql_string(""), "''");
        assert_eq!(sql_string(r"a\b"), r"('a' || CHR(92) || 'b')");
        // A trailing backslash can never swallow the closing quote.
        assert_eq!(sql_string(r"x\"), r"('x' || CHR(92))");
        assert_eq!(sql_string(r"\\'"), r"(CHR(92) || CHR(92) || '''')");
        assert_eq!(sql_string("nul\0here"), "'nul\u{FFFD}here'");
        for s in [r"a\b", r"\", r"'\'", "x"] {
            assert!(!sql_string(s).contains(r"\"), "{s:?} leaves a backslash in quotes");
        }
    }

    #[test]
    fn parameters_render_as_literals_outside_quotes_only() {
        let sql = "SELECT ':no', a::int FROM t WHERE k = :key AND v = :key AND n = :n AND x IS :nothing";
        let out = render(sql, &[("key", Lit::Str("o'k".into())), ("n", Lit::Int(7)), ("nothing", Lit::Null)]).unwrap();
        assert_eq!(out, "SELECT ':no', a::int FROM t WHERE k = 'o''k' AND v = 'o''k' AND n = 7 AND x IS NULL");
        assert!(render("SELECT :missing", &[]).unwrap_err().contains(":missing"));
        // A value holding a colon is not rendered again.
        assert_eq!(render(":a, :b", &[("a", Lit::Str(":b".into())), ("b", Lit::Int(1))]).unwrap(), "':b', 1");
    }

    #[test]
    fn merge_parameters_render_as_the_glue_job_renders_them() {
        let c = Contract::builtin();
        let t = Tables::for_contract(&c);
        let sql = Sql::new(Dialect::Redshift, &c, &t);
        let params = [
            ("merged_at", Lit::Str("2026-11-27 00:00:00.000000".into())),
            ("rows_deleted", Lit::Null),
            ("rows_inserted", Lit::Null),
        ];
        let merge: Vec<String> = sql.merge().iter().map(|s| render(&s.sql, &params).unwrap()).collect();
        assert!(merge.iter().all(|s| !s.contains(":merged_at") && !s.contains(":rows_")));
        let history = merge.iter().find(|s| s.starts_with("INSERT INTO wau_ingest_merges")).unwrap();
        assert!(
            history
                .contains("SELECT '2026-11-27 00:00:00.000000', COALESCE(MAX(batch_id), 0), COUNT(*), NULL, NULL FROM"),
            "{history}"
        );
    }

    #[test]
    fn values_statements_stay_under_the_limit_and_keep_every_row_in_order() {
        let rows: Vec<String> = (0..500).map(|i| format!("({i}, '{}')", "x".repeat(900))).collect();
        let stmts = values_statements("INSERT INTO t (a, b)", &rows, STATEMENT_BUDGET_BYTES).unwrap();
        assert!(stmts.len() >= 5, "{} statements", stmts.len());
        assert!(stmts.iter().all(|s| s.len() <= STATEMENT_BUDGET_BYTES && s.len() < MAX_STATEMENT_BYTES));
        assert!(stmts.iter().all(|s| s.starts_with("INSERT INTO t (a, b) VALUES (")));
        let joined =
            stmts.iter().map(|s| s.trim_start_matches("INSERT INTO t (a, b) VALUES ")).collect::<Vec<_>>().join(",\n");
        assert_eq!(joined, rows.join(",\n"));
        // Each statement is full: the next row would not have fit.
        for s in &stmts[..stmts.len() - 1] {
            assert!(s.len() + 2 + rows[0].len() > STATEMENT_BUDGET_BYTES);
        }
        assert_eq!(
            values_statements(
                "INSERT INTO t (a)",
                &["(1)".into(), "x".repeat(STATEMENT_BUDGET_BYTES)],
                STATEMENT_BUDGET_BYTES
            ),
            None
        );
        assert_eq!(values_statements("INSERT INTO t (a)", &[], STATEMENT_BUDGET_BYTES), Some(vec![]));
    }

    #[test]
    fn conflicts_and_transient_errors_are_told_apart() {
        assert!(is_serialization_conflict("ERROR: 1023 DETAIL: Serializable isolation violation on table - 100345, transactions forming the cycle are: 1, 2"));
        assert!(is_serialization_conflict("ERROR: could not serialize access due to concurrent update"));
        assert!(is_serialization_conflict("statement 3 of 9 (INSERT …): ERROR:1023"));
        assert!(is_serialization_conflict(
            "ERROR: could not complete because of conflict with concurrent transaction [sub-statement x:4]"
        ));
        assert!(is_serialization_conflict("ERROR: deadlock detected DETAIL: Process 1 waits for AccessExclusiveLock"));
        assert!(!is_serialization_conflict("ERROR: value too long for type character varying(1024)"));
        assert!(!is_serialization_conflict("ERROR: relation \"t10234\" does not exist"));
        assert!(!is_serialization_conflict("ERROR: syntax error at or near \"FROM\""));
    }

    #[test]
    fn text_fits_column_widths_in_bytes_at_character_boundaries() {
        assert_eq!(fit("abc", 5), "abc");
        assert_eq!(fit("abcdef", 3), "abc");
        assert_eq!(fit("ééé", 5), "éé"); // é is 2 bytes: 5 bytes hold two
        assert_eq!(fit("€", 2), "");
        // NUL is replaced before the cut: three bytes of U+FFFD never pass the width.
        assert_eq!(fit("ab\0", 3), "ab");
        assert_eq!(fit("ab\0", 5), "ab\u{FFFD}");
        assert_eq!(fit("\0\0", 4), "\u{FFFD}");
    }

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

    #[test]
    fn batch_ids_increase_and_do_not_repeat() {
        let ids: Vec<i64> = (0..1000).map(|_| new_batch_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let now_micros = Utc::now().timestamp_micros();
        assert!(ids[0] / 1000 <= now_micros && ids[0] / 1000 > now_micros - 60_000_000, "epoch microseconds × 1000");
    }

    #[test]
    fn admission_reads_the_newest_load_and_the_newer_count() {
        let rows = vec![
            vec![Cell::Long(0), Cell::Str("superseded".into()), Cell::Long(5)],
            vec![Cell::Long(0), Cell::Str("loaded".into()), Cell::Long(9)],
            vec![Cell::Long(1), Cell::Null, Cell::Str("2".into())],
        ];
        assert_eq!(read_admission(&rows), (Some(FileStatus::Loaded), 2));
        assert_eq!(read_admission(&[vec![Cell::Long(1), Cell::Null, Cell::Long(0)]]), (None, 0));
        let c = Contract::builtin();
        let t = Tables::for_contract(&c);
        let q = admission_query(&Sql::new(Dialect::Redshift, &c, &t), &meta("k\\'.csv", "v1", "01")).unwrap();
        assert!(q.contains("key = ('k' || CHR(92) || '''.csv')"), "{q}");
        assert_eq!(q.matches("UNION ALL").count(), 1);
    }

    fn meta(key: &str, version: &str, seq: &str) -> FileMeta {
        FileMeta {
            bucket: "b".into(),
            key: key.into(),
            version: version.into(),
            sequencer: seq.into(),
            size: 10,
            event_time: Utc::now(),
            contract_version: 1,
        }
    }

    fn entry(key: &str, rejects: usize, reject_bytes: usize) -> Entry {
        Entry {
            meta: meta(key, "v1", "1"),
            status: FileStatus::Loaded,
            rows_read: 1 + rejects as u64,
            rows_loaded: 1,
            rows_rejected: rejects as u64,
            reason: None,
            merged_at: None,
            replaces: false,
            parts: vec![format!("staging/1/{key}.gz")],
            staged_rows: 1,
            staged_bytes: 10,
            rejects: (0..rejects)
                .map(|i| Reject {
                    line: i as u64 + 2,
                    column: Some("user_email".into()),
                    rule: "format",
                    reason: "not an email".into(),
                    value: Some("x".repeat(reject_bytes / 4)),
                    raw: Some("r".repeat(reject_bytes)),
                })
                .collect(),
            reject_parts: Vec::new(),
        }
    }

    fn plan(entries: Vec<Entry>) -> Plan {
        let c = Contract::builtin();
        let t = Tables::for_contract(&c);
        let sql = Sql::new(Dialect::Redshift, &c, &t);
        let batch = OpenBatch {
            id: 42,
            now: "2026-11-27 00:00:00.000000".into(),
            entries,
            next_part: 0,
            held: Held::default(),
        };
        plan_commit(&sql, &StagingLocation::parse("s3://b/staging/").unwrap(), &batch, "arn:aws:iam::1:role/copy")
            .unwrap()
    }

    #[test]
    fn a_small_commit_is_literal_statements_and_one_copy() {
        let p = plan(vec![entry("a.csv", 2, 100), entry("b.csv", 0, 0)]);
        let s = &p.statements;
        assert_eq!(s.len(), 11, "{s:#?}");
        assert_eq!(s[0], "LOCK wau_ingest_lock", "the lock before anything takes the snapshot");
        assert!(s[1].starts_with("CREATE TEMP TABLE wau_batch_files ("));
        assert!(
            s[2].starts_with("INSERT INTO wau_batch_files (bucket, key, version,")
                && s[2].contains("'a.csv'")
                && s[2].contains("'b.csv'")
        );
        assert_eq!(p.ledger_insert, 3);
        assert!(s[3].starts_with("INSERT INTO wau_ingest_files (bucket,") && s[3].contains("WHERE NOT EXISTS"));
        assert!(
            s[4].starts_with("UPDATE wau_ingest_files SET status = 'superseded'") && s[4].contains("n.batch_id = 42")
        );
        assert!(
            s[5].starts_with("UPDATE wau_ingest_files SET status = 'superseded', merged_at = NULL WHERE batch_id = 42")
                && s[5].contains("n.sequencer > wau_ingest_files.sequencer"),
            "a version of this batch another writer outdated meanwhile: {}",
            s[5]
        );
        assert!(
            s[6].starts_with("COPY wau_audit_logs_staging (")
                && s[6].contains("FROM 's3://b/staging/42/manifest.json'")
        );
        assert!(s[7].starts_with("DELETE FROM wau_audit_logs_staging WHERE _batch_id = 42"));
        assert!(s[8].starts_with("INSERT INTO wau_ingest_rejects (") && s[8].matches("'format'").count() == 2);
        assert!(s[9].starts_with("DELETE FROM wau_ingest_rejects WHERE batch_id = 42"));
        assert_eq!(s[10], "DROP TABLE wau_batch_files");
        assert_eq!(p.uploads.len(), 1, "only the manifest");
        let manifest: serde_json::Value = serde_json::from_slice(&p.uploads[0].1).unwrap();
        assert_eq!(manifest["entries"].as_array().unwrap().len(), 2);
        assert!(batch_bytes(s) <= BATCH_BUDGET_BYTES);
    }

    #[test]
    fn every_commit_fits_one_batch_by_count_and_by_bytes() {
        // Rejects of ~2.3 KB rendered: from a few (VALUES) to many (COPY), the whole batch's text
        // stays under the budget, not only each statement's.
        for (files, rejects) in [(1, 0), (2, 10), (1, 40), (1, 41), (3, 100), (1, 2000), (400, 1)] {
            let entries = (0..files).map(|i| entry(&format!("csv/acme/{i}.csv"), rejects, 2000)).collect();
            let p = plan(entries);
            let s = &p.statements;
            assert_eq!(s[0], "LOCK wau_ingest_lock");
            assert!(s.len() <= MAX_BATCH_STATEMENTS, "{files} files × {rejects}: {} statements", s.len());
            assert!(batch_bytes(s) <= BATCH_BUDGET_BYTES, "{files} files × {rejects}: {} bytes", batch_bytes(s));
            let by_values = s.iter().any(|x| x.starts_with("INSERT INTO wau_ingest_rejects ("));
            let by_copy = s.iter().any(|x| x.starts_with("COPY wau_ingest_rejects ("));
            assert!(!(by_values && by_copy), "one route for a batch's rejects");
            assert_eq!(by_values || by_copy, rejects > 0);
        }
        // Rejects of ~2.6 KB: 30 fit beside the rest as VALUES, 40 (fewer than 40 statements,
        // more than 100 KB) do not.
        let p = plan(vec![entry("a.csv", 30, 2000)]);
        assert!(p.statements.iter().any(|x| x.starts_with("INSERT INTO wau_ingest_rejects (")));
        let p = plan(vec![entry("a.csv", 40, 2000)]);
        assert!(p.statements.iter().any(|x| x.starts_with("COPY wau_ingest_rejects (")));
    }

    #[test]
    fn rejects_that_would_overflow_the_batch_are_copied_instead() {
        // 2000 rejects of ~2.3 KB rendered: ~48 VALUES statements, more than a batch takes.
        let p = plan(vec![entry("a.csv", 2000, 2000)]);
        assert!(p.statements.len() <= MAX_BATCH_STATEMENTS);
        let copy = p.statements.iter().find(|s| s.starts_with("COPY wau_ingest_rejects (")).expect("rejects by COPY");
        assert!(copy.contains("FROM 's3://b/staging/42/rejects.manifest.json' IAM_ROLE 'arn:aws:iam::1:role/copy' FORMAT AS CSV GZIP MANIFEST"));
        assert!(!p.statements.iter().any(|s| s.starts_with("INSERT INTO wau_ingest_rejects")));
        let keys: Vec<&str> = p.uploads.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["staging/42/manifest.json", "staging/42/rejects.csv.gz", "staging/42/rejects.manifest.json"]);
        let mut csv = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&p.uploads[1].1[..]), &mut csv).unwrap();
        let rows: Vec<csv::StringRecord> = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(csv.as_bytes())
            .records()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 2000);
        assert_eq!(rows[0].len(), rejects_table::COLUMNS.len());
        assert_eq!(
            (&rows[0][0], &rows[0][1], &rows[0][3], &rows[0][4], &rows[0][6]),
            ("b", "a.csv", "42", "2", "format")
        );
    }

    fn gunzip_rows(gz: &[u8]) -> Vec<csv::StringRecord> {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut text).unwrap();
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes())
            .records()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn spilled_rejects_put_all_the_batchs_rejects_in_by_one_copy_of_the_parts_and_the_rest() {
        // a.csv spilled two parts; b.csv holds 3 rejects in memory; c.csv has none.
        let mut a = entry("a.csv", 0, 0);
        a.reject_parts = vec!["staging/42/rejects-00001.csv.gz".into(), "staging/42/rejects-00003.csv.gz".into()];
        let p = plan(vec![a, entry("b.csv", 3, 10), entry("c.csv", 0, 0)]);
        let s = &p.statements;
        assert!(
            !s.iter().any(|x| x.starts_with("INSERT INTO wau_ingest_rejects")),
            "no VALUES route next to the COPY: {s:#?}"
        );
        let copies: Vec<&String> = s.iter().filter(|x| x.starts_with("COPY wau_ingest_rejects (")).collect();
        assert_eq!(copies.len(), 1);
        assert!(copies[0].starts_with(&format!(
            "COPY wau_ingest_rejects ({}) FROM 's3://b/staging/42/rejects.manifest.json'",
            column_names(&rejects_table::COLUMNS).join(", ")
        )));
        // The removal of rejects whose version got no ledger row comes after the COPY.
        let copy_at = s.iter().position(|x| x == copies[0]).unwrap();
        assert!(
            s[copy_at + 1].starts_with("DELETE FROM wau_ingest_rejects WHERE batch_id = 42\n")
                && s[copy_at + 1].contains("NOT EXISTS")
        );
        let keys: Vec<&str> = p.uploads.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["staging/42/manifest.json", "staging/42/rejects.csv.gz", "staging/42/rejects.manifest.json"]);
        let manifest: serde_json::Value = serde_json::from_slice(&p.uploads[2].1).unwrap();
        let urls: Vec<&str> =
            manifest["entries"].as_array().unwrap().iter().map(|e| e["url"].as_str().unwrap()).collect();
        assert_eq!(
            urls,
            [
                "s3://b/staging/42/rejects-00001.csv.gz",
                "s3://b/staging/42/rejects-00003.csv.gz",
                "s3://b/staging/42/rejects.csv.gz"
            ]
        );
        assert!(manifest["entries"].as_array().unwrap().iter().all(|e| e["mandatory"] == true));
        let rows = gunzip_rows(&p.uploads[1].1);
        assert_eq!(rows.len(), 3, "the last part holds the in-memory rejects only");
        assert!(rows.iter().all(|r| r.len() == rejects_table::COLUMNS.len() && &r[1] == "b.csv" && &r[3] == "42"));
        assert!(s.len() <= MAX_BATCH_STATEMENTS);
    }

    #[test]
    fn rejects_all_spilled_are_copied_from_their_parts_alone() {
        let mut a = entry("a.csv", 0, 0);
        a.reject_parts = vec!["staging/42/rejects-00000.csv.gz".into()];
        let p = plan(vec![a]);
        assert_eq!(p.statements.iter().filter(|x| x.starts_with("COPY wau_ingest_rejects (")).count(), 1);
        assert!(p.statements.iter().any(|x| x.starts_with("DELETE FROM wau_ingest_rejects WHERE batch_id = 42")));
        let keys: Vec<&str> = p.uploads.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["staging/42/manifest.json", "staging/42/rejects.manifest.json"], "no empty last part");
        let manifest: serde_json::Value = serde_json::from_slice(&p.uploads[1].1).unwrap();
        assert_eq!(manifest["entries"].as_array().unwrap().len(), 1);
        assert_eq!(manifest["entries"][0]["url"], "s3://b/staging/42/rejects-00000.csv.gz");
        // Without any reject, no rejects statement at all.
        let p = plan(vec![entry("a.csv", 0, 0)]);
        assert!(!p.statements.iter().any(|x| x.contains("wau_ingest_rejects")));
    }

    #[test]
    fn spilled_reject_parts_are_cut_at_the_limit_and_read_back_as_the_copy_route_writes_them() {
        let m = meta("dir/a,\"b\".csv", "v1", "1");
        let rejects: Vec<Reject> = (0..50)
            .map(|i| Reject {
                line: i + 2,
                column: if i % 2 == 0 { None } else { Some("user_email".into()) },
                rule: "format",
                reason: "bad, \"very\"\nbad".into(),
                value: Some(format!("v\\{i}'")),
                raw: Some(format!("acme,e{i},\"x\"\0")),
            })
            .collect();
        let mut w = CsvParts::new(1000);
        let mut parts = Vec::new();
        for r in &rejects {
            parts.extend(w.push(&reject_values(&m, r, 42, "2026-11-27 00:00:00.000000")).unwrap());
        }
        parts.extend(w.finish().unwrap());
        assert_eq!(w.finish().unwrap(), None, "nothing open after finish");
        assert!(parts.len() > 3, "{} parts", parts.len());
        let rows: Vec<csv::StringRecord> = parts.iter().flat_map(|p| gunzip_rows(p)).collect();
        assert_eq!(rows.len(), 50);
        // The same bytes as the in-memory route's CSV of the same rows.
        let entry = Entry { meta: m.clone(), rejects: rejects.clone(), ..entry("x", 0, 0) };
        let batch = OpenBatch {
            id: 42,
            now: "2026-11-27 00:00:00.000000".into(),
            entries: vec![entry],
            next_part: 0,
            held: Held::default(),
        };
        let set = RowSet::copy_only(
            "t",
            column_names(&rejects_table::COLUMNS),
            batch.entries[0]
                .rejects
                .iter()
                .map(|r| reject_values(&batch.entries[0].meta, r, batch.id, &batch.now))
                .collect(),
        );
        let (objects, _) = set.as_copy(&StagingLocation::parse("s3://b/s/").unwrap(), 42, "rejects", "", &[]).unwrap();
        assert_eq!(gunzip_rows(&objects[0].1), rows);
        assert_eq!(
            (&rows[0][1], &rows[0][5], &rows[1][5], &rows[0][7]),
            ("dir/a,\"b\".csv", "", "user_email", "bad, \"very\"\nbad")
        );
        assert_eq!(&rows[3][9], "acme,e3,\"x\"\u{FFFD}");
    }

    #[test]
    fn the_reject_bound_counts_rows_and_bytes() {
        let small = entry("a.csv", 3, 10).rejects;
        let h = Held::of(&small);
        assert_eq!(h.rows, 3);
        assert_eq!(h.bytes, 3 * (std::mem::size_of::<Reject>() + "not an email".len() + "user_email".len() + 2 + 10));
        let bound = Held { rows: 5, bytes: 10_000 };
        assert!(h.within(bound) && h.plus(Held::of(&small[..2])).within(bound));
        assert!(!h.plus(h).within(bound), "6 rejects pass 5");
        assert!(!Held::of(&entry("a.csv", 1, 20_000).rejects).within(bound), "one big reject passes the bytes");
        assert_eq!(h.plus(h).minus(h), h);
        assert_eq!(h.minus(h.plus(h)), Held::default());
    }

    #[test]
    fn many_files_put_the_ledger_rows_in_by_copy_too() {
        let entries: Vec<Entry> =
            (0..3000).map(|i| entry(&format!("csv/acme/{i:05}-{}.csv", "k".repeat(900)), 1, 10)).collect();
        let p = plan(entries);
        assert!(p.statements.len() <= MAX_BATCH_STATEMENTS, "{}", p.statements.len());
        assert!(batch_bytes(&p.statements) <= BATCH_BUDGET_BYTES);
        assert!(p.statements[2].starts_with("COPY wau_batch_files ("));
        // 3,000 rejects do not fit beside it either.
        assert!(p.statements.iter().any(|s| s.starts_with("COPY wau_ingest_rejects (")));
        assert_eq!(p.ledger_insert, 3);
    }

    #[test]
    fn forced_versions_are_marked_replaced_before_the_guarded_insert() {
        let mut e = entry("a.csv", 0, 0);
        e.replaces = true;
        let p = plan(vec![e]);
        let replace = p.statements.iter().position(|s| s.contains("SET status = 'replaced'")).unwrap();
        assert!(replace < p.ledger_insert);
        assert!(p.statements[2].ends_with(", 1)"), "the replaces flag: {}", p.statements[2]);
    }
}
