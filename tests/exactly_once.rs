//! Duplicates, overwrites, late older versions and replays leave the target equal to the
//! specification exactly: the valid rows of the current version of every file, deduplicated
//! by (customer, event_id), the newest version's row winning.

mod support;

use std::time::{Duration, SystemTime};

use support::{expected_target, write_version, Env, Version};

const CUSTOMER: &str = "acme";

fn rows(ids: impl IntoIterator<Item = u32>, user: &str) -> Vec<(String, String)> {
    ids.into_iter().map(|i| (format!("e{i:05}"), format!("{user}-{i}"))).collect()
}

/// Writes a version with an explicit modification time, so versions order as written
/// however coarse the file system's clock is.
fn write_at(env: &Env, v: &Version, tick: &mut u64) {
    write_version(&env.inbox, v, CUSTOMER);
    *tick += 1;
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + *tick);
    std::fs::File::options().write(true).open(env.inbox.join(&v.key)).unwrap().set_modified(t).unwrap();
}

#[test]
fn duplicates_overwrites_late_versions_and_replays_leave_the_target_exact() {
    let env = Env::new();
    let config = env.config();
    let mut tick = 0;
    let mut written: Vec<Version> = Vec::new();
    let mut write = |env: &Env, v: Version, written: &mut Vec<Version>| {
        write_at(env, &v, &mut tick);
        written.push(v);
    };

    // Five files; b shares ten keys with a (b is newer, so b's rows win them).
    write(&env, Version { key: "csv/acme/a.csv".into(), rows: rows(0..50, "a1") }, &mut written);
    write(&env, Version { key: "csv/acme/b.csv".into(), rows: rows(40..90, "b1") }, &mut written);
    write(&env, Version { key: "csv/acme/c.csv".into(), rows: rows(100..150, "c1") }, &mut written);
    write(&env, Version { key: "csv/acme/d.csv".into(), rows: rows(200..230, "d1") }, &mut written);
    write(&env, Version { key: "csv/acme/e.csv".into(), rows: rows(300..310, "e1") }, &mut written);
    let t = env.ingest_all(&config, false);
    assert_eq!((t.loaded, t.duplicate), (5, 0));
    env.merge(&config);
    assert_eq!(env.target(), expected_target(CUSTOMER, &written));

    // Everything delivered again: all duplicates, nothing changes.
    let t = env.ingest_all(&config, false);
    assert_eq!((t.loaded, t.duplicate), (0, 5));
    env.merge(&config);
    assert_eq!(env.target(), expected_target(CUSTOMER, &written));

    // b is overwritten by a version without the shared keys: a's rows for them come back.
    write(&env, Version { key: "csv/acme/b.csv".into(), rows: rows(60..95, "b2") }, &mut written);
    // a copy of c under a second key: same rows, the newer key wins them.
    write(&env, Version { key: "csv/acme/c-resend.csv".into(), rows: rows(100..150, "c1") }, &mut written);
    let t = env.ingest_all(&config, false);
    assert_eq!((t.loaded, t.duplicate), (2, 4));
    env.merge(&config);
    assert_eq!(env.target(), expected_target(CUSTOMER, &written));
    assert_eq!(env.target()[&(CUSTOMER.into(), "e00045".into())], ("a1-45".into(), "csv/acme/a.csv".into()));

    // An older version of d arrives late (its mtime is older than the recorded one):
    // recorded as superseded, never loaded.
    let late = Version { key: "csv/acme/d.csv".into(), rows: rows(200..205, "d0") };
    write_version(&env.inbox, &late, CUSTOMER);
    std::fs::File::options()
        .write(true)
        .open(env.inbox.join(&late.key))
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .unwrap();
    let t = env.ingest_all(&config, false);
    assert_eq!((t.loaded, t.superseded), (0, 1));
    env.merge(&config);
    assert_eq!(env.target(), expected_target(CUSTOMER, &written), "a late older version changes nothing");
    // Put the current d back (it is a duplicate of what the ledger holds).
    write_at(&env, &written[3].clone(), &mut tick);
    let t = env.ingest_all(&config, false);
    assert_eq!((t.loaded, t.duplicate), (0, 6));

    // A forced replay loads every current version again and replaces its rows.
    let t = env.ingest_all(&config, true);
    assert_eq!(t.loaded, 6);
    env.merge(&config);
    env.merge(&config); // idempotent
    assert_eq!(env.target(), expected_target(CUSTOMER, &written));

    // The ledger: one counting row per version ever seen, current versions loaded.
    let ledger = env.ledger();
    let loaded: Vec<&str> = ledger.iter().filter(|r| r.status == "loaded").map(|r| r.key.as_str()).collect();
    assert_eq!(
        loaded,
        vec![
            "csv/acme/a.csv",
            "csv/acme/b.csv",
            "csv/acme/c-resend.csv",
            "csv/acme/c.csv",
            "csv/acme/d.csv",
            "csv/acme/e.csv"
        ]
    );
    assert_eq!(ledger.iter().filter(|r| r.status == "superseded").count(), 2, "b v1 and the late d");
    assert!(ledger.iter().all(|r| r.rows_read == r.rows_loaded + r.rows_rejected && r.merged));
    // Staging holds exactly the current versions' rows.
    let current_rows: usize = ["a", "b", "c", "d", "e", "c-resend"]
        .iter()
        .map(|k| written.iter().rev().find(|v| v.key == format!("csv/acme/{k}.csv")).unwrap().rows.len())
        .sum();
    assert_eq!(env.count("SELECT COUNT(*) FROM wau_audit_logs_staging") as usize, current_rows);
}

/// The case an upsert-and-delete merge gets wrong, end to end through files: two files hold
/// the same key; the newer one is overwritten without it; the older file's row must remain.
#[test]
fn superseding_a_file_keeps_keys_another_file_still_holds() {
    let env = Env::new();
    let config = env.config();
    let mut tick = 0;
    let a = Version { key: "csv/acme/a.csv".into(), rows: rows([1, 2], "a") };
    let b1 = Version { key: "csv/acme/b.csv".into(), rows: rows([2, 3], "b1") };
    let b2 = Version { key: "csv/acme/b.csv".into(), rows: rows([3], "b2") };
    write_at(&env, &a, &mut tick);
    write_at(&env, &b1, &mut tick);
    env.ingest_all(&config, false);
    env.merge(&config);
    assert_eq!(env.target()[&(CUSTOMER.into(), "e00002".into())].0, "b1-2");
    write_at(&env, &b2, &mut tick);
    env.ingest_all(&config, false);
    env.merge(&config);
    let target = env.target();
    assert_eq!(target.len(), 3);
    assert_eq!(target[&(CUSTOMER.into(), "e00002".into())], ("a-2".into(), "csv/acme/a.csv".into()));
    assert_eq!(target[&(CUSTOMER.into(), "e00003".into())], ("b2-3".into(), "csv/acme/b.csv".into()));
    assert_eq!(target, expected_target(CUSTOMER, &[a, b1, b2]));
}

#[test]
fn the_model_itself_picks_newest_versions() {
    // The specification helper is code too: check it on a case worked by hand.
    let a = Version { key: "a".into(), rows: vec![("1".into(), "a".into()), ("2".into(), "a".into())] };
    let b = Version { key: "b".into(), rows: vec![("2".into(), "b".into())] };
    let a2 = Version { key: "a".into(), rows: vec![("1".into(), "a2".into())] };
    let t = expected_target("c", &[a, b, a2]);
    let got: Vec<(&str, &str)> = t.iter().map(|((_, id), (user, _))| (id.as_str(), user.as_str())).collect();
    assert_eq!(got, vec![("1", "a2"), ("2", "b")]);
}
