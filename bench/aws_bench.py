"""The AWS-path benchmark (not a test), run by bench/aws.sh on the local stack.

Measures, in one run on one machine:
  limit  = reading the same N objects from the S3 endpoint (boto3, sequentially)
         + PostgreSQL COPY FROM STDIN of the same rows into a table of the same columns
  e2e    = `wau-ingest run` started on a queue already holding the N notifications, until the
           ledger (in PostgreSQL, behind the Data API emulator) records N loaded files
  lag    = with the service already running, N uploads as fast as they go: per file, the
           ledger's loaded_at (staging commit) minus the S3 eventTime; p50 and p99
and prints the ratio e2e / limit (goal: at most 1.3).
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
import time
import urllib.request
import uuid

import boto3
import psycopg
from botocore.config import Config

HEADER = "customer,event_id,event_time,user_id,user_email,event_type,source_ip,user_agent"
PG = os.environ.get("WAU_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")
REF_DDL = """CREATE TABLE ref_load (
  customer VARCHAR(64) NOT NULL, event_id VARCHAR(128) NOT NULL, event_time TIMESTAMPTZ NOT NULL,
  user_id VARCHAR(256) NOT NULL, user_email VARCHAR(320), event_type VARCHAR(64) NOT NULL,
  source_ip VARCHAR(45), user_agent VARCHAR(1024))"""


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

    def __init__(self, tag: str):
        self.name = f"bench{tag}{uuid.uuid4().hex[:8]}"
        cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5})
        self.s3 = boto3.client("s3", config=cfg)
        self.sqs = boto3.client("sqs")
        self.s3.create_bucket(Bucket=self.name)
        self.queue = self.sqs.create_queue(QueueName=self.name, Attributes={"VisibilityTimeout": "120"})["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.s3.put_bucket_notification_configuration(
            Bucket=self.name,
            NotificationConfiguration={"QueueConfigurations": [{
                "QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "csv/"}]}}}]},
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
            for name in ("wau_ingest_batch_commit_seconds_sum", "wau_ingest_batch_commit_seconds_count"):
                if line.startswith(name + " "):
                    out[name.removeprefix("wau_ingest_")] = float(line.split()[1])
            if line.startswith("wau_ingest_statement_seconds_sum{"):
                op = line.split('operation="')[1].split('"')[0]
                out[f"statement_{op}_s"] = float(line.split()[1])
            if line.startswith("wau_ingest_statement_seconds_count{"):
                op = line.split('operation="')[1].split('"')[0]
                out[f"statement_{op}_n"] = float(line.split()[1])
        return out

    def visible(self) -> int:
        a = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["ApproximateNumberOfMessages"])
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
            "WAU_INGEST_WAREHOUSE_WORKGROUP_NAME": "bench",
            "WAU_INGEST_WAREHOUSE_DATABASE": self.name,
            "WAU_INGEST_WAREHOUSE_STAGING_URI": f"s3://{self.name}/staging/",
            "WAU_INGEST_WAREHOUSE_COPY_ROLE_ARN": "arn:aws:iam::123456789012:role/bench",
            "WAU_INGEST_MERGE_INTERVAL_SECS": "0",
            "WAU_INGEST_RECONCILE_SCHEDULE_UTC": "",
            "WAU_INGEST_HTTP_LISTEN": f"127.0.0.1:{self.port}",
            "WAU_INGEST_BATCH_MAX_AGE_SECS": os.environ.get("BENCH_BATCH_MAX_AGE_SECS", "2"),
            "RUST_LOG": os.environ.get("BENCH_RUST_LOG", "warn"),
        })
        return subprocess.Popen([bin_path, "--log-format", "json", "run"], env=env, stdout=subprocess.DEVNULL,
                                stderr=open(log, "ab"))


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
    case = Case("e2e")
    for i, body in enumerate(files):
        case.s3.put_object(Bucket=case.name, Key=f"csv/cust{i % 4}/f{i:04d}.csv", Body=body)
    deadline = time.monotonic() + 60
    while case.visible() < n and time.monotonic() < deadline:
        time.sleep(0.1)

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
    lagcase = Case("lag")
    proc = lagcase.service(args.bin, os.path.join(logdir, "lag.log"))
    time.sleep(2)  # started and polling
    t = time.monotonic()
    for i, body in enumerate(files):
        lagcase.s3.put_object(Bucket=lagcase.name, Key=f"csv/cust{i % 4}/f{i:04d}.csv", Body=body)
    upload = time.monotonic() - t
    wait_loaded(lagcase, n, proc, 1800)
    stop(proc)
    with psycopg.connect(lagcase.dsn) as c:
        lags = [r[0] for r in c.execute(
            "SELECT EXTRACT(EPOCH FROM (loaded_at - event_at))::float8 FROM wau_ingest_files WHERE status = 'loaded'")]

    result = {
        "files": n, "rows_per_file": rows, "mb": round(total_bytes / 1e6, 1),
        "s3_read_s": round(s3_read, 2), "pg_copy_s": round(pg_copy, 2), "limit_s": round(limit, 2),
        "e2e_s": round(e2e, 2), "ratio": round(e2e / limit, 2), "e2e_rows_per_s": round(n * rows / e2e),
        "lag_upload_s": round(upload, 2), "lag_p50_s": round(percentile(lags, 50), 2),
        "lag_p99_s": round(percentile(lags, 99), 2), "lag_mean_s": round(statistics.mean(lags), 2),
        "batch_max_age_s": int(os.environ.get("BENCH_BATCH_MAX_AGE_SECS", "2")),
        "service_timings": {k: round(v, 2) for k, v in spent.items()},
    }
    print(f"""
reference (same run):  S3 GetObject of {n} objects {s3_read:.2f} s + PostgreSQL COPY FROM STDIN {pg_copy:.2f} s = limit {limit:.2f} s
end to end:            wau-ingest run, {n} queued notifications → {n} files in staging: {e2e:.2f} s ({n * rows / e2e:,.0f} rows/s)
ratio e2e / limit:     {e2e / limit:.2f}   (goal <= 1.3)
inside the service:    {spent.get("batch_commit_seconds_count", 0):.0f} commits took {spent.get("batch_commit_seconds_sum", 0):.2f} s; Data API statements by operation (s, count): {
    {k: v for k, v in sorted(spent.items()) if k.startswith("statement_")}}
event → staging lag:   p50 {result['lag_p50_s']} s, p99 {result['lag_p99_s']} s over {n} uploads in {upload:.1f} s (batch.max_age_secs {result['batch_max_age_s']})
""")
    print("json " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
