//! The record of reconcile runs: how one ended, written to the warehouse
//! (`wau_ingest_reconciles`, see `sql::reconciles_table`) so that `status`, in another
//! process, can say when the last one ran and how it ended. The runs themselves are
//! `cli::ingest::reconcile` (the command) and the service's daily loop in [`crate::run`].

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::warehouse::sql::ReconcileRecord;
use crate::warehouse::Warehouse;

/// How a reconcile ended, as [`ReconcileRecord::outcome`] says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileOutcome {
    /// Everything the ledger lacked is loaded or rejected (and, for the CLI, merged).
    Ok,
    /// Some files failed transiently and are left for the next run.
    Incomplete,
    /// The listing, the load or the merge failed.
    Failed,
    /// The service's daily run: the listing is done and its objects are handed to the ingest loop.
    Listed,
}

impl ReconcileOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileOutcome::Ok => "ok",
            ReconcileOutcome::Incomplete => "incomplete",
            ReconcileOutcome::Failed => "failed",
            ReconcileOutcome::Listed => "listed",
        }
    }
}

/// Records a reconcile run in the warehouse; a failure to record is logged, not raised (the
/// reconcile itself is what matters).
pub async fn record(
    w: Arc<dyn Warehouse>,
    started_at: DateTime<Utc>,
    outcome: ReconcileOutcome,
    counts: [u64; 4],
    error: Option<String>,
) {
    let [objects_missing, files_loaded, files_rejected, files_to_retry] = counts;
    let r = ReconcileRecord {
        started_at,
        finished_at: Utc::now(),
        outcome: outcome.as_str().into(),
        objects_missing,
        files_loaded,
        files_rejected,
        files_to_retry,
        error,
    };
    match tokio::task::spawn_blocking(move || w.record_reconcile(&r)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "recording the reconcile run failed"),
        Err(e) => tracing::warn!(error = %e, "recording the reconcile run failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Contract;
    use crate::warehouse::sql::{Dialect, Sql, Tables};
    use crate::warehouse::sqlite::SqliteWarehouse;

    #[tokio::test]
    async fn a_failed_run_is_read_back_with_its_error_text_intact() {
        let dir = tempfile::tempdir().unwrap();
        let contract = Contract::builtin();
        let w = Arc::new(SqliteWarehouse::open(&dir.path().join("w.sqlite"), &contract).unwrap());
        w.migrate().unwrap();
        let started = Utc::now() - chrono::Duration::seconds(5);
        let error = r"listing s3://b/csv/: it's C:\gone".to_string();
        record(w.clone(), started, ReconcileOutcome::Failed, [0; 4], Some(error.clone())).await;
        record(w.clone(), Utc::now(), ReconcileOutcome::Listed, [3, 0, 0, 0], None).await;
        let tables = Tables::for_contract(&contract);
        let rows = w.read_text(&Sql::new(Dialect::Sqlite, &contract, &tables).last_reconcile()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0][2].as_deref(), rows[0][3].as_deref(), rows[0][7].as_deref()),
            (Some("listed"), Some("3"), None)
        );
        let all = w.read_text("SELECT outcome, error FROM wau_ingest_reconciles ORDER BY finished_at").unwrap();
        assert_eq!(all[0], [Some("failed".to_string()), Some(error)]);
    }
}
