//! Per-customer freshness: each customer's newest loaded file, read from the ledger's
//! `wau_ingest_customer_freshness` view into the customer gauges of [`Metrics`], at start and
//! periodically in `run`, so the gauges survive a restart and are the same on every task (each
//! commit also moves its own files' customers forward, `Metrics::customer_file`). Why and how
//! the series are capped: docs/design.md, "Per-customer freshness".

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::contract::{parse_timestamp, Contract};
use crate::metrics::Metrics;
use crate::warehouse::sql::{Dialect, Sql, Tables};
use crate::warehouse::{Warehouse, WarehouseError};

/// Reads each customer's newest loaded file from the ledger's freshness view into the
/// customer gauges (see [`Metrics::customer_files`]).
pub struct Freshness {
    pub warehouse: Arc<dyn Warehouse>,
    pub contract: Arc<Contract>,
    pub dialect: Dialect,
    pub metrics: Arc<Metrics>,
}

impl Freshness {
    /// One read of the view: how many customers it named.
    pub async fn refresh(&self) -> Result<usize, WarehouseError> {
        let tables = Tables::for_contract(&self.contract);
        let sql = Sql::new(self.dialect, &self.contract, &tables).customer_freshness();
        let rows = self.warehouse.read_text(&sql).await?;
        let newest: Vec<(String, DateTime<Utc>)> = rows
            .into_iter()
            .filter_map(|r| {
                let customer = r.first().cloned().flatten()?;
                let at = r.get(1).cloned().flatten().and_then(|t| parse_timestamp(&t))?;
                Some((customer, at))
            })
            .collect();
        let n = newest.len();
        self.metrics.customer_files(newest);
        Ok(n)
    }

    /// [`Freshness::refresh`] every `every` until shutdown; a failed read is logged and counted
    /// (`errors_total{operation="freshness"}`) and the series keep their values.
    pub fn spawn(self, every: Duration, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = self.refresh().await {
                    self.metrics.error("freshness");
                    warn!(error = %e, "reading the customers' freshness failed; the series keep their values");
                }
            }
        })
    }
}
