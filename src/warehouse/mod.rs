//! The warehouse boundary: staging, ledger, rejects, merge and the target table.
//!
//! A [`BatchSink`] is one writer's open micro-batch. Files enter it one at a time
//! (`admit` → rows/rejects → `finish_file`), and `commit` makes the staging rows, ledger rows,
//! reject rows and supersede marks of every file in it durable at once. Nothing is visible, and
//! nothing may be acknowledged, before `commit` returns. Implementations: [`sqlite`] (embedded) and
//! [`redshift`] (the Redshift Data API with COPY from S3 staging).

pub mod evolve;
pub mod ledger;
pub mod redshift;
pub mod sql;
pub mod sqlite;
pub mod stage;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::validate::{Reject, RowChunk};

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("warehouse: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A failure the warehouse classified (see [`ErrorClass`]).
    #[error("warehouse: {message}")]
    Classified { class: ErrorClass, message: String },
    /// Not classified: met like a transient failure (back off, try again).
    #[error("warehouse: {0}")]
    Other(String),
}

/// How a warehouse failure is met: the small set callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling, a server error, a lost connection, an interrupted statement: back off and
    /// try again; nothing was committed.
    Transient,
    /// A concurrency conflict that outlived its reruns: back off and try again.
    Conflict,
    /// The warehouse refused data the contract accepted (a width, a time format): the batch
    /// would fail on every retry. A defect: stop and say so.
    RejectedData,
    /// The product asked something it must not (SQL the engine does not take, a call out of
    /// order): a defect: stop and say so.
    Misuse,
    /// The service cannot work as configured: a missing table or database, denied
    /// credentials, an unknown workgroup. Retrying cannot help: stop with the reason.
    Fatal,
}

impl ErrorClass {
    /// Worth backing off and trying again.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::Conflict)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Conflict => "conflict",
            ErrorClass::RejectedData => "rejected data",
            ErrorClass::Misuse => "misuse",
            ErrorClass::Fatal => "fatal",
        }
    }
}

impl WarehouseError {
    pub fn classified(class: ErrorClass, message: impl Into<String>) -> WarehouseError {
        WarehouseError::Classified { class, message: message.into() }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            WarehouseError::Classified { class, .. } => *class,
            WarehouseError::Sqlite(e) => sqlite_class(e),
            WarehouseError::Other(_) => ErrorClass::Transient,
        }
    }
}

/// SQLite: a busy or locked database is weather; a file that cannot be opened or written, or
/// a missing table, is the deployment's; the rest is the product's.
fn sqlite_class(e: &rusqlite::Error) -> ErrorClass {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | SystemIoFailure | OutOfMemory) => ErrorClass::Transient,
        Some(CannotOpen | ReadOnly | PermissionDenied | DatabaseCorrupt | NotADatabase | DiskFull) => ErrorClass::Fatal,
        _ if e.to_string().contains("no such table") => ErrorClass::Fatal,
        _ => ErrorClass::Misuse,
    }
}

/// A file version, fully identified, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub bucket: String,
    pub key: String,
    pub version: String,
    pub sequencer: String,
    pub size: u64,
    pub event_time: DateTime<Utc>,
    pub contract_version: u32,
    /// The customer its key names (the contract's `customer_from_key`), known before it is read.
    pub customer: Option<String>,
}

/// What the ledger says about a version before any work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Unknown version (or `force`): load it.
    Load,
    /// Already recorded with this status: count as a duplicate, do nothing.
    Duplicate(FileStatus),
    /// A newer version of the key is already recorded: this one is recorded as superseded, not loaded.
    Superseded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    Loaded,
    Rejected,
    Superseded,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Loaded => sql::LOADED,
            FileStatus::Rejected => sql::REJECTED,
            FileStatus::Superseded => sql::SUPERSEDED,
        }
    }
    pub fn parse(s: &str) -> Option<FileStatus> {
        match s {
            sql::LOADED => Some(FileStatus::Loaded),
            sql::REJECTED => Some(FileStatus::Rejected),
            sql::SUPERSEDED => Some(FileStatus::Superseded),
            _ => None,
        }
    }
}

/// How a file ends in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    pub status: FileStatus,
    pub rows_read: u64,
    pub rows_loaded: u64,
    pub rows_rejected: u64,
    pub reason: Option<String>,
    /// The customer the ledger records for it ([`ledger::file_customer`]).
    pub customer: Option<String>,
}

impl FileSummary {
    /// A version recorded superseded on arrival: nothing read, its key's customer.
    pub fn superseded(file: &FileMeta) -> FileSummary {
        FileSummary {
            status: FileStatus::Superseded,
            rows_read: 0,
            rows_loaded: 0,
            rows_rejected: 0,
            reason: None,
            customer: ledger::file_customer(file.customer.as_deref(), &crate::validate::RowCustomers::None),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub batch_id: i64,
    pub files: u64,
    pub rows_loaded: u64,
    pub rows_rejected: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeReport {
    pub files: u64,
    pub rows_deleted: u64,
    pub rows_inserted: u64,
    /// Event times of the loaded files this merge published.
    pub event_times: Vec<DateTime<Utc>>,
}

/// One writer's open micro-batch. Exactly one file is open at a time.
///
/// The methods are async: an engine awaits its warehouse directly (Redshift: the SDK), or keeps
/// its blocking work on a thread of its own (SQLite), so a caller on the runtime never blocks.
/// `Sync` as well as `Send`, so that a `Pipeline` holding one may be borrowed across an await.
#[async_trait]
pub trait BatchSink: Send + Sync {
    /// Asks the ledger about several versions in one round trip, so that the `admit`s of those
    /// versions that follow before the next commit begins need none. Only an optimisation:
    /// `admit` stays the decision (it adds what the batch and the commit in flight hold), and
    /// the commit's guarded insert stays the authority. By default nothing is asked ahead.
    async fn prepare(&mut self, files: &[FileMeta]) -> Result<(), WarehouseError> {
        let _ = files;
        Ok(())
    }
    /// Checks the ledger for this version inside the batch; on `Load` opens the file.
    /// With `force`, an earlier load of the same version is marked replaced and it loads again,
    /// unless that load is this batch's own: then it is a duplicate (`ledger::admit`).
    async fn admit(&mut self, file: &FileMeta, force: bool) -> Result<Admission, WarehouseError>;
    async fn write_rows(&mut self, chunk: RowChunk) -> Result<(), WarehouseError>;
    async fn write_rejects(&mut self, rejects: Vec<Reject>) -> Result<(), WarehouseError>;
    /// The open file is rejected whole: forget its rows and rejects so far (the file stays open).
    async fn discard_file_rows(&mut self) -> Result<(), WarehouseError>;
    /// Records the open file's ledger row and supersedes older versions of its key.
    /// Returns false when another writer recorded the same version first: then nothing of
    /// this file is kept and it counts as a duplicate.
    async fn finish_file(&mut self, summary: &FileSummary) -> Result<bool, WarehouseError>;
    /// Nothing of the open file is kept: it will be tried again.
    async fn abandon_file(&mut self) -> Result<(), WarehouseError>;
    /// Rows and bytes written since the batch opened (for the flush policy). Cheap: never waits.
    fn pending(&self) -> (u64, u64);
    /// Makes the batch durable. `None` when the batch was empty.
    async fn commit(&mut self) -> Result<Option<BatchReport>, WarehouseError>;
    /// Starts making the batch durable and opens the next one at once; `None` when the batch was
    /// empty. Until the returned commit has ended, `admit` counts its files as part of the batch
    /// (a version in it is a duplicate, an older version of its keys superseded), and the caller
    /// must not begin another commit: the next batch's guard relies on this one's ledger rows.
    /// If it fails, the caller rolls back the batch opened meanwhile too. By default the commit
    /// runs here, to its end.
    async fn commit_begin(&mut self) -> Result<Option<Box<dyn PendingCommit>>, WarehouseError> {
        Ok(self.commit().await?.map(|r| Box::new(Committed(Some(r))) as Box<dyn PendingCommit>))
    }
    /// Drops the whole open batch.
    async fn rollback(&mut self);
    /// False once the sink can no longer work at all (its engine's private thread stopped: a
    /// bug); every call then fails. The service stops rather than retries.
    fn alive(&self) -> bool {
        true
    }
}

/// A commit begun by [`BatchSink::commit_begin`]. Nothing it covers may be acknowledged before
/// `wait` returned `Ok`.
#[async_trait]
pub trait PendingCommit: Send {
    /// Waits until the commit has ended; `None` when it recorded nothing.
    async fn wait(self: Box<Self>) -> Result<Option<BatchReport>, WarehouseError>;
    /// True when `wait` would return at once.
    fn is_done(&self) -> bool {
        false
    }
}

/// A commit that already ended.
pub struct Committed(pub Option<BatchReport>);

#[async_trait]
impl PendingCommit for Committed {
    async fn wait(self: Box<Self>) -> Result<Option<BatchReport>, WarehouseError> {
        Ok(self.0)
    }
    fn is_done(&self) -> bool {
        true
    }
}

/// One row of `wau_weekly_active_users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WauRow {
    pub customer: String,
    pub iso_week: String,
    pub week_start: String,
    pub active_users: i64,
}

/// Ledger totals: what `demo` and tests print and check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    pub files_loaded: u64,
    pub files_rejected: u64,
    pub files_superseded: u64,
    pub rows_read: u64,
    pub rows_loaded: u64,
    pub rows_rejected: u64,
    /// Files whose ledger row breaks `rows_read = rows_loaded + rows_rejected` (must be 0).
    pub unbalanced_files: u64,
    pub target_rows: u64,
    pub staging_rows: u64,
    pub reject_rows: u64,
}

/// A version as reconcile compares it with a listing: its key and sequencer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Recorded {
    pub key: String,
    pub sequencer: String,
}

/// Where a page of [`Warehouse::recorded_page`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageStart {
    /// Every pair whose key is this one or after it.
    AtKey(String),
    /// Every pair after this one (the last of the previous page).
    After(Recorded),
}

impl PageStart {
    /// The form of [`sql::Sql::recorded_page`] this start takes, with its `:key` and `:sequencer`.
    pub fn bound(&self) -> (sql::RecordedPage, &str, &str) {
        match self {
            PageStart::AtKey(key) => (sql::RecordedPage::AtKey, key, ""),
            PageStart::After(r) => (sql::RecordedPage::After, &r.key, &r.sequencer),
        }
    }
}

#[async_trait]
pub trait Warehouse: Send + Sync {
    /// Creates every table and the view if missing; refuses ([`ErrorClass::Fatal`]) when an
    /// existing table differs from what the contract and the product want: then the operator
    /// runs `wau-ingest migrate` ([`evolve::apply`]) first.
    async fn migrate(&self) -> Result<(), WarehouseError>;
    /// Runs one DDL statement on its own, outside any transaction block (`evolve::apply`'s
    /// `ALTER TABLE … ADD COLUMN`).
    async fn execute_ddl(&self, statement: &str) -> Result<(), WarehouseError>;
    /// A new writer with its own connection. Cheap: never waits (an engine that connects does so
    /// at the sink's first call).
    fn sink(&self) -> Result<Box<dyn BatchSink>, WarehouseError>;
    /// Read-only ledger lookup used to skip work before reading a file.
    async fn lookup(&self, bucket: &str, key: &str, version: &str) -> Result<Option<FileStatus>, WarehouseError>;
    /// A version recorded with exactly this key, sequencer and size. For stores whose version
    /// costs a full read (local files: the content hash), this stamp — modification time in
    /// nanoseconds plus size — stands in for the version before any read, as rsync does.
    async fn lookup_stamp(
        &self,
        bucket: &str,
        key: &str,
        sequencer: &str,
        size: u64,
    ) -> Result<Option<FileStatus>, WarehouseError>;
    /// One keyset page of the (key, sequencer) pairs recorded for `bucket` (a pair repeats once
    /// per version recorded with it), in the engine's order of (key, sequencer), starting at
    /// `start`, at most `limit` of them: the ledger side of reconcile's merge-join
    /// (`reconcile`), which asks for the next page after the last pair of this one until a page
    /// comes back short.
    async fn recorded_page(
        &self,
        bucket: &str,
        start: &PageStart,
        limit: usize,
    ) -> Result<Vec<Recorded>, WarehouseError>;
    /// Runs the merge as one transaction.
    async fn merge(&self) -> Result<MergeReport, WarehouseError>;
    /// Stops a running merge at once; its transaction rolls back and the next merge redoes it.
    async fn interrupt_merge(&self);
    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), WarehouseError>;
    async fn weekly_active_users(&self, since: &str, customer: Option<&str>) -> Result<Vec<WauRow>, WarehouseError>;
    async fn totals(&self) -> Result<LedgerTotals, WarehouseError>;
    /// Runs one read-only query (text from [`sql::Sql`]) and returns every row, each value as
    /// text and NULL as `None`: what `status` reads.
    async fn read_text(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WarehouseError>;
    /// Records one reconcile run ([`sql::Sql::insert_reconcile`]) where another process reads it.
    async fn record_reconcile(&self, run: &sql::ReconcileRecord) -> Result<(), WarehouseError>;
}
