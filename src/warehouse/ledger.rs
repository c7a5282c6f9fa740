//! The ledger's rules, once, for every engine: when a version is a duplicate, when it is
//! superseded, when it loads, and how the versions of one key are ordered.
//!
//! Engines gather what they know of a version — its newest recorded status and whether a newer
//! version of its key is recorded, from the ledger and from what the writer holds uncommitted —
//! and [`admit`] decides. The SQL forms of the same rules (`Sql::newer_version_exists`,
//! `Sql::supersede_older` and their set-wise Redshift forms) are built from [`COUNTS_FOR_ORDER`]
//! and the same comparison: a version is newer than another when its sequencer is greater.
//! Pure: no I/O, no engine.

use super::sql::ledger_table;
use super::{FileMeta, FileStatus};
use crate::validate::RowCustomers;

/// What a writer should do with a version it is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Already recorded with this status: count it as a duplicate, do nothing.
    Duplicate(FileStatus),
    /// A newer version of the key is recorded: record this one superseded, load nothing.
    Superseded,
    /// Unknown version: load it.
    Load,
    /// A forced replay of a recorded version: mark the earlier load replaced, load it again.
    Reload,
}

/// The decision for one version. `recorded`: the status of the newest load of this very version
/// that counts (a `replaced` load does not), the writer's open batch included; `newer_recorded`:
/// a newer version of its key is recorded ([`is_newer`]); `force`: `replay --force`;
/// `in_open_batch`: `recorded` is the writer's own open batch's copy.
///
/// A recorded version is a duplicate unless forced; a forced one still is when a newer version
/// exists (reloading it would not change the target: the newer version wins), or when the open
/// batch already holds it: an S3 version is immutable and the contract does not change within a
/// batch, so that copy already is the fresh load `force` asks for (and on Redshift its rows may
/// share a staging part with other files' and cannot be taken out again). An unknown version
/// older than a recorded one is superseded on arrival.
pub fn admit(recorded: Option<FileStatus>, newer_recorded: bool, force: bool, in_open_batch: bool) -> Verdict {
    match (recorded, newer_recorded, force) {
        (Some(status), _, _) if in_open_batch => Verdict::Duplicate(status),
        (Some(status), _, false) | (Some(status), true, true) => Verdict::Duplicate(status),
        (None, true, _) => Verdict::Superseded,
        (Some(_), false, true) => Verdict::Reload,
        (None, false, _) => Verdict::Load,
    }
}

/// The statuses a version must have to count in the version order: a loaded or rejected
/// version supersedes older ones; a superseded or replaced one does not.
pub const COUNTS_FOR_ORDER: [FileStatus; 2] = [FileStatus::Loaded, FileStatus::Rejected];

/// `other`, recorded as `status`, is a newer version of `file`'s key. The order is the
/// sequencer's (byte-wise string order, as SQL compares it); two versions with the same
/// sequencer do not supersede each other on arrival. `Sql::newer_version_exists` is this in SQL.
pub fn is_newer(other: &FileMeta, status: FileStatus, file: &FileMeta) -> bool {
    other.bucket == file.bucket
        && other.key == file.key
        && other.version != file.version
        && COUNTS_FOR_ORDER.contains(&status)
        && other.sequencer > file.sequencer
}

/// The same file version (bucket, key and version; never the key alone).
pub fn same_version(a: &FileMeta, b: &FileMeta) -> bool {
    a.bucket == b.bucket && a.key == b.key && a.version == b.version
}

/// The customer the ledger records for a file (its `customer` column): the one its key names
/// (`FileMeta::customer`, the contract's `customer_from_key`), else the one every loaded row
/// names. `None` (NULL) when neither says: rows of several customers (`customer_policy =
/// "trust_column"` under a key that names none), no row loaded (a file rejected whole, a
/// superseded arrival), or a name longer than the column ([`ledger_table::CUSTOMER`]), which is
/// left out rather than cut (a cut name would be another customer's), or holding NUL (which
/// the product's own columns store as U+FFFD, three bytes: it might no longer fit).
pub fn file_customer(from_key: Option<&str>, rows: &RowCustomers) -> Option<String> {
    from_key
        .or_else(|| rows.single())
        .filter(|c| !c.is_empty() && c.len() <= ledger_table::CUSTOMER.width() && !c.contains('\0'))
        .map(str::to_string)
}

/// The SQL list of [`COUNTS_FOR_ORDER`], `('loaded', 'rejected')`.
pub fn counts_for_order_sql() -> String {
    let names: Vec<String> = COUNTS_FOR_ORDER.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("({})", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use FileStatus::*;

    fn meta(key: &str, version: &str, sequencer: &str) -> FileMeta {
        FileMeta {
            bucket: "b".into(),
            key: key.into(),
            version: version.into(),
            sequencer: sequencer.into(),
            size: 1,
            event_time: chrono::Utc::now(),
            contract_version: 1,
            customer: None,
        }
    }

    #[test]
    fn a_files_customer_is_its_keys_else_its_rows_one() {
        let one = RowCustomers::One("acme".into());
        assert_eq!(file_customer(Some("globex"), &one).as_deref(), Some("globex"), "the key names it first");
        assert_eq!(file_customer(None, &one).as_deref(), Some("acme"));
        assert_eq!(file_customer(Some("acme"), &RowCustomers::None).as_deref(), Some("acme"));
        assert_eq!(file_customer(None, &RowCustomers::Mixed), None, "several customers: unknown");
        assert_eq!(file_customer(None, &RowCustomers::None), None, "no row: unknown");
        let width = ledger_table::CUSTOMER.width();
        let widest = "é".repeat(width / 2);
        assert_eq!(file_customer(Some(&widest), &one), Some(widest.clone()), "{width} bytes fit");
        let over = format!("{widest}x");
        assert_eq!(file_customer(None, &RowCustomers::One(over)), None, "over the width: unknown, not cut");
        assert_eq!(file_customer(Some(""), &one), None);
        assert_eq!(file_customer(Some("a\0b"), &one), None);
    }

    #[test]
    fn row_customers_learn_one_or_several() {
        let mut c = RowCustomers::None;
        c.observe(Some("acme"));
        c.observe(Some("acme"));
        assert_eq!(c.single(), Some("acme"));
        c.observe(Some("globex"));
        assert_eq!(c, RowCustomers::Mixed);
        c.observe(Some("acme"));
        assert_eq!(c, RowCustomers::Mixed, "once several, always several");
        let mut c = RowCustomers::None;
        c.observe(None);
        assert_eq!(c, RowCustomers::Mixed, "a row without a customer is not the same customer");
    }

    #[test]
    fn every_case_of_admission() {
        assert_eq!(admit(None, false, false, false), Verdict::Load);
        assert_eq!(admit(None, false, true, false), Verdict::Load);
        assert_eq!(admit(None, true, false, false), Verdict::Superseded);
        assert_eq!(admit(None, true, true, false), Verdict::Superseded);
        for s in [Loaded, Rejected, Superseded] {
            assert_eq!(admit(Some(s), false, false, false), Verdict::Duplicate(s));
            assert_eq!(admit(Some(s), true, false, false), Verdict::Duplicate(s));
            assert_eq!(admit(Some(s), true, true, false), Verdict::Duplicate(s), "a newer version wins anyway");
            assert_eq!(admit(Some(s), false, true, false), Verdict::Reload);
            for (newer, force) in [(false, false), (true, false), (false, true), (true, true)] {
                assert_eq!(
                    admit(Some(s), newer, force, true),
                    Verdict::Duplicate(s),
                    "the open batch's copy is the load, forced or not"
                );
            }
        }
    }

    #[test]
    fn the_version_order_is_the_sequencers_among_counting_versions() {
        let old = meta("k", "v1", "0001");
        let new = meta("k", "v2", "0002");
        assert!(is_newer(&new, Loaded, &old) && is_newer(&new, Rejected, &old));
        assert!(!is_newer(&new, Superseded, &old), "a superseded version orders nothing");
        assert!(!is_newer(&old, Loaded, &new));
        assert!(!is_newer(&meta("k", "v3", "0001"), Loaded, &old), "an equal sequencer is not newer");
        assert!(!is_newer(&meta("other", "v2", "0002"), Loaded, &old), "another key");
        assert!(!is_newer(&meta("k", "v1", "0009"), Loaded, &old), "the same version");
        assert!(same_version(&old, &meta("k", "v1", "0009")) && !same_version(&old, &new));
        assert_eq!(counts_for_order_sql(), "('loaded', 'rejected')");
    }
}
