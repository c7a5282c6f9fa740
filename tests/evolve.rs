//! Schema evolution on the embedded warehouse (real SQLite files, the real binary): `migrate
//! --plan` and `migrate` across a contract change, loading across it, refusals that change
//! nothing, and the product's own tables upgrading with one `migrate`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{Env, BIN};

const V2: &str = include_str!("../contracts/wau_audit_log.toml");
const V3: &str = include_str!("fixtures/contracts/wau_audit_log_v3.toml");

fn run(env: &Env, contract: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["--inbox", env.inbox.to_str().unwrap(), "--db", env.db.to_str().unwrap()])
        .args(args)
        .current_dir(env.dir.path())
        .env_remove("WAU_INGEST_CONTRACT_PATH");
    if let Some(c) = contract {
        cmd.env("WAU_INGEST_CONTRACT_PATH", c);
    }
    cmd.output().unwrap()
}

fn out(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn write_contract(env: &Env, name: &str, text: &str) -> PathBuf {
    let p = env.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Name, declared type and NOT NULL of every column of `table`.
fn columns(env: &Env, table: &str) -> Vec<(String, String, bool)> {
    let c = env.conn();
    let mut s =
        c.prepare(&format!("SELECT name, type, \"notnull\" FROM pragma_table_info('{table}') ORDER BY cid")).unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? == 1))).unwrap().map(Result::unwrap).collect()
}

fn write_csv(env: &Env, key: &str, text: &str) {
    wau_ingest::demo::write_atomically(&env.inbox.join(key), text.as_bytes()).unwrap();
}

const OLD_HEADER: &str = wau_ingest::demo::HEADER;

#[test]
fn an_optional_column_is_added_by_migrate_and_files_on_both_sides_of_it_load() {
    let env = Env::new();
    write_csv(&env, "csv/acme/a.csv", &format!("{OLD_HEADER}\nacme,e1,2026-11-23T10:00:00Z,u1,,login,,\n"));
    let first = run(&env, None, &["replay", env.inbox.to_str().unwrap()]);
    assert!(first.status.success(), "{}", out(&first));
    assert!(run(&env, None, &["merge"]).status.success());
    let plan = run(&env, None, &["migrate", "--plan"]);
    assert_eq!(plan.status.code(), Some(0), "tables made by v2 are as v2 wants them: {}", out(&plan));
    assert!(out(&plan).contains("plan: nothing to do"), "{}", out(&plan));

    let v3 = write_contract(&env, "v3.toml", V3);
    let before = columns(&env, "wau_audit_logs");
    // Every other command refuses to start on tables behind the contract, and changes nothing.
    write_csv(&env, "csv/acme/b.csv", &format!("{OLD_HEADER}\nacme,e2,2026-11-23T11:00:00Z,u2,,login,,\n"));
    let refused = run(&env, Some(&v3), &["replay", env.inbox.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "{}", out(&refused));
    assert!(out(&refused).contains("behind the contract: run `wau-ingest migrate --plan`"), "{}", out(&refused));
    assert_eq!(env.count("SELECT COUNT(*) FROM wau_ingest_files"), 1, "nothing loaded");
    assert_eq!(columns(&env, "wau_audit_logs"), before);

    // The plan: one add to the target and one to staging; exit 1 (changes migrate would make).
    let plan = run(&env, Some(&v3), &["migrate", "--plan"]);
    assert_eq!(plan.status.code(), Some(1), "{}", out(&plan));
    let text = out(&plan);
    assert!(
        text.contains("wau_audit_logs: add column region TEXT\n    ALTER TABLE wau_audit_logs ADD COLUMN region TEXT;"),
        "{text}"
    );
    assert!(text.contains("wau_audit_logs_staging: add column region TEXT"), "{text}");
    assert!(text.contains("plan: 0 table(s) to create, 2 column(s) to add, 0 change(s) refused"), "{text}");
    let json = run(&env, Some(&v3), &["migrate", "--plan", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("the plan as JSON");
    let adds: Vec<&str> = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["changes"].as_array().unwrap().iter().map(move |c| (t, c)))
        .map(|(t, c)| {
            assert_eq!(c["kind"], "add_column");
            t["table"].as_str().unwrap()
        })
        .collect();
    assert_eq!(adds, ["wau_audit_logs", "wau_audit_logs_staging"]);
    assert_eq!(columns(&env, "wau_audit_logs"), before, "--plan changes nothing");

    // migrate applies it; a second run plans and changes nothing.
    let m = run(&env, Some(&v3), &["migrate"]);
    assert_eq!(m.status.code(), Some(0), "{}", out(&m));
    assert!(out(&m).contains("0 table(s) created, 2 column(s) added (contract wau_audit_log v3)"), "{}", out(&m));
    for table in ["wau_audit_logs", "wau_audit_logs_staging"] {
        assert_eq!(columns(&env, table).last().unwrap(), &("region".to_string(), "TEXT".to_string(), false), "{table}");
    }
    let plan = run(&env, Some(&v3), &["migrate", "--plan"]);
    assert_eq!(plan.status.code(), Some(0), "{}", out(&plan));
    let again = run(&env, Some(&v3), &["migrate"]);
    assert!(out(&again).contains("0 table(s) created, 0 column(s) added"), "{}", out(&again));
    assert_eq!(
        env.count("SELECT COUNT(*) FROM wau_audit_logs WHERE region IS NULL"),
        1,
        "rows already there read NULL"
    );

    // A file written before the change (no region column) and one with it both load.
    write_csv(
        &env,
        "csv/acme/c.csv",
        &format!("{OLD_HEADER},region\nacme,e3,2026-11-23T12:00:00Z,u3,,login,,,eu-west-1\nacme,e1,2026-11-23T10:00:00Z,u1,,login,,,us-east-1\n"),
    );
    let load = run(&env, Some(&v3), &["replay", env.inbox.to_str().unwrap()]);
    assert_eq!(load.status.code(), Some(0), "{}", out(&load));
    assert!(out(&load).contains("files new 2 / duplicate 1"), "{}", out(&load));
    assert!(run(&env, Some(&v3), &["merge"]).status.success());
    let c = env.conn();
    let mut s = c.prepare("SELECT event_id, region FROM wau_audit_logs ORDER BY event_id").unwrap();
    let rows: Vec<(String, Option<String>)> =
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(
        rows,
        [("e1".into(), Some("us-east-1".into())), ("e2".into(), None), ("e3".into(), Some("eu-west-1".into()))],
        "the merge carries the new column to the target"
    );
    // The WAU view over the target still answers after ADD COLUMN.
    let report = run(&env, Some(&v3), &["report", "--format", "csv"]);
    assert_eq!(report.status.code(), Some(0), "{}", out(&report));
    assert!(out(&report).contains("acme,2026-W48,2026-11-23,3"), "{}", out(&report));
    let mut s = c.prepare("SELECT key, contract_version FROM wau_ingest_files ORDER BY key").unwrap();
    let versions: Vec<(String, i64)> =
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(
        versions,
        [("csv/acme/a.csv".into(), 2), ("csv/acme/b.csv".into(), 3), ("csv/acme/c.csv".into(), 3)],
        "the ledger says which contract accepted each file"
    );
}

#[test]
fn destructive_changes_are_refused_with_the_manual_steps_and_change_nothing() {
    let env = Env::new();
    assert!(run(&env, None, &["migrate"]).status.success());
    let snapshot = |env: &Env| ["wau_audit_logs", "wau_audit_logs_staging"].map(|t| columns(env, t));
    let before = snapshot(&env);
    let user_agent = "[[columns]]\nname = \"user_agent\"\ntype = \"string\"\nrequired = false\nmax_length = 512\n";
    assert!(V2.contains(user_agent));
    let cases = [
        (
            "dropped.toml",
            V2.replace(user_agent, ""),
            "column user_agent: in the table but not in the contract: dropped (or renamed)",
            "ALTER TABLE wau_audit_logs DROP COLUMN user_agent;",
        ),
        (
            "renamed.toml",
            V2.replace("name = \"user_agent\"", "name = \"agent\""),
            "column agent: not in the table, which has user_agent that the contract lacks: a rename, or a drop and an add",
            "ALTER TABLE wau_audit_logs RENAME COLUMN user_agent TO agent;",
        ),
        (
            "retyped.toml",
            V2.replace("name = \"user_agent\"\ntype = \"string\"\nrequired = false\nmax_length = 512", "name = \"user_agent\"\ntype = \"integer\"\nrequired = false"),
            "column user_agent: type change: TEXT in the table, INTEGER wanted",
            "ALTER TABLE wau_audit_logs RENAME TO wau_audit_logs_old;",
        ),
        (
            "required.toml",
            V3.replace("name = \"region\"\ntype = \"string\"\nrequired = false", "name = \"region\"\ntype = \"string\"\nrequired = true"),
            "column region: a required (NOT NULL) column added to an existing table",
            "ALTER TABLE wau_audit_logs ADD COLUMN region TEXT NOT NULL DEFAULT <value for the rows already there>;",
        ),
    ];
    for (name, text, reason, step) in cases {
        // A nullable column the contract lacks harms no insert: the other commands still run
        // (a rollback to the previous contract); what the tables lack or hold otherwise stops them.
        let starts = name == "dropped.toml";
        let path = write_contract(&env, name, &text);
        let plan = run(&env, Some(&path), &["migrate", "--plan"]);
        assert_eq!(plan.status.code(), Some(2), "{name}: {}", out(&plan));
        assert!(out(&plan).contains(&format!("wau_audit_logs: REFUSED, {reason}")), "{name}: {}", out(&plan));
        assert!(out(&plan).contains(step), "{name}: {}", out(&plan));
        let m = run(&env, Some(&path), &["migrate"]);
        assert_eq!(m.status.code(), Some(2), "{name}: {}", out(&m));
        assert!(out(&m).contains("migrate: refused, nothing was changed"), "{name}: {}", out(&m));
        assert_eq!(snapshot(&env), before, "{name}: nothing changed");
        let status = run(&env, Some(&path), &["status"]);
        assert_eq!(status.status.code(), Some(if starts { 0 } else { 2 }), "{name}: {}", out(&status));
    }
    // SQLite keeps text of any length: a shorter max_length is no table change there (the
    // validator holds new files to it); on Redshift it is refused (tests/redshift.rs).
    let narrow = write_contract(&env, "narrow.toml", &V2.replace("max_length = 512", "max_length = 256"));
    assert_eq!(run(&env, Some(&narrow), &["migrate", "--plan"]).status.code(), Some(0));
}

/// The ledger as an earlier release created it: without `merged_at` (and no other table yet).
const OLD_LEDGER: &str = "CREATE TABLE wau_ingest_files (
  bucket TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL, sequencer TEXT NOT NULL,
  size_bytes INTEGER, rows_read INTEGER NOT NULL, rows_loaded INTEGER NOT NULL, rows_rejected INTEGER NOT NULL,
  status TEXT NOT NULL, reason TEXT, batch_id INTEGER NOT NULL, event_at TEXT, loaded_at TEXT NOT NULL,
  contract_version INTEGER NOT NULL)";

#[test]
fn the_products_own_tables_upgrade_with_one_migrate() {
    let env = Env::new();
    env.conn().execute_batch(OLD_LEDGER).unwrap();
    env.conn()
        .execute(
            "INSERT INTO wau_ingest_files VALUES ('inbox', 'csv/acme/old.csv', 'v1', '1', 10, 1, 1, 0, 'loaded', NULL, 1, NULL, '2026-11-20 00:00:00', 2)",
            [],
        )
        .unwrap();
    let refused = run(&env, None, &["status"]);
    assert_eq!(refused.status.code(), Some(2), "{}", out(&refused));
    assert!(out(&refused).contains("the tables wau_ingest_files are behind the contract"), "{}", out(&refused));

    let plan = run(&env, None, &["migrate", "--plan"]);
    assert_eq!(plan.status.code(), Some(1), "{}", out(&plan));
    let text = out(&plan);
    // Every column the product's ledger has that the old one lacks, whatever sql.rs adds.
    let have: Vec<String> = columns(&env, "wau_ingest_files").into_iter().map(|c| c.0).collect();
    let missing: Vec<&str> = wau_ingest::warehouse::sql::ledger_table::COLUMNS
        .iter()
        .map(|c| c.name)
        .filter(|n| !have.iter().any(|h| h == n))
        .collect();
    assert!(missing.contains(&"merged_at"));
    for col in &missing {
        assert!(text.contains(&format!("wau_ingest_files: add column {col} ")), "{col}: {text}");
    }
    assert!(text.contains("wau_audit_logs: create table"), "{text}");

    let m = run(&env, None, &["migrate"]);
    assert_eq!(m.status.code(), Some(0), "{}", out(&m));
    let now: Vec<String> = columns(&env, "wau_ingest_files").into_iter().map(|c| c.0).collect();
    for col in wau_ingest::warehouse::sql::ledger_table::COLUMNS {
        assert!(now.iter().any(|n| n == col.name), "{}: {now:?}", col.name);
    }
    assert_eq!(run(&env, None, &["migrate", "--plan"]).status.code(), Some(0));
    // The old row reads NULL in the new column: unmerged, so the next merge publishes it.
    assert_eq!(env.count("SELECT COUNT(*) FROM wau_ingest_files WHERE merged_at IS NULL"), 1);
    let status = run(&env, None, &["status"]);
    assert_eq!(status.status.code(), Some(0), "{}", out(&status));
}

/// Several `migrate`s at once (an operator's and a deploy's) end with each column added once
/// and every one of them done: a column another added first is planned away.
#[test]
fn concurrent_migrates_each_add_a_column_once() {
    use wau_ingest::warehouse::evolve::{self, Applied};
    use wau_ingest::warehouse::sql::{Dialect, Sql, Tables};
    let env = Env::new();
    assert!(run(&env, None, &["migrate"]).status.success());
    let v3 = wau_ingest::contract::Contract::parse(V3, "v3").unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let w = wau_ingest::warehouse::sqlite::SqliteWarehouse::open(&env.db, &v3).unwrap();
                    let t = Tables::for_contract(&v3);
                    // A runtime per thread: four migrates at once, each on its own connection.
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(evolve::apply(&w, &Sql::new(Dialect::Sqlite, &v3, &t)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert!(matches!(r, Ok(Applied::Done(_))), "{r:?}");
    }
    let regions = columns(&env, "wau_audit_logs").into_iter().filter(|c| c.0 == "region").count();
    assert_eq!(regions, 1);
}
