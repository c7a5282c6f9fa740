//! The pipeline: one file from notification to the open micro-batch, and the batch from
//! open to committed and acknowledged.
//!
//! Per file: resolve the version → ledger check (duplicates stop here, before any read) →
//! admit into the batch (the authoritative check; late older versions are recorded
//! superseded) → stream, decode, validate → rows and rejects to the writer → ledger row.
//! Per batch: commit when rows, bytes or age say so ([`should_flush`]); only then are the
//! batch's deliveries acknowledged and its files counted. Any failure before commit gives
//! the deliveries back (`release`) for another try; nothing half-done is ever acknowledged.
//!
//! A commit runs while the next batch fills ([`Pipeline::commit_open`]): at most one batch is
//! in flight, the next is never submitted before it ended, and it is settled (counted,
//! acknowledged) once it has. If it failed, the batch opened meanwhile — whose admissions
//! counted the files in flight as recorded — is rolled back too, and every delivery of both
//! is given back.
//!
//! While a file is read, the reader validates the next chunk while the sink writes the previous
//! one: chunks pass through a bounded channel ([`CHANNEL_CHUNKS`]) from the validation to a
//! drain that awaits the sink, both run together in the writer's task, so a slow warehouse
//! slows the reader instead of growing memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::BatchConfig;
use crate::contract::Contract;
use crate::metrics::Metrics;
use crate::object::{decoded, ObjectRef, ObjectStore, ReadLimits, ResolvedObject, StoreError};
use crate::source::{Ack, Delivery};
use crate::validate::{validate_stream, ChunkSink, Options, Reject, RowChunk, RowCustomers, ValidateError};
use crate::warehouse::ledger::file_customer;
use crate::warehouse::{
    Admission, BatchReport, BatchSink, FileMeta, FileStatus, FileSummary, Warehouse, WarehouseError,
};

/// Chunks in flight between the reader and the sink (each at most `CHUNK_ROWS` rows).
pub const CHANNEL_CHUNKS: usize = 4;

/// The flush decision, as a pure function of the open batch.
pub fn should_flush(policy: &BatchConfig, rows: u64, bytes: u64, age: Duration) -> bool {
    rows >= policy.max_rows || bytes >= policy.max_bytes || age >= Duration::from_secs(policy.max_age_secs)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Loaded {
        rows_loaded: u64,
        rows_rejected: u64,
        rules: Vec<(&'static str, u64)>,
    },
    Rejected {
        rule: &'static str,
        rows: u64,
    },
    Duplicate,
    Superseded,
    /// The object was gone when we came to read it.
    Skipped,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Loaded { .. } => "loaded",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Duplicate => "duplicate",
            Outcome::Superseded => "superseded",
            Outcome::Skipped => "skipped",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Transient: leave the delivery for another try.
    #[error("{key}: {reason}")]
    Retry { key: String, reason: String },
    /// Shutdown was asked for while the file was being read.
    #[error("shutting down")]
    Shutdown,
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
}

/// A key that ends with a blank: Redshift ignores trailing blanks when it compares VARCHARs, so
/// `a.csv ` and `a.csv` would be one key to the ledger and the merge. Such objects are refused.
pub fn key_is_ambiguous(key: &str) -> bool {
    key.ends_with(' ')
}

/// A file before the batch is asked about it.
enum Ready {
    /// Decided without the batch (refused, known by its stamp, gone).
    Done(FileDone),
    /// Its version is known: the batch decides.
    Resolved(ObjectRef, ResolvedObject),
}

/// A file done within the open batch, waiting for its commit.
#[derive(Debug, Clone)]
pub struct FileDone {
    pub key: String,
    pub version: String,
    pub event_time: Option<chrono::DateTime<chrono::Utc>>,
    pub outcome: Outcome,
    /// The customer recorded for it, when it was recorded with one.
    pub customer: Option<String>,
}

/// Totals of committed files, for summaries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub loaded: u64,
    pub rejected: u64,
    pub duplicate: u64,
    pub superseded: u64,
    pub skipped: u64,
    pub retried: u64,
    pub rows_loaded: u64,
    pub rows_rejected: u64,
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Loaded { rows_loaded, rows_rejected, .. } => {
                self.loaded += 1;
                self.rows_loaded += rows_loaded;
                self.rows_rejected += rows_rejected;
            }
            Outcome::Rejected { rows, .. } => {
                self.rejected += 1;
                self.rows_rejected += rows;
            }
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Superseded => self.superseded += 1,
            Outcome::Skipped => self.skipped += 1,
        }
    }
}

/// A batch whose commit began and is not settled yet.
struct InFlight {
    /// The commit's end, and how long it took from its beginning.
    commit: tokio::task::JoinHandle<(Result<Option<BatchReport>, WarehouseError>, Duration)>,
    /// Cancelled once the commit has ended (however it ended).
    ended: CancellationToken,
    files: Vec<FileDone>,
    acks: Vec<Box<dyn Ack>>,
}

pub struct Pipeline {
    store: Arc<dyn ObjectStore>,
    warehouse: Arc<dyn Warehouse>,
    sink: Box<dyn BatchSink>,
    contract: Arc<Contract>,
    limits: ReadLimits,
    policy: BatchConfig,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    from_s3: bool,
    open_files: Vec<FileDone>,
    open_acks: Vec<Box<dyn Ack>>,
    opened_at: Option<Instant>,
    in_flight: Option<InFlight>,
    pub tally: Tally,
}

/// What the validation hands the sink, in order.
enum Piece {
    Rows(RowChunk),
    Rejects(Vec<Reject>),
}

/// Sends validated chunks towards the sink, counting reject rules and honouring shutdown.
struct ChannelSink<'a> {
    tx: mpsc::Sender<Piece>,
    cancel: &'a CancellationToken,
    rules: HashMap<&'static str, u64>,
}

fn drain_stopped() -> String {
    "the sink stopped taking rows".into()
}

impl ChunkSink for ChannelSink<'_> {
    async fn rows(&mut self, chunk: RowChunk) -> Result<(), String> {
        if self.cancel.is_cancelled() {
            return Err("shutting down".into());
        }
        self.tx.send(Piece::Rows(chunk)).await.map_err(|_| drain_stopped())
    }
    async fn rejects(&mut self, rejects: Vec<Reject>) -> Result<(), String> {
        for r in &rejects {
            *self.rules.entry(r.rule).or_default() += 1;
        }
        self.tx.send(Piece::Rejects(rejects)).await.map_err(|_| drain_stopped())
    }
}

/// Writes what the validation sends into the open file until the channel closes. The first
/// failed write spoils the file: what follows is received and dropped (the reader is not held
/// up) and the failure is the answer.
async fn drain(sink: &mut dyn BatchSink, mut rx: mpsc::Receiver<Piece>) -> Result<(), WarehouseError> {
    let mut failed = None;
    while let Some(piece) = rx.recv().await {
        if failed.is_some() {
            continue;
        }
        failed = match piece {
            Piece::Rows(chunk) => sink.write_rows(chunk).await,
            Piece::Rejects(rejects) => sink.write_rejects(rejects).await,
        }
        .err();
    }
    failed.map_or(Ok(()), Err)
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn ObjectStore>,
        warehouse: Arc<dyn Warehouse>,
        contract: Arc<Contract>,
        limits: ReadLimits,
        policy: BatchConfig,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Result<Pipeline, WarehouseError> {
        let sink = warehouse.sink()?;
        let from_s3 = !store.bucket().starts_with("file://");
        Ok(Pipeline {
            store,
            warehouse,
            sink,
            contract,
            limits,
            policy,
            metrics,
            cancel,
            from_s3,
            open_files: Vec::new(),
            open_acks: Vec::new(),
            opened_at: None,
            in_flight: None,
            tally: Tally::default(),
        })
    }

    /// False when the sink can no longer work (its engine's thread died: a bug): the service
    /// must stop rather than retry.
    pub fn writer_alive(&self) -> bool {
        self.sink.alive()
    }

    /// Ingests every object of a delivery into the open batch, then flushes if the policy says so.
    /// On a warehouse failure the whole open batch is rolled back and its deliveries released.
    pub async fn handle(&mut self, delivery: Delivery, force: bool) -> Result<(), IngestError> {
        self.handle_all(vec![delivery], force).await
    }

    /// [`Pipeline::handle`] for the deliveries of one receive: their objects are resolved at once
    /// and the ledger is asked about all of them in one round trip before they are read one by
    /// one into the open batch.
    pub async fn handle_all(&mut self, deliveries: Vec<Delivery>, force: bool) -> Result<(), IngestError> {
        if self.opened_at.is_none() {
            self.opened_at = Some(Instant::now());
        }
        let resolving =
            deliveries.iter().map(|d| futures::future::join_all(d.objects.iter().map(|o| self.resolve(o, force))));
        let resolved: Vec<Vec<Result<Ready, IngestError>>> = futures::future::join_all(resolving).await;
        let asked: Vec<FileMeta> = resolved
            .iter()
            .flatten()
            .filter_map(|r| match r {
                Ok(Ready::Resolved(obj, r)) => Some(self.meta_of(obj, r)),
                _ => None,
            })
            .collect();
        if asked.len() > 1 {
            if let Err(e) = self.sink.prepare(&asked).await {
                for d in deliveries {
                    d.ack.release().await;
                }
                self.metrics.error("warehouse_commit");
                self.abort().await;
                return Err(e.into());
            }
        }
        let mut deliveries = deliveries.into_iter().zip(resolved);
        while let Some((delivery, ready)) = deliveries.next() {
            let mut retry = false;
            for r in ready {
                let res = match r {
                    Ok(Ready::Done(done)) => Ok(done),
                    Ok(Ready::Resolved(obj, resolved)) => {
                        self.metrics.inflight(1);
                        let res = self.load(&obj, resolved, force).await;
                        self.metrics.inflight(-1);
                        res
                    }
                    Err(e) => Err(e),
                };
                match res {
                    Ok(done) => self.open_files.push(done),
                    Err(IngestError::Retry { key, reason }) => {
                        warn!(key = %key, reason = %reason, "file will be tried again");
                        self.metrics.retry("object_get");
                        self.tally.retried += 1;
                        retry = true;
                    }
                    Err(e) => {
                        delivery.ack.release().await;
                        for (d, _) in deliveries {
                            d.ack.release().await;
                        }
                        if matches!(e, IngestError::Warehouse(_)) {
                            self.metrics.error("warehouse_commit");
                            self.abort().await;
                        }
                        return Err(e);
                    }
                }
            }
            if retry {
                delivery.ack.release().await;
            } else {
                self.open_acks.push(delivery.ack);
            }
        }
        self.maybe_flush().await
    }

    /// When the open batch must be committed at the latest.
    pub fn flush_deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + Duration::from_secs(self.policy.max_age_secs))
    }

    async fn maybe_flush(&mut self) -> Result<(), IngestError> {
        let (rows, bytes) = self.sink.pending();
        let age = self.opened_at.map(|t| t.elapsed()).unwrap_or_default();
        // Deliveries that only produced duplicates need no commit; acknowledge them promptly.
        let nothing_to_commit =
            self.open_files.iter().all(|f| matches!(f.outcome, Outcome::Duplicate | Outcome::Skipped));
        if nothing_to_commit || should_flush(&self.policy, rows, bytes, age) {
            self.commit_open().await?;
        }
        Ok(())
    }

    /// Fires once the commit in flight has ended, to be [`settle`](Pipeline::settle)d; `None`
    /// when no commit is in flight.
    pub fn commit_ended(&self) -> Option<CancellationToken> {
        self.in_flight.as_ref().map(|f| f.ended.clone())
    }

    /// Commits the open batch and settles every commit: when it returns `Ok`, everything
    /// handled so far is committed and acknowledged.
    pub async fn flush(&mut self) -> Result<Option<BatchReport>, IngestError> {
        let report = self.commit_open().await?;
        match self.in_flight {
            Some(_) => self.settle().await,
            None => Ok(report),
        }
    }

    /// Settles the commit in flight (waiting for it), then begins the open batch's commit and
    /// opens the next batch; the new commit is settled later (`settle`, `flush`, or the next
    /// `commit_open`). Returns the open batch's report when its commit ended at once (SQLite).
    pub async fn commit_open(&mut self) -> Result<Option<BatchReport>, IngestError> {
        self.settle().await?;
        let started = Instant::now();
        let pending = match self.sink.commit_begin().await {
            Ok(p) => p,
            Err(e) => {
                self.metrics.error("warehouse_commit");
                self.abort().await;
                return Err(e.into());
            }
        };
        let files = std::mem::take(&mut self.open_files);
        let acks = std::mem::take(&mut self.open_acks);
        self.opened_at = None;
        match pending {
            None => self.conclude(Ok(None), started.elapsed(), files, acks).await,
            Some(p) if p.is_done() => self.conclude(p.wait().await, started.elapsed(), files, acks).await,
            Some(p) => {
                let ended = CancellationToken::new();
                let signal = ended.clone().drop_guard();
                let commit = tokio::spawn(async move {
                    let _signal = signal;
                    let result = p.wait().await;
                    (result, started.elapsed())
                });
                self.in_flight = Some(InFlight { commit, ended, files, acks });
                Ok(None)
            }
        }
    }

    /// Waits for the commit in flight, if any, then counts, logs and acknowledges what it
    /// covered. If it failed, its deliveries and the open batch's are given back and the open
    /// batch is rolled back.
    pub async fn settle(&mut self) -> Result<Option<BatchReport>, IngestError> {
        let Some(f) = self.in_flight.take() else { return Ok(None) };
        let (result, took) = f
            .commit
            .await
            .unwrap_or_else(|e| (Err(WarehouseError::Other(format!("the commit did not end: {e}"))), Duration::ZERO));
        self.conclude(result, took, f.files, f.acks).await
    }

    /// The end of a batch's commit: on success counts, logs and acknowledges its files; on
    /// failure gives its deliveries back and aborts the open batch (which may have counted the
    /// failed batch's files as recorded).
    async fn conclude(
        &mut self,
        result: Result<Option<BatchReport>, WarehouseError>,
        took: Duration,
        files: Vec<FileDone>,
        acks: Vec<Box<dyn Ack>>,
    ) -> Result<Option<BatchReport>, IngestError> {
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                self.metrics.error("warehouse_commit");
                for ack in acks {
                    ack.release().await;
                }
                self.abort().await;
                return Err(e.into());
            }
        };
        if let Some(r) = &report {
            self.metrics.batch_committed(took.as_secs_f64());
            info!(
                batch_id = r.batch_id,
                files = r.files,
                rows_loaded = r.rows_loaded,
                rows_rejected = r.rows_rejected,
                "batch committed"
            );
        }
        for f in files {
            self.metrics.file(f.outcome.label());
            self.tally.add(&f.outcome);
            match &f.outcome {
                Outcome::Loaded { rows_loaded, rows_rejected, rules } => {
                    self.metrics.rows(*rows_loaded, *rows_rejected);
                    for (rule, n) in rules {
                        self.metrics.reject(rule, *n);
                    }
                }
                Outcome::Rejected { rule, rows } => {
                    self.metrics.rows(0, *rows);
                    self.metrics.reject(rule, 1);
                }
                _ => {}
            }
            if let (Some(t), Outcome::Loaded { .. } | Outcome::Rejected { .. }) = (f.event_time, &f.outcome) {
                self.metrics.committed_event(t);
            }
            // What the freshness view counts: loaded files of a known customer.
            if let (Some(t), Some(customer), Outcome::Loaded { .. }) = (f.event_time, &f.customer, &f.outcome) {
                self.metrics.customer_file(customer, t);
            }
            let batch_id = report.as_ref().map_or(0, |r| r.batch_id);
            if matches!(f.outcome, Outcome::Duplicate | Outcome::Skipped) {
                tracing::debug!(key = %f.key, version = %f.version, outcome = f.outcome.label(), "file acknowledged");
            } else {
                info!(key = %f.key, version = %f.version, outcome = f.outcome.label(), batch_id, "file committed");
            }
        }
        for ack in acks {
            ack.ack().await;
        }
        Ok(report)
    }

    /// Rolls back the open batch and gives its deliveries back.
    pub async fn abort(&mut self) {
        self.sink.rollback().await;
        self.open_files.clear();
        for ack in self.open_acks.drain(..) {
            ack.release().await;
        }
        self.opened_at = None;
    }

    /// One file into the open batch. The returned outcome counts only once the batch commits.
    pub async fn ingest(&mut self, obj: &ObjectRef, force: bool) -> Result<FileDone, IngestError> {
        match self.resolve(obj, force).await? {
            Ready::Done(done) => Ok(done),
            Ready::Resolved(obj, resolved) => self.load(&obj, resolved, force).await,
        }
    }

    /// What can be known of a file before the batch is asked: refused keys, versions the ledger
    /// holds by their stamp, objects gone; otherwise its resolved version.
    async fn resolve(&self, obj: &ObjectRef, force: bool) -> Result<Ready, IngestError> {
        let retry = |reason: String| IngestError::Retry { key: obj.key.clone(), reason };
        if key_is_ambiguous(&obj.key) {
            // Redshift compares VARCHARs ignoring trailing blanks: this key would be taken for the
            // key without them (one version superseding the other's rows). Refused, not guessed.
            error!(
                key = %obj.key,
                "object refused: its key ends with a blank, which Redshift ignores when it compares keys; rename it"
            );
            return Ok(Ready::Done(FileDone {
                key: obj.key.clone(),
                version: String::new(),
                event_time: obj.event_time,
                outcome: Outcome::Skipped,
                customer: None,
            }));
        }
        if let (false, true, Some(seq), Some(size)) =
            (force, self.store.version_costs_a_read(), &obj.sequencer, obj.size)
        {
            // A file already recorded with this exact stamp is not read again just to hash it.
            let known = self.warehouse.lookup_stamp(self.store.bucket(), &obj.key, seq, size).await?;
            if known.is_some() {
                return Ok(Ready::Done(FileDone {
                    key: obj.key.clone(),
                    version: String::new(),
                    event_time: obj.event_time,
                    outcome: Outcome::Duplicate,
                    customer: None,
                }));
            }
        }
        match self.store.resolve(obj).await {
            Ok(r) => Ok(Ready::Resolved(obj.clone(), r)),
            Err(StoreError::NotFound { .. }) => {
                info!(key = %obj.key, "object is gone; skipped");
                Ok(Ready::Done(FileDone {
                    key: obj.key.clone(),
                    version: String::new(),
                    event_time: obj.event_time,
                    outcome: Outcome::Skipped,
                    customer: None,
                }))
            }
            Err(e) => Err(retry(e.to_string())),
        }
    }

    /// The ledger's view of a resolved file.
    fn meta_of(&self, obj: &ObjectRef, resolved: &ResolvedObject) -> FileMeta {
        FileMeta {
            bucket: self.store.bucket().to_string(),
            key: resolved.key.clone(),
            version: resolved.version.clone(),
            sequencer: resolved.sequencer.clone(),
            size: resolved.size,
            event_time: obj.event_time.unwrap_or(resolved.event_time),
            contract_version: self.contract.version,
            customer: self.contract.customer_from_key(&resolved.key),
        }
    }

    /// A resolved file: admitted, read, validated and written into the open batch.
    async fn load(&mut self, obj: &ObjectRef, resolved: ResolvedObject, force: bool) -> Result<FileDone, IngestError> {
        let retry = |reason: String| IngestError::Retry { key: obj.key.clone(), reason };
        let meta = self.meta_of(obj, &resolved);
        let done = |outcome| FileDone {
            key: meta.key.clone(),
            version: meta.version.clone(),
            event_time: Some(meta.event_time),
            outcome,
            customer: None,
        };
        // Check before work: the sink's admission asks the ledger (one round trip on Redshift)
        // before a byte is read, so a known version is never read again.
        match self.sink.admit(&meta, force).await? {
            Admission::Load => {}
            Admission::Duplicate(_) => return Ok(done(Outcome::Duplicate)),
            Admission::Superseded => {
                info!(key = %meta.key, version = %meta.version, "older version arrived late; recorded as superseded");
                return Ok(done(Outcome::Superseded));
            }
        }
        let stream = match self.store.open(&resolved).await {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => {
                self.sink.abandon_file().await?;
                return Ok(done(Outcome::Skipped));
            }
            Err(e) => {
                self.sink.abandon_file().await?;
                return Err(retry(e.to_string()));
            }
        };
        let read_version = stream.read_version.clone();
        let raw_bytes = Arc::new(AtomicU64::new(0));
        let reader = decoded(stream, &resolved, self.limits, raw_bytes.clone());
        // The reader validates ahead while the sink writes (see the module docs).
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let mut chunks = ChannelSink { tx, cancel: &self.cancel, rules: HashMap::new() };
        let options = Options { contract: &self.contract, key: &meta.key, limits: self.limits.record };
        let validating = async move {
            let res = validate_stream(reader, &options, &mut chunks).await;
            (res, chunks.rules)
        };
        let ((res, rules), written) = tokio::join!(validating, drain(self.sink.as_mut(), rx));
        self.metrics.bytes_read(raw_bytes.load(Ordering::Relaxed), self.from_s3);
        let account = match res {
            Ok(a) => a,
            Err(ValidateError::Io(e)) => {
                self.sink.abandon_file().await?;
                return Err(retry(format!("reading failed: {e}")));
            }
            Err(ValidateError::Sink(reason)) => {
                self.sink.abandon_file().await?;
                if self.cancel.is_cancelled() {
                    return Err(IngestError::Shutdown);
                }
                return Err(WarehouseError::Other(reason).into());
            }
        };
        if let Some(read) = read_version.as_ref().and_then(|v| v.get()) {
            if *read != meta.version {
                self.sink.abandon_file().await?;
                return Err(retry("the file changed while it was read".into()));
            }
        }
        // A failed write is the warehouse's failure (the caller rolls the batch back).
        written?;
        let (summary, outcome) = match &account.file_reject {
            Some(fr) => {
                warn!(key = %meta.key, version = %meta.version, rule = fr.rule, line = fr.line, reason = %fr.reason, "file rejected");
                self.sink.discard_file_rows().await?;
                let reject = Reject {
                    line: fr.line,
                    column: None,
                    rule: fr.rule,
                    reason: fr.reason.clone(),
                    value: None,
                    raw: None,
                };
                self.sink.write_rejects(vec![reject]).await?;
                (
                    FileSummary {
                        status: FileStatus::Rejected,
                        rows_read: account.rows_read,
                        rows_loaded: 0,
                        rows_rejected: account.rows_read,
                        reason: Some(format!("{}: {}", fr.rule, fr.reason)),
                        // No row loads: the key's customer, if it names one.
                        customer: file_customer(meta.customer.as_deref(), &RowCustomers::None),
                    },
                    Outcome::Rejected { rule: fr.rule, rows: account.rows_read },
                )
            }
            None => {
                let mut rules: Vec<(&'static str, u64)> = rules.into_iter().collect();
                rules.sort();
                (
                    FileSummary {
                        status: FileStatus::Loaded,
                        rows_read: account.rows_read,
                        rows_loaded: account.rows_loaded,
                        rows_rejected: account.rows_rejected,
                        reason: None,
                        customer: file_customer(meta.customer.as_deref(), &account.customers),
                    },
                    Outcome::Loaded { rows_loaded: account.rows_loaded, rows_rejected: account.rows_rejected, rules },
                )
            }
        };
        let customer = summary.customer.clone();
        if !self.sink.finish_file(&summary).await? {
            return Ok(done(Outcome::Duplicate));
        }
        Ok(FileDone { customer, ..done(outcome) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::local::LocalStore;
    use crate::warehouse::sqlite::SqliteWarehouse;
    use crate::warehouse::PendingCommit;

    #[tokio::test]
    async fn a_file_recorded_with_the_same_stamp_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        let text = format!("{}\nacme,e1,2026-11-23T10:00:00Z,u1,,login,,\n", crate::demo::HEADER);
        crate::demo::write_atomically(&inbox.join("csv/acme/a.csv"), text.as_bytes()).unwrap();
        let contract = Arc::new(Contract::builtin());
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&inbox).unwrap());
        let warehouse: Arc<dyn Warehouse> =
            Arc::new(SqliteWarehouse::open(&dir.path().join("w.sqlite"), &contract).unwrap());
        warehouse.migrate().await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut p = Pipeline::new(
            store.clone(),
            warehouse,
            contract,
            ReadLimits::default(),
            BatchConfig::default(),
            metrics.clone(),
            Default::default(),
        )
        .unwrap();
        let bytes_read =
            || metrics.render().lines().find(|l| l.starts_with("wau_ingest_bytes_read_total ")).unwrap().to_string();
        let listed = store.list("").await.unwrap();
        crate::replay::ingest_all(&mut p, listed.clone(), false).await.unwrap();
        assert_eq!(p.tally.loaded, 1);
        let after_load = bytes_read();
        assert_ne!(after_load, "wau_ingest_bytes_read_total 0");
        crate::replay::ingest_all(&mut p, listed.clone(), false).await.unwrap();
        assert_eq!(p.tally.duplicate, 1);
        assert_eq!(bytes_read(), after_load, "the duplicate was decided without reading");
        // With --force the stamp is not trusted: the file is read and loaded again.
        crate::replay::ingest_all(&mut p, listed, true).await.unwrap();
        assert_eq!(p.tally.loaded, 2);
        assert_ne!(bytes_read(), after_load);
    }

    /// Records what happened to each delivery.
    struct Recorded {
        name: &'static str,
        log: Arc<std::sync::Mutex<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl Ack for Recorded {
        async fn ack(self: Box<Self>) {
            self.log.lock().unwrap().push(format!("ack {}", self.name));
        }
        async fn release(self: Box<Self>) {
            self.log.lock().unwrap().push(format!("release {}", self.name));
        }
    }

    /// A real SQLite sink whose first begun commit stays in flight until `fail` is sent, then
    /// fails (nothing of it reaches the warehouse).
    struct FirstCommitFails {
        sink: Box<dyn crate::warehouse::BatchSink>,
        fail: Option<tokio::sync::oneshot::Receiver<()>>,
    }

    struct FailsWhenTold(tokio::sync::oneshot::Receiver<()>);

    #[async_trait::async_trait]
    impl PendingCommit for FailsWhenTold {
        async fn wait(self: Box<Self>) -> Result<Option<BatchReport>, WarehouseError> {
            let _ = self.0.await;
            Err(WarehouseError::Other("the commit failed".into()))
        }
    }

    #[async_trait::async_trait]
    impl crate::warehouse::BatchSink for FirstCommitFails {
        async fn admit(&mut self, file: &FileMeta, force: bool) -> Result<Admission, WarehouseError> {
            self.sink.admit(file, force).await
        }
        async fn write_rows(&mut self, chunk: RowChunk) -> Result<(), WarehouseError> {
            self.sink.write_rows(chunk).await
        }
        async fn write_rejects(&mut self, rejects: Vec<Reject>) -> Result<(), WarehouseError> {
            self.sink.write_rejects(rejects).await
        }
        async fn discard_file_rows(&mut self) -> Result<(), WarehouseError> {
            self.sink.discard_file_rows().await
        }
        async fn finish_file(&mut self, summary: &FileSummary) -> Result<bool, WarehouseError> {
            self.sink.finish_file(summary).await
        }
        async fn abandon_file(&mut self) -> Result<(), WarehouseError> {
            self.sink.abandon_file().await
        }
        fn pending(&self) -> (u64, u64) {
            self.sink.pending()
        }
        async fn commit(&mut self) -> Result<Option<BatchReport>, WarehouseError> {
            self.sink.commit().await
        }
        async fn commit_begin(&mut self) -> Result<Option<Box<dyn PendingCommit>>, WarehouseError> {
            match self.fail.take() {
                Some(fail) => {
                    self.sink.rollback().await;
                    Ok(Some(Box::new(FailsWhenTold(fail))))
                }
                None => self.sink.commit_begin().await,
            }
        }
        async fn rollback(&mut self) {
            self.sink.rollback().await
        }
    }

    struct Wrapped {
        w: SqliteWarehouse,
        fail: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    }

    #[async_trait::async_trait]
    impl Warehouse for Wrapped {
        async fn migrate(&self) -> Result<(), WarehouseError> {
            self.w.migrate().await
        }
        async fn execute_ddl(&self, statement: &str) -> Result<(), WarehouseError> {
            self.w.execute_ddl(statement).await
        }
        fn sink(&self) -> Result<Box<dyn crate::warehouse::BatchSink>, WarehouseError> {
            Ok(Box::new(FirstCommitFails { sink: self.w.sink()?, fail: self.fail.lock().unwrap().take() }))
        }
        async fn lookup(&self, bucket: &str, key: &str, version: &str) -> Result<Option<FileStatus>, WarehouseError> {
            self.w.lookup(bucket, key, version).await
        }
        async fn lookup_stamp(
            &self,
            bucket: &str,
            key: &str,
            sequencer: &str,
            size: u64,
        ) -> Result<Option<FileStatus>, WarehouseError> {
            self.w.lookup_stamp(bucket, key, sequencer, size).await
        }
        async fn recorded_page(
            &self,
            bucket: &str,
            start: &crate::warehouse::PageStart,
            limit: usize,
        ) -> Result<Vec<crate::warehouse::Recorded>, WarehouseError> {
            self.w.recorded_page(bucket, start, limit).await
        }
        async fn merge(&self) -> Result<crate::warehouse::MergeReport, WarehouseError> {
            self.w.merge().await
        }
        async fn interrupt_merge(&self) {
            self.w.interrupt_merge().await
        }
        async fn ping(&self) -> Result<(), WarehouseError> {
            self.w.ping().await
        }
        async fn weekly_active_users(
            &self,
            since: &str,
            customer: Option<&str>,
        ) -> Result<Vec<crate::warehouse::WauRow>, WarehouseError> {
            self.w.weekly_active_users(since, customer).await
        }
        async fn totals(&self) -> Result<crate::warehouse::LedgerTotals, WarehouseError> {
            self.w.totals().await
        }
        async fn read_text(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WarehouseError> {
            self.w.read_text(sql).await
        }
        async fn record_reconcile(&self, run: &crate::warehouse::sql::ReconcileRecord) -> Result<(), WarehouseError> {
            self.w.record_reconcile(run).await
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_commit_in_flight_gives_back_its_deliveries_and_those_of_the_batch_opened_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        for (name, event) in [("a", "e1"), ("b", "e2")] {
            let text = format!("{}\nacme,{event},2026-11-23T10:00:00Z,u1,,login,,\n", crate::demo::HEADER);
            crate::demo::write_atomically(&inbox.join(format!("csv/acme/{name}.csv")), text.as_bytes()).unwrap();
        }
        let contract = Arc::new(Contract::builtin());
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&inbox).unwrap());
        let (fail, told) = tokio::sync::oneshot::channel();
        let wrapped = Wrapped {
            w: SqliteWarehouse::open(&dir.path().join("w.sqlite"), &contract).unwrap(),
            fail: Some(told).into(),
        };
        let warehouse: Arc<dyn Warehouse> = Arc::new(wrapped);
        warehouse.migrate().await.unwrap();
        let mut p = Pipeline::new(
            store.clone(),
            warehouse.clone(),
            contract,
            ReadLimits::default(),
            BatchConfig::default(),
            Arc::new(Metrics::new()),
            Default::default(),
        )
        .unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let listed = store.list("").await.unwrap();
        let (a, b) = (
            listed.iter().find(|o| o.key.ends_with("a.csv")).unwrap(),
            listed.iter().find(|o| o.key.ends_with("b.csv")).unwrap(),
        );
        let delivery = |name: &'static str, obj: &ObjectRef| Delivery {
            objects: vec![obj.clone()],
            ack: Box::new(Recorded { name, log: log.clone() }),
        };
        let loaded = || async { warehouse.totals().await.unwrap().files_loaded };

        p.handle(delivery("a", a), false).await.unwrap();
        assert_eq!(p.commit_open().await.unwrap(), None, "batch 1 is in flight");
        assert!(p.commit_ended().is_some());
        // Batch 2 fills while batch 1 commits.
        p.handle(delivery("b", b), false).await.unwrap();
        assert!(log.lock().unwrap().is_empty(), "nothing is acknowledged or given back while batch 1 is in flight");

        fail.send(()).unwrap();
        let err = p.flush().await.unwrap_err();
        assert!(err.to_string().contains("the commit failed"), "{err}");
        assert_eq!(*log.lock().unwrap(), ["release a", "release b"], "both batches' deliveries are given back");
        assert_eq!(p.tally, Tally::default(), "nothing counts");
        assert_eq!(loaded().await, 0, "batch 2 was rolled back, not committed");
        assert!(p.commit_ended().is_none());

        // Delivered again, both load, once.
        log.lock().unwrap().clear();
        p.handle(delivery("a", a), false).await.unwrap();
        p.handle(delivery("b", b), false).await.unwrap();
        p.flush().await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["ack a", "ack b"]);
        assert_eq!(p.tally.loaded, 2);
        assert_eq!(loaded().await, 2);
    }

    /// A real SQLite sink whose row writes each wait for a permit: a slow warehouse.
    struct Gated {
        sink: Box<dyn crate::warehouse::BatchSink>,
        permits: Arc<tokio::sync::Semaphore>,
    }

    #[async_trait::async_trait]
    impl crate::warehouse::BatchSink for Gated {
        async fn admit(&mut self, file: &FileMeta, force: bool) -> Result<Admission, WarehouseError> {
            self.sink.admit(file, force).await
        }
        async fn write_rows(&mut self, chunk: RowChunk) -> Result<(), WarehouseError> {
            self.permits.acquire().await.expect("the gate stays open").forget();
            self.sink.write_rows(chunk).await
        }
        async fn write_rejects(&mut self, rejects: Vec<Reject>) -> Result<(), WarehouseError> {
            self.sink.write_rejects(rejects).await
        }
        async fn discard_file_rows(&mut self) -> Result<(), WarehouseError> {
            self.sink.discard_file_rows().await
        }
        async fn finish_file(&mut self, summary: &FileSummary) -> Result<bool, WarehouseError> {
            self.sink.finish_file(summary).await
        }
        async fn abandon_file(&mut self) -> Result<(), WarehouseError> {
            self.sink.abandon_file().await
        }
        fn pending(&self) -> (u64, u64) {
            self.sink.pending()
        }
        async fn commit(&mut self) -> Result<Option<BatchReport>, WarehouseError> {
            self.sink.commit().await
        }
        async fn rollback(&mut self) {
            self.sink.rollback().await
        }
    }

    fn one_row(i: usize) -> RowChunk {
        let mut c = RowChunk::new(8);
        let id = format!("e{i}");
        c.push_row(
            &[Some("acme"), Some(&id), Some("2026-11-23 10:00:00"), Some("u1"), None, Some("login"), None, None],
            i as u64 + 2,
        );
        c
    }

    /// The reader runs ahead of a slow sink by the channel's chunks and one being written, and no
    /// further (the memory bound and the backpressure); every chunk is written, in order.
    #[tokio::test]
    async fn validation_runs_ahead_of_a_slow_sink_by_the_channel_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let contract = Contract::builtin();
        let w = SqliteWarehouse::open(&dir.path().join("w.sqlite"), &contract).unwrap();
        w.migrate().await.unwrap();
        let permits = Arc::new(tokio::sync::Semaphore::new(0));
        let mut sink = Gated { sink: w.sink().unwrap(), permits: permits.clone() };
        let meta = FileMeta {
            bucket: "b".into(),
            key: "csv/acme/a.csv".into(),
            version: "v1".into(),
            sequencer: "1".into(),
            size: 1,
            event_time: chrono::Utc::now(),
            contract_version: contract.version,
            customer: None,
        };
        assert_eq!(sink.admit(&meta, false).await.unwrap(), Admission::Load);
        let chunks = CHANNEL_CHUNKS + 3;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let cancel = CancellationToken::new();
        let sent = AtomicU64::new(0);
        let feeding = async {
            let mut validated = ChannelSink { tx, cancel: &cancel, rules: HashMap::new() };
            for i in 0..chunks {
                validated.rows(one_row(i)).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        };
        let slow_warehouse = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let ahead = sent.load(Ordering::SeqCst);
            permits.add_permits(chunks);
            ahead
        };
        let (_, ahead, written) = tokio::join!(feeding, slow_warehouse, drain(&mut sink, rx));
        written.unwrap();
        assert_eq!(ahead, CHANNEL_CHUNKS as u64 + 1, "the channel's chunks and the one being written");
        let summary = FileSummary {
            status: FileStatus::Loaded,
            rows_read: chunks as u64,
            rows_loaded: chunks as u64,
            rows_rejected: 0,
            reason: None,
            customer: None,
        };
        assert!(sink.finish_file(&summary).await.unwrap());
        assert_eq!(sink.commit().await.unwrap().map(|r| r.rows_loaded), Some(chunks as u64));
        let lines = w.read_text("SELECT _line FROM wau_audit_logs_staging ORDER BY rowid").await.unwrap();
        let expected: Vec<Vec<Option<String>>> = (0..chunks).map(|i| vec![Some((i + 2).to_string())]).collect();
        assert_eq!(lines, expected, "written in order");
    }

    /// The first failed write is the file's answer; what follows is taken and dropped, so the
    /// reader is not held up by a sink that will never write again.
    #[tokio::test]
    async fn the_first_failed_write_is_the_answer_and_the_reader_is_not_held_up() {
        let dir = tempfile::tempdir().unwrap();
        let w = SqliteWarehouse::open(&dir.path().join("w.sqlite"), &Contract::builtin()).unwrap();
        w.migrate().await.unwrap();
        // No file admitted: every write fails (the real sink's own refusal).
        let mut sink = w.sink().unwrap();
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let cancel = CancellationToken::new();
        let feeding = async {
            let mut validated = ChannelSink { tx, cancel: &cancel, rules: HashMap::new() };
            for i in 0..CHANNEL_CHUNKS * 3 {
                validated.rows(one_row(i)).await.unwrap();
            }
        };
        let (_, written) = tokio::join!(feeding, drain(sink.as_mut(), rx));
        let err = written.unwrap_err();
        assert!(err.to_string().contains("no file is open"), "{err}");
        assert_eq!(w.totals().await.unwrap().staging_rows, 0);
    }

    #[test]
    fn flush_on_rows_bytes_or_age() {
        let p = BatchConfig { max_rows: 100, max_bytes: 1000, max_age_secs: 10, writers: 1 };
        assert!(!should_flush(&p, 99, 999, Duration::from_secs(9)));
        assert!(should_flush(&p, 100, 0, Duration::ZERO));
        assert!(should_flush(&p, 0, 1000, Duration::ZERO));
        assert!(should_flush(&p, 0, 0, Duration::from_secs(10)));
    }
}
