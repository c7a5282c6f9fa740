//! Embedded-path benchmark (not a test): `cargo bench --bench embedded` or `bash bench/embedded.sh`.
//!
//! On a generated 1,000,000-row audit log (~150 MB), in one run:
//!   raw CSV parse MB/s (csv-async byte records, nothing else),
//!   validate MB/s (the contract's rules, rows counted and dropped),
//!   Redshift staging encode: milliseconds per full chunk of gzip CSV (`stage::PartWriter`, what
//!   `RedshiftSink::write_rows` runs on the blocking pool because it takes more than ~1 ms),
//!   end-to-end embedded ingest rows/s (file → staging → ledger → merged target),
//!   two references on the same file: the sqlite3 CLI's `.import --csv` into a table with the
//!   same columns, and the naive Python loader (`bench/naive_loader.py`: csv + executemany into
//!   such a table, one transaction, no validation), and the ratios. Then peak RSS of the release
//!   binary ingesting a ~1 GiB file.
//! Goals: end-to-end ≥ 0.5× `.import` and ≥ 1.5× the naive loader (throughput: the reference's
//! seconds ÷ ours); validate ≥ 0.5× raw parse; peak RSS ≤ 100 MiB.
//!
//! Environment: BENCH_ROWS (default 1000000), BENCH_RSS_BYTES (default 1 GiB; 0 skips),
//! BENCH_DIR (default a temporary folder), BENCH_PARSE_ONLY (stop after parse and validate).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use csv_async::{AsyncReaderBuilder, ByteRecord};
use wau_ingest::config::Config;
use wau_ingest::contract::Contract;
use wau_ingest::demo::{write_csv, FileSpec};
use wau_ingest::object::ObjectStore;
use wau_ingest::validate::{validate_stream, ChunkSink, Options, Reject, RowChunk};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn generate(path: &Path, rows: u64, seed: u64) -> u64 {
    let f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let spec = FileSpec {
        customer: "acme",
        week_start: NaiveDate::from_ymd_opt(2026, 11, 16).unwrap(),
        rows,
        users: 50_000,
        bad_every: 1000,
        with_customer: true,
        seed,
        id_prefix: "bench",
    };
    write_csv(f, &spec).unwrap();
    std::fs::metadata(path).unwrap().len()
}

struct Counting(u64);

impl ChunkSink for Counting {
    async fn rows(&mut self, chunk: RowChunk) -> Result<(), String> {
        self.0 += chunk.len() as u64;
        Ok(())
    }
    async fn rejects(&mut self, _: Vec<Reject>) -> Result<(), String> {
        Ok(())
    }
}

/// Encodes every chunk into staging parts as the Redshift sink does, timing each full chunk.
struct Encoding {
    writer: wau_ingest::warehouse::stage::PartWriter,
    full_chunks: u32,
    full_chunk_time: Duration,
    bytes_out: usize,
}

impl ChunkSink for Encoding {
    async fn rows(&mut self, chunk: RowChunk) -> Result<(), String> {
        let t = Instant::now();
        let parts =
            self.writer.write_chunk(&chunk, "csv/acme/bench.csv", "sha256:bench", 1).map_err(|e| e.to_string())?;
        if chunk.len() == wau_ingest::validate::CHUNK_ROWS {
            self.full_chunks += 1;
            self.full_chunk_time += t.elapsed();
        }
        self.bytes_out += parts.iter().map(|p| p.bytes.len()).sum::<usize>();
        Ok(())
    }
    async fn rejects(&mut self, _: Vec<Reject>) -> Result<(), String> {
        Ok(())
    }
}

/// Milliseconds per full chunk (`CHUNK_ROWS` rows) of staging encode, on the default part size.
async fn encode_only(path: &Path, contract: &Contract) -> f64 {
    let f = tokio::fs::File::open(path).await.unwrap();
    let mut sink = Encoding {
        writer: wau_ingest::warehouse::stage::PartWriter::new(wau_ingest::warehouse::redshift::DEFAULT_PART_BYTES),
        full_chunks: 0,
        full_chunk_time: Duration::ZERO,
        bytes_out: 0,
    };
    validate_stream(f, &Options { contract, key: "csv/acme/bench.csv", limits: Default::default() }, &mut sink)
        .await
        .unwrap();
    let wau_ingest::warehouse::stage::FileRows::Own(last) = sink.writer.finish().unwrap() else {
        unreachable!("PartWriter::new holds no rows")
    };
    sink.bytes_out += last.map_or(0, |p| p.bytes.len());
    assert!(sink.full_chunks > 0 && sink.bytes_out > 0, "the file fills at least one chunk and encodes to bytes");
    sink.full_chunk_time.as_secs_f64() * 1000.0 / sink.full_chunks as f64
}

async fn raw_parse(path: &Path) -> u64 {
    let f = tokio::fs::File::open(path).await.unwrap();
    let mut r =
        AsyncReaderBuilder::new().has_headers(false).flexible(true).buffer_capacity(256 * 1024).create_reader(f);
    let mut rec = ByteRecord::new();
    let mut n = 0;
    while r.read_byte_record(&mut rec).await.unwrap() {
        n += 1;
    }
    n
}

async fn validate_only(path: &Path, contract: &Contract) -> u64 {
    let f = tokio::fs::File::open(path).await.unwrap();
    let mut sink = Counting(0);
    validate_stream(f, &Options { contract, key: "csv/acme/bench.csv", limits: Default::default() }, &mut sink)
        .await
        .unwrap();
    sink.0
}

async fn end_to_end(inbox: &Path, db: &Path) -> (u64, Duration, Duration) {
    let mut config = Config::default();
    config.source.dir = inbox.to_path_buf();
    config.warehouse.sqlite_path = db.to_path_buf();
    let contract = Arc::new(config.contract().unwrap());
    let store = wau_ingest::embedded_store(&config).unwrap();
    let warehouse = wau_ingest::open_warehouse(&config, &contract).unwrap();
    warehouse.migrate().await.unwrap();
    let started = Instant::now();
    let objects = store.list("").await.unwrap();
    let tally =
        wau_ingest::replay::ingest_objects(&config, store, warehouse.clone(), contract, objects, false).await.unwrap();
    let loaded = started.elapsed();
    let merged = warehouse.merge().await.unwrap();
    assert_eq!(merged.rows_inserted, tally.rows_loaded, "every row is a distinct key");
    (tally.rows_loaded, loaded, started.elapsed())
}

fn sqlite_import(path: &Path, db: &Path) -> Duration {
    let _ = std::fs::remove_file(db);
    let script = format!(
        "CREATE TABLE t (customer TEXT NOT NULL, event_id TEXT NOT NULL, event_time TEXT NOT NULL, user_id TEXT NOT NULL, user_email TEXT, event_type TEXT NOT NULL, source_ip TEXT, user_agent TEXT);\n.import --csv --skip 1 {} t\n",
        path.display()
    );
    let started = Instant::now();
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the sqlite3 CLI is needed for the reference");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "sqlite3 .import failed: {}", String::from_utf8_lossy(&out.stderr));
    took
}

/// `python3 bench/naive_loader.py FILE DB`: the loader a team writes instead (see that file).
fn naive_loader(path: &Path, db: &Path, rows: u64) -> Duration {
    let _ = std::fs::remove_file(db);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/naive_loader.py");
    let started = Instant::now();
    let out = Command::new("python3").arg(&script).arg(path).arg(db).output().expect("python3 is needed");
    let took = started.elapsed();
    assert!(out.status.success(), "naive loader failed: {}", String::from_utf8_lossy(&out.stderr));
    let inserted: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(inserted, rows, "the naive loader inserts every row, bad ones too");
    took
}

/// Runs `cmd` to completion, sampling its peak RSS (VmHWM) as it goes; returns bytes.
fn run_sampling_rss(cmd: &mut Command) -> u64 {
    let mut child = cmd.stdout(std::process::Stdio::null()).spawn().unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path) {
            if let Some(v) = s.lines().find(|l| l.starts_with("VmHWM:")) {
                peak_kib = peak_kib.max(v.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0));
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{cmd:?} failed");
            return peak_kib * 1024;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Peak RSS of the release binary loading `file` (replay) and then merging it: (load, merge, seconds).
fn peak_rss(bin: &Path, dir: &Path, file: &Path) -> (u64, u64, Duration) {
    let db = dir.join("rss.sqlite");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let started = Instant::now();
    let load =
        run_sampling_rss(Command::new(bin).args(["--db", db.to_str().unwrap(), "replay", file.to_str().unwrap()]));
    let merge = run_sampling_rss(Command::new(bin).args(["--db", db.to_str().unwrap(), "merge"]));
    (load, merge, started.elapsed())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn main() {
    // `cargo bench` passes --bench; this harness takes no arguments.
    let rows = env_u64("BENCH_ROWS", 1_000_000);
    let rss_bytes = env_u64("BENCH_RSS_BYTES", 1 << 30);
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = std::env::var("BENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let inbox = dir.join("inbox");
    let _ = std::fs::remove_dir_all(&inbox);
    std::fs::create_dir_all(inbox.join("csv/acme")).unwrap();
    let file = inbox.join("csv/acme/bench.csv");
    let size = generate(&file, rows, 1);
    println!("input: {rows} rows, {:.1} MB ({})", mb(size), file.display());

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let contract = Contract::builtin();

    // Warm the page cache so every contender reads from memory.
    let _ = std::fs::read(&file).unwrap();

    let t = Instant::now();
    let parsed = rt.block_on(raw_parse(&file));
    let raw = t.elapsed();
    assert_eq!(parsed, rows + 1);
    let t = Instant::now();
    let valid = rt.block_on(validate_only(&file, &contract));
    let val = t.elapsed();
    let expected_valid = rows - rows / 1000;
    assert_eq!(valid, expected_valid);
    let encode_ms = rt.block_on(encode_only(&file, &contract));
    println!(
        "redshift staging encode: {encode_ms:.2} ms per chunk of {} rows (on the blocking pool when over ~1 ms)",
        wau_ingest::validate::CHUNK_ROWS
    );

    if std::env::var("BENCH_PARSE_ONLY").is_ok() {
        let (raw_mbs, val_mbs) = (mb(size) / raw.as_secs_f64(), mb(size) / val.as_secs_f64());
        println!("raw {raw_mbs:.1} MB/s, validate {val_mbs:.1} MB/s, ratio {:.2}", val_mbs / raw_mbs);
        return;
    }
    let import = sqlite_import(&file, &dir.join("import.sqlite"));
    let naive = naive_loader(&file, &dir.join("naive.sqlite"), rows);
    let db = dir.join("e2e.sqlite");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let (loaded, load_time, e2e) = rt.block_on(end_to_end(&inbox, &db));
    assert_eq!(loaded, expected_valid);

    let raw_mbs = mb(size) / raw.as_secs_f64();
    let val_mbs = mb(size) / val.as_secs_f64();
    let import_rps = rows as f64 / import.as_secs_f64();
    let naive_rps = rows as f64 / naive.as_secs_f64();
    let e2e_rps = rows as f64 / e2e.as_secs_f64();
    println!();
    println!("{:<44} {:>10} {:>14}", "measure", "seconds", "rate");
    println!("{:<44} {:>10.2} {:>9.1} MB/s", "raw CSV parse (csv-async byte records)", raw.as_secs_f64(), raw_mbs);
    println!("{:<44} {:>10.2} {:>9.1} MB/s", "validate against the contract", val.as_secs_f64(), val_mbs);
    println!("{:<44} {:>10.2} {:>9.0} rows/s", "reference: sqlite3 .import --csv", import.as_secs_f64(), import_rps);
    println!(
        "{:<44} {:>10.2} {:>9.0} rows/s",
        "reference: naive loader (csv + executemany)",
        naive.as_secs_f64(),
        naive_rps
    );
    println!(
        "{:<44} {:>10.2} {:>9.0} rows/s",
        "end-to-end: load (hash, validate, stage, ledger)",
        load_time.as_secs_f64(),
        rows as f64 / load_time.as_secs_f64()
    );
    println!("{:<44} {:>10.2} {:>9.0} rows/s", "end-to-end: load + merge into the target", e2e.as_secs_f64(), e2e_rps);
    println!();
    println!("ratios of throughput (the reference's seconds ÷ ours; > 1: ours is faster; end-to-end = load + merge):");
    println!("validate / raw parse          = {:.2}  (goal ≥ 0.5)", val_mbs / raw_mbs);
    println!("end-to-end / .import          = {:.2}  (goal ≥ 0.5)", e2e_rps / import_rps);
    println!("end-to-end / naive loader     = {:.2}  (goal ≥ 1.5)", e2e_rps / naive_rps);

    if rss_bytes > 0 {
        let big = inbox.join("csv/acme/big.csv");
        let big_rows = rss_bytes / (size / rows).max(1);
        let big_size = generate(&big, big_rows, 2);
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_wau-ingest"));
        let (load, merge, took) = peak_rss(&bin, &dir, &big);
        println!(
            "peak RSS ingesting {:.0} MiB ({big_rows} rows): load {:.1} MiB, merge {:.1} MiB  (goal ≤ 100 MiB; {:.1} s in all)",
            big_size as f64 / 1048576.0,
            load as f64 / 1048576.0,
            merge as f64 / 1048576.0,
            took.as_secs_f64()
        );
        let _ = std::fs::remove_file(&big);
    }
}
