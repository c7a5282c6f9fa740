//! `replay` and `reconcile`: the store's listing fed through the same pipeline as it streams
//! (a page at a time; reconcile's merge-join with the ledger is in `reconcile`).
//!
//! Both are safe to run at any time, also beside `run`: the ledger turns every version it
//! already holds into a duplicate, so a replay loads only what is missing (or, with
//! `--force`, loads versions again and replaces their earlier rows).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use globset::GlobMatcher;
use indicatif::{ProgressBar, ProgressStyle};

use crate::object::{ObjectRef, ObjectStore, StoreError};
use crate::pipeline::{IngestError, Pipeline, Tally};
use crate::source::{Delivery, NoAck};
use crate::warehouse::{Warehouse, WarehouseError};

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub glob: Option<GlobMatcher>,
}

impl Filter {
    pub fn keeps(&self, o: &ObjectRef) -> bool {
        let t = o.event_time;
        self.since.is_none_or(|s| t.is_some_and(|t| t >= s))
            && self.until.is_none_or(|u| t.is_some_and(|t| t < u))
            && self.glob.as_ref().is_none_or(|g| g.is_match(&o.key))
    }
}

/// Why a replay or reconcile stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("listing the store: {0}")]
    List(#[from] StoreError),
    #[error("reading the ledger: {0}")]
    Ledger(#[from] WarehouseError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// Objects as replay and reconcile feed them to the pipeline: a stream, in listing order.
pub type Objects = BoxStream<'static, Result<ObjectRef, ReplayError>>;

/// The objects under `prefix` the filter keeps, streamed from the store's listing pages.
pub fn list(store: &dyn ObjectStore, prefix: &str, filter: &Filter) -> Objects {
    let filter = filter.clone();
    store
        .list_pages(prefix)
        .map_ok(|page| futures::stream::iter(page.into_iter().map(Ok::<_, StoreError>)))
        .try_flatten()
        .try_filter(move |o| futures::future::ready(filter.keeps(o)))
        .map_err(ReplayError::from)
        .boxed()
}

/// A spinner with the count: a streamed listing has no total.
fn progress() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} files {msg}").expect("valid template"),
    );
    bar
}

/// Ingests `objects` as they come through `pipeline`, committing per the batch policy and once
/// at the end. Files that fail transiently are counted as retried, not lost: a later replay or
/// reconcile picks them up. If the stream fails (the listing or the ledger), what was ingested
/// before is committed and the stream's error returned.
pub async fn ingest_stream<E>(
    pipeline: &mut Pipeline,
    objects: impl Stream<Item = Result<ObjectRef, E>> + Unpin,
    force: bool,
) -> Result<Tally, E>
where
    E: From<IngestError>,
{
    let bar = progress();
    let mut failed = None;
    // What the listing has ready, up to a receive's worth, goes in as one group: its versions
    // are asked about in one ledger round trip (`Pipeline::handle_all`).
    let mut groups = objects.ready_chunks(GROUP);
    while let Some(group) = groups.next().await {
        let mut deliveries = Vec::with_capacity(group.len());
        for next in group {
            match next {
                Ok(obj) => deliveries.push(Delivery { objects: vec![obj], ack: Box::new(NoAck) }),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(last) = deliveries.last() {
            bar.set_message(last.objects[0].key.clone());
        }
        let n = deliveries.len() as u64;
        pipeline.handle_all(deliveries, force).await?;
        bar.inc(n);
        if failed.is_some() {
            break;
        }
    }
    pipeline.flush().await?;
    bar.finish_and_clear();
    match failed {
        Some(e) => Err(e),
        None => Ok(pipeline.tally.clone()),
    }
}

/// Objects taken into one group by [`ingest_stream`]: one SQS receive's worth, as `run` takes.
const GROUP: usize = 10;

/// [`ingest_stream`] of objects already in hand.
pub async fn ingest_all(pipeline: &mut Pipeline, objects: Vec<ObjectRef>, force: bool) -> Result<Tally, IngestError> {
    ingest_stream(pipeline, futures::stream::iter(objects.into_iter().map(Ok)), force).await
}

fn one_shot_pipeline(
    config: &crate::config::Config,
    store: Arc<dyn ObjectStore>,
    warehouse: Arc<dyn Warehouse>,
    contract: Arc<crate::contract::Contract>,
) -> Result<Pipeline, IngestError> {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    Ok(Pipeline::new(store, warehouse, contract, config.read_limits(), config.batch, metrics, Default::default())?)
}

/// One-shot ingest of a stream of objects (replay, reconcile) with the config's limits and
/// batch policy: its own pipeline, writer and metrics.
pub async fn ingest_listed(
    config: &crate::config::Config,
    store: Arc<dyn ObjectStore>,
    warehouse: Arc<dyn Warehouse>,
    contract: Arc<crate::contract::Contract>,
    objects: Objects,
    force: bool,
) -> Result<Tally, ReplayError> {
    let mut pipeline = one_shot_pipeline(config, store, warehouse, contract)?;
    ingest_stream(&mut pipeline, objects, force).await
}

/// One-shot ingest of `objects` in hand (demo, tests), as [`ingest_listed`].
pub async fn ingest_objects(
    config: &crate::config::Config,
    store: Arc<dyn ObjectStore>,
    warehouse: Arc<dyn Warehouse>,
    contract: Arc<crate::contract::Contract>,
    objects: Vec<ObjectRef>,
    force: bool,
) -> Result<Tally, IngestError> {
    let mut pipeline = one_shot_pipeline(config, store, warehouse, contract)?;
    ingest_all(&mut pipeline, objects, force).await
}

/// What a dry run found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DryRun {
    pub listed: u64,
    pub new: u64,
    pub known: u64,
}

/// What a replay would do, without loading anything; `on_new` hears each key it would load.
pub async fn dry_run(
    store: &dyn ObjectStore,
    warehouse: Arc<dyn Warehouse>,
    mut objects: Objects,
    mut on_new: impl FnMut(&str),
) -> Result<DryRun, ReplayError> {
    let mut out = DryRun::default();
    while let Some(o) = objects.try_next().await? {
        out.listed += 1;
        // As the pipeline does: a local file recorded with the same stamp is not hashed again.
        if let (true, Some(seq), Some(size)) = (store.version_costs_a_read(), &o.sequencer, o.size) {
            if warehouse.lookup_stamp(store.bucket(), &o.key, seq, size).await?.is_some() {
                out.known += 1;
                continue;
            }
        }
        let r = match store.resolve(&o).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let status = warehouse.lookup(store.bucket(), &r.key, &r.version).await?;
        if status.is_some() {
            out.known += 1;
        } else {
            out.new += 1;
            on_new(&o.key);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, t: &str) -> ObjectRef {
        ObjectRef {
            key: key.into(),
            version: None,
            sequencer: None,
            size: None,
            event_time: Some(DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)),
        }
    }

    #[test]
    fn filter_by_time_window_and_glob() {
        let f = Filter {
            since: Some(DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z").unwrap().with_timezone(&Utc)),
            until: Some(DateTime::parse_from_rfc3339("2026-11-08T00:00:00Z").unwrap().with_timezone(&Utc)),
            glob: Some(globset::Glob::new("csv/acme/**").unwrap().compile_matcher()),
        };
        assert!(f.keeps(&obj("csv/acme/a.csv", "2026-11-01T00:00:00Z")));
        assert!(!f.keeps(&obj("csv/acme/a.csv", "2026-11-08T00:00:00Z")));
        assert!(!f.keeps(&obj("csv/acme/a.csv", "2026-10-31T23:59:59Z")));
        assert!(!f.keeps(&obj("csv/globex/a.csv", "2026-11-02T00:00:00Z")));
        assert!(Filter::default().keeps(&obj("x", "2026-11-02T00:00:00Z")));
    }
}
