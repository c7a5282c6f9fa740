//! End to end on the AWS path: `wau-ingest` against a moto server (S3, SQS, real bucket
//! notifications and redrive) and the Redshift Data API emulator over PostgreSQL. Uploads are
//! made with the AWS SDK; every test has its own bucket, queue, DLQ and database.
//!
//! The stack must be running (`eval "$(scripts/local-aws.sh up)"`; `.ci/run` starts it).
//! Without it these tests print SKIPPED, except under CI, where that is a failure.

#[path = "support/aws_stack.rs"]
mod aws_stack;
mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_stack::{csv, eventually, Case, Isolation, PrivateEmulator};
use support::{expected_target, free_port, sample, scrape, signal, wait_exit, wait_until, Service, Version};

const CUSTOMER: &str = "acme";

fn rows(from: u32, n: u32, tag: &str) -> Vec<(String, String)> {
    (from..from + n).map(|e| (format!("e{e:06}"), format!("u-{tag}-{e}"))).collect()
}

async fn put_version(case: &Case, v: &Version) {
    case.put(&v.key, csv(CUSTOMER, &v.rows)).await;
}

/// Every listed key is in the ledger, merged, and both queues are empty.
async fn settled(case: &Case, files: i64) -> bool {
    case.count_or_zero("SELECT COUNT(*) FROM wau_ingest_files WHERE status <> 'replaced' AND (status <> 'loaded' OR merged_at IS NOT NULL)").await
        == files
        && case.queue_depth(&case.queue_url).await == 0
}

/// An S3 notification body as S3 sends it (keys form-URL-encoded).
fn s3_event(bucket: &str, key: &str, name: &str) -> serde_json::Value {
    let encoded: String = key
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": chrono::Utc::now().to_rfc3339(), "eventName": name,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
               "object": {"key": encoded, "size": 10, "sequencer": "0055AED6DCD90281E5"}}
    }]})
}

#[tokio::test(flavor = "multi_thread")]
async fn notified_files_load_exactly_once_with_odd_keys_duplicates_overwrites_and_a_bad_file() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::new(&sdk, true, 5).await;
    let mut svc = case.spawn_run("run.log", &[]);

    let a = Version { key: "csv/acme/a.csv".into(), rows: rows(0, 5, "a") };
    let odd = Version { key: "csv/acme/week 48+extra é.csv".into(), rows: rows(100, 3, "odd") };
    let b1 = Version { key: "csv/acme/b.csv".into(), rows: rows(200, 4, "b1") };
    for v in [&a, &odd, &b1] {
        put_version(&case, v).await;
    }
    case.put("csv/acme/bad.csv", "customer,event_id\nacme,x\n").await;
    assert!(
        eventually(Duration::from_secs(60), || settled(&case, 4)).await,
        "first four files settle\n{}",
        case.log("run.log")
    );

    // The same notification again (SQS delivers at least once): a duplicate, acknowledged.
    case.send_raw(&s3_event(&case.bucket, &odd.key, "ObjectCreated:Put").to_string()).await;
    // An overwrite, at least a second later (S3 orders versions of a key by LastModified).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b2 = Version { key: "csv/acme/b.csv".into(), rows: rows(202, 4, "b2") };
    put_version(&case, &b2).await;
    assert!(
        eventually(Duration::from_secs(60), || settled(&case, 5)).await,
        "overwrite settles\n{}",
        case.log("run.log")
    );

    let ledger = case.ledger().await;
    let status: BTreeMap<_, Vec<_>> = ledger.iter().fold(BTreeMap::new(), |mut m, r| {
        m.entry(r.0.clone()).or_insert_with(Vec::new).push(r.1.clone());
        m
    });
    assert_eq!(status["csv/acme/a.csv"], ["loaded"]);
    assert_eq!(status[&odd.key], ["loaded"], "the duplicate notification loaded nothing");
    assert_eq!(status["csv/acme/bad.csv"], ["rejected"]);
    let mut b = status["csv/acme/b.csv"].clone();
    b.sort();
    assert_eq!(b, ["loaded", "superseded"]);
    for (key, _, read, loaded, rejected, _) in &ledger {
        assert_eq!(read, &(loaded + rejected), "{key} balances");
    }
    assert_same_target(&case.target().await, &expected_target(CUSTOMER, &[a, odd, b1, b2]));
    assert!(
        case.count("SELECT COUNT(*) FROM wau_ingest_rejects WHERE key = 'csv/acme/bad.csv'").await >= 1,
        "the bad file's reason is recorded"
    );

    signal(&svc, "TERM");
    assert!(wait_exit(&mut svc, Duration::from_secs(30)).is_some_and(|s| s.success()), "clean exit");
    assert_eq!(case.queue_depth(&case.dlq_url).await, 0, "nothing went to the DLQ");
}

/// On the AWS path the ledger records each file's customer (in the batch's VALUES), and `run`
/// exports each customer's newest loaded file; a restarted process reads the same from the
/// freshness view before any new file.
#[tokio::test(flavor = "multi_thread")]
async fn each_customers_newest_file_is_in_the_ledger_and_the_metrics_and_survives_a_restart() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::new(&sdk, true, 5).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut svc = case.spawn_run("run.log", &[("WAU_INGEST_HTTP_LISTEN", &listen)]);
    case.put("csv/acme/a.csv", csv("acme", &rows(0, 3, "a"))).await;
    case.put("csv/globex/g.csv", csv("globex", &rows(10, 2, "g"))).await;
    // A second, later acme file: the newest one counts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    case.put("csv/acme/b.csv", csv("acme", &rows(20, 2, "b"))).await;
    assert!(eventually(Duration::from_secs(60), || settled(&case, 3)).await, "{}", case.log("run.log"));
    let recorded = case.query("SELECT key, customer FROM wau_ingest_files ORDER BY key").await;
    let pairs: Vec<(String, String)> = recorded.iter().map(|r| (cell(&r[0]), cell(&r[1]))).collect();
    let pair = |k: &str, c: &str| (k.to_string(), c.to_string());
    assert_eq!(
        pairs,
        vec![pair("csv/acme/a.csv", "acme"), pair("csv/acme/b.csv", "acme"), pair("csv/globex/g.csv", "globex")]
    );
    let b_event_at = case.query("SELECT event_at FROM wau_ingest_files WHERE key = 'csv/acme/b.csv'").await;
    // The gauges hold the ledger's event times (Unix seconds, milliseconds kept).
    let newest: Vec<(String, f64)> = case
        .query("SELECT customer, last_event_at FROM wau_ingest_customer_freshness ORDER BY customer")
        .await
        .iter()
        .map(|r| {
            let at = wau_ingest::contract::parse_timestamp(&cell(&r[1])).unwrap();
            (cell(&r[0]), at.timestamp_millis() as f64 / 1000.0)
        })
        .collect();
    assert_eq!(newest.len(), 2, "{newest:?}");
    assert_eq!(newest[0].0, "acme");
    let b_at = wau_ingest::contract::parse_timestamp(&cell(&b_event_at[0][0])).unwrap();
    assert_eq!(newest[0].1, b_at.timestamp_millis() as f64 / 1000.0, "acme's newest is b.csv");
    let series = |c: &str| format!("wau_ingest_customer_last_file_timestamp_seconds{{customer=\"{c}\"}}");
    let shows_all = |metrics: &str| newest.iter().all(|(c, at)| sample(metrics, &series(c)) == Some(*at));
    let mut metrics = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            metrics = scrape(port).unwrap_or_default();
            shows_all(&metrics)
        }),
        "the running service shows {newest:?}: {metrics}"
    );
    signal(&svc, "TERM");
    assert!(wait_exit(&mut svc, Duration::from_secs(30)).is_some_and(|s| s.success()), "clean exit");

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut svc = case.spawn_run("run.log", &[("WAU_INGEST_HTTP_LISTEN", &listen)]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            metrics = scrape(port).unwrap_or_default();
            shows_all(&metrics)
        }),
        "after a restart, from the view: {newest:?}: {metrics}"
    );
    signal(&svc, "TERM");
    assert!(wait_exit(&mut svc, Duration::from_secs(30)).is_some_and(|s| s.success()), "clean exit");
}

#[tokio::test(flavor = "multi_thread")]
async fn sns_and_eventbridge_envelopes_test_events_and_a_deleted_object() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::new(&sdk, false, 5).await;
    let via_sns = Version { key: "csv/acme/sns.csv".into(), rows: rows(0, 3, "sns") };
    let via_eb = Version { key: "csv/acme/eventbridge.csv".into(), rows: rows(10, 3, "eb") };
    put_version(&case, &via_sns).await;
    put_version(&case, &via_eb).await;
    case.put("csv/acme/gone.csv", csv(CUSTOMER, &rows(20, 2, "gone"))).await;
    case.delete("csv/acme/gone.csv").await;

    let sns = serde_json::json!({"Type": "Notification", "MessageId": "m1", "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
        "Message": s3_event(&case.bucket, &via_sns.key, "ObjectCreated:Put").to_string()});
    let eb = serde_json::json!({"version": "0", "id": "e1", "detail-type": "Object Created", "source": "aws.s3",
        "account": "123456789012", "time": "2026-11-29T10:00:00Z", "region": "us-east-1", "resources": [],
        "detail": {"version": "0", "bucket": {"name": case.bucket}, "object": {"key": via_eb.key, "size": 10, "sequencer": "0062E99A88DC407460"},
                   "request-id": "r", "requester": "123456789012", "reason": "PutObject"}});
    let test_event = serde_json::json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-11-29T10:00:00Z", "Bucket": case.bucket});
    for body in [
        sns,
        eb,
        test_event,
        s3_event(&case.bucket, "csv/acme/gone.csv", "ObjectCreated:Put"),
        s3_event(&case.bucket, "csv/acme/x.csv", "ObjectRemoved:Delete"),
    ] {
        case.send_raw(&body.to_string()).await;
    }
    let mut svc = case.spawn_run("run.log", &[]);
    assert!(
        eventually(Duration::from_secs(60), || settled(&case, 2)).await,
        "two files settle\n{}",
        case.log("run.log")
    );
    assert_same_target(&case.target().await, &expected_target(CUSTOMER, &[via_sns, via_eb]));
    assert_eq!(
        case.count("SELECT COUNT(*) FROM wau_ingest_files WHERE key = 'csv/acme/gone.csv'").await,
        0,
        "a deleted object is skipped"
    );
    signal(&svc, "TERM");
    assert!(wait_exit(&mut svc, Duration::from_secs(30)).is_some());
    assert!(case.log("run.log").contains("object is gone; skipped"));
    assert_eq!(case.queue_depth(&case.queue_url).await, 0, "every message acknowledged");
    assert_eq!(case.queue_depth(&case.dlq_url).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_reaches_the_dlq_after_max_receives() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::new(&sdk, true, 2).await;
    case.send_raw("this is not an s3 notification").await;
    let good = Version { key: "csv/acme/good.csv".into(), rows: rows(0, 2, "g") };
    put_version(&case, &good).await;
    let mut svc = case.spawn_run("run.log", &[("WAU_INGEST_SOURCE_VISIBILITY_TIMEOUT_SECS", "2")]);
    let dlq = eventually(Duration::from_secs(60), || async { case.queue_depth(&case.dlq_url).await == 1 }).await;
    assert!(dlq, "the poison message is in the DLQ\n{}", case.log("run.log"));
    assert!(eventually(Duration::from_secs(60), || settled(&case, 1)).await, "the good file still loads");
    assert_same_target(&case.target().await, &expected_target(CUSTOMER, &[good]));
    signal(&svc, "TERM");
    assert!(wait_exit(&mut svc, Duration::from_secs(30)).is_some());
    assert!(case.log("run.log").contains("left for the queue's redrive policy"));
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_reconcile_and_replay_on_s3() {
    let Some(sdk) = aws_stack::stack().await else { return };
    // No notifications: these files arrive only through a listing.
    let case = Case::new(&sdk, false, 5).await;
    let first: Vec<Version> =
        (0..3).map(|i| Version { key: format!("csv/acme/f{i}.csv"), rows: rows(i * 10, 5, "f") }).collect();
    for v in &first {
        put_version(&case, v).await;
    }
    // The producer side: a file without the customer column, published through the CLI.
    let src = case.dir.path().join("export.csv");
    let header = wau_ingest::demo::HEADER.split_once(',').unwrap().1; // without `customer`
    std::fs::write(&src, format!("{header}\ne900000,2026-11-23T10:00:00Z,u-pub,,login,,\n")).unwrap();
    let (code, out) = case.cli(&[
        "publish",
        src.to_str().unwrap(),
        "--customer",
        CUSTOMER,
        "--to",
        &format!("s3://{}/csv/acme/", case.bucket),
    ]);
    assert_eq!(code, 0, "{out}");
    let published = Version { key: "csv/acme/export.csv".into(), rows: vec![("e900000".into(), "u-pub".into())] };

    let (code, out) = case.cli(&["reconcile"]);
    assert_eq!(code, 0);
    assert!(out.contains("4 object(s)"), "{out}");
    let mut all = first.clone();
    all.push(published);
    assert_same_target(&case.target().await, &expected_target(CUSTOMER, &all));

    // A replay of the whole prefix loads nothing again.
    let (code, out) = case.cli(&["replay", &format!("s3://{}/csv/", case.bucket)]);
    assert_eq!(code, 0);
    assert!(out.contains("files new 0 / duplicate 4"), "{out}");
    let late = Version { key: "csv/acme/late.csv".into(), rows: rows(500, 2, "late") };
    put_version(&case, &late).await;
    let (code, out) = case.cli(&["replay", &format!("s3://{}/csv/acme/", case.bucket)]);
    assert_eq!(code, 0);
    assert!(out.contains("files new 1 / duplicate 4"), "{out}");
    let (code, _) = case.cli(&["merge"]);
    assert_eq!(code, 0);
    all.push(late);
    assert_same_target(&case.target().await, &expected_target(CUSTOMER, &all));
    assert_eq!(case.count("SELECT COUNT(*) FROM wau_ingest_files").await, 5);
}

/// `n` files of 20 rows with distinct event ids. (Files uploaded within one second have the
/// same LastModified, so which of two files holding one event id is newer is not defined on
/// S3; the overwrite test spaces its versions a second apart.)
fn versions(n: u32) -> Vec<Version> {
    (0..n).map(|i| Version { key: format!("csv/acme/p{i:04}.csv"), rows: rows(i * 20, 20, &format!("p{i}")) }).collect()
}

/// Compares targets and reports a short difference instead of two huge maps.
fn assert_same_target(
    actual: &BTreeMap<(String, String), (String, String)>,
    expected: &BTreeMap<(String, String), (String, String)>,
) {
    if actual == expected {
        return;
    }
    let missing: Vec<_> = expected.iter().filter(|(k, v)| actual.get(*k) != Some(*v)).take(5).collect();
    let extra: Vec<_> = actual.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
    panic!("target differs: {} rows, expected {}; first expected rows missing or different: {missing:?}; first extra keys: {extra:?}", actual.len(), expected.len());
}

async fn assert_exact(case: &Case, written: &[Version]) {
    let ledger = case.ledger().await;
    assert_eq!(ledger.len(), written.len(), "each file is in the ledger exactly once");
    for (key, status, read, loaded, rejected, merged) in &ledger {
        assert_eq!((status.as_str(), *read, *loaded, *rejected, *merged), ("loaded", 20, 20, 0, true), "{key}");
    }
    assert_eq!(
        case.count("SELECT COUNT(*) FROM wau_audit_logs_staging").await,
        written.len() as i64 * 20,
        "staging holds every row once"
    );
    assert_same_target(&case.target().await, &expected_target(CUSTOMER, written));
}

/// SIGKILL right after start, then as the ledger passes each threshold; a last run settles and
/// the target is exact.
async fn sigkill_at_many_moments_then_restart(isolation: Isolation) {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::with_isolation(&sdk, true, 50, isolation).await;
    let written = versions(200);
    for v in &written {
        put_version(&case, v).await;
    }
    let loaded = || case.count_or_zero("SELECT COUNT(*) FROM wau_ingest_files");
    let settings = [("WAU_INGEST_BATCH_MAX_ROWS", "150"), ("WAU_INGEST_SOURCE_VISIBILITY_TIMEOUT_SECS", "3")];
    let mut kills = 0;
    // Right after start, then as the ledger passes each threshold.
    for threshold in [0, 10, 40, 80, 120, 160] {
        let mut svc = case.spawn_run("run.log", &settings);
        let passed = eventually(Duration::from_secs(120), || async { loaded().await > threshold }).await;
        assert!(passed || threshold == 0, "ledger passes {threshold}\n{}", case.log("run.log"));
        svc.kill().unwrap(); // SIGKILL
        let _ = svc.wait();
        kills += 1;
    }
    assert!(kills >= 5);
    let mut svc = case.spawn_run("run.log", &settings);
    assert!(
        eventually(Duration::from_secs(180), || settled(&case, 200)).await,
        "all files settle after the kills\n{}",
        case.log("run.log")
    );
    signal(&svc, "TERM");
    assert!(wait_exit(&mut svc, Duration::from_secs(30)).is_some());
    assert_exact(&case, &written).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_many_moments_then_restart_leaves_the_target_exact_serializable() {
    sigkill_at_many_moments_then_restart(Isolation::Serializable).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_many_moments_then_restart_leaves_the_target_exact_snapshot() {
    sigkill_at_many_moments_then_restart(Isolation::Snapshot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_warehouse_down_for_thirty_seconds_loses_nothing() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::new(&sdk, true, 5).await;
    let port = free_port();
    let mut emulator = PrivateEmulator::start(port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = format!("127.0.0.1:{}", free_port());
    let ready = || wau_ingest::http::probe(&http, "/readyz", Duration::from_secs(5));
    let mut svc =
        case.spawn_run("run.log", &[("AWS_ENDPOINT_URL_REDSHIFT_DATA", &endpoint), ("WAU_INGEST_HTTP_LISTEN", &http)]);
    let written = versions(40);
    for v in &written[..20] {
        put_version(&case, v).await;
    }
    assert!(eventually(Duration::from_secs(60), || settled(&case, 20)).await, "first half\n{}", case.log("run.log"));
    assert_eq!(ready().await, Ok(()), "ready before the outage");
    emulator.stop();
    for v in &written[20..] {
        put_version(&case, v).await;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = ready().await;
    assert!(during.is_err(), "not ready while the warehouse is down: {during:?}");
    let _emulator = PrivateEmulator::start(port);
    assert!(
        eventually(Duration::from_secs(120), || settled(&case, 40)).await,
        "second half after the outage\n{}",
        case.log("run.log")
    );
    assert!(
        eventually(Duration::from_secs(30), || async { ready().await.is_ok() }).await,
        "ready again once the warehouse answers and a step succeeded"
    );
    signal(&svc, "TERM");
    assert!(wait_exit(&mut svc, Duration::from_secs(30)).is_some());
    assert_exact(&case, &written).await;
    assert_eq!(case.queue_depth(&case.dlq_url).await, 0, "no good message was sent to the DLQ during the outage");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_on_one_queue_load_each_file_once() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::new(&sdk, true, 5).await;
    let mut one = case.spawn_run("one.log", &[]);
    let mut two = case.spawn_run("two.log", &[]);
    let written = versions(60);
    for v in &written {
        put_version(&case, v).await;
    }
    assert!(
        eventually(Duration::from_secs(120), || settled(&case, 60)).await,
        "settles\n{}\n{}",
        case.log("one.log"),
        case.log("two.log")
    );
    for svc in [&mut one, &mut two] {
        signal(svc, "TERM");
        assert!(wait_exit(&mut svc.0, Duration::from_secs(30)).is_some());
    }
    assert_exact(&case, &written).await;
}

/// Rows of one scale-out file version: `ROWS` valid rows plus `BAD` whose event_time does not
/// parse, spread through the file.
const SCALE_ROWS: u32 = 300;
const SCALE_BAD: i64 = 3;

fn scale_body(v: &Version) -> String {
    let mut text = format!("{}\n", wau_ingest::demo::HEADER);
    for (i, (event_id, user)) in v.rows.iter().enumerate() {
        if i % (SCALE_ROWS as usize / SCALE_BAD as usize) == 50 {
            text.push_str(&format!("{CUSTOMER},bad-{i},not a time,{user},,login,,\n"));
        }
        text.push_str(&format!("{CUSTOMER},{event_id},2026-11-23T10:00:00Z,{user},,login,,\n"));
    }
    text
}

/// Uploads `vs` `chunk` at a time, each chunk followed by a second notification of every file in
/// it (the same event, as SQS may deliver it twice), so the two deliveries of a file usually
/// land in different receives, and so in different processes. Returns each upload's version.
async fn put_notified_twice(case: &Case, vs: &[Version], chunk: usize) -> Vec<String> {
    let mut out = Vec::new();
    for c in vs.chunks(chunk) {
        for v in c {
            out.push(case.put_version(&v.key, scale_body(v)).await);
        }
        for v in c {
            case.send_raw(&s3_event(&case.bucket, &v.key, "ObjectCreated:Put").to_string()).await;
        }
    }
    out
}

fn cell(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}

fn number(value: &Option<String>) -> i64 {
    value.as_deref().unwrap_or("0").parse().unwrap()
}

/// Four `run` processes on one queue; every file notified twice; 48 keys of 300 rows (3 bad), a
/// quarter of them overwritten; commits of at most 400 rows or a second, merges every second.
/// Two thirds of the files wait on the queue before the processes start, so their first receives
/// race; the rest, and the overwrites, arrive while they run. Exactly one ledger row per
/// version, one staged copy of every row, every file balanced, the target exact.
async fn four_processes_with_every_file_notified_twice(isolation: Isolation) {
    let Some(sdk) = aws_stack::stack().await else { return };
    let began = Instant::now();
    let case = Case::with_isolation(&sdk, true, 50, isolation).await;
    const KEYS: u32 = 48;
    const PROCESSES: usize = 4;
    let key = |i: u32| format!("csv/acme/s{i:03}.csv");
    let first: Vec<Version> =
        (0..KEYS).map(|i| Version { key: key(i), rows: rows(i * 1000, SCALE_ROWS, &format!("s{i}v1")) }).collect();
    // A second version keeps half the first's event ids (new users) and adds as many new ones.
    let second: Vec<Version> = (0..KEYS)
        .step_by(4)
        .map(|i| Version { key: key(i), rows: rows(i * 1000 + SCALE_ROWS / 2, SCALE_ROWS, &format!("s{i}v2")) })
        .collect();
    let queued = (KEYS * 2 / 3) as usize;
    // No migrate first: the four processes create the tables at once on a fresh database, as
    // tasks of a new deployment do (migrate takes the lock table first, then the writers' lock).
    let mut ids = put_notified_twice(&case, &first[..queued], 10).await;
    let settings = [("WAU_INGEST_BATCH_MAX_ROWS", "400"), ("WAU_INGEST_MERGE_INTERVAL_SECS", "1")];
    let mut procs: Vec<Service> = (0..PROCESSES).map(|p| case.spawn_run(&format!("p{p}.log"), &settings)).collect();
    ids.extend(put_notified_twice(&case, &first[queued..], 4).await);
    // An overwrite at least a second after the first version (S3 orders versions by LastModified).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ids.extend(put_notified_twice(&case, &second, 4).await);
    let written: Vec<Version> = first.iter().chain(&second).cloned().collect();
    // key → its versions, oldest first; the last is the current one.
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (v, id) in written.iter().zip(&ids) {
        by_key.entry(v.key.clone()).or_default().push(id.clone());
    }
    let current: Vec<String> = by_key.values().map(|vs| format!("'{}'", vs.last().unwrap())).collect();
    let logs = || (0..PROCESSES).map(|p| case.log(&format!("p{p}.log"))).collect::<Vec<_>>().join("\n");

    let settled = eventually(Duration::from_secs(180), || async {
        case.queue_depth(&case.queue_url).await == 0
            && case
                .count_or_zero(
                    "SELECT COUNT(*) FROM wau_ingest_files WHERE merged_at IS NULL AND status IN ('loaded', 'superseded')",
                )
                .await
                == 0
            && case
                .count_or_zero(&format!(
                    "SELECT COUNT(DISTINCT key) FROM wau_ingest_files WHERE status = 'loaded' AND version IN ({})",
                    current.join(", ")
                ))
                .await
                == KEYS as i64
    })
    .await;
    let settle_time = began.elapsed();
    // Everything that should hold, checked together so a failure reports every count.
    let mut wrong: Vec<String> = Vec::new();
    for (p, svc) in procs.iter_mut().enumerate() {
        if svc.try_wait().unwrap().is_none() {
            signal(svc, "TERM");
        }
        let exit = wait_exit(&mut svc.0, Duration::from_secs(30));
        if !exit.is_some_and(|s| s.success()) {
            wrong.push(format!("process {p} did not exit cleanly: {exit:?} (p{p}.log)"));
        }
    }
    if !settled {
        wrong.push(format!("did not settle within 180 s (queue depth {})", case.queue_depth(&case.queue_url).await));
    }
    let twice = case
        .query("SELECT key, version, COUNT(*) FROM wau_ingest_files GROUP BY bucket, key, version HAVING COUNT(*) > 1")
        .await;
    let extra_ledger_rows: i64 = twice.iter().map(|r| number(&r[2]) - 1).sum();
    for r in &twice {
        wrong.push(format!("the ledger holds {} {} {} times", cell(&r[0]), cell(&r[1]), cell(&r[2])));
    }
    let ledger = case
        .query("SELECT key, version, status, rows_read, rows_loaded, rows_rejected FROM wau_ingest_files ORDER BY key, batch_id")
        .await;
    let staged: BTreeMap<(String, String), (i64, i64)> = case
        .query(
            "SELECT _file_key, _file_version, COUNT(*), COUNT(DISTINCT _line) FROM wau_audit_logs_staging GROUP BY _file_key, _file_version",
        )
        .await
        .iter()
        .map(|r| ((cell(&r[0]), cell(&r[1])), (number(&r[2]), number(&r[3]))))
        .collect();
    let double_staged: i64 = staged.values().map(|(n, lines)| n - lines).sum();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &ledger {
        let (k, version, status) = (cell(&r[0]), cell(&r[1]), cell(&r[2]));
        let (read, loaded, rejected) = (number(&r[3]), number(&r[4]), number(&r[5]));
        if read != loaded + rejected {
            wrong.push(format!("{k} {version}: rows_read {read} <> rows_loaded {loaded} + rows_rejected {rejected}"));
        }
        let Some(versions) = by_key.get(&k) else {
            wrong.push(format!("the ledger holds {k}, which was never written"));
            continue;
        };
        let (n, lines) = staged.get(&(k.clone(), version.clone())).copied().unwrap_or((0, 0));
        if Some(&version) == versions.last() {
            let expected = ("loaded", SCALE_ROWS as i64 + SCALE_BAD, SCALE_ROWS as i64, SCALE_BAD);
            if (status.as_str(), read, loaded, rejected) != expected {
                wrong.push(format!(
                    "{k} {version} (current): {:?}, expected {expected:?}",
                    (&status, read, loaded, rejected)
                ));
            }
            if (n, lines) != (loaded, loaded) {
                wrong.push(format!("{k} {version}: {n} rows staged ({lines} distinct lines), rows_loaded {loaded}"));
            }
        } else if versions.contains(&version) {
            if status != "superseded" {
                wrong.push(format!("{k} {version} (overwritten): status {status}, expected superseded"));
            }
            if n != 0 {
                wrong.push(format!("{k} {version} (overwritten): {n} rows still staged after the merge"));
            }
        } else {
            wrong.push(format!("the ledger holds {k} {version}, a version never written"));
        }
        seen.entry(k).or_default().push(version);
    }
    for k in by_key.keys().filter(|k| !seen.contains_key(*k)) {
        wrong.push(format!("{k} is not in the ledger"));
    }
    for ((k, version), (n, _)) in &staged {
        if !seen.get(k).is_some_and(|vs| vs.contains(version)) {
            wrong.push(format!("{n} rows staged for {k} {version}, which the ledger does not hold"));
        }
    }
    let target_twice = case
        .count("SELECT COUNT(*) FROM (SELECT customer, event_id FROM wau_audit_logs GROUP BY customer, event_id HAVING COUNT(*) > 1) d")
        .await;
    let expected = expected_target(CUSTOMER, &written);
    let mut target_wrong = 0;
    if target_twice > 0 {
        wrong.push(format!("{target_twice} keys are in the target more than once"));
    } else {
        let target = case.target().await;
        let differ = expected.iter().filter(|(k, v)| target.get(*k) != Some(*v)).count();
        let extra = target.keys().filter(|k| !expected.contains_key(*k)).count();
        target_wrong = differ + extra;
        if target_wrong > 0 {
            wrong.push(format!(
                "target: {} rows, expected {}; {differ} expected rows missing or different, {extra} extra",
                target.len(),
                expected.len()
            ));
        }
    }
    let dlq = case.queue_depth(&case.dlq_url).await;
    if dlq != 0 {
        wrong.push(format!("{dlq} messages in the DLQ"));
    }

    // How much the processes raced, for the record (and a check that they all took part).
    let all = logs();
    let lines_with = |what: &str| all.lines().filter(|l| l.contains(what)).count();
    // Both deliveries of a file in open batches of two processes at once: the later commit finds
    // the version recorded (after the lock, or on its rerun after a conflict).
    let caught = lines_with("recorded by another writer first");
    let loaders = (0..PROCESSES).filter(|p| case.log(&format!("p{p}.log")).contains("\"outcome\":\"loaded\"")).count();
    let summary = format!(
        "{isolation:?}: settled {settled} in {settle_time:.1?}; {} versions written, {} deliveries; ledger {} rows, \
         {} (key, version) more than once ({extra_ledger_rows} extra rows); staging {} rows, {double_staged} staged \
         more than once; target keys twice {target_twice}, wrong {target_wrong}; {} batches committed, {caught} \
         commits found files another process had recorded, {} conflict reruns, {} ingest steps and {} merges \
         failed; {loaders} of {PROCESSES} processes loaded files",
        written.len(),
        2 * written.len(),
        ledger.len(),
        twice.len(),
        staged.values().map(|(n, _)| n).sum::<i64>(),
        lines_with("\"batch committed\""),
        lines_with("rerun after a serialization conflict"),
        lines_with("ingest step failed"),
        lines_with("merge failed"),
    );
    eprintln!("scale-out: {summary}");
    for l in all.lines().filter(|l| l.contains("\"level\":\"ERROR\"")).take(5) {
        eprintln!("scale-out error logged: {l}");
    }
    assert!(
        wrong.is_empty(),
        "{summary}\n{} violations, the first:\n{}\nthe first errors and warnings logged:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n"),
        all.lines()
            .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("\"level\":\"WARN\""))
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The test proves something only if the processes really raced.
    assert!(loaders >= 2, "at least two processes loaded files: {summary}");
    assert!(caught >= 1, "duplicate deliveries were in flight in two processes at once: {summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn four_processes_on_one_queue_every_file_notified_twice_snapshot() {
    four_processes_with_every_file_notified_twice(Isolation::Snapshot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn four_processes_on_one_queue_every_file_notified_twice_serializable() {
    four_processes_with_every_file_notified_twice(Isolation::Serializable).await;
}

/// One process holds the first version of a key in an open batch (ten seconds of batch age)
/// while a second process, on its own queue, loads and commits the key's second version. The
/// first process's later commit must not leave the older version loaded beside the newer one:
/// the design says a version older than the current one is recorded as superseded, and the
/// target holds only the current version's rows.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_version_committed_after_another_process_committed_the_newer_ends_superseded() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::with_isolation(&sdk, false, 5, Isolation::Snapshot).await;
    assert_eq!(case.cli(&["migrate"]).0, 0, "migrate");
    let other_queue =
        case.sqs.create_queue().queue_name(format!("{}-b", case.name)).send().await.unwrap().queue_url.unwrap();
    let key = "csv/acme/held.csv";
    let v1 = Version { key: key.into(), rows: rows(0, 20, "v1") };
    let v2 = Version { key: key.into(), rows: rows(10, 20, "v2") };
    let event = s3_event(&case.bucket, key, "ObjectCreated:Put").to_string();

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut holder = case.spawn_run(
        "holder.log",
        &[("WAU_INGEST_BATCH_MAX_AGE_SECS", "10"), ("WAU_INGEST_HTTP_LISTEN", listen.as_str())],
    );
    let first = case.put_version(key, csv(CUSTOMER, &v1.rows)).await;
    let first_put = Instant::now();
    case.send_raw(&event).await;
    // The holder has read the whole file once it counts its bytes (a small file's rows are
    // held in the batch until the commit: no staging object says so before).
    let read =
        || async { scrape(port).and_then(|m| sample(&m, "wau_ingest_s3_bytes_read_total")).is_some_and(|n| n > 0.0) };
    assert!(eventually(Duration::from_secs(30), read).await, "the holder reads v1\n{}", case.log("holder.log"));
    // S3 orders the versions of a key by LastModified, in seconds.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(first_put.elapsed())).await;
    let second = case.put_version(key, csv(CUSTOMER, &v2.rows)).await;
    case.sqs.send_message().queue_url(&other_queue).message_body(&event).send().await.unwrap();
    let mut loader = case.spawn_run("loader.log", &[("WAU_INGEST_SOURCE_QUEUE_URL", other_queue.as_str())]);
    let recorded = |version: String| {
        let case = &case;
        async move {
            case.count_or_zero(&format!("SELECT COUNT(*) FROM wau_ingest_files WHERE version = '{version}'")).await
        }
    };
    assert!(
        eventually(Duration::from_secs(30), || async { recorded(second.clone()).await == 1 }).await,
        "the loader commits v2\n{}",
        case.log("loader.log")
    );
    assert_eq!(recorded(first.clone()).await, 0, "v1 is still held in the holder's open batch");
    let settled = || async {
        case.queue_depth(&case.queue_url).await == 0
            && case.queue_depth(&other_queue).await == 0
            && case.count_or_zero("SELECT COUNT(*) FROM wau_ingest_files WHERE merged_at IS NULL").await == 0
            && recorded(first.clone()).await > 0
    };
    assert!(
        eventually(Duration::from_secs(60), settled).await,
        "the holder commits v1 and everything merges\n{}\n{}",
        case.log("holder.log"),
        case.log("loader.log")
    );
    for svc in [&mut holder, &mut loader] {
        signal(svc, "TERM");
        assert!(wait_exit(&mut svc.0, Duration::from_secs(30)).is_some());
    }
    let ledger: Vec<(String, String)> = case
        .query(&format!("SELECT version, status FROM wau_ingest_files WHERE key = '{key}' ORDER BY version"))
        .await
        .iter()
        .map(|r| (cell(&r[0]), cell(&r[1])))
        .collect();
    let mut expected = vec![(first.clone(), "superseded".to_string()), (second.clone(), "loaded".to_string())];
    expected.sort();
    let target = case.target().await;
    assert_eq!(ledger, expected, "v1 {first}, v2 {second}; the target holds {} rows, v2 has 20", target.len());
    assert_same_target(&target, &expected_target(CUSTOMER, &[v1, v2]));
}

/// Sets how moto advances Glue job runs: `Some(n)` keeps a run going for n GetJobRun calls.
async fn glue_transition(times: Option<u32>) {
    let base = std::env::var("AWS_ENDPOINT_URL_GLUE").unwrap();
    let (path, body) = match times {
        Some(n) => (
            "set-transition",
            serde_json::json!({"model_name": "glue::job_run", "transition": {"progression": "manual", "times": n}}),
        ),
        None => ("unset-transition", serde_json::json!({"model_name": "glue::job_run"})),
    };
    let out = Command::new("curl")
        .args(["-sf", "-X", "POST", "-d", &body.to_string(), &format!("{base}/moto-api/state-manager/{path}")])
        .status()
        .unwrap();
    assert!(out.success(), "moto state manager");
}

#[tokio::test(flavor = "multi_thread")]
async fn glue_catalog_sync_and_the_glue_merge_runner() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let mut case = Case::new(&sdk, false, 5).await;
    let glue = aws_sdk_glue::Client::new(&sdk);
    let db = case.name.clone();

    // catalog sync: created, then left as it is (no new table version), then updated in
    // place by `migrate` (`[catalog]` set) for a contract with one more column.
    let (code, out) = case.cli(&["catalog", "sync", "--database", &db, "--table", "wau_csv"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("created"), "{out}");
    let (code, out) = case.cli(&["catalog", "sync", "--database", &db, "--table", "wau_csv"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("catalog table {db}.wau_csv unchanged")), "{out}");
    let v3 = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/contracts/wau_audit_log_v3.toml");
    let catalog_env = [
        ("WAU_INGEST_CATALOG_DATABASE", db.as_str()),
        ("WAU_INGEST_CATALOG_TABLE", "wau_csv"),
        ("WAU_INGEST_CONTRACT_PATH", v3.to_str().unwrap()),
    ];
    let (code, out) = case.cli_with(&["migrate"], &catalog_env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("catalog table {db}.wau_csv updated")), "{out}");
    let t = glue.get_table().database_name(&db).name("wau_csv").send().await.unwrap().table.unwrap();
    let names: Vec<String> =
        t.storage_descriptor.unwrap().columns.unwrap_or_default().into_iter().map(|c| c.name).collect();
    assert_eq!(names.last().map(String::as_str), Some("region"), "{names:?}");
    assert_eq!(t.parameters.unwrap()["wau_contract_version"], "3");
    let (code, out) = case.cli_with(&["migrate"], &catalog_env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 column(s) added") && out.contains(&format!("{db}.wau_csv unchanged")), "idempotent: {out}");
    // Back to the v2 catalog table for what follows.
    let (code, out) = case.cli(&["catalog", "sync", "--database", &db, "--table", "wau_csv"]);
    assert_eq!(code, 0);
    assert!(out.contains("updated"), "{out}");
    let t = glue.get_table().database_name(&db).name("wau_csv").send().await.unwrap().table.unwrap();
    let sd = t.storage_descriptor.unwrap();
    assert_eq!(sd.location.as_deref(), Some(format!("s3://{}/csv/", case.bucket).as_str()));
    let contract = wau_ingest::contract::Contract::builtin();
    assert_eq!(sd.columns.unwrap_or_default().len(), contract.columns.len());
    assert_eq!(t.parameters.unwrap()["skip.header.line.count"], "1");

    // The runner: a run in progress makes the next start "already running" (exit 1, not an
    // error), and once it ends a merge runs to SUCCEEDED.
    let job = format!("{}-merge", case.name);
    glue.create_job()
        .name(&job)
        .role("arn:aws:iam::123456789012:role/wau-glue")
        .command(
            aws_sdk_glue::types::JobCommand::builder()
                .name("pythonshell")
                .script_location("s3://x/merge_job.py")
                .build(),
        )
        .execution_property(aws_sdk_glue::types::ExecutionProperty::builder().max_concurrent_runs(1).build())
        .send()
        .await
        .unwrap();
    case.env.extend([
        ("WAU_INGEST_MERGE_RUNNER".to_string(), "glue".to_string()),
        ("WAU_INGEST_MERGE_GLUE_JOB_NAME".to_string(), job.clone()),
    ]);
    glue_transition(Some(2)).await;
    let busy = glue.start_job_run().job_name(&job).send().await.unwrap().job_run_id.unwrap();
    let (code, out) = case.cli(&["merge"]);
    assert_eq!(code, 1);
    assert!(out.contains("AlreadyRunning"), "{out}");
    let mut done = false;
    for _ in 0..10 {
        let run = glue.get_job_run().job_name(&job).run_id(&busy).send().await.unwrap().job_run.unwrap();
        done = run.job_run_state == Some(aws_sdk_glue::types::JobRunState::Succeeded);
        if done {
            break;
        }
    }
    assert!(done, "the busy run ends");
    let (code, out) = case.cli(&["merge"]);
    glue_transition(None).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("succeeded"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_backlog_releases_what_it_holds_and_exits_promptly() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::new(&sdk, true, 5).await;
    let written = versions(80);
    for v in &written {
        put_version(&case, v).await;
    }
    // Small batches and a long visibility: whatever the process holds at the signal must be
    // given back explicitly, or the restart would wait for it.
    let settings = [("WAU_INGEST_BATCH_MAX_ROWS", "60"), ("WAU_INGEST_SOURCE_VISIBILITY_TIMEOUT_SECS", "600")];
    let mut svc = case.spawn_run("run.log", &settings);
    assert!(
        eventually(Duration::from_secs(60), || async {
            case.count_or_zero("SELECT COUNT(*) FROM wau_ingest_files").await > 0
        })
        .await
    );
    signal(&svc, "TERM");
    let exited = wait_exit(&mut svc, Duration::from_secs(15));
    assert!(exited.is_some_and(|s| s.success()), "exit 0 within 15 s\n{}", case.log("run.log"));
    let mut svc = case.spawn_run("run.log", &settings);
    assert!(
        eventually(Duration::from_secs(120), || settled(&case, 80)).await,
        "the rest loads after the restart\n{}",
        case.log("run.log")
    );
    signal(&svc, "TERM");
    assert!(wait_exit(&mut svc, Duration::from_secs(30)).is_some());
    assert_exact(&case, &written).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reads_the_queue_its_dlq_and_the_warehouse() {
    let Some(sdk) = aws_stack::stack().await else { return };
    // No notifications: the files arrive through the reconcile; the queue holds what we send.
    let case = Case::new(&sdk, false, 5).await;
    case.send_raw("waiting 1").await;
    case.send_raw("waiting 2").await;
    case.sqs.send_message().queue_url(&case.dlq_url).message_body("dead").send().await.unwrap();
    put_version(&case, &Version { key: "csv/acme/a.csv".into(), rows: rows(0, 3, "a") }).await;
    // Its one row is rejected: its customer comes from its key.
    case.put("csv/acme/bad.csv", format!("{}\nacme,e9,yesterday,u9,,login,,\n", wau_ingest::demo::HEADER)).await;
    let (code, out) = case.cli(&["reconcile"]);
    assert_eq!(code, 0, "{out}");

    let (code, out) = case.cli(&["status", "--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    let backlog = &s["backlog"];
    assert_eq!(backlog["source"], "sqs");
    assert_eq!((backlog["visible"].as_u64(), backlog["in_flight"].as_u64()), (Some(2), Some(0)), "{s}");
    assert_eq!(backlog["dlq"]["visible"], 1, "{s}");
    assert!(backlog["dlq"]["arn"].as_str().unwrap().ends_with(&format!(":{}-dlq", case.name)), "{s}");
    let rec = &s["last_reconcile"];
    assert_eq!((rec["outcome"].as_str(), rec["objects_missing"].as_u64()), (Some("ok"), Some(2)), "{s}");
    assert_eq!(rec["files_loaded"].as_u64().unwrap() + rec["files_rejected"].as_u64().unwrap(), 2, "{s}");
    // A merge on Redshift records its files, not its row counts.
    assert_eq!(s["last_merge"]["files"], 2, "{s}");
    assert!(s["last_merge"]["rows_inserted"].is_null(), "{s}");
    assert_eq!(s["unmerged"]["files"], 0);
    let customers = s["customers"].as_array().unwrap();
    assert_eq!(customers.len(), 1, "{s}");
    assert_eq!(customers[0]["customer"], CUSTOMER);
    assert_eq!((customers[0]["files"].as_u64(), customers[0]["rows_read"].as_u64()), (Some(2), Some(4)));
    assert_eq!(customers[0]["rows_rejected"], 1);
    assert_eq!(customers[0]["reject_rate"].as_f64(), Some(0.25));
    let rule = &s["top_reject_rules"][0];
    assert_eq!((rule["rule"].as_str(), rule["rejects"].as_u64()), (Some("type"), Some(1)), "{s}");
    assert_eq!(
        (rule["example"]["key"].as_str(), rule["example"]["line"].as_u64()),
        (Some("csv/acme/bad.csv"), Some(2))
    );

    let (code, text) = case.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(text.contains("backlog:   2 message(s) waiting, 0 in flight"), "{text}");
    assert!(text.contains("dlq:       1 message(s) in arn:"), "{text}");
    assert!(text.contains(": ok, 2 object(s) missing"), "{text}");
}
