//! The statement runner over the Redshift Data API: submit (ExecuteStatement or
//! BatchExecuteStatement, with a ClientToken), poll to the end, rerun a serialization conflict,
//! retry transient call errors, read results page by page, cancel. Also how a failure is
//! classified ([`failure_class`], [`is_serialization_conflict`]) and the cells results arrive in.
//!
//! It knows nothing of ledgers, batches or staging: it runs the SQL text it is given and must
//! not build any (the statements come from `plan`, `batch` and the shared `sql`).

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_redshiftdata::error::DisplayErrorContext;
use aws_sdk_redshiftdata::operation::describe_statement::DescribeStatementOutput;
use aws_sdk_redshiftdata::types::{Field, StatementStatusString, StatusString};
use backon::Retryable;
use chrono::Utc;
use tracing::warn;

use crate::aws::{call_error, retry, CallError};
use crate::metrics::Metrics;
use crate::warehouse::{ErrorClass, WarehouseError};

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
pub(super) enum RunError {
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

pub(super) fn int_at(rows: &[Vec<Cell>], row: usize, col: usize) -> i64 {
    rows.get(row).and_then(|r| r.get(col)).and_then(Cell::as_i64).unwrap_or(0)
}

// ------------------------------------------------------------------------------------------
// The statement runner

/// Where statements run: Serverless (workgroup, IAM) or a provisioned cluster (db user or a
/// Secrets Manager secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
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
pub(super) struct Done {
    pub(super) id: String,
    pub(super) subs: Vec<SubDone>,
}

#[derive(Debug, Clone)]
pub(super) struct SubDone {
    pub(super) id: String,
    /// Rows returned or affected; -1 when unknown.
    pub(super) result_rows: i64,
}

/// The statement a running merge waits on, so another thread can cancel it.
#[derive(Debug, Default)]
pub(super) struct RunningStatement {
    pub(super) id: Mutex<Option<String>>,
    pub(super) cancelled: AtomicBool,
}

pub(super) struct DataApi {
    client: aws_sdk_redshiftdata::Client,
    target: Target,
    secret_arn: Option<String>,
    database: String,
    pub(super) metrics: Arc<Metrics>,
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
    pub(super) fn new(
        client: aws_sdk_redshiftdata::Client,
        target: Target,
        secret_arn: Option<String>,
        database: String,
        metrics: Arc<Metrics>,
    ) -> DataApi {
        DataApi { client, target, secret_arn, database, metrics }
    }

    /// Runs `sqls` — one ExecuteStatement (autocommit) when `batch` is false, else one
    /// BatchExecuteStatement (one transaction) — until it ends. A serialization conflict reruns
    /// it; `running` (the merge) exposes the statement id for cancelling.
    pub(super) async fn run(
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
    pub(super) async fn run_from(
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

    pub(super) fn failed(&self, op: &'static str, sqls: &[String], e: RunError) -> WarehouseError {
        self.metrics.error("data_api_statement");
        let what = match sqls {
            [one] => headline(one),
            many => format!("batch of {} statements", many.len()),
        };
        let reruns = if matches!(e, RunError::Conflict(_)) { " (reruns exhausted)" } else { "" };
        WarehouseError::classified(e.class(), format!("redshift {op}: {what}{reruns}: {e}"))
    }

    pub(super) async fn attempt(
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

    pub(super) async fn submit(&self, op: &'static str, sqls: &[String], batch: bool) -> Result<String, RunError> {
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

    /// Polls until FINISHED, FAILED or ABORTED, on [`PollSchedule`]: the first DescribeStatement
    /// after [`FIRST_POLL`], then twice as long between polls up to [`MAX_POLL_INTERVAL`]. A
    /// statement of `d` seconds costs [`PollSchedule::polls_for`]`(d)` calls (2 for 0.1 s, 3 for
    /// 0.3 s, 5 for 1 s), the bound docs/design.md ("Data API calls") counts against the
    /// account's DescribeStatement quota, and is seen ended at most `d` + 50 ms (or 1 s) late.
    async fn wait(&self, id: &str, sqls: &[String]) -> Result<Done, RunError> {
        let mut schedule = PollSchedule::default();
        loop {
            tokio::time::sleep(schedule.next_delay()).await;
            let d = self.describe(id).await?;
            match d.status() {
                Some(StatusString::Finished) => {
                    // Where a batch's time went, statement by statement (Redshift's own durations).
                    let subs = d
                        .sub_statements()
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            tracing::debug!(
                                statement = id,
                                sub = i,
                                ms = s.duration() / 1_000_000,
                                rows = s.result_rows(),
                                sql = headline(s.query_string().unwrap_or_default()),
                                "sub-statement ended"
                            );
                            SubDone { id: s.id().to_string(), result_rows: s.result_rows() }
                        })
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
        }
    }

    /// Every row of a finished statement (a sub-statement id `…:N` for a batch), page by page.
    pub(super) async fn rows(&self, id: &str) -> Result<Vec<Vec<Cell>>, WarehouseError> {
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
    pub(super) async fn query(&self, op: &'static str, sql: String) -> Result<Vec<Vec<Cell>>, WarehouseError> {
        let done = self.run(op, std::slice::from_ref(&sql), false, None).await?;
        self.rows(&done.id).await
    }

    pub(super) async fn cancel(&self, id: &str) -> Result<(), String> {
        self.client.cancel_statement().id(id).send().await.map(|_| ()).map_err(|e| DisplayErrorContext(&e).to_string())
    }
}

/// The wait before a statement's first DescribeStatement: no statement has ended sooner
/// (a submission is SUBMITTED when the call returns), so polling at once would only be spent.
pub(super) const FIRST_POLL: Duration = Duration::from_millis(50);
/// The longest wait between two DescribeStatement calls of one statement.
pub(super) const MAX_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// When a running statement is asked about: after [`FIRST_POLL`], then after waits doubling up
/// to [`MAX_POLL_INTERVAL`]. Doubling keeps the calls per statement logarithmic in its duration
/// (they count against the account's DescribeStatement quota) while a statement is never seen
/// ended later than its own duration plus [`FIRST_POLL`] (or the cap) after it ended.
#[derive(Debug, Clone, Default)]
pub(super) struct PollSchedule {
    last: Option<Duration>,
}

impl PollSchedule {
    /// The wait before the next DescribeStatement.
    pub(super) fn next_delay(&mut self) -> Duration {
        let next = self.last.map_or(FIRST_POLL, |d| (d * 2).min(MAX_POLL_INTERVAL));
        self.last = Some(next);
        next
    }

    /// DescribeStatement calls a statement that runs `duration` costs: the polls up to the first
    /// one at or after its end.
    #[cfg(test)]
    pub(super) fn polls_for(duration: Duration) -> u32 {
        let (mut schedule, mut at, mut polls) = (PollSchedule::default(), Duration::ZERO, 0);
        while at < duration || polls == 0 {
            at += schedule.next_delay();
            polls += 1;
        }
        polls
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
    fn polls_double_from_the_first_wait_to_the_cap() {
        let mut p = PollSchedule::default();
        let waits: Vec<u64> = (0..7).map(|_| p.next_delay().as_millis() as u64).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1000, 1000]);
        let polls = |ms| PollSchedule::polls_for(Duration::from_millis(ms));
        // The counts docs/design.md ("Data API calls") quotes.
        assert_eq!([polls(10), polls(100), polls(300), polls(1000), polls(3000), polls(10_000)], [1, 2, 3, 5, 7, 14]);
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
}
