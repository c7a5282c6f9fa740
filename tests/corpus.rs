//! The bad-input corpus: every fixture in `tests/fixtures/corpus/` goes through the real
//! binary twice — `wau-ingest validate` on its own, and `wau-ingest replay` of the whole corpus
//! into a fresh SQLite file — and both must say what `tests/fixtures/corpus/expected.toml` says:
//! the file's verdict and counts, the rule and physical line of every rejected row or file, and
//! the stored bytes of the values the case is about. A fixture without a manifest entry, or an
//! entry without a fixture (or generator), fails the test.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Deserialize;
use support::{Env, BIN};

const CORPUS: &str = "tests/fixtures/corpus";
const MANIFEST: &str = "expected.toml";

/// The limits the fixtures are written for (the manifest's header says the same).
const CONFIG: &str =
    "[limits]\nmax_record_bytes = 4096\nmax_columns = 64\nmax_file_bytes = 65536\nmax_gzip_ratio = 100\n";

/// The contract's columns: the only names a manifest `values` or `nulls` entry may use.
const COLUMNS: [&str; 8] =
    ["customer", "event_id", "event_time", "user_id", "user_email", "event_type", "source_ip", "user_agent"];

#[derive(Debug, Deserialize)]
struct Manifest {
    file: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    key: String,
    case: String,
    generator: Option<String>,
    outcome: String,
    /// rows_read, rows_loaded, rows_rejected.
    rows: [i64; 3],
    rule: Option<String>,
    line: Option<i64>,
    #[serde(default)]
    rejects: Vec<String>,
    loaded_lines: Option<Vec<i64>>,
    #[serde(default)]
    values: Vec<toml::Table>,
    #[serde(default)]
    nulls: Vec<String>,
    known_failure: Option<String>,
}

impl Entry {
    /// Every reject the file should leave, as (line, rule): its rows', or the file's one.
    fn expected_rejects(&self) -> Vec<(i64, String)> {
        let mut out: Vec<(i64, String)> = match (&self.rule, self.line) {
            (Some(rule), Some(line)) => vec![(line, rule.clone())],
            _ => self.rejects.iter().map(|r| line_and(r)).collect(),
        };
        out.sort();
        out
    }

    fn row_rejects(&self) -> Vec<(i64, String)> {
        let mut out: Vec<(i64, String)> = self.rejects.iter().map(|r| line_and(r)).collect();
        out.sort();
        out
    }

    /// The manifest's own consistency: an entry that contradicts itself is a manifest error.
    fn check_itself(&self) -> Result<(), String> {
        let [read, loaded, rejected] = self.rows;
        if read != loaded + rejected {
            return Err(format!("rows {:?} do not add up", self.rows));
        }
        match self.outcome.as_str() {
            "loaded" => {
                if self.rule.is_some() || self.line.is_some() {
                    return Err("a loaded file has no rule or line".into());
                }
                if self.rejects.len() as i64 != rejected {
                    return Err(format!("{} rejects listed, {rejected} rows rejected", self.rejects.len()));
                }
                if let Some(lines) = &self.loaded_lines {
                    if lines.len() as i64 != loaded {
                        return Err(format!("{} loaded_lines, {loaded} rows loaded", lines.len()));
                    }
                }
            }
            "rejected" => {
                if self.rule.is_none() || self.line.is_none() || !self.rejects.is_empty() || loaded != 0 {
                    return Err("a rejected file has a rule and a line, no row rejects and no loaded rows".into());
                }
                if self.loaded_lines.is_some() || !self.values.is_empty() || !self.nulls.is_empty() {
                    return Err("a rejected file stores nothing".into());
                }
            }
            other => return Err(format!("outcome {other:?} is neither loaded nor rejected")),
        }
        for v in &self.values {
            if !matches!(v.get("line"), Some(toml::Value::Integer(_))) {
                return Err(format!("values entry {v} has no line"));
            }
            for (k, val) in v.iter().filter(|(k, _)| k.as_str() != "line") {
                if !COLUMNS.contains(&k.as_str()) || !val.is_str() {
                    return Err(format!("values entry {v}: {k} is not a column with a string value"));
                }
            }
        }
        for n in &self.nulls {
            let (_, col) = line_and(n);
            if !COLUMNS.contains(&col.as_str()) {
                return Err(format!("nulls entry {n}: {col} is not a column"));
            }
        }
        Ok(())
    }
}

/// `"3:too_long"` → (3, "too_long").
fn line_and(s: &str) -> (i64, String) {
    let (line, rest) = s.split_once(':').unwrap_or_else(|| panic!("{s:?} is not line:word"));
    (line.parse().unwrap_or_else(|_| panic!("{s:?}: no line number")), rest.to_string())
}

fn manifest() -> Vec<Entry> {
    let text = std::fs::read_to_string(Path::new(CORPUS).join(MANIFEST)).unwrap();
    toml::from_str::<Manifest>(&text).unwrap_or_else(|e| panic!("{MANIFEST}: {e}")).file
}

/// Committed fixtures, by key (path under the corpus folder, `/`-separated).
fn committed(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().expect("fixture names are UTF-8");
        let key = format!("{prefix}{name}");
        if entry.file_type().unwrap().is_dir() {
            committed(&entry.path(), &format!("{key}/"), out);
        } else if key != MANIFEST {
            out.insert(key, entry.path());
        }
    }
}

/// The fixtures made by the test rather than committed (too big, or pointless to commit).
fn generate(name: &str) -> Vec<u8> {
    let header = "customer,event_id,event_time,user_id,user_email,event_type,source_ip,user_agent\n";
    match name {
        // Over limits.max_file_bytes (65536) in one record without a line end.
        "too_large" => [header.as_bytes(), &vec![b'a'; 70_000]].concat(),
        // 10 MiB behind ~10 KB of gzip: past max_gzip_ratio = 100 while still in line 2.
        "gzip_bomb" => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(header.as_bytes()).unwrap();
            gz.write_all(&vec![b'a'; 10 << 20]).unwrap();
            gz.finish().unwrap()
        }
        other => panic!("no generator {other:?}"),
    }
}

/// What `validate` printed for one file.
#[derive(Debug)]
struct Validated {
    exit: Option<i32>,
    rows: [i64; 3],
    verdict: String,
    rejects: Vec<(i64, String)>,
}

fn validate(env: &Env, config: &Path, file: &Path) -> Result<Validated, String> {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("--inbox")
        .arg(&env.inbox)
        .arg("--db")
        .arg(&env.db)
        .arg("validate")
        .arg(file)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let path = file.display().to_string();
    let summary = text
        .lines()
        .find_map(|l| l.strip_prefix(path.as_str()).filter(|rest| rest.starts_with(' ')))
        .ok_or_else(|| format!("validate printed no row for the file (exit {:?}):\n{text}", out.status.code()))?;
    let mut words = summary.split_whitespace();
    let mut rows = [0i64; 3];
    for r in &mut rows {
        *r = words.next().and_then(|w| w.parse().ok()).ok_or_else(|| format!("unreadable counts in {summary:?}"))?;
    }
    let verdict = words.collect::<Vec<_>>().join(" ");
    let mut rejects = Vec::new();
    let reason_prefix = format!("  {path}:");
    for l in text.lines().filter_map(|l| l.strip_prefix(reason_prefix.as_str())) {
        let (line, rest) = l.split_once(':').ok_or_else(|| format!("unreadable reason {l:?}"))?;
        let rule = rest
            .split_once('[')
            .and_then(|(_, r)| r.split_once(']'))
            .map(|(rule, _)| rule.to_string())
            .ok_or_else(|| format!("no [rule] in {l:?}"))?;
        rejects.push((line.parse().map_err(|_| format!("no line in {l:?}"))?, rule));
    }
    rejects.sort();
    Ok(Validated { exit: out.status.code(), rows, verdict, rejects })
}

/// Mismatches between `validate`'s report and the entry.
fn check_validate(e: &Entry, v: &Validated) -> Vec<String> {
    let mut p = Vec::new();
    if v.rows != e.rows {
        p.push(format!("validate: rows/valid/rejected {:?}, expected {:?}", v.rows, e.rows));
    }
    let (verdict_ok, exit) = match (&e.rule, e.rows[2]) {
        (Some(rule), _) => (v.verdict.starts_with(&format!("REJECTED ({rule}: ")), 1),
        (None, 0) => (v.verdict == "ok", 0),
        (None, _) => (v.verdict == "some rows rejected", 1),
    };
    if !verdict_ok {
        p.push(format!("validate: verdict {:?}, expected {} / rule {:?}", v.verdict, e.outcome, e.rule));
    }
    if v.exit != Some(exit) {
        p.push(format!("validate: exit {:?}, expected {exit}", v.exit));
    }
    if v.rejects != e.row_rejects() {
        p.push(format!("validate: row rejects {:?}, expected {:?}", v.rejects, e.row_rejects()));
    }
    p
}

/// One ledger row: status, [rows_read, rows_loaded, rows_rejected], reason.
type LedgerRow = (String, [i64; 3], Option<String>);

struct Loaded {
    /// key → its ledger rows (one expected).
    ledger: BTreeMap<String, Vec<LedgerRow>>,
    /// key → (line, rule), sorted.
    rejects: BTreeMap<String, Vec<(i64, String)>>,
    /// key → staged lines, sorted.
    staged: BTreeMap<String, Vec<i64>>,
}

fn read_back(env: &Env) -> Loaded {
    let conn = env.conn();
    let mut ledger: BTreeMap<String, Vec<_>> = BTreeMap::new();
    let mut s = conn
        .prepare("SELECT key, status, rows_read, rows_loaded, rows_rejected, reason FROM wau_ingest_files ORDER BY key, batch_id")
        .unwrap();
    for r in s
        .query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, [r.get(2)?, r.get(3)?, r.get(4)?], r.get(5)?))))
        .unwrap()
    {
        let (k, v) = r.unwrap();
        ledger.entry(k).or_default().push(v);
    }
    let mut rejects: BTreeMap<String, Vec<_>> = BTreeMap::new();
    let mut s = conn.prepare("SELECT key, line, rule FROM wau_ingest_rejects ORDER BY key, line, rule").unwrap();
    for r in s.query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?)))).unwrap() {
        let (k, v) = r.unwrap();
        rejects.entry(k).or_default().push(v);
    }
    let mut staged: BTreeMap<String, Vec<_>> = BTreeMap::new();
    let mut s = conn.prepare("SELECT _file_key, _line FROM wau_audit_logs_staging ORDER BY _file_key, _line").unwrap();
    for r in s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?))).unwrap() {
        let (k, v) = r.unwrap();
        staged.entry(k).or_default().push(v);
    }
    Loaded { ledger, rejects, staged }
}

/// Mismatches between what `replay` stored for the file and the entry.
fn check_replay(env: &Env, e: &Entry, got: &Loaded) -> Vec<String> {
    let mut p = Vec::new();
    match got.ledger.get(&e.key).map(Vec::as_slice) {
        Some([(status, rows, reason)]) => {
            if status != &e.outcome {
                p.push(format!("ledger: status {status}, expected {}", e.outcome));
            }
            if rows != &e.rows {
                p.push(format!("ledger: rows read/loaded/rejected {rows:?}, expected {:?}", e.rows));
            }
            if let Some(rule) = &e.rule {
                if !reason.as_deref().is_some_and(|r| r.starts_with(&format!("{rule}: "))) {
                    p.push(format!("ledger: reason {reason:?}, expected the rule {rule}"));
                }
            }
        }
        other => p.push(format!("ledger: {other:?}, expected one row")),
    }
    let rejects = got.rejects.get(&e.key).cloned().unwrap_or_default();
    if rejects != e.expected_rejects() {
        p.push(format!("rejects table: {rejects:?}, expected {:?}", e.expected_rejects()));
    }
    let staged = got.staged.get(&e.key).cloned().unwrap_or_default();
    if staged.len() as i64 != e.rows[1] {
        p.push(format!("staging: {} rows, expected {}", staged.len(), e.rows[1]));
    }
    if let Some(lines) = &e.loaded_lines {
        if &staged != lines {
            p.push(format!("staging: lines {staged:?}, expected {lines:?}"));
        }
    }
    let conn = env.conn();
    let stored = |line: i64, column: &str| -> Result<Option<String>, String> {
        assert!(COLUMNS.contains(&column));
        let sql = format!("SELECT {column} FROM wau_audit_logs_staging WHERE _file_key = ?1 AND _line = ?2");
        let mut s = conn.prepare(&sql).unwrap();
        let values: Vec<Option<String>> =
            s.query_map(rusqlite::params![e.key, line], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        match values.as_slice() {
            [v] => Ok(v.clone()),
            other => Err(format!("staging: {} rows of line {line}", other.len())),
        }
    };
    for v in &e.values {
        let line = v["line"].as_integer().unwrap();
        for (column, want) in v.iter().filter(|(k, _)| k.as_str() != "line") {
            let want = want.as_str().unwrap();
            match stored(line, column) {
                Ok(Some(got)) if got == want => {}
                Ok(got) => p.push(format!("staging: line {line} {column} = {got:?}, expected {want:?}")),
                Err(err) => p.push(err),
            }
        }
    }
    for n in &e.nulls {
        let (line, column) = line_and(n);
        match stored(line, &column) {
            Ok(None) => {}
            Ok(got) => p.push(format!("staging: line {line} {column} = {got:?}, expected NULL")),
            Err(err) => p.push(err),
        }
    }
    p
}

#[test]
fn every_fixture_validates_and_replays_as_the_manifest_says() {
    let started = Instant::now();
    let entries = manifest();
    assert!(entries.len() >= 60, "the corpus has {} files", entries.len());

    // The manifest and the folder name the same files, and every entry is consistent.
    let mut files = BTreeMap::new();
    committed(Path::new(CORPUS), "", &mut files);
    let mut errors = Vec::new();
    let mut keys = BTreeSet::new();
    for e in &entries {
        if !keys.insert(e.key.as_str()) {
            errors.push(format!("{}: listed twice", e.key));
        }
        match (&e.generator, files.contains_key(&e.key)) {
            (None, false) => errors.push(format!("{}: in {MANIFEST} but no such fixture", e.key)),
            (Some(g), true) => errors.push(format!("{}: committed and also made by generator {g}", e.key)),
            _ => {}
        }
        if let Err(err) = e.check_itself() {
            errors.push(format!("{}: {MANIFEST} entry: {err}", e.key));
        }
    }
    for key in files.keys().filter(|k| !keys.contains(k.as_str())) {
        errors.push(format!("{key}: a fixture {MANIFEST} does not list"));
    }
    assert!(errors.is_empty(), "corpus and manifest disagree:\n{}", errors.join("\n"));

    // The corpus as an inbox: committed files and generated ones.
    let env = Env::new();
    for e in &entries {
        let dest = env.inbox.join(&e.key);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        match &e.generator {
            Some(g) => std::fs::write(&dest, generate(g)).unwrap(),
            None => {
                std::fs::copy(&files[&e.key], &dest).unwrap();
            }
        }
    }
    let config = env.dir.path().join("wau-ingest.toml");
    std::fs::write(&config, CONFIG).unwrap();

    // (1) validate, one file at a time.
    let mut problems: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for e in &entries {
        let found = match validate(&env, &config, &env.inbox.join(&e.key)) {
            Ok(v) => check_validate(e, &v),
            Err(err) => vec![format!("validate: {err}")],
        };
        problems.entry(&e.key).or_default().extend(found);
    }
    assert!(!env.db.exists() || env.count("SELECT COUNT(*) FROM wau_ingest_files") == 0, "validate loaded something");
    let validated = started.elapsed();

    // (2) replay of the whole corpus into a fresh SQLite file.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--inbox")
        .arg(&env.inbox)
        .arg("--db")
        .arg(&env.db)
        .arg("replay")
        .arg(&env.inbox)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = read_back(&env);
    for key in got.ledger.keys().filter(|k| !keys.contains(k.as_str())) {
        errors.push(format!("{key}: in the ledger but not in {MANIFEST}"));
    }
    for e in &entries {
        problems.entry(&e.key).or_default().extend(check_replay(&env, e, &got));
    }

    // Known failures must still fail (the marker goes when the code is fixed); nothing else may.
    let mut known = Vec::new();
    for e in &entries {
        let p = &problems[e.key.as_str()];
        match (&e.known_failure, p.is_empty()) {
            (None, true) => {}
            (None, false) => errors.push(format!("{} ({}):\n    {}", e.key, e.case, p.join("\n    "))),
            (Some(why), false) => known.push(format!("{} ({why}):\n    {}", e.key, p.join("\n    "))),
            (Some(why), true) => {
                errors.push(format!("{}: passes now; remove its known_failure ({why}) from {MANIFEST}", e.key))
            }
        }
    }
    eprintln!(
        "corpus: {} files ({} generated), {} known failures; validate {:.1?}, total {:.1?}",
        entries.len(),
        entries.iter().filter(|e| e.generator.is_some()).count(),
        known.len(),
        validated,
        started.elapsed()
    );
    for k in &known {
        eprintln!("known failure: {k}");
    }
    assert!(
        errors.is_empty(),
        "{} of {} fixtures differ from {MANIFEST}:\n{}",
        errors.len(),
        entries.len(),
        errors.join("\n")
    );
}
