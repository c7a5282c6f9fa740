//! Values as SQL text and as CSV: string literals that read back the same on Redshift and on
//! PostgreSQL (see "Values in SQL text" in the `redshift` module docs), `:name` parameters
//! filled with literals, text cut to column widths, and the rows of literals that commits send
//! as `VALUES` or as COPY's CSV.
//!
//! `deploy/glue/merge_job.py` (`render_parameters`) is its Python twin: both render the merge's
//! parameters, and they must produce the same text (a change here is a change there).
//!
//! Pure functions only: no I/O, no statements, no batch state.

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use crate::warehouse::sql::sql_literal_body;
use crate::warehouse::stage;

/// A SQL string literal that reads back as `s` on Redshift (backslash escapes in literals) and
/// on PostgreSQL (none): quotes doubled by [`sql_literal_body`], every backslash written as
/// `CHR(92)` outside the quotes. NUL, which neither engine stores in text, becomes U+FFFD.
pub fn sql_string(s: &str) -> String {
    let s: Cow<'_, str> = if s.contains('\0') { Cow::Owned(s.replace('\0', "\u{FFFD}")) } else { Cow::Borrowed(s) };
    if !s.contains('\\') {
        return format!("'{}'", sql_literal_body(&s));
    }
    let mut parts: Vec<String> = Vec::new();
    for (i, segment) in s.split('\\').enumerate() {
        if i > 0 {
            parts.push("CHR(92)".into());
        }
        if !segment.is_empty() {
            parts.push(format!("'{}'", sql_literal_body(segment)));
        }
    }
    format!("({})", parts.join(" || "))
}

/// One value rendered into SQL text.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Int(i64),
    Null,
}

impl Lit {
    pub fn sql(&self) -> String {
        match self {
            Lit::Str(s) => sql_string(s),
            Lit::Int(i) => i.to_string(),
            Lit::Null => "NULL".into(),
        }
    }

    pub(super) fn opt(s: Option<&str>) -> Lit {
        s.map_or(Lit::Null, |s| Lit::Str(s.to_string()))
    }

    /// The CSV field COPY reads back as this value (NULL is an empty unquoted field).
    fn csv(&self, out: &mut Vec<u8>) {
        match self {
            Lit::Str(s) => stage::csv_field(out, Some(&s.replace('\0', "\u{FFFD}"))),
            Lit::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Lit::Null => {}
        }
    }
}

/// Fills the `:name` parameters of shared SQL text with literals, the way the Glue merge job
/// does (`deploy/glue/merge_job.py`). Quoted text and `::casts` are left alone; a parameter
/// without a value is an error (the text is not what the caller thinks it is).
pub fn render(sql: &str, params: &[(&str, Lit)]) -> Result<String, String> {
    let b = sql.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = String::with_capacity(sql.len() + 64);
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b':' if b.get(i + 1) == Some(&b':') => i += 2,
            b':' if (i == 0 || !word(b[i - 1]))
                && b.get(i + 1).is_some_and(|&c| c.is_ascii_alphabetic() || c == b'_') =>
            {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && word(b[end]) {
                    end += 1;
                }
                let name = &sql[start..end];
                let (_, value) =
                    params.iter().find(|(n, _)| *n == name).ok_or_else(|| format!("no value for parameter :{name}"))?;
                out.push_str(&sql[copied..i]);
                out.push_str(&value.sql());
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// `s` as a VARCHAR(`max`) holds it: NUL (which no engine stores) replaced by U+FFFD first,
/// then cut to at most `max` bytes at a character boundary (Redshift VARCHAR widths are bytes),
/// so the replacement can never push the text past the width.
pub(super) fn fit(s: &str, max: usize) -> Cow<'_, str> {
    let s: Cow<'_, str> = if s.contains('\0') { Cow::Owned(s.replace('\0', "\u{FFFD}")) } else { Cow::Borrowed(s) };
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(&b[..end]),
        Cow::Owned(mut o) => {
            o.truncate(end);
            Cow::Owned(o)
        }
    }
}

/// A timestamp as the warehouse's TIMESTAMP columns take it (microseconds, like the Glue job).
pub(super) fn timestamp_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Rows rendered as `INSERT … VALUES` statements, each within `budget` bytes, rows in order.
/// `None` when one row alone does not fit (the caller then loads the rows by COPY).
pub(super) fn values_statements(head: &str, rows: &[String], budget: usize) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut current = String::new();
    for row in rows {
        if head.len() + " VALUES ".len() + row.len() > budget {
            return None;
        }
        if !current.is_empty() && current.len() + 2 + row.len() > budget {
            out.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current = format!("{head} VALUES {row}");
        } else {
            current.push_str(",\n");
            current.push_str(row);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    Some(out)
}

pub(super) fn values_row(values: &[Lit]) -> String {
    format!("({})", values.iter().map(Lit::sql).collect::<Vec<_>>().join(", "))
}

pub(super) fn csv_line(values: &[Lit], out: &mut Vec<u8>) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        v.csv(out);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Contract;
    use crate::warehouse::redshift::{MAX_STATEMENT_BYTES, STATEMENT_BUDGET_BYTES};
    use crate::warehouse::sql::{Dialect, Sql, Tables};

    #[test]
    fn string_literals_mean_the_same_text_with_or_without_backslash_escapes() {
        assert_eq!(sql_string("plain"), "'plain'");
        assert_eq!(sql_string("it's"), "'it''s'");
        assert_eq!(sql_string(""), "''");
        assert_eq!(sql_string(r"a\b"), r"('a' || CHR(92) || 'b')");
        // A trailing backslash can never swallow the closing quote.
        assert_eq!(sql_string(r"x\"), r"('x' || CHR(92))");
        assert_eq!(sql_string(r"\\'"), r"(CHR(92) || CHR(92) || '''')");
        assert_eq!(sql_string("nul\0here"), "'nul\u{FFFD}here'");
        for s in [r"a\b", r"\", r"'\'", "x"] {
            assert!(!sql_string(s).contains(r"\"), "{s:?} leaves a backslash in quotes");
        }
    }

    #[test]
    fn parameters_render_as_literals_outside_quotes_only() {
        let sql = "SELECT ':no', a::int FROM t WHERE k = :key AND v = :key AND n = :n AND x IS :nothing";
        let out = render(sql, &[("key", Lit::Str("o'k".into())), ("n", Lit::Int(7)), ("nothing", Lit::Null)]).unwrap();
        assert_eq!(out, "SELECT ':no', a::int FROM t WHERE k = 'o''k' AND v = 'o''k' AND n = 7 AND x IS NULL");
        assert!(render("SELECT :missing", &[]).unwrap_err().contains(":missing"));
        // A value holding a colon is not rendered again.
        assert_eq!(render(":a, :b", &[("a", Lit::Str(":b".into())), ("b", Lit::Int(1))]).unwrap(), "':b', 1");
    }

    #[test]
    fn merge_parameters_render_as_the_glue_job_renders_them() {
        let c = Contract::builtin();
        let t = Tables::for_contract(&c);
        let sql = Sql::new(Dialect::Redshift, &c, &t);
        let params = [
            ("merged_at", Lit::Str("2026-11-27 00:00:00.000000".into())),
            ("rows_deleted", Lit::Null),
            ("rows_inserted", Lit::Null),
        ];
        let merge: Vec<String> = sql.merge().iter().map(|s| render(&s.sql, &params).unwrap()).collect();
        assert!(merge.iter().all(|s| !s.contains(":merged_at") && !s.contains(":rows_")));
        let history = merge.iter().find(|s| s.starts_with("INSERT INTO wau_ingest_merges")).unwrap();
        assert!(
            history
                .contains("SELECT '2026-11-27 00:00:00.000000', COALESCE(MAX(batch_id), 0), COUNT(*), NULL, NULL FROM"),
            "{history}"
        );
    }

    #[test]
    fn values_statements_stay_under_the_limit_and_keep_every_row_in_order() {
        let rows: Vec<String> = (0..500).map(|i| format!("({i}, '{}')", "x".repeat(900))).collect();
        let stmts = values_statements("INSERT INTO t (a, b)", &rows, STATEMENT_BUDGET_BYTES).unwrap();
        assert!(stmts.len() >= 5, "{} statements", stmts.len());
        assert!(stmts.iter().all(|s| s.len() <= STATEMENT_BUDGET_BYTES && s.len() < MAX_STATEMENT_BYTES));
        assert!(stmts.iter().all(|s| s.starts_with("INSERT INTO t (a, b) VALUES (")));
        let joined =
            stmts.iter().map(|s| s.trim_start_matches("INSERT INTO t (a, b) VALUES ")).collect::<Vec<_>>().join(",\n");
        assert_eq!(joined, rows.join(",\n"));
        // Each statement is full: the next row would not have fit.
        for s in &stmts[..stmts.len() - 1] {
            assert!(s.len() + 2 + rows[0].len() > STATEMENT_BUDGET_BYTES);
        }
        assert_eq!(
            values_statements(
                "INSERT INTO t (a)",
                &["(1)".into(), "x".repeat(STATEMENT_BUDGET_BYTES)],
                STATEMENT_BUDGET_BYTES
            ),
            None
        );
        assert_eq!(values_statements("INSERT INTO t (a)", &[], STATEMENT_BUDGET_BYTES), Some(vec![]));
    }

    #[test]
    fn text_fits_column_widths_in_bytes_at_character_boundaries() {
        assert_eq!(fit("abc", 5), "abc");
        assert_eq!(fit("abcdef", 3), "abc");
        assert_eq!(fit("ééé", 5), "éé"); // é is 2 bytes: 5 bytes hold two
        assert_eq!(fit("€", 2), "");
        // NUL is replaced before the cut: three bytes of U+FFFD never pass the width.
        assert_eq!(fit("ab\0", 3), "ab");
        assert_eq!(fit("ab\0", 5), "ab\u{FFFD}");
        assert_eq!(fit("\0\0", 4), "\u{FFFD}");
    }
}
