//! The warehouses the conformance suite (`tests/conformance.rs`) runs its cases on: the embedded
//! SQLite warehouse, and the Redshift warehouse on the Data API emulator (over PostgreSQL, with
//! COPY from the moto S3 server) in a database created at SNAPSHOT or SERIALIZABLE isolation.
//!
//! A [`Backend`] gives the case the warehouse as `&dyn Warehouse`, the runtime the case runs on
//! ([`Backend::block_on`]) and, for assertions, the rows of the tables behind it, read with SQL
//! that SQLite and PostgreSQL both accept. Everything engine-specific the cases need is here, in
//! one place.
//!
//! The emulator needs the local stack: `eval "$(scripts/local-aws.sh up)"`. Without it the
//! emulator backends print SKIPPED and the case passes, or fail when `CI` is set.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use aws_sdk_s3::config::{Credentials, Region};
use wau_ingest::config::{WarehouseConfig, WarehouseKind};
use wau_ingest::contract::Contract;
use wau_ingest::metrics::Metrics;
use wau_ingest::warehouse::redshift::RedshiftWarehouse;
use wau_ingest::warehouse::sqlite::SqliteWarehouse;
use wau_ingest::warehouse::Warehouse;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    /// The emulator, database created `ISOLATION LEVEL SNAPSHOT` (Redshift Serverless' default).
    Snapshot,
    /// The emulator, database created `ISOLATION LEVEL SERIALIZABLE`.
    Serializable,
}

impl Engine {
    fn isolation(self) -> &'static str {
        match self {
            Engine::Sqlite => "",
            Engine::Snapshot => "SNAPSHOT",
            Engine::Serializable => "SERIALIZABLE",
        }
    }
}

/// Settings of the Redshift warehouse a case needs; SQLite has nothing of the kind.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Uncompressed bytes after which a staging part is cut.
    pub part_bytes: usize,
    /// (rejects, bytes) an open batch keeps in memory before spilling them to staging.
    pub reject_memory: Option<(usize, usize)>,
}

impl Tuning {
    pub const DEFAULT: Tuning = Tuning { part_bytes: 1 << 20, reject_memory: None };
    /// Small parts: a file's rows span several.
    pub const SMALL_PARTS: Tuning = Tuning { part_bytes: 100, reject_memory: None };
    /// Parts of ~4 KB and at most 100 rejects in memory: many rejects spill to staging.
    pub const SPILL: Tuning = Tuning { part_bytes: 4096, reject_memory: Some((100, 1 << 20)) };
}

pub struct Backend {
    pub engine: Engine,
    warehouse: Arc<dyn Warehouse>,
    kind: Kind,
    /// What the case runs on (multi-thread: cases run writers side by side). Dropped last.
    rt: tokio::runtime::Runtime,
}

enum Kind {
    Sqlite { _dir: tempfile::TempDir, path: PathBuf },
    Emulator(Emulator),
}

struct Emulator {
    w: Arc<RedshiftWarehouse>,
    /// On the emulator's default database: creates and drops this case's database.
    admin: RedshiftWarehouse,
    database: String,
    s3: aws_sdk_s3::Client,
    bucket: String,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Kind::Emulator(e) = &self.kind {
            if let Err(err) = self.rt.block_on(e.admin.execute(&format!("DROP DATABASE IF EXISTS {}", e.database))) {
                eprintln!("test database {} not dropped: {err}", e.database);
            }
        }
    }
}

/// A name no other test (or earlier run) uses.
fn unique() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.write_u32(std::process::id());
    h.write_u32(N.fetch_add(1, Ordering::Relaxed));
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

impl Backend {
    /// A migrated, empty warehouse of `engine`; `None` (after printing SKIPPED) when it is an
    /// emulator engine and the local stack is not configured, a failure instead under `CI`.
    pub fn new(engine: Engine, tuning: Tuning) -> Option<Backend> {
        let contract = Contract::builtin();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        if engine == Engine::Sqlite {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wau.sqlite");
            let w = SqliteWarehouse::open(&path, &contract).unwrap();
            rt.block_on(w.migrate()).unwrap();
            return Some(Backend { engine, warehouse: Arc::new(w), kind: Kind::Sqlite { _dir: dir, path }, rt });
        }
        let vars = ["AWS_ENDPOINT_URL_REDSHIFT_DATA", "AWS_ENDPOINT_URL_S3"];
        let missing: Vec<&str> = vars.iter().copied().filter(|v| std::env::var_os(v).is_none()).collect();
        if !missing.is_empty() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the emulator backends: {missing:?} unset (run `eval \"$(scripts/local-aws.sh up)\"` first)"
            );
            eprintln!("SKIPPED ({engine:?}): the local AWS stack is not running ({missing:?} unset); run `eval \"$(scripts/local-aws.sh up)\"` first");
            return None;
        }
        let (w, admin, database, s3, bucket) = {
            let sdk = rt.block_on(
                aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(Region::new("us-east-1"))
                    .credentials_provider(Credentials::new("testing", "testing", None, None, "wau-test"))
                    .load(),
            );
            let s3 =
                aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
            let id = unique();
            let bucket = format!("wau-c-{id}");
            rt.block_on(s3.create_bucket().bucket(&bucket).send()).expect("creating the staging bucket");
            let mut cfg = WarehouseConfig {
                kind: WarehouseKind::Redshift,
                workgroup_name: "wau-test".into(),
                database: "test".into(),
                staging_uri: format!("s3://{bucket}/staging/"),
                copy_role_arn: "arn:aws:iam::123456789012:role/wau-copy".into(),
                ..WarehouseConfig::default()
            };
            let metrics = Arc::new(Metrics::new());
            let admin = RedshiftWarehouse::new(&cfg, &contract, &sdk, s3.clone(), metrics.clone()).unwrap();
            cfg.database = format!("wau_c_{}_{id}", engine.isolation().to_lowercase());
            rt.block_on(admin.execute(&format!(
                "CREATE DATABASE {} ISOLATION LEVEL {}",
                cfg.database,
                engine.isolation()
            )))
            .unwrap_or_else(|e| panic!("CREATE DATABASE … ISOLATION LEVEL {}: {e}", engine.isolation()));
            let mut w = RedshiftWarehouse::new(&cfg, &contract, &sdk, s3.clone(), metrics).unwrap();
            w = w.with_part_bytes(tuning.part_bytes);
            if let Some((rejects, bytes)) = tuning.reject_memory {
                w = w.with_reject_memory(rejects, bytes);
            }
            (Arc::new(w), admin, cfg.database, s3, bucket)
        };
        let emulator = Emulator { w: w.clone(), admin, database, s3, bucket };
        rt.block_on(w.migrate()).unwrap();
        Some(Backend { engine, warehouse: w, kind: Kind::Emulator(emulator), rt })
    }

    pub fn warehouse(&self) -> &dyn Warehouse {
        self.warehouse.as_ref()
    }

    /// Runs a case (or any future) on the backend's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Waits for `f` from synchronous code that may itself run inside a case (the assertion
    /// helpers below): on a thread of its own, on the backend's runtime.
    fn wait<F: std::future::Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        let handle = self.rt.handle();
        std::thread::scope(|s| s.spawn(|| handle.block_on(f)).join().expect("a helper thread panicked"))
    }

    /// Every row of `sql` as text, NULL as "NULL". The SQL must mean the same on SQLite and
    /// PostgreSQL (integers, text and CASE only: booleans and timestamps print differently).
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        match &self.kind {
            Kind::Sqlite { path, .. } => {
                use rusqlite::types::ValueRef;
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
                let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                let n = stmt.column_count();
                let mut rows = stmt.raw_query();
                let mut out = Vec::new();
                while let Some(r) = rows.next().unwrap() {
                    out.push(
                        (0..n)
                            .map(|i| match r.get_ref(i).unwrap() {
                                ValueRef::Null => "NULL".to_string(),
                                ValueRef::Integer(v) => v.to_string(),
                                ValueRef::Real(v) => v.to_string(),
                                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                                ValueRef::Blob(b) => format!("{b:?}"),
                            })
                            .collect(),
                    );
                }
                out
            }
            Kind::Emulator(e) => self
                .wait(e.w.query(sql))
                .unwrap_or_else(|err| panic!("{sql}: {err}"))
                .iter()
                .map(|r| r.iter().map(|c| c.text().unwrap_or_else(|| "NULL".into())).collect())
                .collect(),
        }
    }

    /// One number: the first column of the first row.
    pub fn count(&self, sql: &str) -> i64 {
        self.rows(sql)[0][0].parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Objects the warehouse keeps outside its tables (Redshift: the S3 staging prefix); a
    /// finished, rolled back or abandoned batch must leave none. SQLite keeps none, ever.
    pub fn staged_objects(&self) -> Vec<String> {
        match &self.kind {
            Kind::Sqlite { .. } => Vec::new(),
            Kind::Emulator(e) => {
                let out = self
                    .wait(e.s3.list_objects_v2().bucket(&e.bucket).prefix("staging/").send())
                    .expect("listing staging");
                out.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect()
            }
        }
    }

    /// True when a sink holds the engine's write lock from its first `admit` to its commit
    /// (SQLite's `BEGIN IMMEDIATE`): two writers' open batches then never overlap, and a second
    /// writer's `admit` waits for the first writer's commit.
    pub fn batches_exclude_each_other(&self) -> bool {
        matches!(self.kind, Kind::Sqlite { .. })
    }

    /// The ledger, every row (replaced ones too): (key, version, status, rows_read, rows_loaded,
    /// rows_rejected, merged) by key, batch and version.
    pub fn ledger(&self) -> Vec<(String, String, String, i64, i64, i64, bool)> {
        self.rows(
            "SELECT key, version, status, rows_read, rows_loaded, rows_rejected, \
             CASE WHEN merged_at IS NULL THEN 0 ELSE 1 END FROM wau_ingest_files ORDER BY key, batch_id, version",
        )
        .into_iter()
        .map(|r| {
            let n = |i: usize| r[i].parse::<i64>().unwrap();
            (r[0].clone(), r[1].clone(), r[2].clone(), n(3), n(4), n(5), n(6) == 1)
        })
        .collect()
    }

    /// Staging as (_file_key, _file_version, _line, event_id, user_id) in that order.
    pub fn staging(&self) -> Vec<(String, String, i64, String, String)> {
        self.rows(
            "SELECT _file_key, _file_version, _line, event_id, user_id FROM wau_audit_logs_staging \
             ORDER BY _file_key, _file_version, _line",
        )
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].parse().unwrap(), r[3].clone(), r[4].clone()))
        .collect()
    }

    /// The target as (customer, event_id, user_id, _file_key) by customer and event_id.
    pub fn target(&self) -> Vec<(String, String, String, String)> {
        self.rows("SELECT customer, event_id, user_id, _file_key FROM wau_audit_logs ORDER BY customer, event_id")
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()))
            .collect()
    }

    /// Rejects as (key, version, line, rule, column_name, value, raw_line) by key, version, line.
    pub fn rejects(&self) -> Vec<Vec<String>> {
        self.rows(
            "SELECT key, version, line, rule, column_name, value, raw_line FROM wau_ingest_rejects \
             ORDER BY key, version, line",
        )
    }
}
