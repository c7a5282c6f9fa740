//! The commands as a person runs them: exit codes, what they print, what they change.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::{free_port, wait_exit, wait_until, write_version, Env, Version, BIN};

fn run(env: &Env, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--inbox", env.inbox.to_str().unwrap(), "--db", env.db.to_str().unwrap()])
        .args(args)
        .current_dir(env.dir.path())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn version(key: &str, ids: std::ops::Range<u32>) -> Version {
    Version { key: key.into(), rows: ids.map(|i| (format!("e{i}"), format!("u{i}"))).collect() }
}

#[test]
fn validate_reports_per_file_and_exits_by_verdict() {
    let env = Env::new();
    write_version(&env.inbox, &version("csv/acme/good.csv", 0..3), "acme");
    std::fs::write(
        env.inbox.join("csv/acme/bad.csv"),
        format!("{}\nacme,e1,yesterday,u1,,login,,\n", wau_ingest::demo::HEADER),
    )
    .unwrap();

    let ok = run(&env, &["validate", env.inbox.join("csv/acme/good.csv").to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("ok"));

    let bad = run(
        &env,
        &[
            "validate",
            env.inbox.join("csv/acme/good.csv").to_str().unwrap(),
            env.inbox.join("csv/acme/bad.csv").to_str().unwrap(),
        ],
    );
    assert_eq!(bad.status.code(), Some(1));
    let text = stdout(&bad);
    assert!(text.contains("bad.csv:2: event_time [type]"), "{text}");

    let missing = run(&env, &["validate", "/nonexistent/file.csv"]);
    assert_eq!(missing.status.code(), Some(2));
    let usage = run(&env, &["validate"]);
    assert_eq!(usage.status.code(), Some(2));
    // Nothing was loaded by validating.
    assert!(!env.db.exists() || env.count("SELECT COUNT(*) FROM wau_ingest_files") == 0);
}

#[test]
fn replay_dry_run_glob_and_idempotence() {
    let env = Env::new();
    write_version(&env.inbox, &version("csv/acme/a.csv", 0..5), "acme");
    write_version(&env.inbox, &version("csv/globex/b.csv", 0..7), "globex");

    let dry = run(&env, &["replay", env.inbox.to_str().unwrap(), "--dry-run"]);
    assert!(dry.status.success());
    assert!(stdout(&dry).contains("2 file(s) listed, 2 new, 0 already in the ledger"), "{}", stdout(&dry));
    assert_eq!(env.count("SELECT COUNT(*) FROM wau_ingest_files"), 0, "a dry run loads nothing");

    let only_acme = run(&env, &["replay", env.inbox.to_str().unwrap(), "--glob", "csv/acme/**"]);
    assert!(only_acme.status.success());
    assert!(stdout(&only_acme).contains("files new 1 / duplicate 0"), "{}", stdout(&only_acme));

    let all = run(&env, &["replay", env.inbox.join("csv").to_str().unwrap()]);
    assert!(stdout(&all).contains("files new 1 / duplicate 1"), "{}", stdout(&all));
    let again = run(&env, &["replay", env.inbox.to_str().unwrap()]);
    assert!(stdout(&again).contains("files new 0 / duplicate 2"), "{}", stdout(&again));
    // Keys are relative to the configured inbox whichever folder was named.
    let keys: Vec<String> = env.ledger().into_iter().map(|r| r.key).collect();
    assert_eq!(keys, vec!["csv/acme/a.csv", "csv/globex/b.csv"]);

    let future = run(&env, &["replay", env.inbox.to_str().unwrap(), "--since", "2999-01-01", "--dry-run"]);
    assert!(stdout(&future).contains("0 file(s) listed"), "{}", stdout(&future));
}

#[test]
fn reconcile_loads_what_the_ledger_lacks_and_merges() {
    let env = Env::new();
    write_version(&env.inbox, &version("csv/acme/a.csv", 0..5), "acme");
    assert!(run(&env, &["replay", env.inbox.to_str().unwrap()]).status.success());
    write_version(&env.inbox, &version("csv/acme/missed.csv", 5..9), "acme");

    let r = run(&env, &["reconcile"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = stdout(&r);
    assert!(text.contains("1 object(s) in file://") && text.contains("that the ledger lacks"), "{text}");
    assert!(text.contains("files new 1"), "{text}");
    assert_eq!(env.count("SELECT COUNT(*) FROM wau_audit_logs"), 9, "reconcile merged");

    let again = run(&env, &["reconcile"]);
    assert!(stdout(&again).contains("0 object(s)"), "{}", stdout(&again));
}

/// A file of `customer` with one row per (event id, user) at `time`.
fn write_events(env: &Env, key: &str, customer: &str, time: &str, users: &[&str]) {
    let mut text = format!("{}\n", wau_ingest::demo::HEADER);
    for (i, user) in users.iter().enumerate() {
        text.push_str(&format!("{customer},{key}-e{i},{time},{user},,login,,\n"));
    }
    wau_ingest::demo::write_atomically(&env.inbox.join(key), text.as_bytes()).unwrap();
}

#[test]
fn report_shows_each_customers_trend_and_the_change_from_last_week() {
    let env = Env::new();
    let now = chrono::Utc::now();
    let this_week = now.format("%Y-%m-%dT00:00:01Z").to_string();
    let last_week = (now - chrono::Duration::days(7)).format("%Y-%m-%dT10:00:00Z").to_string();
    // acme: 1 user last week, 3 (one of them twice) this week; globex: 2 last week, none this week.
    write_events(&env, "csv/acme/old.csv", "acme", &last_week, &["u1"]);
    write_events(&env, "csv/acme/new.csv", "acme", &this_week, &["u1", "u2", "u3", "u3"]);
    write_events(&env, "csv/globex/old.csv", "globex", &last_week, &["g1", "g2"]);
    assert!(run(&env, &["replay", env.inbox.to_str().unwrap()]).status.success());
    assert!(run(&env, &["merge"]).status.success());

    let out = run(&env, &["report", "--weeks", "3"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let acme = text.lines().find(|l| l.starts_with("acme")).unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = acme.split_whitespace().collect();
    // customer, trend (no activity two weeks ago, then a third of the peak, then the peak), this week, previous, change.
    assert_eq!(cols, ["acme", "·▃█", "3", "1", "+2", "(+200.0%)"], "{text}");
    let globex = text.lines().find(|l| l.starts_with("globex")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(globex.split_whitespace().collect::<Vec<_>>(), ["globex", "·█·", "0", "2", "-2", "(-100.0%)"]);

    let csv = stdout(&run(&env, &["report", "--weeks", "2", "--customer", "acme", "--format", "csv"]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(lines[0], "customer,iso_week,week_start,active_users");
    assert!(lines[1].starts_with("acme,") && lines[1].ends_with(",1"), "{csv}");
    assert!(lines[2].starts_with("acme,") && lines[2].ends_with(",3"), "{csv}");

    let json: serde_json::Value =
        serde_json::from_str(&stdout(&run(&env, &["report", "--weeks", "2", "--format", "json"]))).unwrap();
    assert_eq!(json["weeks"].as_array().unwrap().len(), 2);
    let acme = &json["customers"][0];
    assert_eq!(acme["customer"], "acme");
    assert_eq!(acme["active_users"], serde_json::json!([1, 3]));
    assert_eq!(
        (acme["this_week"].as_i64(), acme["previous_week"].as_i64(), acme["change"].as_i64()),
        (Some(3), Some(1), Some(2))
    );
    assert_eq!(acme["change_percent"].as_f64(), Some(200.0));

    let none = stdout(&run(&env, &["report", "--customer", "nobody"]));
    assert!(none.contains("no activity"), "{none}");
}

#[test]
fn status_shows_backlog_merges_reconciles_customers_and_rejects() {
    let env = Env::new();
    write_version(&env.inbox, &version("csv/acme/a.csv", 0..3), "acme");
    std::fs::create_dir_all(env.inbox.join("csv/globex")).unwrap();
    std::fs::write(
        env.inbox.join("csv/globex/bad.csv"),
        format!(
            "{}\nglobex,g1,2026-11-23T10:00:00Z,u1,,login,,\nglobex,g2,yesterday,u2,,login,,\nglobex,g3,later,u3,,login,,\nglobex,g4,2026-11-23T11:00:00Z,u4,,login,,\n",
            wau_ingest::demo::HEADER
        ),
    )
    .unwrap();
    assert!(run(&env, &["replay", env.inbox.to_str().unwrap()]).status.success());
    write_version(&env.inbox, &version("csv/acme/pending.csv", 10..12), "acme");

    let status = |env: &Env| -> serde_json::Value {
        let out = run(env, &["status", "--format", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
    };
    let s = status(&env);
    assert_eq!(s["backlog"]["source"], "folder");
    assert_eq!(s["backlog"]["pending_files"], 1, "pending.csv is not in the ledger: {s}");
    assert_eq!(s["unmerged"]["files"], 2, "loaded, not merged yet");
    assert!(s["last_merge"].is_null() && s["last_reconcile"].is_null(), "{s}");
    let customers = s["customers"].as_array().unwrap();
    assert_eq!(customers.len(), 2, "{s}");
    assert_eq!(customers[0]["customer"], "acme");
    assert_eq!((customers[0]["files"].as_u64(), customers[0]["rows_read"].as_u64()), (Some(1), Some(3)));
    assert_eq!(customers[0]["reject_rate"].as_f64(), Some(0.0));
    assert_eq!(customers[1]["customer"], "globex");
    assert_eq!(customers[1]["last_file"], "csv/globex/bad.csv");
    assert_eq!((customers[1]["rows_read"].as_u64(), customers[1]["rows_rejected"].as_u64()), (Some(4), Some(2)));
    assert_eq!(customers[1]["reject_rate"].as_f64(), Some(0.5));
    // Every customer's newest loaded file, from the ledger's column (most silent first).
    let fresh = s["freshness"].as_array().unwrap();
    let names: Vec<&str> = fresh.iter().map(|c| c["customer"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["acme", "globex"], "{s}");
    assert!(fresh.iter().all(|c| c["files_loaded"] == 1 && c["last_event_at"].is_string()), "{s}");
    let rules = s["top_reject_rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{s}");
    assert_eq!((rules[0]["rule"].as_str(), rules[0]["rejects"].as_u64()), (Some("type"), Some(2)));
    let example = &rules[0]["example"];
    assert_eq!(example["key"], "csv/globex/bad.csv");
    assert!(example["line"] == 3 || example["line"] == 4, "{example}");
    assert_eq!(example["column"], "event_time");

    let r = run(&env, &["reconcile"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let s = status(&env);
    assert_eq!(s["backlog"]["pending_files"], 0);
    assert_eq!(s["unmerged"]["files"], 0);
    assert_eq!(s["last_merge"]["files"], 3, "the reconcile's merge published all three files: {s}");
    assert_eq!(s["last_merge"]["rows_inserted"], 7);
    let rec = &s["last_reconcile"];
    assert_eq!((rec["outcome"].as_str(), rec["objects_missing"].as_u64()), (Some("ok"), Some(1)), "{s}");
    assert_eq!((rec["files_loaded"].as_u64(), rec["files_to_retry"].as_u64()), (Some(1), Some(0)));
    assert_eq!(s["customers"][0]["files"], 2);
    assert_eq!(s["customers"][0]["last_file"], "csv/acme/pending.csv");

    let text = stdout(&run(&env, &["status"]));
    for want in [
        "backlog:   0 file(s) in",
        "merge:     last at",
        ": 3 file(s), 0 row(s) deleted, 7 inserted",
        ": ok, 1 object(s) missing, files new 1 / rejected 0 / to retry 0",
        "unmerged:  0 file(s)",
        "50.0%",
        "e.g. csv/globex/bad.csv:",
        "newest loaded file per customer, most silent first:",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
}

#[test]
fn contract_infer_drafts_a_valid_contract() {
    let env = Env::new();
    let sample = env.dir.path().join("sample.csv");
    std::fs::write(
        &sample,
        "customer,event_id,event_time,user_id,n\nacme,e1,2026-11-23T10:00:00Z,u1,3\nacme,e2,2026-11-23 11:00:00,u2,\n",
    )
    .unwrap();
    let out = run(&env, &["contract", "infer", sample.to_str().unwrap()]);
    assert!(out.status.success());
    let draft = stdout(&out);
    let c = wau_ingest::contract::Contract::parse(&draft, "draft").unwrap();
    assert_eq!(
        c.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        vec!["customer", "event_id", "event_time", "user_id", "n"]
    );
    assert_eq!(c.columns[2].ty, wau_ingest::contract::ColumnType::Timestamp);
    assert!(!c.columns[4].required);
}

#[test]
fn demo_balances_its_books() {
    let env = Env::new();
    let dir = env.dir.path().join("demo");
    let out = Command::new(BIN).args(["demo", dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.contains("(0 file(s) out of balance)"), "{text}");
    assert!(text.contains("files new 1 / duplicate"), "the second pass loads only the overwrite: {text}");
    assert!(text.contains("legacyco"), "the legacy file's customer came from its key: {text}");
    // Only the deliberately bad rows are rejected: no event of the week under way lies ahead of the clock.
    let db = rusqlite::Connection::open(dir.join("wau.sqlite")).unwrap();
    let ahead: i64 =
        db.query_row("SELECT COUNT(*) FROM wau_ingest_rejects WHERE rule = 'out_of_range'", [], |r| r.get(0)).unwrap();
    assert_eq!(ahead, 0, "sample events past the contract's horizon");
    drop(db);
    // Running it again in the same folder starts over.
    assert!(Command::new(BIN).args(["demo", dir.to_str().unwrap()]).output().unwrap().status.success());
    // It refuses a folder it did not make.
    let foreign = env.dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("keep.txt"), "mine").unwrap();
    assert_eq!(Command::new(BIN).args(["demo", foreign.to_str().unwrap()]).output().unwrap().status.code(), Some(2));
    assert!(foreign.join("keep.txt").exists());
}

#[test]
fn endpoints_and_healthcheck_of_a_running_service() {
    let env = Env::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = support::Service(
        Command::new(BIN)
            .args([
                "--inbox",
                env.inbox.to_str().unwrap(),
                "--db",
                env.db.to_str().unwrap(),
                "run",
                "--http-listen",
                &addr,
            ])
            .current_dir(env.dir.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let probe = |extra: &[&str]| {
        Command::new(BIN).args(["healthcheck", "--addr", &addr]).args(extra).status().unwrap().success()
    };
    assert!(wait_until(Duration::from_secs(30), || probe(&[])), "healthz never answered");
    assert!(probe(&["--ready"]));
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    for name in [
        "wau_ingest_files_total{outcome=\"loaded\"}",
        "wau_ingest_batch_commit_seconds_bucket",
        "wau_ingest_inflight_files",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    support::signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).unwrap().success());
    assert!(!probe(&[]), "nothing answers after shutdown");
}

#[test]
fn publish_checks_then_lands_a_file_the_service_loads() {
    let env = Env::new();
    let src = env.dir.path().join("export.csv");
    std::fs::write(&src, "event_id,event_time,user_id,event_type\ne1,2026-11-23T10:00:00Z,u1,login\n").unwrap();
    let to = env.inbox.join("csv/acme");
    let out = run(
        &env,
        &["publish", src.to_str().unwrap(), "--customer", "acme", "--to", &format!("{}/", to.display()), "--gzip"],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("customer column added"), "{}", stdout(&out));
    assert!(to.join("export.csv.gz").exists());
    let loaded = run(&env, &["replay", env.inbox.to_str().unwrap()]);
    assert!(stdout(&loaded).contains("files new 1"), "{}", stdout(&loaded));

    std::fs::write(&src, "event_id,event_time,user_id,event_type\ne2,not-a-time,u1,login\n").unwrap();
    let refused = run(&env, &["publish", src.to_str().unwrap(), "--customer", "acme", "--to", to.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stdout(&refused).contains("event_time [type]"), "{}", stdout(&refused));
    assert!(!to.join("export.csv").exists(), "a refused file is not written");

    // The producer fails fast: a bad file is refused before any S3 call (none could succeed here).
    let s3 =
        run(&env, &["publish", src.to_str().unwrap(), "--customer", "acme", "--to", "s3://no-such-bucket/csv/acme/"]);
    assert_eq!(s3.status.code(), Some(1), "{}", stdout(&s3));
    assert!(stdout(&s3).contains("not published"), "{}", stdout(&s3));
}
