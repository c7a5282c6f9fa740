//! The open batch and the sink: admission against the ledger, the open batch's files and their
//! staging parts, the commit begun and in flight ([`InFlight`]) until it is known ended, and
//! the report of what the ledger holds afterwards (see "A micro-batch" in the `redshift`
//! module docs).
//!
//! It owns the in-memory state of a batch; the statements of its commit come from
//! [`super::plan`], the SQL text from the shared `sql`, and it runs them only through
//! [`super::data_api`]. It must not render SQL or CSV itself.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use tracing::{debug, warn};

use super::data_api::{int_at, Cell, Done};
use super::literal::{render, timestamp_text, Lit};
use super::plan::{plan_commit, reject_values, Plan};
use super::spill::{upload_reject_part, CsvParts, Held};
use super::Inner;
use crate::validate::{Reject, RowChunk};
use crate::warehouse::ledger::{self, is_newer, same_version, Verdict};
use crate::warehouse::sql::Sql;
use crate::warehouse::stage::{self, Buffered, FileRows, GzParts, PartWriter, SMALL_FILE_BYTES};
use crate::warehouse::{
    Admission, BatchReport, BatchSink, FileMeta, FileStatus, FileSummary, PendingCommit, WarehouseError,
};

/// A file of the open batch whose ledger row will be written at commit.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) meta: FileMeta,
    pub(super) status: FileStatus,
    pub(super) rows_read: u64,
    pub(super) rows_loaded: u64,
    pub(super) rows_rejected: u64,
    pub(super) reason: Option<String>,
    /// The ledger's `customer` of the file (`FileSummary::customer`).
    pub(super) customer: Option<String>,
    /// `Some(now)` for files the merge has nothing to do for (rejected, superseded on arrival).
    pub(super) merged_at: Option<String>,
    /// `force`: earlier loads of this version are marked replaced first.
    pub(super) replaces: bool,
    /// Staging objects holding this file's rows alone (none for a small file: its rows are in
    /// the batch's shared parts, [`OpenBatch::shared_parts`]).
    pub(super) parts: Vec<String>,
    pub(super) staged_rows: u64,
    pub(super) staged_bytes: u64,
    /// Rejects held in memory (empty when the file spilled).
    pub(super) rejects: Vec<Reject>,
    /// Staging objects holding this file's spilled rejects.
    pub(super) reject_parts: Vec<String>,
}

pub(super) struct OpenFile {
    meta: FileMeta,
    replaces: bool,
    /// `None` only while a chunk is being encoded (on the blocking pool), or after such a write
    /// was interrupted: then the file cannot go on. Holds the rows raw while the file is small.
    writer: Option<PartWriter>,
    parts: Vec<String>,
    rows: u64,
    bytes: u64,
    /// Rejects held in memory until the file spills, and what they take.
    rejects: Vec<Reject>,
    held: Held,
    /// Once set, every reject of the file goes to `reject_writer` (and its parts to `reject_parts`).
    spilling: bool,
    /// `None` only while rejects are being encoded (on the blocking pool), or after such a write
    /// was interrupted.
    reject_writer: Option<CsvParts>,
    pub(super) reject_parts: Vec<String>,
}

impl OpenFile {
    fn new(meta: FileMeta, replaces: bool, part_bytes: usize) -> OpenFile {
        OpenFile {
            meta,
            replaces,
            writer: Some(file_writer(part_bytes)),
            parts: Vec::new(),
            rows: 0,
            bytes: 0,
            rejects: Vec::new(),
            held: Held::default(),
            spilling: false,
            reject_writer: Some(CsvParts::new(part_bytes)),
            reject_parts: Vec::new(),
        }
    }
}

/// The writer of a file's staging rows: held raw while the file stays below
/// `part_bytes.min(SMALL_FILE_BYTES)`, then in parts of its own.
fn file_writer(part_bytes: usize) -> PartWriter {
    PartWriter::coalescing(part_bytes, SMALL_FILE_BYTES)
}

pub(super) struct OpenBatch {
    pub(super) id: i64,
    pub(super) now: String,
    pub(super) entries: Vec<Entry>,
    pub(super) next_part: usize,
    /// What the entries' in-memory rejects take (the open file's are counted apart).
    pub(super) held: Held,
    /// The one gzip stream the rows of the batch's small files are appended to when each
    /// ends, cut into a part at `part_bytes` and finished at commit. `None` while a file's rows
    /// are being appended (on the blocking pool), or once an append or the upload of a part cut
    /// from it failed: then rows of finished files may be missing and the batch cannot commit.
    pub(super) shared: Option<GzParts>,
    /// Parts cut from `shared` and uploaded: the batch's, not any one file's.
    pub(super) shared_parts: Vec<String>,
}

impl OpenBatch {
    pub(super) fn new(id: i64, now: String, part_bytes: usize) -> OpenBatch {
        OpenBatch {
            id,
            now,
            entries: Vec::new(),
            next_part: 0,
            held: Held::default(),
            shared: Some(GzParts::new(part_bytes)),
            shared_parts: Vec::new(),
        }
    }

    fn staged(&self) -> (u64, u64) {
        self.entries.iter().fold((0, 0), |(r, b), e| (r + e.staged_rows, b + e.staged_bytes))
    }

    /// Every part of staging rows the commit's COPY reads: the files' own, then the shared ones.
    pub(super) fn row_parts(&self) -> impl Iterator<Item = &String> + '_ {
        self.entries.iter().flat_map(|e| e.parts.iter()).chain(&self.shared_parts)
    }

    /// Every staging object of the batch: the files' parts and spilled rejects, the shared parts.
    fn objects(&self) -> impl Iterator<Item = String> + '_ {
        self.entries.iter().flat_map(Entry::objects).chain(self.shared_parts.iter().cloned())
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
    /// Ledger answers asked ahead by [`BatchSink::prepare`], until the next commit begins.
    prepared: Prepared,
}

/// The ledger's answers for versions not admitted yet, and the commit that was in flight when
/// they were asked (its files count as recorded for them, whether or not the query saw them).
/// Cleared when a commit begins or the batch rolls back: then the answers may miss files.
#[derive(Default)]
struct Prepared {
    answers: std::collections::HashMap<VersionId, (Option<FileStatus>, i64)>,
    flying: Option<Arc<InFlight>>,
}

/// (bucket, key, version, sequencer): one version as admission asks about it.
type VersionId = (String, String, String, String);

impl Prepared {
    fn id(file: &FileMeta) -> VersionId {
        (file.bucket.clone(), file.key.clone(), file.version.clone(), file.sequencer.clone())
    }
}

/// Versions asked about in one admission query: 20 keep it far below the 100 KB statement
/// limit whatever the keys (at most 1,024 bytes each, every parameter rendered twice at most).
const ADMISSIONS_PER_QUERY: usize = 20;

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

#[async_trait]
impl PendingCommit for RedshiftCommit {
    async fn wait(self: Box<Self>) -> Result<Option<BatchReport>, WarehouseError> {
        let RedshiftCommit { inner, batch, plan, statement, started, objects, in_flight } = *self;
        let done = inner.api.run_from("load", &plan.statements, true, None, Some(statement), started).await;
        // Ended either way: from now on the ledger answers for these files (or, on failure,
        // the caller rolls back the batch that was told about them).
        drop(in_flight);
        inner.delete(objects).await;
        batch_report(&inner, &batch, &plan, done?).await
    }
}

impl Entry {
    /// Its staging objects: row parts and spilled reject parts.
    fn objects(&self) -> impl Iterator<Item = String> + '_ {
        self.parts.iter().chain(&self.reject_parts).cloned()
    }
}

/// A batch id unique across processes without a sequence (see the `redshift` module docs).
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

/// The next staging part's key in the batch (its own files' and shared parts count alike).
fn part_key(inner: &Inner, batch: &mut OpenBatch) -> String {
    let key = inner.staging.key(batch.id, &format!("part-{:05}.csv.gz", batch.next_part));
    batch.next_part += 1;
    key
}

fn shared_broken() -> WarehouseError {
    WarehouseError::Other(
        "staging the batch's shared rows: an earlier append or upload did not complete; the batch must be rolled back"
            .into(),
    )
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

/// [`admission_query`] for several versions: each row starts with the version's position.
fn admissions_query(sql: &Sql<'_>, files: &[&FileMeta]) -> Result<String, String> {
    let names: Vec<[String; 4]> = (0..files.len())
        .map(|i| [format!("bucket_{i}"), format!("key_{i}"), format!("version_{i}"), format!("sequencer_{i}")])
        .collect();
    let mut params = Vec::with_capacity(files.len() * 4);
    for (f, n) in files.iter().zip(&names) {
        params.push((n[0].as_str(), Lit::Str(f.bucket.clone())));
        params.push((n[1].as_str(), Lit::Str(f.key.clone())));
        params.push((n[2].as_str(), Lit::Str(f.version.clone())));
        params.push((n[3].as_str(), Lit::Str(f.sequencer.clone())));
    }
    render(&sql.admissions(files.len()), &params)
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
    /// An empty sink: no batch open until the first `admit`.
    pub(super) fn new(inner: Arc<Inner>, part_bytes: usize, reject_memory: Held) -> RedshiftSink {
        RedshiftSink {
            inner,
            part_bytes,
            reject_memory,
            batch: None,
            file: None,
            in_flight: None,
            prepared: Prepared::default(),
        }
    }

    fn open_file(&mut self) -> Result<&mut OpenFile, WarehouseError> {
        self.file.as_mut().ok_or_else(|| WarehouseError::Other("no file is open in the batch".into()))
    }

    /// Uploads parts of the open file's own.
    async fn upload_parts(&mut self, parts: Vec<stage::StagedPart>) -> Result<(), WarehouseError> {
        if parts.is_empty() {
            return Ok(());
        }
        let batch = self.batch.as_mut().expect("a batch is open while a file is");
        let file = self.file.as_mut().expect("checked");
        for part in parts {
            let key = part_key(&self.inner, batch);
            self.inner.put(&key, part.bytes).await?;
            self.inner.api.metrics.staging_part();
            file.parts.push(key);
        }
        Ok(())
    }

    /// Appends a small file's rows to the batch's shared stream (gzip-encoded on the blocking
    /// pool: up to [`SMALL_FILE_BYTES`] of CSV) and uploads the part that cut, if it did. The
    /// last step of `finish_file` that can fail; when it does the batch is left unable to
    /// commit (rows of files already finished may be in the part that failed), so the caller
    /// rolls it back.
    async fn append_shared(&mut self, held: Buffered) -> Result<(), WarehouseError> {
        if held.rows == 0 {
            return Ok(());
        }
        let batch = self.batch.as_mut().expect("a batch is open while a file is");
        let mut shared = batch.shared.take().ok_or_else(shared_broken)?;
        let (shared, cut) = tokio::task::spawn_blocking(move || {
            let cut = shared.push_lines(&held.lines, held.rows);
            (shared, cut)
        })
        .await
        .map_err(|e| WarehouseError::Other(format!("staging the batch's shared rows: the encoder failed: {e}")))?;
        let cut = cut.map_err(|e| WarehouseError::Other(format!("staging the batch's shared rows: {e}")))?;
        let batch = self.batch.as_mut().expect("a batch is open while a file is");
        if let Some(part) = cut {
            // Named before the upload, so that a rollback deletes whatever of it arrived.
            let key = part_key(&self.inner, batch);
            batch.shared_parts.push(key.clone());
            self.inner.put(&key, part.bytes).await?;
            self.inner.api.metrics.staging_part();
        }
        batch.shared = Some(shared);
        Ok(())
    }

    /// Renders rejects of the open file into its reject parts (on the blocking pool, as rows
    /// are: up to a chunk of rejects, each up to a record long), then uploads the parts it cut.
    async fn spill_rejects(&mut self, rejects: Vec<Reject>) -> Result<(), WarehouseError> {
        let batch = self.batch.as_ref().expect("a batch is open while a file is");
        let (batch_id, now) = (batch.id, batch.now.clone());
        let f = self.file.as_mut().expect("checked");
        let (meta, key) = (f.meta.clone(), f.meta.key.clone());
        let failed = |e: String| WarehouseError::Other(format!("staging rejects of {key}: {e}"));
        let mut writer = f.reject_writer.take().ok_or_else(|| failed("an earlier write was interrupted".into()))?;
        let (writer, cut) = tokio::task::spawn_blocking(move || {
            let mut cut = Vec::new();
            for r in &rejects {
                match writer.push(&reject_values(&meta, r, batch_id, &now)) {
                    Ok(part) => cut.extend(part),
                    Err(e) => return (writer, Err(e)),
                }
            }
            (writer, Ok(cut))
        })
        .await
        .map_err(|e| failed(format!("the encoder failed: {e}")))?;
        let inner = &self.inner;
        let batch = self.batch.as_mut().expect("a batch is open while a file is");
        let f = self.file.as_mut().expect("checked");
        f.reject_writer = Some(writer);
        for body in cut.map_err(|e| failed(e.to_string()))? {
            upload_reject_part(inner, batch, f, body).await?;
        }
        Ok(())
    }

    /// Forgets the open file's rows and rejects so far and deletes its parts. Nothing of the
    /// file is in the batch's shared stream yet (it is appended there when the file ends).
    async fn drop_open_rows(&mut self) {
        if let Some(f) = self.file.as_mut() {
            let mut parts = std::mem::take(&mut f.parts);
            parts.append(&mut f.reject_parts);
            f.writer = Some(file_writer(self.part_bytes));
            f.rows = 0;
            f.bytes = 0;
            f.rejects = Vec::new();
            f.held = Held::default();
            f.spilling = false;
            f.reject_writer = Some(CsvParts::new(self.part_bytes));
            if !parts.is_empty() {
                self.inner.delete(parts).await;
            }
        }
    }

    /// Every staging object of the open batch (its shared parts included) and open file.
    fn staged_objects(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.batch.iter().flat_map(OpenBatch::objects).collect();
        keys.extend(self.file.iter().flat_map(|f| f.parts.iter().chain(&f.reject_parts).cloned()));
        keys
    }

    /// Uploads the batch's objects and submits its one BatchExecuteStatement. On any failure
    /// the batch has ended and its objects are deleted.
    async fn begin_batch(&mut self, mut b: OpenBatch) -> Result<RedshiftCommit, WarehouseError> {
        let inner = self.inner.clone();
        let started = Instant::now();
        // The shared stream's last part, uploaded with the manifest (its finish only flushes
        // what the encoder holds: no more than a small file's worth of input).
        let last_shared = match b.shared.take().ok_or_else(shared_broken).and_then(|mut shared| {
            shared.finish().map_err(|e| WarehouseError::Other(format!("staging the batch's shared rows: {e}")))
        }) {
            Ok(part) => part.map(|part| {
                let key = part_key(&inner, &mut b);
                b.shared_parts.push(key.clone());
                (key, part.bytes)
            }),
            Err(e) => {
                inner.delete(b.objects().collect()).await;
                return Err(e);
            }
        };
        let mut objects: Vec<String> = b.objects().collect();
        let plan = plan_commit(&inner.sql(), &inner.staging, &b, &inner.copy_role);
        if let Ok(plan) = &plan {
            objects.extend(plan.uploads.iter().map(|(k, _)| k.clone()));
        }
        let submitted = async {
            let plan = plan.as_ref().map_err(|e| match e {
                WarehouseError::Other(m) => WarehouseError::Other(m.clone()),
                other => WarehouseError::Other(other.to_string()),
            })?;
            futures::future::try_join_all(
                plan.uploads.iter().chain(&last_shared).map(|(key, body)| inner.put(key, body.clone())),
            )
            .await?;
            if last_shared.is_some() {
                inner.api.metrics.staging_part();
            }
            inner
                .api
                .submit("load", &plan.statements, true)
                .await
                .map_err(|e| inner.api.failed("load", &plan.statements, e))
        }
        .await;
        let statement = match submitted {
            Ok(id) => id,
            Err(e) => {
                // The batch has ended (never run): its objects are spent.
                inner.delete(objects).await;
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

#[async_trait]
impl BatchSink for RedshiftSink {
    /// One admission query for up to [`ADMISSIONS_PER_QUERY`] versions (the shared
    /// `admission`, once per version, as one UNION ALL).
    async fn prepare(&mut self, files: &[FileMeta]) -> Result<(), WarehouseError> {
        // Taken before the ledger is asked, as in `admit`.
        let in_flight = self.in_flight();
        let mut seen = std::collections::HashSet::new();
        let wanted: Vec<&FileMeta> = files
            .iter()
            .filter(|f| {
                let id = Prepared::id(f);
                !self.prepared.answers.contains_key(&id) && seen.insert(id)
            })
            .collect();
        if wanted.len() < 2 {
            return Ok(());
        }
        for chunk in wanted.chunks(ADMISSIONS_PER_QUERY) {
            let sql = admissions_query(&self.inner.sql(), chunk).map_err(WarehouseError::Other)?;
            let rows = self.inner.api.query("query", sql).await?;
            let mut per_file: Vec<Vec<Vec<Cell>>> = vec![Vec::new(); chunk.len()];
            for mut r in rows {
                let i = r.first().and_then(Cell::as_i64).filter(|i| (0..chunk.len() as i64).contains(i));
                let i =
                    i.ok_or_else(|| WarehouseError::Other("an admission row without its file's position".into()))?;
                r.remove(0);
                per_file[i as usize].push(r);
            }
            for (f, rows) in chunk.iter().zip(per_file) {
                self.prepared.answers.insert(Prepared::id(f), read_admission(&rows));
            }
        }
        // No commit began since the answers before these (that would have cleared them): the
        // commit in flight then is this one, or it ended.
        if self.prepared.flying.is_none() {
            self.prepared.flying = in_flight;
        }
        Ok(())
    }

    async fn admit(&mut self, file: &FileMeta, force: bool) -> Result<Admission, WarehouseError> {
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
        let (recorded, newer_recorded, asked_ahead) = match self.prepared.answers.remove(&Prepared::id(file)) {
            Some((recorded, newer)) => (recorded, newer, self.prepared.flying.clone()),
            None => {
                let sql = admission_query(&self.inner.sql(), file).map_err(WarehouseError::Other)?;
                let rows = self.inner.api.query("query", sql).await?;
                let (recorded, newer) = read_admission(&rows);
                (recorded, newer, None)
            }
        };
        // The batch committing (and the one that was when the answer was asked ahead) is part of
        // the ledger as this writer sees it, newer than what the query saw.
        let then = asked_ahead.as_ref().map_or(&[][..], |f| f.files.as_slice());
        let flying: Vec<&(FileMeta, FileStatus)> = flying.iter().chain(then).collect();
        let recorded = flying.iter().find(|(m, _)| same_version(m, file)).map(|(_, s)| *s).or(recorded);
        let newer_in_flight = flying.iter().any(|(m, status)| is_newer(m, *status, file));
        let part_bytes = self.part_bytes;
        let batch =
            self.batch.get_or_insert_with(|| OpenBatch::new(new_batch_id(), timestamp_text(Utc::now()), part_bytes));
        // The open batch is part of the ledger as this writer sees it; its rows are the newest.
        let in_batch = batch.entries.iter().position(|e| same_version(&e.meta, file));
        let existing = in_batch.map(|i| batch.entries[i].status).or(recorded);
        let newer_in_batch = batch.entries.iter().any(|e| is_newer(&e.meta, e.status, file));
        match ledger::admit(
            existing,
            newer_recorded > 0 || newer_in_batch || newer_in_flight,
            force,
            in_batch.is_some(),
        ) {
            Verdict::Duplicate(status) => Ok(Admission::Duplicate(status)),
            Verdict::Superseded => {
                let summary = FileSummary::superseded(file);
                batch.entries.push(Entry {
                    meta: file.clone(),
                    status: summary.status,
                    rows_read: summary.rows_read,
                    rows_loaded: summary.rows_loaded,
                    rows_rejected: summary.rows_rejected,
                    reason: summary.reason,
                    customer: summary.customer,
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
                // Never a version the open batch holds (`ledger::admit`): no entry leaves a batch.
                let replaces = recorded.is_some();
                self.file = Some(OpenFile::new(file.clone(), replaces, self.part_bytes));
                Ok(Admission::Load)
            }
        }
    }

    /// The chunk is gzip-encoded on the blocking pool (a few ms of CPU for a full chunk: too
    /// long to hold a runtime worker), then the parts it finished are uploaded.
    async fn write_rows(&mut self, chunk: RowChunk) -> Result<(), WarehouseError> {
        let batch_id = self.batch.as_ref().map_or(0, |b| b.id);
        let f = self.open_file()?;
        let (key, version) = (f.meta.key.clone(), f.meta.version.clone());
        let (rows, bytes) = (chunk.len() as u64, chunk.bytes as u64);
        let interrupted = || WarehouseError::Other(format!("staging rows of {key}: an earlier write was interrupted"));
        let mut writer = f.writer.take().ok_or_else(interrupted)?;
        let (k, v) = (key.clone(), version);
        let (writer, parts) = tokio::task::spawn_blocking(move || {
            let parts = writer.write_chunk(&chunk, &k, &v, batch_id);
            (writer, parts)
        })
        .await
        .map_err(|e| WarehouseError::Other(format!("staging rows of {key}: the encoder failed: {e}")))?;
        let f = self.open_file()?;
        f.writer = Some(writer);
        let parts = parts.map_err(|e| WarehouseError::Other(format!("staging rows of {key}: {e}")))?;
        f.rows += rows;
        f.bytes += bytes;
        self.upload_parts(parts).await
    }

    /// Held in memory while the batch's in-memory rejects stay within the bound; the file
    /// that would pass it spills (see the `redshift` module docs).
    async fn write_rejects(&mut self, rejects: Vec<Reject>) -> Result<(), WarehouseError> {
        self.open_file()?;
        if rejects.is_empty() {
            return Ok(());
        }
        let batch_held = self.batch.as_ref().map_or(Held::default(), |b| b.held);
        let f = self.file.as_mut().expect("checked");
        if !f.spilling {
            let add = Held::of(&rejects);
            if batch_held.plus(f.held).plus(add).within(self.reject_memory) {
                f.rejects.extend(rejects);
                f.held = f.held.plus(add);
                return Ok(());
            }
            f.spilling = true;
            f.held = Held::default();
            let earlier = std::mem::take(&mut f.rejects);
            debug!(key = %f.meta.key, held = earlier.len(), "rejects pass the memory bound: spilling them to staging");
            self.spill_rejects(earlier).await?;
        }
        self.spill_rejects(rejects).await
    }

    async fn discard_file_rows(&mut self) -> Result<(), WarehouseError> {
        self.open_file()?;
        self.drop_open_rows().await;
        Ok(())
    }

    /// Always true when the file was open: whether another writer recorded this version
    /// first is only known inside the commit's transaction, where the guarded ledger insert
    /// keeps the version from being recorded (and its rows from being loaded) twice.
    ///
    /// A small file's rows join the batch's shared stream last, once nothing else can fail:
    /// a file abandoned after a failure here has no rows in it.
    async fn finish_file(&mut self, summary: &FileSummary) -> Result<bool, WarehouseError> {
        let key = self.open_file()?.meta.key.clone();
        let rows = self
            .file
            .as_mut()
            .expect("checked")
            .writer
            .as_mut()
            .ok_or_else(|| WarehouseError::Other(format!("staging rows of {key}: an earlier write was interrupted")))?
            .finish()
            .map_err(|e| WarehouseError::Other(format!("staging rows of {key}: {e}")))?;
        let held = match rows {
            FileRows::Own(last) => {
                self.upload_parts(last.into_iter().collect()).await?;
                None
            }
            FileRows::Buffered(held) => Some(held),
        };
        {
            let batch = self.batch.as_mut().expect("a batch is open while a file is");
            let f = self.file.as_mut().expect("checked");
            let last = f
                .reject_writer
                .as_mut()
                .ok_or_else(|| {
                    WarehouseError::Other(format!("staging rejects of {key}: an earlier write was interrupted"))
                })?
                .finish()
                .map_err(|e| WarehouseError::Other(format!("staging rejects of {key}: {e}")))?;
            if let Some(body) = last {
                upload_reject_part(&self.inner, batch, f, body).await?;
            }
        }
        if let Some(held) = held {
            self.append_shared(held).await?;
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
            customer: summary.customer.clone(),
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

    async fn abandon_file(&mut self) -> Result<(), WarehouseError> {
        self.drop_open_rows().await;
        self.file = None;
        Ok(())
    }

    fn pending(&self) -> (u64, u64) {
        let (rows, bytes) = self.batch.as_ref().map_or((0, 0), OpenBatch::staged);
        let (r, b) = self.file.as_ref().map_or((0, 0), |f| (f.rows, f.bytes));
        (rows + r, bytes + b)
    }

    async fn commit(&mut self) -> Result<Option<BatchReport>, WarehouseError> {
        match self.commit_begin().await? {
            Some(pending) => pending.wait().await,
            None => Ok(None),
        }
    }

    /// Uploads the manifest and submits the batch; the returned commit waits for it.
    async fn commit_begin(&mut self) -> Result<Option<Box<dyn PendingCommit>>, WarehouseError> {
        if self.file.is_some() {
            return Err(WarehouseError::Other("commit while a file is open".into()));
        }
        if self.in_flight().is_some() {
            return Err(WarehouseError::Other("commit while the previous commit has not ended".into()));
        }
        // Answers asked ahead do not know this batch's files once they leave it.
        self.prepared = Prepared::default();
        let Some(b) = self.batch.take() else { return Ok(None) };
        if b.entries.is_empty() {
            // Nothing to record; a shared part cut by an append that then failed may remain.
            let objects: Vec<String> = b.objects().collect();
            if !objects.is_empty() {
                self.inner.delete(objects).await;
            }
            return Ok(None);
        }
        Ok(Some(Box::new(self.begin_batch(b).await?)))
    }

    async fn rollback(&mut self) {
        self.prepared = Prepared::default();
        let objects = self.staged_objects();
        self.file = None;
        self.batch = None;
        if !objects.is_empty() {
            self.inner.delete(objects).await;
        }
    }
}

impl Drop for RedshiftSink {
    fn drop(&mut self) {
        // Never block in drop: the deletion runs as a task on the runtime dropping the sink
        // (without one, the objects stay: harmless, no manifest names them).
        let objects = self.staged_objects();
        if !objects.is_empty() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    let inner = self.inner.clone();
                    handle.spawn(async move { inner.delete(objects).await });
                }
                Err(_) => warn!(objects = objects.len(), "a sink dropped outside a runtime left its staging objects"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Contract;
    use crate::warehouse::redshift::fixtures::meta;
    use crate::warehouse::sql::{Dialect, Tables};

    #[test]
    fn batch_ids_increase_and_do_not_repeat() {
        let ids: Vec<i64> = (0..1000).map(|_| new_batch_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let now_micros = Utc::now().timestamp_micros();
        assert!(ids[0] / 1000 <= now_micros && ids[0] / 1000 > now_micros - 60_000_000, "epoch microseconds × 1000");
    }

    #[test]
    fn a_batchs_objects_and_row_parts_include_its_shared_parts() {
        use crate::warehouse::redshift::fixtures::entry;
        let mut large = entry("large.csv", 0, 0);
        large.reject_parts = vec!["staging/1/rejects-00002.csv.gz".into()];
        let small = Entry { parts: Vec::new(), ..entry("small.csv", 0, 0) };
        let mut b = OpenBatch { entries: vec![large, small], ..OpenBatch::new(1, String::new(), 1 << 20) };
        b.shared_parts = vec!["staging/1/part-00001.csv.gz".into()];
        assert_eq!(
            b.objects().collect::<Vec<_>>(),
            ["staging/1/large.csv.gz", "staging/1/rejects-00002.csv.gz", "staging/1/part-00001.csv.gz"],
            "what a rollback, a drop and a commit delete"
        );
        assert_eq!(b.row_parts().collect::<Vec<_>>(), ["staging/1/large.csv.gz", "staging/1/part-00001.csv.gz"]);
    }

    #[test]
    fn a_files_rows_are_held_below_the_small_file_size_capped_by_the_part_size() {
        let mut chunk = RowChunk::new(2);
        chunk.push_row(&[Some("acme"), Some("e1")], 2);
        let mut w = file_writer(1 << 30);
        assert!(w.write_chunk(&chunk, "k", "v", 1).unwrap().is_empty());
        assert!(w.is_small(), "a row is far below {SMALL_FILE_BYTES}");
        let mut w = file_writer(10);
        w.write_chunk(&chunk, "k", "v", 1).unwrap();
        assert!(!w.is_small(), "never held past the part size");
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
}
