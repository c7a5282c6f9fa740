//! File versions, rows and rejects as the pipeline hands them to a `BatchSink`: shared by the
//! warehouse conformance suite and the Redshift-specific tests.

use chrono::Utc;
use wau_ingest::validate::{Reject, RowChunk};
use wau_ingest::warehouse::{Admission, BatchSink, FileMeta, FileStatus, FileSummary};

/// The bucket every test version lives in.
pub const BUCKET: &str = "central";

pub fn meta(key: &str, version: &str, seq: &str) -> FileMeta {
    FileMeta {
        bucket: BUCKET.into(),
        key: key.into(),
        version: version.into(),
        sequencer: seq.into(),
        size: 100,
        event_time: Utc::now(),
        contract_version: 1,
        customer: None,
    }
}

/// Rows (customer, event_id, user_id) on lines 2, 3, …, with a user agent that breaks naive
/// CSV and SQL literals.
pub fn chunk(rows: &[(&str, &str, &str)]) -> RowChunk {
    let mut c = RowChunk::new(8);
    for (i, (cust, id, user)) in rows.iter().enumerate() {
        c.push_row(
            &[
                Some(cust),
                Some(id),
                Some("2026-11-23 10:00:00"),
                Some(user),
                None,
                Some("login"),
                None,
                Some("agent, \"quoted\""),
            ],
            i as u64 + 2,
        );
    }
    c
}

pub fn loaded(rows: u64, rejected: u64) -> FileSummary {
    FileSummary {
        status: FileStatus::Loaded,
        rows_read: rows + rejected,
        rows_loaded: rows,
        rows_rejected: rejected,
        reason: None,
        customer: None,
    }
}

/// Admits `m` and, when it is to be loaded, loads `rows` and finishes it.
pub async fn load(sink: &mut dyn BatchSink, m: &FileMeta, rows: &[(&str, &str, &str)]) -> Admission {
    let a = sink.admit(m, false).await.unwrap();
    if a == Admission::Load {
        sink.write_rows(chunk(rows)).await.unwrap();
        assert!(sink.finish_file(&loaded(rows.len() as u64, 0)).await.unwrap());
    }
    a
}

/// A `format` reject of `user_email` on `line`.
pub fn reject(line: u64, value: &str, raw: &str) -> Reject {
    Reject {
        line,
        column: Some("user_email".into()),
        rule: "format",
        reason: "not an email address".into(),
        value: Some(value.into()),
        raw: Some(raw.into()),
    }
}
