//! An SQS queue fed by S3 event notifications (the production source).
//!
//! - `concurrency` pollers long-poll the queue (up to 10 messages per receive, `wait_time_secs`)
//!   and hand each message on as one [`Delivery`] naming every object its records created.
//! - Every received message gets a visibility heartbeat: before half the timeout has passed it
//!   is extended again, for at most 12 hours after receipt (SQS's own cap).
//! - `ack` (after the pipeline committed every object of the message) queues the receipt
//!   for a `DeleteMessageBatch`; failed entries are retried, and an entry SQS refuses for good
//!   (its receipt expired) only means the message comes back and the ledger calls it a duplicate.
//! - `release` (a transient failure) retries the delivery in-process a few times first (see
//!   [`retry_delay`]); after that, and at shutdown, the visibility is set to 0 so another
//!   consumer takes the message now.
//! - `s3:TestEvent` and messages whose records are all non-creations, or about keys outside
//!   `source.prefix` (the warehouse's staging files in the same bucket), are deleted and counted.
//! - A message this service cannot read is never deleted: it is counted (`dlq_bound`), its
//!   heartbeat stops, and the queue's redrive policy moves it to the DLQ after
//!   `maxReceiveCount` receives. A readable message given back (after its local retries) at
//!   its last allowed receive is counted `dlq_bound` too: the DLQ is where it goes next.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use aws_sdk_sqs::Client;
use backon::BackoffBuilder;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{Ack, Delivery, Source, SourceError};
use crate::event::{parse_body, Notification, S3ObjectEvent};
use crate::metrics::Metrics;
use crate::object::{normalise_sequencer, ObjectRef};

/// SQS's cap on how long a received message can stay invisible, counted from its receipt.
const MAX_INVISIBLE: Duration = Duration::from_secs(12 * 3600);
const MAX_BATCH: usize = 10;

#[derive(Debug, Clone)]
pub struct SqsSettings {
    pub queue_url: String,
    /// Accept only records about this bucket (None: any; access points are named differently
    /// in events than in requests).
    pub bucket: Option<String>,
    /// Records about keys outside this prefix (the warehouse's own staging files, say) are
    /// not ours: acknowledged and counted, never read.
    pub prefix: String,
    pub concurrency: usize,
    pub visibility: Duration,
    pub wait_time_secs: i32,
    /// The queue's redrive `maxReceiveCount`, when it has one: a message given back at its
    /// last allowed receive goes to the DLQ, which is counted and logged as `dlq_bound`.
    pub max_receives: Option<u32>,
}

struct Shared {
    client: Client,
    settings: SqsSettings,
    metrics: Arc<Metrics>,
    deletes: mpsc::UnboundedSender<DeleteCmd>,
    /// Where locally retried deliveries go back in.
    requeue: mpsc::Sender<Delivery>,
    retries: TaskTracker,
    stop: CancellationToken,
}

enum DeleteCmd {
    Delete(String),
    /// Everything queued before this is done.
    Flush(oneshot::Sender<()>),
}

pub struct SqsSource {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Delivery>,
    pollers: Vec<JoinHandle<()>>,
    deleter: Option<JoinHandle<()>>,
}

fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(20))
        .with_jitter()
        .without_max_times()
        .build()
}

fn describe<E: std::error::Error + 'static>(e: &E) -> String {
    // The SDK's Display is terse ("service error"); DisplayErrorContext walks the sources.
    aws_sdk_sqs::error::DisplayErrorContext(e).to_string()
}

impl SqsSource {
    pub fn start(client: Client, settings: SqsSettings, metrics: Arc<Metrics>) -> SqsSource {
        let (delete_tx, delete_rx) = mpsc::unbounded_channel();
        // Room for one receive per poller beyond what the pipeline holds: every waiting message
        // has its heartbeat, so waiting here costs nothing but memory.
        let (tx, rx) = mpsc::channel(MAX_BATCH * settings.concurrency);
        let stop = CancellationToken::new();
        let concurrency = settings.concurrency;
        let shared = Arc::new(Shared {
            client,
            settings,
            metrics,
            deletes: delete_tx,
            requeue: tx.clone(),
            retries: TaskTracker::new(),
            stop: stop.clone(),
        });
        let pollers = (0..concurrency).map(|_| tokio::spawn(poll(shared.clone(), tx.clone(), stop.clone()))).collect();
        let deleter = Some(tokio::spawn(delete_loop(shared.clone(), delete_rx)));
        SqsSource { shared, rx, pollers, deleter }
    }
}

async fn poll(shared: Arc<Shared>, tx: mpsc::Sender<Delivery>, stop: CancellationToken) {
    let s = &shared.settings;
    let mut delays = backoff();
    loop {
        let receive = shared
            .client
            .receive_message()
            .queue_url(&s.queue_url)
            .max_number_of_messages(MAX_BATCH as i32)
            .wait_time_seconds(s.wait_time_secs)
            .visibility_timeout(s.visibility.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send();
        let resp = tokio::select! {
            _ = stop.cancelled() => return,
            r = receive => r,
        };
        let messages = match resp {
            Ok(r) => {
                delays = backoff();
                r.messages.unwrap_or_default()
            }
            Err(e) => {
                shared.metrics.error("source_receive");
                shared.metrics.retry("source_receive");
                let delay = delays.next().unwrap_or(Duration::from_secs(20));
                warn!(error = %describe(&e), retry_in_ms = delay.as_millis() as u64, "sqs receive failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        shared.metrics.sqs("received", messages.len() as u64);
        for m in messages {
            if let Some(d) = accept(&shared, m).await {
                // Waiting for room must not outlive shutdown: close() waits for the pollers.
                let permit = tokio::select! {
                    _ = stop.cancelled() => None,
                    p = tx.reserve() => p.ok(),
                };
                match permit {
                    Some(p) => p.send(d),
                    None => d.ack.release().await, // shutting down: give it back
                }
            }
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

/// The queue's redrive `maxReceiveCount`, or None without a redrive policy (or when it cannot
/// be read: then only unreadable messages are counted as bound for the DLQ).
pub async fn max_receive_count(client: &Client, queue_url: &str) -> Option<u32> {
    let attrs = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| warn!(error = %describe(&e), "cannot read the queue's redrive policy"))
        .ok()?
        .attributes?;
    parse_max_receive_count(attrs.get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)?)
}

/// `maxReceiveCount` from a RedrivePolicy JSON (SQS writes it as a number or a string).
pub fn parse_max_receive_count(policy: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(policy).ok()?;
    match &v["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The DLQ's ARN (`deadLetterTargetArn`) from a RedrivePolicy JSON.
pub fn parse_dead_letter_target(policy: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(policy).ok()?;
    v["deadLetterTargetArn"].as_str().map(str::to_string)
}

/// Turns one message into a delivery, or settles it here (deleted, or left for the DLQ).
async fn accept(shared: &Arc<Shared>, m: Message) -> Option<Delivery> {
    let receipt = m.receipt_handle.clone()?;
    let id = m.message_id.clone().unwrap_or_default();
    let receives = m
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .cloned()
        .unwrap_or_default();
    let receive_count: u32 = receives.parse().unwrap_or(0);
    let body = m.body.as_deref().unwrap_or("");
    let parsed = parse_body(body).map_err(|e| e.to_string()).and_then(|n| match n {
        Notification::Objects { created, ignored } => {
            if let Some(bucket) = &shared.settings.bucket {
                if let Some(other) = created.iter().find(|o| &o.bucket != bucket) {
                    return Err(format!("record about bucket {:?}, not the configured {bucket:?}", other.bucket));
                }
            }
            let (ours, foreign): (Vec<S3ObjectEvent>, Vec<S3ObjectEvent>) =
                created.into_iter().partition(|o| o.key.starts_with(&shared.settings.prefix));
            Ok((ours, ignored + foreign.len()))
        }
        Notification::TestEvent => Ok((Vec::new(), 0)),
    });
    match parsed {
        Err(reason) => {
            shared.metrics.sqs("dlq_bound", 1);
            warn!(message_id = %id, receives = %receives, %reason, "unreadable message left for the queue's redrive policy (DLQ)");
            None
        }
        Ok((created, ignored)) if created.is_empty() => {
            debug!(message_id = %id, ignored, "test event, or no creations under the prefix: deleting");
            shared.metrics.sqs("discarded", 1);
            let _ = shared.deletes.send(DeleteCmd::Delete(receipt));
            None
        }
        Ok((created, _)) => {
            let heartbeat = tokio::spawn(heartbeat(shared.clone(), receipt.clone(), Instant::now()));
            let objects: Vec<ObjectRef> = created.into_iter().map(object_ref).collect();
            let ack = SqsAck {
                shared: shared.clone(),
                receipt,
                heartbeat,
                objects: objects.clone(),
                attempt: 0,
                receive_count,
            };
            Some(Delivery { objects, ack: Box::new(ack) })
        }
    }
}

pub fn object_ref(e: S3ObjectEvent) -> ObjectRef {
    ObjectRef {
        key: e.key,
        version: e.version_id.filter(|v| !v.is_empty() && v != "null"),
        sequencer: e.sequencer.map(|s| normalise_sequencer(&s)),
        size: e.size,
        event_time: e.event_time,
    }
}

/// The next visibility extension: (wait before it, timeout to set), or None past the 12 h cap.
pub fn next_extension(visibility: Duration, since_receipt: Duration) -> Option<(Duration, Duration)> {
    let left = MAX_INVISIBLE.checked_sub(since_receipt)?;
    if left < Duration::from_secs(1) {
        return None;
    }
    Some((visibility / 2, visibility.min(left)))
}

async fn heartbeat(shared: Arc<Shared>, receipt: String, received: Instant) {
    let mut wait = shared.settings.visibility / 2;
    loop {
        tokio::time::sleep(wait).await;
        let Some((next_wait, timeout)) = next_extension(shared.settings.visibility, received.elapsed()) else {
            warn!("message in flight for 12 hours: SQS allows no longer; it will be delivered again");
            return;
        };
        let res = shared
            .client
            .change_message_visibility()
            .queue_url(&shared.settings.queue_url)
            .receipt_handle(&receipt)
            .visibility_timeout(timeout.as_secs().max(1) as i32)
            .send()
            .await;
        wait = match res {
            Ok(_) => next_wait,
            Err(e) => {
                shared.metrics.error("sqs_visibility");
                warn!(error = %describe(&e), "extending a message's visibility failed; trying again");
                (next_wait / 4).max(Duration::from_millis(200))
            }
        };
    }
}

struct SqsAck {
    shared: Arc<Shared>,
    receipt: String,
    heartbeat: JoinHandle<()>,
    objects: Vec<ObjectRef>,
    /// Local retries so far (see [`retry_delay`]).
    attempt: u32,
    /// SQS's ApproximateReceiveCount when this process received it.
    receive_count: u32,
}

/// A delivery given back for a transient failure (the store or warehouse unreachable) is
/// retried here first, its heartbeat still running, after 1, 2, 4 … 32 s: re-receiving it from
/// the queue would count towards `maxReceiveCount` and could send a good message to the DLQ
/// during a short outage. After that the message goes back to the queue.
pub fn retry_delay(attempt: u32) -> Option<Duration> {
    (attempt < LOCAL_RETRIES).then(|| Duration::from_secs(1 << attempt))
}
const LOCAL_RETRIES: u32 = 6;

impl SqsAck {
    async fn release_now(self) {
        self.heartbeat.abort();
        let last = self.shared.settings.max_receives.is_some_and(|m| self.receive_count >= m);
        if last && !self.shared.stop.is_cancelled() {
            self.shared.metrics.sqs("dlq_bound", 1);
            let keys: Vec<&str> = self.objects.iter().map(|o| o.key.as_str()).collect();
            warn!(
                ?keys,
                receives = self.receive_count,
                "message failed at its last allowed receive: SQS moves it to the DLQ"
            );
        }
        release(&self.shared, &self.receipt).await;
    }
}

#[async_trait::async_trait]
impl Ack for SqsAck {
    async fn ack(self: Box<Self>) {
        self.heartbeat.abort();
        let _ = self.shared.deletes.send(DeleteCmd::Delete(self.receipt));
    }

    async fn release(self: Box<Self>) {
        let shared = self.shared.clone();
        let delay = retry_delay(self.attempt);
        let (Some(delay), false, false) = (delay, shared.stop.is_cancelled(), shared.requeue.is_closed()) else {
            return self.release_now().await;
        };
        let tracker = shared.retries.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = shared.stop.cancelled() => self.release_now().await,
                _ = tokio::time::sleep(delay) => {
                    let permit = tokio::select! {
                        _ = shared.stop.cancelled() => None,
                        p = shared.requeue.reserve() => p.ok(),
                    };
                    match permit {
                        Some(p) => {
                            let ack = SqsAck { attempt: self.attempt + 1, ..*self };
                            p.send(Delivery { objects: ack.objects.clone(), ack: Box::new(ack) });
                        }
                        None => self.release_now().await,
                    }
                }
            }
        });
    }
}

async fn release(shared: &Shared, receipt: &str) {
    let res = shared
        .client
        .change_message_visibility()
        .queue_url(&shared.settings.queue_url)
        .receipt_handle(receipt)
        .visibility_timeout(0)
        .send()
        .await;
    match res {
        Ok(_) => shared.metrics.sqs("released", 1),
        // Not fatal: the message comes back when its visibility timeout ends.
        Err(e) => {
            shared.metrics.error("sqs_visibility");
            warn!(error = %describe(&e), "releasing a message failed; it returns when its visibility ends")
        }
    }
}

/// Deletes acknowledged messages in batches of up to 10, retrying failed entries.
async fn delete_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<DeleteCmd>) {
    let mut pending: Vec<String> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(cmd) = rx.recv().await {
        let mut push = |cmd| match cmd {
            DeleteCmd::Delete(r) => pending.push(r),
            DeleteCmd::Flush(done) => flushes.push(done),
        };
        push(cmd);
        while let Ok(cmd) = rx.try_recv() {
            push(cmd);
        }
        for chunk in std::mem::take(&mut pending).chunks(MAX_BATCH) {
            delete_batch(&shared, chunk).await;
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn delete_batch(shared: &Shared, receipts: &[String]) {
    let mut left: HashMap<String, &String> = receipts.iter().enumerate().map(|(i, r)| (i.to_string(), r)).collect();
    let mut delays = backoff();
    for attempt in 1..=6 {
        let entries = left
            .iter()
            .map(|(id, r)| {
                DeleteMessageBatchRequestEntry::builder().id(id).receipt_handle(*r).build().expect("id and handle set")
            })
            .collect::<Vec<_>>();
        match shared
            .client
            .delete_message_batch()
            .queue_url(&shared.settings.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                for ok in out.successful() {
                    left.remove(ok.id());
                    shared.metrics.sqs("deleted", 1);
                }
                for f in out.failed() {
                    if f.sender_fault() {
                        // E.g. ReceiptHandleIsInvalid: the receipt expired and the message will be
                        // received again; the ledger turns it into a duplicate then.
                        warn!(
                            code = f.code(),
                            message = f.message().unwrap_or(""),
                            "sqs refused a delete; the message will come back as a duplicate"
                        );
                        shared.metrics.error("sqs_delete");
                        left.remove(f.id());
                    }
                }
            }
            Err(e) => {
                shared.metrics.error("sqs_delete");
                warn!(error = %describe(&e), attempt, "DeleteMessageBatch failed");
            }
        }
        if left.is_empty() {
            return;
        }
        shared.metrics.retry("sqs_delete");
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
    }
    warn!(messages = left.len(), "could not delete acknowledged messages; they will come back as duplicates");
}

#[async_trait::async_trait]
impl Source for SqsSource {
    async fn next(&mut self) -> Result<Delivery, SourceError> {
        self.rx.recv().await.ok_or_else(|| SourceError::Io("the sqs pollers stopped".into()))
    }

    async fn ready(&self) -> bool {
        self.shared.client.get_queue_attributes().queue_url(&self.shared.settings.queue_url).send().await.is_ok()
    }

    async fn close(&mut self) {
        self.shared.stop.cancel();
        for p in self.pollers.drain(..) {
            let _ = p.await;
        }
        // Deliveries waiting for a local retry release themselves on the stop signal.
        self.shared.retries.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.shared.retries.wait()).await;
        // Received but never handed to the pipeline: give them back now.
        self.rx.close();
        let mut released = 0;
        while let Some(d) = self.rx.recv().await {
            d.ack.release().await;
            released += 1;
        }
        // Wait for the deletes of everything acknowledged so far.
        let (done, wait) = oneshot::channel();
        if self.shared.deletes.send(DeleteCmd::Flush(done)).is_ok()
            && tokio::time::timeout(Duration::from_secs(10), wait).await.is_err()
        {
            warn!("pending deletes did not finish in 10 s; those messages will come back as duplicates");
        }
        if let Some(d) = self.deleter.take() {
            d.abort();
        }
        info!(released, "sqs source closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_extends_at_half_the_timeout_and_stops_at_twelve_hours() {
        let v = Duration::from_secs(120);
        assert_eq!(next_extension(v, Duration::ZERO), Some((Duration::from_secs(60), v)));
        // Near the cap the last extension is shortened to end exactly at 12 h.
        let near = MAX_INVISIBLE - Duration::from_secs(30);
        assert_eq!(next_extension(v, near), Some((Duration::from_secs(60), Duration::from_secs(30))));
        assert_eq!(next_extension(v, MAX_INVISIBLE), None);
        assert_eq!(next_extension(v, MAX_INVISIBLE + Duration::from_secs(5)), None);
    }

    #[test]
    fn redrive_policies_name_the_max_receive_count_as_number_or_string() {
        assert_eq!(
            parse_max_receive_count(r#"{"deadLetterTargetArn":"arn:aws:sqs:r:1:q-dlq","maxReceiveCount":5}"#),
            Some(5)
        );
        assert_eq!(parse_max_receive_count(r#"{"deadLetterTargetArn":"arn","maxReceiveCount":"3"}"#), Some(3));
        assert_eq!(parse_max_receive_count("{}"), None);
        assert_eq!(parse_max_receive_count("not json"), None);
        let policy = r#"{"deadLetterTargetArn":"arn:aws:sqs:eu-west-1:123456789012:wau-dlq","maxReceiveCount":5}"#;
        assert_eq!(parse_dead_letter_target(policy).as_deref(), Some("arn:aws:sqs:eu-west-1:123456789012:wau-dlq"));
        assert_eq!(parse_dead_letter_target("{}"), None);
    }

    #[test]
    fn local_retries_back_off_then_give_the_message_back() {
        let delays: Vec<_> = (0..10).map_while(retry_delay).map(|d| d.as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32]);
    }

    #[test]
    fn event_records_become_object_refs() {
        let e = S3ObjectEvent {
            bucket: "b".into(),
            key: "csv/acme/a b.csv".into(),
            version_id: Some("null".into()),
            etag: None,
            sequencer: Some("0055AED6DCD90281E5".into()),
            size: Some(10),
            event_time: None,
            event_name: "ObjectCreated:Put".into(),
        };
        let o = object_ref(e);
        assert_eq!(o.key, "csv/acme/a b.csv");
        assert_eq!(o.version, None);
        assert_eq!(o.sequencer.unwrap().len(), 32);
    }
}
