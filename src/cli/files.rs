//! The file commands, which need no warehouse: `validate`, `publish`, `contract infer`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::Verdict;
use crate::config::Config;
use crate::publish::{check_file, PublishError, Published};
use crate::validate::{FileAccount, Reject};
use crate::{contract, Setup};

/// `validate`: each file against the contract; attention when any row or file is rejected.
pub async fn validate(config: &Config, files: &[PathBuf]) -> anyhow::Result<Verdict> {
    let contract = config.contract()?;
    let mut any_rejected = false;
    println!("{:<48} {:>10} {:>10} {:>10}  verdict", "file", "rows", "valid", "rejected");
    let mut details = Vec::new();
    for f in files {
        // The key as the ingester would see it decides a legacy file's customer.
        let (_, key) = crate::store_for_path(config, f)?;
        let (acc, rejects) = check_file(&contract, config.read_limits(), f, &key).await?;
        any_rejected |= acc.file_reject.is_some() || acc.rows_rejected > 0;
        print_row_of_file(f, &acc);
        details.extend(rejects.iter().map(|r| reason_line(f, r)));
    }
    print_reasons(&details);
    Ok(if any_rejected { Verdict::Attention } else { Verdict::Done })
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

/// `publish`: validate, add the customer column if missing, put it where the ingester reads.
pub async fn publish(config: Config, file: &Path, customer: &str, to: &str, gzip: bool) -> anyhow::Result<Verdict> {
    let cx = Setup::new(config)?;
    let (contract, limits) = (&cx.contract, cx.config.read_limits());
    let published = match crate::aws::s3_target(to).map_err(anyhow::Error::msg)? {
        Some((bucket, prefix)) => {
            let store = cx.s3_store(&bucket).await;
            crate::publish::publish_s3(contract, limits, file, &store, &prefix, customer, gzip).await
        }
        None => crate::publish::publish_local(contract, limits, file, Path::new(to), customer, gzip).await,
    };
    match published {
        Ok(Published::Done { dest, rows, added_customer }) => {
            let added = if added_customer { ", customer column added" } else { "" };
            println!("published {} → {} ({rows} rows{added})", file.display(), dest.display());
            Ok(Verdict::Done)
        }
        Ok(Published::Rejected { account, rejects }) => {
            print_report_of_file(file, &account, &rejects);
            println!("not published: fix the rows above (nothing was written)");
            Ok(Verdict::Attention)
        }
        // A file that cannot be read is the run's failure; anything else refused it.
        Err(e) => {
            eprintln!("error: {e}");
            Ok(if matches!(e, PublishError::Io { .. }) { Verdict::Failed } else { Verdict::Attention })
        }
    }
}

/// `contract infer`: a draft contract from a sample; attention while the draft has TODOs.
pub fn infer(file: &Path, name: &str, rows: usize) -> anyhow::Result<Verdict> {
    let (headers, sample) = read_sample(file, rows)?;
    let draft = contract::infer(name, &headers, &sample);
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
        Ok(Verdict::Done)
    } else {
        eprintln!("contract infer: the draft is incomplete ({} to decide; see the TODO lines)", draft.todo.len());
        Ok(Verdict::Attention)
    }
}

/// The header and up to `max_rows` records of a sample (gzip by extension), read by the `csv`
/// crate: quoted fields, CRLF and a BOM as the validator sees them.
pub fn read_sample(file: &Path, max_rows: usize) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
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
