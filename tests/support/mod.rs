//! Shared harness for the integration tests: real SQLite files, the real binary as a child
//! process, and waiting on conditions with deadlines instead of sleeping.
#![allow(dead_code)]

pub mod batches;
pub mod warehouses;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use wau_ingest::config::Config;
use wau_ingest::pipeline::Tally;

pub const BIN: &str = env!("CARGO_BIN_EXE_wau-ingest");

/// Polls `cond` until it holds or `timeout` passes; true if it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub inbox: PathBuf,
    pub db: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        std::fs::create_dir_all(&inbox).unwrap();
        let db = dir.path().join("wau.sqlite");
        Env { dir, inbox, db }
    }

    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.source.dir = self.inbox.clone();
        c.warehouse.sqlite_path = self.db.clone();
        c
    }

    pub fn conn(&self) -> Connection {
        let c = Connection::open(&self.db).unwrap();
        c.busy_timeout(Duration::from_secs(30)).unwrap();
        c
    }

    /// Ingests every object in the inbox through the library pipeline (what `replay` does).
    pub fn ingest_all(&self, config: &Config, force: bool) -> Tally {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let contract = Arc::new(config.contract().unwrap());
            let store = wau_ingest::embedded_store(config).unwrap();
            let warehouse = wau_ingest::open_warehouse(config, &contract).unwrap();
            warehouse.migrate().await.unwrap();
            let objects = wau_ingest::object::ObjectStore::list(store.as_ref(), "").await.unwrap();
            wau_ingest::replay::ingest_objects(config, store, warehouse, contract, objects, force).await.unwrap()
        })
    }

    pub fn merge(&self, config: &Config) {
        let contract = config.contract().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { wau_ingest::open_warehouse(config, &contract).unwrap().merge().await.unwrap() });
    }

    /// The target as (customer, event_id) → (user_id, _file_key).
    pub fn target(&self) -> BTreeMap<(String, String), (String, String)> {
        let c = self.conn();
        let mut s = c.prepare("SELECT customer, event_id, user_id, _file_key FROM wau_audit_logs").unwrap();
        let rows = s.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?)))).unwrap();
        let mut out = BTreeMap::new();
        for r in rows {
            let (k, v) = r.unwrap();
            assert!(out.insert(k, v).is_none(), "target holds a key twice");
        }
        out
    }

    /// Ledger rows that count (not replaced): key → (status, read, loaded, rejected).
    pub fn ledger(&self) -> Vec<LedgerRow> {
        let c = self.conn();
        let mut s = c
            .prepare("SELECT key, version, status, rows_read, rows_loaded, rows_rejected, merged_at IS NOT NULL FROM wau_ingest_files WHERE status <> 'replaced' ORDER BY key, batch_id")
            .unwrap();
        s.query_map([], |r| {
            Ok(LedgerRow {
                key: r.get(0)?,
                version: r.get(1)?,
                status: r.get(2)?,
                rows_read: r.get(3)?,
                rows_loaded: r.get(4)?,
                rows_rejected: r.get(5)?,
                merged: r.get(6)?,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.conn().query_row(sql, [], |r| r.get(0)).unwrap_or(0)
    }

    /// Starts `wau-ingest run` on this environment with JSON logs into `log`.
    pub fn spawn_run(&self, log: &Path, extra_env: &[(&str, &str)]) -> Service {
        self.spawn_run_at(log, extra_env, free_port())
    }

    /// [`Env::spawn_run`] with its HTTP endpoints on `port` (see [`scrape`]).
    pub fn spawn_run_at(&self, log: &Path, extra_env: &[(&str, &str)], port: u16) -> Service {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["--log-format", "json", "run", "--http-listen", &format!("127.0.0.1:{port}")])
            .args(["--inbox", self.inbox.to_str().unwrap(), "--db", self.db.to_str().unwrap()])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .env("WAU_INGEST_SOURCE_POLL_INTERVAL_MS", "50")
            .env("WAU_INGEST_SOURCE_SETTLE_MS", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Service(cmd.spawn().unwrap())
    }
}

/// The `/metrics` text of the service on `port`; `None` while it does not answer.
pub fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.contains("200 OK").then_some(body)
}

/// The value of the series `series` (name and labels, as exposed) in a `/metrics` text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A running `wau-ingest run`; killed when dropped, so a failing test leaves no process behind.
pub struct Service(pub Child);

impl std::ops::Deref for Service {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Service {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub key: String,
    pub version: String,
    pub status: String,
    pub rows_read: i64,
    pub rows_loaded: i64,
    pub rows_rejected: i64,
    pub merged: bool,
}

/// One generated file version: its key and the rows it holds (event_id, user_id).
#[derive(Debug, Clone)]
pub struct Version {
    pub key: String,
    pub rows: Vec<(String, String)>,
}

/// The specification of the target, computed independently of the product: for every key's
/// current (last written) version, its rows; per (customer, event_id) the row from the newest
/// version, last line winning within a file.
pub fn expected_target(customer: &str, written: &[Version]) -> BTreeMap<(String, String), (String, String)> {
    let mut current: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, v) in written.iter().enumerate() {
        current.insert(&v.key, i);
    }
    let mut order: Vec<usize> = current.values().copied().collect();
    order.sort();
    let mut out = BTreeMap::new();
    for i in order {
        let v = &written[i];
        for (event_id, user) in &v.rows {
            out.insert((customer.to_string(), event_id.clone()), (user.clone(), v.key.clone()));
        }
    }
    out
}

/// Writes a valid CSV of `rows` for `customer` through a temporary name.
pub fn write_version(inbox: &Path, v: &Version, customer: &str) {
    let mut text = String::from(wau_ingest::demo::HEADER);
    text.push('\n');
    for (event_id, user) in &v.rows {
        text.push_str(&format!("{customer},{event_id},2026-11-23T10:00:00Z,{user},,login,,\n"));
    }
    wau_ingest::demo::write_atomically(&inbox.join(&v.key), text.as_bytes()).unwrap();
}

/// Keys of files the service logged as committed (JSON log lines).
pub fn committed_in_log(log: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "file committed")
        .filter_map(|v| v["key"].as_str().map(str::to_string))
        .collect()
}

#[cfg(unix)]
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -{sig} failed");
}

/// Waits for the child to exit within `timeout`; returns its status or None.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status
}
