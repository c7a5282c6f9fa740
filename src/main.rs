//! The `wau-ingest` binary: argument parsing and dispatch only; the work, its reports and the
//! exit codes are in the library (`wau_ingest::cli`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use wau_ingest::cli::{self, files, ingest, ops, Format, Output};
use wau_ingest::config::Config;
use wau_ingest::replay::Filter;
use wau_ingest::warehouse::sql::Dialect;
use wau_ingest::{run, Setup};

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
    /// Create the warehouse tables and view, and add the optional columns the contract gained
    /// (idempotent); refuse, changing nothing, when a change is destructive or narrowing.
    Migrate {
        /// Print the DDL for a dialect instead of running it.
        #[arg(long, value_enum, conflicts_with = "plan")]
        print: Option<PrintDialect>,
        /// Print what migrate would change, table by table, and change nothing. Exit 0 nothing
        /// to do, 1 changes migrate would apply, 2 a change it refuses.
        #[arg(long)]
        plan: bool,
        /// The plan's format.
        #[arg(long, value_enum, default_value_t = StatusFormat::Text, requires = "plan")]
        format: StatusFormat,
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
    /// Weekly active users per customer: a trend over the last WEEKS ISO weeks and the change
    /// from the previous week (text), or one row per customer and week (csv, json).
    Report {
        #[arg(long, default_value_t = 8)]
        weeks: u32,
        #[arg(long)]
        customer: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// One screen for an operator: backlog (queue, in flight, DLQ; or the folder's unloaded
    /// files), last merge and reconcile, unmerged files, the last day per customer, the top
    /// reject rules.
    Status {
        #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
        format: StatusFormat,
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
        #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
        format: StatusFormat,
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
enum StatusFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Text,
    Csv,
    Json,
}

impl From<StatusFormat> for Format {
    fn from(f: StatusFormat) -> Format {
        match f {
            StatusFormat::Text => Format::Text,
            StatusFormat::Json => Format::Json,
        }
    }
}

impl From<ReportFormat> for Format {
    fn from(f: ReportFormat) -> Format {
        match f {
            ReportFormat::Text => Format::Text,
            ReportFormat::Csv => Format::Csv,
            ReportFormat::Json => Format::Json,
        }
    }
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
    let outcome = runtime.block_on(dispatch(cli));
    let code = cli::finish(outcome);
    // Everything that must be durable is committed by now; do not wait for blocking threads
    // (an interrupted merge rolls back by itself).
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code)
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

async fn dispatch(cli: Cli) -> anyhow::Result<Output> {
    let config = load_config(&cli)?;
    Ok(match cli.command {
        Command::Run { http_listen } => {
            let mut config = config;
            if let Some(l) = http_listen {
                config.http.listen = l;
            }
            run::run(Setup::new(config)?.parts().await?, shutdown_signal()).await?;
            Output::text(cli::Stopped)
        }
        Command::Validate { files } => Output::text(files::validate(&config, &files).await?),
        Command::Migrate { print, plan, format } => {
            let mode = match print {
                Some(d) => ingest::MigrateMode::Print(match d {
                    PrintDialect::Sqlite => Dialect::Sqlite,
                    PrintDialect::Postgres => Dialect::Postgres,
                    PrintDialect::Redshift => Dialect::Redshift,
                }),
                None if plan => ingest::MigrateMode::Plan,
                None => ingest::MigrateMode::Apply,
            };
            Output::new(ingest::migrate(config, mode).await?, format.into())
        }
        Command::Merge { print_sql } => Output::text(ingest::merge(config, print_sql).await?),
        Command::Replay { path, since, until, glob, dry_run, force } => {
            let filter = Filter {
                since: since.as_deref().map(cli::parse_time).transpose()?,
                until: until.as_deref().map(cli::parse_time).transpose()?,
                glob: glob.as_deref().map(|g| globset::Glob::new(g).map(|g| g.compile_matcher())).transpose()?,
            };
            Output::text(ingest::replay(config, ingest::ReplayArgs { path: &path, filter, dry_run, force }).await?)
        }
        Command::Reconcile => Output::text(ingest::reconcile(config).await?),
        Command::Report { weeks, customer, format } => {
            Output::new(ingest::report(config, weeks, customer).await?, format.into())
        }
        Command::Status { format } => Output::new(ingest::status(config).await?, format.into()),
        Command::Demo { dir } => Output::text(ops::demo(&dir).await?),
        Command::Selftest { format } => Output::new(ops::selftest(config).await?, format.into()),
        Command::Contract { command: ContractCommand::Infer { file, name, rows } } => {
            Output::text(files::infer(&file, &name, rows)?)
        }
        Command::Publish { file, customer, to, gzip } => {
            Output::text(files::publish(config, &file, &customer, &to, gzip).await?)
        }
        Command::Catalog { command: CatalogCommand::Sync { database, table, location } } => {
            Output::text(ops::catalog_sync(config, &database, &table, location).await?)
        }
        Command::Healthcheck { ready, addr } => Output::text(ops::healthcheck(&config, ready, addr).await?),
    })
}
