//! The warehouse commands: `migrate`, `merge`, `replay`, `reconcile`, `report`, `status`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;

use super::report::{self, WauReport};
use super::status;
use super::{tally_line, Format, Verdict};
use crate::config::Config;
use crate::reconcile::{self as reconcile_log, ReconcileOutcome};
use crate::replay::{self, Filter};
use crate::warehouse::sql::{Dialect, Sql, Tables};
use crate::warehouse::Warehouse;
use crate::{run, Setup};

/// Creates the warehouse tables if missing.
pub async fn migrate_warehouse(w: &Arc<dyn Warehouse>) -> anyhow::Result<()> {
    Ok(w.migrate().await?)
}

/// `migrate`: runs the DDL, or prints it for `print`.
pub async fn migrate(config: Config, print: Option<Dialect>) -> anyhow::Result<Verdict> {
    if let Some(dialect) = print {
        let contract = config.contract()?;
        let tables = Tables::for_contract(&contract);
        for s in Sql::new(dialect, &contract, &tables).migrate() {
            println!("{s};\n");
        }
        return Ok(Verdict::Done);
    }
    let cx = Setup::new(config)?;
    migrate_warehouse(&cx.warehouse().await?).await?;
    println!("migrated the {:?} warehouse", cx.config.warehouse.kind);
    Ok(Verdict::Done)
}

/// `merge`: in-service SQL, or the Glue job when configured; `print_sql` prints the job's SQL.
pub async fn merge(config: Config, print_sql: bool) -> anyhow::Result<Verdict> {
    if print_sql {
        let contract = config.contract()?;
        let tables = Tables::for_contract(&contract);
        println!(
            "-- wau-ingest merge, contract {} v{}: one transaction, statements end with ';'",
            contract.name, contract.version
        );
        for step in Sql::new(Dialect::Redshift, &contract, &tables).merge() {
            println!("{};", step.sql);
        }
        return Ok(Verdict::Done);
    }
    let cx = Setup::new(config)?;
    if let Some(glue) = cx.glue_runner().await {
        return Ok(match glue.run().await.map_err(|e| anyhow::anyhow!(e))? {
            crate::glue::GlueOutcome::Succeeded { run_id } => {
                println!("merge job {} run {run_id} succeeded", cx.config.merge.glue_job_name);
                Verdict::Done
            }
            other => {
                println!("merge job {}: {other:?}", cx.config.merge.glue_job_name);
                Verdict::Attention
            }
        });
    }
    let w = cx.warehouse().await?;
    migrate_warehouse(&w).await?;
    let r = run::merge_once(w, &cx.metrics).await.context("merge failed")?;
    println!("merged {} file(s): {} row(s) deleted, {} inserted", r.files, r.rows_deleted, r.rows_inserted);
    Ok(Verdict::Done)
}

/// What `replay` loads.
pub struct ReplayArgs<'a> {
    pub path: &'a Path,
    pub filter: Filter,
    pub dry_run: bool,
    pub force: bool,
}

/// `replay`: the listing through the pipeline (or, dry, what it would load).
pub async fn replay(config: Config, args: ReplayArgs<'_>) -> anyhow::Result<Verdict> {
    let cx = Setup::new(config)?;
    let (store, prefix) = cx.store_for(&args.path.to_string_lossy()).await?;
    let objects = replay::list(store.as_ref(), &prefix, &args.filter);
    let warehouse = cx.warehouse().await?;
    migrate_warehouse(&warehouse).await?;
    if args.dry_run {
        let found = replay::dry_run(store.as_ref(), warehouse, objects, |k| println!("would load  {k}")).await?;
        println!(
            "dry run: {} file(s) listed, {} new, {} already in the ledger{}",
            found.listed,
            found.new,
            found.known,
            if args.force { " (--force would load those again)" } else { "" }
        );
        return Ok(Verdict::Done);
    }
    let tally =
        replay::ingest_listed(&cx.config, store, warehouse.clone(), cx.contract.clone(), objects, args.force).await?;
    println!("{}", tally_line("replay", &tally));
    Ok(if tally.retried > 0 { Verdict::Attention } else { Verdict::Done })
}

/// `reconcile`: loads what the store has and the ledger lacks, merges, and records the run
/// where `status` reads it.
pub async fn reconcile(config: Config) -> anyhow::Result<Verdict> {
    let started = Utc::now();
    let cx = Setup::new(config)?;
    let (store, prefix) = cx.store().await?;
    let warehouse = cx.warehouse().await?;
    migrate_warehouse(&warehouse).await?;
    let result: anyhow::Result<(u64, crate::pipeline::Tally)> = async {
        let found = crate::reconcile::missing(store.as_ref(), warehouse.clone(), &prefix);
        let bucket = store.bucket().to_string();
        let tally = replay::ingest_listed(
            &cx.config,
            store.clone(),
            warehouse.clone(),
            cx.contract.clone(),
            found.objects,
            false,
        )
        .await?;
        let counts = *found.counts.lock().expect("counts lock");
        println!(
            "reconcile: {} object(s) in {bucket}{prefix} that the ledger lacks, of {} listed",
            counts.missing, counts.listed
        );
        print_order_warning(&counts);
        let n = counts.missing;
        println!("{}", tally_line("reconcile", &tally));
        let r = run::merge_once(warehouse.clone(), &cx.metrics).await.context("merge failed")?;
        println!("merged {} file(s): {} row(s) deleted, {} inserted", r.files, r.rows_deleted, r.rows_inserted);
        Ok((n, tally))
    }
    .await;
    match result {
        Ok((missing, t)) => {
            let outcome = if t.retried > 0 { ReconcileOutcome::Incomplete } else { ReconcileOutcome::Ok };
            reconcile_log::record(warehouse, started, outcome, [missing, t.loaded, t.rejected, t.retried], None).await;
            Ok(if t.retried > 0 { Verdict::Attention } else { Verdict::Done })
        }
        Err(e) => {
            let error = Some(format!("{e:#}"));
            reconcile_log::record(warehouse, started, ReconcileOutcome::Failed, [0; 4], error).await;
            Err(e)
        }
    }
}

/// Says so when the ledger or the listing came in another order than byte order: then some
/// objects the ledger holds were called missing (and counted as duplicates by the pipeline).
fn print_order_warning(c: &crate::reconcile::MergeCounts) {
    if c.ledger_out_of_order + c.listing_out_of_order > 0 {
        println!(
            "reconcile: {} ledger row(s) and {} listed key(s) came out of byte order; objects the ledger \
             holds may have been counted missing (the pipeline found them duplicates)",
            c.ledger_out_of_order, c.listing_out_of_order
        );
    }
}

/// `report`: the weekly active users of `weeks` weeks ending this week, per customer.
pub async fn report(config: Config, weeks: u32, customer: Option<String>, format: Format) -> anyhow::Result<Verdict> {
    let w = Setup::new(config)?.warehouse().await?;
    migrate_warehouse(&w).await?;
    let today = Utc::now().date_naive();
    let r: WauReport = report::read(w.as_ref(), today, weeks, customer.as_deref()).await?;
    match format {
        Format::Text => print!("{r}"),
        Format::Csv => print!("{}", r.to_csv()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&r)?),
    }
    Ok(Verdict::Done)
}

/// `status`: the operator's screen, as text or JSON.
pub async fn status(config: Config, format: Format) -> anyhow::Result<Verdict> {
    let s = status::gather(&Setup::new(config)?).await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        _ => print!("{s}"),
    }
    Ok(Verdict::Done)
}
