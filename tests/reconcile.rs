//! Reconcile over a real folder and a real SQLite ledger: the merge-join of the streamed
//! listing with the ledger's keyset pages finds exactly the files the ledger lacks, across
//! listing pages (1,000 objects each) and ledger pages, on keys whose byte order differs from
//! a per-directory name order (`a-b` before `a/…`) or a locale's (capitals, non-ASCII).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::TryStreamExt;
use support::Env;
use wau_ingest::object::ObjectStore;
use wau_ingest::reconcile;

/// `n` one-row files under `dir`, with names that interleave with folders in byte order.
fn keys() -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..1_150 {
        let shard = i % 3;
        keys.push(match i % 5 {
            0 => format!("csv/acme/s{shard}/f{i:05}.csv"),
            1 => format!("csv/acme/s{shard}-f{i:05}.csv"),
            2 => format!("csv/acme/S{shard}/f{i:05}.csv"),
            3 => format!("csv/acme/é{shard}/f{i:05}.csv"),
            _ => format!("csv/acme/s{shard}.f{i:05}.csv"),
        });
    }
    keys
}

fn write(env: &Env, key: &str, i: usize) {
    let text = format!("{}\nacme,e{i},2026-11-23T10:00:00Z,u{i},,login,,\n", wau_ingest::demo::HEADER);
    wau_ingest::demo::write_atomically(&env.inbox.join(key), text.as_bytes()).unwrap();
}

#[test]
fn reconcile_over_a_folder_finds_exactly_the_files_the_ledger_lacks() {
    let env = Env::new();
    let keys = keys();
    // Every 97th file, and the very first and last in key order, arrive after the first load.
    let mut sorted = keys.clone();
    sorted.sort();
    let late: BTreeSet<String> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 97 == 0)
        .map(|(_, k)| k.clone())
        .chain([sorted[0].clone(), sorted[sorted.len() - 1].clone()])
        .collect();
    for (i, k) in keys.iter().enumerate().filter(|(_, k)| !late.contains(*k)) {
        write(&env, k, i);
    }
    let config = env.config();
    let first = env.ingest_all(&config, false);
    assert_eq!(first.loaded as usize, keys.len() - late.len());
    for (i, k) in keys.iter().enumerate().filter(|(_, k)| late.contains(*k)) {
        write(&env, k, i);
    }
    // One file rewritten: a new mtime is a version the ledger has not recorded.
    let rewritten = sorted[500].clone();
    assert!(!late.contains(&rewritten));
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&env, &rewritten, 99_999);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let contract = Arc::new(config.contract().unwrap());
    let store = wau_ingest::embedded_store(&config).unwrap();
    let warehouse = wau_ingest::open_warehouse(&config, &contract).unwrap();
    let mut want = late.clone();
    want.insert(rewritten.clone());
    for page_rows in [7, 1_000, reconcile::LEDGER_PAGE_ROWS] {
        let found = reconcile::missing_paged(store.as_ref(), warehouse.clone(), "csv/", page_rows);
        let got: Vec<String> = rt.block_on(found.objects.map_ok(|o| o.key).try_collect::<Vec<_>>()).unwrap();
        let counts = *found.counts.lock().unwrap();
        assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), want, "ledger pages of {page_rows}");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "found in key order");
        assert_eq!((counts.listed, counts.missing), (keys.len() as u64, want.len() as u64));
        assert_eq!((counts.listing_out_of_order, counts.ledger_out_of_order), (0, 0), "both sides in byte order");
        let pages = (keys.len() - late.len()).div_ceil(page_rows) as u64;
        assert!(counts.ledger_pages <= pages + 1, "{} ledger pages for {page_rows} a page", counts.ledger_pages);
    }
    // A prefix reconciles only below it.
    let found = reconcile::missing(store.as_ref(), warehouse.clone(), "csv/acme/S1/");
    let got: BTreeSet<String> = rt.block_on(found.objects.map_ok(|o| o.key).try_collect()).unwrap();
    assert_eq!(got, want.iter().filter(|k| k.starts_with("csv/acme/S1/")).cloned().collect());

    // The listing itself: every file once, in byte order, whatever the folders.
    let listed = rt.block_on(store.list("")).unwrap();
    assert_eq!(listed.iter().map(|o| o.key.clone()).collect::<Vec<_>>(), sorted);

    // Reconcile loads them, and then nothing is missing.
    let found = reconcile::missing(store.as_ref(), warehouse.clone(), "csv/");
    let tally = rt
        .block_on(wau_ingest::replay::ingest_listed(
            &config,
            store.clone(),
            warehouse.clone(),
            contract,
            found.objects,
            false,
        ))
        .unwrap();
    assert_eq!(tally.loaded as usize, want.len());
    let again = reconcile::missing(store.as_ref(), warehouse.clone(), "csv/");
    assert_eq!(rt.block_on(again.objects.try_collect::<Vec<_>>()).unwrap(), vec![]);
}
