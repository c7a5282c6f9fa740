//! Test fixtures shared by the files' unit tests: a file's metadata and an open batch's entry.
//! Test code only; nothing outside `#[cfg(test)]` may use it.

use chrono::Utc;

use super::batch::Entry;
use crate::validate::Reject;
use crate::warehouse::{FileMeta, FileStatus};

pub(super) fn meta(key: &str, version: &str, seq: &str) -> FileMeta {
    FileMeta {
        bucket: "b".into(),
        key: key.into(),
        version: version.into(),
        sequencer: seq.into(),
        size: 10,
        event_time: Utc::now(),
        contract_version: 1,
        customer: None,
    }
}

pub(super) fn entry(key: &str, rejects: usize, reject_bytes: usize) -> Entry {
    Entry {
        meta: meta(key, "v1", "1"),
        status: FileStatus::Loaded,
        rows_read: 1 + rejects as u64,
        rows_loaded: 1,
        rows_rejected: rejects as u64,
        reason: None,
        customer: None,
        merged_at: None,
        replaces: false,
        parts: vec![format!("staging/1/{key}.gz")],
        staged_rows: 1,
        staged_bytes: 10,
        rejects: (0..rejects)
            .map(|i| Reject {
                line: i as u64 + 2,
                column: Some("user_email".into()),
                rule: "format",
                reason: "not an email".into(),
                value: Some("x".repeat(reject_bytes / 4)),
                raw: Some("r".repeat(reject_bytes)),
            })
            .collect(),
        reject_parts: Vec::new(),
    }
}
