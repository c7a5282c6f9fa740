//! The `wau-ingest` binary: argument parsing and printing only; the work is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Datelike, Utc};
use clap::{Parser, Subcommand, ValueEnum};

use wau_ingest::config::Config;
use wau_ingest::contract;
use wau_ingest::metrics::Metrics;
use wau_ingest::object::ObjectStore;
use wau_ingest::pipeline::Tally;
use wau_ingest::publish::{check_file, PublishError, Published};
use wau_ingest::reconcile::{self, MergeCounts};
use wau_ingest::replay::{self, Filter};
use wau_ingest::validate::{FileAccount, Reject};
use wau_ingest::warehouse::sql::{Dialect, Sql, Tables};
use wau_ingest::warehouse::{LedgerTotals, Warehouse};
use wau_ingest::{demo, http, run, selftest, Setup};

#[derive(Parser)]
#[command(name = "wau-ingest", version, about = "Exactly-once ingestion of WAU audit-log CSVs into the warehouse")]
struct Cli {
    /// Config file (default: ./wau-ingest.toml if present, else built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Watched folder / local object store (overrides source.dir).
    #[arg(long, global = true)]
    inbox: Option<PathBuf>,
    /// SQLite warehouse file (overrides warehouse.sqlite_path).
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: watch the source, load micro-batches, merge periodically, reconcile daily.
    Run {
        /// Address for /metrics, /healthz, /readyz (overrides http.listen).
        #[arg(long)]
        http_listen: Option<String>,
    },
    /// Validate files against the contract without loading them.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Create the warehouse tables and view (idempotent).
    Migrate {
        /// Print the DDL for a dialect instead of running it.
        #[arg(long, value_enum)]
        print: Option<PrintDialect>,
    },
    /// Merge staging into the target now.
    Merge {
        /// Print the merge SQL (the file the Glue job runs) instead of running it.
        #[arg(long)]
        print_sql: bool,
    },
    /// Load a folder (or file) again through the pipeline; the ledger makes it idempotent.
    Replay {
        path: PathBuf,
        /// Only objects written at or after this time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Only objects written before this time.
        #[arg(long)]
        until: Option<String>,
        /// Only keys matching this glob, e.g. 'csv/acme/**'.
        #[arg(long)]
        glob: Option<String>,
        /// Say what would be loaded; load nothing.
        #[arg(long)]
        dry_run: bool,
        /// Load versions already in the ledger again, replacing their rows.
        #[arg(long)]
        force: bool,
    },
    /// Load what the store has and the ledger lacks, then merge.
    Reconcile,
    /// Weekly active users per customer per ISO week.
    Report {
        #[arg(long, default_value_t = 8)]
        weeks: u32,
        #[arg(long)]
        customer: Option<String>,
    },
    /// Generate a realistic sample, ingest it on the embedded default, merge and report.
    Demo {
        #[arg(default_value = "demo")]
        dir: PathBuf,
    },
    /// Contract tools.
    Contract {
        #[command(subcommand)]
        command: ContractCommand,
    },
    /// Producer side: validate FILE, add the customer column if it lacks one, and put it where
    /// the ingester reads (a local folder today; S3 with the AWS adapters). Exit 1 if rejected.
    Publish {
        file: PathBuf,
        #[arg(long)]
        customer: String,
        /// Destination: a folder or file path (inbox/csv/acme/), or s3://BUCKET-OR-ACCESS-POINT/csv/acme/
        #[arg(long)]
        to: String,
        /// Compress with gzip (adds .gz when the destination is a folder).
        #[arg(long)]
        gzip: bool,
    },
    /// The Glue Data Catalog table over the raw CSV prefix.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Check, in a scratch schema of the configured Redshift warehouse, every assumption the
    /// product makes of Redshift (run once before the first deployment). Exit 0 when all pass,
    /// 1 when any fails, 2 when it could not run.
    Selftest {
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// Probe /healthz (and /readyz with --ready) of a running service; exit 0 when healthy.
    Healthcheck {
        #[arg(long)]
        ready: bool,
        /// Address to probe (default: from http.listen).
        #[arg(long)]
        addr: Option<String>,
    },
}

#[derive(Subcommand)]
enum ContractCommand {
    /// Draft a contract from a sample CSV.
    Infer {
        file: PathBuf,
        #[arg(long, default_value = "wau_audit_log")]
        name: String,
        /// Rows to sample.
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Create or update the Glue table for the raw CSVs (CSV SerDe, header skipped) from the contract.
    Sync {
        #[arg(long, default_value = "wau")]
        database: String,
        #[arg(long, default_value = "wau_audit_logs")]
        table: String,
        /// Where the CSVs are; default s3://<source.bucket>/<source.prefix>.
        #[arg(long)]
        location: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrintDialect {
    Sqlite,
    Postgres,
    Redshift,
}

/// `run` logs every committed file; the one-shot commands print summaries and log only warnings.
fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut c = Config::load(cli.config.as_deref())?;
    if let Some(inbox) = &cli.inbox {
        c.source.dir = inbox.clone();
    }
    if let Some(db) = &cli.db {
        c.warehouse.sqlite_path = db.clone();
    }
    Ok(c)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // selftest provokes conflicts on purpose: the runner's warnings about them are its report's business.
    let level = match cli.command {
        Command::Run { .. } => "info",
        Command::Selftest { .. } => "error",
        _ => "warn",
    };
    init_logging(cli.log_format, level);
    if matches!(cli.command, Command::Replay { .. } | Command::Reconcile) {
        limit_malloc_arenas();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("starting the runtime");
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    };
    // Everything that must be durable is committed by now; do not wait for blocking threads
    // (an interrupted merge rolls back by itself).
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Replay and reconcile allocate listing and ledger pages on blocking threads and free them on
/// the runtime's: glibc then grows an arena per thread (up to 8 per core) and keeps what each
/// freed, which more than doubled their peak RSS over a large listing (bench/reconcile.sh:
/// 144 MiB against 86 MiB with two arenas, 200,000 files). Two arenas keep them inside their
/// memory bound; the service is left to glibc's default.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Creates the warehouse tables if missing (off the async threads: the warehouse API blocks).
async fn migrate(w: &Arc<dyn Warehouse>) -> anyhow::Result<()> {
    let w = w.clone();
    Ok(tokio::task::spawn_blocking(move || w.migrate()).await??)
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = load_config(&cli)?;
    match cli.command {
        Command::Run { http_listen } => {
            let mut config = config;
            if let Some(l) = http_listen {
                config.http.listen = l;
            }
            run::run(Setup::new(config)?.parts().await?, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => validate_files(&config, &files).await,
        Command::Migrate { print } => {
            let contract = config.contract()?;
            if let Some(d) = print {
                let dialect = match d {
                    PrintDialect::Sqlite => Dialect::Sqlite,
                    PrintDialect::Postgres => Dialect::Postgres,
                    PrintDialect::Redshift => Dialect::Redshift,
                };
                let tables = Tables::for_contract(&contract);
                for s in Sql::new(dialect, &contract, &tables).migrate() {
                    println!("{s};\n");
                }
            } else {
                let cx = Setup::new(config)?;
                let w = cx.warehouse().await?;
                tokio::task::spawn_blocking(move || w.migrate()).await??;
                println!("migrated the {:?} warehouse", cx.config.warehouse.kind);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Merge { print_sql } => {
            let contract = config.contract()?;
            if print_sql {
                let tables = Tables::for_contract(&contract);
                println!(
                    "-- wau-ingest merge, contract {} v{}: one transaction, statements end with ';'",
                    contract.name, contract.version
                );
                for step in Sql::new(Dialect::Redshift, &contract, &tables).merge() {
                    println!("{};", step.sql);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let cx = Setup::new(config)?;
            if let Some(glue) = cx.glue_runner().await {
                return Ok(match glue.run().await.map_err(|e| anyhow::anyhow!(e))? {
                    wau_ingest::glue::GlueOutcome::Succeeded { run_id } => {
                        println!("merge job {} run {run_id} succeeded", cx.config.merge.glue_job_name);
                        ExitCode::SUCCESS
                    }
                    other => {
                        println!("merge job {}: {other:?}", cx.config.merge.glue_job_name);
                        ExitCode::from(1)
                    }
                });
            }
            let w = cx.warehouse().await?;
            migrate(&w).await?;
            let r = run::merge_once(w, &cx.metrics).await.context("merge failed")?;
            println!("merged {} file(s): {} row(s) deleted, {} inserted", r.files, r.rows_deleted, r.rows_inserted);
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { path, since, until, glob, dry_run, force } => {
            let filter = Filter {
                since: since.as_deref().map(parse_time).transpose()?,
                until: until.as_deref().map(parse_time).transpose()?,
                glob: glob.as_deref().map(|g| globset::Glob::new(g).map(|g| g.compile_matcher())).transpose()?,
            };
            let cx = Setup::new(config)?;
            let (store, prefix) = cx.store_for(&path.to_string_lossy()).await?;
            let objects = replay::list(store.as_ref(), &prefix, &filter);
            let warehouse = cx.warehouse().await?;
            migrate(&warehouse).await?;
            let (config, contract) = (&cx.config, cx.contract.clone());
            if dry_run {
                let found =
                    replay::dry_run(store.as_ref(), warehouse, objects, |k| println!("would load  {k}")).await?;
                println!(
                    "dry run: {} file(s) listed, {} new, {} already in the ledger{}",
                    found.listed,
                    found.new,
                    found.known,
                    if force { " (--force would load those again)" } else { "" }
                );
                return Ok(ExitCode::SUCCESS);
            }
            let tally = replay::ingest_listed(config, store, warehouse.clone(), contract, objects, force).await?;
            print_tally("replay", &tally);
            Ok(if tally.retried > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Reconcile => {
            let cx = Setup::new(config)?;
            let (store, prefix) = cx.store().await?;
            let warehouse = cx.warehouse().await?;
            migrate(&warehouse).await?;
            let found = reconcile::missing(store.as_ref(), warehouse.clone(), &prefix);
            let bucket = store.bucket().to_string();
            let tally =
                replay::ingest_listed(&cx.config, store, warehouse.clone(), cx.contract.clone(), found.objects, false)
                    .await?;
            let counts = *found.counts.lock().expect("counts lock");
            println!(
                "reconcile: {} object(s) in {bucket}{prefix} that the ledger lacks, of {} listed",
                counts.missing, counts.listed
            );
            print_order_warning(&counts);
            print_tally("reconcile", &tally);
            let r = run::merge_once(warehouse, &cx.metrics).await.context("merge failed")?;
            println!("merged {} file(s): {} row(s) deleted, {} inserted", r.files, r.rows_deleted, r.rows_inserted);
            Ok(if tally.retried > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Report { weeks, customer } => {
            let w = Setup::new(config)?.warehouse().await?;
            migrate(&w).await?;
            let w2 = w.clone();
            tokio::task::spawn_blocking(move || print_report(w2.as_ref(), weeks, customer.as_deref())).await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { dir } => run_demo(&dir).await,
        Command::Selftest { format } => {
            let outcome = selftest::run(&Setup::new(config)?).await;
            let code = outcome.as_ref().map_or(2, |r| r.exit_code());
            match (format, outcome) {
                (ReportFormat::Text, Ok(report)) => println!("{report}"),
                (ReportFormat::Text, Err(e)) => eprintln!("selftest could not run: {e}"),
                (ReportFormat::Json, Ok(report)) => println!("{}", serde_json::to_string_pretty(&report)?),
                (ReportFormat::Json, Err(e)) => println!("{}", serde_json::json!({ "error": e.to_string() })),
            }
            Ok(ExitCode::from(code))
        }
        Command::Contract { command: ContractCommand::Infer { file, name, rows } } => {
            let (headers, sample) = read_sample(&file, rows)?;
            let draft = contract::infer(&name, &headers, &sample);
            println!(
                "# Drafted by `wau-ingest contract infer` from {} ({} rows). Review before use.",
                file.display(),
                sample.len()
            );
            for todo in &draft.todo {
                println!("# TODO: {todo}");
            }
            print!("{}", toml::to_string(&draft.contract)?);
            if draft.todo.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "contract infer: the draft is incomplete ({} to decide; see the TODO lines)",
                    draft.todo.len()
                );
                Ok(ExitCode::from(1))
            }
        }
        Command::Publish { file, customer, to, gzip } => {
            let cx = Setup::new(config)?;
            let (contract, limits) = (&cx.contract, cx.config.read_limits());
            let published = match wau_ingest::aws::s3_target(&to).map_err(anyhow::Error::msg)? {
                Some((bucket, prefix)) => {
                    let store = cx.s3_store(&bucket).await;
                    wau_ingest::publish::publish_s3(contract, limits, &file, &store, &prefix, &customer, gzip).await
                }
                None => {
                    wau_ingest::publish::publish_local(contract, limits, &file, Path::new(&to), &customer, gzip).await
                }
            };
            match published {
                Ok(Published::Done { dest, rows, added_customer }) => {
                    let added = if added_customer { ", customer column added" } else { "" };
                    println!("published {} → {} ({rows} rows{added})", file.display(), dest.display());
                    Ok(ExitCode::SUCCESS)
                }
                Ok(Published::Rejected { account, rejects }) => {
                    print_report_of_file(&file, &account, &rejects);
                    println!("not published: fix the rows above (nothing was written)");
                    Ok(ExitCode::from(1))
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(if matches!(e, PublishError::Io { .. }) { 2 } else { 1 }))
                }
            }
        }
        Command::Catalog { command: CatalogCommand::Sync { database, table, location } } => {
            let location = match location {
                Some(l) => l,
                None if !config.source.bucket.is_empty() => {
                    format!("s3://{}/{}", config.source.bucket, config.source.prefix)
                }
                None => anyhow::bail!("--location s3://bucket/csv/ is needed when source.bucket is not configured"),
            };
            let cx = Setup::new(config)?;
            let client = aws_sdk_glue::Client::new(cx.sdk().await);
            let what = wau_ingest::glue::catalog_sync(&client, &cx.contract, &database, &table, &location)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            println!(
                "catalog table {database}.{table} {what} for {location} (contract {} v{})",
                cx.contract.name, cx.contract.version
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { ready, addr } => {
            let addr = addr.unwrap_or_else(|| http::probe_address(&config.http.listen));
            let path = if ready { "/readyz" } else { "/healthz" };
            match http::probe(&addr, path, Duration::from_secs(3)).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Some(t) = contract::parse_timestamp(s) {
        return Ok(t);
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").with_context(|| format!("{s:?} is not a time"))?;
    Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
}

fn print_tally(what: &str, t: &Tally) {
    println!(
        "{what}: files new {} / duplicate {} / rejected {} / superseded {} / skipped {} / to retry {}; rows loaded {}, rejected {}",
        t.loaded, t.duplicate, t.rejected, t.superseded, t.skipped, t.retried, t.rows_loaded, t.rows_rejected
    );
}

/// Says so when the ledger or the listing came in another order than byte order: then some
/// objects the ledger holds were called missing (and counted as duplicates by the pipeline).
fn print_order_warning(c: &MergeCounts) {
    if c.ledger_out_of_order + c.listing_out_of_order > 0 {
        println!(
            "reconcile: {} ledger row(s) and {} listed key(s) came out of byte order; objects the ledger \
             holds may have been counted missing (the pipeline found them duplicates)",
            c.ledger_out_of_order, c.listing_out_of_order
        );
    }
}

fn print_report(w: &dyn Warehouse, weeks: u32, customer: Option<&str>) -> anyhow::Result<()> {
    let today = Utc::now().date_naive();
    let monday = today - chrono::Duration::days(today.weekday().num_days_from_monday() as i64);
    let since = monday - chrono::Duration::weeks(weeks.saturating_sub(1) as i64);
    let rows = w.weekly_active_users(&since.to_string(), customer)?;
    println!("{:<16} {:<10} {:<12} {:>12}", "customer", "iso_week", "week_start", "active_users");
    for r in &rows {
        println!("{:<16} {:<10} {:<12} {:>12}", r.customer, r.iso_week, r.week_start, r.active_users);
    }
    if rows.is_empty() {
        println!("(no activity since {since})");
    }
    Ok(())
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

async fn validate_files(config: &Config, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let contract = config.contract()?;
    let mut any_rejected = false;
    println!("{:<48} {:>10} {:>10} {:>10}  verdict", "file", "rows", "valid", "rejected");
    let mut details = Vec::new();
    for f in files {
        // The key as the ingester would see it decides a legacy file's customer.
        let key = match wau_ingest::store_for_path(config, f) {
            Ok((_, key)) => key,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(ExitCode::from(2));
            }
        };
        let (acc, rejects) = match check_file(&contract, config.read_limits(), f, &key).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        any_rejected |= acc.file_reject.is_some() || acc.rows_rejected > 0;
        print_row_of_file(f, &acc);
        details.extend(rejects.iter().map(|r| reason_line(f, r)));
    }
    print_reasons(&details);
    Ok(if any_rejected { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn print_row_of_file(f: &Path, acc: &FileAccount) {
    let verdict = match &acc.file_reject {
        Some(r) => format!("REJECTED ({}: {})", r.rule, r.reason),
        None if acc.rows_rejected > 0 => "some rows rejected".into(),
        None => "ok".into(),
    };
    println!(
        "{:<48} {:>10} {:>10} {:>10}  {verdict}",
        f.display().to_string(),
        acc.rows_read,
        acc.rows_loaded,
        acc.rows_rejected
    );
}

fn reason_line(f: &Path, r: &Reject) -> String {
    format!("{}:{}: {} [{}] {}", f.display(), r.line, r.column.as_deref().unwrap_or("-"), r.rule, r.reason)
}

fn print_reasons(details: &[String]) {
    if details.is_empty() {
        return;
    }
    println!("\nreasons:");
    for d in details.iter().take(1000) {
        println!("  {d}");
    }
    if details.len() > 1000 {
        println!("  … and {} more", details.len() - 1000);
    }
}

/// The `validate` report for one file (what `publish` prints when it refuses).
fn print_report_of_file(f: &Path, acc: &FileAccount, rejects: &[Reject]) {
    println!("{:<48} {:>10} {:>10} {:>10}  verdict", "file", "rows", "valid", "rejected");
    print_row_of_file(f, acc);
    print_reasons(&rejects.iter().map(|r| reason_line(f, r)).collect::<Vec<_>>());
}

/// The header and up to `max_rows` records of a sample (gzip by extension), read by the `csv`
/// crate: quoted fields, CRLF and a BOM as the validator sees them.
fn read_sample(file: &Path, max_rows: usize) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let reader: Box<dyn std::io::Read> = if file.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut csv = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(reader);
    let headers: Vec<String> = csv
        .headers()
        .with_context(|| format!("reading the header of {}", file.display()))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_string())
        .collect();
    if headers.iter().all(|h| h.trim().is_empty()) {
        anyhow::bail!("{} is empty", file.display());
    }
    let mut rows = Vec::new();
    for record in csv.records().take(max_rows) {
        let record = record.with_context(|| format!("reading {}", file.display()))?;
        rows.push(record.iter().map(str::to_string).collect());
    }
    Ok((headers, rows))
}

async fn run_demo(dir: &Path) -> anyhow::Result<ExitCode> {
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
    let store: Arc<dyn ObjectStore> = wau_ingest::embedded_store(&config)?;
    let warehouse = wau_ingest::open_warehouse(&config, &contract)?;
    warehouse.migrate()?;
    let metrics = Metrics::new();

    let all = store.list("").await?;
    let t = replay::ingest_objects(&config, store.clone(), warehouse.clone(), contract.clone(), all, false).await?;
    print_tally("\n1. first pass", &t);
    let m = run::merge_once(warehouse.clone(), &metrics).await.context("merge failed")?;
    println!("   merge: {} row(s) inserted", m.rows_inserted);

    // The producer corrects one export: the key is overwritten with new content.
    std::thread::sleep(Duration::from_millis(20));
    let rows = demo::overwrite(&inbox, &sample.overwrite_key, today)?;
    println!("\n2. {} overwritten with a corrected export ({rows} rows)", sample.overwrite_key);
    let all = store.list("").await?;
    let t = replay::ingest_objects(&config, store.clone(), warehouse.clone(), contract.clone(), all, false).await?;
    print_tally("   second pass over the whole folder (a replay)", &t);
    let m = run::merge_once(warehouse.clone(), &metrics).await.context("merge failed")?;
    println!("   merge: {} row(s) deleted, {} inserted", m.rows_deleted, m.rows_inserted);

    println!();
    print_totals(&warehouse.totals()?);
    println!();
    print_report(warehouse.as_ref(), 6, None)?;
    println!(
        "\nexplore: sqlite3 {} 'SELECT rule, COUNT(*) FROM wau_ingest_rejects GROUP BY rule'",
        config.warehouse.sqlite_path.display()
    );
    println!(
        "run the service on the same folder: wau-ingest run --inbox {} --db {}",
        inbox.display(),
        config.warehouse.sqlite_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
