//! `wau-ingest run` as a child process: crash safety under SIGKILL, and a clean drain on SIGTERM.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use support::{
    committed_in_log, expected_target, free_port, sample, scrape, signal, wait_exit, wait_until, write_version, Env,
    Version,
};

const CUSTOMER: &str = "acme";

/// `n` files of `rows` rows; consecutive files share `overlap` event ids (the newer wins).
fn write_files(env: &Env, n: u32, rows: u32, overlap: u32) -> Vec<Version> {
    (0..n)
        .map(|i| {
            let start = i * (rows - overlap);
            let v = Version {
                key: format!("csv/{CUSTOMER}/part-{i:04}.csv"),
                rows: (start..start + rows).map(|e| (format!("e{e:07}"), format!("u{i}-{e}"))).collect(),
            };
            write_version(&env.inbox, &v, CUSTOMER);
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + i as u64);
            std::fs::File::options().write(true).open(env.inbox.join(&v.key)).unwrap().set_modified(t).unwrap();
            v
        })
        .collect()
}

fn ledger_count(env: &Env) -> i64 {
    env.count("SELECT COUNT(*) FROM wau_ingest_files")
}

fn assert_exact(env: &Env, written: &[Version], rows_per_file: i64) {
    let ledger = env.ledger();
    let keys: BTreeSet<&str> = ledger.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(ledger.len(), written.len(), "each file is in the ledger exactly once");
    assert_eq!(keys.len(), written.len());
    for r in &ledger {
        assert_eq!(r.status, "loaded", "{}", r.key);
        assert_eq!((r.rows_read, r.rows_loaded, r.rows_rejected), (rows_per_file, rows_per_file, 0), "{}", r.key);
        assert!(r.merged, "{} merged", r.key);
    }
    assert_eq!(
        env.count("SELECT COUNT(*) FROM wau_audit_logs_staging"),
        written.len() as i64 * rows_per_file,
        "staging holds every row once"
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM wau_ingest_rejects"), 0);
    assert_eq!(env.target(), expected_target(CUSTOMER, written));
}

fn all_merged(env: &Env, files: i64) -> bool {
    env.count("SELECT COUNT(*) FROM wau_ingest_files WHERE status = 'loaded' AND merged_at IS NOT NULL") == files
}

#[test]
fn sigkill_at_many_moments_then_restart_leaves_the_target_exact() {
    let env = Env::new();
    let (files, rows) = (200u32, 100u32);
    let written = write_files(&env, files, rows, 20);
    let log = env.dir.path().join("run.log");
    let run_env = [("WAU_INGEST_BATCH_MAX_ROWS", "700"), ("WAU_INGEST_MERGE_INTERVAL_SECS", "1")];

    // Kill right after start, then whenever the ledger passes each threshold: mid-batch,
    // right after commits and during merges, at whatever point the process has reached.
    let thresholds = [0i64, 1, 35, 80, 120, 150];
    let mut kills = 0;
    for threshold in thresholds {
        let mut child = env.spawn_run(&log, &run_env);
        let reached = wait_until(Duration::from_secs(120), || {
            ledger_count(&env) >= threshold || child.try_wait().unwrap().is_some()
        });
        assert!(reached, "ledger never reached {threshold}");
        assert!(child.try_wait().unwrap().is_none(), "the service died by itself");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 5);
    let before_last_run = ledger_count(&env);
    assert!(
        before_last_run >= 150 && before_last_run < files as i64,
        "the last run must still have work: {before_last_run}"
    );

    let mut child = env.spawn_run(&log, &run_env);
    let done = wait_until(Duration::from_secs(180), || all_merged(&env, files as i64));
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15)).expect("exits after SIGTERM");
    assert!(done, "not every file was loaded and merged after the restarts");
    assert!(status.success(), "exit status {status:?}");
    assert_exact(&env, &written, rows as i64);
}

#[test]
fn sigterm_drains_within_the_deadline_and_a_restart_loads_the_rest_once() {
    let env = Env::new();
    let (files, rows) = (40u32, 3000u32);
    let written = write_files(&env, files, rows, 100);
    let log = env.dir.path().join("run.log");
    let run_env = [("WAU_INGEST_BATCH_MAX_ROWS", "9000"), ("WAU_INGEST_MERGE_INTERVAL_SECS", "1")];

    let mut child = env.spawn_run(&log, &run_env);
    assert!(wait_until(Duration::from_secs(60), || !committed_in_log(&log).is_empty()), "nothing was committed");
    signal(&child, "TERM");
    let started = std::time::Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Every file the service said it committed is in the warehouse, and nothing else is.
    let logged = committed_in_log(&log);
    let in_ledger: BTreeSet<String> = env.ledger().into_iter().map(|r| r.key).collect();
    assert_eq!(logged, in_ledger);
    assert!(logged.len() < files as usize, "the test must stop the service with files still to do");
    let staged_before = env.count("SELECT COUNT(*) FROM wau_audit_logs_staging");
    assert_eq!(staged_before, logged.len() as i64 * rows as i64, "no rows of an unfinished file were kept");

    // A restart loads the rest exactly once.
    let mut child = env.spawn_run(&log, &run_env);
    let done = wait_until(Duration::from_secs(120), || all_merged(&env, files as i64));
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits within 10 s of SIGTERM");
    assert!(done, "the restart did not load everything");
    assert!(status.success());
    assert_exact(&env, &written, rows as i64);
}

/// The ledger records each file's customer (from its key, else from its rows), `run` exports
/// each customer's newest loaded file as a gauge, and a restarted process exports the same from
/// the ledger before any new file arrives, within `metrics.max_customer_series`.
#[test]
fn each_customers_newest_file_is_in_the_ledger_and_the_metrics_and_survives_a_restart() {
    let env = Env::new();
    let header = wau_ingest::demo::HEADER;
    let row = |customer: &str, id: &str| format!("{customer},{id},2026-11-23T10:00:00Z,u-{id},,login,,\n");
    let files = [
        // Key and rows name acme; two acme files, the newer one counts.
        ("csv/acme/old.csv", format!("{header}\n{}", row("acme", "a1")), 1_790_000_000u64),
        ("csv/acme/new.csv", format!("{header}\n{}", row("acme", "a2")), 1_790_000_500),
        // No customer column: the key names globex, every row is globex's.
        (
            "csv/globex/g.csv",
            "event_id,event_time,user_id,event_type\ng1,2026-11-23T10:00:00Z,u1,login\n".into(),
            1_790_000_100,
        ),
        // A key that names no customer: the rows' one customer.
        ("initech-export.csv", format!("{header}\n{}{}", row("initech", "i1"), row("initech", "i2")), 1_790_000_200),
        // Rows of two customers under a key that names none: unknown.
        ("mixed.csv", format!("{header}\n{}{}", row("acme", "m1"), row("umbrella", "m2")), 1_790_000_900),
        // Rejected whole (no customer column, and a key that names none): unknown, not loaded.
        ("bad.csv", "who,what\nx,y\n".into(), 1_790_000_950),
        // Rejected whole under a key that names hooli: recorded as hooli's, but not fresh data.
        ("csv/hooli/bad.csv", "who,what\nx,y\n".into(), 1_790_000_960),
    ];
    // Each written outside the inbox with its modification time (the event time), then renamed in.
    let outside = env.dir.path().join("outside");
    for (i, (key, body, mtime)) in files.iter().enumerate() {
        std::fs::create_dir_all(&outside).unwrap();
        let tmp = outside.join(i.to_string());
        std::fs::write(&tmp, body).unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime);
        std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(t).unwrap();
        let path = env.inbox.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    let log = env.dir.path().join("run.log");
    let port = free_port();
    let mut child = env.spawn_run_at(&log, &[], port);
    let series = |c: &str| format!("wau_ingest_customer_last_file_timestamp_seconds{{customer=\"{c}\"}}");
    let mut metrics = String::new();
    let seen = wait_until(Duration::from_secs(60), || {
        metrics = scrape(port).unwrap_or_default();
        ["acme", "globex", "initech"].iter().all(|c| sample(&metrics, &series(c)).is_some())
            && env.count("SELECT COUNT(*) FROM wau_ingest_files") == files.len() as i64
    });
    assert!(seen, "every customer's series after the commits: {metrics}");
    let expected = [("acme", 1_790_000_500.0), ("globex", 1_790_000_100.0), ("initech", 1_790_000_200.0)];
    for (c, at) in expected {
        assert_eq!(sample(&metrics, &series(c)), Some(at), "{c}: {metrics}");
    }
    assert_eq!(sample(&metrics, &series("umbrella")), None, "a customer of a mixed file only is not known");
    assert_eq!(sample(&metrics, &series("hooli")), None, "a rejected file is not a loaded one");
    assert_eq!(sample(&metrics, "wau_ingest_customer_series_left_out"), Some(0.0));
    assert_eq!(sample(&metrics, "wau_ingest_customer_silence_window_seconds"), Some(93_600.0), "the default, 26 h");
    let customers: Vec<(String, String, String)> = {
        let c = env.conn();
        let mut s =
            c.prepare("SELECT key, status, COALESCE(customer, 'NULL') FROM wau_ingest_files ORDER BY key").unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
    };
    let want = |k: &str, st: &str, c: &str| (k.to_string(), st.to_string(), c.to_string());
    assert_eq!(
        customers,
        vec![
            want("bad.csv", "rejected", "NULL"),
            want("csv/acme/new.csv", "loaded", "acme"),
            want("csv/acme/old.csv", "loaded", "acme"),
            want("csv/globex/g.csv", "loaded", "globex"),
            want("csv/hooli/bad.csv", "rejected", "hooli"),
            want("initech-export.csv", "loaded", "initech"),
            want("mixed.csv", "loaded", "NULL"),
        ]
    );
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).expect("exits on SIGTERM").success());

    // A new process, no new file: the series come from the ledger, capped to the first two
    // customers in name order, with the configured window.
    let port = free_port();
    let capped =
        [("WAU_INGEST_METRICS_MAX_CUSTOMER_SERIES", "2"), ("WAU_INGEST_METRICS_CUSTOMER_SILENCE_WINDOW_SECS", "7200")];
    let mut child = env.spawn_run_at(&log, &capped, port);
    let mut metrics = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            metrics = scrape(port).unwrap_or_default();
            sample(&metrics, &series("acme")).is_some()
        }),
        "the restarted process shows acme's series: {metrics}"
    );
    assert_eq!(sample(&metrics, &series("acme")), Some(1_790_000_500.0), "{metrics}");
    assert_eq!(sample(&metrics, &series("globex")), Some(1_790_000_100.0), "{metrics}");
    assert_eq!(sample(&metrics, &series("initech")), None, "past the cap: {metrics}");
    assert_eq!(sample(&metrics, "wau_ingest_customer_series_left_out"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "wau_ingest_customer_silence_window_seconds"), Some(7_200.0), "{metrics}");
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).expect("exits on SIGTERM").success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("more customers than metrics.max_customer_series"), "the cap is logged");
}
