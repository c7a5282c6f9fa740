//! `reconcile`: the objects a listing holds and the ledger lacks — those whose (key, sequencer)
//! the ledger has never recorded — found by a merge-join of two streams in key order, holding
//! a page of each, never the whole listing or ledger:
//!
//! - the listing, [`ObjectStore::list_pages`], in UTF-8 byte order of the keys (S3's order; the
//!   local store walks folders in the same order);
//! - the ledger's (key, sequencer) pairs, [`Warehouse::recorded_page`], in keyset pages
//!   of [`LEDGER_PAGE_ROWS`] from the first listed key on, in the engine's `ORDER BY key,
//!   sequencer`. Paging stops with the listing: rows past its last key are never fetched.
//!
//! **Order.** The join is exact when the engine orders keys by bytes, as SQLite (BINARY
//! collation) and the emulator's varchar operators do. The documentation does not say how
//! Redshift orders VARCHAR (a database may even be case-insensitive), so the join does not rely
//! on it for safety: it calls an object recorded only when it meets a ledger row with exactly
//! its key and sequencer (byte-equal). If the two orders disagree, a recorded object can be
//! passed by and called missing — never the reverse — and the pipeline's own ledger check
//! (`lookup_stamp`, `lookup`, `admit`) counts it as a duplicate without loading it again. The
//! join counts rows that arrive out of byte order on either side ([`MergeCounts`]), so such a
//! disagreement is reported, not silent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::object::{ObjectRef, ObjectStore, StoreError};
use crate::replay::ReplayError;
use crate::warehouse::sql::ReconcileRecord;
use crate::warehouse::{PageStart, Recorded, Warehouse};

/// Ledger pairs per keyset page: ~1 MB of keys, a few Data API result pages.
pub const LEDGER_PAGE_ROWS: usize = 10_000;

/// What the join decided about one listed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The ledger has recorded this (key, sequencer).
    Recorded,
    /// It has not: load it.
    Missing,
}

/// What a reconcile saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeCounts {
    /// Objects listed.
    pub listed: u64,
    /// Of those, the ones the ledger lacks.
    pub missing: u64,
    /// Ledger pairs read.
    pub ledger_rows: u64,
    /// Ledger pages asked for.
    pub ledger_pages: u64,
    /// Listed keys not after the key before them (byte order).
    pub listing_out_of_order: u64,
    /// Ledger pairs not after the pair before them (byte order).
    pub ledger_out_of_order: u64,
}

/// The merge-join's state: the ledger pairs fetched and not yet passed. Pure: the caller
/// fetches a page whenever [`MergeJoin::decide`] needs one and hands it to [`MergeJoin::feed`].
#[derive(Debug, Default)]
pub struct MergeJoin {
    ledger: VecDeque<Recorded>,
    ledger_ended: bool,
    /// The last pair fed: where the next page starts.
    last_fed: Option<Recorded>,
    last_listed: Option<String>,
    counts: MergeCounts,
}

impl MergeJoin {
    pub fn new() -> MergeJoin {
        MergeJoin::default()
    }

    pub fn counts(&self) -> MergeCounts {
        self.counts
    }

    /// Where the next ledger page starts, when deciding about `key` needs one.
    pub fn next_page(&self, key: &str) -> PageStart {
        match &self.last_fed {
            Some(last) => PageStart::After(last.clone()),
            None => PageStart::AtKey(key.to_string()),
        }
    }

    /// A ledger page as asked for with `limit`: a shorter page is the last.
    pub fn feed(&mut self, page: Vec<Recorded>, limit: usize) {
        self.counts.ledger_pages += 1;
        self.counts.ledger_rows += page.len() as u64;
        self.ledger_ended = page.len() < limit;
        for r in page {
            // A pair repeats once per version recorded with it: equal is in order.
            if self.last_fed.as_ref().is_some_and(|last| r < *last) {
                self.counts.ledger_out_of_order += 1;
            }
            self.last_fed = Some(r.clone());
            self.ledger.push_back(r);
        }
    }

    /// The decision about the next listed object, or `None` when the next ledger page is needed
    /// first (then ask again about the same object).
    pub fn decide(&mut self, obj: &ObjectRef) -> Option<Decision> {
        let sequencer = obj.sequencer.as_deref().unwrap_or_default();
        let decision = loop {
            let Some(r) = self.ledger.front() else {
                if self.ledger_ended {
                    break Decision::Missing;
                }
                return None;
            };
            match (r.key.as_str(), r.sequencer.as_str()).cmp(&(obj.key.as_str(), sequencer)) {
                std::cmp::Ordering::Less => {
                    self.ledger.pop_front();
                }
                std::cmp::Ordering::Equal => break Decision::Recorded,
                std::cmp::Ordering::Greater => break Decision::Missing,
            }
        };
        self.counts.listed += 1;
        if decision == Decision::Missing {
            self.counts.missing += 1;
        }
        if self.last_listed.as_ref().is_some_and(|last| obj.key <= *last) {
            self.counts.listing_out_of_order += 1;
        }
        self.last_listed = Some(obj.key.clone());
        Some(decision)
    }
}

/// The objects under `prefix` the ledger lacks, streamed as the join finds them, and what the
/// join counts as it goes (final once the stream has ended).
pub struct Missing {
    pub objects: BoxStream<'static, Result<ObjectRef, ReplayError>>,
    pub counts: Arc<Mutex<MergeCounts>>,
}

/// Streams the objects in `store` under `prefix` whose (key, sequencer) the ledger has never
/// recorded for the store's bucket.
pub fn missing(store: &dyn ObjectStore, warehouse: Arc<dyn Warehouse>, prefix: &str) -> Missing {
    missing_paged(store, warehouse, prefix, LEDGER_PAGE_ROWS)
}

/// [`missing`] with ledger pages of `ledger_page_rows` pairs.
pub fn missing_paged(
    store: &dyn ObjectStore,
    warehouse: Arc<dyn Warehouse>,
    prefix: &str,
    ledger_page_rows: usize,
) -> Missing {
    let counts = Arc::new(Mutex::new(MergeCounts::default()));
    let join = Join {
        listing: store.list_pages(prefix),
        page: Vec::new().into_iter(),
        merge: MergeJoin::new(),
        warehouse,
        bucket: store.bucket().to_string(),
        page_rows: ledger_page_rows.max(1),
        counts: counts.clone(),
    };
    let objects = futures::stream::try_unfold(join, |mut join| async move {
        Ok::<_, ReplayError>(join.next_missing().await?.map(|obj| (obj, join)))
    })
    .boxed();
    Missing { objects, counts }
}

/// The join driven over the two real streams.
struct Join {
    listing: BoxStream<'static, Result<Vec<ObjectRef>, StoreError>>,
    page: std::vec::IntoIter<ObjectRef>,
    merge: MergeJoin,
    warehouse: Arc<dyn Warehouse>,
    bucket: String,
    page_rows: usize,
    counts: Arc<Mutex<MergeCounts>>,
}

impl Join {
    async fn next_missing(&mut self) -> Result<Option<ObjectRef>, ReplayError> {
        loop {
            let Some(obj) = self.page.next() else {
                match self.listing.try_next().await? {
                    Some(page) => {
                        self.page = page.into_iter();
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            let decision = loop {
                match self.merge.decide(&obj) {
                    Some(d) => break d,
                    None => self.fetch_ledger_page(&obj.key).await?,
                }
            };
            *self.counts.lock().expect("counts lock") = self.merge.counts();
            if decision == Decision::Missing {
                return Ok(Some(obj));
            }
        }
    }

    async fn fetch_ledger_page(&mut self, key: &str) -> Result<(), ReplayError> {
        let start = self.merge.next_page(key);
        let page = self.warehouse.recorded_page(&self.bucket, &start, self.page_rows).await?;
        let limit = self.page_rows;
        self.merge.feed(page, limit);
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// The record of reconcile runs: how one ended, written to the warehouse (`wau_ingest_reconciles`,
// see `sql::reconciles_table`) so that `status`, in another process, can say when the last one ran
// and how it ended. The runs are `cli::ingest::reconcile` and the service's daily loop in `run`.

/// How a reconcile ended, as [`ReconcileRecord::outcome`] says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileOutcome {
    /// Everything the ledger lacked is loaded or rejected (and, for the CLI, merged).
    Ok,
    /// Some files failed transiently and are left for the next run.
    Incomplete,
    /// The listing, the load or the merge failed.
    Failed,
    /// The service's daily run: the listing is done and its objects are handed to the ingest loop.
    Listed,
}

impl ReconcileOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileOutcome::Ok => "ok",
            ReconcileOutcome::Incomplete => "incomplete",
            ReconcileOutcome::Failed => "failed",
            ReconcileOutcome::Listed => "listed",
        }
    }
}

/// Records a reconcile run in the warehouse; a failure to record is logged, not raised (the
/// reconcile itself is what matters).
pub async fn record(
    w: Arc<dyn Warehouse>,
    started_at: DateTime<Utc>,
    outcome: ReconcileOutcome,
    counts: [u64; 4],
    error: Option<String>,
) {
    let [objects_missing, files_loaded, files_rejected, files_to_retry] = counts;
    let r = ReconcileRecord {
        started_at,
        finished_at: Utc::now(),
        outcome: outcome.as_str().into(),
        objects_missing,
        files_loaded,
        files_rejected,
        files_to_retry,
        error,
    };
    if let Err(e) = w.record_reconcile(&r).await {
        tracing::warn!(error = %e, "recording the reconcile run failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn obj(key: &str, sequencer: &str) -> ObjectRef {
        ObjectRef { key: key.into(), version: None, sequencer: Some(sequencer.into()), size: None, event_time: None }
    }

    fn rec(key: &str, sequencer: &str) -> Recorded {
        Recorded { key: key.into(), sequencer: sequencer.into() }
    }

    /// Runs the join over `listing` with the ledger served in pages of `limit` from `ledger`
    /// (sorted as the engine sorts it), as `Join` does: a page from the first listed key on,
    /// then after the last pair fed. Returns the missing keys and the counts.
    fn run(listing: &[ObjectRef], ledger: &[Recorded], limit: usize) -> (Vec<String>, MergeCounts) {
        let mut join = MergeJoin::new();
        let mut missing = Vec::new();
        for o in listing {
            let d = loop {
                match join.decide(o) {
                    Some(d) => break d,
                    None => {
                        let page: Vec<Recorded> = match join.next_page(&o.key) {
                            PageStart::AtKey(k) => ledger.iter().filter(|r| r.key >= k).take(limit).cloned().collect(),
                            PageStart::After(last) => {
                                ledger.iter().filter(|r| **r > last).take(limit).cloned().collect()
                            }
                        };
                        join.feed(page, limit);
                    }
                }
            };
            if d == Decision::Missing {
                missing.push(o.key.clone());
            }
        }
        (missing, join.counts())
    }

    #[test]
    fn finds_the_versions_the_ledger_lacks() {
        let listing = [obj("a", "2"), obj("b", "1"), obj("c", "5"), obj("d", "1")];
        // `a` has an older version recorded, `b` this one, `c` a newer one, `d` nothing.
        let ledger = [rec("a", "1"), rec("b", "1"), rec("c", "6"), rec("e", "1")];
        for limit in 1..=5 {
            let (missing, counts) = run(&listing, &ledger, limit);
            assert_eq!(missing, ["a", "c", "d"], "pages of {limit}");
            assert_eq!((counts.listed, counts.missing), (4, 3));
            assert_eq!((counts.listing_out_of_order, counts.ledger_out_of_order), (0, 0));
        }
    }

    #[test]
    fn ledger_pages_stop_with_the_listing_and_start_at_its_first_key() {
        let listing = [obj("m1", "1"), obj("m2", "1")];
        let mut ledger: Vec<Recorded> = (0..1000).map(|i| rec(&format!("a{i:04}"), "1")).collect();
        ledger.extend([rec("m1", "1"), rec("m2", "1")]);
        ledger.extend((0..1000).map(|i| rec(&format!("z{i:04}"), "1")));
        ledger.sort();
        let (missing, counts) = run(&listing, &ledger, 10);
        assert!(missing.is_empty());
        assert_eq!(counts.ledger_pages, 1, "one page from m1 on covers the listing");
        assert_eq!(counts.ledger_rows, 10);
    }

    #[test]
    fn a_ledger_out_of_byte_order_can_only_make_recorded_objects_look_missing() {
        // Sorted case-insensitively, as a case-insensitive database would: `a` before `B`,
        // which byte order puts after it.
        let listing = [obj("B", "1"), obj("a", "1")];
        let ledger = [rec("a", "1"), rec("B", "1")];
        let (missing, counts) = run(&listing, &ledger, 10);
        assert_eq!(missing, ["B"], "passed by, called missing; the pipeline's ledger check makes it a duplicate");
        assert_eq!(counts.ledger_out_of_order, 1);
    }

    fn key() -> impl Strategy<Value = String> {
        // Few distinct characters (with `/`, `-`, a capital and a non-ASCII one) so keys share
        // prefixes and collide.
        proptest::collection::vec(prop_oneof!["a", "b", "/", "-", "B", "é"], 1..5).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Against the model: missing = listed (key, sequencer) minus recorded ones, whatever
        /// the page size, with the ledger holding other keys and other versions too.
        #[test]
        fn agrees_with_a_set_difference(
            listed in proptest::collection::btree_map(key(), 0u8..4, 0..40),
            recorded in proptest::collection::btree_set((key(), 0u8..4), 0..60),
            also_listed in proptest::collection::vec(any::<bool>(), 40),
            limit in 1usize..8,
        ) {
            let listing: Vec<ObjectRef> = listed.iter().map(|(k, s)| obj(k, &s.to_string())).collect();
            // Some listed versions recorded for sure, so both outcomes are common.
            let mut ledger: BTreeSet<Recorded> = recorded.iter().map(|(k, s)| rec(k, &s.to_string())).collect();
            for (o, yes) in listing.iter().zip(&also_listed) {
                if *yes {
                    ledger.insert(rec(&o.key, o.sequencer.as_deref().unwrap()));
                }
            }
            // A pair repeats once per version recorded with it.
            let ledger: Vec<Recorded> = ledger
                .into_iter()
                .zip(also_listed.iter().cycle())
                .flat_map(|(r, twice)| if *twice { vec![r.clone(), r] } else { vec![r] })
                .collect();
            let model: Vec<String> = listing
                .iter()
                .filter(|o| !ledger.contains(&rec(&o.key, o.sequencer.as_deref().unwrap())))
                .map(|o| o.key.clone())
                .collect();
            let (missing, counts) = run(&listing, &ledger, limit);
            prop_assert_eq!(&missing, &model);
            prop_assert_eq!(counts.listed, listing.len() as u64);
            prop_assert_eq!(counts.missing, model.len() as u64);
            prop_assert_eq!(counts.ledger_out_of_order + counts.listing_out_of_order, 0);
        }

        /// Whatever order the engine returns the ledger in, an object the ledger lacks is
        /// always found: the join never calls a missing version recorded.
        #[test]
        fn never_passes_over_a_missing_version_whatever_the_ledger_order(
            listed in proptest::collection::btree_map(key(), 0u8..4, 0..40),
            recorded in proptest::collection::btree_set((key(), 0u8..4), 0..60),
            limit in 1usize..8,
        ) {
            let listing: Vec<ObjectRef> = listed.iter().map(|(k, s)| obj(k, &s.to_string())).collect();
            // The engine's order: case-insensitive first, punctuation last (not byte order).
            let engine = |r: &Recorded| (r.key.to_lowercase().replace(['/', '-'], "~"), r.key.clone(), r.sequencer.clone());
            let mut ledger: Vec<Recorded> = recorded.iter().map(|(k, s)| rec(k, &s.to_string())).collect();
            ledger.sort_by_key(engine);
            // Paged in the engine's order, as its ORDER BY and `>` would.
            let mut join = MergeJoin::new();
            let mut missing = BTreeSet::new();
            for o in &listing {
                let d = loop {
                    match join.decide(o) {
                        Some(d) => break d,
                        None => {
                            let page: Vec<Recorded> = match join.next_page(&o.key) {
                                PageStart::AtKey(k) => {
                                    let from = engine(&rec(&k, ""));
                                    ledger.iter().filter(|r| engine(r) >= from).take(limit).cloned().collect()
                                }
                                PageStart::After(last) => {
                                    let after = engine(&last);
                                    ledger.iter().filter(|r| engine(r) > after).take(limit).cloned().collect()
                                }
                            };
                            join.feed(page, limit);
                        }
                    }
                };
                if d == Decision::Missing {
                    missing.insert(o.key.clone());
                }
            }
            for o in &listing {
                if !ledger.contains(&rec(&o.key, o.sequencer.as_deref().unwrap())) {
                    prop_assert!(missing.contains(&o.key), "{} was passed over", o.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;
    use crate::contract::Contract;
    use crate::warehouse::sql::{Dialect, Sql, Tables};
    use crate::warehouse::sqlite::SqliteWarehouse;

    #[tokio::test]
    async fn a_failed_run_is_read_back_with_its_error_text_intact() {
        let dir = tempfile::tempdir().unwrap();
        let contract = Contract::builtin();
        let w = Arc::new(SqliteWarehouse::open(&dir.path().join("w.sqlite"), &contract).unwrap());
        w.migrate().await.unwrap();
        let started = Utc::now() - chrono::Duration::seconds(5);
        let error = r"listing s3://b/csv/: it's C:\gone".to_string();
        record(w.clone(), started, ReconcileOutcome::Failed, [0; 4], Some(error.clone())).await;
        record(w.clone(), Utc::now(), ReconcileOutcome::Listed, [3, 0, 0, 0], None).await;
        let tables = Tables::for_contract(&contract);
        let rows = w.read_text(&Sql::new(Dialect::Sqlite, &contract, &tables).last_reconcile()).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0][2].as_deref(), rows[0][3].as_deref(), rows[0][7].as_deref()),
            (Some("listed"), Some("3"), None)
        );
        let all = w.read_text("SELECT outcome, error FROM wau_ingest_reconciles ORDER BY finished_at").await.unwrap();
        assert_eq!(all[0], [Some("failed".to_string()), Some(error)]);
    }
}
