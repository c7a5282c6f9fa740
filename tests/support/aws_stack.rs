//! The local AWS stack for end-to-end tests: a moto server (S3, SQS, real bucket
//! notifications and redrive) and the Redshift Data API emulator over PostgreSQL, as
//! `scripts/local-aws.sh up` starts them (`.ci/run` does; locally: `eval "$(scripts/local-aws.sh up)"`).
//!
//! Every [`Case`] has its own bucket, queue, dead-letter queue and PostgreSQL database, so tests
//! run in parallel without seeing each other. Uploads go through the AWS SDK, so moto sends the
//! notifications the service consumes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_redshiftdata::types::{Field, StatusString};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::support::{free_port, wait_until, Service, BIN};

pub const WORKGROUP: &str = "wau-local";
pub const ENDPOINT_VARS: [&str; 3] = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_REDSHIFT_DATA"];

/// The SDK configuration for the stack, or None (with a note) when it is not running.
/// Under CI a missing stack is a failure, not a skip.
pub async fn stack() -> Option<aws_config::SdkConfig> {
    let missing: Vec<&str> = ENDPOINT_VARS.iter().copied().filter(|v| std::env::var_os(v).is_none()).collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the AWS tests: {missing:?} unset (.ci/run starts the stack)"
        );
        eprintln!("SKIPPED: the local AWS stack is not running ({missing:?} unset); run `eval \"$(scripts/local-aws.sh up)\"` first");
        return None;
    }
    Some(aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await)
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}{}x{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos % 100_000)
}

/// The isolation level a case's database is created with, as Redshift spells it
/// (`CREATE DATABASE name ISOLATION LEVEL SNAPSHOT | SERIALIZABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Redshift Serverless' and new clusters' default (PostgreSQL REPEATABLE READ in the emulator):
    /// two transactions may both pass a `NOT EXISTS` guard.
    Snapshot,
    /// A conflict aborts one of the transactions (Redshift error 1023).
    Serializable,
}

impl Isolation {
    pub fn sql(self) -> &'static str {
        match self {
            Isolation::Snapshot => "SNAPSHOT",
            Isolation::Serializable => "SERIALIZABLE",
        }
    }

    /// How `STV_DB_ISOLATION_LEVEL` names the level.
    pub fn reported(self) -> &'static str {
        match self {
            Isolation::Snapshot => "Snapshot Isolation",
            Isolation::Serializable => "Serializable",
        }
    }
}

pub struct Case {
    pub name: String,
    pub bucket: String,
    pub queue_url: String,
    pub dlq_url: String,
    pub database: String,
    /// What the database was created with; None: the emulator's default.
    pub isolation: Option<Isolation>,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub data: aws_sdk_redshiftdata::Client,
    pub dir: tempfile::TempDir,
    /// Extra `WAU_INGEST_*` settings for every service this case starts.
    pub env: Vec<(String, String)>,
}

impl Case {
    /// A bucket whose `csv/` creations notify a queue with a DLQ after `max_receives`, and a
    /// database at the emulator's default isolation; `notify` false leaves the bucket without
    /// notifications.
    pub async fn new(sdk: &aws_config::SdkConfig, notify: bool, max_receives: u32) -> Case {
        Case::create(sdk, notify, max_receives, None).await
    }

    /// As [`Case::new`], with the database created `ISOLATION LEVEL {isolation}`.
    pub async fn with_isolation(
        sdk: &aws_config::SdkConfig,
        notify: bool,
        max_receives: u32,
        isolation: Isolation,
    ) -> Case {
        Case::create(sdk, notify, max_receives, Some(isolation)).await
    }

    async fn create(
        sdk: &aws_config::SdkConfig,
        notify: bool,
        max_receives: u32,
        isolation: Option<Isolation>,
    ) -> Case {
        let name = unique("wau");
        let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(sdk).force_path_style(true).build());
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let data = aws_sdk_redshiftdata::Client::new(sdk);
        let bucket = name.clone();
        s3.create_bucket().bucket(&bucket).send().await.expect("create bucket");
        let dlq_url = sqs.create_queue().queue_name(format!("{name}-dlq")).send().await.unwrap().queue_url.unwrap();
        let dlq_arn = queue_arn(&sqs, &dlq_url).await;
        let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives.to_string()})
            .to_string();
        let queue_url = sqs
            .create_queue()
            .queue_name(&name)
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        if notify {
            let arn = queue_arn(&sqs, &queue_url).await;
            // As deploy/storage.yaml does: only csv/ notifies (staging/ lives in the same bucket).
            let filter = aws_sdk_s3::types::NotificationConfigurationFilter::builder()
                .key(
                    aws_sdk_s3::types::S3KeyFilter::builder()
                        .filter_rules(
                            aws_sdk_s3::types::FilterRule::builder()
                                .name(aws_sdk_s3::types::FilterRuleName::Prefix)
                                .value("csv/")
                                .build(),
                        )
                        .build(),
                )
                .build();
            let qc = QueueConfiguration::builder()
                .queue_arn(arn)
                .events(Event::S3ObjectCreated)
                .filter(filter)
                .build()
                .unwrap();
            s3.put_bucket_notification_configuration()
                .bucket(&bucket)
                .notification_configuration(NotificationConfiguration::builder().queue_configurations(qc).build())
                .send()
                .await
                .expect("bucket notification");
        }
        let case = Case {
            database: name.clone(),
            isolation,
            name,
            bucket,
            queue_url,
            dlq_url,
            s3,
            sqs,
            data,
            dir: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        };
        let create = match isolation {
            None => format!("CREATE DATABASE {}", case.database),
            Some(i) => format!("CREATE DATABASE {} ISOLATION LEVEL {}", case.database, i.sql()),
        };
        case.statement("test", &create).await;
        if let Some(i) = isolation {
            let level = case
                .query(&format!(
                    "SELECT TRIM(isolation_level) FROM stv_db_isolation_level WHERE TRIM(db_name) = '{}'",
                    case.database
                ))
                .await;
            assert_eq!(level, [[Some(i.reported().to_string())]], "{} is at {i:?} isolation", case.database);
        }
        case
    }

    /// The service's configuration for this case, as environment variables.
    pub fn service_env(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            ("WAU_INGEST_SOURCE_KIND", "sqs"),
            ("WAU_INGEST_SOURCE_QUEUE_URL", self.queue_url.as_str()),
            ("WAU_INGEST_SOURCE_BUCKET", self.bucket.as_str()),
            ("WAU_INGEST_SOURCE_VISIBILITY_TIMEOUT_SECS", "6"),
            ("WAU_INGEST_SOURCE_WAIT_TIME_SECS", "1"),
            ("WAU_INGEST_WAREHOUSE_KIND", "redshift"),
            ("WAU_INGEST_WAREHOUSE_WORKGROUP_NAME", WORKGROUP),
            ("WAU_INGEST_WAREHOUSE_DATABASE", self.database.as_str()),
            ("WAU_INGEST_WAREHOUSE_COPY_ROLE_ARN", "arn:aws:iam::123456789012:role/wau-copy"),
            ("WAU_INGEST_BATCH_MAX_AGE_SECS", "1"),
            ("WAU_INGEST_MERGE_INTERVAL_SECS", "2"),
            ("WAU_INGEST_RECONCILE_SCHEDULE_UTC", ""),
            ("WAU_INGEST_AWS_S3_FORCE_PATH_STYLE", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        v.push(("WAU_INGEST_WAREHOUSE_STAGING_URI".into(), format!("s3://{}/staging/", self.bucket)));
        v.extend(self.env.iter().cloned());
        v
    }

    /// Starts `wau-ingest run` with JSON logs appended to `log` in the case's folder.
    pub fn spawn_run(&self, log: &str, extra: &[(&str, &str)]) -> Service {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(log)).unwrap();
        // `WAU_INGEST_HTTP_LISTEN` among `extra` chooses the address (to probe it); else any free port.
        let listen = extra
            .iter()
            .find(|(k, _)| *k == "WAU_INGEST_HTTP_LISTEN")
            .map_or_else(|| format!("127.0.0.1:{}", free_port()), |(_, v)| v.to_string());
        let mut cmd = Command::new(BIN);
        cmd.args(["--log-format", "json", "run", "--http-listen", &listen])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .envs(self.service_env())
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        Service(cmd.spawn().unwrap())
    }

    /// Runs the CLI to completion with this case's configuration: (exit code, stdout).
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        self.cli_with(args, &[])
    }

    /// [`Case::cli`] with more environment variables.
    pub fn cli_with(&self, args: &[&str], extra: &[(&str, &str)]) -> (i32, String) {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(self.dir.path())
            .envs(self.service_env())
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!("wau-ingest {args:?}: {}\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), stdout)
    }

    pub fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default()
    }

    pub async fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        self.put_version(key, body).await;
    }

    /// As [`Case::put`]; returns the version the service records for the object
    /// (`etag:<ETag>` on these unversioned buckets, as `S3Store::resolve` names it).
    pub async fn put_version(&self, key: &str, body: impl Into<Vec<u8>>) -> String {
        let out = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body.into()))
            .send()
            .await
            .expect("put object");
        match out.version_id() {
            Some(v) if !v.is_empty() && v != "null" => v.to_string(),
            _ => format!("etag:{}", out.e_tag().expect("ETag").trim_matches('"')),
        }
    }

    pub async fn delete(&self, key: &str) {
        self.s3.delete_object().bucket(&self.bucket).key(key).send().await.expect("delete object");
    }

    pub async fn send_raw(&self, body: &str) {
        self.sqs.send_message().queue_url(&self.queue_url).message_body(body).send().await.expect("send message");
    }

    /// Messages visible plus in flight on a queue.
    pub async fn queue_depth(&self, url: &str) -> u64 {
        let a = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attrs = a.attributes.unwrap_or_default();
        let get = |k: QueueAttributeName| attrs.get(&k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        get(QueueAttributeName::ApproximateNumberOfMessages)
            + get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
    }

    /// Runs one statement on `database` through the Data API and returns its rows as text.
    pub async fn statement(&self, database: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        self.try_statement(database, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// As [`Case::statement`], with a failed statement as an error.
    pub async fn try_statement(&self, database: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let id = self
            .data
            .execute_statement()
            .workgroup_name(WORKGROUP)
            .database(database)
            .sql(sql)
            .send()
            .await
            .unwrap()
            .id
            .expect("statement id");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let d = self.data.describe_statement().id(&id).send().await.unwrap();
            match d.status() {
                Some(StatusString::Finished) => {
                    if d.has_result_set() != Some(true) {
                        return Ok(Vec::new());
                    }
                    break;
                }
                Some(StatusString::Failed) | Some(StatusString::Aborted) => return Err(format!("{:?}", d.error())),
                _ => {}
            }
            assert!(Instant::now() < deadline, "statement did not finish: {sql}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut rows = Vec::new();
        let mut token = None;
        loop {
            let r = self.data.get_statement_result().id(&id).set_next_token(token).send().await.unwrap();
            for rec in r.records() {
                rows.push(
                    rec.iter()
                        .map(|f| match f {
                            Field::IsNull(_) => None,
                            Field::StringValue(s) => Some(s.clone()),
                            Field::LongValue(v) => Some(v.to_string()),
                            Field::DoubleValue(v) => Some(v.to_string()),
                            Field::BooleanValue(v) => Some(v.to_string()),
                            other => Some(format!("{other:?}")),
                        })
                        .collect(),
                );
            }
            token = r.next_token;
            if token.is_none() {
                return Ok(rows);
            }
        }
    }

    pub async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.statement(&self.database.clone(), sql).await
    }

    fn first_count(rows: &[Vec<Option<String>>]) -> i64 {
        rows.first().and_then(|r| r.first().cloned().flatten()).map_or(0, |v| v.parse().unwrap())
    }

    pub async fn count(&self, sql: &str) -> i64 {
        Self::first_count(&self.query(sql).await)
    }

    /// 0 when the table does not exist yet (the service has not migrated).
    pub async fn count_or_zero(&self, sql: &str) -> i64 {
        self.try_statement(&self.database.clone(), sql).await.map_or(0, |rows| Self::first_count(&rows))
    }

    /// The target as (customer, event_id) → (user_id, _file_key); a key twice is a failure.
    pub async fn target(&self) -> BTreeMap<(String, String), (String, String)> {
        let mut out = BTreeMap::new();
        for r in self.query("SELECT customer, event_id, user_id, _file_key FROM wau_audit_logs").await {
            let s = |i: usize| r[i].clone().unwrap_or_default();
            assert!(out.insert((s(0), s(1)), (s(2), s(3))).is_none(), "target holds {:?} twice", (s(0), s(1)));
        }
        out
    }

    /// Ledger rows that count: (key, status, rows_read, rows_loaded, rows_rejected, merged).
    pub async fn ledger(&self) -> Vec<(String, String, i64, i64, i64, bool)> {
        self.query(
            "SELECT key, status, rows_read, rows_loaded, rows_rejected, CASE WHEN merged_at IS NULL THEN 0 ELSE 1 END \
             FROM wau_ingest_files WHERE status <> 'replaced' ORDER BY key, batch_id",
        )
        .await
        .into_iter()
        .map(|r| {
            let n = |i: usize| r[i].as_deref().unwrap_or("0").parse::<i64>().unwrap();
            (r[0].clone().unwrap(), r[1].clone().unwrap(), n(2), n(3), n(4), n(5) == 1)
        })
        .collect()
    }
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    let a =
        sqs.get_queue_attributes().queue_url(url).attribute_names(QueueAttributeName::QueueArn).send().await.unwrap();
    a.attributes.unwrap().remove(&QueueAttributeName::QueueArn).unwrap()
}

/// Polls an async condition until it holds or `timeout` passes; true if it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A CSV of `rows` (event_id, user_id) for `customer`, with the contract's header.
pub fn csv(customer: &str, rows: &[(String, String)]) -> String {
    let mut text = String::from(wau_ingest::demo::HEADER);
    text.push('\n');
    for (event_id, user) in rows {
        text.push_str(&format!("{customer},{event_id},2026-11-23T10:00:00Z,{user},,login,,\n"));
    }
    text
}

/// A private Data API emulator on its own port (for tests that stop it), over the same
/// PostgreSQL and moto as the shared one. Needs `WAU_EMULATOR_PYTHON` (printed by local-aws.sh).
pub struct PrivateEmulator {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateEmulator {
    pub fn start(port: u16) -> PrivateEmulator {
        let python =
            std::env::var("WAU_EMULATOR_PYTHON").expect("WAU_EMULATOR_PYTHON (printed by scripts/local-aws.sh up)");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/redshift_emulator.py");
        let pg = std::env::var("WAU_TEST_PG")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
        let s3 = std::env::var("AWS_ENDPOINT_URL_S3").unwrap();
        let child = Command::new(python)
            .args([script, "--port", &port.to_string(), "--pg", &pg, "--s3-endpoint", &s3])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "private emulator did not start on {port}");
        PrivateEmulator { port, child: Some(child) }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateEmulator {
    fn drop(&mut self) {
        self.stop();
    }
}
