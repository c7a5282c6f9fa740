//! The commands' workflows, one module per group; `main.rs` only parses arguments, calls
//! these and exits with [`exit_code`].
//!
//! Each workflow returns a [`Verdict`] (or an error); [`exit_code`] is the one place that turns
//! them into the process's exit code (README, Commands: 0 done, 1 done with something to act on,
//! 2 could not run).

pub mod files;
pub mod ingest;
pub mod ops;
pub mod report;
pub mod status;

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
}
