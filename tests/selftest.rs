//! `wau-ingest selftest` against the local AWS stack (moto + the Redshift Data API emulator):
//! every check passes on the emulator, and the scratch schema and the staging objects it wrote
//! are gone afterwards. The emulator is meant to be never kinder than Redshift, so a check that
//! fails here names a difference between the product's assumptions and the emulator.
//!
//! The stack must be running (`eval "$(scripts/local-aws.sh up)"`; `.ci/run` starts it).
//! Without it the stack test prints SKIPPED, except under CI, where that is a failure.

#[path = "support/aws_stack.rs"]
mod aws_stack;
mod support;

use std::process::Command;

use aws_stack::Case;

#[tokio::test(flavor = "multi_thread")]
async fn selftest_passes_on_the_emulator_and_leaves_nothing_behind() {
    let Some(sdk) = aws_stack::stack().await else { return };
    let case = Case::new(&sdk, false, 5).await;
    let (code, out) = case.cli(&["selftest", "--format", "json"]);
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("selftest --format json printed no report ({e}): {out}"));
    let schema = report["schema"].as_str().expect("the report names its scratch schema");
    assert!(schema.starts_with("wau_selftest_"), "{schema}");

    // Nothing left behind: the scratch schema, and every object under the staging prefix.
    let schemas =
        case.count(&format!("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{schema}'")).await;
    assert_eq!(schemas, 0, "the scratch schema {schema} is still there");
    let left = case.s3.list_objects_v2().bucket(&case.bucket).prefix("staging/").send().await.unwrap();
    let keys: Vec<&str> = left.contents().iter().filter_map(|o| o.key()).collect();
    assert!(keys.is_empty(), "staging objects left behind: {keys:?}");
    assert_eq!(report["cleanup"]["schema_dropped"], true, "{report}");
    assert!(report["cleanup"]["objects_deleted"].as_u64().unwrap() > 0, "the COPY checks staged objects: {report}");

    let checks = report["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "isolation_level",
            "writer_lock",
            "batch_size",
            "copy_fractional_seconds",
            "copy_null_and_empty",
            "varchar_bytes",
            "iso_week",
            "conflict_retry",
            "ledger_key_order",
            "add_column"
        ]
    );
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c["verdict"] != "PASS")
        .map(|c| format!("{}: {} (change: {})", c["name"], c["observed"], c["advice"]))
        .collect();
    assert!(failed.is_empty(), "checks failed on the emulator:\n{}", failed.join("\n"));
    assert_eq!(code, 0, "every check passed, so the exit code is 0");
}

#[test]
fn selftest_cannot_run_without_redshift() {
    let dir = tempfile::tempdir().unwrap();
    for (format, expect) in [("text", "selftest could not run"), ("json", "\"error\"")] {
        let out = Command::new(support::BIN)
            .args(["selftest", "--format", format])
            .current_dir(dir.path())
            .env("WAU_INGEST_WAREHOUSE_KIND", "sqlite")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains(expect) && text.contains("warehouse.kind"), "{text}");
    }
}
