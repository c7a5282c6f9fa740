//! The warehouse commands: `migrate`, `merge`, `replay`, `reconcile`, `report`, `status`.

use std::path::Path;

use anyhow::Context;
use chrono::Utc;

use std::io::Write;

use super::ops::CatalogReport;
use super::report::{self, WauReport};
use super::status;
use super::{tally_line, tally_verdict, Format, Report, Verdict};
use crate::config::{Config, WarehouseKind};
use crate::pipeline::Tally;
use crate::reconcile::{self as reconcile_log, ReconcileOutcome};
use crate::replay::{self, Filter};
use crate::warehouse::evolve;
use crate::warehouse::sql::{Dialect, Sql, Tables};
use crate::{run, Setup};

/// What `migrate` does: print the DDL of a dialect, print the plan, or apply it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrateMode {
    Print(Dialect),
    Plan,
    Apply,
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq)]
pub enum MigrateReport {
    /// `--print`: the DDL of a dialect, statement by statement.
    Ddl(Vec<String>),
    /// `--plan`: what it would change.
    Plan(evolve::Plan),
    /// A change was refused: nothing was changed.
    Refused(evolve::Plan),
    /// The plan was applied (and, with `catalog.database` set, the catalog table followed).
    Applied {
        plan: evolve::Plan,
        warehouse: WarehouseKind,
        contract: String,
        version: u32,
        catalog: Option<CatalogReport>,
    },
}

impl Report for MigrateReport {
    /// `--plan`: done when there is nothing to do, attention for changes `migrate` would
    /// apply, failed for a change it refuses; applying: done, or failed when refused.
    fn verdict(&self) -> Verdict {
        match self {
            MigrateReport::Ddl(_) | MigrateReport::Applied { .. } => Verdict::Done,
            MigrateReport::Refused(_) => Verdict::Failed,
            MigrateReport::Plan(p) if p.refused() => Verdict::Failed,
            MigrateReport::Plan(p) if p.is_empty() => Verdict::Done,
            MigrateReport::Plan(_) => Verdict::Attention,
        }
    }

    fn render(&self, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
        match self {
            MigrateReport::Ddl(statements) => {
                for s in statements {
                    writeln!(out, "{s};\n")?;
                }
            }
            MigrateReport::Plan(plan) => match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(plan)?)?,
                _ => write!(out, "{plan}")?,
            },
            MigrateReport::Refused(plan) => {
                write!(out, "{plan}")?;
                writeln!(
                    out,
                    "migrate: refused, nothing was changed: make the changes above by hand, or change the contract back"
                )?;
            }
            MigrateReport::Applied { plan, warehouse, contract, version, catalog } => {
                let (created, added, _) = plan.counts();
                write!(out, "{plan}")?;
                writeln!(
                    out,
                    "migrated the {warehouse:?} warehouse: {created} table(s) created, {added} column(s) added (contract {contract} v{version})"
                )?;
                if let Some(c) = catalog {
                    c.render(format, out)?;
                }
            }
        }
        Ok(())
    }
}

/// `migrate`: the DDL, the plan (`--plan`), or the plan applied; refused changes change
/// nothing. With `catalog.database` set, the Glue catalog table follows.
pub async fn migrate(config: Config, mode: MigrateMode) -> anyhow::Result<MigrateReport> {
    if let MigrateMode::Print(dialect) = mode {
        let contract = config.contract()?;
        let tables = Tables::for_contract(&contract);
        return Ok(MigrateReport::Ddl(Sql::new(dialect, &contract, &tables).migrate()));
    }
    let cx = Setup::new(config)?;
    let w = cx.warehouse().await?;
    let contract = cx.contract.clone();
    let dialect = cx.config.warehouse.kind.dialect();
    let tables = Tables::for_contract(&contract);
    let sql = Sql::new(dialect, &contract, &tables);
    if mode == MigrateMode::Plan {
        return Ok(MigrateReport::Plan(evolve::plan(&sql, w.as_ref()).await?));
    }
    let applied = evolve::apply(w.as_ref(), &sql).await?;
    match applied {
        evolve::Applied::Refused(plan) => Ok(MigrateReport::Refused(plan)),
        evolve::Applied::Done(plan) => {
            let catalog =
                if cx.config.catalog.database.is_empty() { None } else { Some(super::ops::sync_catalog(&cx).await?) };
            Ok(MigrateReport::Applied {
                plan,
                warehouse: cx.config.warehouse.kind,
                contract: cx.contract.name.clone(),
                version: cx.contract.version,
                catalog,
            })
        }
    }
}

/// What `merge` did.
#[derive(Debug, Clone, PartialEq)]
pub enum MergeReport {
    /// `--print-sql`: the Glue job's SQL file, a header comment and one transaction's statements.
    Sql { contract: String, version: u32, statements: Vec<String> },
    /// The configured Glue job ran to this end.
    Glue { job: String, outcome: crate::glue::GlueOutcome },
    /// The in-service merge.
    Merged(crate::warehouse::MergeReport),
}

impl Report for MergeReport {
    /// Attention when the Glue job did not succeed.
    fn verdict(&self) -> Verdict {
        match self {
            MergeReport::Glue { outcome: crate::glue::GlueOutcome::Succeeded { .. }, .. } => Verdict::Done,
            MergeReport::Glue { .. } => Verdict::Attention,
            MergeReport::Sql { .. } | MergeReport::Merged(_) => Verdict::Done,
        }
    }

    fn render(&self, _: Format, out: &mut dyn Write) -> anyhow::Result<()> {
        match self {
            MergeReport::Sql { contract, version, statements } => {
                writeln!(
                    out,
                    "-- wau-ingest merge, contract {contract} v{version}: one transaction, statements end with ';'"
                )?;
                for s in statements {
                    writeln!(out, "{s};")?;
                }
            }
            MergeReport::Glue { job, outcome: crate::glue::GlueOutcome::Succeeded { run_id } } => {
                writeln!(out, "merge job {job} run {run_id} succeeded")?
            }
            MergeReport::Glue { job, outcome } => writeln!(out, "merge job {job}: {outcome:?}")?,
            MergeReport::Merged(r) => writeln!(out, "{}", merged_line(r))?,
        }
        Ok(())
    }
}

/// The line of a merge that ran in the service's process.
pub fn merged_line(r: &crate::warehouse::MergeReport) -> String {
    format!("merged {} file(s): {} row(s) deleted, {} inserted", r.files, r.rows_deleted, r.rows_inserted)
}

/// `merge`: in-service SQL, or the Glue job when configured; `print_sql` gives the job's SQL.
pub async fn merge(config: Config, print_sql: bool) -> anyhow::Result<MergeReport> {
    if print_sql {
        let contract = config.contract()?;
        let tables = Tables::for_contract(&contract);
        let statements = Sql::new(Dialect::Redshift, &contract, &tables).merge().into_iter().map(|s| s.sql).collect();
        return Ok(MergeReport::Sql { contract: contract.name.clone(), version: contract.version, statements });
    }
    let cx = Setup::new(config)?;
    if let Some(glue) = cx.glue_runner().await {
        let outcome = glue.run().await.map_err(|e| anyhow::anyhow!(e))?;
        return Ok(MergeReport::Glue { job: cx.config.merge.glue_job_name.clone(), outcome });
    }
    let w = cx.warehouse().await?;
    w.migrate().await?;
    let r = run::merge_once(w, &cx.metrics).await.context("merge failed")?;
    Ok(MergeReport::Merged(r))
}

/// What `replay` loads.
pub struct ReplayArgs<'a> {
    pub path: &'a Path,
    pub filter: Filter,
    pub dry_run: bool,
    pub force: bool,
}

/// What `replay` did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayReport {
    /// `--dry-run`: what the listing holds (its "would load" lines were streamed as found).
    DryRun { found: replay::DryRun, force: bool },
    /// The files through the pipeline.
    Loaded(Tally),
}

impl Report for ReplayReport {
    /// Attention when files are left to retry.
    fn verdict(&self) -> Verdict {
        match self {
            ReplayReport::DryRun { .. } => Verdict::Done,
            ReplayReport::Loaded(t) => tally_verdict(t),
        }
    }

    fn render(&self, _: Format, out: &mut dyn Write) -> anyhow::Result<()> {
        match self {
            ReplayReport::DryRun { found, force } => writeln!(
                out,
                "dry run: {} file(s) listed, {} new, {} already in the ledger{}",
                found.listed,
                found.new,
                found.known,
                if *force { " (--force would load those again)" } else { "" }
            )?,
            ReplayReport::Loaded(t) => writeln!(out, "{}", tally_line("replay", t))?,
        }
        Ok(())
    }
}

/// `replay`: the listing through the pipeline (or, dry, what it would load). A dry run
/// streams its `would load  KEY` lines to stdout as it finds them (collecting them would
/// grow with the listing); the report is its summary.
pub async fn replay(config: Config, args: ReplayArgs<'_>) -> anyhow::Result<ReplayReport> {
    let cx = Setup::new(config)?;
    let (store, prefix) = cx.store_for(&args.path.to_string_lossy()).await?;
    let objects = replay::list(store.as_ref(), &prefix, &args.filter);
    let warehouse = cx.warehouse().await?;
    warehouse.migrate().await?;
    if args.dry_run {
        let found = replay::dry_run(store.as_ref(), warehouse, objects, |k| println!("would load  {k}")).await?;
        return Ok(ReplayReport::DryRun { found, force: args.force });
    }
    let tally =
        replay::ingest_listed(&cx.config, store, warehouse.clone(), cx.contract.clone(), objects, args.force).await?;
    Ok(ReplayReport::Loaded(tally))
}

/// What `reconcile` did: what the listing lacked, the pass over it, and the merge after.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileReport {
    /// Where it listed: bucket (or folder) and prefix.
    pub bucket: String,
    pub prefix: String,
    pub counts: crate::reconcile::MergeCounts,
    pub tally: Tally,
    pub merge: crate::warehouse::MergeReport,
}

impl Report for ReconcileReport {
    /// Attention when files are left to retry.
    fn verdict(&self) -> Verdict {
        tally_verdict(&self.tally)
    }

    fn render(&self, _: Format, out: &mut dyn Write) -> anyhow::Result<()> {
        let c = &self.counts;
        writeln!(
            out,
            "reconcile: {} object(s) in {}{} that the ledger lacks, of {} listed",
            c.missing, self.bucket, self.prefix, c.listed
        )?;
        if let Some(w) = order_warning(c) {
            writeln!(out, "{w}")?;
        }
        writeln!(out, "{}", tally_line("reconcile", &self.tally))?;
        writeln!(out, "{}", merged_line(&self.merge))?;
        Ok(())
    }
}

/// `reconcile`: loads what the store has and the ledger lacks, merges, and records the run
/// where `status` reads it.
pub async fn reconcile(config: Config) -> anyhow::Result<ReconcileReport> {
    let started = Utc::now();
    let cx = Setup::new(config)?;
    let (store, prefix) = cx.store().await?;
    let warehouse = cx.warehouse().await?;
    warehouse.migrate().await?;
    let result: anyhow::Result<ReconcileReport> = async {
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
        let merge = run::merge_once(warehouse.clone(), &cx.metrics).await.context("merge failed")?;
        Ok(ReconcileReport { bucket, prefix: prefix.clone(), counts, tally, merge })
    }
    .await;
    match result {
        Ok(r) => {
            let t = &r.tally;
            let outcome = if t.retried > 0 { ReconcileOutcome::Incomplete } else { ReconcileOutcome::Ok };
            let numbers = [r.counts.missing, t.loaded, t.rejected, t.retried];
            reconcile_log::record(warehouse, started, outcome, numbers, None).await;
            Ok(r)
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
fn order_warning(c: &crate::reconcile::MergeCounts) -> Option<String> {
    (c.ledger_out_of_order + c.listing_out_of_order > 0).then(|| {
        format!(
            "reconcile: {} ledger row(s) and {} listed key(s) came out of byte order; objects the ledger \
             holds may have been counted missing (the pipeline found them duplicates)",
            c.ledger_out_of_order, c.listing_out_of_order
        )
    })
}

/// `report`: the weekly active users of `weeks` weeks ending this week, per customer.
pub async fn report(config: Config, weeks: u32, customer: Option<String>) -> anyhow::Result<WauReport> {
    let w = Setup::new(config)?.warehouse().await?;
    w.migrate().await?;
    let today = Utc::now().date_naive();
    let r: WauReport = report::read(w.as_ref(), today, weeks, customer.as_deref()).await?;
    Ok(r)
}

/// `status`: the operator's screen (rendered as text or JSON by [`Status`]'s [`Report`]).
pub async fn status(config: Config) -> anyhow::Result<status::Status> {
    status::gather(&Setup::new(config)?).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::evolve::{Change, Plan, TablePlan};

    fn plan(changes: Vec<Change>) -> Plan {
        Plan { tables: vec![TablePlan { table: "wau_ingest_files".into(), changes }] }
    }

    fn rendered(r: &dyn Report, format: Format) -> String {
        let mut out = Vec::new();
        r.render(format, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_plan_is_done_when_empty_attention_with_changes_and_failed_when_refused() {
        let create = Change::CreateTable { sql: "CREATE TABLE t (a INT)".into() };
        let refused = Change::Refused { column: "a".into(), reason: "narrowing".into(), manual_steps: vec![] };
        assert_eq!(MigrateReport::Plan(plan(vec![])).verdict(), Verdict::Done);
        assert_eq!(MigrateReport::Plan(plan(vec![create.clone()])).verdict(), Verdict::Attention);
        assert_eq!(MigrateReport::Plan(plan(vec![create.clone(), refused.clone()])).verdict(), Verdict::Failed);
        assert_eq!(MigrateReport::Refused(plan(vec![refused])).verdict(), Verdict::Failed);
        assert_eq!(MigrateReport::Ddl(vec!["CREATE TABLE t (a INT)".into()]).verdict(), Verdict::Done);
        let applied = MigrateReport::Applied {
            plan: plan(vec![create]),
            warehouse: WarehouseKind::Sqlite,
            contract: "wau_audit_log".into(),
            version: 3,
            catalog: None,
        };
        assert_eq!(applied.verdict(), Verdict::Done);
        let text = rendered(&applied, Format::Text);
        assert!(
            text.ends_with(
                "migrated the Sqlite warehouse: 1 table(s) created, 0 column(s) added (contract wau_audit_log v3)\n"
            ),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&rendered(&MigrateReport::Plan(plan(vec![])), Format::Json)).unwrap();
        assert_eq!(json["tables"][0]["table"], "wau_ingest_files");
    }

    #[test]
    fn a_glue_merge_that_did_not_succeed_needs_attention() {
        let glue = |outcome| MergeReport::Glue { job: "wau-merge".into(), outcome };
        let ok = glue(crate::glue::GlueOutcome::Succeeded { run_id: "jr_1".into() });
        assert_eq!(ok.verdict(), Verdict::Done);
        assert_eq!(rendered(&ok, Format::Text), "merge job wau-merge run jr_1 succeeded\n");
        assert_eq!(glue(crate::glue::GlueOutcome::AlreadyRunning).verdict(), Verdict::Attention);
        let merged = MergeReport::Merged(crate::warehouse::MergeReport {
            files: 2,
            rows_deleted: 1,
            rows_inserted: 5,
            ..Default::default()
        });
        assert_eq!(merged.verdict(), Verdict::Done);
        assert_eq!(rendered(&merged, Format::Text), "merged 2 file(s): 1 row(s) deleted, 5 inserted\n");
    }

    #[test]
    fn replay_and_reconcile_need_attention_when_files_are_left_to_retry() {
        let done = Tally { loaded: 2, rejected: 1, ..Tally::default() };
        let retry = Tally { loaded: 2, retried: 1, ..Tally::default() };
        assert_eq!(ReplayReport::Loaded(done.clone()).verdict(), Verdict::Done);
        assert_eq!(ReplayReport::Loaded(retry.clone()).verdict(), Verdict::Attention);
        let dry = ReplayReport::DryRun { found: replay::DryRun { listed: 3, new: 1, known: 2 }, force: true };
        assert_eq!(dry.verdict(), Verdict::Done);
        assert_eq!(
            rendered(&dry, Format::Text),
            "dry run: 3 file(s) listed, 1 new, 2 already in the ledger (--force would load those again)\n"
        );

        let reconcile = |tally, counts| ReconcileReport {
            bucket: "inbox".into(),
            prefix: "csv/".into(),
            counts,
            tally,
            merge: crate::warehouse::MergeReport::default(),
        };
        let counts = crate::reconcile::MergeCounts { listed: 5, missing: 2, ..Default::default() };
        let r = reconcile(done, counts);
        assert_eq!(r.verdict(), Verdict::Done);
        let text = rendered(&r, Format::Text);
        assert!(text.starts_with("reconcile: 2 object(s) in inboxcsv/ that the ledger lacks, of 5 listed\n"), "{text}");
        assert!(!text.contains("byte order"), "{text}");
        let unordered = crate::reconcile::MergeCounts { listing_out_of_order: 1, ..counts };
        let r = reconcile(retry, unordered);
        assert_eq!(r.verdict(), Verdict::Attention);
        assert!(rendered(&r, Format::Text).contains("1 listed key(s) came out of byte order"));
    }
}
