//! The accounting invariant on a fixture set of good and bad files, on a real SQLite file:
//! every data line of every file ends up loaded or rejected with a reason, and the ledger
//! says so per file (`rows_read = rows_loaded + rows_rejected`).

mod support;

use std::path::Path;

use support::Env;

struct Expect {
    key: String,
    status: String,
    rows_read: Option<i64>,
    rows_loaded: i64,
    rows_rejected: Option<i64>,
    file_rule: Option<String>,
}

fn expectations() -> Vec<Expect> {
    let text = std::fs::read_to_string("tests/fixtures/accounting/expected.tsv").unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let num = |s: &str| if s == "*" { None } else { Some(s.parse().unwrap()) };
            Expect {
                key: f[0].into(),
                status: f[1].into(),
                rows_read: num(f[2]),
                rows_loaded: f[3].parse().unwrap(),
                rows_rejected: num(f[4]),
                file_rule: (f[5] != "-").then(|| f[5].to_string()),
            }
        })
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&entry.path(), &dest);
        } else if entry.file_name() != "expected.tsv" {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// The limits the fixtures are written for: `bad_record_limits.csv` and
/// `reject_header_too_long.csv` pass them by a few KiB, not by megabytes.
fn fixture_config(env: &Env) -> wau_ingest::config::Config {
    let mut config = env.config();
    config.limits.max_gzip_ratio = 100;
    config.limits.max_record_bytes = 4096;
    config.limits.max_columns = 64;
    config
}

#[test]
fn every_row_of_every_fixture_is_loaded_or_rejected_with_a_reason() {
    let env = Env::new();
    copy_tree(Path::new("tests/fixtures/accounting"), &env.inbox);
    let config = fixture_config(&env);
    let expected = expectations();
    assert!(expected.len() >= 25, "the fixture set has {} files", expected.len());

    let tally = env.ingest_all(&config, false);
    assert_eq!(tally.retried, 0);
    assert_eq!(tally.loaded + tally.rejected, expected.len() as u64);
    assert_eq!(tally.rejected, expected.iter().filter(|e| e.status == "rejected").count() as u64);

    let ledger = env.ledger();
    assert_eq!(ledger.len(), expected.len(), "one ledger row per file");
    let conn = env.conn();
    for e in &expected {
        let row = ledger.iter().find(|r| r.key == e.key).unwrap_or_else(|| panic!("{} is not in the ledger", e.key));
        assert_eq!(row.status, e.status, "{}", e.key);
        assert_eq!(row.rows_read, row.rows_loaded + row.rows_rejected, "{} breaks the invariant", e.key);
        if let Some(n) = e.rows_read {
            assert_eq!(row.rows_read, n, "{} rows_read", e.key);
        }
        assert_eq!(row.rows_loaded, e.rows_loaded, "{} rows_loaded", e.key);
        if let Some(n) = e.rows_rejected {
            assert_eq!(row.rows_rejected, n, "{} rows_rejected", e.key);
        }
        let staged: i64 = conn
            .query_row("SELECT COUNT(*) FROM wau_audit_logs_staging WHERE _file_key = ?1", [&e.key], |r| r.get(0))
            .unwrap();
        assert_eq!(staged, e.rows_loaded, "{} staging rows", e.key);
        let reasons: Vec<(i64, String, String)> = {
            let mut s =
                conn.prepare("SELECT line, rule, reason FROM wau_ingest_rejects WHERE key = ?1 ORDER BY line").unwrap();
            s.query_map([&e.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
        };
        assert!(reasons.iter().all(|(_, _, reason)| !reason.is_empty()), "{}: a reject without a reason", e.key);
        match &e.file_rule {
            // A file rejected whole: one reject row carrying the file's rule.
            Some(rule) => {
                assert_eq!(reasons.len(), 1, "{}: {reasons:?}", e.key);
                assert_eq!(&reasons[0].1, rule, "{}", e.key);
            }
            // Row-level rejects: one reject row per rejected row, each with its line.
            None => {
                assert_eq!(reasons.len() as i64, row.rows_rejected, "{}", e.key);
                assert!(reasons.iter().all(|(line, _, _)| *line >= 2), "{}: {reasons:?}", e.key);
            }
        }
    }

    // Nothing else was loaded, and every rejected row has its reason somewhere.
    let loaded: i64 = expected.iter().map(|e| e.rows_loaded).sum();
    assert_eq!(env.count("SELECT COUNT(*) FROM wau_audit_logs_staging"), loaded);
    env.merge(&config);
    // Every loaded fixture row has its own event id, so the target holds them all.
    assert_eq!(env.count("SELECT COUNT(*) FROM wau_audit_logs"), loaded);

    // A second pass finds nothing new: every file is a duplicate.
    let again = env.ingest_all(&config, false);
    assert_eq!((again.loaded, again.rejected, again.duplicate), (0, 0, expected.len() as u64));
}

#[test]
fn row_level_reasons_name_line_column_and_value() {
    let env = Env::new();
    copy_tree(Path::new("tests/fixtures/accounting"), &env.inbox);
    env.ingest_all(&env.config(), false);
    let conn = env.conn();
    let (line, column, rule, value, raw): (i64, String, String, String, String) = conn
        .query_row(
            "SELECT line, column_name, rule, value, raw_line FROM wau_ingest_rejects WHERE key = 'csv/acme/bad_time.csv'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!((line, column.as_str(), rule.as_str(), value.as_str()), (3, "event_time", "type", "23/11/2026"));
    assert!(raw.contains(",23/11/2026,"), "{raw}");
}

#[test]
fn lines_are_physical_and_quoted_text_is_stored_exactly() {
    let env = Env::new();
    copy_tree(Path::new("tests/fixtures/accounting"), &env.inbox);
    env.ingest_all(&fixture_config(&env), false);
    let conn = env.conn();
    let staged = |key: &str| -> Vec<(i64, String, Option<String>)> {
        let mut s = conn
            .prepare(
                "SELECT _line, event_id, user_agent FROM wau_audit_logs_staging WHERE _file_key = ?1 ORDER BY _line",
            )
            .unwrap();
        s.query_map([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
    };
    let rejects = |key: &str| -> Vec<(i64, String)> {
        let mut s = conn.prepare("SELECT line, rule FROM wau_ingest_rejects WHERE key = ?1 ORDER BY line").unwrap();
        s.query_map([key], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    // CR-only line ends, a blank line, and a CRLF inside a quoted field (one line break, kept).
    assert_eq!(
        staged("csv/acme/good_cr_only_blank_lines.csv"),
        vec![(2, "fr-1".into(), None), (4, "fr-2".into(), Some("multi\r\nline".into())), (6, "fr-3".into(), None)]
    );
    // A quote inside an unquoted field is a literal byte; text after a closing quote and a quote
    // never closed are rejected, the latter taking the rest of the file (line 6) with it.
    assert_eq!(
        staged("csv/acme/bad_quotes.csv"),
        vec![(2, "fr-4".into(), None), (4, "fr-6".into(), Some("ab\"c".into()))]
    );
    assert_eq!(rejects("csv/acme/bad_quotes.csv"), vec![(3, "stray_quote".into()), (5, "unterminated_quote".into())]);
    assert_eq!(
        staged("csv/acme/bad_record_limits.csv").iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![2, 4, 6],
        "the rows after an over-long record load"
    );
    assert_eq!(rejects("csv/acme/bad_record_limits.csv"), vec![(3, "too_long".into()), (5, "too_many_columns".into())]);
    assert_eq!(rejects("csv/acme/reject_header_too_long.csv"), vec![(1, "too_long".into())]);
}
