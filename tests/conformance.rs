//! The warehouse contract, one suite for every engine: each case below runs against the
//! embedded SQLite warehouse (`sqlite::…`), and against the Redshift warehouse on the Data API
//! emulator in a database at SNAPSHOT isolation (`snapshot::…`, Redshift Serverless' default)
//! and at SERIALIZABLE isolation (`serializable::…`). A case sees the warehouse only through
//! the `Warehouse` / `BatchSink` traits; what it reads back for its assertions comes from
//! `support::warehouses::Backend`, which holds everything engine-specific.
//!
//! The emulator cases need the local stack (`eval "$(scripts/local-aws.sh up)"`); without it
//! they print SKIPPED, or fail when `CI` is set. One engine only: `cargo test --test conformance sqlite::`.

mod support;

use std::time::Duration;

use support::batches::{chunk, load, loaded, meta, reject, BUCKET};
use support::warehouses::{Backend, Engine, Tuning};
use wau_ingest::validate::Reject;
use wau_ingest::warehouse::{
    Admission, BatchReport, BatchSink, FileStatus, FileSummary, LedgerTotals, MergeReport, PageStart, Warehouse, WauRow,
};

// ------------------------------------------------------------------------------------------
// The cases, each instantiated for the three engines.

macro_rules! conformance {
    ($($case:ident: $tuning:expr),* $(,)?) => {
        conformance!(@engine sqlite, Engine::Sqlite; $($case: $tuning),*);
        conformance!(@engine snapshot, Engine::Snapshot; $($case: $tuning),*);
        conformance!(@engine serializable, Engine::Serializable; $($case: $tuning),*);
    };
    (@engine $module:ident, $engine:expr; $($case:ident: $tuning:expr),*) => {
        mod $module {
            use super::*;
            $(
                #[test]
                fn $case() {
                    let Some(b) = Backend::new($engine, $tuning) else { return };
                    b.block_on(super::$case(&b));
                }
            )*
        }
    };
}

conformance! {
    migrate_is_idempotent_and_an_idle_merge_records_nothing: Tuning::DEFAULT,
    new_files_are_admitted_with_rows_rejects_and_ledger_rows: Tuning::SMALL_PARTS,
    a_recorded_version_is_a_duplicate: Tuning::DEFAULT,
    an_older_version_arriving_after_a_newer_one_is_superseded: Tuning::DEFAULT,
    a_newer_version_supersedes_the_loaded_one: Tuning::DEFAULT,
    a_late_older_version_changes_nothing: Tuning::DEFAULT,
    forced_reload_replaces_a_versions_rows: Tuning::DEFAULT,
    a_version_forced_twice_in_one_batch_loads_once: Tuning::DEFAULT,
    many_large_rejects_load_exactly_once: Tuning::DEFAULT,
    rejects_beyond_the_memory_bound_load_exactly_once: Tuning::SPILL,
    a_discarded_file_keeps_only_its_verdict: Tuning::SMALL_PARTS,
    an_abandoned_file_leaves_nothing: Tuning::SMALL_PARTS,
    nothing_is_visible_before_commit: Tuning::SMALL_PARTS,
    merge_publishes_the_current_versions_and_is_idempotent: Tuning::DEFAULT,
    superseding_one_file_keeps_the_key_another_file_holds: Tuning::DEFAULT,
    weekly_active_users_counts_distinct_users_per_iso_week: Tuning::DEFAULT,
    recorded_pages_hold_every_pair_once_in_byte_order: Tuning::DEFAULT,
    the_same_version_from_two_writers_one_after_the_other_is_recorded_once: Tuning::DEFAULT,
    the_same_version_from_two_writers_at_the_same_time_is_recorded_once: Tuning::DEFAULT,
    admissions_asked_ahead_decide_as_admissions_asked_one_by_one: Tuning::DEFAULT,
    the_ledger_records_each_files_customer_and_the_freshness_view_reads_it: Tuning::DEFAULT,
}

// ------------------------------------------------------------------------------------------
// Helpers: file versions, rows and rejects as the pipeline hands them to a sink.

fn rejected_whole(rows_read: u64, reason: &str) -> FileSummary {
    FileSummary {
        status: FileStatus::Rejected,
        rows_read,
        rows_loaded: 0,
        rows_rejected: rows_read,
        reason: Some(reason.into()),
        customer: None,
    }
}

fn many_rejects(lines: std::ops::Range<u64>, raw: &str) -> Vec<Reject> {
    lines.map(|i| reject(i, &format!("v\\{i}'"), raw)).collect()
}

fn bomb() -> Reject {
    Reject { line: 0, column: None, rule: "gzip_bomb", reason: "bomb".into(), value: None, raw: None }
}

fn s(v: &str) -> String {
    v.to_string()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// A ledger row as `Backend::ledger` returns it.
fn ledger_row(
    key: &str,
    version: &str,
    status: &str,
    counts: (i64, i64, i64),
    merged: bool,
) -> (String, String, String, i64, i64, i64, bool) {
    (s(key), s(version), s(status), counts.0, counts.1, counts.2, merged)
}

/// A target row as `Backend::target` returns it.
fn target_row(customer: &str, event_id: &str, user: &str, file: &str) -> (String, String, String, String) {
    (s(customer), s(event_id), s(user), s(file))
}

/// A staging row as `Backend::staging` returns it.
fn staged(file: &str, version: &str, line: i64, event_id: &str, user: &str) -> (String, String, i64, String, String) {
    (s(file), s(version), line, s(event_id), s(user))
}

fn counts(r: &BatchReport) -> (u64, u64, u64) {
    (r.files, r.rows_loaded, r.rows_rejected)
}

/// Every (key, sequencer) recorded for `BUCKET`, paged through as reconcile pages: from the
/// first key on, then after the last pair of each page, `limit` at a time.
async fn recorded(w: &dyn Warehouse, limit: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut start = PageStart::AtKey(String::new());
    loop {
        let page = w.recorded_page(BUCKET, &start, limit).await.unwrap();
        assert!(page.len() <= limit, "a page of {} over the limit {limit}", page.len());
        let short = page.len() < limit;
        if let Some(last) = page.last() {
            start = PageStart::After(last.clone());
        }
        out.extend(page.into_iter().map(|r| (r.key, r.sequencer)));
        if short {
            // A pair repeats once per version recorded with it (within a page).
            out.dedup();
            return out;
        }
    }
}

// ------------------------------------------------------------------------------------------

async fn migrate_is_idempotent_and_an_idle_merge_records_nothing(b: &Backend) {
    let w = b.warehouse();
    w.migrate().await.unwrap();
    w.ping().await.unwrap();
    assert_eq!(w.totals().await.unwrap(), LedgerTotals::default());
    assert_eq!(w.merge().await.unwrap(), MergeReport::default(), "nothing to merge");
    assert_eq!(b.count("SELECT COUNT(*) FROM wau_ingest_merges"), 0, "an idle merge records nothing");
    assert_eq!(w.weekly_active_users("2000-01-01", None).await.unwrap(), vec![]);
    assert_eq!(recorded(w, 3).await, Vec::<(String, String)>::new());
    assert_eq!(w.sink().unwrap().commit().await.unwrap(), None, "an empty batch commits nothing");
}

/// Two files in one batch, with rows, rejects (text that breaks naive literals on one engine or
/// the other) and their ledger rows; data lines read = rows loaded + rows rejected.
async fn new_files_are_admitted_with_rows_rejects_and_ledger_rows(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    let (a, bb) = (meta("csv/acme/a.csv", "va", "1"), meta("csv/acme/b.csv", "vb", "1"));
    let tricky_raw = r#"acme,e9,2026-11-23T10:00:00Z,u9,it's\not@mail\,login,,"ua \"x\""\"#;
    let tricky_value = r"it's\not@mail\";

    assert_eq!(sink.admit(&a, false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e1", "u1"), ("acme", "e2", "u2"), ("acme", "e3", "u1")])).await.unwrap();
    sink.write_rejects(vec![reject(5, tricky_value, tricky_raw)]).await.unwrap();
    assert!(sink.finish_file(&loaded(3, 1)).await.unwrap());
    assert_eq!(sink.admit(&bb, false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e4", "u3")])).await.unwrap();
    sink.write_rejects(vec![reject(3, "x", "acme,e5"), reject(4, "y", "acme,e6")]).await.unwrap();
    assert!(sink.finish_file(&loaded(1, 2)).await.unwrap());
    assert_eq!(sink.pending().0, 4);

    let report = sink.commit().await.unwrap().expect("a report");
    assert_eq!(counts(&report), (2, 4, 3));
    assert_eq!(w.lookup(BUCKET, &a.key, "va").await.unwrap(), Some(FileStatus::Loaded));
    assert_eq!(w.lookup(BUCKET, &a.key, "other").await.unwrap(), None);
    assert_eq!(w.lookup_stamp(BUCKET, &bb.key, "1", 100).await.unwrap(), Some(FileStatus::Loaded));
    assert_eq!(w.lookup_stamp(BUCKET, &bb.key, "1", 101).await.unwrap(), None, "another size is another version");
    assert_eq!(recorded(w, 1).await, [(a.key.clone(), s("1")), (bb.key.clone(), s("1"))]);
    assert_eq!(
        w.totals().await.unwrap(),
        LedgerTotals {
            files_loaded: 2,
            rows_read: 7,
            rows_loaded: 4,
            rows_rejected: 3,
            staging_rows: 4,
            reject_rows: 3,
            ..LedgerTotals::default()
        }
    );
    assert_eq!(
        b.ledger(),
        vec![
            ledger_row("csv/acme/a.csv", "va", "loaded", (4, 3, 1), false),
            ledger_row("csv/acme/b.csv", "vb", "loaded", (3, 1, 2), false),
        ]
    );
    assert_eq!(
        b.rows(
            "SELECT _file_key, _file_version, event_id, user_id, _line, event_type, user_agent, user_email, source_ip \
             FROM wau_audit_logs_staging ORDER BY event_id"
        ),
        vec![
            row(&["csv/acme/a.csv", "va", "e1", "u1", "2", "login", "agent, \"quoted\"", "NULL", "NULL"]),
            row(&["csv/acme/a.csv", "va", "e2", "u2", "3", "login", "agent, \"quoted\"", "NULL", "NULL"]),
            row(&["csv/acme/a.csv", "va", "e3", "u1", "4", "login", "agent, \"quoted\"", "NULL", "NULL"]),
            row(&["csv/acme/b.csv", "vb", "e4", "u3", "2", "login", "agent, \"quoted\"", "NULL", "NULL"]),
        ]
    );
    assert_eq!(
        b.rejects(),
        vec![
            row(&["csv/acme/a.csv", "va", "5", "format", "user_email", tricky_value, tricky_raw]),
            row(&["csv/acme/b.csv", "vb", "3", "format", "user_email", "x", "acme,e5"]),
            row(&["csv/acme/b.csv", "vb", "4", "format", "user_email", "y", "acme,e6"]),
        ]
    );
    assert_eq!(
        b.count(
            "SELECT COUNT(*) FROM wau_ingest_rejects r JOIN wau_ingest_files f \
             ON f.key = r.key AND f.version = r.version AND f.batch_id = r.batch_id"
        ),
        3,
        "every reject carries its file's batch"
    );
    assert_eq!(b.target(), vec![], "the target changes only by a merge");
    assert_eq!(b.staged_objects(), Vec::<String>::new(), "nothing of the batch is left outside the tables");
    assert_eq!(sink.commit().await.unwrap(), None, "nothing open, nothing to commit");
}

/// A version already recorded (loaded, or rejected whole), in the open batch or committed, is a
/// duplicate: not loaded again, not recorded again.
async fn a_recorded_version_is_a_duplicate(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    assert_eq!(load(sink.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "e1", "u1")]).await, Admission::Load);
    assert_eq!(
        sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(),
        Admission::Duplicate(FileStatus::Loaded),
        "in the open batch"
    );
    assert_eq!(sink.admit(&meta("r.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rejects(vec![bomb()]).await.unwrap();
    assert!(sink.finish_file(&rejected_whole(0, "gzip_bomb: bomb")).await.unwrap());
    assert_eq!(sink.admit(&meta("r.csv", "v1", "1"), false).await.unwrap(), Admission::Duplicate(FileStatus::Rejected));
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (2, 1, 0));

    assert_eq!(w.lookup(BUCKET, "a.csv", "v1").await.unwrap(), Some(FileStatus::Loaded));
    assert_eq!(w.lookup(BUCKET, "r.csv", "v1").await.unwrap(), Some(FileStatus::Rejected));
    assert_eq!(
        load(sink.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "e1", "u1")]).await,
        Admission::Duplicate(FileStatus::Loaded)
    );
    assert_eq!(sink.admit(&meta("r.csv", "v1", "1"), false).await.unwrap(), Admission::Duplicate(FileStatus::Rejected));
    assert_eq!(sink.commit().await.unwrap(), None, "a batch of duplicates records nothing");
    // Another writer sees the same.
    let mut other = w.sink().unwrap();
    assert_eq!(other.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(), Admission::Duplicate(FileStatus::Loaded));
    assert_eq!(other.commit().await.unwrap(), None);

    assert_eq!(
        b.ledger(),
        vec![
            ledger_row("a.csv", "v1", "loaded", (1, 1, 0), false),
            ledger_row("r.csv", "v1", "rejected", (0, 0, 0), true)
        ]
    );
    assert_eq!(b.staging(), vec![staged("a.csv", "v1", 2, "e1", "u1")]);
    assert_eq!(b.rejects(), vec![row(&["r.csv", "v1", "0", "gzip_bomb", "NULL", "NULL", "NULL"])]);
    assert_eq!(b.staged_objects(), Vec::<String>::new());
}

/// A version older than the recorded one (committed, or loaded in the open batch) is recorded
/// superseded on arrival and not loaded; it is a duplicate after that.
async fn an_older_version_arriving_after_a_newer_one_is_superseded(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    assert_eq!(load(sink.as_mut(), &meta("a.csv", "v2", "2"), &[("acme", "e1", "u1")]).await, Admission::Load);
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (1, 1, 0));

    assert_eq!(sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(), Admission::Superseded, "older than v2");
    // Within the open batch: an older version of a key loaded in it is superseded too.
    assert_eq!(load(sink.as_mut(), &meta("c.csv", "v5", "5"), &[("acme", "e2", "u2")]).await, Admission::Load);
    assert_eq!(sink.admit(&meta("c.csv", "v4", "4"), false).await.unwrap(), Admission::Superseded);
    assert_eq!(
        sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(),
        Admission::Duplicate(FileStatus::Superseded)
    );
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (3, 1, 0), "two superseded on arrival, c.csv v5 loaded");

    assert_eq!(w.lookup(BUCKET, "a.csv", "v1").await.unwrap(), Some(FileStatus::Superseded));
    assert_eq!(w.lookup(BUCKET, "c.csv", "v4").await.unwrap(), Some(FileStatus::Superseded));
    assert_eq!(
        sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(),
        Admission::Duplicate(FileStatus::Superseded)
    );
    assert_eq!(
        sink.admit(&meta("c.csv", "v4", "4"), false).await.unwrap(),
        Admission::Duplicate(FileStatus::Superseded)
    );
    assert_eq!(sink.commit().await.unwrap(), None);
    assert_eq!(
        b.ledger(),
        vec![
            ledger_row("a.csv", "v2", "loaded", (1, 1, 0), false),
            ledger_row("a.csv", "v1", "superseded", (0, 0, 0), true),
            ledger_row("c.csv", "v4", "superseded", (0, 0, 0), true),
            ledger_row("c.csv", "v5", "loaded", (1, 1, 0), false),
        ]
    );
    assert_eq!(b.staging(), vec![staged("a.csv", "v2", 2, "e1", "u1"), staged("c.csv", "v5", 2, "e2", "u2")]);
    let t = w.totals().await.unwrap();
    assert_eq!((t.files_loaded, t.files_superseded, t.staging_rows, t.unbalanced_files), (2, 2, 2, 0), "{t:?}");
    w.merge().await.unwrap();
    assert_eq!(b.target(), vec![target_row("acme", "e1", "u1", "a.csv"), target_row("acme", "e2", "u2", "c.csv")]);
}

/// A newer version marks the loaded one superseded in the same commit, also when both versions
/// are in one batch.
async fn a_newer_version_supersedes_the_loaded_one(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    assert_eq!(load(sink.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "e1", "u1")]).await, Admission::Load);
    sink.commit().await.unwrap().unwrap();
    assert_eq!(load(sink.as_mut(), &meta("a.csv", "v2", "2"), &[("acme", "e1", "u9")]).await, Admission::Load);
    assert_eq!(load(sink.as_mut(), &meta("d.csv", "v1", "1"), &[("acme", "e3", "u3")]).await, Admission::Load);
    assert_eq!(load(sink.as_mut(), &meta("d.csv", "v2", "2"), &[("acme", "e4", "u4")]).await, Admission::Load);
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (3, 3, 0));
    assert_eq!(w.lookup(BUCKET, "a.csv", "v1").await.unwrap(), Some(FileStatus::Superseded));
    assert_eq!(w.lookup(BUCKET, "a.csv", "v2").await.unwrap(), Some(FileStatus::Loaded));
    assert_eq!(w.lookup(BUCKET, "d.csv", "v1").await.unwrap(), Some(FileStatus::Superseded));
    assert_eq!(w.lookup(BUCKET, "d.csv", "v2").await.unwrap(), Some(FileStatus::Loaded));
    let t = w.totals().await.unwrap();
    assert_eq!((t.files_loaded, t.files_superseded, t.unbalanced_files), (2, 2, 0), "{t:?}");
    // Superseded rows stay in staging until a merge has removed them from the target.
    assert_eq!(t.staging_rows, 4);
    w.merge().await.unwrap();
    assert_eq!(b.target(), vec![target_row("acme", "e1", "u9", "a.csv"), target_row("acme", "e4", "u4", "d.csv")]);
    assert_eq!(b.staging(), vec![staged("a.csv", "v2", 2, "e1", "u9"), staged("d.csv", "v2", 2, "e4", "u4")]);
    assert_eq!(
        b.ledger().into_iter().map(|r| (r.0, r.1, r.2, r.6)).collect::<Vec<_>>(),
        vec![
            (s("a.csv"), s("v1"), s("superseded"), true),
            (s("a.csv"), s("v2"), s("loaded"), true),
            (s("d.csv"), s("v1"), s("superseded"), true),
            (s("d.csv"), s("v2"), s("loaded"), true),
        ]
    );
}

/// Overwritten and merged, then the old version is delivered again, and an even older one
/// arrives: neither changes the target, and the superseded rows have left staging.
async fn a_late_older_version_changes_nothing(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    load(sink.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "e1", "old"), ("acme", "e2", "old")]).await;
    sink.commit().await.unwrap().unwrap();
    w.merge().await.unwrap();
    load(sink.as_mut(), &meta("a.csv", "v2", "2"), &[("acme", "e1", "new")]).await;
    sink.commit().await.unwrap().unwrap();
    w.merge().await.unwrap();
    assert_eq!(b.target(), vec![target_row("acme", "e1", "new", "a.csv")]);

    assert_eq!(
        sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(),
        Admission::Duplicate(FileStatus::Superseded)
    );
    assert_eq!(sink.admit(&meta("a.csv", "v0", "0"), false).await.unwrap(), Admission::Superseded);
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (1, 0, 0));
    assert_eq!(w.merge().await.unwrap().rows_inserted, 0);
    assert_eq!(b.target(), vec![target_row("acme", "e1", "new", "a.csv")]);
    assert_eq!(b.staging(), vec![staged("a.csv", "v2", 2, "e1", "new")], "superseded rows left staging");
    assert_eq!(
        b.ledger(),
        vec![
            ledger_row("a.csv", "v1", "superseded", (2, 2, 0), true),
            ledger_row("a.csv", "v2", "loaded", (1, 1, 0), true),
            ledger_row("a.csv", "v0", "superseded", (0, 0, 0), true),
        ]
    );
}

/// `admit(.., force = true)` reloads a recorded version: the earlier load is marked replaced, the
/// merge recomputes both loads' keys, and a row now rejected leaves the target.
async fn forced_reload_replaces_a_versions_rows(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    load(sink.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "e1", "u1"), ("acme", "e2", "u2")]).await;
    sink.commit().await.unwrap().unwrap();
    w.merge().await.unwrap();

    assert_eq!(sink.admit(&meta("a.csv", "v1", "1"), true).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e1", "u1b")])).await.unwrap();
    sink.write_rejects(vec![reject(3, "bad", "acme,e2,…")]).await.unwrap();
    assert!(sink.finish_file(&loaded(1, 1)).await.unwrap());
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (1, 1, 1));
    assert_eq!(w.lookup(BUCKET, "a.csv", "v1").await.unwrap(), Some(FileStatus::Loaded));
    let r = w.merge().await.unwrap();
    assert_eq!((r.files, r.rows_deleted, r.rows_inserted), (1, 2, 1));
    assert_eq!(b.target(), vec![target_row("acme", "e1", "u1b", "a.csv")]);
    let t = w.totals().await.unwrap();
    assert_eq!(
        (t.files_loaded, t.rows_loaded, t.rows_rejected, t.staging_rows, t.reject_rows, t.unbalanced_files),
        (1, 1, 1, 1, 1, 0),
        "{t:?}"
    );
    assert_eq!(
        b.ledger(),
        vec![
            ledger_row("a.csv", "v1", "replaced", (2, 2, 0), true),
            ledger_row("a.csv", "v1", "loaded", (2, 1, 1), true)
        ]
    );
    assert_eq!(b.staging(), vec![staged("a.csv", "v1", 2, "e1", "u1b")]);
    assert_eq!(b.rejects(), vec![row(&["a.csv", "v1", "3", "format", "user_email", "bad", "acme,e2,…"])]);
    assert_eq!(b.staged_objects(), Vec::<String>::new());
}

/// A version forced twice in one batch: the second admission is a duplicate of the batch's own
/// fresh load (`ledger::admit`), which alone reaches the warehouse, once.
async fn a_version_forced_twice_in_one_batch_loads_once(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    load(sink.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "e1", "u1"), ("acme", "e2", "u2")]).await;
    sink.commit().await.unwrap().unwrap();
    w.merge().await.unwrap();

    assert_eq!(sink.admit(&meta("a.csv", "v1", "1"), true).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e1", "first")])).await.unwrap();
    sink.write_rejects(vec![reject(3, "bad-1", "acme,e2,…")]).await.unwrap();
    assert!(sink.finish_file(&loaded(1, 1)).await.unwrap());
    assert_eq!(
        sink.admit(&meta("a.csv", "v1", "1"), true).await.unwrap(),
        Admission::Duplicate(FileStatus::Loaded),
        "forced again in the same batch: that batch's copy is the reload"
    );
    let report = sink.commit().await.unwrap().unwrap();
    let r = w.merge().await.unwrap();
    assert_eq!((r.files, r.rows_deleted, r.rows_inserted), (1, 2, 1));
    assert_eq!(b.target(), vec![target_row("acme", "e1", "first", "a.csv")]);
    assert_eq!(
        b.ledger(),
        vec![
            ledger_row("a.csv", "v1", "replaced", (2, 2, 0), true),
            ledger_row("a.csv", "v1", "loaded", (2, 1, 1), true)
        ]
    );
    assert_eq!(b.staging(), vec![staged("a.csv", "v1", 2, "e1", "first")]);
    assert_eq!(b.rejects(), vec![row(&["a.csv", "v1", "3", "format", "user_email", "bad-1", "acme,e2,…"])]);
    let t = w.totals().await.unwrap();
    assert_eq!((t.files_loaded, t.rows_loaded, t.rows_rejected, t.unbalanced_files), (1, 1, 1, 0), "{t:?}");
    assert_eq!(b.staged_objects(), Vec::<String>::new());
    assert_eq!(counts(&report), (1, 1, 1), "the report counts what the ledger holds");
}

/// 1,500 rejects of ~3 KB each (on Redshift more than one batch of VALUES statements holds):
/// every one recorded once, its text intact.
async fn many_large_rejects_load_exactly_once(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    let raw = format!("acme,{},\\'\"", "r".repeat(3000));
    assert_eq!(sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e1", "u1")])).await.unwrap();
    sink.write_rejects(many_rejects(3..1503, &raw)).await.unwrap();
    assert!(sink.finish_file(&loaded(1, 1500)).await.unwrap());
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (1, 1, 1500));
    let t = w.totals().await.unwrap();
    assert_eq!(
        (t.reject_rows, t.rows_read, t.rows_rejected, t.staging_rows, t.unbalanced_files),
        (1500, 1501, 1500, 1, 0),
        "{t:?}"
    );
    assert_eq!(
        b.rows("SELECT COUNT(*), COUNT(DISTINCT line), MIN(line), MAX(line) FROM wau_ingest_rejects"),
        vec![row(&["1500", "1500", "3", "1502"])]
    );
    assert_eq!(
        b.rows("SELECT value, raw_line FROM wau_ingest_rejects WHERE line = 1002"),
        vec![row(&["v\\1002'", &raw])]
    );
    assert_eq!(b.staged_objects(), Vec::<String>::new(), "the rejects' parts and manifest are deleted too");
}

/// More rejects than a Redshift batch keeps in memory (the SPILL tuning: 100): the file that
/// passes the bound spills to staging as it goes, and the commit loads every reject of the batch
/// (spilled or not) exactly once. On SQLite the same batch, streamed.
async fn rejects_beyond_the_memory_bound_load_exactly_once(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    let raw = "acme,e1,2026-11-23,\\x,\"quoted, text\",'it''s'";
    // b.csv: 60 rejects, within the bound.
    assert_eq!(sink.admit(&meta("b.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e1", "u1")])).await.unwrap();
    sink.write_rejects(many_rejects(3..63, raw)).await.unwrap();
    assert!(sink.finish_file(&loaded(1, 60)).await.unwrap());
    // a.csv: 1000 rejects in chunks of 70; the first chunk already passes the bound (60 + 70).
    assert_eq!(sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&[("acme", "e2", "u2"), ("acme", "e3", "u3")])).await.unwrap();
    for start in (4..1004).step_by(70) {
        sink.write_rejects(many_rejects(start..(start + 70).min(1004), raw)).await.unwrap();
    }
    assert!(sink.finish_file(&loaded(2, 1000)).await.unwrap());
    // c.csv: rejected whole with 30 rejects.
    assert_eq!(sink.admit(&meta("c.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rejects(many_rejects(2..32, raw)).await.unwrap();
    assert!(sink.finish_file(&rejected_whole(30, "all bad")).await.unwrap());

    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (3, 3, 1090));
    assert_eq!(
        b.rows("SELECT key, COUNT(*), COUNT(DISTINCT line), MIN(line), MAX(line) FROM wau_ingest_rejects GROUP BY key ORDER BY key"),
        vec![
            row(&["a.csv", "1000", "1000", "4", "1003"]),
            row(&["b.csv", "60", "60", "3", "62"]),
            row(&["c.csv", "30", "30", "2", "31"])
        ]
    );
    let t = w.totals().await.unwrap();
    assert_eq!(
        (
            t.files_loaded,
            t.files_rejected,
            t.rows_read,
            t.rows_loaded,
            t.rows_rejected,
            t.reject_rows,
            t.staging_rows,
            t.unbalanced_files
        ),
        (2, 1, 1093, 3, 1090, 1090, 3, 0),
        "{t:?}"
    );
    assert_eq!(
        b.rows("SELECT value, raw_line, rule, column_name, reason FROM wau_ingest_rejects WHERE key = 'a.csv' AND line = 777"),
        vec![row(&["v\\777'", raw, "format", "user_email", "not an email address"])]
    );
    assert_eq!(
        b.count(
            "SELECT COUNT(DISTINCT r.batch_id) FROM wau_ingest_rejects r JOIN wau_ingest_files f ON f.batch_id = r.batch_id"
        ),
        1
    );
    assert_eq!(b.staged_objects(), Vec::<String>::new(), "reject parts and manifests are deleted");
}

/// A file rejected whole mid-stream (`discard_file_rows`): its rows and rejects so far go, its
/// verdict (ledger row and the reject saying why) stays.
async fn a_discarded_file_keeps_only_its_verdict(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    let many: Vec<(String, String)> = (0..20).map(|i| (format!("e{i}"), format!("u{i}"))).collect();
    let rows: Vec<(&str, &str, &str)> = many.iter().map(|(e, u)| ("acme", e.as_str(), u.as_str())).collect();
    assert_eq!(load(sink.as_mut(), &meta("k.csv", "v1", "1"), &[("acme", "k1", "u1")]).await, Admission::Load);

    assert_eq!(sink.admit(&meta("b.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&rows)).await.unwrap();
    sink.write_rejects(vec![reject(30, "x", "y")]).await.unwrap();
    sink.discard_file_rows().await.unwrap();
    sink.write_rejects(vec![bomb()]).await.unwrap();
    assert!(sink.finish_file(&rejected_whole(20, "gzip_bomb: bomb")).await.unwrap());
    // The report is not asserted: SQLite's counts the discarded rows too (see the report).
    sink.commit().await.unwrap().unwrap();

    let t = w.totals().await.unwrap();
    assert_eq!(
        (
            t.files_loaded,
            t.files_rejected,
            t.rows_read,
            t.rows_rejected,
            t.staging_rows,
            t.reject_rows,
            t.unbalanced_files
        ),
        (1, 1, 21, 20, 1, 1, 0),
        "{t:?}"
    );
    assert_eq!(w.lookup(BUCKET, "b.csv", "v1").await.unwrap(), Some(FileStatus::Rejected));
    assert_eq!(
        b.ledger(),
        vec![
            ledger_row("b.csv", "v1", "rejected", (20, 0, 20), true),
            ledger_row("k.csv", "v1", "loaded", (1, 1, 0), false)
        ]
    );
    assert_eq!(b.rows("SELECT reason FROM wau_ingest_files WHERE key = 'b.csv'"), vec![row(&["gzip_bomb: bomb"])]);
    assert_eq!(b.staging(), vec![staged("k.csv", "v1", 2, "k1", "u1")]);
    assert_eq!(b.rejects(), vec![row(&["b.csv", "v1", "0", "gzip_bomb", "NULL", "NULL", "NULL"])]);
    assert_eq!(b.staged_objects(), Vec::<String>::new());
}

/// A file abandoned mid-stream (to be tried again) leaves nothing, and the same version loads
/// when it is tried again.
async fn an_abandoned_file_leaves_nothing(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    let many: Vec<(String, String)> = (0..20).map(|i| (format!("e{i}"), format!("u{i}"))).collect();
    let rows: Vec<(&str, &str, &str)> = many.iter().map(|(e, u)| ("acme", e.as_str(), u.as_str())).collect();
    assert_eq!(load(sink.as_mut(), &meta("k.csv", "v1", "1"), &[("acme", "k1", "u1")]).await, Admission::Load);

    assert_eq!(sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    sink.write_rows(chunk(&rows)).await.unwrap();
    sink.write_rejects(vec![reject(30, "x", "y")]).await.unwrap();
    sink.abandon_file().await.unwrap();
    // The report is not asserted: SQLite's counts the abandoned rows too (see the report).
    sink.commit().await.unwrap().unwrap();
    assert_eq!(w.lookup(BUCKET, "a.csv", "v1").await.unwrap(), None);
    assert_eq!(b.ledger(), vec![ledger_row("k.csv", "v1", "loaded", (1, 1, 0), false)]);
    assert_eq!(b.staging(), vec![staged("k.csv", "v1", 2, "k1", "u1")]);
    assert_eq!(b.rejects(), Vec::<Vec<String>>::new());
    assert_eq!(b.staged_objects(), Vec::<String>::new(), "an abandoned file's parts are deleted");

    // Tried again: it loads.
    assert_eq!(load(sink.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "e1", "again")]).await, Admission::Load);
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (1, 1, 0));
    assert_eq!(b.staging(), vec![staged("a.csv", "v1", 2, "e1", "again"), staged("k.csv", "v1", 2, "k1", "u1")]);
    assert_eq!(w.totals().await.unwrap().unbalanced_files, 0);
}

/// Nothing of an open batch is visible (to lookups, totals, other readers) before its commit;
/// a rolled back or dropped batch leaves nothing at all.
async fn nothing_is_visible_before_commit(b: &Backend) {
    let w = b.warehouse();
    async fn empty(b: &Backend, when: &str) {
        let w = b.warehouse();
        assert_eq!(w.lookup(BUCKET, "a.csv", "v2").await.unwrap(), None, "{when}");
        assert_eq!(w.lookup(BUCKET, "a.csv", "v1").await.unwrap(), None, "{when}");
        assert_eq!(w.lookup_stamp(BUCKET, "a.csv", "2", 100).await.unwrap(), None, "{when}");
        assert_eq!(recorded(w, 2).await, Vec::<(String, String)>::new(), "{when}");
        assert_eq!(w.totals().await.unwrap(), LedgerTotals::default(), "{when}");
        assert_eq!(b.ledger(), vec![], "{when}");
        assert_eq!(b.staging(), vec![], "{when}");
        assert_eq!(b.rejects(), Vec::<Vec<String>>::new(), "{when}");
    }
    async fn fill(sink: &mut dyn BatchSink) {
        assert_eq!(sink.admit(&meta("a.csv", "v2", "2"), false).await.unwrap(), Admission::Load);
        sink.write_rows(chunk(&[("acme", "e1", "u1"), ("acme", "e2", "u2")])).await.unwrap();
        sink.write_rejects(vec![reject(4, "x", "y")]).await.unwrap();
        assert!(sink.finish_file(&loaded(2, 1)).await.unwrap());
        assert_eq!(sink.admit(&meta("a.csv", "v1", "1"), false).await.unwrap(), Admission::Superseded);
    }

    let mut sink = w.sink().unwrap();
    fill(sink.as_mut()).await;
    empty(b, "before commit").await;
    sink.rollback().await;
    empty(b, "after rollback").await;
    assert_eq!(b.staged_objects(), Vec::<String>::new(), "a rolled back batch's parts are deleted");
    {
        let mut dropped = w.sink().unwrap();
        fill(dropped.as_mut()).await;
    }
    empty(b, "after the sink was dropped").await;
    assert_eq!(b.staged_objects(), Vec::<String>::new(), "a dropped batch's parts are deleted");

    fill(sink.as_mut()).await;
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (2, 2, 1));
    assert_eq!(w.lookup(BUCKET, "a.csv", "v2").await.unwrap(), Some(FileStatus::Loaded));
    assert_eq!(w.lookup(BUCKET, "a.csv", "v1").await.unwrap(), Some(FileStatus::Superseded));
    assert_eq!(
        b.ledger(),
        vec![
            ledger_row("a.csv", "v1", "superseded", (0, 0, 0), true),
            ledger_row("a.csv", "v2", "loaded", (3, 2, 1), false)
        ]
    );
    assert_eq!(b.rejects().len(), 1);
    assert_eq!(b.staging().len(), 2);
}

/// The merge publishes each key's row from the newest current version, removes what an overwrite
/// dropped, and a second merge changes nothing.
async fn merge_publishes_the_current_versions_and_is_idempotent(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    load(sink.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "e1", "old"), ("acme", "e2", "old")]).await;
    sink.commit().await.unwrap().unwrap();
    assert_eq!(b.target(), vec![], "not before the merge");
    let r = w.merge().await.unwrap();
    assert_eq!((r.files, r.rows_deleted, r.rows_inserted, r.event_times.len()), (1, 0, 2, 1));
    assert_eq!(b.target(), vec![target_row("acme", "e1", "old", "a.csv"), target_row("acme", "e2", "old", "a.csv")]);
    assert_eq!(w.merge().await.unwrap(), MergeReport::default(), "a second merge has nothing to do");

    // Overwrite: v2 supersedes v1 and no longer has e2; b.csv brings a key of its own.
    load(sink.as_mut(), &meta("a.csv", "v2", "2"), &[("acme", "e1", "new")]).await;
    load(sink.as_mut(), &meta("b.csv", "v1", "1"), &[("acme", "e5", "b")]).await;
    sink.commit().await.unwrap().unwrap();
    let r = w.merge().await.unwrap();
    assert_eq!((r.files, r.rows_deleted, r.rows_inserted, r.event_times.len()), (2, 2, 2, 2));
    let published = vec![target_row("acme", "e1", "new", "a.csv"), target_row("acme", "e5", "b", "b.csv")];
    assert_eq!(b.target(), published);
    let ledger = b.ledger();
    let staging = b.staging();
    assert_eq!(w.merge().await.unwrap(), MergeReport::default(), "a second merge has nothing to do");
    assert_eq!(b.target(), published);
    assert_eq!(b.ledger(), ledger);
    assert_eq!(b.staging(), staging);
    assert_eq!(staging, vec![staged("a.csv", "v2", 2, "e1", "new"), staged("b.csv", "v1", 2, "e5", "b")]);
    assert_eq!(b.count("SELECT COUNT(*) FROM wau_ingest_files WHERE merged_at IS NULL"), 0);
    assert_eq!(
        b.rows("SELECT files FROM wau_ingest_merges ORDER BY batch_watermark"),
        vec![row(&["1"]), row(&["3"])],
        "one history row per merge that did work"
    );
    let t = w.totals().await.unwrap();
    assert_eq!((t.files_loaded, t.files_superseded, t.target_rows, t.staging_rows), (2, 1, 2, 2), "{t:?}");
}

/// The case an upsert-and-delete merge gets wrong: two files hold the same key, the newer one
/// is overwritten by a version without it; the older file's row must come back.
async fn superseding_one_file_keeps_the_key_another_file_holds(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    load(sink.as_mut(), &meta("a.csv", "a1", "1"), &[("acme", "e1", "from-a")]).await;
    load(sink.as_mut(), &meta("b.csv", "b1", "2"), &[("acme", "e1", "from-b")]).await;
    sink.commit().await.unwrap().unwrap();
    w.merge().await.unwrap();
    assert_eq!(b.target(), vec![target_row("acme", "e1", "from-b", "b.csv")], "newest sequencer wins");
    load(sink.as_mut(), &meta("b.csv", "b2", "3"), &[("acme", "e9", "other")]).await;
    sink.commit().await.unwrap().unwrap();
    let r = w.merge().await.unwrap();
    assert_eq!((r.files, r.rows_deleted, r.rows_inserted), (1, 1, 2));
    let expected = vec![target_row("acme", "e1", "from-a", "a.csv"), target_row("acme", "e9", "other", "b.csv")];
    assert_eq!(b.target(), expected);
    w.merge().await.unwrap();
    assert_eq!(b.target(), expected);
    let t = w.totals().await.unwrap();
    assert_eq!(
        (t.files_loaded, t.files_superseded, t.target_rows, t.staging_rows, t.unbalanced_files),
        (2, 1, 2, 2, 0),
        "{t:?}"
    );
}

async fn weekly_active_users_counts_distinct_users_per_iso_week(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    load(sink.as_mut(), &meta("a.csv", "v1", "1"), &[("acme", "e1", "u1"), ("acme", "e2", "u1"), ("acme", "e3", "u2")])
        .await;
    load(sink.as_mut(), &meta("b.csv", "v1", "1"), &[("beta", "e1", "u1")]).await;
    sink.commit().await.unwrap().unwrap();
    assert_eq!(w.weekly_active_users("2000-01-01", None).await.unwrap(), vec![], "the view reads the target");
    w.merge().await.unwrap();
    // 2026-11-23 is the Monday of ISO week 48.
    let week = |customer: &str, users| WauRow {
        customer: customer.into(),
        iso_week: "2026-W48".into(),
        week_start: "2026-11-23".into(),
        active_users: users,
    };
    assert_eq!(w.weekly_active_users("2000-01-01", None).await.unwrap(), vec![week("acme", 2), week("beta", 1)]);
    assert_eq!(w.weekly_active_users("2026-11-23", Some("beta")).await.unwrap(), vec![week("beta", 1)]);
    assert_eq!(w.weekly_active_users("2027-01-01", None).await.unwrap(), vec![]);
}

// ------------------------------------------------------------------------------------------
// Two writers, one version.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// The second writer commits once the first writer's commit has ended.
    OneAfterTheOther,
    /// Both commits are submitted at the same moment.
    AtTheSameTime,
}

/// Reconcile's ledger side: keyset pages from a key on, whatever their size, hold every
/// (key, sequencer) recorded, none twice but for the repeats of one pair within a page, in
/// byte order of the keys — on keys where a locale's order
/// would differ (case, `-` before `/`, punctuation, non-ASCII) — and other buckets stay out.
async fn recorded_pages_hold_every_pair_once_in_byte_order(b: &Backend) {
    let w = b.warehouse();
    let keys =
        ["csv/B.csv", "csv/a-b.csv", "csv/a/x.csv", "csv/a.csv", "csv/a_b.csv", "csv/é.csv", "csv/z.csv", "csv/~"];
    let mut sink = w.sink().unwrap();
    for (i, key) in keys.iter().enumerate() {
        let event = format!("e{i}");
        assert_eq!(
            load(sink.as_mut(), &meta(key, "v1", "00000001"), &[("acme", event.as_str(), "u1")]).await,
            Admission::Load
        );
    }
    // A second version of one key, and the same sequencer twice (two versions in one second).
    load(sink.as_mut(), &meta("csv/a.csv", "v2", "00000002"), &[("acme", "e100", "u1")]).await;
    load(sink.as_mut(), &meta("csv/z.csv", "v2", "00000001"), &[("acme", "e101", "u1")]).await;
    let mut other = meta("csv/a.csv", "v9", "00000009");
    other.bucket = "another-bucket".into();
    load(sink.as_mut(), &other, &[("acme", "e102", "u1")]).await;
    sink.commit().await.unwrap();

    let mut want: Vec<(String, String)> = keys.iter().map(|k| (s(k), s("00000001"))).collect();
    want.push((s("csv/a.csv"), s("00000002")));
    want.sort();
    for limit in [1, 2, 3, 100] {
        assert_eq!(recorded(w, limit).await, want, "pages of {limit}");
    }
    let from_a: Vec<(String, String)> = want.iter().filter(|(k, _)| k.as_str() >= "csv/a.csv").cloned().collect();
    let mut page: Vec<(String, String)> = w
        .recorded_page(BUCKET, &PageStart::AtKey(s("csv/a.csv")), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key, r.sequencer))
        .collect();
    assert_eq!(page.len(), from_a.len() + 1, "csv/z.csv has two versions with one sequencer");
    page.dedup();
    assert_eq!(page, from_a);
}

/// Two writers (two sinks, each in a future of its own, run together) each load the same version `s<round>.csv`
/// (two rows, one reject) and a file of their own, round after round. Where the engine lets two
/// batches overlap, both writers admit and stage the shared version before either commits;
/// where a sink holds the write lock for its whole batch (SQLite), the two race for it.
/// Exactly one ledger row, one staged copy and one set of rejects for the shared version, and
/// both writers' own files, however the race went.
async fn two_writers_one_version(b: &Backend, timing: Timing) {
    const ROUNDS: usize = 3;
    let w = b.warehouse();
    let overlap = !b.batches_exclude_each_other();
    for round in 0..ROUNDS {
        let shared = meta(&format!("s{round}.csv"), "v1", "1");
        let (start, staged, first_done) = (Gate::new(2), Gate::new(2), Gate::new(1));
        let (start, staged, first_done, shared_ref) = (&start, &staged, &first_done, &shared);
        let writer = |n: usize| async move {
            let shared = shared_ref;
            let mut sink = w.sink().unwrap();
            start.pass().await;
            let admitted = sink.admit(shared, false).await.unwrap();
            if admitted == Admission::Load {
                sink.write_rows(chunk(&[("acme", "e1", "u1"), ("acme", "e2", "u2")])).await.unwrap();
                sink.write_rejects(vec![reject(4, "x", "y")]).await.unwrap();
                assert!(sink.finish_file(&loaded(2, 1)).await.unwrap(), "the race is settled at commit");
            } else {
                assert_eq!(admitted, Admission::Duplicate(FileStatus::Loaded), "writer {n}");
            }
            let own = meta(&format!("own{n}-{round}.csv"), "v1", "1");
            assert_eq!(load(sink.as_mut(), &own, &[("acme", &format!("w{n}"), "u9")]).await, Admission::Load);
            if overlap {
                staged.pass().await;
                if timing == Timing::OneAfterTheOther && n == 1 {
                    first_done.wait().await;
                }
            }
            let report = sink.commit().await.unwrap();
            if n == 0 {
                first_done.pass().await;
            }
            (admitted, report.map(|r| counts(&r)))
        };
        let (r0, r1) = tokio::join!(writer(0), writer(1));
        let key = &shared.key;
        let observed = (
            b.ledger().into_iter().filter(|l| &l.0 == key).collect::<Vec<_>>(),
            b.staging().into_iter().filter(|r| &r.0 == key).count(),
            b.rejects().into_iter().filter(|r| &r[0] == key).count(),
        );
        assert_eq!(
            observed,
            (vec![ledger_row(key, "v1", "loaded", (3, 2, 1), false)], 2, 1),
            "round {round}: one ledger row, one staged copy, one set of rejects of {key}; the writers' admissions \
             and reports (files, rows, rejects) were {r0:?} and {r1:?}"
        );
        let mut reports = vec![r0.1, r1.1];
        reports.sort();
        assert_eq!(reports, vec![Some((1, 1, 0)), Some((2, 3, 1))], "round {round}: only one writer recorded {key}");
        for n in 0..2 {
            assert_eq!(w.lookup(BUCKET, &format!("own{n}-{round}.csv"), "v1").await.unwrap(), Some(FileStatus::Loaded));
        }
    }
    let t = w.totals().await.unwrap();
    let rounds = ROUNDS as u64;
    assert_eq!(
        (t.files_loaded, t.rows_loaded, t.staging_rows, t.reject_rows, t.unbalanced_files),
        (3 * rounds, 4 * rounds, 4 * rounds, rounds, 0),
        "{t:?}"
    );
    assert_eq!(b.staged_objects(), Vec::<String>::new(), "the losing writer's parts are deleted too");
    w.merge().await.unwrap();
    assert_eq!(b.target().len(), 2 + 2, "e1, e2 and each writer's own row");
}

/// A barrier that gives up (panics) after a minute, so a writer that failed cannot hang the other.
struct Gate {
    needed: usize,
    arrived: tokio::sync::watch::Sender<usize>,
}

impl Gate {
    fn new(needed: usize) -> Gate {
        Gate { needed, arrived: tokio::sync::watch::Sender::new(0) }
    }

    /// Arrives, then waits for the others.
    async fn pass(&self) {
        self.arrived.send_modify(|a| *a += 1);
        self.wait().await;
    }

    /// Waits until all have arrived, without arriving.
    async fn wait(&self) {
        let mut arrived = self.arrived.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(60), arrived.wait_for(|a| *a >= self.needed)).await;
        assert!(waited.is_ok(), "the other writer did not arrive within a minute");
    }
}

async fn the_same_version_from_two_writers_one_after_the_other_is_recorded_once(b: &Backend) {
    two_writers_one_version(b, Timing::OneAfterTheOther).await;
}

async fn the_same_version_from_two_writers_at_the_same_time_is_recorded_once(b: &Backend) {
    two_writers_one_version(b, Timing::AtTheSameTime).await;
}

/// `prepare` (one round trip for a receive's versions) changes no verdict: the ledger, the open
/// batch and the commit in flight count as they do for an admission asked alone.
async fn admissions_asked_ahead_decide_as_admissions_asked_one_by_one(b: &Backend) {
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    assert_eq!(load(sink.as_mut(), &meta("a.csv", "v2", "2"), &[("acme", "e1", "u1")]).await, Admission::Load);
    assert_eq!(sink.admit(&meta("r.csv", "v1", "1"), false).await.unwrap(), Admission::Load);
    assert!(sink.finish_file(&rejected_whole(0, "gzip_bomb: bomb")).await.unwrap());
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (2, 1, 0));
    assert_eq!(load(sink.as_mut(), &meta("c.csv", "v5", "5"), &[("acme", "e2", "u2")]).await, Admission::Load);

    let asked = [
        meta("a.csv", "v1", "1"),
        meta("a.csv", "v2", "2"),
        meta("r.csv", "v1", "1"),
        meta("b.csv", "v1", "1"),
        meta("c.csv", "v4", "4"),
        meta("c.csv", "v5", "5"),
        meta("b.csv", "v1", "1"),
    ];
    sink.prepare(&asked).await.unwrap();
    let mut verdicts: Vec<Admission> = Vec::new();
    for m in &asked {
        let a = sink.admit(m, false).await.unwrap();
        if a == Admission::Load {
            sink.write_rows(chunk(&[("acme", "e3", "u3")])).await.unwrap();
            assert!(sink.finish_file(&loaded(1, 0)).await.unwrap());
        }
        verdicts.push(a);
    }
    assert_eq!(
        verdicts,
        vec![
            Admission::Superseded,
            Admission::Duplicate(FileStatus::Loaded),
            Admission::Duplicate(FileStatus::Rejected),
            Admission::Load,
            Admission::Superseded,
            Admission::Duplicate(FileStatus::Loaded),
            Admission::Duplicate(FileStatus::Loaded),
        ],
        "as asked one by one"
    );

    // Asked while the batch holding d.csv v2 commits: its files count as recorded.
    assert_eq!(load(sink.as_mut(), &meta("d.csv", "v2", "2"), &[("acme", "e4", "u4")]).await, Admission::Load);
    let pending = sink.commit_begin().await.unwrap().expect("a batch to commit");
    let ahead = [meta("d.csv", "v2", "2"), meta("d.csv", "v1", "1"), meta("e.csv", "v1", "1")];
    sink.prepare(&ahead).await.unwrap();
    assert_eq!(counts(&pending.wait().await.unwrap().unwrap()), (5, 3, 0), "c v5, a v1, c v4, b v1, d v2");
    assert_eq!(sink.admit(&ahead[0], false).await.unwrap(), Admission::Duplicate(FileStatus::Loaded));
    assert_eq!(sink.admit(&ahead[1], false).await.unwrap(), Admission::Superseded);
    assert_eq!(load(sink.as_mut(), &ahead[2], &[("acme", "e5", "u5")]).await, Admission::Load);
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (2, 1, 0));

    // Answers asked ahead do not outlive a commit: after it, the ledger is asked again.
    let mut other = w.sink().unwrap();
    other.prepare(&[meta("f.csv", "v1", "1"), meta("g.csv", "v1", "1")]).await.unwrap();
    assert_eq!(load(sink.as_mut(), &meta("f.csv", "v1", "1"), &[("acme", "e6", "u6")]).await, Admission::Load);
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (1, 1, 0));
    assert_eq!(load(other.as_mut(), &meta("g.csv", "v1", "1"), &[("acme", "e7", "u7")]).await, Admission::Load);
    assert_eq!(other.commit().await.unwrap().map(|r| r.files), Some(1));
    assert_eq!(other.admit(&meta("f.csv", "v1", "1"), false).await.unwrap(), Admission::Duplicate(FileStatus::Loaded));
    assert_eq!(other.commit().await.unwrap(), None);
    let t = w.totals().await.unwrap();
    assert_eq!((t.files_loaded, t.files_rejected, t.files_superseded, t.unbalanced_files), (7, 1, 3, 0), "{t:?}");
}

/// Every file's customer lands in the ledger as its summary says (the superseded arrival: its
/// key's), NULL when unknown; the freshness view gives each known customer its newest loaded
/// file's event time and its loaded files, and leaves out rejected files and unknown customers.
async fn the_ledger_records_each_files_customer_and_the_freshness_view_reads_it(b: &Backend) {
    use chrono::{DateTime, TimeZone, Utc};
    use wau_ingest::warehouse::sql::{Dialect, Sql, Tables};
    let w = b.warehouse();
    let mut sink = w.sink().unwrap();
    let at = |h: u32| Utc.with_ymd_and_hms(2026, 11, 23, h, 0, 0).unwrap();
    let file = |key: &str, version: &str, seq: &str, h: u32, customer: Option<&str>| {
        let mut m = meta(key, version, seq);
        m.event_time = at(h);
        m.customer = customer.map(str::to_string);
        m
    };
    async fn finish(
        sink: &mut dyn BatchSink,
        m: &wau_ingest::warehouse::FileMeta,
        rows: &[(&str, &str, &str)],
        customer: Option<&str>,
    ) {
        assert_eq!(sink.admit(m, false).await.unwrap(), Admission::Load);
        sink.write_rows(chunk(rows)).await.unwrap();
        let summary = FileSummary { customer: customer.map(str::to_string), ..loaded(rows.len() as u64, 0) };
        assert!(sink.finish_file(&summary).await.unwrap());
    }
    // From the key; from the rows; rows of two customers (unknown); a quote in a name.
    finish(sink.as_mut(), &file("csv/acme/a.csv", "v1", "1", 9, Some("acme")), &[("acme", "e1", "u1")], Some("acme"))
        .await;
    finish(sink.as_mut(), &file("g.csv", "v2", "2", 10, None), &[("globex", "e2", "u2")], Some("globex")).await;
    finish(sink.as_mut(), &file("m.csv", "v1", "1", 11, None), &[("acme", "e3", "u3"), ("globex", "e4", "u4")], None)
        .await;
    finish(sink.as_mut(), &file("q.csv", "v1", "1", 8, None), &[("o'neil", "e5", "u5")], Some("o'neil")).await;
    // Rejected whole: recorded with its key's customer, not fresh data.
    assert_eq!(
        sink.admit(&file("csv/initech/r.csv", "v1", "1", 12, Some("initech")), false).await.unwrap(),
        Admission::Load
    );
    sink.discard_file_rows().await.unwrap();
    let rejected = FileSummary { customer: Some("initech".into()), ..rejected_whole(2, "missing_column: x") };
    assert!(sink.finish_file(&rejected).await.unwrap());
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (5, 5, 2));
    // A second batch: globex's newer file, and an older version superseded on arrival.
    finish(
        sink.as_mut(),
        &file("csv/globex/h.csv", "v1", "1", 13, Some("globex")),
        &[("globex", "e6", "u6")],
        Some("globex"),
    )
    .await;
    assert_eq!(sink.admit(&file("g.csv", "v1", "1", 7, Some("globex")), false).await.unwrap(), Admission::Superseded);
    assert_eq!(counts(&sink.commit().await.unwrap().unwrap()), (2, 1, 0));

    assert_eq!(
        b.rows("SELECT key, version, status, COALESCE(customer, 'NULL') FROM wau_ingest_files ORDER BY key, version"),
        vec![
            row(&["csv/acme/a.csv", "v1", "loaded", "acme"]),
            row(&["csv/globex/h.csv", "v1", "loaded", "globex"]),
            row(&["csv/initech/r.csv", "v1", "rejected", "initech"]),
            row(&["g.csv", "v1", "superseded", "globex"]),
            row(&["g.csv", "v2", "loaded", "globex"]),
            row(&["m.csv", "v1", "loaded", "NULL"]),
            row(&["q.csv", "v1", "loaded", "o'neil"]),
        ]
    );
    assert_eq!(
        b.rows("SELECT customer, files_loaded FROM wau_ingest_customer_freshness ORDER BY customer"),
        vec![row(&["acme", "1"]), row(&["globex", "2"]), row(&["o'neil", "1"])],
        "loaded files of known customers only"
    );
    // What `run` reads (through `read_text`, as on every engine): the newest event time per customer.
    let dialect = if matches!(b.engine, Engine::Sqlite) { Dialect::Sqlite } else { Dialect::Redshift };
    let c = wau_ingest::contract::Contract::builtin();
    let t = Tables::for_contract(&c);
    let newest: Vec<(String, DateTime<Utc>)> = w
        .read_text(&Sql::new(dialect, &c, &t).customer_freshness())
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let at = wau_ingest::contract::parse_timestamp(r[1].as_deref().unwrap()).unwrap();
            (r[0].clone().unwrap(), at)
        })
        .collect();
    assert_eq!(newest, vec![(s("acme"), at(9)), (s("globex"), at(13)), (s("o'neil"), at(8))]);
}
