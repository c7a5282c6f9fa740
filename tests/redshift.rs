//! The Redshift warehouse against the Data API emulator (real HTTP, statements on PostgreSQL,
//! COPY from the moto S3 server). Each test makes its own PostgreSQL database (through the
//! Data API) and its own S3 bucket.
//!
//! What every engine must do is checked by `tests/conformance.rs` (SQLite and this warehouse at
//! both isolation levels); here is what is particular to this one: staging objects, statement
//! metrics, the commit in flight, the spilling of rejects.
//!
//! Needs the local stack: `eval "$(scripts/local-aws.sh up)"` (sets AWS_ENDPOINT_URL_S3 and
//! AWS_ENDPOINT_URL_REDSHIFT_DATA). Without it the tests skip loudly, or fail when `CI` is set.

mod support;

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use aws_sdk_s3::config::{Credentials, Region};
use chrono::Utc;
use support::batches::{chunk, load, loaded, meta, reject};
use wau_ingest::config::{WarehouseConfig, WarehouseKind};
use wau_ingest::contract::Contract;
use wau_ingest::metrics::Metrics;
use wau_ingest::validate::Reject;
use wau_ingest::warehouse::redshift::RedshiftWarehouse;
use wau_ingest::warehouse::{Admission, FileStatus, FileSummary, Warehouse};

struct Stack {
    w: RedshiftWarehouse,
    s3: aws_sdk_s3::Client,
    bucket: String,
    metrics: Arc<Metrics>,
    /// On the emulator's default database, to drop this test's database at the end.
    admin: RedshiftWarehouse,
    database: String,
    /// This test's warehouse configuration and SDK, for another contract's warehouse on it.
    cfg: WarehouseConfig,
    sdk: aws_config::SdkConfig,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {}", self.database);
        let drop_database = self.admin.execute(&sql);
        // The tests run on a multi-thread runtime: block this worker only.
        let dropped = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(drop_database));
        if let Err(e) = dropped {
            eprintln!("test database {} not dropped: {e}", self.database);
        }
    }
}

fn unique() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// A migrated warehouse on a database and a staging bucket of its own; `None` (skip) when
/// the local stack is not configured.
async fn stack(part_bytes: usize) -> Option<Stack> {
    stack_with(part_bytes, |w| w).await
}

/// [`stack`], its warehouse also set up by `tune`.
async fn stack_with(part_bytes: usize, tune: impl FnOnce(RedshiftWarehouse) -> RedshiftWarehouse) -> Option<Stack> {
    let configured =
        ["AWS_ENDPOINT_URL_REDSHIFT_DATA", "AWS_ENDPOINT_URL_S3"].iter().all(|v| std::env::var_os(v).is_some());
    if !configured {
        if std::env::var_os("CI").is_some() {
            panic!("AWS_ENDPOINT_URL_REDSHIFT_DATA and AWS_ENDPOINT_URL_S3 must be set in CI: run `eval \"$(scripts/local-aws.sh up)\"` first");
        }
        eprintln!("\n******** skipped: run `eval \"$(scripts/local-aws.sh up)\"` first (the Redshift emulator and moto) ********\n");
        return None;
    }
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "wau-test"))
        .load()
        .await;
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
    let id = unique();
    let bucket = format!("wau-t-{id}");
    s3.create_bucket().bucket(&bucket).send().await.expect("creating the staging bucket");
    let mut cfg = WarehouseConfig {
        kind: WarehouseKind::Redshift,
        workgroup_name: "wau-test".into(),
        database: "test".into(),
        staging_uri: format!("s3://{bucket}/staging/"),
        copy_role_arn: "arn:aws:iam::123456789012:role/wau-copy".into(),
        ..WarehouseConfig::default()
    };
    let contract = Contract::builtin();
    let metrics = Arc::new(Metrics::new());
    let admin = RedshiftWarehouse::new(&cfg, &contract, &sdk, s3.clone(), metrics.clone()).unwrap();
    cfg.database = format!("wau_t_{id}");
    admin.execute(&format!("CREATE DATABASE {}", cfg.database)).await.unwrap();
    let w = tune(
        RedshiftWarehouse::new(&cfg, &contract, &sdk, s3.clone(), metrics.clone()).unwrap().with_part_bytes(part_bytes),
    );
    w.migrate().await.unwrap();
    Some(Stack { w, s3, bucket, metrics, admin, database: cfg.database.clone(), cfg, sdk })
}

impl Stack {
    /// A warehouse of `contract` on this test's database (not migrated).
    fn with_contract(&self, contract: &Contract) -> RedshiftWarehouse {
        RedshiftWarehouse::new(&self.cfg, contract, &self.sdk, self.s3.clone(), self.metrics.clone()).unwrap()
    }

    /// Keys of every object under the staging prefix.
    async fn staging_objects(&self) -> Vec<String> {
        let out = self.s3.list_objects_v2().bucket(&self.bucket).prefix("staging/").send().await.unwrap();
        out.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect()
    }

    async fn strings(&self, sql: &str) -> Vec<Vec<String>> {
        let rows = self.w.query(sql).await.unwrap();
        rows.iter().map(|r| r.iter().map(|c| c.text().unwrap_or_else(|| "NULL".into())).collect()).collect()
    }

    /// The target as (event_id, user_id, _file_key), by event_id.
    async fn target(&self) -> Vec<(String, String, String)> {
        self.strings("SELECT event_id, user_id, _file_key FROM wau_audit_logs ORDER BY event_id")
            .await
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_timed_by_operation() {
    let Some(s) = stack(1 << 20).await else { return };
    s.w.migrate().await.unwrap();
    // Two migrates (the stack's and this one), each two statements: the lock table, then the rest.
    let metrics = s.metrics.render();
    assert!(metrics.contains("wau_ingest_statement_seconds_count{operation=\"migrate\"} 4"), "{metrics}");
    let mut sink = s.w.sink().unwrap();
    load(sink.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "e1", "u1")]).await;
    sink.commit().await.unwrap().unwrap();
    s.w.merge().await.unwrap();
    let metrics = s.metrics.render();
    assert!(metrics.contains("wau_ingest_statement_seconds_count{operation=\"load\"} 1"), "{metrics}");
    // Two Data API statements: the check for unmerged files, then the merge's batch.
    assert!(metrics.contains("wau_ingest_statement_seconds_count{operation=\"merge\"} 2"), "{metrics}");
}

/// Rows go to gzip parts uploaded as they are cut, one file's rows to parts of its own: a file
/// abandoned or discarded takes exactly its parts along, a commit or a rollback all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_parts_are_cut_as_rows_come_and_go_with_their_file() {
    // Tiny parts: every row cuts a part, so a file spans several.
    let Some(s) = stack(50).await else { return };
    let mut sink = s.w.sink().unwrap();
    assert_eq!(sink.admit(&meta("a.csv", "va", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e1", "u1"), ("acme", "e2", "u2"), ("acme", "e3", "u1")])).await.unwrap();
    sink.write_rejects(vec![reject(5, "x", "y")]).await.unwrap();
    assert!(sink.finish_file(&loaded(3, 1)).await.unwrap());
    assert_eq!(sink.admit(&meta("b.csv", "vb", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e4", "u3")])).await.unwrap();
    assert!(sink.finish_file(&loaded(1, 0)).await.unwrap());
    let kept = s.staging_objects().await;
    assert_eq!(kept.len(), 4, "parts are uploaded as they are cut, one file's rows to its own parts: {kept:?}");

    assert_eq!(sink.admit(&meta("c.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e5", "u1"), ("acme", "e6", "u2")])).await.unwrap();
    assert_eq!(s.staging_objects().await.len(), 6);
    sink.abandon_file().await.unwrap();
    assert_eq!(s.staging_objects().await, kept, "an abandoned file's parts are deleted, nothing else");

    assert_eq!(sink.admit(&meta("d.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e7", "u1"), ("acme", "e8", "u2")])).await.unwrap();
    assert_eq!(s.staging_objects().await.len(), 6);
    sink.discard_file_rows().await.unwrap();
    assert_eq!(s.staging_objects().await, kept, "a discarded file's parts are deleted, nothing else");
    assert!(sink
        .finish_file(&FileSummary {
            status: FileStatus::Rejected,
            rows_read: 2,
            rows_loaded: 0,
            rows_rejected: 2,
            reason: Some("x".into()),
            customer: None,
        })
        .await
        .unwrap());

    assert_eq!(sink.commit().await.unwrap().unwrap().files, 3);
    assert!(s.staging_objects().await.is_empty(), "staging objects are deleted after the commit");
    assert_eq!(s.w.totals().await.unwrap().staging_rows, 4);

    assert_eq!(sink.admit(&meta("e.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e9", "u1")])).await.unwrap();
    assert!(!s.staging_objects().await.is_empty());
    sink.rollback().await;
    assert!(s.staging_objects().await.is_empty(), "a rolled back batch's parts are deleted");
}

/// The parts of staging rows among `keys` (not manifests, not reject parts).
fn row_parts(keys: &[String]) -> Vec<&String> {
    keys.iter().filter(|k| k.contains("/part-")).collect()
}

/// Rows (customer, event_id, user_id) `{prefix}{0..n}` for one file.
fn rows_named(prefix: &str, n: usize) -> Vec<(String, String, String)> {
    (0..n).map(|i| ("acme".to_string(), format!("{prefix}{i:03}"), format!("u{i}"))).collect()
}

fn as_refs(rows: &[(String, String, String)]) -> Vec<(&str, &str, &str)> {
    rows.iter().map(|(c, e, u)| (c.as_str(), e.as_str(), u.as_str())).collect()
}

/// Small files of a batch share staging parts: nothing is uploaded while they come (their rows
/// are held, then appended to the batch's one shared stream), the commit's manifest names one
/// part for all of them, and the COPY loads exactly their rows. A small file abandoned or
/// discarded while open leaves the shared stream as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_of_a_batch_share_one_part_and_load_exactly_their_rows() {
    let Some(s) = stack(1 << 20).await else { return };
    let mut sink = s.w.sink().unwrap();
    let mut expected = Vec::new();
    for f in 0..5 {
        let rows = rows_named(&format!("f{f}-"), 3);
        let key = format!("csv/acme/{f}.csv");
        assert_eq!(load(sink.as_mut(), &meta(&key, "v1", "1"), &as_refs(&rows)).await, Admission::Load);
        expected.extend(rows.iter().map(|(_, e, u)| (e.clone(), u.clone(), key.clone())));
    }
    assert!(s.staging_objects().await.is_empty(), "small files' rows wait for the shared part");

    assert_eq!(sink.admit(&meta("abandoned.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "x1", "u1"), ("acme", "x2", "u2")])).await.unwrap();
    sink.abandon_file().await.unwrap();
    assert_eq!(sink.admit(&meta("discarded.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "y1", "u1")])).await.unwrap();
    sink.discard_file_rows().await.unwrap();
    assert!(sink
        .finish_file(&FileSummary {
            status: FileStatus::Rejected,
            rows_read: 1,
            rows_loaded: 0,
            rows_rejected: 1,
            reason: Some("x".into()),
            customer: None,
        })
        .await
        .unwrap());
    assert!(s.staging_objects().await.is_empty());

    let pending = sink.commit_begin().await.unwrap().expect("a commit in flight");
    let objects = s.staging_objects().await;
    assert_eq!(row_parts(&objects).len(), 1, "one shared part for five files: {objects:?}");
    let report = pending.wait().await.unwrap().unwrap();
    assert_eq!((report.files, report.rows_loaded), (6, 15));
    assert!(s.staging_objects().await.is_empty());
    let t = s.w.totals().await.unwrap();
    assert_eq!((t.staging_rows, t.rows_loaded, t.unbalanced_files), (15, 15, 0), "{t:?}");
    s.w.merge().await.unwrap();
    expected.sort();
    assert_eq!(s.target().await, expected, "every row once, none of the abandoned or discarded files");
}

/// The shared stream is cut into a part (uploaded at once) each time it reaches the part size;
/// a file that outgrows the small-file size keeps parts of its own, uploaded as they are cut;
/// a rollback deletes both kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_stream_is_cut_at_the_part_size_and_a_large_file_keeps_its_own_parts() {
    // ~100 bytes a row: parts of ~1,000 bytes, files of more than ~10 rows are large.
    let Some(s) = stack(1000).await else { return };
    let mut sink = s.w.sink().unwrap();
    let mut expected = Vec::new();
    for f in 0..12 {
        let rows = rows_named(&format!("s{f:02}-"), 2);
        let key = format!("small/{f:02}.csv");
        load(sink.as_mut(), &meta(&key, "v1", "1"), &as_refs(&rows)).await;
        expected.extend(rows.iter().map(|(_, e, u)| (e.clone(), u.clone(), key.clone())));
    }
    let shared = row_parts(&s.staging_objects().await).len();
    assert!((1..12).contains(&shared), "12 small files cut fewer parts than files: {shared}");

    assert_eq!(sink.admit(&meta("large.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    let rows = rows_named("large-", 40);
    sink.write_rows(chunk(&as_refs(&rows))).await.unwrap();
    let open = row_parts(&s.staging_objects().await).len();
    assert!(open >= shared + 3, "the large file's own parts are uploaded as they are cut: {shared} → {open}");
    assert!(sink.finish_file(&loaded(40, 0)).await.unwrap());
    expected.extend(rows.iter().map(|(_, e, u)| (e.clone(), u.clone(), "large.csv".to_string())));

    let report = sink.commit().await.unwrap().unwrap();
    assert_eq!((report.files, report.rows_loaded), (13, 64));
    assert!(s.staging_objects().await.is_empty());
    assert_eq!(s.w.totals().await.unwrap().staging_rows, 64);
    s.w.merge().await.unwrap();
    expected.sort();
    assert_eq!(s.target().await, expected);

    // Rolled back with shared parts cut and a large file's parts: every object goes.
    for f in 0..12 {
        load(sink.as_mut(), &meta(&format!("again/{f:02}.csv"), "v1", "1"), &as_refs(&rows_named("r", 2))).await;
    }
    assert_eq!(sink.admit(&meta("again/large.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&as_refs(&rows_named("rl", 40)))).await.unwrap();
    assert!(row_parts(&s.staging_objects().await).len() > 3);
    sink.rollback().await;
    assert!(s.staging_objects().await.is_empty(), "a rolled back batch's shared and own parts are deleted");
}

/// A small file recorded first by another writer: its rows shared a part with other files'
/// rows, and the commit's removal of unrecorded staging rows takes exactly them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_recorded_first_by_another_writer_leaves_its_shared_part_without_its_rows() {
    let Some(s) = stack(1 << 20).await else { return };
    let (mut first, mut second) = (s.w.sink().unwrap(), s.w.sink().unwrap());
    load(first.as_mut(), &meta("w.csv", "v1", "1"), &[("acme", "w1", "first"), ("acme", "w2", "first")]).await;
    load(second.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "a1", "u1")]).await;
    load(second.as_mut(), &meta("w.csv", "v1", "1"), &[("acme", "w1", "second"), ("acme", "w2", "second")]).await;
    load(second.as_mut(), &meta("b.csv", "v1", "1"), &[("acme", "b1", "u1")]).await;
    assert_eq!(first.commit().await.unwrap().unwrap().files, 1);
    let pending = second.commit_begin().await.unwrap().expect("a commit in flight");
    assert_eq!(row_parts(&s.staging_objects().await).len(), 1, "w.csv shares the part with a.csv and b.csv");
    let report = pending.wait().await.unwrap().unwrap();
    assert_eq!((report.files, report.rows_loaded), (2, 2), "the ledger holds a.csv and b.csv of this batch");
    assert_eq!(
        s.strings(
            "SELECT _file_key, user_id, COUNT(*) FROM wau_audit_logs_staging GROUP BY _file_key, user_id ORDER BY 1, 2"
        )
        .await,
        vec![row(&["a.csv", "u1", "1"]), row(&["b.csv", "u1", "1"]), row(&["w.csv", "first", "2"])]
    );
    let t = s.w.totals().await.unwrap();
    assert_eq!((t.files_loaded, t.rows_loaded, t.staging_rows, t.unbalanced_files), (3, 4, 4, 0), "{t:?}");
    assert!(s.staging_objects().await.is_empty());
}

/// While a batch commits, the next one fills: a version in flight is a duplicate, an older
/// version of a key in flight is superseded, a newer one supersedes it at the next commit, and
/// the next commit cannot begin before the one in flight ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_flight_counts_for_admission_until_its_commit_ended() {
    let Some(s) = stack(1 << 20).await else { return };
    let mut sink = s.w.sink().unwrap();
    assert_eq!(load(sink.as_mut(), &meta("a.csv", "v2", "2"), &[("acme", "e1", "u1")]).await, Admission::Load);
    assert_eq!(load(sink.as_mut(), &meta("b.csv", "v1", "1"), &[("acme", "e2", "u2")]).await, Admission::Load);
    let pending = sink.commit_begin().await.unwrap().expect("a commit in flight");
    assert_eq!(sink.admit(&meta("a.csv", "v2", "2"), false).await.unwrap(), Admission::Duplicate(FileStatus::Loaded));
    assert_eq!(
        sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(),
        Admission::Superseded,
        "older than v2 in flight"
    );
    assert_eq!(load(sink.as_mut(), &meta("b.csv", "v2", "2"), &[("acme", "e2", "u9")]).await, Admission::Load);
    assert!(sink.commit_begin().await.is_err(), "never two commits in flight");

    let r1 = tokio::spawn(async move { pending.wait().await }).await.unwrap().unwrap().unwrap();
    assert_eq!((r1.files, r1.rows_loaded), (2, 2));
    let r2 = sink.commit().await.unwrap().unwrap();
    assert_eq!((r2.files, r2.rows_loaded), (2, 1), "a.csv v1 recorded superseded, b.csv v2 loaded");
    assert_eq!(s.w.lookup("central", "a.csv", "v1").await.unwrap(), Some(FileStatus::Superseded));
    assert_eq!(s.w.lookup("central", "a.csv", "v2").await.unwrap(), Some(FileStatus::Loaded));
    assert_eq!(
        s.w.lookup("central", "b.csv", "v1").await.unwrap(),
        Some(FileStatus::Superseded),
        "superseded by the next batch"
    );
    assert_eq!(s.w.lookup("central", "b.csv", "v2").await.unwrap(), Some(FileStatus::Loaded));
    // Ended: the ledger answers again.
    assert_eq!(sink.admit(&meta("a.csv", "v2", "2"), false).await.unwrap(), Admission::Duplicate(FileStatus::Loaded));
    sink.rollback().await;
    assert!(s.staging_objects().await.is_empty());
    s.w.merge().await.unwrap();
    assert_eq!(
        s.target().await,
        vec![("e1".into(), "u1".into(), "a.csv".into()), ("e2".into(), "u9".into(), "b.csv".into())]
    );
}

fn many_rejects(lines: std::ops::Range<u64>, raw: &str) -> Vec<Reject> {
    lines.map(|i| reject(i, &format!("v\\{i}'"), raw)).collect()
}

/// (key, rejects, distinct lines, first line, last line) of the rejects table, by key.
async fn reject_lines(s: &Stack) -> Vec<Vec<String>> {
    s.strings("SELECT key, COUNT(*), COUNT(DISTINCT line), MIN(line), MAX(line) FROM wau_ingest_rejects GROUP BY key ORDER BY key").await
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// More rejects than the sink keeps in memory: the file that passes the bound spills them to
/// staging parts as it goes, and the commit loads every reject of the batch (spilled or not)
/// exactly once by one COPY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_beyond_the_memory_bound_spill_to_staging_and_load_once() {
    // Reject parts are cut at ~4 KB of CSV; the batch keeps at most 100 rejects in memory.
    let Some(s) = stack_with(4096, |w| w.with_reject_memory(100, 1 << 20)).await else { return };
    let mut sink = s.w.sink().unwrap();
    let raw = "acme,e1,2026-11-23,\\x,\"quoted, text\",'it''s'";
    let reject_parts = |keys: &[String]| keys.iter().filter(|k| k.contains("/rejects-")).count();

    // b.csv: 60 rejects, within the bound: held in memory.
    assert_eq!(sink.admit(&meta("b.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e1", "u1")])).await.unwrap();
    sink.write_rejects(many_rejects(3..63, raw)).await.unwrap();
    assert!(sink.finish_file(&loaded(1, 60)).await.unwrap());
    assert_eq!(reject_parts(&s.staging_objects().await), 0);

    // a.csv: 1000 rejects in chunks of 70; the first chunk already passes the bound (60 + 70).
    assert_eq!(sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e2", "u2"), ("acme", "e3", "u3")])).await.unwrap();
    for start in (4..1004).step_by(70) {
        sink.write_rejects(many_rejects(start..(start + 70).min(1004), raw)).await.unwrap();
    }
    let spilled = reject_parts(&s.staging_objects().await);
    assert!(spilled >= 10, "parts uploaded as they are cut: {spilled}");
    assert!(sink.finish_file(&loaded(2, 1000)).await.unwrap());
    assert!(reject_parts(&s.staging_objects().await) > spilled, "the last part at finish");

    // c.csv: 30 more fit in memory beside b.csv's 60 (a.csv holds none).
    assert_eq!(sink.admit(&meta("c.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rejects(many_rejects(2..32, raw)).await.unwrap();
    let whole = FileSummary {
        status: FileStatus::Rejected,
        rows_read: 30,
        rows_loaded: 0,
        rows_rejected: 30,
        reason: Some("all bad".into()),
        customer: None,
    };
    assert!(sink.finish_file(&whole).await.unwrap());

    // What the rejects table then holds is checked by the conformance suite's
    // `rejects_beyond_the_memory_bound_load_exactly_once` (the same batch).
    let report = sink.commit().await.unwrap().unwrap();
    assert_eq!((report.files, report.rows_loaded, report.rows_rejected), (3, 3, 1090));
    assert_eq!(s.w.totals().await.unwrap().reject_rows, 1090);
    assert!(s.staging_objects().await.is_empty(), "reject parts, the last part and the manifests are deleted");
}

/// A file that spilled rejects and is then abandoned, discarded, rolled back, or recorded
/// first by another writer leaves no rejects and no objects (and one forced twice in a batch
/// keeps its first copy's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilled_rejects_of_files_that_do_not_stay_leave_nothing() {
    let Some(s) = stack_with(4096, |w| w.with_reject_memory(100, 1 << 20)).await else { return };
    let mut sink = s.w.sink().unwrap();
    let raw = "acme,e1,bad";
    let has_reject_parts = |keys: Vec<String>| keys.iter().any(|k| k.contains("/rejects-"));

    // Kept: k.csv, with rejects in memory.
    assert_eq!(sink.admit(&meta("k.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rejects(many_rejects(2..12, raw)).await.unwrap();
    assert!(sink
        .finish_file(&FileSummary {
            status: FileStatus::Rejected,
            rows_read: 10,
            rows_loaded: 0,
            rows_rejected: 10,
            reason: Some("x".into()),
            customer: None,
        })
        .await
        .unwrap());
    let kept = s.staging_objects().await;

    // Abandoned after spilling.
    assert_eq!(sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e1", "u1")])).await.unwrap();
    sink.write_rejects(many_rejects(3..503, raw)).await.unwrap();
    assert!(has_reject_parts(s.staging_objects().await));
    sink.abandon_file().await.unwrap();
    assert_eq!(s.staging_objects().await, kept, "the abandoned file's row and reject parts are deleted, nothing else");

    // Discarded after spilling, then rejected whole with one reject (held in memory again).
    assert_eq!(sink.admit(&meta("d.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rejects(many_rejects(3..503, raw)).await.unwrap();
    assert!(has_reject_parts(s.staging_objects().await));
    sink.discard_file_rows().await.unwrap();
    assert_eq!(s.staging_objects().await, kept, "the discarded file's reject parts are deleted");
    sink.write_rejects(vec![Reject {
        line: 0,
        column: None,
        rule: "gzip_bomb",
        reason: "bomb".into(),
        value: None,
        raw: None,
    }])
    .await
    .unwrap();
    assert!(sink
        .finish_file(&FileSummary {
            status: FileStatus::Rejected,
            rows_read: 500,
            rows_loaded: 0,
            rows_rejected: 500,
            reason: Some("gzip_bomb: bomb".into()),
            customer: None,
        })
        .await
        .unwrap());

    // Forced twice in the batch: the second admission is a duplicate of the first copy, whose
    // spilled parts stay.
    assert_eq!(sink.admit(&meta("f.csv", "v1", "1"), true).await.unwrap(), Admission::Load);
    sink.write_rejects(many_rejects(2..302, raw)).await.unwrap();
    assert!(sink
        .finish_file(&FileSummary {
            status: FileStatus::Rejected,
            rows_read: 300,
            rows_loaded: 0,
            rows_rejected: 300,
            reason: Some("x".into()),
            customer: None,
        })
        .await
        .unwrap());
    assert_eq!(sink.admit(&meta("f.csv", "v1", "1"), true).await.unwrap(), Admission::Duplicate(FileStatus::Rejected));
    let report = sink.commit().await.unwrap().unwrap();
    assert_eq!((report.files, report.rows_rejected), (3, 810));
    assert_eq!(
        reject_lines(&s).await,
        vec![
            row(&["d.csv", "1", "1", "0", "0"]),
            row(&["f.csv", "300", "300", "2", "301"]),
            row(&["k.csv", "10", "10", "2", "11"])
        ]
    );
    assert!(s.staging_objects().await.is_empty());
    assert_eq!(s.w.lookup("central", "a.csv", "v1").await.unwrap(), None);

    // Rolled back after spilling.
    assert_eq!(sink.admit(&meta("r.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rejects(many_rejects(2..302, raw)).await.unwrap();
    assert!(has_reject_parts(s.staging_objects().await));
    sink.rollback().await;
    assert!(s.staging_objects().await.is_empty());

    // Recorded first by another writer: the second writer's spilled rejects are removed in
    // its commit, like its staged rows.
    let (mut first, mut second) = (s.w.sink().unwrap(), s.w.sink().unwrap());
    for sink in [&mut first, &mut second] {
        assert_eq!(sink.admit(&meta("w.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
        sink.write_rows(chunk(&[("acme", "e1", "u1")])).await.unwrap();
        sink.write_rejects(many_rejects(3..403, raw)).await.unwrap();
        assert!(sink.finish_file(&loaded(1, 400)).await.unwrap());
    }
    assert_eq!(first.commit().await.unwrap().unwrap().rows_rejected, 400);
    assert_eq!(second.commit().await.unwrap(), None, "nothing of the second writer was recorded");
    assert_eq!(
        s.strings("SELECT COUNT(*), COUNT(DISTINCT line) FROM wau_ingest_rejects WHERE key = 'w.csv'").await,
        vec![row(&["400", "400"])]
    );
    let t = s.w.totals().await.unwrap();
    // d.csv was rejected whole: 500 rows rejected in the ledger, one reject row (the bomb).
    assert_eq!(
        (t.rows_rejected, t.reject_rows, t.staging_rows, t.unbalanced_files),
        (10 + 500 + 300 + 400, 10 + 1 + 300 + 400, 1, 0),
        "{t:?}"
    );
    assert!(s.staging_objects().await.is_empty());
}

/// Schema evolution on the emulator: a contract that gains an optional column plans one ADD
/// per table (staging, target) read from SVV_COLUMNS, which `evolve::apply` makes; rows of
/// before read NULL, rows with it load it and the merge carries it; the WAU view keeps
/// working; destructive and narrowing changes are refused and change nothing; an old ledger
/// upgrades with one apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_optional_column_is_added_and_destructive_changes_are_refused() {
    use wau_ingest::warehouse::evolve::{self, Applied, Change};
    use wau_ingest::warehouse::sql::{Dialect, Sql, Tables};
    let Some(s) = stack(1 << 20).await else { return };
    let mut sink = s.w.sink().unwrap();
    load(sink.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "e1", "u1")]).await;
    sink.commit().await.unwrap().unwrap();
    s.w.merge().await.unwrap();

    let v3 = Contract::parse(include_str!("fixtures/contracts/wau_audit_log_v3.toml"), "v3").unwrap();
    let t3 = Tables::for_contract(&v3);
    let sql3 = Sql::new(Dialect::Redshift, &v3, &t3);
    let w3 = s.with_contract(&v3);
    let e = w3.migrate().await.unwrap_err();
    assert!(e.to_string().contains("behind the contract: run `wau-ingest migrate --plan`"), "{e}");
    let plan = evolve::plan(&sql3, &w3).await.unwrap();
    assert_eq!(
        plan.additions(),
        [
            "ALTER TABLE wau_audit_logs ADD COLUMN region VARCHAR(32)",
            "ALTER TABLE wau_audit_logs_staging ADD COLUMN region VARCHAR(32)"
        ],
        "{plan}"
    );
    assert!(!plan.refused());
    assert!(matches!(evolve::apply(&w3, &sql3).await.unwrap(), Applied::Done(_)));
    assert!(evolve::plan(&sql3, &w3).await.unwrap().is_empty(), "nothing left to do");
    assert!(matches!(evolve::apply(&w3, &sql3).await.unwrap(), Applied::Done(p) if p.is_empty()), "idempotent");
    w3.migrate().await.unwrap();
    assert_eq!(
        s.strings("SELECT data_type, character_maximum_length, is_nullable FROM svv_columns WHERE table_schema = current_schema() AND table_name = 'wau_audit_logs' AND column_name = 'region'").await,
        [["character varying", "32", "YES"]]
    );

    // Rows of a file without the column (NULL) and with it; the merge carries both.
    let mut sink = w3.sink().unwrap();
    let mut m = meta("b.csv", "v1", "2");
    m.contract_version = 3;
    assert_eq!(sink.admit(&m, false).await.unwrap(), Admission::Load);
    let mut c = wau_ingest::validate::RowChunk::new(9);
    c.push_row(
        &[
            Some("acme"),
            Some("e2"),
            Some("2026-11-23 10:00:00"),
            Some("u2"),
            None,
            Some("login"),
            None,
            None,
            Some("eu-west-1"),
        ],
        2,
    );
    c.push_row(
        &[Some("acme"), Some("e3"), Some("2026-11-23 10:00:00"), Some("u3"), None, Some("login"), None, None, None],
        3,
    );
    sink.write_rows(c).await.unwrap();
    assert!(sink.finish_file(&loaded(2, 0)).await.unwrap());
    sink.commit().await.unwrap().unwrap();
    w3.merge().await.unwrap();
    assert_eq!(
        s.strings("SELECT event_id, COALESCE(region, 'NULL') FROM wau_audit_logs ORDER BY event_id").await,
        [["e1", "NULL"], ["e2", "eu-west-1"], ["e3", "NULL"]]
    );
    assert_eq!(
        s.strings("SELECT key, contract_version FROM wau_ingest_files ORDER BY key").await,
        [["a.csv", "1"], ["b.csv", "3"]],
        "the ledger says which contract accepted each file"
    );
    assert_eq!(
        w3.weekly_active_users("2026-01-01", None).await.unwrap().iter().map(|r| r.active_users).sum::<i64>(),
        3,
        "the view keeps working"
    );

    // Refusals change nothing: a drop, a type change, a shorter max_length, a wider one.
    let before = s.strings("SELECT table_name, column_name, data_type, character_maximum_length FROM svv_columns WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position").await;
    let base = include_str!("fixtures/contracts/wau_audit_log_v3.toml");
    for (text, reason) in [
        (base.replace("name = \"region\"", "name = \"area\""), "a rename, or a drop and an add"),
        (
            base.replace("max_length = 512", "max_length = 256"),
            "narrower: VARCHAR(512) in the table, VARCHAR(256) wanted",
        ),
        (
            base.replace("max_length = 512", "max_length = 1024"),
            "wider: VARCHAR(512) in the table, VARCHAR(1024) wanted",
        ),
        (
            base.replace(
                "name = \"event_type\"\ntype = \"string\"\nrequired = true\nmax_length = 64",
                "name = \"event_type\"\ntype = \"integer\"\nrequired = true",
            ),
            "type change: VARCHAR(64) in the table, BIGINT wanted",
        ),
    ] {
        let c = Contract::parse(&text, "changed").unwrap();
        let w = s.with_contract(&c);
        let t = Tables::for_contract(&c);
        let applied = evolve::apply(&w, &Sql::new(Dialect::Redshift, &c, &t)).await.unwrap();
        let Applied::Refused(plan) = applied else { panic!("{reason}: not refused") };
        let reasons: Vec<&str> = plan
            .tables
            .iter()
            .flat_map(|t| &t.changes)
            .filter_map(|c| match c {
                Change::Refused { reason, .. } | Change::ExtraColumn { reason, .. } => Some(reason.as_str()),
                _ => None,
            })
            .collect();
        assert!(reasons.iter().any(|r| r.contains(reason)), "{reason}: {plan}");
        assert_eq!(s.strings("SELECT table_name, column_name, data_type, character_maximum_length FROM svv_columns WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position").await, before, "{reason}: nothing changed");
    }
}

/// The ledger as an earlier release made it (no `merged_at`) upgrades with one apply, which
/// also creates every missing table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_ledger_upgrades_with_one_migrate() {
    use wau_ingest::warehouse::evolve::{self, Applied};
    use wau_ingest::warehouse::sql::{ledger_table, Dialect, Sql, Tables};
    let Some(s) = stack(1 << 20).await else { return };
    let w = s.with_contract(&Contract::builtin());
    // Back to no tables (CASCADE: the views over them go too).
    for t in [
        "wau_audit_logs",
        "wau_audit_logs_staging",
        "wau_ingest_files",
        "wau_ingest_rejects",
        "wau_ingest_merges",
        "wau_ingest_reconciles",
    ] {
        w.execute(&format!("DROP TABLE {t} CASCADE")).await.unwrap();
    }
    w.execute(
        "CREATE TABLE wau_ingest_files (bucket VARCHAR(1024) NOT NULL, key VARCHAR(1024) NOT NULL, version VARCHAR(256) NOT NULL, \
         sequencer VARCHAR(64) NOT NULL, size_bytes BIGINT, rows_read BIGINT NOT NULL, rows_loaded BIGINT NOT NULL, \
         rows_rejected BIGINT NOT NULL, status VARCHAR(16) NOT NULL, reason VARCHAR(1024), batch_id BIGINT NOT NULL, \
         event_at TIMESTAMP, loaded_at TIMESTAMP NOT NULL, contract_version BIGINT NOT NULL)",
    )
    .await
    .unwrap();
    w.execute("INSERT INTO wau_ingest_files VALUES ('b', 'old.csv', 'v1', '1', 1, 1, 1, 0, 'loaded', NULL, 1, NULL, '2026-11-20 00:00:00', 2)").await.unwrap();
    assert!(w.migrate().await.unwrap_err().to_string().contains("the tables wau_ingest_files are behind the contract"));
    let c = Contract::builtin();
    let t = Tables::for_contract(&c);
    let sql = Sql::new(Dialect::Redshift, &c, &t);
    let Applied::Done(plan) = evolve::apply(&w, &sql).await.unwrap() else { panic!("refused") };
    assert!(
        plan.additions().contains(&"ALTER TABLE wau_ingest_files ADD COLUMN merged_at TIMESTAMP".to_string()),
        "{plan}"
    );
    assert!(evolve::plan(&sql, &w).await.unwrap().is_empty());
    let have = s.strings("SELECT column_name FROM svv_columns WHERE table_schema = current_schema() AND table_name = 'wau_ingest_files' ORDER BY ordinal_position").await;
    for col in ledger_table::COLUMNS {
        assert!(have.iter().any(|r| r[0] == col.name), "{}: {have:?}", col.name);
    }
    assert_eq!(s.strings("SELECT COUNT(*) FROM wau_ingest_files WHERE merged_at IS NULL").await, [["1"]]);
    w.merge().await.unwrap();
}
