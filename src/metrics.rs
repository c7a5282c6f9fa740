//! Every metric the service exports, with domain-named methods.
//!
//! Names follow `wau_ingest_<name>_<unit>[_total]`; label values come from small fixed sets
//! and every combination is created up front, so a dashboard or alert never points at a
//! series that has not appeared yet. Metrics are recorded per file and per batch, never per row.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing::warn;

use crate::validate::RULES;

pub const FILE_OUTCOMES: &[&str] = &["loaded", "rejected", "duplicate", "superseded", "skipped"];
pub const ROW_OUTCOMES: &[&str] = &["loaded", "rejected"];
pub const MERGE_OUTCOMES: &[&str] = &["success", "failure", "already_running"];
pub const MERGE_ACTIONS: &[&str] = &["deleted", "inserted"];
pub const OPERATIONS: &[&str] = &[
    "source_receive",
    "object_get",
    "warehouse_commit",
    "merge",
    "reconcile",
    "sqs_delete",
    "sqs_visibility",
    "data_api_statement",
    "freshness",
];
pub const SQS_ACTIONS: &[&str] = &["received", "deleted", "released", "dlq_bound", "discarded"];
pub const STATEMENT_OPERATIONS: &[&str] = &["load", "merge", "query", "migrate"];

/// Default of `metrics.max_customer_series`: at most this many customers get a
/// `customer_last_file_timestamp_seconds` series.
pub const DEFAULT_MAX_CUSTOMER_SERIES: usize = 500;
/// Default of `metrics.customer_silence_window_secs` (26 h, as `WauIngestNoFiles26h`).
pub const DEFAULT_CUSTOMER_SILENCE_WINDOW_SECS: u64 = 26 * 3600;

/// Each customer's newest loaded file, as the gauges show it. The customer label is the one
/// label whose values are not a fixed set, so it is capped: of every customer known, the first
/// `max_series` in byte order of their names have a series (the same ones on every task of a
/// fleet, whatever order files come in); the rest are counted in
/// `customer_series_left_out` and named in a warning when their number changes.
struct CustomerSeries {
    max_series: usize,
    /// Every customer known (from the freshness view and this process's commits): its newest
    /// loaded file's event time, Unix seconds.
    known: BTreeMap<String, f64>,
    /// How many were left out when last said.
    left_out: usize,
}

pub struct Metrics {
    pub registry: Registry,
    files: IntCounterVec,
    rows: IntCounterVec,
    rejects: IntCounterVec,
    batches: IntCounter,
    batch_commit_seconds: Histogram,
    event_to_commit_seconds: Histogram,
    event_to_merge_seconds: Histogram,
    merge_runs: IntCounterVec,
    merge_rows: IntCounterVec,
    last_merge: Gauge,
    last_reconcile: Gauge,
    reconcile_missing: IntCounter,
    inflight: IntGauge,
    retries: IntCounterVec,
    errors: IntCounterVec,
    sqs_messages: IntCounterVec,
    s3_bytes_read: IntCounter,
    bytes_read: IntCounter,
    staging_parts: IntCounter,
    statement_seconds: HistogramVec,
    customer_last_file: GaugeVec,
    customer_left_out: IntGauge,
    customer_silence_window: Gauge,
    customers: Mutex<CustomerSeries>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    r.register(Box::new(v.clone())).expect("unique metric");
    for value in values {
        v.with_label_values(&[value]);
    }
    v
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

/// Lag buckets from 50 ms to about 28 hours.
fn lag_buckets() -> Vec<f64> {
    exponential_buckets(0.05, 2.0, 22).expect("valid buckets")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new_custom(Some("wau_ingest".into()), None).expect("valid registry");
        let build = IntGaugeVec::new(Opts::new("build_info", "Build of the running binary (always 1)."), &["version"])
            .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(&r, build);
        Metrics {
            files: counter_vec(
                &r,
                "files_total",
                "Files finished, by outcome, counted when committed.",
                "outcome",
                FILE_OUTCOMES,
            ),
            rows: counter_vec(&r, "rows_total", "Data rows of committed files, by outcome.", "outcome", ROW_OUTCOMES),
            rejects: counter_vec(&r, "rejects_total", "Rejected rows (and whole files), by rule.", "rule", RULES),
            batches: register(&r, IntCounter::new("batches_total", "Micro-batches committed.").expect("valid")),
            batch_commit_seconds: histogram(
                &r,
                "batch_commit_seconds",
                "Time to commit one micro-batch.",
                exponential_buckets(0.001, 2.0, 18).expect("valid"),
            ),
            event_to_commit_seconds: histogram(
                &r,
                "event_to_commit_seconds",
                "From the object's creation (S3 eventTime, file mtime) to the commit of its batch.",
                lag_buckets(),
            ),
            event_to_merge_seconds: histogram(
                &r,
                "event_to_merge_seconds",
                "From the object's creation to the merge that published its rows.",
                lag_buckets(),
            ),
            merge_runs: counter_vec(&r, "merge_runs_total", "Merge runs, by outcome.", "outcome", MERGE_OUTCOMES),
            merge_rows: counter_vec(
                &r,
                "merge_rows_total",
                "Target rows the merges deleted and inserted.",
                "action",
                MERGE_ACTIONS,
            ),
            last_merge: register(
                &r,
                Gauge::new("last_merge_timestamp_seconds", "Unix time of the last successful merge.").expect("valid"),
            ),
            last_reconcile: register(
                &r,
                Gauge::new("last_reconcile_timestamp_seconds", "Unix time of the last successful reconcile.")
                    .expect("valid"),
            ),
            reconcile_missing: register(
                &r,
                IntCounter::new(
                    "reconcile_missing_files_total",
                    "Files a reconcile found in the store but not in the ledger.",
                )
                .expect("valid"),
            ),
            inflight: register(
                &r,
                IntGauge::new("inflight_files", "Files being read or waiting for their batch to commit.")
                    .expect("valid"),
            ),
            retries: counter_vec(&r, "retries_total", "Retried operations, by operation.", "operation", OPERATIONS),
            errors: counter_vec(&r, "errors_total", "Failed operations, by operation.", "operation", OPERATIONS),
            sqs_messages: counter_vec(
                &r,
                "sqs_messages_total",
                "SQS messages, by what happened to them.",
                "action",
                SQS_ACTIONS,
            ),
            s3_bytes_read: register(&r, IntCounter::new("s3_bytes_read_total", "Bytes read from S3.").expect("valid")),
            bytes_read: register(
                &r,
                IntCounter::new("bytes_read_total", "Bytes read from the object store (any kind).").expect("valid"),
            ),
            staging_parts: register(
                &r,
                IntCounter::new(
                    "staging_parts_total",
                    "Gzip parts of staging rows uploaded for COPY (Redshift): files' own and batches' shared ones.",
                )
                .expect("valid"),
            ),
            statement_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new("statement_seconds", "Warehouse statement latency, by operation.")
                        .buckets(exponential_buckets(0.005, 2.0, 16).expect("valid")),
                    &["operation"],
                )
                .expect("valid");
                for op in STATEMENT_OPERATIONS {
                    h.with_label_values(&[op]);
                }
                register(&r, h)
            },
            customer_last_file: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "customer_last_file_timestamp_seconds",
                        "Event time (Unix) of each customer's newest loaded file, from the ledger; at most metrics.max_customer_series customers.",
                    ),
                    &["customer"],
                )
                .expect("valid"),
            ),
            customer_left_out: register(
                &r,
                IntGauge::new(
                    "customer_series_left_out",
                    "Customers the ledger knows that have no customer_last_file_timestamp_seconds series (over metrics.max_customer_series).",
                )
                .expect("valid"),
            ),
            customer_silence_window: {
                let g = Gauge::new(
                    "customer_silence_window_seconds",
                    "How long a customer may send no file while others do (metrics.customer_silence_window_secs): WauIngestCustomerSilent's window.",
                )
                .expect("valid");
                g.set(DEFAULT_CUSTOMER_SILENCE_WINDOW_SECS as f64);
                register(&r, g)
            },
            customers: Mutex::new(CustomerSeries {
                max_series: DEFAULT_MAX_CUSTOMER_SERIES,
                known: BTreeMap::new(),
                left_out: 0,
            }),
            registry: r,
        }
    }

    /// The configured cap on customer series and silence window (`[metrics]`).
    pub fn customer_limits(&self, max_series: usize, silence_window_secs: u64) {
        self.customer_silence_window.set(silence_window_secs as f64);
        let mut c = self.customers.lock().expect("customer series lock");
        c.max_series = max_series;
        self.show_customers(&mut c);
    }

    /// A committed file of `customer` created at `event_time`: its series moves forward (never back).
    pub fn customer_file(&self, customer: &str, event_time: DateTime<Utc>) {
        self.customer_files(std::iter::once((customer.to_string(), event_time)));
    }

    /// Each customer's newest loaded file as the ledger's freshness view has it (or as this
    /// process committed it): every series moves forward to it, never back.
    pub fn customer_files(&self, newest: impl IntoIterator<Item = (String, DateTime<Utc>)>) {
        let mut c = self.customers.lock().expect("customer series lock");
        for (customer, t) in newest {
            let t = t.timestamp_millis() as f64 / 1000.0;
            let at = c.known.entry(customer).or_insert(t);
            *at = at.max(t);
        }
        self.show_customers(&mut c);
    }

    /// Puts the first `max_series` known customers in the gauges and removes any other series.
    fn show_customers(&self, c: &mut CustomerSeries) {
        for (i, (customer, t)) in c.known.iter().enumerate() {
            if i < c.max_series {
                self.customer_last_file.with_label_values(&[customer]).set(*t);
            } else {
                let _ = self.customer_last_file.remove_label_values(&[customer]);
            }
        }
        let left_out = c.known.len().saturating_sub(c.max_series);
        self.customer_left_out.set(left_out as i64);
        if left_out != c.left_out {
            let first: Vec<&str> = c.known.keys().skip(c.max_series).take(5).map(String::as_str).collect();
            if left_out > 0 {
                warn!(
                    left_out,
                    max_customer_series = c.max_series,
                    first_left_out = first.join(", "),
                    "more customers than metrics.max_customer_series: the last in name order have no freshness series (see wau_ingest_customer_freshness)"
                );
            }
            c.left_out = left_out;
        }
    }

    pub fn file(&self, outcome: &str) {
        self.files.with_label_values(&[outcome]).inc();
    }
    pub fn rows(&self, loaded: u64, rejected: u64) {
        self.rows.with_label_values(&["loaded"]).inc_by(loaded);
        self.rows.with_label_values(&["rejected"]).inc_by(rejected);
    }
    pub fn reject(&self, rule: &str, n: u64) {
        self.rejects.with_label_values(&[rule]).inc_by(n);
    }
    pub fn batch_committed(&self, seconds: f64) {
        self.batches.inc();
        self.batch_commit_seconds.observe(seconds);
    }
    pub fn committed_event(&self, event_time: DateTime<Utc>) {
        self.event_to_commit_seconds.observe(seconds_since(event_time));
    }
    pub fn merged(&self, deleted: u64, inserted: u64, event_times: &[DateTime<Utc>]) {
        self.merge_runs.with_label_values(&["success"]).inc();
        self.merge_rows.with_label_values(&["deleted"]).inc_by(deleted);
        self.merge_rows.with_label_values(&["inserted"]).inc_by(inserted);
        for t in event_times {
            self.event_to_merge_seconds.observe(seconds_since(*t));
        }
        self.last_merge.set(Utc::now().timestamp() as f64);
    }
    pub fn merge_outcome(&self, outcome: &str) {
        self.merge_runs.with_label_values(&[outcome]).inc();
    }
    pub fn reconciled(&self, missing: u64) {
        self.reconcile_missing.inc_by(missing);
        self.last_reconcile.set(Utc::now().timestamp() as f64);
    }
    pub fn inflight(&self, delta: i64) {
        self.inflight.add(delta);
    }
    pub fn retry(&self, operation: &str) {
        self.retries.with_label_values(&[operation]).inc();
    }
    pub fn error(&self, operation: &str) {
        self.errors.with_label_values(&[operation]).inc();
    }
    pub fn sqs(&self, action: &str, n: u64) {
        self.sqs_messages.with_label_values(&[action]).inc_by(n);
    }
    pub fn bytes_read(&self, n: u64, from_s3: bool) {
        self.bytes_read.inc_by(n);
        if from_s3 {
            self.s3_bytes_read.inc_by(n);
        }
    }
    pub fn staging_part(&self) {
        self.staging_parts.inc();
    }
    pub fn statement(&self, operation: &str, seconds: f64) {
        self.statement_seconds.with_label_values(&[operation]).observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

fn seconds_since(t: DateTime<Utc>) -> f64 {
    ((Utc::now() - t).num_milliseconds() as f64 / 1000.0).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_labelled_series_exists_before_first_use() {
        let m = Metrics::new();
        let text = m.render();
        for needle in [
            "wau_ingest_files_total{outcome=\"superseded\"} 0",
            "wau_ingest_rows_total{outcome=\"rejected\"} 0",
            "wau_ingest_rejects_total{rule=\"gzip_bomb\"} 0",
            "wau_ingest_merge_runs_total{outcome=\"already_running\"} 0",
            "wau_ingest_sqs_messages_total{action=\"dlq_bound\"} 0",
            "wau_ingest_retries_total{operation=\"warehouse_commit\"} 0",
            "wau_ingest_event_to_commit_seconds_bucket{le=\"0.05\"} 0",
            "wau_ingest_statement_seconds_count{operation=\"merge\"} 0",
            "wau_ingest_inflight_files 0",
            "wau_ingest_staging_parts_total 0",
            "wau_ingest_last_merge_timestamp_seconds 0",
            "wau_ingest_customer_series_left_out 0",
            "wau_ingest_customer_silence_window_seconds 93600",
            "wau_ingest_build_info{version=",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn domain_methods_move_the_right_series() {
        let m = Metrics::new();
        m.file("loaded");
        m.rows(10, 2);
        m.reject("type", 2);
        m.merged(1, 3, &[Utc::now()]);
        let text = m.render();
        assert!(text.contains("wau_ingest_files_total{outcome=\"loaded\"} 1"));
        assert!(text.contains("wau_ingest_rows_total{outcome=\"loaded\"} 10"));
        assert!(text.contains("wau_ingest_rejects_total{rule=\"type\"} 2"));
        assert!(text.contains("wau_ingest_merge_rows_total{action=\"inserted\"} 3"));
        assert!(text.contains("wau_ingest_event_to_merge_seconds_count 1"));
        assert!(!text.contains("wau_ingest_last_merge_timestamp_seconds 0\n"));
    }

    #[test]
    fn customer_series_move_forward_only_and_are_capped_by_name() {
        let m = Metrics::new();
        let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        m.customer_limits(2, 3600);
        m.customer_file("globex", t(2_000));
        m.customer_file("globex", t(1_000));
        m.customer_files([("acme".to_string(), t(500)), ("initech".to_string(), t(9_000))]);
        let text = m.render();
        assert!(text.contains("wau_ingest_customer_last_file_timestamp_seconds{customer=\"globex\"} 2000"), "{text}");
        assert!(text.contains("wau_ingest_customer_last_file_timestamp_seconds{customer=\"acme\"} 500"), "{text}");
        assert!(!text.contains("customer=\"initech\""), "the third in name order is left out: {text}");
        assert!(text.contains("wau_ingest_customer_series_left_out 1"), "{text}");
        assert!(text.contains("wau_ingest_customer_silence_window_seconds 3600"), "{text}");
        // A customer that sorts first takes a place: the last one in name order leaves.
        m.customer_file("aaa", t(1));
        let text = m.render();
        assert!(text.contains("customer=\"aaa\"} 1"), "{text}");
        assert!(!text.contains("customer=\"globex\""), "{text}");
        assert!(text.contains("wau_ingest_customer_series_left_out 2"), "{text}");
        // A wider cap shows them all again, with the newest times known.
        m.customer_limits(10, 3600);
        let text = m.render();
        assert!(text.contains("customer=\"globex\"} 2000") && text.contains("customer=\"initech\"} 9000"), "{text}");
        assert!(text.contains("wau_ingest_customer_series_left_out 0"), "{text}");
    }
}
