//! The commands' workflows, one module per group; `main.rs` only parses arguments, calls
//! these and hands what they return to [`finish`].
//!
//! Each workflow returns its own typed report (or an error): the data of what it did, which
//! implements [`Report`]: its [`Verdict`] and its rendering in each format the command offers.
//! Workflows do not print their result; [`finish`] is the one place that prints a report in the
//! asked format and, through [`exit_code`], turns the outcome into the process's exit code
//! (README, Commands: 0 done, 1 done with something to act on, 2 could not run).

pub mod files;
pub mod ingest;
pub mod ops;
pub mod report;
pub mod status;

use std::io::Write;

use chrono::{DateTime, Utc};

use crate::pipeline::Tally;

/// How a command that ran ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything asked was done.
    Done,
    /// It ran, and found something a person must act on: rejected rows, files left to retry,
    /// an incomplete draft, a failed check, an unhealthy service.
    Attention,
    /// It could not run, and has said why already.
    Failed,
}

/// The process's exit code for a command's outcome: 0 done, 1 attention, 2 could not run
/// (also every error a workflow returns; clap's usage errors exit 2 as well).
pub fn exit_code(outcome: &anyhow::Result<Verdict>) -> u8 {
    match outcome {
        Ok(Verdict::Done) => 0,
        Ok(Verdict::Attention) => 1,
        Ok(Verdict::Failed) | Err(_) => 2,
    }
}

/// What a command found or did, as data, and how it is printed.
pub trait Report: Send {
    /// How the command ends (its exit code, through [`exit_code`]).
    fn verdict(&self) -> Verdict;
    /// The report on standard output, in `format` (a command offers only the formats its
    /// arguments accept; any other renders as text).
    fn render(&self, format: Format, out: &mut dyn Write) -> anyhow::Result<()>;
    /// A line for standard error after the report (why it needs attention, why it could not
    /// run), if any.
    fn notice(&self, _format: Format) -> Option<String> {
        None
    }
}

/// A workflow's report and the format it was asked for.
pub struct Output {
    pub report: Box<dyn Report>,
    pub format: Format,
}

impl Output {
    pub fn new(report: impl Report + 'static, format: Format) -> Output {
        Output { report: Box::new(report), format }
    }
    /// A report of a command without a `--format`.
    pub fn text(report: impl Report + 'static) -> Output {
        Output::new(report, Format::Text)
    }
}

/// Prints a command's outcome (the report on stdout and its notice on stderr, or the error on
/// stderr) and returns the exit code: the one place both happen.
pub fn finish(outcome: anyhow::Result<Output>) -> u8 {
    finish_to(outcome, &mut std::io::stdout().lock(), &mut std::io::stderr())
}

/// [`finish`] onto given streams. A report that cannot be written (a closed pipe) is an error.
pub fn finish_to(outcome: anyhow::Result<Output>, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let printed = outcome.and_then(|o| {
        o.report.render(o.format, out)?;
        out.flush()?;
        if let Some(notice) = o.report.notice(o.format) {
            let _ = writeln!(err, "{notice}");
        }
        Ok(o.report.verdict())
    });
    if let Err(e) = &printed {
        let _ = writeln!(err, "error: {e:#}");
    }
    exit_code(&printed)
}

/// The report of `run`: the service stopped cleanly (it logs as it goes; nothing to print).
pub struct Stopped;

impl Report for Stopped {
    fn verdict(&self) -> Verdict {
        Verdict::Done
    }
    fn render(&self, _: Format, _: &mut dyn Write) -> anyhow::Result<()> {
        Ok(())
    }
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// A time argument: RFC 3339 or a date (midnight UTC).
pub fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    use anyhow::Context;
    if let Some(t) = crate::contract::parse_timestamp(s) {
        return Ok(t);
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").with_context(|| format!("{s:?} is not a time"))?;
    Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
}

/// The verdict of a pass over files: attention when some are left to retry.
pub fn tally_verdict(t: &Tally) -> Verdict {
    if t.retried > 0 {
        Verdict::Attention
    } else {
        Verdict::Done
    }
}

/// One line of what a pass over files did.
pub fn tally_line(what: &str, t: &Tally) -> String {
    format!(
        "{what}: files new {} / duplicate {} / rejected {} / superseded {} / skipped {} / to retry {}; rows loaded {}, rejected {}",
        t.loaded, t.duplicate, t.rejected, t.superseded, t.skipped, t.retried, t.rows_loaded, t.rows_rejected
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_verdict_and_every_error_is_two() {
        assert_eq!(exit_code(&Ok(Verdict::Done)), 0);
        assert_eq!(exit_code(&Ok(Verdict::Attention)), 1);
        assert_eq!(exit_code(&Ok(Verdict::Failed)), 2);
        assert_eq!(exit_code(&Err(anyhow::anyhow!("no such file"))), 2);
    }

    /// A report whose verdict, text and notice are given.
    struct Fixed(Verdict, &'static str, Option<&'static str>);

    impl Report for Fixed {
        fn verdict(&self) -> Verdict {
            self.0
        }
        fn render(&self, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
            writeln!(out, "{} ({format:?})", self.1)?;
            Ok(())
        }
        fn notice(&self, _: Format) -> Option<String> {
            self.2.map(String::from)
        }
    }

    fn finished(outcome: anyhow::Result<Output>) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = finish_to(outcome, &mut out, &mut err);
        (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    #[test]
    fn finish_prints_the_report_in_its_format_and_exits_by_its_verdict() {
        let done = Output::new(Fixed(Verdict::Done, "all loaded", None), Format::Json);
        assert_eq!(finished(Ok(done)), (0, "all loaded (Json)\n".into(), String::new()));
        let todo = Output::text(Fixed(Verdict::Attention, "draft", Some("2 to decide")));
        assert_eq!(finished(Ok(todo)), (1, "draft (Text)\n".into(), "2 to decide\n".into()));
        let error = finished(Err(anyhow::anyhow!("no such file").context("opening a.csv")));
        assert_eq!(error, (2, String::new(), "error: opening a.csv: no such file\n".into()));
    }

    #[test]
    fn a_report_that_cannot_be_written_is_an_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut err = Vec::new();
        let code = finish_to(Ok(Output::text(Fixed(Verdict::Done, "x", None))), &mut Closed, &mut err);
        assert_eq!(code, 2);
        assert!(String::from_utf8(err).unwrap().starts_with("error: "));
    }

    #[test]
    fn a_pass_with_files_to_retry_needs_attention() {
        assert_eq!(tally_verdict(&Tally { loaded: 3, rejected: 1, ..Tally::default() }), Verdict::Done);
        assert_eq!(tally_verdict(&Tally { loaded: 3, retried: 1, ..Tally::default() }), Verdict::Attention);
    }
}
