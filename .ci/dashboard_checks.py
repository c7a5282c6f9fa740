"""Every dashboard query, run against real engines (called by .ci/dashboard-checks).

    dashboard_checks.py --bin PATH/TO/wau-ingest --prometheus PATH/TO/prometheus

1. Two real `wau-ingest run`s make the data, each driven through every event a panel shows:
   - embedded (folder + SQLite, job `wau-ingest`): files loaded, a row rejected, a file rejected
     whole, a duplicate, a new version of a key, merges, and a reconcile that loads a file
     the folder watcher never delivered (its modification time is in the future, so it never
     settles), at the next whole minute (`reconcile.schedule_utc`);
   - the AWS path (moto S3 + SQS notifications, the Data API emulator over PostgreSQL, job
     `wau-ingest-aws`): the same files through S3 notifications, COPY and the in-service
     merge, plus a message that is not an S3 notification (bound for the DLQ).
2. A real Prometheus (started here as a plain process, 1 s scrapes, with dashboards/alerts.yml
   loaded) scrapes both; the files arrive only after its first scrape of each run, and each
   event above must show in its data (EVENTS). Every Prometheus target and variable of every
   dashboard, with its template variables substituted as Grafana does (`$job` as All = its
   allValue `.*`, as each value, regex-escaped, and as every value selected, `(a|b)`;
   `$__rate_interval`, `$__range`, `$__interval`), is evaluated through the HTTP API
   (`query_range`, or `query` for instant targets) and must succeed with at least one series
   holding a finite value. The alert rules must evaluate without error, and every
   wau_ingest_* name the PromQL and the rules use must be among the scraped names.
3. Every SQL target and variable of every dashboard (Grafana Redshift data source) is expanded
   as that data source expands it (the macros of grafana/redshift-datasource
   pkg/redshift/macros.go: `$__timeFilter(c)` -> `c BETWEEN '<from>' AND '<to>'` in RFC 3339
   UTC, `$__timeFrom()`/`$__timeTo()` the quoted bounds, ...; `${var:sqlstring}` as Grafana
   core formats it: each value quoted with ' doubled, joined by commas, All = every value the
   variable's own query returned) and run through the Data API (boto3 `redshift-data`,
   ExecuteStatement, as the data source runs it) against the AWS run's database; it must
   finish with rows, and a time-series target must return a timestamp `time` column and a
   numeric one. The same text runs against the embedded run's SQLite file unless it uses a
   form SQLite lacks (`::` casts, DATE_TRUNC, EXTRACT, TO_CHAR); there it must return rows too.

Any unexpanded `$` left in a query, any variable format or macro this script does not know,
fails the check rather than being passed through.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
ALERTS = ROOT / "dashboards" / "alerts.yml"
METRIC_NAME = re.compile(r"wau_ingest_[a-z0-9_]+")
SCRAPE_SECS = 1
JOB_EMBEDDED = "wau-ingest"
JOB_AWS = "wau-ingest-aws"
WORKGROUP = "wau-local"
PG_DSN = os.environ.get("WAU_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")
# What Grafana plots as a time series: a time column and at least one numeric column.
TIME_TYPES = {"timestamp", "timestamptz", "date"}
NUMBER_TYPES = {"int2", "int4", "int8", "float4", "float8", "numeric"}
SQLITE_LACKS = {
    "a :: cast": re.compile(r"::"),
    "DATE_TRUNC": re.compile(r"\bDATE_TRUNC\s*\(", re.I),
    "EXTRACT": re.compile(r"\bEXTRACT\s*\(", re.I),
    "TO_CHAR": re.compile(r"\bTO_CHAR\s*\(", re.I),
}

failures: list[str] = []


def log(msg: str) -> None:
    print(msg, flush=True)


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"FAIL: {msg}", flush=True)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(what: str, cond, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise SystemExit(f"dashboard-checks: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# What the dashboards ask


def dashboard_targets(path: Path):
    """(label, datasource type, target, variable or None) of every panel target and query
    variable; a target without a datasource of its own takes its panel's."""
    d = json.loads(path.read_text())
    out = []

    def ds_type(node, inherited):
        ds = node.get("datasource")
        return ds.get("type", inherited) if isinstance(ds, dict) else inherited

    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"] if isinstance(v["query"], dict) else {"query": v["query"]}
            out.append((f"{path.name} variable ${v['name']}", ds_type(v, None), q, v))

    def walk(panels, inherited):
        for p in panels:
            t = ds_type(p, inherited)
            for target in p.get("targets", []):
                out.append((f"{path.name} panel {p.get('id')} '{p.get('title')}' {target.get('refId')}",
                            ds_type(target, t), target, None))
            walk(p.get("panels", []), t)

    walk(d.get("panels", []), None)
    return d, out


KNOWN_DATASOURCES = {"prometheus", "grafana-redshift-datasource"}


def check_datasources() -> None:
    """A target this check cannot run would pass unseen: every one must be of a known kind."""
    for path in DASHBOARDS:
        for label, ds, _, _ in dashboard_targets(path)[1]:
            if ds not in KNOWN_DATASOURCES:
                fail(f"{label}: data source type {ds!r}: this check cannot run it; add its engine")


def fixture_csvs(now: dt.datetime) -> dict[str, str]:
    """The files both runs load, with event times inside the dashboards' 90-day range and users
    active in more than one ISO week (so 'new vs returning' has both)."""
    def t(days: float) -> str:
        return (now - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")

    header = "customer,event_id,event_time,user_id,user_email,event_type,source_ip,user_agent\n"
    acme = header + "".join([
        f"acme,a1,{t(15)},u1,u1@acme.example,login,10.0.0.1,cli\n",
        f"acme,a2,{t(15)},u2,,login,,\n",
        f"acme,a3,{t(2)},u1,,logout,,\n",
        f"acme,a4,{t(1)},u3,u3@acme.example,login,10.0.0.3,\n",
        f"acme,a5,{t(1)},u4,not-an-email,login,,\n",  # rejected row (email format)
    ])
    globex = header + f"globex,g1,{t(8)},u9,,login,,\n" + f"globex,g2,{t(1)},u9,,login,,\n"
    globex_v2 = globex + f"globex,g3,{t(0.5)},u8,,login,,\n"
    late = header + f"acme,a9,{t(3)},u5,,login,,\n"
    return {
        "csv/acme/2026-a.csv": acme,
        "csv/globex/2026-g.csv": globex,
        "csv/globex/2026-g.csv#v2": globex_v2,
        "csv/acme/wrong-header.csv": "who,what,when\nacme,x,y\n",  # rejected whole (header)
        "csv/acme/late.csv": late,
    }


# ---------------------------------------------------------------------------------------------
# The runs


def service_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAU_INGEST_")}
    env.update({"RUST_LOG": "info", "WAU_INGEST_BATCH_MAX_AGE_SECS": "1", "WAU_INGEST_MERGE_INTERVAL_SECS": "1"})
    env.update(extra)
    return env


class Run:
    def __init__(self, name: str, binary: str, work: Path, port: int, env: dict[str, str], args: list[str]):
        self.name, self.port = name, port
        self.log_path = work / f"{name}.log"
        self.proc = subprocess.Popen(
            [binary, "run", "--http-listen", f"127.0.0.1:{self.port}", *args],
            cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "wb"),
        )

    def metrics(self) -> str | None:
        if self.proc.poll() is not None:
            raise SystemExit(f"dashboard-checks: {self.name} exited {self.proc.returncode}:\n{self.log()}")
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return None

    def sample(self, name: str, labels: str = "") -> float:
        text = self.metrics() or ""
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + (labels and "{")) and (not labels or labels in line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                fail(f"{self.name}: still running 30 s after SIGTERM")
        return self.proc.returncode


def next_reconcile_minute(now: dt.datetime, lead_secs: int) -> dt.datetime:
    """The first whole minute at least lead_secs away."""
    at = (now + dt.timedelta(seconds=lead_secs)).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    return at


def start_embedded(binary: str, work: Path, port: int, reconcile_at: dt.datetime) -> Run:
    inbox = work / "inbox"
    inbox.mkdir()
    env = service_env({
        "WAU_INGEST_SOURCE_POLL_INTERVAL_MS": "200",
        "WAU_INGEST_SOURCE_SETTLE_MS": "100",
        "WAU_INGEST_RECONCILE_SCHEDULE_UTC": reconcile_at.strftime("%H:%M"),
    })
    return Run(JOB_EMBEDDED, binary, work, port, env, ["--inbox", str(inbox), "--db", str(work / "wau.sqlite")])


def drive_embedded(run: Run, work: Path, files: dict[str, str]) -> None:
    inbox = work / "inbox"
    for key, body in files.items():
        if "#" in key:
            continue
        path = inbox / key
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = work / "staged.csv"
        staged.write_text(body)
        if key == "csv/acme/late.csv":
            # Never settles for the folder watcher (modified "in the future"): only the
            # reconcile, which lists the folder against the ledger, finds and loads it.
            future = time.time() + 86400
            os.utime(staged, (future, future))
        staged.rename(path)  # whole, with its modification time
    wait_until(f"{run.name}: three files committed",
               lambda: run.sample("wau_ingest_files_total", 'outcome="loaded"') >= 2
               and run.sample("wau_ingest_files_total", 'outcome="rejected"') >= 1, 60)
    # The same content again (a new modification time): a duplicate.
    again = inbox / "csv/acme/2026-a.csv"
    os.utime(again, None)
    # A new version of a key.
    (inbox / "csv/globex/2026-g.csv").write_text(files["csv/globex/2026-g.csv#v2"])
    wait_until(f"{run.name}: the duplicate, the new version and a merge of it",
               lambda: run.sample("wau_ingest_files_total", 'outcome="duplicate"') >= 1
               and run.sample("wau_ingest_files_total", 'outcome="loaded"') >= 3
               and sqlite_all_merged(work / "wau.sqlite"), 60)


# --- the AWS path


def aws_clients():
    import boto3
    return boto3.client("s3"), boto3.client("sqs"), boto3.client("redshift-data")


def data_api(rd, database: str, sql: str, timeout: float = 60):
    """One ExecuteStatement, as the Grafana Redshift data source sends it; (description, result)."""
    sid = rd.execute_statement(Sql=sql, Database=database, WorkgroupName=WORKGROUP)["Id"]
    d = wait_until(f"statement {sid}",
                   lambda: (x := rd.describe_statement(Id=sid))["Status"] in ("FINISHED", "FAILED", "ABORTED") and x,
                   timeout, 0.05)
    if d["Status"] != "FINISHED":
        return d, None
    if not d.get("HasResultSet"):
        return d, {"ColumnMetadata": [], "Records": []}
    result = rd.get_statement_result(Id=sid)
    records = list(result["Records"])
    while result.get("NextToken"):
        result = rd.get_statement_result(Id=sid, NextToken=result["NextToken"])
        records.extend(result["Records"])
    return d, {"ColumnMetadata": result["ColumnMetadata"], "Records": records}


class AwsCase:
    def __init__(self, name: str):
        self.name = name
        self.s3, self.sqs, self.rd = aws_clients()
        self.bucket = name.replace("_", "-")
        self.s3.create_bucket(Bucket=self.bucket)
        dlq = self.sqs.create_queue(QueueName=f"{self.bucket}-dlq")["QueueUrl"]
        self.queue_url = self.sqs.create_queue(QueueName=self.bucket, Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": self.queue_arn(dlq), "maxReceiveCount": "2"})
        })["QueueUrl"]
        arn = self.queue_arn(self.queue_url)
        # As deploy/storage.yaml: only csv/ notifies (staging/ is in the same bucket).
        self.s3.put_bucket_notification_configuration(Bucket=self.bucket, NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
                                     "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "csv/"}]}}}]})
        self.database = name
        d, _ = data_api(self.rd, "test", f"CREATE DATABASE {self.database}")
        if d["Status"] != "FINISHED":
            raise SystemExit(f"dashboard-checks: CREATE DATABASE {self.database}: {d.get('Error')}")

    def queue_arn(self, url: str) -> str:
        return self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def env(self) -> dict[str, str]:
        return service_env({
            "WAU_INGEST_SOURCE_KIND": "sqs",
            "WAU_INGEST_SOURCE_QUEUE_URL": self.queue_url,
            "WAU_INGEST_SOURCE_BUCKET": self.bucket,
            "WAU_INGEST_SOURCE_VISIBILITY_TIMEOUT_SECS": "2",
            "WAU_INGEST_SOURCE_WAIT_TIME_SECS": "1",
            "WAU_INGEST_WAREHOUSE_KIND": "redshift",
            "WAU_INGEST_WAREHOUSE_WORKGROUP_NAME": WORKGROUP,
            "WAU_INGEST_WAREHOUSE_DATABASE": self.database,
            "WAU_INGEST_WAREHOUSE_STAGING_URI": f"s3://{self.bucket}/staging/",
            "WAU_INGEST_WAREHOUSE_COPY_ROLE_ARN": "arn:aws:iam::123456789012:role/wau-copy",
            "WAU_INGEST_RECONCILE_SCHEDULE_UTC": "",
            "WAU_INGEST_AWS_S3_FORCE_PATH_STYLE": "true",
        })

    def put(self, key: str, body: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body.encode())

    def drop(self) -> None:
        import psycopg
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def drive_aws(run: Run, case: AwsCase, files: dict[str, str]) -> None:
    for key in ("csv/acme/2026-a.csv", "csv/globex/2026-g.csv", "csv/acme/wrong-header.csv", "csv/acme/late.csv"):
        case.put(key, files[key])
    case.sqs.send_message(QueueUrl=case.queue_url, MessageBody="this is not an S3 notification")
    wait_until(f"{run.name}: files committed",
               lambda: run.sample("wau_ingest_files_total", 'outcome="loaded"') >= 3
               and run.sample("wau_ingest_files_total", 'outcome="rejected"') >= 1, 90)
    case.put("csv/acme/2026-a.csv", files["csv/acme/2026-a.csv"])  # the same bytes: a duplicate
    case.put("csv/globex/2026-g.csv", files["csv/globex/2026-g.csv#v2"])  # a new version
    wait_until(f"{run.name}: the duplicate, the new version, a merge of it and the unreadable message",
               lambda: run.sample("wau_ingest_files_total", 'outcome="duplicate"') >= 1
               and run.sample("wau_ingest_files_total", 'outcome="loaded"') >= 4
               and run.sample("wau_ingest_sqs_messages_total", 'action="dlq_bound"') >= 1
               and merged_everything(case), 90)


def sqlite_all_merged(path: Path) -> bool:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM wau_ingest_files WHERE merged_at IS NULL AND status = 'loaded'"
                          ).fetchone()[0] == 0
    finally:
        db.close()


def merged_everything(case: AwsCase) -> bool:
    d, r = data_api(case.rd, case.database,
                    "SELECT COUNT(*) FROM wau_ingest_files WHERE merged_at IS NULL AND status = 'loaded'")
    return d["Status"] == "FINISHED" and r["Records"][0][0].get("longValue") == 0


# ---------------------------------------------------------------------------------------------
# Prometheus


class Prometheus:
    def __init__(self, binary: str, work: Path, targets: dict[str, int], port: int):
        self.port = port
        rules = work / "alerts.yml"
        rules.write_text(ALERTS.read_text().replace("RUNBOOK_BASE", "https://example.invalid/wau-ingest"))
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECS}s", "evaluation_interval": f"{SCRAPE_SECS}s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}"]}]} for job, p in targets.items()
            ],
        }
        (work / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log_path = work / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"),
        )
        wait_until("Prometheus ready", self.ready, 60, 0.2)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"dashboard-checks: prometheus exited {self.proc.returncode}:\n"
                             f"{self.log_path.read_text(errors='replace')[-4000:]}")
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def scraped(self, targets: int) -> bool:
        r = self.api("query", query="count(up == 1)")
        result = r.get("data", {}).get("result", [])
        return bool(result) and int(float(result[0]["value"][1])) == targets

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def grafana_regex_escape(value: str) -> str:
    """Grafana's escaping of a value inside a Prometheus regex matcher (`=~"$var"`)."""
    return re.sub(r"[\\^$*+?.()|{}\[\]]", lambda m: "\\\\" + m.group(0), value)


def prometheus_variable_values(prom: Prometheus, label: str, target: dict, start: float, end: float) -> list[str]:
    query = target.get("query", "")
    m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", query)
    if not m:
        fail(f"{label}: variable query {query!r} is not label_values(metric, label); add its evaluation here")
        return []
    r = prom.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1), "start": start, "end": end})
    if r.get("status") != "success":
        fail(f"{label}: {query}: {r.get('error')}")
        return []
    values = r["data"]
    if not values:
        fail(f"{label}: {query} returned no values")
    log(f"ok   {label}: {query} -> {values}")
    return values


def substitute_promql(expr: str, variables: dict[str, str], range_secs: int) -> str:
    interval = f"{SCRAPE_SECS}s"  # one-second steps: $__interval = the step
    rate_interval = f"{max(2 * SCRAPE_SECS, 4 * SCRAPE_SECS)}s"  # max($__interval + scrape, 4 x scrape)
    builtins = {"__rate_interval": rate_interval, "__interval": interval, "__range": f"{range_secs}s",
                "__range_s": str(range_secs), "__range_ms": str(range_secs * 1000)}
    values = {**builtins, **variables}

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            fail(f"PromQL {expr!r}: no value for ${name}")
            return m.group(0)
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def finite_values(result_type: str, result: list) -> int:
    if result_type == "matrix":
        return sum(1 for s in result for _, v in s["values"] if math.isfinite(float(v)))
    if result_type == "vector":
        return sum(1 for s in result if math.isfinite(float(s["value"][1])))
    if result_type == "scalar":
        return 1 if math.isfinite(float(result[1])) else 0
    return 0


# What the runs were driven through, as Prometheus saw it: each must be above 0 over the check
# (the panels' data is then the data of these events, not of an idle service).
EVENTS = [
    'sum by (job) (increase(wau_ingest_files_total{outcome="loaded"}[{r}]))',
    'sum by (job) (increase(wau_ingest_files_total{outcome="rejected"}[{r}]))',
    'sum by (job) (increase(wau_ingest_files_total{outcome="duplicate"}[{r}]))',
    'sum by (job) (increase(wau_ingest_rows_total{outcome="rejected"}[{r}]))',
    'sum by (job) (increase(wau_ingest_merge_runs_total{outcome="success"}[{r}]))',
    'sum by (job) (increase(wau_ingest_event_to_merge_seconds_count[{r}]))',
    'sum by (job) (increase(wau_ingest_reconcile_missing_files_total{job="%s"}[{r}]))' % JOB_EMBEDDED,
    'max by (job) (wau_ingest_last_reconcile_timestamp_seconds{job="%s"})' % JOB_EMBEDDED,
    'sum by (job) (increase(wau_ingest_sqs_messages_total{job="%s",action="dlq_bound"}[{r}]))' % JOB_AWS,
    'sum by (job) (increase(wau_ingest_s3_bytes_read_total{job="%s"}[{r}]))' % JOB_AWS,
    # Both customers' freshness series, read from the ledger's view and moved by commits.
    'count by (job) (wau_ingest_customer_last_file_timestamp_seconds{customer="acme"})',
    'count by (job) (wau_ingest_customer_last_file_timestamp_seconds{customer="globex"})',
]


def check_events(prom: Prometheus, range_secs: int, jobs: list[str]) -> None:
    for expr in EVENTS:
        q = expr.replace("{r}", f"{range_secs}s")
        r = prom.api("query", query=q)
        got = {s["metric"].get("job"): float(s["value"][1]) for s in r.get("data", {}).get("result", [])}
        want = [j for j in jobs if f'job="{j}"' in expr] or jobs
        missing = [j for j in want if not got.get(j, 0) > 0]
        if r.get("status") != "success" or missing:
            fail(f"event not seen by Prometheus for {missing or want}: {q} -> {got or r.get('error')}")
        else:
            log(f"ok   event {q} -> {got}")


def check_prometheus(prom: Prometheus, start: float, jobs: list[str]) -> None:
    end = time.time()
    range_secs = int(end - start)
    check_events(prom, range_secs, jobs)
    used: dict[str, set[str]] = {}
    targets = [t for path in DASHBOARDS for t in dashboard_targets(path)[1]]
    prom_targets = [t for t in targets if t[1] == "prometheus"]
    if not prom_targets:
        fail("no Prometheus targets found in the dashboards: the extraction is broken")
    # Each query variable's selections as Grafana interpolates them into a regex matcher: All
    # (its allValue, else every value joined), each value alone (regex-escaped), and every
    # value selected, (a|b). One variable varies at a time; the others stay at All.
    all_values: dict[str, str] = {}
    choices: dict[str, list[str]] = {}
    for label, _, target, variable in prom_targets:
        if variable is None:
            continue
        values = prometheus_variable_values(prom, label, target, start, end)
        for name in METRIC_NAME.findall(target.get("query", "")):
            used.setdefault(name, set()).add(label)
        if variable["name"] == "job" and sorted(values) != sorted(jobs):
            fail(f"{label} offers {values}, the runs were {jobs}")
        escaped = [grafana_regex_escape(v) for v in values]
        joined = "(" + "|".join(escaped) + ")"
        all_values[variable["name"]] = (variable.get("allValue") or joined) if variable.get("includeAll") else joined
        choices[variable["name"]] = escaped + ([joined] if variable.get("multi") else [])
    selections = [dict(all_values)] + [{**all_values, n: v} for n, vs in choices.items() for v in vs]
    for label, _, target, variable in prom_targets:
        if variable is not None:
            continue
        expr = target["expr"]
        for name in METRIC_NAME.findall(expr):
            used.setdefault(name, set()).add(label)
        for i, sel in enumerate(selections):
            q = substitute_promql(expr, sel, range_secs)
            if target.get("instant") and not target.get("range"):
                r = prom.api("query", query=q, time=end)
            else:
                r = prom.api("query_range", query=q, start=start, end=end, step=SCRAPE_SECS)
            where = f"{label} [{', '.join(f'{k}={v}' for k, v in sel.items())}]"
            if r.get("status") != "success":
                fail(f"{where}: {q}: {r.get('errorType')}: {r.get('error')}")
                continue
            data = r["data"]
            n = finite_values(data["resultType"], data["result"])
            if n == 0:
                fail(f"{where}: {q}: no finite value ({len(data['result'])} series)")
            elif i == 0:
                log(f"ok   {where}: {len(data['result'])} series, {n} finite values"
                    f" ({len(selections) - 1} other selections below only if they fail)")
    rule_file = yaml.safe_load(ALERTS.read_text())
    for group in rule_file["groups"]:
        for rule in group["rules"]:
            for name in METRIC_NAME.findall(rule["expr"]):
                used.setdefault(name, set()).add(f"alerts.yml {rule.get('alert')}")
    scraped = set(prom.api("label/__name__/values", start=start, end=end)["data"])
    missing = sorted(set(used) - scraped)
    for name in missing:
        fail(f"{name} is not exported (used by {', '.join(sorted(used[name]))})")
    if not used:
        fail("no wau_ingest_* names found in the dashboards and rules: the extraction is broken")
    if used and not missing:
        log(f"ok   {len(used)} wau_ingest_* names used by dashboards and rules, all scraped")
    rules = [r for g in prom.api("rules")["data"]["groups"] for r in g["rules"]]
    alerts_in_file = [r["alert"] for g in rule_file["groups"] for r in g["rules"] if "alert" in r]
    if sorted(r["name"] for r in rules) != sorted(alerts_in_file):
        fail(f"Prometheus loaded rules {[r['name'] for r in rules]}, alerts.yml has {alerts_in_file}")
    for r in rules:
        if r.get("health") != "ok":
            fail(f"alert {r['name']}: health {r.get('health')}: {r.get('lastError')}")
    log(f"ok   {len(rules)} alert rules loaded by Prometheus and evaluated without error")


# ---------------------------------------------------------------------------------------------
# SQL (the Grafana Redshift data source)


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand_sql(label: str, sql: str, frm: dt.datetime, to: dt.datetime, variables: dict[str, list[str]]) -> str | None:
    """The query text the Redshift data source sends (macros of its pkg/redshift/macros.go),
    or None (one failure recorded) when it cannot be expanded."""
    problems: list[str] = []

    def macro(m: re.Match) -> str:
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")] if m.group(2).strip() else []
        if name == "timeFilter" and len(args) == 1:
            return f"{args[0]} BETWEEN '{rfc3339(frm)}' AND '{rfc3339(to)}'"
        if name == "timeFrom" and not args:
            return f"'{rfc3339(frm)}'"
        if name == "timeTo" and not args:
            return f"'{rfc3339(to)}'"
        if name == "timeEpoch" and len(args) == 1:
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "unixEpochFilter" and len(args) == 1:
            return f"{args[0]} >= {int(frm.timestamp())} AND {args[0]} <= {int(to.timestamp())}"
        problems.append(f"macro $__{name}({m.group(2)}) is not expanded by this check; add it")
        return m.group(0)

    def var(m: re.Match) -> str:
        name, fmt = m.group(1) or m.group(3), m.group(2)
        if name.startswith("__"):
            return m.group(0)  # a macro, reported above
        if name not in variables:
            problems.append(f"variable ${name} has no values (its query failed or returned none)")
            return m.group(0)
        if fmt == "sqlstring":
            return ",".join("'" + v.replace("'", "''") + "'" for v in variables[name])
        problems.append(f"variable format {m.group(0)} is not expanded by this check; add it")
        return m.group(0)

    out = re.sub(r"\$__(\w+)\(([^()]*)\)", macro, sql)
    out = re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)", var, out)
    if not problems and "$" in out:
        problems.append(f"unexpanded '$' left in {out!r}")
    if problems:
        fail(f"{label}: not run: {'; '.join(sorted(set(problems)))}")
        return None
    return out


def cell(c: dict):
    return None if c.get("isNull") else next(iter(c.values()))


def sql_targets():
    out = []
    for path in DASHBOARDS:
        d, targets = dashboard_targets(path)
        for label, ds, target, variable in targets:
            if ds == "grafana-redshift-datasource":
                out.append((label, target, variable, d))
    return out


def check_sql(rd, database: str, sqlite_path: Path, now: dt.datetime) -> None:
    targets = sql_targets()
    if not targets:
        fail("no Redshift SQL targets in the dashboards: the extraction is broken")
    db = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    for engine in ("redshift", "sqlite"):
        variables: dict[str, list[str]] = {}
        # Variables first (Grafana resolves them before the panels), time range of the dashboard.
        ordered = sorted(targets, key=lambda t: t[2] is None)
        for label, target, variable, d in ordered:
            frm = now - parse_grafana_range(d["time"]["from"])
            to = now - parse_grafana_range(d["time"]["to"])
            sql = expand_sql(f"{engine}: {label}", target["rawSQL"], frm, to, variables)
            if sql is None:
                continue
            where = f"{engine}: {label}"
            if engine == "redshift":
                desc, result = data_api(rd, database, sql)
                if result is None:
                    fail(f"{where}: {desc['Status']}: {desc.get('Error')}\n{sql}")
                    continue
                columns = [c["name"] for c in result["ColumnMetadata"]]
                types = {c["name"]: c["typeName"] for c in result["ColumnMetadata"]}
                rows = [[cell(c) for c in r] for r in result["Records"]]
                if variable is None and target.get("format") == 0 and (
                        types.get("time") not in TIME_TYPES or not any(t in NUMBER_TYPES for t in types.values())):
                    fail(f"{where}: a time series needs a timestamp 'time' column and a numeric one, got {types}")
                    continue
            else:
                lacks = [name for name, rx in SQLITE_LACKS.items() if rx.search(sql)]
                if lacks:
                    log(f"skip {where}: uses {', '.join(lacks)} (not SQLite)")
                    continue
                try:
                    cur = db.execute(sql)
                except sqlite3.Error as e:
                    fail(f"{where}: {e}\n{sql}")
                    continue
                columns = [c[0] for c in cur.description]
                rows = [list(r) for r in cur.fetchall()]
            if not rows:
                fail(f"{where}: no rows\n{sql}")
                continue
            if variable is not None:
                variables[variable["name"]] = [str(r[0]) for r in rows]
            elif target.get("format") == 0 and "time" not in columns:
                fail(f"{where}: a time series without a 'time' column (columns {columns})")
                continue
            log(f"ok   {where}: {len(rows)} rows, columns {columns}")
            for row in rows[:5]:
                log(f"       {row}")
        for name, values in variables.items():
            log(f"     {engine}: ${name} = {values}")
    db.close()


def parse_grafana_range(expr: str) -> dt.timedelta:
    if expr == "now":
        return dt.timedelta(0)
    m = re.fullmatch(r"now-(\d+)([smhdw])", expr)
    if not m:
        raise SystemExit(f"dashboard-checks: time range {expr!r} not understood")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
    return dt.timedelta(**{unit: int(m.group(1))})


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--prometheus", default=shutil.which("prometheus"))
    ap.add_argument("--prometheus-port", type=int, default=int(os.environ.get("WAU_PROMETHEUS_PORT", "0")))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (printed)")
    args = ap.parse_args()
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_REDSHIFT_DATA"):
        if not os.environ.get(var):
            raise SystemExit(f"dashboard-checks: {var} is not set: export the local stack's environment "
                             "(eval \"$(scripts/local-aws.sh up)\")")
    started = time.monotonic()
    check_datasources()
    work = Path(tempfile.mkdtemp(prefix="wau-dashboard-checks-"))
    runs: list[Run] = []
    prom = None
    case = None
    try:
        case = AwsCase(f"wau_t_dash_{os.getpid()}_{int(time.time())}")
        ports = {JOB_EMBEDDED: free_port(), JOB_AWS: free_port()}
        # Prometheus first: it is ready before it first scrapes (target discovery is throttled
        # to 5 s), and the events must come after a first sample of every run, or no rate sees
        # them; the runs' reconcile minute is then counted from their own start.
        prom = Prometheus(args.prometheus, work, ports, args.prometheus_port or free_port())
        scrape_start = time.time()
        now = dt.datetime.now(dt.timezone.utc)
        files = fixture_csvs(now)
        reconcile_at = next_reconcile_minute(now, 15)
        embedded = start_embedded(args.bin, work, ports[JOB_EMBEDDED], reconcile_at)
        runs.append(embedded)
        aws_work = work / "aws"
        aws_work.mkdir()
        aws = Run(JOB_AWS, args.bin, aws_work, ports[JOB_AWS], case.env(), [])
        runs.append(aws)
        for r in runs:
            wait_until(f"{r.name} /metrics", r.metrics, 60, 0.2)
        wait_until("Prometheus's first scrape of both runs", lambda: prom.scraped(len(runs)), 60, 0.2)
        log(f"== runs up: {JOB_EMBEDDED} :{embedded.port}, {JOB_AWS} :{aws.port}, prometheus :{prom.port}; "
            f"reconcile at {reconcile_at:%H:%M} UTC")

        drive_embedded(embedded, work, files)
        if (reconcile_at - dt.datetime.now(dt.timezone.utc)).total_seconds() < 2:
            raise SystemExit(f"dashboard-checks: the embedded run's files were not in place 2 s before its "
                             f"reconcile at {reconcile_at:%H:%M:%S} UTC (this machine is too slow for the "
                             "15 s lead in next_reconcile_minute)")
        drive_aws(aws, case, files)
        log("== the SQL of the dashboards, through the Data API and on SQLite")
        check_sql(case.rd, case.database, work / "wau.sqlite", dt.datetime.now(dt.timezone.utc))

        wait_until(f"{embedded.name}: the reconcile at {reconcile_at:%H:%M} UTC and a merge after it",
                   lambda: embedded.sample("wau_ingest_reconcile_missing_files_total") >= 1
                   and embedded.sample("wau_ingest_files_total", 'outcome="loaded"') >= 4
                   and sqlite_all_merged(work / "wau.sqlite"),
                   max(30.0, (reconcile_at - dt.datetime.now(dt.timezone.utc)).total_seconds() + 30), 0.5)
        # Both runs' last events scraped, and enough samples after them for a rate window.
        time.sleep(5 * SCRAPE_SECS)
        log("== every Prometheus target of the dashboards, and the rules, on Prometheus")
        check_prometheus(prom, scrape_start, [JOB_EMBEDDED, JOB_AWS])
        for r in runs:
            rc = r.stop()
            if rc != 0:
                fail(f"{r.name} exited {rc} after SIGTERM (expected a clean drain and exit 0):\n{r.log()}")
            else:
                log(f"ok   {r.name} exited 0 on SIGTERM")
    finally:
        for r in runs:
            if r.proc.poll() is None:
                r.proc.kill()
        if prom:
            prom.stop()
        if case:
            try:
                case.drop()
            except Exception as e:  # noqa: BLE001 (cleanup; .ci/run drops leftovers too)
                log(f"could not drop {case.database}: {e}")
        if args.keep or failures:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    log(f"dashboard-checks: {time.monotonic() - started:.0f} s")
    if failures:
        log(f"dashboard-checks: {len(failures)} failure(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
