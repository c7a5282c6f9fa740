//! SQLite's own merge (the anti-join winner selection, `Sql::merge_sqlite`) against the shared
//! SQL text (`ROW_NUMBER()`, `Sql::merge`) and against an in-memory model of DESIGN.md's
//! winner rule, on randomized histories: files whose dedupe keys overlap, keys repeated inside
//! a file, overwrites (newer sequencers, sometimes one another file already has), late older
//! versions, forced replays, several files and versions in one batch, merges in between.
//! After every merge the two targets are identical, row for row, and equal to the model.
//!
//! `WAU_DIFF_HISTORIES` and `WAU_DIFF_SEED` change the size and the seed.

mod support;

use std::collections::BTreeMap;

use support::batches::{chunk, loaded, meta};
use wau_ingest::contract::Contract;
use wau_ingest::warehouse::sqlite::SqliteWarehouse;
use wau_ingest::warehouse::{Admission, BatchSink, FileStatus, Warehouse};

/// xorshift64*: small, seeded, the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A target row as compared: (customer, event_id) → (user_id, _file_key, _file_version, _line).
type Target = BTreeMap<(String, String), (String, String, String, i64)>;

/// The current version of one file key, as the model holds it.
#[derive(Clone)]
struct Current {
    version: String,
    seq: u64,
    /// (customer, event_id, user_id) on lines 2, 3, …
    rows: Vec<(String, String, String)>,
    /// The commit that last loaded it (batch ids grow with commits).
    batch: u64,
}

fn sequencer(n: u64) -> String {
    format!("{n:016X}")
}

/// DESIGN.md's winner rule over the current versions: per dedupe key, the row of the newest
/// sequencer, then the latest batch, then the last line, then the greatest file key.
fn model(current: &BTreeMap<String, Current>) -> Target {
    type Row = (String, String, String, i64);
    type Order = (u64, u64, i64, String);
    let mut best: BTreeMap<(String, String), (Order, Row)> = BTreeMap::new();
    for (key, c) in current {
        for (i, (cust, id, user)) in c.rows.iter().enumerate() {
            let line = i as i64 + 2;
            let order = (c.seq, c.batch, line, key.clone());
            let row = (user.clone(), key.clone(), c.version.clone(), line);
            let slot = best.entry((cust.clone(), id.clone())).or_insert_with(|| (order.clone(), row.clone()));
            if order > slot.0 {
                *slot = (order, row);
            }
        }
    }
    best.into_iter().map(|(k, (_, row))| (k, row)).collect()
}

/// Every column of the target but `_loaded_at` (the merge's clock), in key order.
fn full_target(w: &SqliteWarehouse) -> Vec<Vec<String>> {
    let c = rusqlite::Connection::open(w.path()).unwrap();
    let mut s = c
        .prepare(
            "SELECT customer, event_id, event_time, user_id, COALESCE(user_email, '~'), event_type, COALESCE(source_ip, '~'), COALESCE(user_agent, '~'), _file_key, _file_version, CAST(_line AS TEXT) FROM wau_audit_logs ORDER BY customer, event_id",
        )
        .unwrap();
    let rows = s.query_map([], |r| (0..11).map(|i| r.get::<_, String>(i)).collect::<Result<Vec<_>, _>>()).unwrap();
    rows.map(Result::unwrap).collect()
}

fn target(rows: &[Vec<String>]) -> Target {
    rows.iter()
        .map(|r| ((r[0].clone(), r[1].clone()), (r[3].clone(), r[8].clone(), r[9].clone(), r[10].parse().unwrap())))
        .collect()
}

/// One history, applied to both warehouses and the model; returns the merges it checked.
async fn run_history(seed: u64, dir: &std::path::Path) -> usize {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let contract = Contract::builtin();
    let fast = SqliteWarehouse::open(&dir.join(format!("fast-{seed}.sqlite")), &contract).unwrap();
    let shared =
        SqliteWarehouse::open(&dir.join(format!("shared-{seed}.sqlite")), &contract).unwrap().with_shared_merge();
    fast.migrate().await.unwrap();
    shared.migrate().await.unwrap();
    let mut sinks: [Box<dyn BatchSink>; 2] = [fast.sink().unwrap(), shared.sink().unwrap()];

    let file_keys = 1 + rng.below(4);
    let event_ids = 1 + rng.below(8);
    let customers = 1 + rng.below(2);
    let mut current: BTreeMap<String, Current> = BTreeMap::new();
    let (mut seq, mut versions, mut merges) = (100u64, 0u64, 0usize);
    let batches = 2 + rng.below(7);
    for batch in 1..=batches {
        for _ in 0..1 + rng.below(3) {
            let key = format!("csv/acme/f{}.csv", rng.below(file_keys));
            let cur = current.get(&key).cloned();
            // A forced replay of the current version: same version, same rows, a new batch (in
            // the batch that loaded it, a duplicate of that batch's copy: `ledger::admit`).
            if let (Some(c), true) = (&cur, rng.chance(20)) {
                let m = meta(&key, &c.version, &sequencer(c.seq));
                if c.batch == batch {
                    for sink in sinks.iter_mut() {
                        let again = sink.admit(&m, true).await.unwrap();
                        assert_eq!(again, Admission::Duplicate(FileStatus::Loaded), "seed {seed}");
                    }
                    continue;
                }
                let rows: Vec<(&str, &str, &str)> =
                    c.rows.iter().map(|(a, b, u)| (a.as_str(), b.as_str(), u.as_str())).collect();
                for sink in sinks.iter_mut() {
                    assert_eq!(sink.admit(&m, true).await.unwrap(), Admission::Load, "seed {seed}");
                    sink.write_rows(chunk(&rows)).await.unwrap();
                    assert!(sink.finish_file(&loaded(rows.len() as u64, 0)).await.unwrap());
                }
                current.get_mut(&key).unwrap().batch = batch;
                continue;
            }
            versions += 1;
            let version = format!("v{versions}");
            // A late older version, an overwrite with a sequencer another file holds, or a newer one.
            let late = cur.as_ref().is_some_and(|c| c.seq > 100) && rng.chance(20);
            let s = if late {
                cur.as_ref().unwrap().seq - 1 - rng.below(cur.as_ref().unwrap().seq - 100)
            } else if cur.as_ref().is_none_or(|c| c.seq < seq) && rng.chance(30) {
                seq
            } else {
                seq += 1;
                seq
            };
            let rows: Vec<(String, String, String)> = (0..rng.below(6))
                .map(|i| {
                    (
                        format!("c{}", rng.below(customers)),
                        format!("e{}", rng.below(event_ids)),
                        format!("{version}-{}", i + 2),
                    )
                })
                .collect();
            let m = meta(&key, &version, &sequencer(s));
            let borrowed: Vec<(&str, &str, &str)> =
                rows.iter().map(|(a, b, u)| (a.as_str(), b.as_str(), u.as_str())).collect();
            let want = if late { Admission::Superseded } else { Admission::Load };
            for sink in sinks.iter_mut() {
                assert_eq!(sink.admit(&m, false).await.unwrap(), want, "seed {seed} {key} {version}");
                if want == Admission::Load {
                    sink.write_rows(chunk(&borrowed)).await.unwrap();
                    assert!(sink.finish_file(&loaded(rows.len() as u64, 0)).await.unwrap());
                }
            }
            if !late {
                current.insert(key, Current { version, seq: s, rows, batch });
            }
        }
        for sink in sinks.iter_mut() {
            sink.commit().await.unwrap();
        }
        if batch == batches || rng.chance(50) {
            let (a, b) = (fast.merge().await.unwrap(), shared.merge().await.unwrap());
            assert_eq!(
                (a.files, a.rows_deleted, a.rows_inserted),
                (b.files, b.rows_deleted, b.rows_inserted),
                "seed {seed}"
            );
            let (ta, tb) = (full_target(&fast), full_target(&shared));
            assert_eq!(ta, tb, "seed {seed}: the SQLite merge and the shared SQL differ after batch {batch}");
            assert_eq!(
                target(&ta),
                model(&current),
                "seed {seed}: the merge differs from the model after batch {batch}"
            );
            merges += 1;
        }
    }
    merges
}

#[tokio::test]
async fn the_sqlite_merge_and_the_shared_sql_publish_the_same_target() {
    let histories: u64 = std::env::var("WAU_DIFF_HISTORIES").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let seed: u64 = std::env::var("WAU_DIFF_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20261201);
    // Thousands of small durable commits: on a memory file system where there is one.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let mut merges = 0;
    for h in 0..histories {
        merges += run_history(seed.wrapping_add(h), dir.path()).await;
        for name in ["fast", "shared"] {
            for ext in ["sqlite", "sqlite-wal", "sqlite-shm"] {
                let _ = std::fs::remove_file(dir.path().join(format!("{name}-{}.{ext}", seed.wrapping_add(h))));
            }
        }
    }
    assert!(merges >= histories as usize, "every history merges at least once");
    eprintln!("{histories} histories, {merges} merges compared (seed {seed})");
}

/// The merge's time on a large load, SQLite's own winner selection against the shared text
/// (not a check: a measurement). `WAU_BENCH_ROWS` rows (1 M by default) in one file, and a
/// second, newer file that overwrites `WAU_BENCH_OVERLAP` percent of them (0 by default):
///   cargo test --release --test merge_differential -- --ignored --nocapture
#[tokio::test]
#[ignore]
async fn merge_time_fast_against_shared() {
    let n: usize = std::env::var("WAU_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let overlap: usize = std::env::var("WAU_BENCH_OVERLAP").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let dir = tempfile::tempdir().unwrap();
    let contract = Contract::builtin();
    let staged = dir.path().join("staged.sqlite");
    {
        let w = SqliteWarehouse::open(&staged, &contract).unwrap();
        w.migrate().await.unwrap();
        let mut sink = w.sink().unwrap();
        let files = [("csv/acme/a.csv", 0..n), ("csv/acme/b.csv", 0..n * overlap / 100)];
        for (i, (key, ids)) in files.into_iter().enumerate() {
            if ids.is_empty() {
                continue;
            }
            assert_eq!(sink.admit(&meta(key, "v1", &sequencer(i as u64 + 1)), false).await.unwrap(), Admission::Load);
            let ids: Vec<usize> = ids.collect();
            for part in ids.chunks(10_000) {
                let text: Vec<(String, String)> =
                    part.iter().map(|j| (format!("e{j:08}"), format!("u{i}-{}", j % 5000))).collect();
                let rows: Vec<(&str, &str, &str)> =
                    text.iter().map(|(e, u)| ("acme", e.as_str(), u.as_str())).collect();
                sink.write_rows(chunk(&rows)).await.unwrap();
            }
            assert!(sink.finish_file(&loaded(ids.len() as u64, 0)).await.unwrap());
            sink.commit().await.unwrap();
        }
        let c = rusqlite::Connection::open(&staged).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    let mut results = Vec::new();
    for (name, shared) in [
        ("shared ROW_NUMBER()", true),
        ("SQLite anti-join", false),
        ("shared ROW_NUMBER()", true),
        ("SQLite anti-join", false),
    ] {
        let path = dir.path().join(format!("{}.sqlite", results.len()));
        std::fs::copy(&staged, &path).unwrap();
        let w = SqliteWarehouse::open(&path, &contract).unwrap();
        let w = if shared { w.with_shared_merge() } else { w };
        let started = std::time::Instant::now();
        let r = w.merge().await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        eprintln!("{name}: merge of {n} rows (+{}% overwritten) in {secs:.2} s, {} inserted", overlap, r.rows_inserted);
        results.push((name, secs, full_target(&w).len()));
        drop(w);
        std::fs::remove_file(&path).unwrap();
    }
    assert!(results.windows(2).all(|p| p[0].2 == p[1].2));
}
