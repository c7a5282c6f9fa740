//! AWS Glue: the `glue` merge runner and `catalog sync`.
//!
//! The runner starts the configured job (`deploy/glue/merge_job.py`, a Python shell job that
//! runs the same merge statements as the in-service runner, through the Data API), polls it to
//! a final state and maps Glue's answers onto merge outcomes: `ConcurrentRunsExceededException`
//! means a merge is already running (not a failure), and a run past the timeout is stopped.
//!
//! `catalog sync` writes the contract as a Glue Data Catalog table over the raw CSV prefix
//! (OpenCSVSerde, header line skipped), so Athena or Spectrum can read the files as landed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_glue::types::{Column, JobRunState, SerDeInfo, StorageDescriptor, TableInput};
use aws_sdk_glue::Client;
use tracing::{info, warn};

use crate::contract::{ColumnType, Contract};

fn describe<E: std::error::Error + 'static>(e: &E) -> String {
    aws_sdk_glue::error::DisplayErrorContext(e).to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlueOutcome {
    Succeeded {
        run_id: String,
    },
    /// The job is at its concurrency limit: a merge is running; this one is skipped.
    AlreadyRunning,
    Failed {
        run_id: String,
        state: String,
        message: String,
    },
    /// Still running at the timeout: the run was asked to stop.
    TimedOut {
        run_id: String,
    },
}

pub struct GlueRunner {
    client: Client,
    job: String,
    timeout: Duration,
    poll: Duration,
}

impl GlueRunner {
    pub fn new(client: Client, job: &str, timeout: Duration) -> GlueRunner {
        GlueRunner { client, job: job.to_string(), timeout, poll: Duration::from_secs(15) }
    }

    /// The longest wait between two GetJobRun calls (they start at 1 s and grow by half).
    pub fn with_max_poll_interval(mut self, poll: Duration) -> GlueRunner {
        self.poll = poll;
        self
    }

    /// Starts one run and waits for its end. Errors are calls that failed (the API, not the job).
    pub async fn run(&self) -> Result<GlueOutcome, String> {
        let started = Instant::now();
        let run_id = match self.client.start_job_run().job_name(&self.job).send().await {
            Ok(r) => r.job_run_id.unwrap_or_default(),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_concurrent_runs_exceeded_exception()) => {
                info!(job = %self.job, "a merge job run is already in progress; skipping this one");
                return Ok(GlueOutcome::AlreadyRunning);
            }
            Err(e) => return Err(format!("StartJobRun {}: {}", self.job, describe(&e))),
        };
        info!(job = %self.job, run_id = %run_id, "merge job started");
        let mut wait = Duration::from_secs(1).min(self.poll);
        loop {
            let r = self
                .client
                .get_job_run()
                .job_name(&self.job)
                .run_id(&run_id)
                .send()
                .await
                .map_err(|e| format!("GetJobRun {} {run_id}: {}", self.job, describe(&e)))?;
            let run = r.job_run.unwrap_or_else(|| aws_sdk_glue::types::JobRun::builder().build());
            let state = run.job_run_state.clone();
            match final_state(state.as_ref()) {
                Some(true) => return Ok(GlueOutcome::Succeeded { run_id }),
                Some(false) => {
                    let state = state.map(|s| s.as_str().to_string()).unwrap_or_default();
                    let message = run.error_message.unwrap_or_default();
                    return Ok(GlueOutcome::Failed { run_id, state, message });
                }
                None => {}
            }
            if started.elapsed() >= self.timeout {
                warn!(job = %self.job, run_id = %run_id, "merge job run past the timeout; stopping it");
                if let Err(e) = self.client.batch_stop_job_run().job_name(&self.job).job_run_ids(&run_id).send().await {
                    warn!(error = %describe(&e), "stopping the timed-out run failed");
                }
                return Ok(GlueOutcome::TimedOut { run_id });
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 3 / 2).min(self.poll);
        }
    }
}

/// Some(true) succeeded, Some(false) ended otherwise, None still going.
pub fn final_state(state: Option<&JobRunState>) -> Option<bool> {
    match state? {
        JobRunState::Succeeded => Some(true),
        JobRunState::Failed
        | JobRunState::Error
        | JobRunState::Timeout
        | JobRunState::Stopped
        | JobRunState::Expired => Some(false),
        _ => None,
    }
}

/// The Glue table for the raw CSV files under `location`. OpenCSVSerde reads every column as a
/// string, so every column is `string`; the contract type is in its comment.
pub fn table_input(contract: &Contract, table: &str, location: &str) -> TableInput {
    let columns = contract
        .columns
        .iter()
        .map(|c| {
            let ty = match c.ty {
                ColumnType::String => "string",
                ColumnType::Integer => "integer",
                ColumnType::Float => "float",
                ColumnType::Boolean => "boolean",
                ColumnType::Timestamp => "timestamp",
                ColumnType::Date => "date",
            };
            let comment = format!("contract type {ty}{}", if c.required { ", required" } else { "" });
            Column::builder().name(&c.name).r#type("string").comment(comment).build().expect("name set")
        })
        .collect::<Vec<_>>();
    let serde = SerDeInfo::builder()
        .serialization_library("org.apache.hadoop.hive.serde2.OpenCSVSerde")
        .parameters("separatorChar", ",")
        .parameters("quoteChar", "\"")
        .parameters("escapeChar", "\\")
        .build();
    let storage = StorageDescriptor::builder()
        .set_columns(Some(columns))
        .location(location)
        .input_format("org.apache.hadoop.mapred.TextInputFormat")
        .output_format("org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat")
        .serde_info(serde)
        .build();
    let params: HashMap<String, String> = [
        ("classification", "csv".to_string()),
        ("skip.header.line.count", "1".to_string()),
        ("wau_contract", contract.name.clone()),
        ("wau_contract_version", contract.version.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    TableInput::builder()
        .name(table)
        .description(format!("Raw WAU audit-log CSVs as landed, contract {} v{}", contract.name, contract.version))
        .table_type("EXTERNAL_TABLE")
        .storage_descriptor(storage)
        .set_parameters(Some(params))
        .build()
        .expect("name set")
}

/// Creates the database if needed, then creates the table or updates it. Returns "created",
/// "updated", or "unchanged" when it already is as the contract wants it.
pub async fn catalog_sync(
    client: &Client,
    contract: &Contract,
    database: &str,
    table: &str,
    location: &str,
) -> Result<&'static str, String> {
    // The deploy kit creates the database (and grants no CreateDatabase); elsewhere create it.
    match client.get_database().name(database).send().await {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|s| s.is_entity_not_found_exception()) => {
            let db = aws_sdk_glue::types::DatabaseInput::builder().name(database).build().expect("name set");
            match client.create_database().database_input(db).send().await {
                Ok(_) => info!(database, "glue database created"),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_already_exists_exception()) => {}
                Err(e) => return Err(format!("CreateDatabase {database}: {}", describe(&e))),
            }
        }
        Err(e) => return Err(format!("GetDatabase {database}: {}", describe(&e))),
    }
    let input = table_input(contract, table, location);
    // Unchanged when the table already has the columns, location and parameters wanted: no
    // UpdateTable, so a rerun (every `migrate`) adds no table version.
    match client.get_table().database_name(database).name(table).send().await {
        Ok(got) => {
            if let Some(have) = got.table() {
                // Columns by what the table input sets (a catalog may add empty fields of its own).
                let same_sd = |a: Option<&StorageDescriptor>, b: Option<&StorageDescriptor>| {
                    let cols = |d: &StorageDescriptor| {
                        d.columns()
                            .iter()
                            .map(|c| format!("{} {:?} {:?}", c.name(), c.r#type(), c.comment()))
                            .collect::<Vec<_>>()
                    };
                    a.map(|d| (cols(d), d.location())) == b.map(|d| (cols(d), d.location()))
                };
                let wanted_params = input.parameters().cloned().unwrap_or_default();
                let params_match =
                    have.parameters().is_some_and(|p| wanted_params.iter().all(|(k, v)| p.get(k) == Some(v)));
                if same_sd(have.storage_descriptor(), input.storage_descriptor()) && params_match {
                    return Ok("unchanged");
                }
            }
        }
        Err(e) if e.as_service_error().is_some_and(|s| s.is_entity_not_found_exception()) => {}
        Err(e) => return Err(format!("GetTable {database}.{table}: {}", describe(&e))),
    }
    match client.create_table().database_name(database).table_input(input.clone()).send().await {
        Ok(_) => Ok("created"),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_already_exists_exception()) => {
            client
                .update_table()
                .database_name(database)
                .table_input(input)
                .send()
                .await
                .map_err(|e| format!("UpdateTable {database}.{table}: {}", describe(&e)))?;
            Ok("updated")
        }
        Err(e) => Err(format!("CreateTable {database}.{table}: {}", describe(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_table_follows_the_contract_and_skips_the_header() {
        let c = Contract::builtin();
        let t = table_input(&c, "wau_audit_logs_csv", "s3://b/csv/");
        let sd = t.storage_descriptor().unwrap();
        let names: Vec<&str> = sd.columns().iter().map(|c| c.name()).collect();
        assert_eq!(names, c.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>());
        assert!(sd.columns().iter().all(|c| c.r#type() == Some("string")));
        assert_eq!(sd.location(), Some("s3://b/csv/"));
        assert_eq!(t.parameters().unwrap()["skip.header.line.count"], "1");
        assert_eq!(
            sd.serde_info().unwrap().serialization_library(),
            Some("org.apache.hadoop.hive.serde2.OpenCSVSerde")
        );
    }

    #[test]
    fn final_states() {
        assert_eq!(final_state(Some(&JobRunState::Succeeded)), Some(true));
        for s in [JobRunState::Failed, JobRunState::Error, JobRunState::Timeout, JobRunState::Stopped] {
            assert_eq!(final_state(Some(&s)), Some(false));
        }
        for s in [JobRunState::Starting, JobRunState::Running, JobRunState::Stopping, JobRunState::Waiting] {
            assert_eq!(final_state(Some(&s)), None);
        }
        assert_eq!(final_state(None), None);
    }
}
