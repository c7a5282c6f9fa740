"""The AWS-path benchmark (not a test), run by bench/aws.sh on the local stack.

Measures, in one run on one machine, on the same N raw objects:
  bulk     = reference (a), the engine's own bulk load: one Data API ExecuteStatement
             `COPY ref_bulk FROM 's3://bucket/csv/' ... CSV IGNOREHEADER 1` of every raw object
             under the prefix into a plain table, polled to completion; no validation, no ledger
  per-file = reference (b), the loader a team writes instead of this service: 4 worker threads,
             each receiving one notification at a time from a queue that holds the N
             notifications of the same objects, running one Data API COPY of that object into a
             plain table, polling it to completion, then deleting the message; timed from the
             first receive to the last delete
  limit    = reading the same N objects from the S3 endpoint (boto3, sequentially)
           + PostgreSQL COPY FROM STDIN of the same rows into a table of the same columns
  e2e      = `wau-ingest run` started on a queue already holding the N notifications, until the
             ledger (in PostgreSQL, behind the Data API emulator) records N loaded files
  lag      = with the service already running, N uploads as fast as they go: per file, when
             another connection first sees it loaded in the ledger (polled every 100 ms) minus
             the S3 eventTime; p50 and p99; with the
             floor any loader has for a burst faster than reference (a)'s rate (bulk - upload)
  paced    = the same, with the uploads paced at half of the files per second e2e loaded
and prints the time ratios e2e / bulk (goal at most 1.5), e2e / per-file (goal at most 0.75) and
e2e / limit (goal at most 1.3). Both Data API references poll DescribeStatement as the service does
(`PollSchedule`: the first poll after 50 ms, then doubling the wait up to 1 s).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

import boto3
import psycopg
from botocore.config import Config

HEADER = "customer,event_id,event_time,user_id,user_email,event_type,source_ip,user_agent"
PG = os.environ.get("WAU_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")
REF_COLUMNS = """(
  customer VARCHAR(64) NOT NULL, event_id VARCHAR(128) NOT NULL, event_time TIMESTAMPTZ NOT NULL,
  user_id VARCHAR(256) NOT NULL, user_email VARCHAR(320), event_type VARCHAR(64) NOT NULL,
  source_ip VARCHAR(45), user_agent VARCHAR(1024))"""
REF_DDL = "CREATE TABLE ref_load " + REF_COLUMNS
COPY_ROLE = "arn:aws:iam::123456789012:role/bench"
WORKGROUP = "bench"
PER_FILE_WORKERS = 4


def make_file(i: int, rows: int) -> bytes:
    customer = f"cust{i % 4}"
    out = [HEADER]
    for j in range(rows):
        day = 1 + (i + j) % 28
        out.append(
            f"{customer},ev-{i:04d}-{j:06d},2026-11-{day:02d}T{j % 24:02d}:{j % 60:02d}:{(i + j) % 60:02d}Z,"
            f"user-{(i * 7919 + j) % 50000},user{j % 50000}@example.com,login,10.{i % 256}.{j % 256}.{(i + j) % 256},"
            f"Mozilla/5.0 (X11; Linux x86_64) wau-bench/{i}"
        )
    return ("\n".join(out) + "\n").encode()


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, round(p / 100 * (len(xs) - 1))))
    return xs[k]


class Case:
    """A bucket with notifications to a queue, and a database, all fresh."""

    def __init__(self, tag: str, reference_queue: bool = False):
        """With reference_queue, a second queue (`self.reference_queue`) gets the same bucket's
        notifications, for the per-file loader (as two subscribers of an SNS topic would)."""
        self.name = f"bench{tag}{uuid.uuid4().hex[:8]}"
        cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5})
        self.s3 = boto3.client("s3", config=cfg)
        self.sqs = boto3.client("sqs")
        self.s3.create_bucket(Bucket=self.name)
        self.queue = self.sqs.create_queue(QueueName=self.name, Attributes={"VisibilityTimeout": "120"})["QueueUrl"]
        queues = [self.queue]
        if reference_queue:
            self.reference_queue = self.sqs.create_queue(
                QueueName=self.name + "-ref", Attributes={"VisibilityTimeout": "120"})["QueueUrl"]
            queues.append(self.reference_queue)
        arns = [self.sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
                for q in queues]
        self.s3.put_bucket_notification_configuration(
            Bucket=self.name,
            NotificationConfiguration={"QueueConfigurations": [{
                "QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "csv/"}]}}} for arn in arns]},
        )
        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {self.name}")
        self.dsn = psycopg.conninfo.make_conninfo(PG, dbname=self.name)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()

    def metrics(self) -> dict[str, float]:
        """Sums of the service's own timings: where the end-to-end time went."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            for name in ("wau_ingest_batch_commit_seconds_sum", "wau_ingest_batch_commit_seconds_count",
                         "wau_ingest_staging_parts_total"):
                if line.startswith(name + " "):
                    out[name.removeprefix("wau_ingest_")] = float(line.split()[1])
            if line.startswith("wau_ingest_statement_seconds_sum{"):
                op = line.split('operation="')[1].split('"')[0]
                out[f"statement_{op}_s"] = float(line.split()[1])
            if line.startswith("wau_ingest_statement_seconds_count{"):
                op = line.split('operation="')[1].split('"')[0]
                out[f"statement_{op}_n"] = float(line.split()[1])
        return out

    def visible(self, queue: str | None = None) -> int:
        a = self.sqs.get_queue_attributes(QueueUrl=queue or self.queue, AttributeNames=["ApproximateNumberOfMessages"])
        return int(a["Attributes"]["ApproximateNumberOfMessages"])

    def loaded(self) -> int:
        try:
            with psycopg.connect(self.dsn) as c:
                return c.execute("SELECT COUNT(*) FROM wau_ingest_files WHERE status = 'loaded'").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0

    def service(self, bin_path: str, log: str) -> subprocess.Popen:
        env = dict(os.environ)
        env.update({
            "WAU_INGEST_SOURCE_KIND": "sqs",
            "WAU_INGEST_SOURCE_QUEUE_URL": self.queue,
            "WAU_INGEST_SOURCE_BUCKET": self.name,
            "WAU_INGEST_WAREHOUSE_KIND": "redshift",
            "WAU_INGEST_WAREHOUSE_WORKGROUP_NAME": WORKGROUP,
            "WAU_INGEST_WAREHOUSE_DATABASE": self.name,
            "WAU_INGEST_WAREHOUSE_STAGING_URI": f"s3://{self.name}/staging/",
            "WAU_INGEST_WAREHOUSE_COPY_ROLE_ARN": COPY_ROLE,
            "WAU_INGEST_MERGE_INTERVAL_SECS": "0",
            "WAU_INGEST_RECONCILE_SCHEDULE_UTC": "",
            "WAU_INGEST_HTTP_LISTEN": f"127.0.0.1:{self.port}",
            "WAU_INGEST_BATCH_MAX_AGE_SECS": os.environ.get("BENCH_BATCH_MAX_AGE_SECS", "2"),
            "RUST_LOG": os.environ.get("BENCH_RUST_LOG", "warn"),
        })
        return subprocess.Popen([bin_path, "--log-format", "json", "run"], env=env, stdout=subprocess.DEVNULL,
                                stderr=open(log, "ab"))


def run_statement(data_api, database: str, sql: str) -> dict:
    """One Data API ExecuteStatement, polled to its end as the service polls (`PollSchedule`: the
    first DescribeStatement after 50 ms, then doubling the wait up to 1 s)."""
    sid = data_api.execute_statement(WorkgroupName=WORKGROUP, Database=database, Sql=sql)["Id"]
    delay = 0.05
    while True:
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
        d = data_api.describe_statement(Id=sid)
        if d["Status"] == "FINISHED":
            return d
        if d["Status"] in ("FAILED", "ABORTED"):
            sys.exit(f"reference statement {d['Status']}: {d.get('Error')}\n{sql}")


def copy_sql(table: str, url: str) -> str:
    return f"COPY {table} FROM '{url}' IAM_ROLE '{COPY_ROLE}' CSV IGNOREHEADER 1"


# The physical design the product gives staging (`Sql::physical_design`, TableRole::Staging).
STAGING_KEYS = " DISTSTYLE KEY DISTKEY(event_id) COMPOUND SORTKEY(customer, event_id)"


def bulk_copy(case: Case, table: str = "ref_bulk", keys: str = "") -> float:
    """Reference (a): one COPY of every raw object under csv/ into a plain table (or, with
    `keys`, one with those table attributes); seconds."""
    data_api = boto3.client("redshift-data")
    run_statement(data_api, case.name, f"CREATE TABLE {table} " + REF_COLUMNS + keys)
    t = time.monotonic()
    run_statement(data_api, case.name, copy_sql(table, f"s3://{case.name}/csv/"))
    return time.monotonic() - t


def per_file_loader(case: Case, n: int, timeout: float) -> float:
    """Reference (b): 4 workers consume the reference queue's notifications, one COPY of the
    notified object each (polled to its end), then delete the message; seconds until n objects
    are loaded and their messages deleted."""
    run_statement(boto3.client("redshift-data"), case.name, "CREATE TABLE ref_per_file " + REF_COLUMNS)
    lock = threading.Lock()
    loaded: list[str] = []  # keys whose message is deleted
    errors: list[BaseException] = []
    finished: list[float] = []
    deadline = time.monotonic() + timeout

    def worker() -> None:
        sqs, data_api = boto3.client("sqs"), boto3.client("redshift-data")
        try:
            while time.monotonic() < deadline and not errors:
                with lock:
                    if len(loaded) >= n:
                        return
                got = sqs.receive_message(QueueUrl=case.reference_queue, MaxNumberOfMessages=1, WaitTimeSeconds=1)
                for m in got.get("Messages", []):
                    keys = []
                    for rec in json.loads(m["Body"]).get("Records", []):  # s3:TestEvent has none
                        bucket = rec["s3"]["bucket"]["name"]
                        key = urllib.parse.unquote_plus(rec["s3"]["object"]["key"])
                        run_statement(data_api, case.name, copy_sql("ref_per_file", f"s3://{bucket}/{key}"))
                        keys.append(key)
                    sqs.delete_message(QueueUrl=case.reference_queue, ReceiptHandle=m["ReceiptHandle"])
                    with lock:
                        loaded.extend(keys)
                        if keys and len(loaded) == n:
                            finished.append(time.monotonic())
        except BaseException as e:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(PER_FILE_WORKERS)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    if len(loaded) != n or len(set(loaded)) != n or not finished:
        sys.exit(f"the per-file loader loaded {len(loaded)} objects ({len(set(loaded))} distinct), expected {n}")
    return finished[0] - t


def lag_run(bin_path: str, logdir: str, tag: str, files: list[bytes], interval: float) -> tuple[list[float], float]:
    """With the service running on a fresh case, upload `files` one every `interval` seconds (0:
    as fast as they go); per loaded file, the ledger's loaded_at (staging commit) minus the S3
    eventTime, and how long the uploads took."""
    case = Case(tag)
    proc = case.service(bin_path, os.path.join(logdir, f"{tag}.log"))
    time.sleep(2)  # started and polling
    watcher = Visibility(case.dsn)
    t = time.monotonic()
    for i, body in enumerate(files):
        if interval:
            time.sleep(max(0.0, t + i * interval - time.monotonic()))
        case.s3.put_object(Bucket=case.name, Key=f"csv/cust{i % 4}/f{i:04d}.csv", Body=body)
    upload = time.monotonic() - t
    wait_loaded(case, len(files), proc, 1800)
    stop(proc)
    return watcher.lags(), upload


class Visibility(threading.Thread):
    """Polls the ledger every 100 ms from another connection and notes when each loaded file is
    first seen: the commit that made its rows visible in staging, as a reader sees it (the
    ledger's own loaded_at is stamped by the writer before its commit ends). Lag = first seen
    minus the S3 eventTime, to within the 100 ms poll (moto runs on this machine's clock)."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn, self.seen, self.done = dsn, {}, threading.Event()
        self.start()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.done.is_set():
                now = time.time()
                try:
                    rows = c.execute("SELECT key, EXTRACT(EPOCH FROM event_at)::float8 FROM wau_ingest_files "
                                     "WHERE status = 'loaded'").fetchall()
                except psycopg.errors.UndefinedTable:
                    rows = []
                for key, event_at in rows:
                    self.seen.setdefault(key, now - event_at)
                time.sleep(0.1)

    def lags(self) -> list[float]:
        time.sleep(0.3)  # one more poll after the last file was counted
        self.done.set()
        self.join()
        return list(self.seen.values())


def wait_loaded(case: Case, n: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while case.loaded() < n:
        if proc.poll() is not None:
            sys.exit(f"the service exited with {proc.returncode}")
        if time.monotonic() > deadline:
            sys.exit(f"only {case.loaded()} of {n} files loaded within {timeout} s")
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--rows", type=int, default=5000)
    args = ap.parse_args()
    n, rows = args.files, args.rows
    logdir = tempfile.mkdtemp(prefix="wau-bench-")
    files = [make_file(i, rows) for i in range(n)]
    total_bytes = sum(len(f) for f in files)
    print(f"{n} files x {rows} rows, {total_bytes / 1e6:.1f} MB; logs in {logdir}", flush=True)

    # --- e2e: the notifications are queued before the service starts --------------------
    case = Case("e2e", reference_queue=True)
    for i, body in enumerate(files):
        case.s3.put_object(Bucket=case.name, Key=f"csv/cust{i % 4}/f{i:04d}.csv", Body=body)
    deadline = time.monotonic() + 60
    while (case.visible() < n or case.visible(case.reference_queue) < n) and time.monotonic() < deadline:
        time.sleep(0.1)

    # --- reference (a): one Data API COPY of every raw object under the prefix ------------------
    bulk = bulk_copy(case)
    # The same COPY into a table with staging's sort and distribution keys: what the emulator
    # charges for the sort key (it keeps one as a B-tree index; Redshift sorts later, in vacuum).
    bulk_keyed = bulk_copy(case, "ref_bulk_keyed", STAGING_KEYS)
    # --- reference (b): a per-notification COPY loader with 4 workers on its own queue ---------
    per_file = per_file_loader(case, n, 1800)
    with psycopg.connect(case.dsn) as c:
        for table in ("ref_bulk", "ref_bulk_keyed", "ref_per_file"):
            got = c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            if got != n * rows:
                sys.exit(f"{table} holds {got} rows, expected {n * rows}")

    # --- the limit: the same objects read from S3, the same rows COPYed into PostgreSQL ---
    t = time.monotonic()
    for i in range(n):
        case.s3.get_object(Bucket=case.name, Key=f"csv/cust{i % 4}/f{i:04d}.csv")["Body"].read()
    s3_read = time.monotonic() - t
    with psycopg.connect(case.dsn) as c:
        c.execute(REF_DDL)
        c.commit()
        t = time.monotonic()
        with c.cursor() as cur:
            for body in files:
                with cur.copy("COPY ref_load FROM STDIN WITH (FORMAT csv, HEADER true)") as cp:
                    cp.write(body)
        c.commit()
        pg_copy = time.monotonic() - t
    limit = s3_read + pg_copy

    proc = case.service(args.bin, os.path.join(logdir, "e2e.log"))
    t = time.monotonic()
    wait_loaded(case, n, proc, 1800)
    e2e = time.monotonic() - t
    spent = case.metrics()
    stop(proc)
    with psycopg.connect(case.dsn) as c:
        staged = c.execute("SELECT COUNT(*) FROM wau_audit_logs_staging").fetchone()[0]
    if staged != n * rows:
        sys.exit(f"staging holds {staged} rows, expected {n * rows}")

    # --- lag: uploads while the service runs ------------------------------------------------
    # A burst (uploads as fast as they go), then uploads paced at half of the files per second
    # the service loaded end to end above: the lag of a stream it keeps up with.
    lags, upload = lag_run(args.bin, logdir, "lag", files, 0.0)
    paced_rate = 0.5 * n / e2e  # files per second
    paced_lags, paced_upload = lag_run(args.bin, logdir, "lagpaced", files, 1.0 / paced_rate)
    # An ideal loader that loads every row the moment it arrives at reference (a)'s rate still
    # finishes a burst that arrives faster than that rate `bulk - upload` seconds after its last
    # upload: the floor of the burst's last lags on this machine, whatever the loader.
    burst_floor = max(0.0, bulk - upload)

    result = {
        "files": n, "rows_per_file": rows, "mb": round(total_bytes / 1e6, 1),
        "bulk_copy_s": round(bulk, 2), "bulk_copy_keyed_s": round(bulk_keyed, 2), "per_file_copy_s": round(per_file, 2),
        "ratio_bulk": round(e2e / bulk, 2), "ratio_bulk_keyed": round(e2e / bulk_keyed, 2), "ratio_per_file": round(e2e / per_file, 2),
        "s3_read_s": round(s3_read, 2), "pg_copy_s": round(pg_copy, 2), "limit_s": round(limit, 2),
        "e2e_s": round(e2e, 2), "ratio": round(e2e / limit, 2), "e2e_rows_per_s": round(n * rows / e2e),
        "lag_upload_s": round(upload, 2), "lag_p50_s": round(percentile(lags, 50), 2),
        "lag_p99_s": round(percentile(lags, 99), 2), "lag_mean_s": round(statistics.mean(lags), 2),
        "lag_burst_floor_s": round(burst_floor, 2),
        "paced_upload_s": round(paced_upload, 2), "paced_rate_files_per_s": round(paced_rate, 2),
        "paced_lag_p50_s": round(percentile(paced_lags, 50), 2), "paced_lag_p99_s": round(percentile(paced_lags, 99), 2),
        "batch_max_age_s": int(os.environ.get("BENCH_BATCH_MAX_AGE_SECS", "2")),
        "service_timings": {k: round(v, 2) for k, v in spent.items()},
    }
    print(f"""
reference (a) bulk COPY:            one Data API COPY of all {n} raw objects under s3://…/csv/ (CSV IGNOREHEADER 1) into a plain table, no validation, no ledger: {bulk:.2f} s
reference (a) with staging's keys:  the same COPY into a table with staging's sort and distribution keys: {bulk_keyed:.2f} s
reference (b) per-file COPY loader: {PER_FILE_WORKERS} workers, per queued notification one Data API COPY of that object, polled to completion, then the message deleted: {per_file:.2f} s
reference limit:                   S3 GetObject of {n} objects {s3_read:.2f} s + PostgreSQL COPY FROM STDIN {pg_copy:.2f} s = {limit:.2f} s
end to end:                        wau-ingest run, {n} queued notifications → {n} files in staging: {e2e:.2f} s ({n * rows / e2e:,.0f} rows/s)
ratios of seconds, ours ÷ the reference's (< 1: ours is faster):
end-to-end / bulk COPY            = {e2e / bulk:.2f}   (goal <= 1.5)
end-to-end / bulk COPY with keys  = {e2e / bulk_keyed:.2f}
end-to-end / per-file COPY loader = {e2e / per_file:.2f}   (goal <= 0.75)
end-to-end / limit                = {e2e / limit:.2f}   (goal <= 1.3)
inside the service:    {spent.get("batch_commit_seconds_count", 0):.0f} commits took {spent.get("batch_commit_seconds_sum", 0):.2f} s; {spent.get("staging_parts_total", 0):.0f} staging parts ({spent.get("staging_parts_total", 0) / max(spent.get("batch_commit_seconds_count", 0), 1):.1f} per commit); Data API statements by operation (s, count): {
    {k: v for k, v in sorted(spent.items()) if k.startswith("statement_")}}
event → staging lag:   p50 {result['lag_p50_s']} s, p99 {result['lag_p99_s']} s over {n} uploads in {upload:.1f} s (batch.max_age_secs {result['batch_max_age_s']}; goal p99 <= {result['batch_max_age_s'] + 2} s)
  the burst arrives at {n / upload:.1f} files/s, reference (a) loads {n / bulk:.1f} files/s: an ideal loader at that rate finishes the last file {burst_floor:.2f} s after its upload
paced at half of the service's end-to-end rate ({paced_rate:.1f} files/s, {n} uploads in {paced_upload:.1f} s): lag p50 {result['paced_lag_p50_s']} s, p99 {result['paced_lag_p99_s']} s
""")
    print("json " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
