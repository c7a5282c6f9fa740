//! What the service does when the warehouse refuses it for good (a missing table, a database
//! that does not exist): it stops with the reason and a non-zero exit instead of retrying for
//! ever, and nothing it held is acknowledged. On the local AWS stack (moto + the Data API
//! emulator), like `tests/aws.rs`; without it the tests print SKIPPED (under CI they fail).

#[path = "support/aws_stack.rs"]
mod aws_stack;
mod support;

use std::time::Duration;

use aws_stack::{csv, eventually, Case};
use support::wait_exit;

fn rows(from: u32, n: u32) -> Vec<(String, String)> {
    (from..from + n).map(|e| (format!("e{e:06}"), format!("u-{e}"))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_ledger_stops_the_service_with_the_reason_and_keeps_the_message() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::new(&sdk, true, 50).await;
    let mut svc = case.spawn_run("run.log", &[]);
    case.put("csv/acme/a.csv", csv("acme", &rows(0, 5))).await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            case.count_or_zero("SELECT COUNT(*) FROM wau_ingest_files WHERE status = 'loaded'").await == 1
        })
        .await,
        "the first file loads: {}",
        case.log("run.log")
    );

    // An operator drops the ledger: every later commit fails with "does not exist". (CASCADE:
    // the freshness view depends on it, and Redshift, like PostgreSQL, refuses the plain DROP.)
    case.statement(&case.database, "DROP TABLE wau_ingest_files CASCADE").await;
    case.put("csv/acme/b.csv", csv("acme", &rows(100, 5))).await;

    let status = wait_exit(&mut svc, Duration::from_secs(90)).expect("the service stops by itself");
    assert!(!status.success(), "a non-zero exit: {status}");
    let log = case.log("run.log");
    assert!(log.contains("the warehouse refuses the service; stopping"), "{log}");
    assert!(log.contains("does not exist"), "the reason is named: {log}");
    assert_eq!(log.matches("ingest step failed; backing off").count(), 0, "no endless retry: {log}");
    // b.csv was never acknowledged: its message is still on the queue for the next process.
    assert!(case.queue_depth(&case.queue_url).await >= 1, "b.csv's notification is kept");
    assert_eq!(case.count("SELECT COUNT(*) FROM wau_audit_logs_staging WHERE _file_key = 'csv/acme/b.csv'").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_does_not_exist_is_refused_at_start() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::new(&sdk, true, 5).await;
    let mut svc = case.spawn_run("run.log", &[("WAU_INGEST_WAREHOUSE_DATABASE", "no_such_database_here")]);
    let status = wait_exit(&mut svc, Duration::from_secs(60)).expect("the service stops by itself");
    assert!(!status.success(), "a non-zero exit: {status}");
    let log = case.log("run.log");
    assert!(log.contains("no_such_database_here"), "the database is named: {log}");
}
