//! `replay` and `reconcile`: the store's listing fed through the same pipeline.
//!
//! Both are safe to run at any time, also beside `run`: the ledger turns every version it
//! already holds into a duplicate, so a replay loads only what is missing (or, with
//! `--force`, loads versions again and replaces their earlier rows).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use globset::GlobMatcher;
use indicatif::{ProgressBar, ProgressStyle};

use crate::object::{ObjectRef, ObjectStore, StoreError};
use crate::pipeline::{IngestError, Pipeline, Tally};
use crate::source::{Delivery, NoAck};
use crate::warehouse::Warehouse;

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

/// Lists `prefix` and keeps what the filter keeps.
pub async fn list(store: &dyn ObjectStore, prefix: &str, filter: &Filter) -> Result<Vec<ObjectRef>, StoreError> {
    Ok(store.list(prefix).await?.into_iter().filter(|o| filter.keeps(o)).collect())
}

/// Objects in the listing whose (key, sequencer) the ledger has never recorded.
pub async fn missing(
    store: &dyn ObjectStore,
    warehouse: Arc<dyn Warehouse>,
    prefix: &str,
) -> Result<Vec<ObjectRef>, Box<dyn std::error::Error + Send + Sync>> {
    let listed = store.list(prefix).await?;
    let bucket = store.bucket().to_string();
    let recorded = tokio::task::spawn_blocking(move || warehouse.recorded_sequencers(&bucket)).await??;
    Ok(listed
        .into_iter()
        .filter(|o| !recorded.contains(&(o.key.clone(), o.sequencer.clone().unwrap_or_default())))
        .collect())
}

fn progress(n: usize) -> ProgressBar {
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} files {msg}")
            .expect("valid template"),
    );
    bar
}

/// Ingests `objects` in listing order through `pipeline`, committing per the batch policy
/// and once at the end. Files that fail transiently are counted as retried, not lost:
/// a later replay or reconcile picks them up.
pub async fn ingest_all(pipeline: &mut Pipeline, objects: Vec<ObjectRef>, force: bool) -> Result<Tally, IngestError> {
    let bar = progress(objects.len());
    for obj in objects {
        bar.set_message(obj.key.clone());
        pipeline.handle(Delivery { objects: vec![obj], ack: Box::new(NoAck) }, force).await?;
        bar.inc(1);
    }
    pipeline.flush().await?;
    bar.finish_and_clear();
    Ok(pipeline.tally.clone())
}

/// One-shot ingest of `objects` with the config's limits and batch policy (replay, reconcile,
/// demo): its own pipeline, writer and metrics.
pub async fn ingest_objects(
    config: &crate::config::Config,
    store: Arc<dyn ObjectStore>,
    warehouse: Arc<dyn Warehouse>,
    contract: Arc<crate::contract::Contract>,
    objects: Vec<ObjectRef>,
    force: bool,
) -> Result<Tally, IngestError> {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let mut pipeline =
        Pipeline::new(store, warehouse, contract, config.read_limits(), config.batch, metrics, Default::default())?;
    ingest_all(&mut pipeline, objects, force).await
}

/// What a replay would do, without loading anything: (new, already in the ledger).
pub async fn dry_run(
    store: &dyn ObjectStore,
    warehouse: Arc<dyn Warehouse>,
    objects: &[ObjectRef],
) -> Result<(Vec<String>, Vec<String>), Box<dyn std::error::Error + Send + Sync>> {
    let (mut new, mut known) = (Vec::new(), Vec::new());
    for o in objects {
        // As the pipeline does: a local file recorded with the same stamp is not hashed again.
        if let (true, Some(seq), Some(size)) = (store.version_costs_a_read(), &o.sequencer, o.size) {
            let (w, b, k, q) = (warehouse.clone(), store.bucket().to_string(), o.key.clone(), seq.clone());
            if tokio::task::spawn_blocking(move || w.lookup_stamp(&b, &k, &q, size)).await??.is_some() {
                known.push(o.key.clone());
                continue;
            }
        }
        let r = match store.resolve(o).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let (w, b) = (warehouse.clone(), store.bucket().to_string());
        let status = tokio::task::spawn_blocking(move || w.lookup(&b, &r.key, &r.version)).await??;
        if status.is_some() {
            known.push(o.key.clone());
        } else {
            new.push(o.key.clone());
        }
    }
    Ok((new, known))
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
