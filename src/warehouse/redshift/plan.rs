//! The commit as statements, pure: an open batch becomes a [`Plan`], the objects to upload
//! first and the statements of its one BatchExecuteStatement (see "A micro-batch" in the
//! `redshift` module docs), routing ledger rows and rejects as `VALUES` or COPY so that the
//! batch fits [`MAX_BATCH_STATEMENTS`] and [`BATCH_BUDGET_BYTES`].
//!
//! No I/O and no state: it must not upload, run statements or change the batch it is given.

use super::batch::{Entry, OpenBatch};
use super::literal::{fit, timestamp_text, values_row, values_statements, Lit};
use super::spill::CsvParts;
use super::{StagingLocation, BATCH_BUDGET_BYTES, BATCH_FILES, MAX_BATCH_STATEMENTS, STATEMENT_BUDGET_BYTES};
use crate::validate::Reject;
use crate::warehouse::sql::{column_names, ledger_table, rejects_table, Sql};
use crate::warehouse::stage;
use crate::warehouse::{FileMeta, WarehouseError};

/// The batch's ledger rows as the temporary table [`BATCH_FILES`] holds them: the ledger's
/// columns, then whether the row replaces an earlier load of its version (a forced replay).
fn batch_files_columns() -> Vec<&'static str> {
    let mut cols = column_names(&ledger_table::COLUMNS);
    cols.push("replaces");
    cols
}

/// An object to upload before the batch runs: key and body.
pub(super) type Upload = (String, Vec<u8>);

/// One commit: the objects to upload first, then the statements of its one transaction.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) uploads: Vec<Upload>,
    pub(super) statements: Vec<String>,
    /// Which statement is the guarded ledger insert (its row count is the files recorded).
    pub(super) ledger_insert: usize,
}

fn ledger_values(e: &Entry, batch: &OpenBatch) -> Vec<Lit> {
    let m = &e.meta;
    vec![
        Lit::Str(m.bucket.clone()),
        Lit::Str(m.key.clone()),
        Lit::Str(m.version.clone()),
        Lit::Str(m.sequencer.clone()),
        Lit::Int(m.size as i64),
        Lit::Int(e.rows_read as i64),
        Lit::Int(e.rows_loaded as i64),
        Lit::Int(e.rows_rejected as i64),
        Lit::Str(e.status.as_str().into()),
        Lit::opt(e.reason.as_deref().map(|r| fit(r, ledger_table::REASON.width())).as_deref()),
        Lit::Int(batch.id),
        Lit::Str(timestamp_text(m.event_time)),
        Lit::Str(batch.now.clone()),
        Lit::opt(e.merged_at.as_deref()),
        Lit::Int(m.contract_version as i64),
        Lit::opt(e.customer.as_deref()),
        Lit::Int(e.replaces as i64),
    ]
}

pub(super) fn reject_values(m: &FileMeta, r: &Reject, batch_id: i64, now: &str) -> Vec<Lit> {
    vec![
        Lit::Str(m.bucket.clone()),
        Lit::Str(m.key.clone()),
        Lit::Str(m.version.clone()),
        Lit::Int(batch_id),
        Lit::Int(r.line as i64),
        Lit::opt(r.column.as_deref().map(|c| fit(c, rejects_table::COLUMN_NAME.width())).as_deref()),
        Lit::Str(fit(r.rule, rejects_table::RULE.width()).into()),
        Lit::Str(fit(&r.reason, rejects_table::REASON.width()).into()),
        Lit::opt(r.value.as_deref().map(|v| fit(v, rejects_table::VALUE.width())).as_deref()),
        Lit::opt(r.raw.as_deref().map(|v| fit(v, rejects_table::RAW_LINE.width())).as_deref()),
        Lit::Int(m.contract_version as i64),
        Lit::Str(now.to_string()),
    ]
}

/// A row set destined for one table: as `INSERT … VALUES` statements, or as a gzip CSV + COPY.
struct RowSet {
    table: String,
    columns: Vec<&'static str>,
    rows: Vec<Vec<Lit>>,
    values: Option<Vec<String>>,
}

impl RowSet {
    fn new(table: &str, columns: Vec<&'static str>, rows: Vec<Vec<Lit>>) -> RowSet {
        let head = format!("INSERT INTO {table} ({})", columns.join(", "));
        let rendered: Vec<String> = rows.iter().map(|r| values_row(r)).collect();
        let values = values_statements(&head, &rendered, STATEMENT_BUDGET_BYTES);
        RowSet { table: table.to_string(), columns, rows, values }
    }

    /// One that can only be loaded by COPY (its VALUES are not rendered).
    fn copy_only(table: &str, columns: Vec<&'static str>, rows: Vec<Vec<Lit>>) -> RowSet {
        RowSet { table: table.to_string(), columns, rows, values: None }
    }

    /// The gzip CSV (none when the set is empty), its manifest, and the COPY that loads it.
    /// The manifest also names `uploaded`: parts of the same rows uploaded earlier.
    fn as_copy(
        &self,
        staging: &StagingLocation,
        batch_id: i64,
        name: &str,
        role: &str,
        uploaded: &[String],
    ) -> Result<(Vec<Upload>, String), WarehouseError> {
        let mut objects = Vec::new();
        let mut urls: Vec<String> = uploaded.iter().map(|k| staging.url(k)).collect();
        if !self.rows.is_empty() {
            let mut one = CsvParts::new(usize::MAX);
            let failed = |e: std::io::Error| WarehouseError::Other(format!("staging {name}: {e}"));
            for r in &self.rows {
                one.push(r).map_err(failed)?;
            }
            let data = one.finish().map_err(failed)?.unwrap_or_default();
            let data_key = staging.key(batch_id, &format!("{name}.csv.gz"));
            urls.push(staging.url(&data_key));
            objects.push((data_key, data));
        }
        let manifest_key = staging.key(batch_id, &format!("{name}.manifest.json"));
        let manifest = stage::manifest(&urls);
        let copy = Sql::copy_manifest(&self.table, &self.columns, &staging.url(&manifest_key), role);
        objects.push((manifest_key, manifest.into_bytes()));
        Ok((objects, copy))
    }
}

/// The statements of one commit, in order (see the `redshift` module docs): the writers' lock
/// first, then the rest. At most [`MAX_BATCH_STATEMENTS`] statements and
/// [`BATCH_BUDGET_BYTES`] of text in all: ledger rows and rejects go in as VALUES while they
/// fit, else (rejects first) as a staged CSV loaded by COPY. Rejects spilled to staging put all
/// the batch's rejects in by COPY, the in-memory ones as one more part.
pub(super) fn plan_commit(
    sql: &Sql<'_>,
    staging: &StagingLocation,
    b: &OpenBatch,
    role: &str,
) -> Result<Plan, WarehouseError> {
    let t = sql.t;
    let ledger =
        RowSet::new(BATCH_FILES, batch_files_columns(), b.entries.iter().map(|e| ledger_values(e, b)).collect());
    let reject_rows: Vec<Vec<Lit>> =
        b.entries.iter().flat_map(|e| e.rejects.iter().map(move |r| reject_values(&e.meta, r, b.id, &b.now))).collect();
    let spilled: Vec<String> = b.entries.iter().flat_map(|e| e.reject_parts.iter().cloned()).collect();
    let rejects = if spilled.is_empty() {
        RowSet::new(&t.rejects, column_names(&rejects_table::COLUMNS), reject_rows)
    } else {
        RowSet::copy_only(&t.rejects, column_names(&rejects_table::COLUMNS), reject_rows)
    };
    // The first routing that fits, measured on the statements themselves.
    for (ledger_by_values, rejects_by_values) in [(true, true), (true, false), (false, false)] {
        if (ledger_by_values && ledger.values.is_none()) || (rejects_by_values && rejects.values.is_none()) {
            continue;
        }
        let plan = commit_statements(sql, staging, b, role, &ledger, ledger_by_values, &rejects, rejects_by_values)?;
        if plan.statements.len() <= MAX_BATCH_STATEMENTS && batch_bytes(&plan.statements) <= BATCH_BUDGET_BYTES {
            return Ok(plan);
        }
    }
    Err(WarehouseError::Other(format!(
        "commit of batch {}: its statements do not fit one BatchExecuteStatement ({} statements, {} KB)",
        b.id,
        MAX_BATCH_STATEMENTS,
        BATCH_BUDGET_BYTES / 1024
    )))
}

/// The text a BatchExecuteStatement sends: its statements' bytes together.
fn batch_bytes(statements: &[String]) -> usize {
    statements.iter().map(String::len).sum()
}

#[allow(clippy::too_many_arguments)]
fn commit_statements(
    sql: &Sql<'_>,
    staging: &StagingLocation,
    b: &OpenBatch,
    role: &str,
    ledger: &RowSet,
    ledger_by_values: bool,
    rejects: &RowSet,
    rejects_by_values: bool,
) -> Result<Plan, WarehouseError> {
    let id = b.id;
    let spilled: Vec<String> = b.entries.iter().flat_map(|e| e.reject_parts.iter().cloned()).collect();
    let has_rejects = !rejects.rows.is_empty() || !spilled.is_empty();
    let parts: Vec<String> = b.row_parts().cloned().collect();
    let replaces = b.entries.iter().any(|e| e.replaces);
    let mut uploads = Vec::new();
    let mut statements = vec![sql.lock_writers()];
    statements.push(sql.batch_files_table(BATCH_FILES));
    if ledger_by_values {
        statements.extend(ledger.values.clone().unwrap_or_default());
    } else {
        let (objects, copy) = ledger.as_copy(staging, id, "ledger", role, &[])?;
        uploads.extend(objects);
        statements.push(copy);
    }
    if replaces {
        statements.push(sql.replace_batch_versions(BATCH_FILES));
    }
    // A version recorded meanwhile by another writer is skipped.
    let ledger_insert = statements.len();
    statements.push(sql.insert_batch_ledger(BATCH_FILES));
    // Versions within the batch were settled in memory; against the ledger, both ways: older
    // versions the batch outdates, and versions of the batch another writer outdated meanwhile.
    statements.push(sql.supersede_older_than_batch(id));
    statements.push(sql.supersede_batch_versions_already_older(id));
    if !parts.is_empty() || has_rejects {
        statements.push(sql.keep_unrecorded(id, BATCH_FILES));
    }
    if !parts.is_empty() {
        let manifest_key = staging.key(id, "manifest.json");
        let urls: Vec<String> = parts.iter().map(|k| staging.url(k)).collect();
        uploads.push((manifest_key.clone(), stage::manifest(&urls).into_bytes()));
        statements.push(sql.copy_staging(&staging.url(&manifest_key), role));
        statements.push(sql.drop_unrecorded_staging(id, BATCH_FILES));
    }
    if has_rejects {
        if rejects_by_values {
            statements.extend(rejects.values.clone().unwrap_or_default());
        } else {
            let (objects, copy) = rejects.as_copy(staging, id, "rejects", role, &spilled)?;
            uploads.extend(objects);
            statements.push(copy);
        }
        statements.push(sql.drop_unrecorded_rejects(id, BATCH_FILES));
    }
    statements.push(format!("DROP TABLE {BATCH_FILES}"));
    Ok(Plan { uploads, statements, ledger_insert })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Contract;
    use crate::warehouse::redshift::fixtures::{entry, meta};
    use crate::warehouse::sql::{Dialect, Tables};

    fn plan(entries: Vec<Entry>) -> Plan {
        let c = Contract::builtin();
        let t = Tables::for_contract(&c);
        let sql = Sql::new(Dialect::Redshift, &c, &t);
        let batch = OpenBatch { entries, ..OpenBatch::new(42, "2026-11-27 00:00:00.000000".into(), 1 << 20) };
        plan_commit(&sql, &StagingLocation::parse("s3://b/staging/").unwrap(), &batch, "arn:aws:iam::1:role/copy")
            .unwrap()
    }

    #[test]
    fn a_small_commit_is_literal_statements_and_one_copy() {
        let p = plan(vec![entry("a.csv", 2, 100), entry("b.csv", 0, 0)]);
        let s = &p.statements;
        assert_eq!(s.len(), 12, "{s:#?}");
        assert_eq!(s[0], "LOCK wau_ingest_lock", "the lock before anything takes the snapshot");
        assert!(s[1].starts_with("CREATE TEMP TABLE wau_batch_files ("));
        assert!(
            s[2].starts_with("INSERT INTO wau_batch_files (bucket, key, version,")
                && s[2].contains("'a.csv'")
                && s[2].contains("'b.csv'")
        );
        assert_eq!(p.ledger_insert, 3);
        assert!(s[3].starts_with("INSERT INTO wau_ingest_files (bucket,") && s[3].contains("WHERE NOT EXISTS"));
        assert!(
            s[4].starts_with("UPDATE wau_ingest_files SET status = 'superseded'") && s[4].contains("n.batch_id = 42")
        );
        assert!(
            s[5].starts_with("UPDATE wau_ingest_files SET status = 'superseded', merged_at = NULL WHERE batch_id = 42")
                && s[5].contains("n.sequencer > wau_ingest_files.sequencer"),
            "a version of this batch another writer outdated meanwhile: {}",
            s[5]
        );
        assert!(
            s[6].starts_with(
                "DELETE FROM wau_batch_files WHERE EXISTS (SELECT 1 FROM wau_ingest_files f WHERE f.batch_id = 42"
            ),
            "the batch's table keeps only the versions another writer recorded first: {}",
            s[6]
        );
        assert!(
            s[7].starts_with("COPY wau_audit_logs_staging (")
                && s[7].contains("FROM 's3://b/staging/42/manifest.json'")
        );
        assert!(s[8].starts_with(
            "DELETE FROM wau_audit_logs_staging USING wau_batch_files u\nWHERE wau_audit_logs_staging._batch_id = 42"
        ));
        assert!(s[9].starts_with("INSERT INTO wau_ingest_rejects (") && s[9].matches("'format'").count() == 2);
        assert!(s[10].starts_with(
            "DELETE FROM wau_ingest_rejects USING wau_batch_files u\nWHERE wau_ingest_rejects.batch_id = 42"
        ));
        assert_eq!(s[11], "DROP TABLE wau_batch_files");
        assert_eq!(p.uploads.len(), 1, "only the manifest");
        let manifest: serde_json::Value = serde_json::from_slice(&p.uploads[0].1).unwrap();
        assert_eq!(manifest["entries"].as_array().unwrap().len(), 2);
        assert!(batch_bytes(s) <= BATCH_BUDGET_BYTES);
    }

    #[test]
    fn every_commit_fits_one_batch_by_count_and_by_bytes() {
        // Rejects of ~2.3 KB rendered: from a few (VALUES) to many (COPY), the whole batch's text
        // stays under the budget, not only each statement's.
        for (files, rejects) in [(1, 0), (2, 10), (1, 40), (1, 41), (3, 100), (1, 2000), (400, 1)] {
            let entries = (0..files).map(|i| entry(&format!("csv/acme/{i}.csv"), rejects, 2000)).collect();
            let p = plan(entries);
            let s = &p.statements;
            assert_eq!(s[0], "LOCK wau_ingest_lock");
            assert!(s.len() <= MAX_BATCH_STATEMENTS, "{files} files × {rejects}: {} statements", s.len());
            assert!(batch_bytes(s) <= BATCH_BUDGET_BYTES, "{files} files × {rejects}: {} bytes", batch_bytes(s));
            let by_values = s.iter().any(|x| x.starts_with("INSERT INTO wau_ingest_rejects ("));
            let by_copy = s.iter().any(|x| x.starts_with("COPY wau_ingest_rejects ("));
            assert!(!(by_values && by_copy), "one route for a batch's rejects");
            assert_eq!(by_values || by_copy, rejects > 0);
        }
        // Rejects of ~2.6 KB: 30 fit beside the rest as VALUES, 40 (fewer than 40 statements,
        // more than 100 KB) do not.
        let p = plan(vec![entry("a.csv", 30, 2000)]);
        assert!(p.statements.iter().any(|x| x.starts_with("INSERT INTO wau_ingest_rejects (")));
        let p = plan(vec![entry("a.csv", 40, 2000)]);
        assert!(p.statements.iter().any(|x| x.starts_with("COPY wau_ingest_rejects (")));
    }

    #[test]
    fn rejects_that_would_overflow_the_batch_are_copied_instead() {
        // 2000 rejects of ~2.3 KB rendered: ~48 VALUES statements, more than a batch takes.
        let p = plan(vec![entry("a.csv", 2000, 2000)]);
        assert!(p.statements.len() <= MAX_BATCH_STATEMENTS);
        let copy = p.statements.iter().find(|s| s.starts_with("COPY wau_ingest_rejects (")).expect("rejects by COPY");
        assert!(copy.contains("FROM 's3://b/staging/42/rejects.manifest.json' IAM_ROLE 'arn:aws:iam::1:role/copy' FORMAT AS CSV GZIP MANIFEST"));
        assert!(!p.statements.iter().any(|s| s.starts_with("INSERT INTO wau_ingest_rejects")));
        let keys: Vec<&str> = p.uploads.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["staging/42/manifest.json", "staging/42/rejects.csv.gz", "staging/42/rejects.manifest.json"]);
        let mut csv = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&p.uploads[1].1[..]), &mut csv).unwrap();
        let rows: Vec<csv::StringRecord> = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(csv.as_bytes())
            .records()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 2000);
        assert_eq!(rows[0].len(), rejects_table::COLUMNS.len());
        assert_eq!(
            (&rows[0][0], &rows[0][1], &rows[0][3], &rows[0][4], &rows[0][6]),
            ("b", "a.csv", "42", "2", "format")
        );
    }

    fn gunzip_rows(gz: &[u8]) -> Vec<csv::StringRecord> {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut text).unwrap();
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes())
            .records()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn spilled_rejects_put_all_the_batchs_rejects_in_by_one_copy_of_the_parts_and_the_rest() {
        // a.csv spilled two parts; b.csv holds 3 rejects in memory; c.csv has none.
        let mut a = entry("a.csv", 0, 0);
        a.reject_parts = vec!["staging/42/rejects-00001.csv.gz".into(), "staging/42/rejects-00003.csv.gz".into()];
        let p = plan(vec![a, entry("b.csv", 3, 10), entry("c.csv", 0, 0)]);
        let s = &p.statements;
        assert!(
            !s.iter().any(|x| x.starts_with("INSERT INTO wau_ingest_rejects")),
            "no VALUES route next to the COPY: {s:#?}"
        );
        let copies: Vec<&String> = s.iter().filter(|x| x.starts_with("COPY wau_ingest_rejects (")).collect();
        assert_eq!(copies.len(), 1);
        assert!(copies[0].starts_with(&format!(
            "COPY wau_ingest_rejects ({}) FROM 's3://b/staging/42/rejects.manifest.json'",
            column_names(&rejects_table::COLUMNS).join(", ")
        )));
        // The removal of rejects whose version got no ledger row comes after the COPY.
        let copy_at = s.iter().position(|x| x == copies[0]).unwrap();
        assert!(
            s[copy_at + 1].starts_with(
                "DELETE FROM wau_ingest_rejects USING wau_batch_files u\nWHERE wau_ingest_rejects.batch_id = 42"
            ) && s.iter().any(|x| x.starts_with("DELETE FROM wau_batch_files WHERE EXISTS"))
        );
        let keys: Vec<&str> = p.uploads.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["staging/42/manifest.json", "staging/42/rejects.csv.gz", "staging/42/rejects.manifest.json"]);
        let manifest: serde_json::Value = serde_json::from_slice(&p.uploads[2].1).unwrap();
        let urls: Vec<&str> =
            manifest["entries"].as_array().unwrap().iter().map(|e| e["url"].as_str().unwrap()).collect();
        assert_eq!(
            urls,
            [
                "s3://b/staging/42/rejects-00001.csv.gz",
                "s3://b/staging/42/rejects-00003.csv.gz",
                "s3://b/staging/42/rejects.csv.gz"
            ]
        );
        assert!(manifest["entries"].as_array().unwrap().iter().all(|e| e["mandatory"] == true));
        let rows = gunzip_rows(&p.uploads[1].1);
        assert_eq!(rows.len(), 3, "the last part holds the in-memory rejects only");
        assert!(rows.iter().all(|r| r.len() == rejects_table::COLUMNS.len() && &r[1] == "b.csv" && &r[3] == "42"));
        assert!(s.len() <= MAX_BATCH_STATEMENTS);
    }

    #[test]
    fn rejects_all_spilled_are_copied_from_their_parts_alone() {
        let mut a = entry("a.csv", 0, 0);
        a.reject_parts = vec!["staging/42/rejects-00000.csv.gz".into()];
        let p = plan(vec![a]);
        assert_eq!(p.statements.iter().filter(|x| x.starts_with("COPY wau_ingest_rejects (")).count(), 1);
        assert!(p.statements.iter().any(|x| x.starts_with("DELETE FROM wau_ingest_rejects USING wau_batch_files u")));
        let keys: Vec<&str> = p.uploads.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["staging/42/manifest.json", "staging/42/rejects.manifest.json"], "no empty last part");
        let manifest: serde_json::Value = serde_json::from_slice(&p.uploads[1].1).unwrap();
        assert_eq!(manifest["entries"].as_array().unwrap().len(), 1);
        assert_eq!(manifest["entries"][0]["url"], "s3://b/staging/42/rejects-00000.csv.gz");
        // Without any reject, no rejects statement at all.
        let p = plan(vec![entry("a.csv", 0, 0)]);
        assert!(!p.statements.iter().any(|x| x.contains("wau_ingest_rejects")));
    }

    #[test]
    fn spilled_reject_parts_are_cut_at_the_limit_and_read_back_as_the_copy_route_writes_them() {
        let m = meta("dir/a,\"b\".csv", "v1", "1");
        let rejects: Vec<Reject> = (0..50)
            .map(|i| Reject {
                line: i + 2,
                column: if i % 2 == 0 { None } else { Some("user_email".into()) },
                rule: "format",
                reason: "bad, \"very\"\nbad".into(),
                value: Some(format!("v\\{i}'")),
                raw: Some(format!("acme,e{i},\"x\"\0")),
            })
            .collect();
        let mut w = CsvParts::new(1000);
        let mut parts = Vec::new();
        for r in &rejects {
            parts.extend(w.push(&reject_values(&m, r, 42, "2026-11-27 00:00:00.000000")).unwrap());
        }
        parts.extend(w.finish().unwrap());
        assert_eq!(w.finish().unwrap(), None, "nothing open after finish");
        assert!(parts.len() > 3, "{} parts", parts.len());
        let rows: Vec<csv::StringRecord> = parts.iter().flat_map(|p| gunzip_rows(p)).collect();
        assert_eq!(rows.len(), 50);
        // The same bytes as the in-memory route's CSV of the same rows.
        let entry = Entry { meta: m.clone(), rejects: rejects.clone(), ..entry("x", 0, 0) };
        let batch =
            OpenBatch { entries: vec![entry], ..OpenBatch::new(42, "2026-11-27 00:00:00.000000".into(), 1 << 20) };
        let set = RowSet::copy_only(
            "t",
            column_names(&rejects_table::COLUMNS),
            batch.entries[0]
                .rejects
                .iter()
                .map(|r| reject_values(&batch.entries[0].meta, r, batch.id, &batch.now))
                .collect(),
        );
        let (objects, _) = set.as_copy(&StagingLocation::parse("s3://b/s/").unwrap(), 42, "rejects", "", &[]).unwrap();
        assert_eq!(gunzip_rows(&objects[0].1), rows);
        assert_eq!(
            (&rows[0][1], &rows[0][5], &rows[1][5], &rows[0][7]),
            ("dir/a,\"b\".csv", "", "user_email", "bad, \"very\"\nbad")
        );
        assert_eq!(&rows[3][9], "acme,e3,\"x\"\u{FFFD}");
    }

    #[test]
    fn many_files_put_the_ledger_rows_in_by_copy_too() {
        let entries: Vec<Entry> =
            (0..3000).map(|i| entry(&format!("csv/acme/{i:05}-{}.csv", "k".repeat(900)), 1, 10)).collect();
        let p = plan(entries);
        assert!(p.statements.len() <= MAX_BATCH_STATEMENTS, "{}", p.statements.len());
        assert!(batch_bytes(&p.statements) <= BATCH_BUDGET_BYTES);
        assert!(p.statements[2].starts_with("COPY wau_batch_files ("));
        // 3,000 rejects do not fit beside it either.
        assert!(p.statements.iter().any(|s| s.starts_with("COPY wau_ingest_rejects (")));
        assert_eq!(p.ledger_insert, 3);
    }

    fn plan_of(batch: &OpenBatch) -> Plan {
        let c = Contract::builtin();
        let t = Tables::for_contract(&c);
        let sql = Sql::new(Dialect::Redshift, &c, &t);
        plan_commit(&sql, &StagingLocation::parse("s3://b/staging/").unwrap(), batch, "arn:aws:iam::1:role/copy")
            .unwrap()
    }

    fn manifest_urls(p: &Plan) -> Vec<String> {
        let (_, body) = p.uploads.iter().find(|(k, _)| k == "staging/42/manifest.json").expect("the manifest");
        let m: serde_json::Value = serde_json::from_slice(body).unwrap();
        m["entries"].as_array().unwrap().iter().map(|e| e["url"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn small_files_are_copied_from_the_batchs_shared_part_and_a_large_one_from_its_own() {
        let small = |k: &str| Entry { parts: Vec::new(), ..entry(k, 0, 0) };
        let mut large = entry("large.csv", 0, 0);
        large.parts = vec!["staging/42/part-00000.csv.gz".into(), "staging/42/part-00002.csv.gz".into()];
        let mut batch = OpenBatch {
            entries: vec![small("a.csv"), large, small("b.csv"), small("c.csv")],
            ..OpenBatch::new(42, "2026-11-27 00:00:00.000000".into(), 1 << 20)
        };
        batch.shared_parts = vec!["staging/42/part-00001.csv.gz".into(), "staging/42/part-00003.csv.gz".into()];
        let p = plan_of(&batch);
        assert_eq!(
            manifest_urls(&p),
            [
                "s3://b/staging/42/part-00000.csv.gz",
                "s3://b/staging/42/part-00002.csv.gz",
                "s3://b/staging/42/part-00001.csv.gz",
                "s3://b/staging/42/part-00003.csv.gz"
            ],
            "the large file's parts, then the shared ones, each once"
        );
        assert_eq!(p.statements.iter().filter(|s| s.starts_with("COPY wau_audit_logs_staging (")).count(), 1);
        let drop_at = p.statements.iter().position(|s| s.starts_with("DELETE FROM wau_audit_logs_staging")).unwrap();
        assert!(drop_at > p.ledger_insert, "unrecorded rows of shared parts are removed after the guarded insert");

        // Small files only: the one shared part is the whole manifest.
        let mut batch = OpenBatch {
            entries: vec![small("a.csv"), small("b.csv"), small("c.csv")],
            ..OpenBatch::new(42, "2026-11-27 00:00:00.000000".into(), 1 << 20)
        };
        batch.shared_parts = vec!["staging/42/part-00000.csv.gz".into()];
        assert_eq!(manifest_urls(&plan_of(&batch)), ["s3://b/staging/42/part-00000.csv.gz"]);
    }

    #[test]
    fn forced_versions_are_marked_replaced_before_the_guarded_insert() {
        let mut e = entry("a.csv", 0, 0);
        e.replaces = true;
        let p = plan(vec![e]);
        let replace = p.statements.iter().position(|s| s.contains("SET status = 'replaced'")).unwrap();
        assert!(replace < p.ledger_insert);
        assert!(p.statements[2].ends_with(", 1)"), "the replaces flag: {}", p.statements[2]);
    }
}
