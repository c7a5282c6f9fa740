//! Configuration: a TOML file whose every key can be overridden from the environment.
//!
//! `WAU_INGEST_<SECTION>_<KEY>` (upper case) overrides `[section] key`, e.g.
//! `WAU_INGEST_BATCH_MAX_ROWS=50000`. With no file and no variables, everything runs on the
//! embedded default: a local `./inbox` folder and a `./wau.sqlite` file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::contract::{Contract, UnknownColumns};
use crate::object::ReadLimits;
use crate::validate::RecordLimits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("config {origin}: {reason}")]
    Invalid { origin: String, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub source: SourceConfig,
    pub warehouse: WarehouseConfig,
    pub batch: BatchConfig,
    pub merge: MergeConfig,
    pub reconcile: ReconcileConfig,
    pub http: HttpConfig,
    pub contract: ContractConfig,
    pub limits: LimitsConfig,
    pub aws: AwsConfig,
    pub metrics: MetricsConfig,
    pub catalog: CatalogConfig,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A watched local folder (the embedded default).
    Dir,
    /// An SQS queue fed by S3 event notifications.
    Sqs,
}

/// Where notifications of new files come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// `dir`: the folder to watch (also the object store root).
    pub dir: PathBuf,
    /// `dir`: how often to scan the folder.
    pub poll_interval_ms: u64,
    /// `dir`: a file is picked up once unchanged for this long (writers should still rename into place).
    pub settle_ms: u64,
    /// `sqs`: the queue URL.
    pub queue_url: String,
    /// `sqs`: receive calls (each up to 10 messages, 20 s long poll) kept in flight at once.
    pub concurrency: usize,
    /// `sqs`: the bucket the notifications are about — a name, an access point ARN or alias.
    pub bucket: String,
    /// `sqs`: the key prefix the service owns; replay and reconcile list it.
    pub prefix: String,
    /// `sqs`: visibility timeout set on receive; a heartbeat extends it while a message is worked on.
    pub visibility_timeout_secs: u64,
    /// `sqs`: long-poll wait of one receive call (0–20).
    pub wait_time_secs: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Dir,
            dir: PathBuf::from("inbox"),
            poll_interval_ms: 500,
            settle_ms: 200,
            queue_url: String::new(),
            concurrency: 2,
            bucket: String::new(),
            prefix: "csv/".into(),
            visibility_timeout_secs: 120,
            wait_time_secs: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WarehouseKind {
    Sqlite,
    Redshift,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WarehouseConfig {
    pub kind: WarehouseKind,
    /// `sqlite`: the database file.
    pub sqlite_path: PathBuf,
    /// `redshift` Serverless: the workgroup (with `database`).
    pub workgroup_name: String,
    /// `redshift` provisioned: the cluster (with `database` and `db_user` or `secret_arn`).
    pub cluster_identifier: String,
    pub database: String,
    pub db_user: String,
    pub secret_arn: String,
    /// `redshift`: where micro-batches are staged for COPY, e.g. `s3://bucket/staging/`.
    pub staging_uri: String,
    /// `redshift`: the IAM role COPY assumes to read the staging prefix.
    pub copy_role_arn: String,
}

impl Default for WarehouseConfig {
    fn default() -> Self {
        WarehouseConfig {
            kind: WarehouseKind::Sqlite,
            sqlite_path: PathBuf::from("wau.sqlite"),
            workgroup_name: String::new(),
            cluster_identifier: String::new(),
            database: "dev".into(),
            db_user: String::new(),
            secret_arn: String::new(),
            staging_uri: String::new(),
            copy_role_arn: String::new(),
        }
    }
}

/// When an open micro-batch is committed: whichever limit is reached first.
/// A file's rows are never split across batches, so a batch may pass a limit by one file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_rows: u64,
    pub max_bytes: u64,
    pub max_age_secs: u64,
    /// Writers in one `run`, each reading its own files into its own open batch (0: the
    /// default, see [`BatchConfig::writers_for`]).
    pub writers: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_rows: 100_000, max_bytes: 64 << 20, max_age_secs: 10, writers: 0 }
    }
}

impl WarehouseKind {
    /// The SQL dialect of this warehouse.
    pub fn dialect(self) -> crate::warehouse::sql::Dialect {
        match self {
            WarehouseKind::Sqlite => crate::warehouse::sql::Dialect::Sqlite,
            WarehouseKind::Redshift => crate::warehouse::sql::Dialect::Redshift,
        }
    }
}

impl BatchConfig {
    /// How many writers `run` starts. SQLite has one writer, so one. On Redshift each writer
    /// is what another task would be (its own batches, the same guarded commit, see
    /// docs/design.md): one per CPU, at least 2 and at most 4. More would not shorten a backlog
    /// (commits take the writers' lock one after another) but would lengthen the drain at
    /// shutdown (each writer commits its batch in flight and its open batch) and add commits
    /// against the Data API's quotas.
    pub fn writers_for(&self, kind: WarehouseKind) -> usize {
        match (kind, self.writers) {
            (WarehouseKind::Sqlite, _) => 1,
            (WarehouseKind::Redshift, 0) => {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                cpus.clamp(2, 4)
            }
            (WarehouseKind::Redshift, n) => n,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MergeRunner {
    /// Run the merge SQL in the service.
    Sql,
    /// Start the configured Glue job, which runs the same SQL.
    Glue,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MergeConfig {
    /// Seconds between merges in `run` (0 disables the periodic merge).
    pub interval_secs: u64,
    pub runner: MergeRunner,
    pub glue_job_name: String,
    pub glue_timeout_secs: u64,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            interval_secs: 60,
            runner: MergeRunner::Sql,
            glue_job_name: String::new(),
            glue_timeout_secs: 1800,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Daily time (UTC, `HH:MM`) at which `run` reconciles the store with the ledger; empty disables.
    pub schedule_utc: String,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig { schedule_utc: "00:00".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: "0.0.0.0:9464".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ContractConfig {
    /// The contract file; empty means the one built into the binary.
    pub path: PathBuf,
    /// Overrides the contract's `unknown_columns` (`ignore` or `reject`).
    pub unknown_columns: Option<UnknownColumns>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest decoded size of one file, in bytes.
    pub max_file_bytes: u64,
    /// Largest decoded/compressed ratio of a gzip file (decompression-bomb guard).
    pub max_gzip_ratio: u64,
    /// Largest raw size of one CSV record, in bytes: delimiters, quotes and quoted line breaks
    /// count, the record terminator does not. A longer record is rejected (`too_long`) without
    /// being held in memory and reading resumes at the next one; a longer header rejects the file.
    pub max_record_bytes: u64,
    /// Most fields in one record; more is rejected (`too_many_columns`) like an over-long record.
    pub max_columns: u64,
}

/// Ceilings of the per-record limits: past them a limit no longer bounds memory.
pub const MAX_RECORD_BYTES_CEILING: u64 = 1 << 30;
pub const MAX_COLUMNS_CEILING: u64 = 1 << 20;

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = ReadLimits::default();
        LimitsConfig {
            max_file_bytes: d.max_file_bytes,
            max_gzip_ratio: d.max_gzip_ratio,
            max_record_bytes: d.record.max_record_bytes as u64,
            max_columns: d.record.max_columns as u64,
        }
    }
}

/// AWS client settings beyond the SDK's own (`AWS_REGION`, `AWS_PROFILE`, `AWS_ENDPOINT_URL_*`, …).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Path-style S3 addressing (`endpoint/bucket/key`), for S3-compatible endpoints such as
    /// moto or MinIO. Also on whenever `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` is set.
    pub s3_force_path_style: bool,
}

/// Per-customer freshness (`wau_ingest_customer_last_file_timestamp_seconds{customer}`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Most customers with a freshness series; past it, the first ones in name order keep
    /// theirs and `wau_ingest_customer_series_left_out` counts the rest (0: none has one).
    pub max_customer_series: usize,
    /// How long one customer may send no loaded file while others do before
    /// `WauIngestCustomerSilent` fires (exported as `wau_ingest_customer_silence_window_seconds`).
    pub customer_silence_window_secs: u64,
    /// How often `run` reads the freshness series again from the ledger's
    /// `wau_ingest_customer_freshness` view (also at start), so that every task of a fleet
    /// shows every customer, whichever task loaded its files.
    pub customer_refresh_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_customer_series: crate::metrics::DEFAULT_MAX_CUSTOMER_SERIES,
            customer_silence_window_secs: crate::metrics::DEFAULT_CUSTOMER_SILENCE_WINDOW_SECS,
            customer_refresh_secs: 60,
        }
    }
}

/// The Glue Data Catalog table over the raw CSV prefix that `migrate` keeps in step with the
/// contract (as `catalog sync` does); an empty database: no catalog table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    pub database: String,
    /// The table's name; empty: the contract's table name.
    pub table: String,
    /// `s3://bucket/prefix/` of the raw files; empty: `source.bucket` and `source.prefix`.
    pub location: String,
}

pub const ENV_PREFIX: &str = "WAU_INGEST_";

impl Config {
    /// Reads `path` (or `wau-ingest.toml` if present, or defaults), then applies the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let default_path = Path::new("wau-ingest.toml");
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Io { path: p.display().to_string(), source })?,
                p.display().to_string(),
            ),
            None if default_path.exists() => (
                std::fs::read_to_string(default_path)
                    .map_err(|source| ConfigError::Io { path: default_path.display().to_string(), source })?,
                default_path.display().to_string(),
            ),
            None => (String::new(), "defaults".to_string()),
        };
        let invalid = |origin: &str, reason: String| ConfigError::Invalid { origin: origin.to_string(), reason };
        let mut value: toml::Table = toml::from_str(&text).map_err(|e| invalid(&origin, e.to_string()))?;
        // Start from the defaults so every key exists, then the file, then the environment.
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialise");
        let mut merged = defaults.clone();
        for (section, table) in value.iter_mut() {
            match (merged.get_mut(section), table) {
                (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => {
                    for (k, v) in src.iter() {
                        dst.insert(k.clone(), v.clone());
                    }
                }
                _ => return Err(invalid(&origin, format!("unknown section [{section}]"))),
            }
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            let rest = rest.to_ascii_lowercase();
            let found = merged.iter_mut().find_map(|(section, table)| {
                let key = rest.strip_prefix(&format!("{section}_"))?;
                let table = table.as_table_mut()?;
                Some((section.clone(), key.to_string(), table))
            });
            let Some((section, key, table)) = found else { continue };
            let default_value = defaults.get(&section).and_then(|t| t.get(&key));
            let typed = match default_value {
                Some(toml::Value::Integer(_)) => raw
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| invalid(&name, format!("{raw:?} is not an integer")))?,
                Some(toml::Value::Boolean(_)) => raw
                    .parse::<bool>()
                    .map(toml::Value::Boolean)
                    .map_err(|_| invalid(&name, format!("{raw:?} is not true or false")))?,
                Some(_) => toml::Value::String(raw),
                // Optional keys absent from the defaults are strings.
                None if key == "unknown_columns" => toml::Value::String(raw),
                None => continue,
            };
            table.insert(key, typed);
        }
        let config: Config =
            toml::Value::Table(merged).try_into().map_err(|e: toml::de::Error| invalid(&origin, e.to_string()))?;
        config.check().map_err(|reason| invalid(&origin, reason))?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.batch.max_rows == 0 || self.batch.max_bytes == 0 {
            return Err("batch.max_rows and batch.max_bytes must be positive".into());
        }
        if self.source.kind == SourceKind::Sqs {
            if self.source.queue_url.is_empty() || self.source.bucket.is_empty() {
                return Err("source.kind = \"sqs\" needs source.queue_url and source.bucket".into());
            }
            if self.source.wait_time_secs > 20 || self.source.visibility_timeout_secs < 2 {
                return Err(
                    "source.wait_time_secs must be at most 20 and source.visibility_timeout_secs at least 2".into()
                );
            }
        }
        if self.batch.writers > 1 && self.warehouse.kind == WarehouseKind::Sqlite {
            return Err("batch.writers: SQLite has one writer; leave it 0 or 1".into());
        }
        if self.source.concurrency == 0 {
            return Err("source.concurrency must be at least 1".into());
        }
        if self.warehouse.kind == WarehouseKind::Redshift {
            let w = &self.warehouse;
            if w.workgroup_name.is_empty() && w.cluster_identifier.is_empty() {
                return Err("warehouse.kind = \"redshift\" needs workgroup_name or cluster_identifier".into());
            }
            if w.staging_uri.is_empty() {
                return Err("warehouse.kind = \"redshift\" needs staging_uri".into());
            }
        }
        if self.merge.runner == MergeRunner::Glue && self.merge.glue_job_name.is_empty() {
            return Err("merge.runner = \"glue\" needs merge.glue_job_name".into());
        }
        if !self.reconcile.schedule_utc.is_empty() {
            parse_hhmm(&self.reconcile.schedule_utc)?;
        }
        if self.metrics.customer_silence_window_secs == 0 || self.metrics.customer_refresh_secs == 0 {
            return Err(
                "metrics.customer_silence_window_secs and metrics.customer_refresh_secs must be positive".into()
            );
        }
        let l = &self.limits;
        if !(1..=MAX_RECORD_BYTES_CEILING).contains(&l.max_record_bytes) {
            return Err(format!(
                "limits.max_record_bytes must be between 1 and {MAX_RECORD_BYTES_CEILING}, not {}",
                l.max_record_bytes
            ));
        }
        if !(1..=MAX_COLUMNS_CEILING).contains(&l.max_columns) {
            return Err(format!(
                "limits.max_columns must be between 1 and {MAX_COLUMNS_CEILING}, not {}",
                l.max_columns
            ));
        }
        Ok(())
    }

    pub fn contract(&self) -> Result<Contract, crate::contract::ContractError> {
        let mut c = if self.contract.path.as_os_str().is_empty() {
            Contract::builtin()
        } else {
            Contract::load(&self.contract.path)?
        };
        if let Some(u) = self.contract.unknown_columns {
            c.unknown_columns = u;
        }
        Ok(c)
    }

    pub fn read_limits(&self) -> ReadLimits {
        let l = &self.limits;
        ReadLimits {
            max_file_bytes: l.max_file_bytes,
            max_gzip_ratio: l.max_gzip_ratio,
            // Checked to fit (at most the ceilings) when the config was loaded.
            record: RecordLimits { max_record_bytes: l.max_record_bytes as usize, max_columns: l.max_columns as usize },
        }
    }

    pub fn max_batch_age(&self) -> Duration {
        Duration::from_secs(self.batch.max_age_secs)
    }
}

/// `HH:MM` → (hour, minute).
pub fn parse_hhmm(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a time of day HH:MM");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((h, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn defaults_are_the_embedded_setup() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.source.kind, SourceKind::Dir);
        assert_eq!(c.warehouse.kind, WarehouseKind::Sqlite);
        assert_eq!(c.batch, BatchConfig { max_rows: 100_000, max_bytes: 64 << 20, max_age_secs: 10, writers: 0 });
        assert_eq!(c.http.listen, "0.0.0.0:9464");
    }

    #[test]
    fn shipped_example_config_parses() {
        let c = Config::load_with_env(Some(Path::new("wau-ingest.example.toml")), env(&[])).unwrap();
        assert_eq!(c.merge.interval_secs, 60);
        // The example shows the defaults, the per-record limits among them.
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.metrics, MetricsConfig::default(), "the example shows the [metrics] defaults");
        assert_eq!(c.metrics.customer_silence_window_secs, 26 * 3600);
        assert_eq!(
            c.read_limits().record,
            RecordLimits { max_record_bytes: 1_048_576, max_columns: 1024 },
            "limits.max_record_bytes and limits.max_columns"
        );
    }

    #[test]
    fn environment_overrides_file_and_is_typed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[batch]\nmax_rows = 10\n[source]\ndir = \"x\"\n").unwrap();
        let c = Config::load_with_env(
            Some(&p),
            env(&[
                ("WAU_INGEST_BATCH_MAX_ROWS", "20"),
                ("WAU_INGEST_SOURCE_POLL_INTERVAL_MS", "5"),
                ("WAU_INGEST_HTTP_LISTEN", "127.0.0.1:1"),
                ("WAU_INGEST_CONTRACT_UNKNOWN_COLUMNS", "reject"),
                ("OTHER", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.batch.max_rows, 20);
        assert_eq!(c.source.dir, PathBuf::from("x"));
        assert_eq!(c.source.poll_interval_ms, 5);
        assert_eq!(c.http.listen, "127.0.0.1:1");
        assert_eq!(c.contract.unknown_columns, Some(UnknownColumns::Reject));
        let err = Config::load_with_env(Some(&p), env(&[("WAU_INGEST_BATCH_MAX_ROWS", "many")])).unwrap_err();
        assert!(err.to_string().contains("not an integer"), "{err}");
    }

    #[test]
    fn unknown_keys_and_inconsistent_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[batch]\nmax_rowz = 10\n").unwrap();
        assert!(Config::load_with_env(Some(&p), env(&[])).unwrap_err().to_string().contains("max_rowz"));
        std::fs::write(&p, "[source]\nkind = \"sqs\"\n").unwrap();
        assert!(Config::load_with_env(Some(&p), env(&[])).unwrap_err().to_string().contains("queue_url"));
        std::fs::write(&p, "[reconcile]\nschedule_utc = \"25:00\"\n").unwrap();
        assert!(Config::load_with_env(Some(&p), env(&[])).is_err());
    }

    #[test]
    fn record_limits_come_from_file_or_environment_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[limits]\nmax_record_bytes = 4096\n").unwrap();
        let c = Config::load_with_env(Some(&p), env(&[("WAU_INGEST_LIMITS_MAX_COLUMNS", "12")])).unwrap();
        assert_eq!(c.read_limits().record, RecordLimits { max_record_bytes: 4096, max_columns: 12 });
        let c = Config::load_with_env(Some(&p), env(&[("WAU_INGEST_LIMITS_MAX_RECORD_BYTES", "100")])).unwrap();
        assert_eq!(c.read_limits().record.max_record_bytes, 100);
        for (var, value) in [
            ("WAU_INGEST_LIMITS_MAX_RECORD_BYTES", "0"),
            ("WAU_INGEST_LIMITS_MAX_RECORD_BYTES", "1073741825"),
            ("WAU_INGEST_LIMITS_MAX_COLUMNS", "0"),
        ] {
            let err = Config::load_with_env(Some(&p), env(&[(var, value)])).unwrap_err().to_string();
            let key = var.trim_start_matches("WAU_INGEST_LIMITS_").to_ascii_lowercase();
            assert!(err.contains(&format!("limits.{key} must be between 1 and")), "{var}={value}: {err}");
        }
    }
}
