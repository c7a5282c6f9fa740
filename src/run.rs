//! `wau-ingest run`: the long-running service.
//!
//! One ingest loop (source → pipeline → commit → acknowledge), a periodic merge, a daily
//! reconcile and the HTTP endpoints. Shutdown is a future: when it resolves the loop stops
//! receiving, abandons the file it is reading (nothing of it is kept), commits the open
//! batch, acknowledges what that commit covered, releases the rest, interrupts a running
//! merge (its transaction rolls back; the next merge redoes it) and exits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use chrono::{DateTime, Duration as ChronoDuration, NaiveTime, Utc};
use futures::TryStreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{parse_hhmm, Config};
use crate::contract::Contract;
use crate::freshness::Freshness;
use crate::http;
use crate::metrics::Metrics;
use crate::object::{ObjectRef, ObjectStore};
use crate::pipeline::{IngestError, Pipeline};
use crate::reconcile;
use crate::source::{Delivery, NoAck, Source};
use crate::warehouse::Warehouse;

/// Everything `run` needs, built from the config by [`crate::Setup::parts`].
pub struct Parts {
    pub config: Config,
    pub contract: Arc<Contract>,
    pub store: Arc<dyn ObjectStore>,
    pub source: Box<dyn Source>,
    pub warehouse: Arc<dyn Warehouse>,
    pub metrics: Arc<Metrics>,
    /// Prefix the reconcile lists.
    pub reconcile_prefix: String,
    /// `merge.runner = "glue"`: the periodic merge starts this job instead of running the SQL.
    pub glue: Option<Arc<crate::glue::GlueRunner>>,
}

/// The next `hh:mm` UTC strictly after `now`.
pub fn next_daily(now: DateTime<Utc>, hh: u32, mm: u32) -> DateTime<Utc> {
    let at = NaiveTime::from_hms_opt(hh, mm, 0).expect("valid time");
    let today = now.date_naive().and_time(at).and_utc();
    if today > now {
        today
    } else {
        today + ChronoDuration::days(1)
    }
}

pub async fn run(parts: Parts, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let Parts { config, contract, store, source, warehouse, metrics, reconcile_prefix, glue } = parts;
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            shutdown.await;
            info!("shutdown requested: draining");
            cancel.cancel();
        });
    }

    warehouse.migrate().await?;
    // Per-customer freshness survives a restart and is the same on every task: it is read from
    // the ledger now and every `customer_refresh_secs`, and moved on by each commit.
    metrics.customer_limits(config.metrics.max_customer_series, config.metrics.customer_silence_window_secs);
    let freshness = Freshness {
        warehouse: warehouse.clone(),
        contract: contract.clone(),
        dialect: config.warehouse.kind.dialect(),
        metrics: metrics.clone(),
    };
    if let Err(e) = freshness.refresh().await {
        metrics.error("freshness");
        warn!(error = %e, "reading the customers' freshness failed; it is read again in {} s", config.metrics.customer_refresh_secs);
    }
    let freshness_task = freshness.spawn(Duration::from_secs(config.metrics.customer_refresh_secs), cancel.clone());

    // Set while a writer (or the receiver) waits out a backoff after a failure: /readyz then says why.
    let writers = config.batch.writers_for(config.warehouse.kind);
    let backing_off = Arc::new(BackingOff { slots: std::sync::Mutex::new(vec![None; writers + 1]) });
    // /readyz: the ingest loop is not backing off, the store answers, the warehouse takes a query.
    let ready: http::ReadyCheck = {
        let (store, warehouse, backing_off) = (store.clone(), warehouse.clone(), backing_off.clone());
        Arc::new(move || {
            let (store, w) = (store.clone(), warehouse.clone());
            let waiting = backing_off.first();
            Box::pin(async move {
                if let Some(reason) = waiting {
                    return Err(format!("backing off after a failure: {reason}"));
                }
                store.ping().await.map_err(|e| format!("store: {e}"))?;
                w.ping().await.map_err(|e| e.to_string())
            })
        })
    };
    let http_stop = CancellationToken::new();
    let http_task = {
        let stop = http_stop.clone();
        http::serve(&config.http.listen, metrics.clone(), ready, async move { stop.cancelled().await }).await?
    };

    let merge_task = spawn_merge_loop(&config, warehouse.clone(), glue, metrics.clone(), cancel.clone());
    let (reconcile_tx, reconcile_rx) = mpsc::channel::<ObjectRef>(1024);
    let reconcile_task = spawn_reconcile_loop(
        &config,
        store.clone(),
        warehouse.clone(),
        metrics.clone(),
        reconcile_prefix,
        reconcile_tx,
        cancel.clone(),
    );

    let mut pipelines = Vec::with_capacity(writers);
    for _ in 0..writers {
        pipelines.push(Pipeline::new(
            store.clone(),
            warehouse.clone(),
            contract.clone(),
            config.read_limits(),
            config.batch,
            metrics.clone(),
            cancel.clone(),
        )?);
    }
    info!(
        source = ?config.source.kind,
        warehouse = ?config.warehouse.kind,
        bucket = store.bucket(),
        writers,
        "wau-ingest running"
    );

    // One receiver hands deliveries to the writers; each writer takes what is waiting (up to a
    // receive's worth) as one group.
    let (tx, rx) = mpsc::channel::<Delivery>(GROUP);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let slots = backing_off;
    let dispatcher =
        tokio::spawn(dispatch(source, reconcile_rx, tx, slots.clone(), writers, metrics.clone(), cancel.clone()));
    let mut workers: futures::stream::FuturesUnordered<_> = pipelines
        .into_iter()
        .enumerate()
        .map(|(i, p)| tokio::spawn(write_loop(i, p, rx.clone(), slots.clone(), metrics.clone(), cancel.clone())))
        .collect();
    let mut stopped_by: Option<anyhow::Error> = None;
    // In the order they end: a writer that panics (a bug in a sink, which now runs in the
    // writer's task) stops the others at once.
    while let Some(end) = futures::StreamExt::next(&mut workers).await {
        let end = end.unwrap_or_else(|e| Err(anyhow::anyhow!("a writer panicked: {e}")));
        if let Err(e) = end {
            cancel.cancel();
            stopped_by.get_or_insert(e);
        }
    }
    // Every writer has committed what it could: what is still queued goes back.
    cancel.cancel();
    let mut source = dispatcher.await.expect("the receiver does not panic");
    while let Ok(d) = rx.lock().await.try_recv() {
        d.ack.release().await;
    }
    source.close().await;
    reconcile_task.abort();
    freshness_task.abort();
    let _ = merge_task.await;
    http_stop.cancel();
    let _ = http_task.await;
    info!("stopped");
    match stopped_by {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Deliveries a writer takes at once: one SQS receive's worth.
const GROUP: usize = 10;

/// Why the service is backing off, per writer (and the receiver, last): `/readyz` reports the
/// first.
struct BackingOff {
    slots: std::sync::Mutex<Vec<Option<String>>>,
}

impl BackingOff {
    fn set(&self, slot: usize, reason: Option<String>) {
        self.slots.lock().expect("readiness lock")[slot] = reason;
    }

    fn first(&self) -> Option<String> {
        self.slots.lock().expect("readiness lock").iter().flatten().next().cloned()
    }
}

fn backoff_policy() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
}

/// Receives from the source (and the reconcile) and queues deliveries for the writers; returns
/// the source at shutdown. A delivery is only taken from the source once the queue has room, so
/// shutdown never drops one.
async fn dispatch(
    mut source: Box<dyn Source>,
    mut reconcile_rx: mpsc::Receiver<ObjectRef>,
    tx: mpsc::Sender<Delivery>,
    slots: Arc<BackingOff>,
    slot: usize,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Box<dyn Source> {
    let mut backoff = backoff_policy().build();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = tx.reserve() => match p { Ok(p) => p, Err(_) => break },
        };
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(obj) = reconcile_rx.recv() => Ok(Delivery { objects: vec![obj], ack: Box::new(NoAck) }),
            next = source.next() => next,
        };
        match next {
            Ok(d) => {
                permit.send(d);
                backoff = backoff_policy().build();
            }
            Err(e) => {
                drop(permit);
                metrics.error("source_receive");
                metrics.retry("source_receive");
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "source failed; backing off");
                slots.set(slot, Some(e.to_string()));
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                slots.set(slot, None);
            }
        }
    }
    source
}

/// What a writer waits for: the queued deliveries, up to [`GROUP`]. Cancel-safe: once a
/// delivery is received the rest is taken without waiting.
async fn next_group(rx: &tokio::sync::Mutex<mpsc::Receiver<Delivery>>) -> Option<Vec<Delivery>> {
    let mut rx = rx.lock().await;
    let mut group = vec![rx.recv().await?];
    while group.len() < GROUP {
        match rx.try_recv() {
            Ok(d) => group.push(d),
            Err(_) => break,
        }
    }
    Some(group)
}

/// One writer: deliveries → its pipeline → commit → acknowledge, until shutdown; then it
/// commits what is complete (and its commit in flight), acknowledges it and releases the rest.
async fn write_loop(
    slot: usize,
    mut pipeline: Pipeline,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Delivery>>>,
    slots: Arc<BackingOff>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = backoff_policy().build();
    let mut stopped_by: Option<anyhow::Error> = None;
    loop {
        let deadline = pipeline.flush_deadline();
        let commit_ended = pipeline.commit_ended();
        let step: Result<(), IngestError> = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            // A commit in flight that has ended is counted and acknowledged at once.
            _ = async { commit_ended.as_ref().expect("guarded").cancelled().await }, if commit_ended.is_some() => {
                pipeline.settle().await.map(|_| ())
            }
            _ = async { tokio::time::sleep_until(deadline.expect("guarded").into()).await }, if deadline.is_some() => {
                pipeline.commit_open().await.map(|_| ())
            }
            group = next_group(&rx) => match group {
                Some(g) => pipeline.handle_all(g, false).await,
                None => break,
            },
        };
        match step {
            Ok(()) => backoff = backoff_policy().build(),
            Err(IngestError::Shutdown) => break,
            Err(IngestError::Warehouse(e)) if !e.class().retryable() => {
                // A missing table, a wrong database, denied credentials, data the warehouse
                // refuses: no retry changes it. Stop (exit non-zero) with the reason, after the
                // drain below gives every delivery back.
                error!(error = %e, class = e.class().as_str(), "the warehouse refuses the service; stopping");
                stopped_by = Some(anyhow::anyhow!("stopped: the warehouse failed ({}): {e}", e.class().as_str()));
                cancel.cancel();
                break;
            }
            Err(e) if !pipeline.writer_alive() => {
                // A panic in the writer is a bug, not weather: stop (exit non-zero) so the
                // orchestrator restarts a clean process; nothing uncommitted was acknowledged.
                cancel.cancel();
                anyhow::bail!("the warehouse writer stopped: {e}");
            }
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                error!(error = %e, retry_in_ms = delay.as_millis() as u64, "ingest step failed; backing off");
                slots.set(slot, Some(e.to_string()));
                metrics.retry(if matches!(e, IngestError::Retry { .. }) {
                    "source_receive"
                } else {
                    "warehouse_commit"
                });
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                // Waiting is over: the next attempt says again whether it failed.
                slots.set(slot, None);
            }
        }
    }

    // Drain: commit what is complete (and the commit in flight), acknowledge it, release the rest.
    match pipeline.flush().await {
        Ok(Some(r)) => info!(batch_id = r.batch_id, files = r.files, "final batch committed"),
        Ok(None) => {}
        Err(e) => error!(error = %e, "final commit failed; its files will be delivered again"),
    }
    match stopped_by {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Runs the merge every `interval_secs`; shutdown interrupts a merge in progress (it rolls back).
fn spawn_merge_loop(
    config: &Config,
    warehouse: Arc<dyn Warehouse>,
    glue: Option<Arc<crate::glue::GlueRunner>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let interval = config.merge.interval_secs;
    tokio::spawn(async move {
        if interval == 0 {
            return;
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(interval)) => {}
            }
            if let Some(glue) = &glue {
                // The job runs on Glue: shutdown does not stop it, it ends on its own.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = glue_merge_once(glue, &metrics) => {}
                }
                continue;
            }
            // A merge is one transaction: stopped halfway by shutdown it rolls back, and the
            // next run redoes it. Shutdown does not wait for a long merge.
            let interrupter = {
                let (w, cancel) = (warehouse.clone(), cancel.clone());
                tokio::spawn(async move {
                    cancel.cancelled().await;
                    w.interrupt_merge().await;
                })
            };
            merge_once(warehouse.clone(), &metrics).await;
            interrupter.abort();
        }
    })
}

/// One merge with its metrics and log line (the warehouse itself times its statements).
pub async fn merge_once(warehouse: Arc<dyn Warehouse>, metrics: &Metrics) -> Option<crate::warehouse::MergeReport> {
    match warehouse.merge().await {
        Ok(r) => {
            metrics.merged(r.rows_deleted, r.rows_inserted, &r.event_times);
            if r.files > 0 || r.rows_deleted > 0 {
                info!(files = r.files, rows_deleted = r.rows_deleted, rows_inserted = r.rows_inserted, "merged");
            }
            Some(r)
        }
        Err(e) => {
            metrics.merge_outcome("failure");
            metrics.error("merge");
            error!(error = %e, "merge failed; the next run retries it");
            None
        }
    }
}

/// One merge as a Glue job run, with its metrics and log line; true when it succeeded.
pub async fn glue_merge_once(glue: &crate::glue::GlueRunner, metrics: &Metrics) -> bool {
    use crate::glue::GlueOutcome;
    let started = std::time::Instant::now();
    match glue.run().await {
        Ok(GlueOutcome::Succeeded { run_id }) => {
            metrics.statement("merge", started.elapsed().as_secs_f64());
            metrics.merged(0, 0, &[]);
            info!(run_id = %run_id, seconds = started.elapsed().as_secs(), "merge job succeeded");
            true
        }
        Ok(GlueOutcome::AlreadyRunning) => {
            metrics.merge_outcome("already_running");
            false
        }
        Ok(other) => {
            metrics.merge_outcome("failure");
            metrics.error("merge");
            error!(outcome = ?other, "merge job did not succeed; the next run retries it");
            false
        }
        Err(e) => {
            metrics.merge_outcome("failure");
            metrics.error("merge");
            error!(error = %e, "starting or watching the merge job failed");
            false
        }
    }
}

/// Daily at `schedule_utc`: list the store, hand what the ledger lacks to the ingest loop.
fn spawn_reconcile_loop(
    config: &Config,
    store: Arc<dyn ObjectStore>,
    warehouse: Arc<dyn Warehouse>,
    metrics: Arc<Metrics>,
    prefix: String,
    tx: mpsc::Sender<ObjectRef>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let schedule = (!config.reconcile.schedule_utc.is_empty())
        .then(|| parse_hhmm(&config.reconcile.schedule_utc).expect("checked"));
    tokio::spawn(async move {
        use crate::reconcile::ReconcileOutcome::{Failed, Listed};
        let Some((hh, mm)) = schedule else { return };
        loop {
            let at = next_daily(Utc::now(), hh, mm);
            let wait = (at - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let started = Utc::now();
            let mut found = reconcile::missing(store.as_ref(), warehouse.clone(), &prefix);
            let mut handed = 0u64;
            let ended = loop {
                match found.objects.try_next().await {
                    Ok(Some(o)) => {
                        // The ingest loop's channel is bounded: the join waits for it.
                        if tx.send(o).await.is_err() {
                            return;
                        }
                        handed += 1;
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            let counts = *found.counts.lock().expect("counts lock");
            match ended {
                Ok(()) => {
                    info!(
                        missing = counts.missing,
                        listed = counts.listed,
                        ledger_rows = counts.ledger_rows,
                        ledger_out_of_order = counts.ledger_out_of_order,
                        listing_out_of_order = counts.listing_out_of_order,
                        "reconcile listed the store"
                    );
                    metrics.reconciled(handed);
                    crate::reconcile::record(warehouse.clone(), started, Listed, [handed, 0, 0, 0], None).await;
                }
                Err(e) => {
                    metrics.error("reconcile");
                    error!(error = %e, handed, "reconcile failed; it runs again tomorrow");
                    let error = Some(e.to_string());
                    crate::reconcile::record(warehouse.clone(), started, Failed, [handed, 0, 0, 0], error).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_daily_is_strictly_in_the_future() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(next_daily(t("2026-11-27T05:00:00Z"), 0, 0), t("2026-11-28T00:00:00Z"));
        assert_eq!(next_daily(t("2026-11-27T00:00:00Z"), 0, 0), t("2026-11-28T00:00:00Z"));
        assert_eq!(next_daily(t("2026-11-27T05:00:00Z"), 6, 30), t("2026-11-27T06:30:00Z"));
    }
}
