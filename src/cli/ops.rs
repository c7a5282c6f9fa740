//! The operator's tools: `selftest`, `healthcheck`, `catalog sync`, `demo`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;

use super::{report, tally_line, tally_verdict, Format, Report, Verdict};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::object::ObjectStore;
use crate::pipeline::Tally;
use crate::warehouse::{LedgerTotals, MergeReport};
use crate::{demo, http, replay, run, selftest, Setup};

/// What `selftest` found, or why it could not run.
#[derive(Debug, Clone)]
pub enum SelftestReport {
    Ran(selftest::Report),
    CouldNotRun(String),
}

impl Report for SelftestReport {
    /// Done when every check passes, attention when one fails, failed when it could not run.
    fn verdict(&self) -> Verdict {
        match self {
            SelftestReport::Ran(r) if r.passed() => Verdict::Done,
            SelftestReport::Ran(_) => Verdict::Attention,
            SelftestReport::CouldNotRun(_) => Verdict::Failed,
        }
    }

    fn render(&self, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
        match (format, self) {
            (Format::Json, SelftestReport::Ran(r)) => writeln!(out, "{}", serde_json::to_string_pretty(r)?)?,
            (Format::Json, SelftestReport::CouldNotRun(e)) => writeln!(out, "{}", serde_json::json!({ "error": e }))?,
            (_, SelftestReport::Ran(r)) => writeln!(out, "{r}")?,
            (_, SelftestReport::CouldNotRun(_)) => {}
        }
        Ok(())
    }

    fn notice(&self, format: Format) -> Option<String> {
        match (format, self) {
            (Format::Json, _) | (_, SelftestReport::Ran(_)) => None,
            (_, SelftestReport::CouldNotRun(e)) => Some(format!("selftest could not run: {e}")),
        }
    }
}

/// `selftest`: every check in a scratch schema of the configured Redshift warehouse.
pub async fn selftest(config: Config) -> anyhow::Result<SelftestReport> {
    Ok(match selftest::run(&Setup::new(config)?).await {
        Ok(r) => SelftestReport::Ran(r),
        Err(e) => SelftestReport::CouldNotRun(e.to_string()),
    })
}

/// What `healthcheck` got: `error` is why the probe did not answer 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub addr: String,
    pub path: &'static str,
    pub error: Option<String>,
}

impl Report for HealthReport {
    /// Attention when unhealthy.
    fn verdict(&self) -> Verdict {
        if self.error.is_some() {
            Verdict::Attention
        } else {
            Verdict::Done
        }
    }

    /// Nothing on stdout: the exit code is the answer (and stderr says why it is not 0).
    fn render(&self, _: Format, _: &mut dyn Write) -> anyhow::Result<()> {
        Ok(())
    }

    fn notice(&self, _: Format) -> Option<String> {
        self.error.as_ref().map(|e| format!("unhealthy: {e}"))
    }
}

/// `healthcheck`: probes `/healthz` (or `/readyz`).
pub async fn healthcheck(config: &Config, ready: bool, addr: Option<String>) -> anyhow::Result<HealthReport> {
    let addr = addr.unwrap_or_else(|| http::probe_address(&config.http.listen));
    let path = if ready { "/readyz" } else { "/healthz" };
    let error = http::probe(&addr, path, Duration::from_secs(3)).await.err().map(|e| e.to_string());
    Ok(HealthReport { addr, path, error })
}

/// What `catalog sync` did to the Glue table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogReport {
    pub database: String,
    pub table: String,
    /// `created`, `updated` or `unchanged`, as [`crate::glue::catalog_sync`] says.
    pub what: String,
    pub location: String,
    pub contract: String,
    pub version: u32,
}

impl Report for CatalogReport {
    fn verdict(&self) -> Verdict {
        Verdict::Done
    }

    fn render(&self, _: Format, out: &mut dyn Write) -> anyhow::Result<()> {
        let c = self;
        writeln!(
            out,
            "catalog table {}.{} {} for {} (contract {} v{})",
            c.database, c.table, c.what, c.location, c.contract, c.version
        )?;
        Ok(())
    }
}

/// `catalog sync`: the Glue table over the raw CSVs, from the contract.
pub async fn catalog_sync(
    config: Config,
    database: &str,
    table: &str,
    location: Option<String>,
) -> anyhow::Result<CatalogReport> {
    let location = catalog_location(&config, location)?;
    let cx = Setup::new(config)?;
    sync_catalog_to(&cx, database, table, &location).await
}

/// The raw files' location: `given`, else `source.bucket`/`source.prefix`.
fn catalog_location(config: &Config, given: Option<String>) -> anyhow::Result<String> {
    match given.filter(|l| !l.is_empty()) {
        Some(l) => Ok(l),
        None if !config.source.bucket.is_empty() => {
            Ok(format!("s3://{}/{}", config.source.bucket, config.source.prefix))
        }
        None => anyhow::bail!(
            "--location (or catalog.location) s3://bucket/csv/ is needed when source.bucket is not configured"
        ),
    }
}

/// `migrate`'s step for the configured catalog table (`[catalog]`).
pub async fn sync_catalog(cx: &Setup) -> anyhow::Result<CatalogReport> {
    let c = &cx.config.catalog;
    let location = catalog_location(&cx.config, Some(c.location.clone()))?;
    let table = if c.table.is_empty() { cx.contract.table.clone() } else { c.table.clone() };
    sync_catalog_to(cx, &c.database, &table, &location).await
}

async fn sync_catalog_to(cx: &Setup, database: &str, table: &str, location: &str) -> anyhow::Result<CatalogReport> {
    let client = aws_sdk_glue::Client::new(cx.sdk().await);
    let what = crate::glue::catalog_sync(&client, &cx.contract, database, table, location)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(CatalogReport {
        database: database.to_string(),
        table: table.to_string(),
        what: what.to_string(),
        location: location.to_string(),
        contract: cx.contract.name.clone(),
        version: cx.contract.version,
    })
}

/// What `demo` wrote, loaded, merged and found, in the order it did it.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    pub inbox: PathBuf,
    pub sqlite_path: PathBuf,
    pub files: u64,
    pub rows: u64,
    pub bad_rows: u64,
    pub customers: usize,
    pub first: Tally,
    pub first_merge: MergeReport,
    pub overwrite_key: String,
    pub overwrite_rows: u64,
    pub second: Tally,
    pub second_merge: MergeReport,
    pub totals: LedgerTotals,
    pub wau: report::WauReport,
}

impl Report for DemoReport {
    /// Attention when a pass left files to retry (the demo's rejects are deliberate).
    fn verdict(&self) -> Verdict {
        match tally_verdict(&self.first) {
            Verdict::Done => tally_verdict(&self.second),
            v => v,
        }
    }

    fn render(&self, _: Format, out: &mut dyn Write) -> anyhow::Result<()> {
        let d = self;
        writeln!(
            out,
            "demo: wrote {} files ({} rows, {} deliberately bad) for {} customers into {}",
            d.files,
            d.rows,
            d.bad_rows,
            d.customers,
            d.inbox.display()
        )?;
        writeln!(out, "{}", tally_line("\n1. first pass", &d.first))?;
        writeln!(out, "   merge: {} row(s) inserted", d.first_merge.rows_inserted)?;
        writeln!(out, "\n2. {} overwritten with a corrected export ({} rows)", d.overwrite_key, d.overwrite_rows)?;
        writeln!(out, "{}", tally_line("   second pass over the whole folder (a replay)", &d.second))?;
        writeln!(
            out,
            "   merge: {} row(s) deleted, {} inserted",
            d.second_merge.rows_deleted, d.second_merge.rows_inserted
        )?;
        writeln!(out)?;
        let t = &d.totals;
        writeln!(
            out,
            "ledger: files loaded {}, rejected {}, superseded {}",
            t.files_loaded, t.files_rejected, t.files_superseded
        )?;
        writeln!(
            out,
            "rows:   read {} = loaded {} + rejected {}  ({} file(s) out of balance)",
            t.rows_read, t.rows_loaded, t.rows_rejected, t.unbalanced_files
        )?;
        writeln!(
            out,
            "tables: target {} rows, staging {} rows, rejects {} rows",
            t.target_rows, t.staging_rows, t.reject_rows
        )?;
        writeln!(out)?;
        write!(out, "{}", d.wau)?;
        writeln!(
            out,
            "\nexplore: sqlite3 {} 'SELECT rule, COUNT(*) FROM wau_ingest_rejects GROUP BY rule'",
            d.sqlite_path.display()
        )?;
        writeln!(
            out,
            "run the service on the same folder: wau-ingest run --inbox {} --db {}",
            d.inbox.display(),
            d.sqlite_path.display()
        )?;
        Ok(())
    }
}

/// `demo`: a realistic sample ingested on the embedded default, merged and reported.
pub async fn demo(dir: &Path) -> anyhow::Result<DemoReport> {
    let marker = dir.join(".wau-demo");
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() && !marker.exists() {
        anyhow::bail!("{} exists and is not a demo folder; name an empty or new folder", dir.display());
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    std::fs::write(&marker, "made by wau-ingest demo\n")?;
    let inbox = dir.join("inbox");
    let today = Utc::now().date_naive();
    let sample = demo::generate_sample(&inbox, 6, today)?;

    let mut config = Config::default();
    config.source.dir = inbox.clone();
    config.warehouse.sqlite_path = dir.join("wau.sqlite");
    let contract = Arc::new(config.contract()?);
    let store: Arc<dyn ObjectStore> = crate::embedded_store(&config)?;
    let warehouse = crate::open_warehouse(&config, &contract)?;
    warehouse.migrate().await?;
    let metrics = Metrics::new();

    let all = store.list("").await?;
    let first = replay::ingest_objects(&config, store.clone(), warehouse.clone(), contract.clone(), all, false).await?;
    let first_merge = run::merge_once(warehouse.clone(), &metrics).await.context("merge failed")?;

    // The producer corrects one export: the key is overwritten with new content.
    std::thread::sleep(Duration::from_millis(20));
    let overwrite_rows = demo::overwrite(&inbox, &sample.overwrite_key, today)?;
    let all = store.list("").await?;
    let second =
        replay::ingest_objects(&config, store.clone(), warehouse.clone(), contract.clone(), all, false).await?;
    let second_merge = run::merge_once(warehouse.clone(), &metrics).await.context("merge failed")?;

    Ok(DemoReport {
        sqlite_path: config.warehouse.sqlite_path.clone(),
        files: sample.files,
        rows: sample.rows,
        bad_rows: sample.bad_rows,
        customers: demo::CUSTOMERS.len() + 1,
        first,
        first_merge,
        overwrite_key: sample.overwrite_key,
        overwrite_rows,
        second,
        second_merge,
        totals: warehouse.totals().await?,
        wau: report::read(warehouse.as_ref(), today, 6, None).await?,
        inbox,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(r: &dyn Report, format: Format) -> String {
        let mut out = Vec::new();
        r.render(format, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn selftest_report(verdict: selftest::Verdict, schema_dropped: bool) -> selftest::Report {
        selftest::Report {
            target: "workgroup wau".into(),
            database: "dev".into(),
            schema: "wau_selftest_1".into(),
            staging: "s3://b/p".into(),
            checks: vec![selftest::Check {
                name: "merge",
                verdict,
                observed: "ok".into(),
                advice: None,
                notes: vec![],
                seconds: 0.1,
            }],
            cleanup: selftest::Cleanup { schema_dropped, objects_deleted: 0, errors: vec![] },
        }
    }

    #[test]
    fn selftest_is_done_when_all_pass_attention_when_one_fails_and_failed_when_it_could_not_run() {
        let pass = SelftestReport::Ran(selftest_report(selftest::Verdict::Pass, true));
        assert_eq!(pass.verdict(), Verdict::Done);
        assert_eq!(SelftestReport::Ran(selftest_report(selftest::Verdict::Fail, true)).verdict(), Verdict::Attention);
        // A scratch schema left behind fails the run as a check does.
        assert_eq!(SelftestReport::Ran(selftest_report(selftest::Verdict::Pass, false)).verdict(), Verdict::Attention);
        let json: serde_json::Value = serde_json::from_str(&rendered(&pass, Format::Json)).unwrap();
        assert_eq!(json["checks"][0]["name"], "merge");

        let not_run = SelftestReport::CouldNotRun("needs redshift".into());
        assert_eq!(not_run.verdict(), Verdict::Failed);
        // Text: nothing on stdout, the reason on stderr; JSON: the reason on stdout.
        assert_eq!(rendered(&not_run, Format::Text), "");
        assert_eq!(not_run.notice(Format::Text).as_deref(), Some("selftest could not run: needs redshift"));
        assert_eq!(rendered(&not_run, Format::Json), "{\"error\":\"needs redshift\"}\n");
        assert_eq!(not_run.notice(Format::Json), None);
    }

    #[test]
    fn healthcheck_needs_attention_when_unhealthy() {
        let healthy = HealthReport { addr: "127.0.0.1:9090".into(), path: "/healthz", error: None };
        assert_eq!(healthy.verdict(), Verdict::Done);
        assert_eq!(healthy.notice(Format::Text), None);
        let unhealthy = HealthReport { error: Some("connection refused".into()), ..healthy };
        assert_eq!(unhealthy.verdict(), Verdict::Attention);
        assert_eq!(unhealthy.notice(Format::Text).as_deref(), Some("unhealthy: connection refused"));
    }

    #[test]
    fn the_demo_needs_attention_only_when_a_pass_left_files_to_retry() {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let demo = DemoReport {
            inbox: "demo/inbox".into(),
            sqlite_path: "demo/wau.sqlite".into(),
            files: 30,
            rows: 900,
            bad_rows: 12,
            customers: 5,
            first: Tally { loaded: 28, rejected: 2, ..Tally::default() },
            first_merge: MergeReport { rows_inserted: 880, ..Default::default() },
            overwrite_key: "csv/acme/x.csv".into(),
            overwrite_rows: 10,
            second: Tally { loaded: 1, duplicate: 29, ..Tally::default() },
            second_merge: MergeReport::default(),
            totals: LedgerTotals::default(),
            wau: report::build(&[], today, 6),
        };
        assert_eq!(demo.verdict(), Verdict::Done);
        let text = rendered(&demo, Format::Text);
        assert!(text.starts_with("demo: wrote 30 files (900 rows, 12 deliberately bad) for 5 customers into demo/inbox\n\n1. first pass: files new 28"), "{text}");
        assert!(text.contains("\n   merge: 880 row(s) inserted\n\n2. csv/acme/x.csv overwritten"), "{text}");
        let retried = DemoReport { second: Tally { retried: 1, ..Tally::default() }, ..demo };
        assert_eq!(retried.verdict(), Verdict::Attention);
    }
}
