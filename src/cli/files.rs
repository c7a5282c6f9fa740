//! The file commands, which need no warehouse: `validate`, `publish`, `contract infer`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Format, Report, Verdict};
use crate::config::Config;
use crate::publish::{check_file, PublishError, Published};
use crate::validate::{FileAccount, Reject};
use crate::{contract, Setup};

/// What `validate` found: one account per file named (in the order named) and every reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidateReport {
    pub files: Vec<(PathBuf, FileAccount)>,
    /// `FILE:LINE: COLUMN [RULE] REASON`, the first [`MAX_REASONS`] printed.
    pub reasons: Vec<String>,
}

/// Reasons a validate report prints; it counts the rest.
pub const MAX_REASONS: usize = 1000;

impl ValidateReport {
    fn add(&mut self, f: &Path, acc: FileAccount, rejects: &[Reject]) {
        self.reasons.extend(rejects.iter().map(|r| reason_line(f, r)));
        self.files.push((f.to_path_buf(), acc));
    }
}

impl Report for ValidateReport {
    /// Attention when any file, or any row of one, is rejected.
    fn verdict(&self) -> Verdict {
        if self.files.iter().any(|(_, acc)| acc.file_reject.is_some() || acc.rows_rejected > 0) {
            Verdict::Attention
        } else {
            Verdict::Done
        }
    }

    fn render(&self, _: Format, out: &mut dyn Write) -> anyhow::Result<()> {
        writeln!(out, "{:<48} {:>10} {:>10} {:>10}  verdict", "file", "rows", "valid", "rejected")?;
        for (f, acc) in &self.files {
            let verdict = match &acc.file_reject {
                Some(r) => format!("REJECTED ({}: {})", r.rule, r.reason),
                None if acc.rows_rejected > 0 => "some rows rejected".into(),
                None => "ok".into(),
            };
            writeln!(
                out,
                "{:<48} {:>10} {:>10} {:>10}  {verdict}",
                f.display().to_string(),
                acc.rows_read,
                acc.rows_loaded,
                acc.rows_rejected
            )?;
        }
        if self.reasons.is_empty() {
            return Ok(());
        }
        writeln!(out, "\nreasons:")?;
        for d in self.reasons.iter().take(MAX_REASONS) {
            writeln!(out, "  {d}")?;
        }
        if self.reasons.len() > MAX_REASONS {
            writeln!(out, "  … and {} more", self.reasons.len() - MAX_REASONS)?;
        }
        Ok(())
    }
}

/// `validate`: each file against the contract. The files are the ones named on the command
/// line, so their accounts are collected and printed once, after the last.
pub async fn validate(config: &Config, files: &[PathBuf]) -> anyhow::Result<ValidateReport> {
    let contract = config.contract()?;
    let mut report = ValidateReport::default();
    for f in files {
        // The key as the ingester would see it decides a legacy file's customer.
        let (_, key) = crate::store_for_path(config, f)?;
        let (acc, rejects) = check_file(&contract, config.read_limits(), f, &key).await?;
        report.add(f, acc, &rejects);
    }
    Ok(report)
}

fn reason_line(f: &Path, r: &Reject) -> String {
    format!("{}:{}: {} [{}] {}", f.display(), r.line, r.column.as_deref().unwrap_or("-"), r.rule, r.reason)
}

/// What `publish` did.
#[derive(Debug, Clone, PartialEq)]
pub enum PublishReport {
    Published {
        file: PathBuf,
        dest: PathBuf,
        rows: u64,
        added_customer: bool,
    },
    /// Validation rejected the file or some of its rows: nothing was written.
    Rejected(ValidateReport),
    /// It did not get as far as a verdict; `unreadable` when the file could not be read.
    Error {
        message: String,
        unreadable: bool,
    },
}

impl Report for PublishReport {
    /// Attention when rejected or refused; failed when the file could not be read.
    fn verdict(&self) -> Verdict {
        match self {
            PublishReport::Published { .. } => Verdict::Done,
            PublishReport::Rejected(_) => Verdict::Attention,
            PublishReport::Error { unreadable: true, .. } => Verdict::Failed,
            PublishReport::Error { .. } => Verdict::Attention,
        }
    }

    fn render(&self, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
        match self {
            PublishReport::Published { file, dest, rows, added_customer } => {
                let added = if *added_customer { ", customer column added" } else { "" };
                writeln!(out, "published {} → {} ({rows} rows{added})", file.display(), dest.display())?;
            }
            PublishReport::Rejected(validated) => {
                validated.render(format, out)?;
                writeln!(out, "not published: fix the rows above (nothing was written)")?;
            }
            PublishReport::Error { .. } => {}
        }
        Ok(())
    }

    fn notice(&self, _: Format) -> Option<String> {
        match self {
            PublishReport::Error { message, .. } => Some(format!("error: {message}")),
            _ => None,
        }
    }
}

/// `publish`: validate, add the customer column if missing, put it where the ingester reads.
pub async fn publish(
    config: Config,
    file: &Path,
    customer: &str,
    to: &str,
    gzip: bool,
) -> anyhow::Result<PublishReport> {
    let cx = Setup::new(config)?;
    let (contract, limits) = (&cx.contract, cx.config.read_limits());
    let published = match crate::aws::s3_target(to).map_err(anyhow::Error::msg)? {
        Some((bucket, prefix)) => {
            let store = cx.s3_store(&bucket).await;
            crate::publish::publish_s3(contract, limits, file, &store, &prefix, customer, gzip).await
        }
        None => crate::publish::publish_local(contract, limits, file, Path::new(to), customer, gzip).await,
    };
    Ok(match published {
        Ok(Published::Done { dest, rows, added_customer }) => {
            PublishReport::Published { file: file.to_path_buf(), dest, rows, added_customer }
        }
        Ok(Published::Rejected { account, rejects }) => {
            let mut validated = ValidateReport::default();
            validated.add(file, account, &rejects);
            PublishReport::Rejected(validated)
        }
        // A file that cannot be read is the run's failure; anything else refused it.
        Err(e) => PublishReport::Error { message: e.to_string(), unreadable: matches!(e, PublishError::Io { .. }) },
    })
}

/// What `contract infer` drafted, from which sample.
#[derive(Debug, Clone)]
pub struct InferReport {
    pub file: PathBuf,
    /// Rows read from the sample.
    pub rows: usize,
    pub draft: contract::Draft,
}

impl Report for InferReport {
    /// Attention while the draft has something left to decide.
    fn verdict(&self) -> Verdict {
        if self.draft.todo.is_empty() {
            Verdict::Done
        } else {
            Verdict::Attention
        }
    }

    /// The draft as TOML, its TODOs as comments above it.
    fn render(&self, _: Format, out: &mut dyn Write) -> anyhow::Result<()> {
        writeln!(
            out,
            "# Drafted by `wau-ingest contract infer` from {} ({} rows). Review before use.",
            self.file.display(),
            self.rows
        )?;
        for todo in &self.draft.todo {
            writeln!(out, "# TODO: {todo}")?;
        }
        write!(out, "{}", toml::to_string(&self.draft.contract)?)?;
        Ok(())
    }

    fn notice(&self, _: Format) -> Option<String> {
        (!self.draft.todo.is_empty()).then(|| {
            format!("contract infer: the draft is incomplete ({} to decide; see the TODO lines)", self.draft.todo.len())
        })
    }
}

/// `contract infer`: a draft contract from a sample read by [`read_sample`].
pub fn infer(file: &Path, name: &str, rows: usize) -> anyhow::Result<InferReport> {
    let (headers, sample) = read_sample(file, rows)?;
    let draft = contract::infer(name, &headers, &sample);
    Ok(InferReport { file: file.to_path_buf(), rows: sample.len(), draft })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::FileReject;

    fn account(rows: u64, rejected: u64) -> FileAccount {
        FileAccount { rows_read: rows, rows_loaded: rows - rejected, rows_rejected: rejected, ..Default::default() }
    }

    fn reject(line: u64) -> Reject {
        Reject {
            line,
            column: Some("event_time".into()),
            rule: "type",
            reason: "not a time".into(),
            value: None,
            raw: None,
        }
    }

    fn rendered(r: &dyn Report) -> String {
        let mut out = Vec::new();
        r.render(Format::Text, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn validate_needs_attention_when_any_row_or_file_is_rejected() {
        let mut r = ValidateReport::default();
        r.add(Path::new("a.csv"), account(3, 0), &[]);
        assert_eq!(r.verdict(), Verdict::Done);
        assert!(rendered(&r).lines().nth(1).unwrap().ends_with("  ok"));

        let mut rows = r.clone();
        rows.add(Path::new("b.csv"), account(3, 1), &[reject(2)]);
        assert_eq!(rows.verdict(), Verdict::Attention);
        assert!(rendered(&rows).contains("\nreasons:\n  b.csv:2: event_time [type] not a time\n"));

        let mut whole = r.clone();
        let file_reject = Some(FileReject { rule: "header", reason: "no header".into(), line: 1 });
        whole.add(Path::new("c.csv"), FileAccount { file_reject, ..Default::default() }, &[]);
        assert_eq!(whole.verdict(), Verdict::Attention);
        assert!(rendered(&whole).contains("REJECTED (header: no header)"));
    }

    #[test]
    fn validate_prints_the_first_thousand_reasons_and_counts_the_rest() {
        let mut r = ValidateReport::default();
        let rejects: Vec<Reject> = (2..1005).map(reject).collect();
        r.add(Path::new("big.csv"), account(1003, 1003), &rejects);
        let text = rendered(&r);
        assert_eq!(text.lines().filter(|l| l.starts_with("  big.csv:")).count(), MAX_REASONS);
        assert!(text.ends_with("  … and 3 more\n"), "{}", &text[text.len() - 40..]);
    }

    #[test]
    fn publish_fails_only_when_the_file_cannot_be_read() {
        let published = PublishReport::Published {
            file: "a.csv".into(),
            dest: "inbox/a.csv".into(),
            rows: 3,
            added_customer: true,
        };
        assert_eq!(published.verdict(), Verdict::Done);
        assert_eq!(rendered(&published), "published a.csv → inbox/a.csv (3 rows, customer column added)\n");
        let mut validated = ValidateReport::default();
        validated.add(Path::new("a.csv"), account(3, 1), &[reject(2)]);
        let rejected = PublishReport::Rejected(validated);
        assert_eq!(rejected.verdict(), Verdict::Attention);
        assert!(rendered(&rejected).ends_with("not published: fix the rows above (nothing was written)\n"));
        let unreadable = PublishReport::Error { message: "reading a.csv: gone".into(), unreadable: true };
        assert_eq!(unreadable.verdict(), Verdict::Failed);
        assert_eq!(unreadable.notice(Format::Text).as_deref(), Some("error: reading a.csv: gone"));
        assert_eq!(rendered(&unreadable), "");
        let refused = PublishReport::Error { message: "no customer".into(), unreadable: false };
        assert_eq!(refused.verdict(), Verdict::Attention);
    }

    #[test]
    fn an_inferred_draft_needs_attention_while_it_has_todos() {
        let headers: Vec<String> = ["event_id", "user_id"].map(String::from).to_vec();
        let rows = vec![vec!["e1".to_string(), "u1".to_string()]];
        let mut r = InferReport { file: "s.csv".into(), rows: 1, draft: contract::infer("t", &headers, &rows) };
        r.draft.todo = vec![];
        assert_eq!(r.verdict(), Verdict::Done);
        assert_eq!(r.notice(Format::Text), None);
        r.draft.todo = vec!["which column is the event time".into()];
        assert_eq!(r.verdict(), Verdict::Attention);
        assert!(r.notice(Format::Text).unwrap().contains("(1 to decide"));
        let text = rendered(&r);
        assert!(text.starts_with("# Drafted by `wau-ingest contract infer` from s.csv (1 rows). Review before use.\n# TODO: which column is the event time\n"), "{text}");
    }

    #[test]
    fn infer_reads_its_sample_as_the_csv_crate_does_quotes_crlf_bom_and_gzip() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let text = "\u{feff}event_id,note\r\ne1,\"a, b\"\r\ne2,\"two\r\nlines \"\"quoted\"\"\"\r\ne3,x\r\n";
        let plain = dir.path().join("s.csv");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("s.csv.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), Default::default());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        for f in [&plain, &gz] {
            let (headers, rows) = read_sample(f, 2).unwrap();
            assert_eq!(headers, ["event_id", "note"], "{}", f.display());
            assert_eq!(rows, [vec!["e1", "a, b"], vec!["e2", "two\r\nlines \"quoted\""]], "{}", f.display());
        }
        let empty = dir.path().join("empty.csv");
        std::fs::write(&empty, "").unwrap();
        assert!(read_sample(&empty, 10).unwrap_err().to_string().contains("is empty"));
    }
}
