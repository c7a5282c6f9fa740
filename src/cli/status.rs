//! `wau-ingest status`: one screen for an operator, from another process than `run`.
//!
//! Everything comes from where the service leaves it: the source (SQS queue depths and the
//! DLQ's; on the folder source, the files the ledger does not hold) and the warehouse (merge
//! history, reconcile runs, the ledger and the rejects table). Nothing here writes, except the
//! idempotent `migrate` every warehouse command runs first.

use aws_sdk_sqs::types::QueueAttributeName;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use std::fmt;

use crate::config::SourceKind;
use crate::contract::{parse_timestamp, Contract};
use crate::source::sqs::parse_dead_letter_target;
use crate::warehouse::sql::{Dialect, Sql, Tables};
use crate::warehouse::{Warehouse, WarehouseError};
use crate::Setup;

/// How far back the per-customer and reject sections look.
pub const WINDOW_HOURS: i64 = 24;
/// Reject rules listed.
pub const TOP_RULES: u32 = 5;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub generated_at: String,
    pub backlog: Backlog,
    pub last_merge: Option<LastMerge>,
    pub last_reconcile: Option<LastReconcile>,
    pub unmerged: Unmerged,
    /// Since `generated_at` minus [`WINDOW_HOURS`].
    pub window_since: String,
    pub customers: Vec<CustomerDay>,
    /// Every customer the ledger knows, most silent first (the freshness view).
    pub freshness: Vec<CustomerFreshness>,
    pub top_reject_rules: Vec<RuleCount>,
}

/// One row of `wau_ingest_customer_freshness`: a customer's newest loaded file, all time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerFreshness {
    pub customer: String,
    /// Event time of its newest loaded file (what `WauIngestCustomerSilent` watches).
    pub last_event_at: Option<String>,
    pub last_loaded_at: String,
    pub files_loaded: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Backlog {
    /// `GetQueueAttributes` of the queue and of the DLQ its RedrivePolicy names.
    Sqs { queue_url: String, visible: u64, in_flight: u64, dlq: Option<Dlq> },
    /// Files in the folder whose version the ledger does not hold.
    Folder { dir: String, pending_files: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dlq {
    pub arn: String,
    pub visible: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastMerge {
    pub merged_at: String,
    pub files: u64,
    /// Not recorded by a merge on Redshift (its statements' row counts are not read back).
    pub rows_deleted: Option<u64>,
    pub rows_inserted: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastReconcile {
    pub started_at: String,
    pub finished_at: String,
    pub outcome: String,
    pub objects_missing: u64,
    pub files_loaded: u64,
    pub files_rejected: u64,
    pub files_to_retry: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unmerged {
    pub files: u64,
    pub oldest_loaded_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerDay {
    pub customer: String,
    pub files: u64,
    pub last_file: String,
    pub last_loaded_at: String,
    pub rows_read: u64,
    pub rows_rejected: u64,
    /// rows_rejected / rows_read; none without rows.
    pub reject_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleCount {
    pub rule: String,
    pub rejects: u64,
    pub example: RejectExample,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectExample {
    pub key: String,
    pub line: u64,
    pub column: Option<String>,
    pub reason: String,
    pub value: Option<String>,
}

/// The status now, of the configured source and warehouse.
pub async fn gather(cx: &Setup) -> anyhow::Result<Status> {
    let now = Utc::now();
    let warehouse = cx.warehouse().await?;
    warehouse.migrate().await?;
    let backlog = match cx.config.source.kind {
        SourceKind::Sqs => {
            queue_backlog(&aws_sdk_sqs::Client::new(cx.sdk().await), &cx.config.source.queue_url).await?
        }
        SourceKind::Dir => {
            let (store, prefix) = cx.store().await?;
            // Counted as the reconcile finds them: a streaming join, nothing held.
            let found = crate::reconcile::missing(store.as_ref(), warehouse.clone(), &prefix);
            let pending = found
                .objects
                .try_fold(0u64, |n, _| async move { Ok(n + 1) })
                .await
                .map_err(|e| anyhow::anyhow!("listing {}: {e}", cx.config.source.dir.display()))?;
            Backlog::Folder { dir: cx.config.source.dir.display().to_string(), pending_files: pending }
        }
    };
    let dialect = cx.config.warehouse.kind.dialect();
    let from_warehouse = read_warehouse(warehouse.as_ref(), &cx.contract, dialect, now).await?;
    Ok(Status { generated_at: now.to_rfc3339(), backlog, ..from_warehouse })
}

async fn queue_backlog(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> anyhow::Result<Backlog> {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("GetQueueAttributes {queue_url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)))?
        .attributes
        .unwrap_or_default();
    let number = |a: &QueueAttributeName| attrs.get(a).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let dlq = match attrs.get(&QueueAttributeName::RedrivePolicy).and_then(|p| parse_dead_letter_target(p)) {
        None => None,
        Some(arn) => {
            // arn:aws:sqs:REGION:ACCOUNT:NAME
            let parts: Vec<&str> = arn.split(':').collect();
            let (Some(account), Some(name)) = (parts.get(4), parts.get(5)) else {
                anyhow::bail!("the redrive policy of {queue_url} names {arn:?}, not a queue ARN");
            };
            let url = sqs
                .get_queue_url()
                .queue_name(*name)
                .queue_owner_aws_account_id(*account)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("GetQueueUrl {arn}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)))?
                .queue_url
                .unwrap_or_default();
            let dlq_attrs = sqs
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("GetQueueAttributes {url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e))
                })?
                .attributes
                .unwrap_or_default();
            let visible = dlq_attrs
                .get(&QueueAttributeName::ApproximateNumberOfMessages)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            Some(Dlq { arn, visible })
        }
    };
    Ok(Backlog::Sqs {
        queue_url: queue_url.to_string(),
        visible: number(&QueueAttributeName::ApproximateNumberOfMessages),
        in_flight: number(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        dlq,
    })
}

fn num(v: &Option<String>) -> u64 {
    v.as_deref().and_then(|s| s.trim().parse::<f64>().ok()).map_or(0, |f| f.max(0.0) as u64)
}

fn text(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

/// A file's customer for `status`: what the ledger records ([`Sql::file_customer`]; for rows
/// recorded before the ledger had the column, what its rows name), else what its key names
/// (the contract's pattern), else `?`.
pub fn file_customer(from_rows: Option<String>, key: &str, contract: &Contract) -> String {
    from_rows.filter(|c| !c.is_empty()).or_else(|| contract.customer_from_key(key)).unwrap_or_else(|| "?".into())
}

/// The warehouse's part of the status.
pub async fn read_warehouse(
    w: &dyn Warehouse,
    contract: &Contract,
    dialect: Dialect,
    now: DateTime<Utc>,
) -> Result<Status, WarehouseError> {
    let tables = Tables::for_contract(contract);
    let sql = Sql::new(dialect, contract, &tables);
    let since = now - chrono::Duration::hours(WINDOW_HOURS);

    let last_merge = w.read_text(&sql.last_merge()).await?.first().map(|r| LastMerge {
        merged_at: text(&r[0]),
        files: num(&r[1]),
        rows_deleted: r[2].as_ref().map(|_| num(&r[2])),
        rows_inserted: r[3].as_ref().map(|_| num(&r[3])),
    });
    let last_reconcile = w.read_text(&sql.last_reconcile()).await?.first().map(|r| LastReconcile {
        started_at: text(&r[0]),
        finished_at: text(&r[1]),
        outcome: text(&r[2]),
        objects_missing: num(&r[3]),
        files_loaded: num(&r[4]),
        files_rejected: num(&r[5]),
        files_to_retry: num(&r[6]),
        error: r[7].clone(),
    });
    let unmerged = w
        .read_text(&sql.unmerged_files())
        .await?
        .first()
        .map(|r| Unmerged { files: num(&r[0]), oldest_loaded_at: r[1].clone() })
        .unwrap_or(Unmerged { files: 0, oldest_loaded_at: None });

    // Oldest first, so the last file seen of a customer is its latest.
    let mut customers: Vec<CustomerDay> = Vec::new();
    for r in w.read_text(&sql.files_since(since)).await? {
        let key = text(&r[0]);
        let customer = file_customer(r[5].clone(), &key, contract);
        let i = match customers.iter().position(|c| c.customer == customer) {
            Some(i) => i,
            None => {
                customers.push(CustomerDay {
                    customer,
                    files: 0,
                    last_file: String::new(),
                    last_loaded_at: String::new(),
                    rows_read: 0,
                    rows_rejected: 0,
                    reject_rate: None,
                });
                customers.len() - 1
            }
        };
        let c = &mut customers[i];
        c.files += 1;
        c.last_file = key;
        c.last_loaded_at = text(&r[2]);
        c.rows_read += num(&r[3]);
        c.rows_rejected += num(&r[4]);
    }
    for c in &mut customers {
        c.reject_rate = (c.rows_read > 0).then(|| c.rows_rejected as f64 / c.rows_read as f64);
    }
    customers.sort_by(|a, b| a.customer.cmp(&b.customer));

    let mut freshness: Vec<CustomerFreshness> = w
        .read_text(&sql.customer_freshness())
        .await?
        .iter()
        .map(|r| CustomerFreshness {
            customer: text(&r[0]),
            last_event_at: r[1].clone(),
            last_loaded_at: text(&r[2]),
            files_loaded: num(&r[3]),
        })
        .collect();
    freshness.sort_by_key(|c| (c.last_event_at.as_deref().and_then(parse_timestamp), c.customer.clone()));

    let top_reject_rules = w
        .read_text(&sql.top_reject_rules(since, TOP_RULES))
        .await?
        .iter()
        .map(|r| RuleCount {
            rule: text(&r[0]),
            rejects: num(&r[1]),
            example: RejectExample {
                key: text(&r[2]),
                line: num(&r[3]),
                column: r[4].clone(),
                reason: text(&r[5]),
                value: r[6].clone(),
            },
        })
        .collect();

    Ok(Status {
        generated_at: now.to_rfc3339(),
        backlog: Backlog::Folder { dir: String::new(), pending_files: 0 },
        last_merge,
        last_reconcile,
        unmerged,
        window_since: since.to_rfc3339(),
        customers,
        freshness,
        top_reject_rules,
    })
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "wau-ingest status at {}", self.generated_at)?;
        match &self.backlog {
            Backlog::Sqs { queue_url, visible, in_flight, dlq } => {
                writeln!(f, "backlog:   {visible} message(s) waiting, {in_flight} in flight on {queue_url}")?;
                match dlq {
                    Some(d) => writeln!(f, "dlq:       {} message(s) in {}", d.visible, d.arn)?,
                    None => writeln!(f, "dlq:       none (the queue has no redrive policy)")?,
                }
            }
            Backlog::Folder { dir, pending_files } => {
                writeln!(f, "backlog:   {pending_files} file(s) in {dir} that the ledger does not hold")?
            }
        }
        match &self.last_merge {
            Some(m) => match (m.rows_deleted, m.rows_inserted) {
                (Some(d), Some(i)) => writeln!(
                    f,
                    "merge:     last at {}: {} file(s), {d} row(s) deleted, {i} inserted",
                    m.merged_at, m.files
                )?,
                _ => writeln!(f, "merge:     last at {}: {} file(s)", m.merged_at, m.files)?,
            },
            None => writeln!(f, "merge:     never")?,
        }
        match &self.last_reconcile {
            Some(r) => {
                write!(
                    f,
                    "reconcile: last at {}: {}, {} object(s) missing, files new {} / rejected {} / to retry {}",
                    r.finished_at, r.outcome, r.objects_missing, r.files_loaded, r.files_rejected, r.files_to_retry
                )?;
                match &r.error {
                    Some(e) => writeln!(f, " ({e})")?,
                    None => writeln!(f)?,
                }
            }
            None => writeln!(f, "reconcile: never")?,
        }
        match &self.unmerged.oldest_loaded_at {
            Some(t) => writeln!(f, "unmerged:  {} file(s), the oldest loaded at {t}", self.unmerged.files)?,
            None => writeln!(f, "unmerged:  {} file(s)", self.unmerged.files)?,
        }
        writeln!(f, "\nlast {WINDOW_HOURS} h per customer:")?;
        if self.customers.is_empty() {
            writeln!(f, "  (no files)")?;
        } else {
            writeln!(
                f,
                "  {:<16} {:>6} {:>10} {:>10} {:>8}  last file (loaded at)",
                "customer", "files", "rows", "rejected", "rate"
            )?;
            for c in &self.customers {
                writeln!(
                    f,
                    "  {:<16} {:>6} {:>10} {:>10} {:>8}  {} ({})",
                    c.customer,
                    c.files,
                    c.rows_read,
                    c.rows_rejected,
                    percent(c.reject_rate),
                    c.last_file,
                    c.last_loaded_at
                )?;
            }
        }
        writeln!(f, "\nnewest loaded file per customer, most silent first:")?;
        if self.freshness.is_empty() {
            writeln!(f, "  (none recorded with its customer)")?;
        } else {
            writeln!(f, "  {:<16} {:>6}  {:<26} loaded at", "customer", "files", "created (event time)")?;
            for c in &self.freshness {
                let created = c.last_event_at.as_deref().unwrap_or("-");
                writeln!(f, "  {:<16} {:>6}  {:<26} {}", c.customer, c.files_loaded, created, c.last_loaded_at)?;
            }
        }
        writeln!(f, "\ntop reject rules, last {WINDOW_HOURS} h:")?;
        if self.top_reject_rules.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for r in &self.top_reject_rules {
            let e = &r.example;
            writeln!(f, "  {:<20} {:>8}  e.g. {}:{}: {}", r.rule, r.rejects, e.key, e.line, e.reason)?;
        }
        Ok(())
    }
}

impl crate::cli::Report for Status {
    /// Done: the screen is for a person to read (alerts watch the same numbers).
    fn verdict(&self) -> crate::cli::Verdict {
        crate::cli::Verdict::Done
    }

    fn render(&self, format: crate::cli::Format, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
        match format {
            crate::cli::Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(self)?)?,
            _ => write!(out, "{self}")?,
        }
        Ok(())
    }
}
