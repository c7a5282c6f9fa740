//! wau-ingest: exactly-once ingestion of WAU audit-log CSVs into a warehouse.
//!
//! Read `docs/design.md` first. The modules follow the flow:
//! [`source`] (what arrived) → [`object`] (read it) → [`validate`] against the [`contract`] →
//! [`pipeline`] and [`writer`] (micro-batches into the [`warehouse`], ledger in the same
//! transaction) → merge into the target ([`warehouse::sql`]), with [`replay`] for listings,
//! [`run`] for the service, [`metrics`] and [`http`] for operators.

pub mod config;
pub mod contract;
pub mod demo;
pub mod event;
pub mod http;
pub mod metrics;
pub mod object;
pub mod pipeline;
pub mod publish;
pub mod replay;
pub mod run;
pub mod source;
pub mod validate;
pub mod warehouse;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use config::{Config, SourceKind, WarehouseKind};
use contract::Contract;
use object::local::LocalStore;
use object::ObjectStore;
use warehouse::sqlite::SqliteWarehouse;
use warehouse::Warehouse;

/// Builds the store and warehouse the config names.
pub fn embedded_store(config: &Config) -> anyhow::Result<Arc<LocalStore>> {
    if config.source.kind != SourceKind::Dir {
        anyhow::bail!("source.kind = \"sqs\" needs the AWS build of wau-ingest, which this binary is not");
    }
    Ok(Arc::new(LocalStore::new(&config.source.dir)?))
}

pub fn open_warehouse(config: &Config, contract: &Contract) -> anyhow::Result<Arc<dyn Warehouse>> {
    match config.warehouse.kind {
        WarehouseKind::Sqlite => Ok(Arc::new(SqliteWarehouse::open(&config.warehouse.sqlite_path, contract)?)),
        WarehouseKind::Redshift => anyhow::bail!("warehouse.kind = \"redshift\" needs the AWS build of wau-ingest, which this binary is not"),
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

/// Everything `run` needs, on the embedded default.
pub fn setup(config: Config) -> anyhow::Result<run::Parts> {
    let contract = Arc::new(config.contract()?);
    let store = embedded_store(&config)?;
    let source = Box::new(source::dir::DirSource::new(
        (*store).clone(),
        Duration::from_millis(config.source.poll_interval_ms),
        Duration::from_millis(config.source.settle_ms),
    ));
    let warehouse = open_warehouse(&config, &contract)?;
    Ok(run::Parts {
        config,
        contract,
        store,
        source,
        warehouse,
        metrics: Arc::new(metrics::Metrics::new()),
        reconcile_prefix: String::new(),
    })
}
