//! wau-ingest: exactly-once ingestion of WAU audit-log CSVs into a warehouse.
//!
//! Read `docs/design.md` first. The modules follow the flow:
//! [`source`] (what arrived) → [`object`] (read it) → [`validate`] against the [`contract`] →
//! [`pipeline`] (micro-batches into the [`warehouse`], ledger in the same
//! transaction) → merge into the target ([`warehouse::sql`]), with [`replay`] for listings,
//! [`run`] for the service, [`metrics`] and [`http`] for operators, and [`cli`] for the
//! commands' workflows (the binary only parses arguments).

pub mod aws;
pub mod cli;
pub mod config;
pub mod contract;
pub mod demo;
pub mod event;
pub mod freshness;
pub mod glue;
pub mod http;
pub mod metrics;
pub mod object;
pub mod pipeline;
pub mod publish;
pub mod reconcile;
pub mod replay;
pub mod run;
pub mod selftest;
pub mod source;
pub mod validate;
pub mod warehouse;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use config::{Config, SourceKind, WarehouseKind};
use contract::Contract;
use metrics::Metrics;
use object::local::LocalStore;
use object::s3::S3Store;
use object::ObjectStore;
use warehouse::sqlite::SqliteWarehouse;
use warehouse::Warehouse;

/// The configured boundaries, built on demand. AWS clients are made only when something
/// needs them (loading the SDK's configuration may probe the instance metadata service).
pub struct Setup {
    pub config: Config,
    pub contract: Arc<Contract>,
    pub metrics: Arc<Metrics>,
    aws: tokio::sync::OnceCell<aws_config::SdkConfig>,
}

impl Setup {
    pub fn new(config: Config) -> anyhow::Result<Setup> {
        let contract = Arc::new(config.contract()?);
        Ok(Setup { config, contract, metrics: Arc::new(Metrics::new()), aws: Default::default() })
    }

    pub async fn sdk(&self) -> &aws_config::SdkConfig {
        self.aws.get_or_init(aws::sdk_config).await
    }

    pub async fn s3_store(&self, bucket: &str) -> S3Store {
        S3Store::new(aws::s3_client(self.sdk().await, &self.config.aws), bucket)
    }

    /// The store the source's notifications are about, and the prefix replay and reconcile list.
    pub async fn store(&self) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
        Ok(match self.config.source.kind {
            SourceKind::Dir => (embedded_store(&self.config)?, String::new()),
            SourceKind::Sqs => {
                (Arc::new(self.s3_store(&self.config.source.bucket).await), self.config.source.prefix.clone())
            }
        })
    }

    /// A store and prefix for a replay target: `s3://bucket/prefix` or a local path.
    pub async fn store_for(&self, target: &str) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
        match aws::s3_target(target).map_err(anyhow::Error::msg)? {
            Some((bucket, prefix)) => Ok((Arc::new(self.s3_store(&bucket).await), prefix)),
            None => store_for_path(&self.config, Path::new(target)),
        }
    }

    pub async fn warehouse(&self) -> anyhow::Result<Arc<dyn Warehouse>> {
        match self.config.warehouse.kind {
            WarehouseKind::Sqlite => Ok(Arc::new(
                SqliteWarehouse::open(&self.config.warehouse.sqlite_path, &self.contract)?
                    .with_metrics(self.metrics.clone()),
            )),
            WarehouseKind::Redshift => {
                let sdk = self.sdk().await;
                let s3 = aws::s3_client(sdk, &self.config.aws);
                let w = warehouse::redshift::RedshiftWarehouse::new(
                    &self.config.warehouse,
                    &self.contract,
                    sdk,
                    s3,
                    self.metrics.clone(),
                )?;
                Ok(Arc::new(w))
            }
        }
    }

    pub async fn source(&self) -> anyhow::Result<Box<dyn source::Source>> {
        let c = &self.config.source;
        Ok(match c.kind {
            SourceKind::Dir => Box::new(source::dir::DirSource::new(
                LocalStore::new(&c.dir)?,
                Duration::from_millis(c.poll_interval_ms),
                Duration::from_millis(c.settle_ms),
            )),
            SourceKind::Sqs => {
                let client = aws_sdk_sqs::Client::new(self.sdk().await);
                let max_receives = source::sqs::max_receive_count(&client, &c.queue_url).await;
                // Events name the bucket itself, never an access point: check names only.
                let bucket =
                    (!c.bucket.starts_with("arn:") && !c.bucket.ends_with("-s3alias")).then(|| c.bucket.clone());
                Box::new(source::sqs::SqsSource::start(
                    client,
                    source::sqs::SqsSettings {
                        queue_url: c.queue_url.clone(),
                        bucket,
                        prefix: c.prefix.clone(),
                        concurrency: c.concurrency,
                        visibility: Duration::from_secs(c.visibility_timeout_secs),
                        wait_time_secs: c.wait_time_secs as i32,
                        max_receives,
                    },
                    self.metrics.clone(),
                ))
            }
        })
    }

    /// The Glue merge runner when `merge.runner = "glue"`.
    pub async fn glue_runner(&self) -> Option<Arc<glue::GlueRunner>> {
        let m = &self.config.merge;
        if m.runner != config::MergeRunner::Glue {
            return None;
        }
        let client = aws_sdk_glue::Client::new(self.sdk().await);
        Some(Arc::new(glue::GlueRunner::new(client, &m.glue_job_name, Duration::from_secs(m.glue_timeout_secs))))
    }

    /// Everything `run` needs.
    pub async fn parts(self) -> anyhow::Result<run::Parts> {
        let (store, reconcile_prefix) = self.store().await?;
        let source = self.source().await?;
        let warehouse = self.warehouse().await?;
        let glue = self.glue_runner().await;
        Ok(run::Parts {
            contract: self.contract.clone(),
            metrics: self.metrics.clone(),
            config: self.config,
            store,
            source,
            warehouse,
            reconcile_prefix,
            glue,
        })
    }
}

/// The watched folder as a store (the embedded default).
pub fn embedded_store(config: &Config) -> anyhow::Result<Arc<LocalStore>> {
    Ok(Arc::new(LocalStore::new(&config.source.dir)?))
}

/// The SQLite warehouse the config names (the embedded default; [`Setup::warehouse`] opens any kind).
pub fn open_warehouse(config: &Config, contract: &Contract) -> anyhow::Result<Arc<dyn Warehouse>> {
    match config.warehouse.kind {
        WarehouseKind::Sqlite => Ok(Arc::new(SqliteWarehouse::open(&config.warehouse.sqlite_path, contract)?)),
        WarehouseKind::Redshift => anyhow::bail!("open the Redshift warehouse through Setup::warehouse"),
    }
}

/// A store for a replay path: the configured folder when the path lies inside it (so keys
/// and ledger identity match what `run` recorded), else the path itself as its own root.
/// Returns the store and the key prefix to list.
pub fn store_for_path(config: &Config, path: &Path) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
    let inbox = config.source.dir.canonicalize().ok();
    let target = path.canonicalize().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(inbox) = inbox.filter(|i| target.starts_with(i)) {
        let store = LocalStore::new(&inbox)?;
        let prefix = target.strip_prefix(&inbox).expect("checked").to_string_lossy().replace('\\', "/");
        let prefix = if prefix.is_empty() || target.is_file() { prefix } else { format!("{prefix}/") };
        return Ok((Arc::new(store), prefix));
    }
    if target.is_file() {
        let parent = target.parent().map(PathBuf::from).unwrap_or_default();
        let name = target.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        return Ok((Arc::new(LocalStore::new(&parent)?), name));
    }
    Ok((Arc::new(LocalStore::new(&target)?), String::new()))
}
