//! Does the embedded merge cost follow the change or the size of the target? (Not a test.)
//! `cargo bench --bench merge_scale` or `bash bench/merge_scale.sh`.
//!
//! Merges one new file of BENCH_NEW_ROWS rows (100,000 by default, every key new) twice:
//! into an empty target, and into a target that already holds BENCH_TARGET_ROWS rows
//! (10,000,000 by default), and prints the ratio of the two merge times (goal ≤ 2).
//!
//! The large state is what loading and merging BENCH_TARGET_ROWS / BENCH_NEW_ROWS files of
//! BENCH_NEW_ROWS distinct keys each would leave, built fast: one seed file is loaded and merged
//! by the product (ingest, then `Warehouse::merge`); its rows are then copied by SQL into the
//! product's own tables (created by `Warehouse::migrate`), each copy as one more file: a ledger
//! row (status loaded, merged, its own batch), its staging rows and, since every key is
//! distinct, the same rows in the target (each row is its key's winner). Staging's indexes are
//! dropped during the copy and created again by `migrate`, as a bulk load would.
//!
//! Where the new keys land in the target's key order (BENCH_NEW_KEYS):
//!   `interleaved` (default): the new file's ids are `bench-NNNNNNNN`, the copies' are
//!     `bench-NNNNNNNN-CCC`, so each new key sits between existing ones all through the target,
//!     as random ids (UUIDv4) would;
//!   `appended`: the new ids sort after every existing one, as time-ordered ids would.
//! One customer holds every row (the case where a delete narrowed by customer is a full scan).
//!
//! The engine's own floor, in the same run: after each merge, one `INSERT OR REPLACE … SELECT`
//! of BENCH_NEW_ROWS more rows with new keys (placed as above, ids `…-NNNNNNNN-f`) from a
//! temporary table straight into the target, with the product's connection settings: no
//! staging, no ledger, no dedupe. Into a freshly migrated empty database and into the large one,
//! it prints the ratio that SQLite's keyed table alone costs (`bench/sqlite_upsert_floor.py`
//! measures the same on its own).
//!
//! Environment: BENCH_TARGET_ROWS, BENCH_NEW_ROWS, BENCH_NEW_KEYS, BENCH_ROUNDS (2), BENCH_DIR (default a
//! temporary folder; the large database takes ~5 GB per 10 M rows).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rusqlite::Connection;
use wau_ingest::config::Config;
use wau_ingest::contract::Contract;
use wau_ingest::demo::{write_csv, FileSpec};
use wau_ingest::object::ObjectStore;
use wau_ingest::warehouse::{MergeReport, Warehouse};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Writes `rows` valid rows of customer acme with ids `{prefix}-NNNNNNNN` under `inbox`.
fn generate(inbox: &Path, name: &str, prefix: &str, rows: u64, seed: u64) {
    let path = inbox.join("csv/acme").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    let spec = FileSpec {
        customer: "acme",
        week_start: NaiveDate::from_ymd_opt(2026, 11, 16).unwrap(),
        rows,
        users: 50_000,
        bad_every: 0,
        with_customer: true,
        seed,
        id_prefix: prefix,
    };
    write_csv(f, &spec).unwrap();
}

fn config(inbox: &Path, db: &Path) -> Config {
    let mut config = Config::default();
    config.source.dir = inbox.to_path_buf();
    config.warehouse.sqlite_path = db.to_path_buf();
    config
}

fn remove_db(db: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

/// Loads every file under `inbox` into `db` through the product (replay's path); returns rows loaded.
fn ingest(rt: &tokio::runtime::Runtime, inbox: &Path, db: &Path) -> (Arc<dyn Warehouse>, u64) {
    let config = config(inbox, db);
    let contract = Arc::new(config.contract().unwrap());
    let store = wau_ingest::embedded_store(&config).unwrap();
    let warehouse = wau_ingest::open_warehouse(&config, &contract).unwrap();
    rt.block_on(warehouse.migrate()).unwrap();
    let tally = rt
        .block_on(async {
            let objects = store.list("").await.unwrap();
            wau_ingest::replay::ingest_objects(&config, store, warehouse.clone(), contract, objects, false).await
        })
        .unwrap();
    (warehouse, tally.rows_loaded)
}

fn timed_merge(rt: &tokio::runtime::Runtime, warehouse: &dyn Warehouse) -> (MergeReport, Duration) {
    let started = Instant::now();
    let report = rt.block_on(warehouse.merge()).unwrap();
    (report, started.elapsed())
}

/// The engine's floor: `new_rows` generated rows whose ids (`{prefix}-NNNNNNNN-f`) no table
/// holds, upserted by one statement from a temporary table into the target, timed. The
/// connection takes the product's settings (WAL, synchronous FULL, its page cache).
fn upsert_floor(db: &Path, prefix: &str, new_rows: u64) -> Duration {
    let contract = Contract::builtin();
    let tables = wau_ingest::warehouse::sql::Tables::for_contract(&contract);
    let conn = Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -16384").unwrap();
    let cols: Vec<String> = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{}')", tables.target))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Every other column copies a row the target holds; the key is new.
    let exprs: Vec<String> = cols
        .iter()
        .map(|c| match c.as_str() {
            "event_id" => format!("printf('{prefix}-%08d-f', r.n)"),
            other => format!("t.{other}"),
        })
        .collect();
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE floor_rows AS SELECT * FROM {target} WHERE 0;
         WITH RECURSIVE r(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM r WHERE n + 1 < {new_rows})
         INSERT INTO floor_rows ({cols}) SELECT {exprs} FROM r CROSS JOIN (SELECT * FROM {target} LIMIT 1) t;",
        target = tables.target,
        cols = cols.join(", "),
        exprs = exprs.join(", "),
    ))
    .unwrap();
    let started = Instant::now();
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; INSERT OR REPLACE INTO {target} ({cols}) SELECT {cols} FROM floor_rows; COMMIT",
        target = tables.target,
        cols = cols.join(", ")
    ))
    .unwrap();
    started.elapsed()
}

fn count(conn: &Connection, table: &str) -> u64 {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get::<_, i64>(0)).unwrap() as u64
}

/// The large state (see the module docs): a seed file of `per_file` rows loaded and merged by
/// the product, then `copies` more files made of its rows by SQL. Returns the build's time.
fn build_large(rt: &tokio::runtime::Runtime, dir: &Path, db: &Path, per_file: u64, copies: u64) -> Duration {
    let started = Instant::now();
    let seed_inbox = dir.join("seed-inbox");
    let _ = std::fs::remove_dir_all(&seed_inbox);
    generate(&seed_inbox, "seed.csv", "seed", per_file, 11);
    let (warehouse, loaded) = ingest(rt, &seed_inbox, db);
    assert_eq!(loaded, per_file);
    let (merged, _) = timed_merge(rt, warehouse.as_ref());
    assert_eq!(merged.rows_inserted, per_file);
    std::fs::remove_dir_all(&seed_inbox).unwrap();

    let contract = Contract::builtin();
    let tables = wau_ingest::warehouse::sql::Tables::for_contract(&contract);
    let conn = Connection::open(db).unwrap();
    // The bench's own connection: a large cache, and no fsync until the end (a crash loses a
    // benchmark, nothing else). The product's connections keep their own settings.
    conn.execute_batch("PRAGMA cache_size = -262144; PRAGMA synchronous = OFF").unwrap();
    let seed_batch: i64 =
        conn.query_row(&format!("SELECT MAX(batch_id) FROM {}", tables.files), [], |r| r.get(0)).unwrap();
    let (st, target, files) = (&tables.staging, &tables.target, &tables.files);
    let contract_cols: Vec<&str> = contract.columns.iter().map(|c| c.name.as_str()).collect();
    let rest: Vec<&str> = contract_cols.iter().copied().filter(|c| *c != "event_id").collect();
    let ledger = wau_ingest::warehouse::sql::column_names(&wau_ingest::warehouse::sql::ledger_table::COLUMNS);
    let ledger_copy: Vec<String> = ledger
        .iter()
        .map(|c| match *c {
            "key" => "'csv/acme/bulk-' || c.n || '.csv'".to_string(),
            "version" => "'bulk-' || c.n".to_string(),
            // A sequencer of its own (each copy is the only version of its file key).
            "sequencer" => "printf('%032d', c.n)".to_string(),
            "batch_id" => format!("{seed_batch} + c.n"),
            other => format!("f.{other}"),
        })
        .collect();
    let index_names: Vec<String> = conn
        .prepare(&format!(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = '{st}' AND sql IS NOT NULL"
        ))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE copies (n INTEGER PRIMARY KEY);
         WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < {copies}) INSERT INTO copies SELECT n FROM c;"
    ))
    .unwrap();
    for name in &index_names {
        conn.execute_batch(&format!("DROP INDEX {name}")).unwrap();
    }
    conn.execute_batch(&format!(
        "INSERT INTO {files} ({}) SELECT {} FROM {files} f CROSS JOIN copies c WHERE f.batch_id = {seed_batch}",
        ledger.join(", "),
        ledger_copy.join(", ")
    ))
    .unwrap();
    // Copy n of seed row `seed-NNNNNNNN` is `bench-NNNNNNNN-CCC` (n as three digits).
    conn.execute_batch(&format!(
        "INSERT INTO {st} ({cols}, event_id, _file_key, _file_version, _line, _batch_id)
         SELECT {s_cols}, 'bench-' || substr(s.event_id, 6) || printf('-%03d', c.n), 'csv/acme/bulk-' || c.n || '.csv', 'bulk-' || c.n, s._line, {seed_batch} + c.n
         FROM {st} s CROSS JOIN copies c WHERE s._batch_id = {seed_batch}",
        cols = rest.join(", "),
        s_cols = rest.iter().map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", "),
    ))
    .unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO {target} ({cols}, _file_key, _file_version, _line, _loaded_at)
         SELECT {s_cols}, s._file_key, s._file_version, s._line, f.loaded_at FROM {st} s CROSS JOIN {files} f
         WHERE s._batch_id > {seed_batch} AND f.key = s._file_key AND f.version = s._file_version AND f.batch_id = s._batch_id
         ORDER BY s.customer, s.event_id",
        cols = contract_cols.join(", "),
        s_cols = contract_cols.iter().map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", "),
    ))
    .unwrap();
    conn.execute_batch("COMMIT").unwrap();
    drop(conn);
    // Staging's indexes again, by the product's own DDL.
    rt.block_on(warehouse.migrate()).unwrap();
    let conn = Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let rows = per_file * (copies + 1);
    assert_eq!(count(&conn, target), rows);
    assert_eq!(count(&conn, st), rows);
    started.elapsed()
}

/// Loads the new file into `db` (not timed), then times its merge.
fn measure(rt: &tokio::runtime::Runtime, inbox: &Path, db: &Path, new_rows: u64) -> (Duration, MergeReport) {
    let (warehouse, loaded) = ingest(rt, inbox, db);
    assert_eq!(loaded, new_rows);
    let conn = Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(conn);
    let (report, took) = timed_merge(rt, warehouse.as_ref());
    assert_eq!((report.rows_deleted, report.rows_inserted), (0, new_rows), "every key of the new file is new");
    (took, report)
}

/// Prints each round's (empty, large) times and their ratio; returns the best of each side.
fn print_rounds(rounds: &[(Duration, Duration)]) -> (f64, f64) {
    for (i, (e, l)) in rounds.iter().enumerate() {
        println!(
            "{:<12} {:>12.2} s {:>20.2} s {:>8.2}",
            i + 1,
            e.as_secs_f64(),
            l.as_secs_f64(),
            l.as_secs_f64() / e.as_secs_f64()
        );
    }
    let best = |f: fn(&(Duration, Duration)) -> Duration| rounds.iter().map(f).min().unwrap().as_secs_f64();
    (best(|r| r.0), best(|r| r.1))
}

fn main() {
    let target_rows = env_u64("BENCH_TARGET_ROWS", 10_000_000);
    let new_rows = env_u64("BENCH_NEW_ROWS", 100_000).max(1);
    let keys = std::env::var("BENCH_NEW_KEYS").unwrap_or_else(|_| "interleaved".into());
    let prefix = match keys.as_str() {
        "interleaved" => "bench",
        // `zz-…` sorts after `bench-…` and `seed-…`.
        "appended" => "zz",
        other => panic!("BENCH_NEW_KEYS is interleaved or appended, not {other}"),
    };
    let copies = (target_rows / new_rows).saturating_sub(1).max(1);
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = std::env::var("BENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let inbox = dir.join("new-inbox");
    let _ = std::fs::remove_dir_all(&inbox);
    generate(&inbox, "new.csv", prefix, new_rows, 5);

    let large = dir.join("large.sqlite");
    remove_db(&large);
    let built = build_large(&rt, &dir, &large, new_rows, copies);
    let held = new_rows * (copies + 1);
    let size: u64 = std::fs::metadata(&large).unwrap().len();
    println!(
        "large state: {held} rows in the target and in staging, {} files, {:.0} MB, built in {:.1} s",
        copies + 1,
        size as f64 / 1e6,
        built.as_secs_f64()
    );

    let empty = dir.join("empty.sqlite");
    let mut results = Vec::new();
    let mut floors = Vec::new();
    // BENCH_ROUNDS times each (2 by default), alternating, so neither side alone meets a cold
    // cache or a busy machine.
    let rounds = env_u64("BENCH_ROUNDS", 2).max(1);
    for round in 0..rounds {
        remove_db(&empty);
        let (into_empty, _) = measure(&rt, &inbox, &empty, new_rows);
        // The floor's empty side: a database holding only the product's tables and one row to copy.
        let floor_empty = dir.join("floor-empty.sqlite");
        remove_db(&floor_empty);
        Connection::open(&empty).unwrap().execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        std::fs::copy(&empty, &floor_empty).unwrap();
        let conn = Connection::open(&floor_empty).unwrap();
        conn.execute_batch(
            "DELETE FROM wau_audit_logs WHERE event_id <> (SELECT MIN(event_id) FROM wau_audit_logs); VACUUM",
        )
        .unwrap();
        drop(conn);
        let floor_into_empty = upsert_floor(&floor_empty, prefix, new_rows);
        remove_db(&floor_empty);
        let copy = dir.join("large-copy.sqlite");
        remove_db(&copy);
        if round == 0 {
            std::fs::rename(&large, &copy).unwrap();
        } else {
            std::fs::copy(dir.join("large-pristine.sqlite"), &copy).unwrap();
        }
        // The first round keeps a pristine copy of the large state for the next.
        if round == 0 && rounds > 1 {
            std::fs::copy(&copy, dir.join("large-pristine.sqlite")).unwrap();
        }
        let (into_large, _) = measure(&rt, &inbox, &copy, new_rows);
        let conn = Connection::open(&copy).unwrap();
        assert_eq!(count(&conn, "wau_audit_logs"), held + new_rows);
        drop(conn);
        let floor_into_large = upsert_floor(&copy, prefix, new_rows);
        remove_db(&copy);
        results.push((into_empty, into_large));
        floors.push((floor_into_empty, floor_into_large));
    }
    remove_db(&empty);
    let _ = std::fs::remove_file(dir.join("large-pristine.sqlite"));

    println!();
    println!("merge of {new_rows} new rows ({keys} keys), one customer:");
    println!("{:<12} {:>14} {:>22} {:>8}", "round", "empty target", &format!("target of {held}"), "ratio");
    let (e, l) = print_rounds(&results);
    println!("best of each: {e:.2} s and {l:.2} s; large / empty = {:.2}  (goal ≤ 2)", l / e);
    println!();
    println!(
        "the engine's own floor: INSERT OR REPLACE of {new_rows} more new rows ({keys} keys) into the keyed target:"
    );
    let (fe, fl) = print_rounds(&floors);
    println!("best of each: {fe:.2} s and {fl:.2} s; large / empty = {:.2} (SQLite alone)", fl / fe);
    println!("merge / floor: {:.2} into the empty target, {:.2} into the large one", e / fe, l / fl);
}
