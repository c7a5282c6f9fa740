//! The pipeline: one file from notification to the open micro-batch, and the batch from
//! open to committed and acknowledged.
//!
//! Per file: resolve the version → ledger check (duplicates stop here, before any read) →
//! admit into the batch (the authoritative check; late older versions are recorded
//! superseded) → stream, decode, validate → rows and rejects to the writer → ledger row.
//! Per batch: commit when rows, bytes or age say so ([`should_flush`]); only then are the
//! batch's deliveries acknowledged and its files counted. Any failure before commit gives
//! the deliveries back (`release`) for another try; nothing half-done is ever acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::BatchConfig;
use crate::contract::Contract;
use crate::metrics::Metrics;
use crate::object::{decoded, ObjectRef, ObjectStore, ReadLimits, StoreError};
use crate::source::{Ack, Delivery};
use crate::validate::{validate_stream, ChunkSink, Options, Reject, RowChunk, ValidateError};
use crate::warehouse::{Admission, BatchReport, FileMeta, FileStatus, FileSummary, Warehouse, WarehouseError};
use crate::writer::WriterHandle;

/// The flush decision, as a pure function of the open batch.
pub fn should_flush(policy: &BatchConfig, rows: u64, bytes: u64, age: Duration) -> bool {
    rows >= policy.max_rows || bytes >= policy.max_bytes || age >= Duration::from_secs(policy.max_age_secs)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Loaded { rows_loaded: u64, rows_rejected: u64, rules: Vec<(&'static str, u64)> },
    Rejected { rule: &'static str, rows: u64 },
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

/// A file done within the open batch, waiting for its commit.
#[derive(Debug, Clone)]
pub struct FileDone {
    pub key: String,
    pub version: String,
    pub event_time: Option<chrono::DateTime<chrono::Utc>>,
    pub outcome: Outcome,
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

pub struct Pipeline {
    store: Arc<dyn ObjectStore>,
    warehouse: Arc<dyn Warehouse>,
    writer: WriterHandle,
    contract: Arc<Contract>,
    limits: ReadLimits,
    policy: BatchConfig,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    from_s3: bool,
    open_files: Vec<FileDone>,
    open_acks: Vec<Box<dyn Ack>>,
    opened_at: Option<Instant>,
    pub tally: Tally,
}

/// Sends validated chunks to the writer, counting reject rules and honouring shutdown.
struct WriterSink<'a> {
    writer: &'a WriterHandle,
    cancel: &'a CancellationToken,
    rules: HashMap<&'static str, u64>,
}

impl ChunkSink for WriterSink<'_> {
    async fn rows(&mut self, chunk: RowChunk) -> Result<(), String> {
        if self.cancel.is_cancelled() {
            return Err("shutting down".into());
        }
        self.writer.rows(chunk).await.map_err(|e| e.to_string())
    }
    async fn rejects(&mut self, rejects: Vec<Reject>) -> Result<(), String> {
        for r in &rejects {
            *self.rules.entry(r.rule).or_default() += 1;
        }
        self.writer.rejects(rejects).await.map_err(|e| e.to_string())
    }
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
        let writer = WriterHandle::spawn(warehouse.sink()?);
        let from_s3 = !store.bucket().starts_with("file://");
        Ok(Pipeline {
            store,
            warehouse,
            writer,
            contract,
            limits,
            policy,
            metrics,
            cancel,
            from_s3,
            open_files: Vec::new(),
            open_acks: Vec::new(),
            opened_at: None,
            tally: Tally::default(),
        })
    }

    /// False when the writer thread died (a bug): the service must stop rather than retry.
    pub fn writer_alive(&self) -> bool {
        self.writer.is_alive()
    }

    /// Ingests every object of a delivery into the open batch, then flushes if the policy says so.
    /// On a warehouse failure the whole open batch is rolled back and its deliveries released.
    pub async fn handle(&mut self, delivery: Delivery, force: bool) -> Result<(), IngestError> {
        if self.opened_at.is_none() {
            self.opened_at = Some(Instant::now());
        }
        let mut retry = false;
        for obj in &delivery.objects {
            self.metrics.inflight(1);
            let res = self.ingest(obj, force).await;
            self.metrics.inflight(-1);
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
        self.maybe_flush().await
    }

    /// When the open batch must be committed at the latest.
    pub fn flush_deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + Duration::from_secs(self.policy.max_age_secs))
    }

    async fn maybe_flush(&mut self) -> Result<(), IngestError> {
        let (rows, bytes) = self.writer.pending().await?;
        let age = self.opened_at.map(|t| t.elapsed()).unwrap_or_default();
        // Deliveries that only produced duplicates need no commit; acknowledge them promptly.
        let nothing_to_commit = self.open_files.iter().all(|f| matches!(f.outcome, Outcome::Duplicate | Outcome::Skipped));
        if nothing_to_commit || should_flush(&self.policy, rows, bytes, age) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Commits the open batch, then counts, logs and acknowledges what it covered.
    pub async fn flush(&mut self) -> Result<Option<BatchReport>, IngestError> {
        let started = Instant::now();
        let report = match self.writer.commit().await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.error("warehouse_commit");
                self.abort().await;
                return Err(e.into());
            }
        };
        if let Some(r) = &report {
            self.metrics.batch_committed(started.elapsed().as_secs_f64());
            info!(batch_id = r.batch_id, files = r.files, rows_loaded = r.rows_loaded, rows_rejected = r.rows_rejected, "batch committed");
        }
        for f in self.open_files.drain(..) {
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
            let batch_id = report.as_ref().map_or(0, |r| r.batch_id);
            if matches!(f.outcome, Outcome::Duplicate | Outcome::Skipped) {
                tracing::debug!(key = %f.key, version = %f.version, outcome = f.outcome.label(), "file acknowledged");
            } else {
                info!(key = %f.key, version = %f.version, outcome = f.outcome.label(), batch_id, "file committed");
            }
        }
        for ack in self.open_acks.drain(..) {
            ack.ack().await;
        }
        self.opened_at = None;
        Ok(report)
    }

    /// Rolls back the open batch and gives its deliveries back.
    pub async fn abort(&mut self) {
        let _ = self.writer.rollback().await;
        self.open_files.clear();
        for ack in self.open_acks.drain(..) {
            ack.release().await;
        }
        self.opened_at = None;
    }

    /// One file into the open batch. The returned outcome counts only once the batch commits.
    pub async fn ingest(&self, obj: &ObjectRef, force: bool) -> Result<FileDone, IngestError> {
        let retry = |reason: String| IngestError::Retry { key: obj.key.clone(), reason };
        if let (false, true, Some(seq), Some(size)) = (force, self.store.version_costs_a_read(), &obj.sequencer, obj.size) {
            // A file already recorded with this exact stamp is not read again just to hash it.
            let (w, b, k, q) = (self.warehouse.clone(), self.store.bucket().to_string(), obj.key.clone(), seq.clone());
            let known = tokio::task::spawn_blocking(move || w.lookup_stamp(&b, &k, &q, size)).await.expect("lookup does not panic")?;
            if known.is_some() {
                return Ok(FileDone { key: obj.key.clone(), version: String::new(), event_time: obj.event_time, outcome: Outcome::Duplicate });
            }
        }
        let resolved = match self.store.resolve(obj).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => {
                info!(key = %obj.key, "object is gone; skipped");
                return Ok(FileDone { key: obj.key.clone(), version: String::new(), event_time: obj.event_time, outcome: Outcome::Skipped });
            }
            Err(e) => return Err(retry(e.to_string())),
        };
        let meta = FileMeta {
            bucket: self.store.bucket().to_string(),
            key: resolved.key.clone(),
            version: resolved.version.clone(),
            sequencer: resolved.sequencer.clone(),
            size: resolved.size,
            event_time: obj.event_time.unwrap_or(resolved.event_time),
            contract_version: self.contract.version,
        };
        let done = |outcome| FileDone { key: meta.key.clone(), version: meta.version.clone(), event_time: Some(meta.event_time), outcome };
        // Check before work: the sink's admission asks the ledger (one round trip on Redshift)
        // before a byte is read, so a known version is never read again.
        match self.writer.admit(meta.clone(), force).await? {
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
                self.writer.abandon().await?;
                return Ok(done(Outcome::Skipped));
            }
            Err(e) => {
                self.writer.abandon().await?;
                return Err(retry(e.to_string()));
            }
        };
        let read_version = stream.read_version.clone();
        let raw_bytes = Arc::new(AtomicU64::new(0));
        let reader = decoded(stream, &resolved, self.limits, raw_bytes.clone());
        let mut sink = WriterSink { writer: &self.writer, cancel: &self.cancel, rules: HashMap::new() };
        let res = validate_stream(reader, &Options { contract: &self.contract, key: &meta.key }, &mut sink).await;
        self.metrics.bytes_read(raw_bytes.load(Ordering::Relaxed), self.from_s3);
        let account = match res {
            Ok(a) => a,
            Err(ValidateError::Io(e)) => {
                self.writer.abandon().await?;
                return Err(retry(format!("reading failed: {e}")));
            }
            Err(ValidateError::Sink(reason)) => {
                self.writer.abandon().await?;
                if self.cancel.is_cancelled() {
                    return Err(IngestError::Shutdown);
                }
                return Err(WarehouseError::Other(reason).into());
            }
        };
        if let Some(read) = read_version.as_ref().and_then(|v| v.get()) {
            if *read != meta.version {
                self.writer.abandon().await?;
                return Err(retry("the file changed while it was read".into()));
            }
        }
        let (summary, outcome) = match &account.file_reject {
            Some(fr) => {
                warn!(key = %meta.key, version = %meta.version, rule = fr.rule, line = fr.line, reason = %fr.reason, "file rejected");
                self.writer.discard().await?;
                let reject = Reject { line: fr.line, column: None, rule: fr.rule, reason: fr.reason.clone(), value: None, raw: None };
                self.writer.rejects(vec![reject]).await?;
                (
                    FileSummary {
                        status: FileStatus::Rejected,
                        rows_read: account.rows_read,
                        rows_loaded: 0,
                        rows_rejected: account.rows_read,
                        reason: Some(format!("{}: {}", fr.rule, fr.reason)),
                    },
                    Outcome::Rejected { rule: fr.rule, rows: account.rows_read },
                )
            }
            None => {
                let mut rules: Vec<(&'static str, u64)> = sink.rules.into_iter().collect();
                rules.sort();
                (
                    FileSummary {
                        status: FileStatus::Loaded,
                        rows_read: account.rows_read,
                        rows_loaded: account.rows_loaded,
                        rows_rejected: account.rows_rejected,
                        reason: None,
                    },
                    Outcome::Loaded { rows_loaded: account.rows_loaded, rows_rejected: account.rows_rejected, rules },
                )
            }
        };
        if !self.writer.finish(summary).await? {
            return Ok(done(Outcome::Duplicate));
        }
        Ok(done(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::local::LocalStore;
    use crate::warehouse::sqlite::SqliteWarehouse;

    #[tokio::test]
    async fn a_file_recorded_with_the_same_stamp_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        let text = format!("{}\nacme,e1,2026-11-23T10:00:00Z,u1,,login,,\n", crate::demo::HEADER);
        crate::demo::write_atomically(&inbox.join("csv/acme/a.csv"), text.as_bytes()).unwrap();
        let contract = Arc::new(Contract::builtin());
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&inbox).unwrap());
        let warehouse: Arc<dyn Warehouse> = Arc::new(SqliteWarehouse::open(&dir.path().join("w.sqlite"), &contract).unwrap());
        warehouse.migrate().unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut p = Pipeline::new(store.clone(), warehouse, contract, ReadLimits::default(), BatchConfig::default(), metrics.clone(), Default::default())
            .unwrap();
        let bytes_read = || metrics.render().lines().find(|l| l.starts_with("wau_ingest_bytes_read_total ")).unwrap().to_string();
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

    #[test]
    fn flush_on_rows_bytes_or_age() {
        let p = BatchConfig { max_rows: 100, max_bytes: 1000, max_age_secs: 10 };
        assert!(!should_flush(&p, 99, 999, Duration::from_secs(9)));
        assert!(should_flush(&p, 100, 0, Duration::ZERO));
        assert!(should_flush(&p, 0, 1000, Duration::ZERO));
        assert!(should_flush(&p, 0, 0, Duration::from_secs(10)));
    }
}
