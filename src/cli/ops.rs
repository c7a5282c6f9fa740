//! The operator's tools: `selftest`, `healthcheck`, `catalog sync`, `demo`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;

use super::{report, tally_line, Format, Verdict};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::object::ObjectStore;
use crate::warehouse::LedgerTotals;
use crate::{demo, http, replay, run, selftest, Setup};

/// `selftest`: 0 when every check passes, 1 when one fails, 2 when it could not run.
pub async fn selftest(config: Config, format: Format) -> anyhow::Result<Verdict> {
    let outcome = selftest::run(&Setup::new(config)?).await;
    let verdict = match outcome.as_ref().map(|r| r.exit_code()) {
        Ok(0) => Verdict::Done,
        Ok(1) => Verdict::Attention,
        _ => Verdict::Failed,
    };
    match (format, outcome) {
        (Format::Json, Ok(report)) => println!("{}", serde_json::to_string_pretty(&report)?),
        (Format::Json, Err(e)) => println!("{}", serde_json::json!({ "error": e.to_string() })),
        (_, Ok(report)) => println!("{report}"),
        (_, Err(e)) => eprintln!("selftest could not run: {e}"),
    }
    Ok(verdict)
}

/// `healthcheck`: probes `/healthz` (or `/readyz`); attention when it does not answer 200.
pub async fn healthcheck(config: &Config, ready: bool, addr: Option<String>) -> anyhow::Result<Verdict> {
    let addr = addr.unwrap_or_else(|| http::probe_address(&config.http.listen));
    let path = if ready { "/readyz" } else { "/healthz" };
    match http::probe(&addr, path, Duration::from_secs(3)).await {
        Ok(()) => Ok(Verdict::Done),
        Err(e) => {
            eprintln!("unhealthy: {e}");
            Ok(Verdict::Attention)
        }
    }
}

/// `catalog sync`: the Glue table over the raw CSVs, from the contract.
pub async fn catalog_sync(
    config: Config,
    database: &str,
    table: &str,
    location: Option<String>,
) -> anyhow::Result<Verdict> {
    let location = match location {
        Some(l) => l,
        None if !config.source.bucket.is_empty() => format!("s3://{}/{}", config.source.bucket, config.source.prefix),
        None => anyhow::bail!("--location s3://bucket/csv/ is needed when source.bucket is not configured"),
    };
    let cx = Setup::new(config)?;
    let client = aws_sdk_glue::Client::new(cx.sdk().await);
    let what = crate::glue::catalog_sync(&client, &cx.contract, database, table, &location)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "catalog table {database}.{table} {what} for {location} (contract {} v{})",
        cx.contract.name, cx.contract.version
    );
    Ok(Verdict::Done)
}

fn print_totals(t: &LedgerTotals) {
    println!(
        "ledger: files loaded {}, rejected {}, superseded {}",
        t.files_loaded, t.files_rejected, t.files_superseded
    );
    println!(
        "rows:   read {} = loaded {} + rejected {}  ({} file(s) out of balance)",
        t.rows_read, t.rows_loaded, t.rows_rejected, t.unbalanced_files
    );
    println!("tables: target {} rows, staging {} rows, rejects {} rows", t.target_rows, t.staging_rows, t.reject_rows);
}

/// `demo`: a realistic sample ingested on the embedded default, merged and reported.
pub async fn demo(dir: &Path) -> anyhow::Result<Verdict> {
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
    println!(
        "demo: wrote {} files ({} rows, {} deliberately bad) for {} customers into {}",
        sample.files,
        sample.rows,
        sample.bad_rows,
        demo::CUSTOMERS.len() + 1,
        inbox.display()
    );

    let mut config = Config::default();
    config.source.dir = inbox.clone();
    config.warehouse.sqlite_path = dir.join("wau.sqlite");
    let contract = Arc::new(config.contract()?);
    let store: Arc<dyn ObjectStore> = crate::embedded_store(&config)?;
    let warehouse = crate::open_warehouse(&config, &contract)?;
    warehouse.migrate().await?;
    let metrics = Metrics::new();

    let all = store.list("").await?;
    let t = replay::ingest_objects(&config, store.clone(), warehouse.clone(), contract.clone(), all, false).await?;
    println!("{}", tally_line("\n1. first pass", &t));
    let m = run::merge_once(warehouse.clone(), &metrics).await.context("merge failed")?;
    println!("   merge: {} row(s) inserted", m.rows_inserted);

    // The producer corrects one export: the key is overwritten with new content.
    std::thread::sleep(Duration::from_millis(20));
    let rows = demo::overwrite(&inbox, &sample.overwrite_key, today)?;
    println!("\n2. {} overwritten with a corrected export ({rows} rows)", sample.overwrite_key);
    let all = store.list("").await?;
    let t = replay::ingest_objects(&config, store.clone(), warehouse.clone(), contract.clone(), all, false).await?;
    println!("{}", tally_line("   second pass over the whole folder (a replay)", &t));
    let m = run::merge_once(warehouse.clone(), &metrics).await.context("merge failed")?;
    println!("   merge: {} row(s) deleted, {} inserted", m.rows_deleted, m.rows_inserted);

    println!();
    print_totals(&warehouse.totals().await?);
    println!();
    print!("{}", report::read(warehouse.as_ref(), today, 6, None).await?);
    println!(
        "\nexplore: sqlite3 {} 'SELECT rule, COUNT(*) FROM wau_ingest_rejects GROUP BY rule'",
        config.warehouse.sqlite_path.display()
    );
    println!(
        "run the service on the same folder: wau-ingest run --inbox {} --db {}",
        inbox.display(),
        config.warehouse.sqlite_path.display()
    );
    Ok(Verdict::Done)
}
