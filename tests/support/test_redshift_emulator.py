"""Tests of the Redshift Data API emulator (redshift_emulator.py).

The emulator runs as a subprocess against the local PostgreSQL (127.0.0.1:5432, user postgres,
database test) and a moto server for S3; both are driven with boto3's real `redshift-data` and
`s3` clients over HTTP. Every test works in its own PostgreSQL schema, dropped at the end, or in databases it creates
through the emulator (``new_database``), dropped at the end. Races between batches are ordered
by advisory locks (``Barrier``), not by timing.
Run with `.ci/emulator-checks`, which installs what these tests need into a private virtualenv.
"""
from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import redshift_emulator as emu  # noqa: E402

PG_DSN = os.environ.get("WAU_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")
PAGE_ROWS = 3  # small, so that paging is exercised
TARGET = {"Database": "test", "WorkgroupName": "wau-test"}
CREDS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


# ------------------------------------------------------------------------------------------
# harness (the fixtures are in conftest.py, shared with test_product_sql.py)

def wait_until(deadline_s: float, probe, what: str):
    """Calls probe() until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 -- retried until the deadline
            last = e
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {deadline_s} s (last error: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A subprocess whose output goes to a file that is shown when it fails to come up."""

    def __init__(self, name: str, argv: list[str]):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()[-4000:]

    def wait_ready(self, probe, deadline_s: float = 30):
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            return probe()
        try:
            return wait_until(deadline_s, ready, f"{self.name} ready")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.name} output:\n{self.output()}") from None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.log.name)


def wait_done(rd, sid: str, deadline_s: float = 30) -> dict:
    """DescribeStatement until the statement reaches a terminal status."""
    return wait_until(deadline_s, lambda: (d := rd.describe_statement(Id=sid))["Status"] in emu.TERMINAL and d,
                      f"statement {sid} terminal")


def run(rd, sql: str, **kwargs) -> dict:
    return wait_done(rd, rd.execute_statement(Sql=sql, **TARGET, **kwargs)["Id"])


def run_ok(rd, sql: str, **kwargs) -> dict:
    d = run(rd, sql, **kwargs)
    assert d["Status"] == "FINISHED", f"{sql!r}: {d.get('Error')}"
    return d


def records(rd, sid: str) -> list[list[dict]]:
    out = []
    for page in rd.get_paginator("get_statement_result").paginate(Id=sid):
        out.extend(page["Records"])
    return out


def pg_rows(sql: str) -> list[tuple]:
    with psycopg.connect(PG_DSN) as conn:
        return conn.execute(sql).fetchall()


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


# ------------------------------------------------------------------------------------------
# protocol over HTTP

def test_execute_describe_and_typed_results(rd, schema):
    run_ok(rd, f"CREATE TABLE {schema}.ev (name text, n bigint, x double precision, ok boolean,"
               f" at timestamp, note varchar(20), amount numeric(10,2))")
    run_ok(rd, f"INSERT INTO {schema}.ev VALUES ('a', 9007199254740993, 1.5, true, '2026-11-27 02:59:13', NULL, 12.30),"
               f" ('b', -1, -0.25, false, '2026-01-01 00:00:00.5', 'x', 0)")
    submitted = rd.execute_statement(Sql=f"SELECT * FROM {schema}.ev ORDER BY name", StatementName="typed", **TARGET)
    assert set(submitted) >= {"Id", "CreatedAt", "Database", "WorkgroupName"}
    assert rd.describe_statement(Id=submitted["Id"])["Status"] in {"SUBMITTED", "PICKED", "STARTED", "FINISHED"}
    d = wait_done(rd, submitted["Id"])
    assert d["Status"] == "FINISHED" and "Error" not in d
    assert d["HasResultSet"] is True and d["ResultRows"] == 2 and d["ResultSize"] > 0
    assert d["QueryString"].startswith("SELECT * FROM") and d["Duration"] >= 0
    assert d["CreatedAt"] <= d["UpdatedAt"]  # botocore parsed the epoch-seconds floats

    page = rd.get_statement_result(Id=submitted["Id"])
    assert page["TotalNumRows"] == 2
    assert [(c["name"], c["typeName"]) for c in page["ColumnMetadata"]] == [
        ("name", "text"), ("n", "int8"), ("x", "float8"), ("ok", "bool"), ("at", "timestamp"),
        ("note", "varchar"), ("amount", "numeric")]
    assert page["Records"] == [
        [{"stringValue": "a"}, {"longValue": 9007199254740993}, {"doubleValue": 1.5}, {"booleanValue": True},
         {"stringValue": "2026-11-27 02:59:13"}, {"isNull": True}, {"stringValue": "12.30"}],
        [{"stringValue": "b"}, {"longValue": -1}, {"doubleValue": -0.25}, {"booleanValue": False},
         {"stringValue": "2026-01-01 00:00:00.5"}, {"stringValue": "x"}, {"stringValue": "0.00"}],
    ]
    listed = rd.list_statements(StatementName="typed")["Statements"]
    assert submitted["Id"] in [s["Id"] for s in listed]


def test_dml_rows_and_paging(rd, schema):
    run_ok(rd, f"CREATE TABLE {schema}.n (i int)")
    assert run_ok(rd, f"INSERT INTO {schema}.n SELECT generate_series(1, 7)")["ResultRows"] == 7
    sid = run_ok(rd, f"SELECT i FROM {schema}.n ORDER BY i")["Id"]
    first = rd.get_statement_result(Id=sid)
    assert len(first["Records"]) == PAGE_ROWS and first["TotalNumRows"] == 7 and "NextToken" in first
    assert [r[0]["longValue"] for r in records(rd, sid)] == [1, 2, 3, 4, 5, 6, 7]
    assert run_ok(rd, f"DELETE FROM {schema}.n WHERE i > 5")["ResultRows"] == 2
    with pytest.raises(ClientError) as e:  # DML has no result set
        rd.get_statement_result(Id=run_ok(rd, f"UPDATE {schema}.n SET i = i")["Id"])
    assert error_code(e) == "ValidationException"


def test_parameters_bind_as_strings_that_postgres_casts(rd, schema):
    run_ok(rd, f"CREATE TABLE {schema}.p (k bigint, v text)")
    params = [{"name": "k", "value": "42"}, {"name": "v", "value": "it's 100% :k"}]
    assert run_ok(rd, f"INSERT INTO {schema}.p VALUES (:k, :v)", Parameters=params)["ResultRows"] == 1
    sid = run_ok(rd, f"SELECT k + 1 AS next, v, ':k' AS literal, :k::int * 2 AS doubled, '50%' AS pct"
                     f" FROM {schema}.p WHERE k = :k", Parameters=[{"name": "k", "value": "42"}])["Id"]
    assert rd.describe_statement(Id=sid)["QueryParameters"] == [{"name": "k", "value": "42"}]
    assert records(rd, sid) == [[{"longValue": 43}, {"stringValue": "it's 100% :k"}, {"stringValue": ":k"},
                                 {"longValue": 84}, {"stringValue": "50%"}]]


def test_database_maps_to_an_existing_postgres_database_and_an_unknown_one_fails(rd):
    def current_database(database: str) -> dict:
        sid = rd.execute_statement(Sql="SELECT current_database()", Database=database, ClusterIdentifier="c",
                                   DbUser="awsuser")["Id"]
        return wait_done(rd, sid) | {"Id": sid}
    known = current_database("postgres")
    assert known["Status"] == "FINISHED"
    assert records(rd, known["Id"])[0][0]["stringValue"] == "postgres"
    # As on Redshift: a database that does not exist fails the statement, never another database.
    name = f"no_such_db_{uuid.uuid4().hex[:8]}"
    unknown = current_database(name)
    assert unknown["Status"] == "FAILED"
    assert f'database "{name}" does not exist' in unknown["Error"], unknown["Error"]


def test_failed_statement_reports_postgres_error(rd, schema):
    d = run(rd, f"SELECT * FROM {schema}.missing")
    assert d["Status"] == "FAILED"
    assert f'relation "{schema}.missing" does not exist' in d["Error"]
    with pytest.raises(ClientError) as e:
        rd.get_statement_result(Id=d["Id"])
    assert error_code(e) == "ValidationException"


def test_batch_is_one_transaction_rolled_back_on_failure(rd, schema):
    run_ok(rd, f"CREATE TABLE {schema}.t (id int PRIMARY KEY)")
    sid = rd.batch_execute_statement(Sqls=[f"INSERT INTO {schema}.t VALUES (1)",
                                           f"INSERT INTO {schema}.t VALUES (1)",
                                           f"INSERT INTO {schema}.t VALUES (2)"], **TARGET)["Id"]
    d = wait_done(rd, sid)
    assert d["Status"] == "FAILED"
    assert 'duplicate key value violates unique constraint "t_pkey"' in d["Error"]
    assert f"{sid}:2" in d["Error"]
    subs = d["SubStatements"]
    assert [s["Id"] for s in subs] == [f"{sid}:1", f"{sid}:2", f"{sid}:3"]
    assert [s["Status"] for s in subs] == ["FINISHED", "FAILED", "ABORTED"]
    assert "duplicate key" in subs[1]["Error"]
    assert pg_rows(f"SELECT count(*) FROM {schema}.t") == [(0,)]  # the first insert was rolled back
    assert records(rd, run_ok(rd, f"SELECT count(*) FROM {schema}.t")["Id"]) == [[{"longValue": 0}]]


def test_batch_sub_statement_results(rd, schema):
    sid = rd.batch_execute_statement(Sqls=[
        f"CREATE TABLE {schema}.target (id int, v text)",
        "CREATE TEMP TABLE stage (id int, v text)",  # one session: the temp table lives on
        "INSERT INTO stage VALUES (1, 'one'), (2, 'two'), (3, 'three')",
        f"INSERT INTO {schema}.target SELECT * FROM stage WHERE id >= 2",
        f"SELECT id, v FROM {schema}.target ORDER BY id",
    ], StatementName="batch", **TARGET)["Id"]
    d = wait_done(rd, sid)
    assert d["Status"] == "FINISHED", d.get("Error")
    subs = d["SubStatements"]
    assert [s["Id"] for s in subs] == [f"{sid}:{n}" for n in range(1, 6)]
    assert [s["Status"] for s in subs] == ["FINISHED"] * 5
    assert [s["HasResultSet"] for s in subs] == [False, False, False, False, True]
    assert [s["ResultRows"] for s in subs] == [0, 0, 3, 2, 2]
    assert d["HasResultSet"] is True
    assert records(rd, f"{sid}:5") == [[{"longValue": 2}, {"stringValue": "two"}],
                                       [{"longValue": 3}, {"stringValue": "three"}]]
    assert rd.describe_statement(Id=f"{sid}:4")["ResultRows"] == 2
    with pytest.raises(ClientError) as e:
        rd.get_statement_result(Id=f"{sid}:4")  # an INSERT: no result set
    assert error_code(e) == "ValidationException"
    assert pg_rows(f"SELECT id FROM {schema}.target ORDER BY id") == [(2,), (3,)]


def test_redshift_table_options_are_accepted(rd, schema):
    run_ok(rd, f"""CREATE TABLE {schema}.events (
        event_id varchar(64) NOT NULL ENCODE zstd,
        user_id bigint ENCODE az64 DISTKEY,
        event_time timestamp NOT NULL ENCODE az64,
        note varchar(64) DEFAULT 'SORTKEY(x) ENCODE raw' ENCODE lzo,
        PRIMARY KEY (event_id)
    ) DISTSTYLE KEY SORTKEY(event_time)""")
    run_ok(rd, f"CREATE TABLE {schema}.other (a int, b int) DISTSTYLE KEY DISTKEY(a) COMPOUND SORTKEY(a, b)")
    run_ok(rd, f"CREATE TABLE {schema}.third (a int) BACKUP NO DISTSTYLE EVEN INTERLEAVED SORTKEY (a)")
    run_ok(rd, f"CREATE TABLE {schema}.fourth (a int) DISTSTYLE AUTO SORTKEY AUTO ENCODE AUTO")
    run_ok(rd, f"CREATE TEMP TABLE keys DISTKEY(a) SORTKEY(a, b) AS SELECT a, b FROM {schema}.other")
    run_ok(rd, f"INSERT INTO {schema}.events (event_id, user_id, event_time) VALUES ('e1', 7, '2026-11-27 03:00:00')")
    assert pg_rows(f"SELECT event_id, user_id, note FROM {schema}.events") == [("e1", 7, "SORTKEY(x) ENCODE raw")]
    assert pg_rows(f"SELECT count(*) FROM information_schema.tables WHERE table_schema = '{schema}'") == [(4,)]


def sort_key_indexes(schema: str) -> list[tuple]:
    return pg_rows(f"SELECT tablename::text, regexp_replace(indexdef, '^.* USING ', '') FROM pg_indexes"
                   f" WHERE schemaname = '{schema}' AND indexname NOT LIKE '%_pkey' ORDER BY 1, 2")


def test_a_sort_key_becomes_an_index_and_zone_maps_brin_indexes(rd, schema):
    run_ok(rd, f"CREATE TABLE {schema}.t (customer varchar(64), event_id varchar(64), label text)"
               f" DISTSTYLE KEY DISTKEY (event_id) COMPOUND SORTKEY (customer, event_id)")
    run_ok(rd, f"CREATE TABLE {schema}.i (a varchar(8), b varchar(8)) INTERLEAVED SORTKEY (a, b)")
    run_ok(rd, f"CREATE TABLE {schema}.c (a varchar(8) SORTKEY, b varchar(8) DISTKEY)")
    run_ok(rd, f"CREATE TABLE {schema}.d (a varchar(8), b varchar(8)) DISTSTYLE ALL SORTKEY AUTO")
    # Zone maps: a BRIN index per number, date and time column of a permanent table, none on strings.
    run_ok(rd, f"CREATE TABLE {schema}.z (n bigint, x double precision, d date, ts timestamp, s varchar(8), b boolean)")
    brin = "WITH (autosummarize='on')"
    assert sort_key_indexes(schema) == [
        ("c", "btree (a)"),
        ("i", "btree (a)"),
        ("i", "btree (b)"),
        ("t", "btree (customer, event_id)"),
        ("z", f"brin (d) {brin}"),
        ("z", f"brin (n) {brin}"),
        ("z", f"brin (ts) {brin}"),
        ("z", f"brin (x) {brin}"),
    ]
    # CREATE TABLE IF NOT EXISTS of a table that exists changes nothing, its keys included.
    run_ok(rd, f"CREATE TABLE IF NOT EXISTS {schema}.d (a varchar(8), b varchar(8)) DISTSTYLE ALL COMPOUND SORTKEY (b)")
    assert ("d", "btree (b)") not in sort_key_indexes(schema)
    # A temporary table gets its sort key's index (in its session), no zone maps.
    d = wait_done(rd, rd.batch_execute_statement(Sqls=[
        "CREATE TEMP TABLE tmp (a bigint, b varchar(8)) SORTKEY (b)",
        "SELECT regexp_replace(indexdef, '^.* USING ', '') FROM pg_indexes WHERE tablename = 'tmp'"], **TARGET)["Id"])
    assert d["Status"] == "FINISHED", d.get("Error")
    assert records(rd, d["SubStatements"][1]["Id"]) == [[{"stringValue": "btree (b)"}]]


@pytest.mark.parametrize("attributes, error", [
    ("DISTSTYLE KEY DISTKEY (nope) SORTKEY (a)", 'column "nope" named in DISTKEY does not exist'),
    ("COMPOUND SORTKEY (a, nope)", 'column "nope" named in SORTKEY does not exist'),
    ("DISTSTYLE EVEN DISTKEY (a)", "DISTKEY cannot be used with DISTSTYLE EVEN"),
    ("DISTSTYLE ALL DISTKEY (a)", "DISTKEY cannot be used with DISTSTYLE ALL"),
    ("DISTSTYLE KEY", "DISTSTYLE KEY needs a DISTKEY column"),
    ("SORTKEY (a, a)", "more than once in SORTKEY"),
    ("INTERLEAVED SORTKEY AUTO", "syntax error"),
    ("DISTKEY a", "syntax error"),
    ("SORTKEY ()", "syntax error"),
    ("DISTSTYLE RANDOM", "syntax error"),
    ("SORTKEY (a) DISTKEY (b)", "syntax error"),  # out of the documented order
    ("DISTKEY (a) DISTKEY (b)", "syntax error"),  # twice
    ("DISTSTYLE KEY DISTKEY (a) SORTKEY (a) BACKUP NO", "syntax error"),  # BACKUP comes first
])
def test_malformed_table_attributes_are_refused(rd, schema, attributes, error):
    d = run(rd, f"CREATE TABLE {schema}.bad (a int, b int) {attributes}")
    assert d["Status"] == "FAILED" and error in d["Error"], d.get("Error")
    assert pg_rows(f"SELECT count(*) FROM information_schema.tables WHERE table_schema = '{schema}'") == [(0,)]


def test_keys_are_checked_against_the_columns_of_like_and_as(rd, schema):
    run_ok(rd, f"CREATE TABLE {schema}.base (a int, b int)")
    d = run(rd, f"CREATE TABLE {schema}.copy (LIKE {schema}.base) DISTSTYLE KEY DISTKEY (c)")
    assert d["Status"] == "FAILED" and 'column "c" named in DISTKEY does not exist' in d["Error"], d.get("Error")
    d = run(rd, f"CREATE TABLE {schema}.made SORTKEY (c) AS SELECT a, b FROM {schema}.base")
    assert d["Status"] == "FAILED" and 'column "c" named in SORTKEY does not exist' in d["Error"], d.get("Error")
    assert pg_rows(f"SELECT table_name::text FROM information_schema.tables WHERE table_schema = '{schema}'") == [("base",)]
    for sql in (f"CREATE TABLE {schema}.two (a int DISTKEY, b int DISTKEY)",
                f"CREATE TABLE {schema}.two (a int DISTKEY, b int) DISTKEY (b)",
                f"CREATE TABLE {schema}.two (a int SORTKEY, b int) SORTKEY (b)"):
        assert run(rd, sql)["Status"] == "FAILED", sql


def put_gzip_csv(s3, bucket: str, key: str, text: str):
    s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.encode()))


def test_copy_gzip_csv_manifest_of_two_parts(rd, s3, schema, bucket):
    run_ok(rd, f"CREATE TABLE {schema}.ev (event_id varchar(64), user_id bigint, event_time timestamp, note text)"
               f" DISTSTYLE AUTO SORTKEY(event_time)")
    put_gzip_csv(s3, bucket, "batch/part-0.csv.gz",
                 'event_id,user_id,event_time,note\ne1,1,2026-11-27 01:00:00,"hello, world"\ne2,2,2026-11-27 02:00:00,\n')
    put_gzip_csv(s3, bucket, "batch/part-1.csv.gz",
                 'event_id,user_id,event_time,note\ne3,3,2026-11-27T03:00:00,"say ""hi"""\n')
    manifest = {"entries": [{"url": f"s3://{bucket}/batch/part-0.csv.gz", "mandatory": True},
                            {"url": f"s3://{bucket}/batch/part-1.csv.gz", "mandatory": True}]}
    s3.put_object(Bucket=bucket, Key="batch/manifest.json", Body=json.dumps(manifest).encode())
    d = run_ok(rd, f"COPY {schema}.ev (event_id, user_id, event_time, note) FROM 's3://{bucket}/batch/manifest.json'"
                   f" IAM_ROLE 'arn:aws:iam::123456789012:role/load' FORMAT AS CSV QUOTE AS '\"' DELIMITER ','"
                   f" GZIP MANIFEST IGNOREHEADER 1 TIMEFORMAT 'auto' DATEFORMAT 'auto' EMPTYASNULL BLANKSASNULL"
                   f" ACCEPTINVCHARS AS '?' MAXERROR 0 COMPUPDATE OFF STATUPDATE OFF;")
    assert d["ResultRows"] == 3 and d["HasResultSet"] is False
    assert pg_rows(f"SELECT event_id, user_id, event_time::text, note FROM {schema}.ev ORDER BY event_id") == [
        ("e1", 1, "2026-11-27 01:00:00", "hello, world"),
        ("e2", 2, "2026-11-27 02:00:00", None),
        ("e3", 3, "2026-11-27 03:00:00", 'say "hi"'),
    ]


def test_copy_with_missing_mandatory_part_fails_and_loads_nothing(rd, s3, schema, bucket):
    run_ok(rd, f"CREATE TABLE {schema}.ev (event_id text, user_id bigint)")
    put_gzip_csv(s3, bucket, "b/part-0.csv.gz", "e1,1\n")
    manifest = {"entries": [{"url": f"s3://{bucket}/b/part-0.csv.gz", "mandatory": True},
                            {"url": f"s3://{bucket}/b/part-1.csv.gz", "mandatory": True}]}
    s3.put_object(Bucket=bucket, Key="b/manifest", Body=json.dumps(manifest).encode())
    d = run(rd, f"COPY {schema}.ev FROM 's3://{bucket}/b/manifest' IAM_ROLE 'arn:aws:iam::1:role/r' CSV GZIP MANIFEST")
    assert d["Status"] == "FAILED"
    assert f"mandatory manifest entry s3://{bucket}/b/part-1.csv.gz not found" in d["Error"]
    assert pg_rows(f"SELECT count(*) FROM {schema}.ev") == [(0,)]
    # an optional missing part is skipped
    manifest["entries"][1]["mandatory"] = False
    s3.put_object(Bucket=bucket, Key="b/manifest", Body=json.dumps(manifest).encode())
    d = run_ok(rd, f"COPY {schema}.ev FROM 's3://{bucket}/b/manifest' IAM_ROLE 'arn:aws:iam::1:role/r' CSV GZIP MANIFEST")
    assert d["ResultRows"] == 1


def test_copy_prefix_into_temp_stage_inside_a_batch(rd, s3, schema, bucket):
    s3.put_object(Bucket=bucket, Key="in/a.txt", Body=b"1|one\n2|\\N\n")
    s3.put_object(Bucket=bucket, Key="in/b.txt", Body=b"3|three\n")
    s3.put_object(Bucket=bucket, Key="other/c.txt", Body=b"9|not loaded\n")
    run_ok(rd, f"CREATE TABLE {schema}.t (id int, v text)")
    sid = rd.batch_execute_statement(Sqls=[
        f"CREATE TEMP TABLE stage (LIKE {schema}.t)",
        f"COPY stage FROM 's3://{bucket}/in/' IAM_ROLE default",
        f"INSERT INTO {schema}.t SELECT * FROM stage",
        "DROP TABLE stage",
    ], **TARGET)["Id"]
    d = wait_done(rd, sid)
    assert d["Status"] == "FINISHED", d.get("Error")
    assert d["SubStatements"][1]["ResultRows"] == 3
    assert pg_rows(f"SELECT id, v FROM {schema}.t ORDER BY id") == [(1, "one"), (2, None), (3, "three")]
    # a failing COPY inside a batch rolls the whole batch back
    d = wait_done(rd, rd.batch_execute_statement(Sqls=[
        f"INSERT INTO {schema}.t VALUES (4, 'four')",
        f"COPY {schema}.t FROM 's3://{bucket}/nothing-here/' IAM_ROLE default",
    ], **TARGET)["Id"])
    assert d["Status"] == "FAILED" and f"no S3 object found for s3://{bucket}/nothing-here/" in d["Error"]
    assert pg_rows(f"SELECT count(*) FROM {schema}.t") == [(3,)]


def test_unknown_statement_ids_are_resource_not_found(rd):
    for call in (rd.describe_statement, rd.get_statement_result, rd.cancel_statement):
        with pytest.raises(ClientError) as e:
            call(Id=str(uuid.uuid4()))
        assert error_code(e) == "ResourceNotFoundException"
    sid = run_ok(rd, "SELECT 1")["Id"]
    with pytest.raises(ClientError) as e:
        rd.describe_statement(Id=f"{sid}:2")  # not a batch
    assert error_code(e) == "ResourceNotFoundException"


def test_cancel_aborts_a_running_statement(rd):
    sid = rd.execute_statement(Sql="SELECT pg_sleep(60)", **TARGET)["Id"]
    wait_until(10, lambda: rd.describe_statement(Id=sid)["Status"] == "STARTED", "statement started")
    assert rd.cancel_statement(Id=sid)["Status"] is True
    assert wait_done(rd, sid, deadline_s=10)["Status"] == "ABORTED"
    with pytest.raises(ClientError) as e:
        rd.cancel_statement(Id=sid)
    assert error_code(e) == "ValidationException"


def post(url: str, target: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target,
        "Authorization": "AWS4-HMAC-SHA256 Credential=x/20261127/us-east-1/redshift-data/aws4_request, "
                         "SignedHeaders=host, Signature=00"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_raw_protocol_errors(emulator_url):
    status, body = post(emulator_url, "RedshiftData.ExecuteStatement", json.dumps({"Database": "test"}).encode())
    assert (status, body["__type"]) == (400, "ValidationException") and "Sql" in body["message"]
    status, body = post(emulator_url, "RedshiftData.ExecuteStatement", json.dumps(
        {"Sql": "SELECT :a", "Database": "test", "WorkgroupName": "w", "Parameters": [{"name": "a", "value": ""}]}).encode())
    assert (status, body["__type"]) == (400, "ValidationException") and "'a'" in body["message"]
    status, body = post(emulator_url, "RedshiftData.BatchExecuteStatement", json.dumps(
        {"Sqls": ["SELECT 1"] * 41, "Database": "test", "WorkgroupName": "w"}).encode())
    assert (status, body["__type"]) == (400, "ValidationException")
    status, body = post(emulator_url, "RedshiftData.NoSuchThing", b"{}")
    assert (status, body["__type"]) == (400, "UnknownOperationException")
    status, body = post(emulator_url, "RedshiftData.DescribeStatement", b"{not json")
    assert (status, body["__type"]) == (400, "SerializationException")
    status, body = post(emulator_url, "RedshiftData.ExecuteStatement", json.dumps(
        {"Sql": "SELECT 1", "Database": "test", "ClusterIdentifier": "c", "DbUser": "u", "ClientToken": "tok-1"}).encode())
    assert status == 200 and body["DbUser"] == "u" and isinstance(body["CreatedAt"], float)
    again = post(emulator_url, "RedshiftData.ExecuteStatement", json.dumps(
        {"Sql": "SELECT 1", "Database": "test", "ClusterIdentifier": "c", "DbUser": "u", "ClientToken": "tok-1"}).encode())
    assert again == (200, body)  # same ClientToken, same statement


# ------------------------------------------------------------------------------------------
# translation helpers

def test_translate_parameters_ignores_quotes_casts_and_comments():
    sql = ("SELECT :a, ':a', \":a\", :a::text, x::int, $$ :a $$, $t$:a$t$, E'\\':a', :b -- :a\n"
           "/* :a */ FROM t WHERE v LIKE '10%' AND w = :unknown AND arr[1:2] > 0")
    assert emu.translate_parameters(sql, {"a", "b"}) == (
        "SELECT %(a)s, ':a', \":a\", %(a)s::text, x::int, $$ :a $$, $t$:a$t$, E'\\':a', %(b)s -- :a\n"
        "/* :a */ FROM t WHERE v LIKE '10%%' AND w = :unknown AND arr[1:2] > 0")
    assert emu.translate_parameters("SELECT 'it''s :a', :a", {"a"}) == "SELECT 'it''s :a', %(a)s"


def test_split_sql_segments():
    assert emu.split_sql("a 'b''c' \"d\" -- e\nf $x$g$x$") == [
        ("code", "a "), ("string", "'b''c'"), ("code", " "), ("ident", '"d"'), ("code", " "),
        ("comment", "-- e"), ("code", "\nf "), ("string", "$x$g$x$")]
    assert emu.split_sql("SELECT $1, a$b") == [("code", "SELECT $1, a$b")]


def test_translate_table_design():
    sql = ("CREATE TABLE s.t (id bigint ENCODE az64 DISTKEY, ts timestamp SORTKEY, c text DEFAULT 'ENCODE x'"
           " ENCODE zstd) BACKUP NO DISTSTYLE KEY")
    out, design = emu.translate_table_design(sql)
    assert " ".join(out.split()) == "CREATE TABLE s.t (id bigint , ts timestamp , c text DEFAULT 'ENCODE x' )"
    assert (design.diststyle, design.distkey, design.sortkind, design.sortkey) == ("KEY", "id", "COMPOUND", ["ts"])
    out, design = emu.translate_table_design("create temp table t (a int) diststyle all sortkey auto")
    assert " ".join(out.split()) == "create temp table t (a int)"
    assert (design.diststyle, design.sortkind, design.index_columns()) == ("ALL", "AUTO", [])
    out, design = emu.translate_table_design("-- c\nCREATE TABLE t (a int, \"B\" int) COMPOUND SORTKEY(a, \"B\")")
    assert out.rstrip() == "-- c\nCREATE TABLE t (a int, \"B\" int)" and design.index_columns() == [["a", "B"]]
    out, design = emu.translate_table_design("CREATE TEMP TABLE k DISTKEY(a) AS SELECT DISTINCT a FROM x")
    assert out == "CREATE TEMP TABLE k AS SELECT DISTINCT a FROM x" and design.columns is None
    untouched = "SELECT encode(x, 'hex') AS sortkey FROM t DISTSTYLE"
    assert emu.translate_table_design(untouched) == (untouched, None)


def test_parse_copy():
    spec = emu.parse_copy("COPY s.t (a, b) FROM 's3://bkt/dir/manifest' IAM_ROLE 'arn:x' FORMAT AS CSV QUOTE AS '\"'"
                          " DELIMITER ',' GZIP MANIFEST IGNOREHEADER 2 EMPTYASNULL ACCEPTINVCHARS COMPUPDATE OFF;")
    assert (spec.table, spec.columns, spec.source) == ("s.t", "(a, b)", "s3://bkt/dir/manifest")
    assert (spec.csv, spec.gzip, spec.manifest, spec.ignore_header) == (True, True, True, 2)
    assert (spec.null, spec.empty_as_null, spec.blanks_as_null) == (None, True, False)
    # Redshift's NULL string is \N in CSV too (not PostgreSQL CSV's unquoted empty field)
    assert spec.postgres_copy("tmp", "(c0, c1)") == \
        "COPY tmp (c0, c1) FROM STDIN WITH (FORMAT csv, DELIMITER ',', QUOTE '\"', NULL '\\N')"
    plain = emu.parse_copy("copy t from 's3://b/k' iam_role default BLANKSASNULL NULL AS 'nil'")
    assert plain.postgres_copy() == "COPY t FROM STDIN WITH (FORMAT text, DELIMITER '|', NULL 'nil')"
    assert (plain.null, plain.empty_as_null, plain.blanks_as_null) == ("nil", False, True)
    assert emu.parse_copy("COPY t FROM 's3://b/k' IAM_ROLE default CSV NULL AS ''").empty_as_null  # = EMPTYASNULL
    assert emu.parse_copy("COPY t FROM STDIN") is None
    assert emu.parse_copy("COPY t FROM '/tmp/file.csv'") is None
    with pytest.raises(emu.StatementError, match="FORMAT PARQUET is not emulated"):
        emu.parse_copy("COPY t FROM 's3://b/k' IAM_ROLE default FORMAT AS PARQUET")
    with pytest.raises(emu.StatementError, match="option FROBNICATE is not emulated"):
        emu.parse_copy("COPY t FROM 's3://b/k' IAM_ROLE default FROBNICATE")


def test_typed_fields():
    assert emu._field(16, b"t") == {"booleanValue": True}
    assert emu._field(20, b"-5") == {"longValue": -5}
    assert emu._field(701, b"NaN") == {"stringValue": "NaN"}
    assert emu._field(1700, b"1.10") == {"stringValue": "1.10"}
    assert emu._field(25, None) == {"isNull": True}


def test_conflicts_are_worded_as_redshift_words_them_at_each_isolation_level():
    """A real PostgreSQL serialization failure: error 1023 on a SERIALIZABLE database, the
    snapshot-isolation conflict text on a SNAPSHOT one."""
    with psycopg.connect(PG_DSN, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS iso_t; CREATE TABLE iso_t (k int, v int)")
    a = psycopg.connect(PG_DSN)
    b = psycopg.connect(PG_DSN)
    for conn in (a, b):
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    try:
        a.execute("SELECT COUNT(*) FROM iso_t WHERE k = 1")
        b.execute("SELECT COUNT(*) FROM iso_t WHERE k = 2")
        a.execute("INSERT INTO iso_t VALUES (2, 1)")
        b.execute("INSERT INTO iso_t VALUES (1, 1)")
        a.commit()
        with pytest.raises(psycopg.errors.SerializationFailure) as failure:
            b.commit()
        text = emu._error_text(failure.value, "serializable")
        assert text.startswith("ERROR: 1023 DETAIL: Serializable isolation violation on table"), text
        text = emu._error_text(failure.value, "repeatable read")
        assert text.startswith("ERROR: could not complete because of conflict with concurrent transaction"), text
        # nothing in it that a client matching only 1023 or "serializ..." would recognise
        assert "1023" not in text and "serializ" not in text.lower(), text
    finally:
        a.close()
        b.close()
        with psycopg.connect(PG_DSN, autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS iso_t")


# ------------------------------------------------------------------------------------------
# isolation: SNAPSHOT by default, SERIALIZABLE on request, per database

def in_db(database: str) -> dict:
    return {"Database": database, "WorkgroupName": "wau-test"}


def run_in(rd, database: str, sql: str) -> dict:
    return wait_done(rd, rd.execute_statement(Sql=sql, **in_db(database))["Id"])


def run_ok_in(rd, database: str, sql: str) -> dict:
    d = run_in(rd, database, sql)
    assert d["Status"] == "FINISHED", f"{sql!r}: {d.get('Error')}"
    return d


def pg_rows_in(database: str, sql: str) -> list[tuple]:
    with psycopg.connect(PG_DSN, dbname=database) as conn:
        return conn.execute(sql).fetchall()


class Barrier:
    """An advisory lock the test holds: a statement ``barrier.sql`` waits there until release(),
    so that concurrent batches interleave in the order a test chooses, not by timing luck."""

    def __init__(self, database: str):
        self.key = uuid.uuid4().int % (1 << 31)
        self.conn = psycopg.connect(PG_DSN, dbname=database, autocommit=True)
        self.conn.execute("SELECT pg_advisory_lock(%s)", [self.key])
        self.sql = f"SELECT pg_advisory_xact_lock_shared({self.key})"

    def waiting(self) -> int:
        return self.conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                                 " AND classid = 0 AND objid = %s AND objsubid = 1", [self.key]).fetchone()[0]

    def waiting_for_table(self, table: str) -> int:
        return self.conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'relation' AND NOT granted"
                                 " AND relation = %s::regclass", [table]).fetchone()[0]

    def release(self):
        self.conn.execute("SELECT pg_advisory_unlock(%s)", [self.key])
        self.conn.close()


def race(rd, database: str, first: list[str], second: list[str], barrier: Barrier, second_waits=None) -> tuple[dict, dict]:
    """Runs ``first`` until it waits at the barrier, then ``second`` until it waits (at the
    barrier, or where ``second_waits()`` says) or ends, then releases both."""
    a = rd.batch_execute_statement(Sqls=first, **in_db(database))["Id"]
    wait_until(20, lambda: barrier.waiting() == 1, "first batch at the barrier")
    b = rd.batch_execute_statement(Sqls=second, **in_db(database))["Id"]
    waits = second_waits or (lambda: barrier.waiting() == 2)
    wait_until(20, lambda: waits() or rd.describe_statement(Id=b)["Status"] in emu.TERMINAL, "second batch waiting")
    barrier.release()
    return wait_done(rd, a), wait_done(rd, b)


GUARDED_INSERT = "INSERT INTO ledger SELECT 'f1', 'v1' WHERE NOT EXISTS (SELECT 1 FROM ledger WHERE k = 'f1' AND v = 'v1')"


def test_snapshot_is_the_default_and_lets_two_not_exists_guards_insert_the_same_row(rd, new_database):
    """Redshift's SNAPSHOT isolation (PostgreSQL REPEATABLE READ): "concurrent modifications to
    different rows in the same table complete successfully", so both guarded inserts commit."""
    db = new_database()
    run_ok_in(rd, db, "CREATE TABLE ledger (k varchar(64), v varchar(64))")
    barrier = Barrier(db)
    a, b = race(rd, db, [GUARDED_INSERT, barrier.sql], [GUARDED_INSERT, barrier.sql], barrier)
    assert (a["Status"], b["Status"]) == ("FINISHED", "FINISHED"), (a.get("Error"), b.get("Error"))
    assert pg_rows_in(db, "SELECT k, v FROM ledger") == [("f1", "v1"), ("f1", "v1")]  # the anomaly


def test_snapshot_with_a_lock_first_serializes_the_guarded_inserts(rd, new_database):
    """The product's fix: LOCK a dedicated table as the first statement, before anything takes
    the snapshot; the second batch waits for the first, then its guard sees the first's row."""
    db = new_database()
    run_ok_in(rd, db, "CREATE TABLE ledger (k varchar(64), v varchar(64)); CREATE TABLE writer_lock (x int)")
    barrier = Barrier(db)
    batch = ["LOCK writer_lock", GUARDED_INSERT, barrier.sql]
    a, b = race(rd, db, batch, batch, barrier, second_waits=lambda: barrier.waiting_for_table("writer_lock") == 1)
    assert (a["Status"], b["Status"]) == ("FINISHED", "FINISHED"), (a.get("Error"), b.get("Error"))
    assert [s["ResultRows"] for s in (a["SubStatements"][1], b["SubStatements"][1])] == [1, 0]
    assert pg_rows_in(db, "SELECT k, v FROM ledger") == [("f1", "v1")]


def test_concurrent_copies_into_one_table_run_one_after_another(rd, s3, bucket, new_database):
    """Redshift: "concurrent COPYs into one table serialize". A COPY whose transaction is still
    open makes a second COPY into the same table wait for its end; a COPY into another table
    and a plain INSERT into the same one do not wait."""
    db = new_database()
    run_ok_in(rd, db, "CREATE TABLE ev (event_id varchar(64)); CREATE TABLE other (event_id varchar(64))")
    s3.put_object(Bucket=bucket, Key="in/a.csv", Body=b"e1\n")
    copy = lambda table: f"COPY {table} FROM 's3://{bucket}/in/a.csv' IAM_ROLE default CSV"  # noqa: E731
    barrier = Barrier(db)
    a = rd.batch_execute_statement(Sqls=[copy("ev"), barrier.sql], **in_db(db))["Id"]
    wait_until(20, lambda: barrier.waiting() == 1, "first COPY's batch at the barrier")
    assert run_in(rd, db, copy("other"))["Status"] == "FINISHED"
    assert run_in(rd, db, "INSERT INTO ev VALUES ('e2')")["Status"] == "FINISHED"
    b = rd.execute_statement(Sql=copy("ev"), **in_db(db))["Id"]
    wait_until(20, lambda: barrier.waiting_for_table("ev") == 1, "the second COPY waiting for the first")
    assert rd.describe_statement(Id=b)["Status"] not in emu.TERMINAL
    barrier.release()
    assert wait_done(rd, a)["Status"] == "FINISHED"
    assert wait_done(rd, b)["Status"] == "FINISHED"
    assert pg_rows_in(db, "SELECT event_id FROM ev ORDER BY 1") == [("e1",), ("e1",), ("e2",)]


def test_serializable_refuses_one_of_two_guarded_inserts_with_error_1023(rd, new_database):
    db = new_database("SERIALIZABLE")
    run_ok_in(rd, db, "CREATE TABLE ledger (k varchar(64), v varchar(64))")
    barrier = Barrier(db)
    a, b = race(rd, db, [GUARDED_INSERT, barrier.sql], [GUARDED_INSERT, barrier.sql], barrier)
    assert sorted((a["Status"], b["Status"])) == ["FAILED", "FINISHED"]
    error = (a if a["Status"] == "FAILED" else b)["Error"]
    assert error.startswith("ERROR: 1023 DETAIL: Serializable isolation violation on table"), error
    assert pg_rows_in(db, "SELECT k, v FROM ledger") == [("f1", "v1")]


def test_snapshot_conflict_on_the_same_row_is_redshifts_snapshot_error(rd, new_database):
    db = new_database("SNAPSHOT")
    run_ok_in(rd, db, "CREATE TABLE t (k int, v int); INSERT INTO t VALUES (1, 0)")
    barrier = Barrier(db)
    a, b = race(rd, db, ["UPDATE t SET v = v + 1 WHERE k = 1", barrier.sql],
                ["SELECT count(*) FROM t", barrier.sql, "UPDATE t SET v = v + 10 WHERE k = 1"], barrier)
    assert a["Status"] == "FINISHED", a.get("Error")
    assert b["Status"] == "FAILED"
    assert b["Error"].startswith("ERROR: could not complete because of conflict with concurrent transaction"), b["Error"]
    assert "1023" not in b["Error"] and "serializ" not in b["Error"].lower()
    assert pg_rows_in(db, "SELECT v FROM t") == [(1,)]


@pytest.mark.parametrize("level, text", [
    ("SNAPSHOT", "ERROR: could not complete because of conflict with concurrent transaction"),
    ("SERIALIZABLE", "ERROR: 1023 DETAIL: Serializable isolation violation on table")])
def test_a_deadlock_is_reported_as_the_databases_conflict_error(rd, new_database, level, text):
    db = new_database(level)
    run_ok_in(rd, db, "CREATE TABLE a (x int); CREATE TABLE b (x int)")
    barrier = Barrier(db)
    first, second = race(rd, db, ["LOCK a", barrier.sql, "LOCK b"], ["LOCK b", barrier.sql, "LOCK a"], barrier)
    assert sorted((first["Status"], second["Status"])) == ["FAILED", "FINISHED"]
    error = (first if first["Status"] == "FAILED" else second)["Error"]
    assert error.startswith(text), error
    assert "SQLSTATE 40P01, a deadlock" in error  # for whoever debugs it
    if level == "SNAPSHOT":
        assert "serializ" not in error.lower() and "1023" not in error


def isolation_of(rd, database: str) -> tuple[str, str, str]:
    """(stv_db_isolation_level's value, a batch's level, a lone statement's level) in PostgreSQL terms."""
    view = records(rd, run_ok_in(rd, database, "SELECT isolation_level FROM stv_db_isolation_level"
                                               " WHERE db_name = current_database()")["Id"])
    sid = rd.batch_execute_statement(Sqls=["SELECT 1", "SHOW transaction_isolation"], **in_db(database))["Id"]
    assert wait_done(rd, sid)["Status"] == "FINISHED"
    lone = records(rd, run_ok_in(rd, database, "SHOW transaction_isolation")["Id"])
    return view[0][0]["stringValue"], records(rd, f"{sid}:2")[0][0]["stringValue"], lone[0][0]["stringValue"]


def test_isolation_level_per_database_and_stv_db_isolation_level(rd, new_database):
    # Redshift's STV_DB_ISOLATION_LEVEL.isolation_level is character(20): padded as Redshift pads it
    snapshot, serializable = "Snapshot Isolation".ljust(20), "Serializable".ljust(20)
    assert isolation_of(rd, "test") == (snapshot, "repeatable read", "repeatable read")  # no setting: SNAPSHOT
    plain, ser = new_database(), new_database("SERIALIZABLE")
    assert isolation_of(rd, plain) == (snapshot, "repeatable read", "repeatable read")
    assert isolation_of(rd, ser) == (serializable, "serializable", "serializable")
    run_ok(rd, f"ALTER DATABASE {plain} ISOLATION LEVEL SERIALIZABLE")
    assert isolation_of(rd, plain) == (serializable, "serializable", "serializable")
    run_ok(rd, f"ALTER DATABASE {plain} ISOLATION LEVEL SNAPSHOT")
    assert isolation_of(rd, plain) == (snapshot, "repeatable read", "repeatable read")
    rows = records(rd, run_ok(rd, f"SELECT trim(db_name), trim(isolation_level) FROM stv_db_isolation_level"
                                  f" WHERE db_name IN ('{plain}', '{ser}') ORDER BY 2")["Id"])
    assert rows == [[{"stringValue": ser}, {"stringValue": "Serializable"}],
                    [{"stringValue": plain}, {"stringValue": "Snapshot Isolation"}]]
    # as on Redshift, neither runs inside a transaction block; unknown options are refused
    d = wait_done(rd, rd.batch_execute_statement(Sqls=["SELECT 1", f"CREATE DATABASE x{plain}"], **TARGET)["Id"])
    assert d["Status"] == "FAILED" and "cannot run inside a transaction block" in d["Error"]
    d = run(rd, f"CREATE DATABASE x{plain} COLLATE CASE_INSENSITIVE")
    assert d["Status"] == "FAILED" and "not emulated" in d["Error"]


def test_a_database_dropped_and_made_again_is_set_up_again(rd, new_database):
    db = new_database("SERIALIZABLE")
    assert isolation_of(rd, db)[1] == "serializable"
    run_ok(rd, f"DROP DATABASE {db}")
    gone = run_in(rd, db, "SELECT current_database()")
    assert gone["Status"] == "FAILED" and "does not exist" in gone["Error"], gone
    run_ok(rd, f"CREATE DATABASE {db}")
    assert isolation_of(rd, db) == ("Snapshot Isolation".ljust(20), "repeatable read", "repeatable read")
    assert records(rd, run_ok_in(rd, db, "SELECT 'a'::varchar = 'a '::varchar")["Id"]) == [[{"booleanValue": True}]]


def test_parse_database_ddl():
    assert emu.parse_database_ddl("CREATE DATABASE Wau") == emu.DatabaseDdl("CREATE", "wau", None)
    assert emu.parse_database_ddl('create database "Wau" with isolation level serializable;') == \
        emu.DatabaseDdl("CREATE", "Wau", "SERIALIZABLE")
    assert emu.parse_database_ddl("ALTER DATABASE w ISOLATION LEVEL SNAPSHOT") == emu.DatabaseDdl("ALTER", "w", "SNAPSHOT")
    assert emu.parse_database_ddl("ALTER DATABASE w RENAME TO v") is None
    assert emu.parse_database_ddl("SELECT 'CREATE DATABASE x'") is None
    assert emu.dropped_database('DROP DATABASE IF EXISTS "W"') == "W" and emu.dropped_database("drop database W") == "w"


# ------------------------------------------------------------------------------------------
# VARCHAR(n) is n bytes

def test_varchar_length_is_bytes_on_insert_and_update(rd, schema):
    run_ok(rd, f"CREATE TABLE {schema}.v (id int, a varchar(64), b varchar, c text, d char(4), m varchar(max))")
    run_ok(rd, f"INSERT INTO {schema}.v (id, a) VALUES (1, '{'é' * 32}')")  # 32 characters, 64 bytes: fits
    d = run(rd, f"INSERT INTO {schema}.v (id, a) VALUES (2, '{'é' * 33}')")  # 33 characters, 66 bytes
    assert d["Status"] == "FAILED" and d["Error"] == "ERROR: value too long for type character varying(64)", d.get("Error")
    d = run(rd, f"UPDATE {schema}.v SET a = a || 'x' WHERE id = 1")
    assert d["Status"] == "FAILED" and d["Error"] == "ERROR: value too long for type character varying(64)", d.get("Error")
    for col in ("b", "c"):  # VARCHAR without a length and TEXT are VARCHAR(256)
        run_ok(rd, f"UPDATE {schema}.v SET {col} = '{'x' * 256}' WHERE id = 1")
        d = run(rd, f"UPDATE {schema}.v SET {col} = '{'x' * 257}' WHERE id = 1")
        assert d["Error"] == "ERROR: value too long for type character varying(256)", d.get("Error")
    run_ok(rd, f"UPDATE {schema}.v SET d = 'éé' WHERE id = 1")  # CHAR(n) is n bytes too
    d = run(rd, f"UPDATE {schema}.v SET d = 'ééé' WHERE id = 1")
    assert d["Error"] == "ERROR: value too long for type character(4)", d.get("Error")
    run_ok(rd, f"UPDATE {schema}.v SET m = repeat('x', 65535) WHERE id = 1")  # VARCHAR(MAX) = VARCHAR(65535)
    d = run(rd, f"UPDATE {schema}.v SET m = repeat('é', 32768) WHERE id = 1")
    assert d["Error"] == "ERROR: value too long for type character varying(65535)", d.get("Error")
    for ddl in (f"CREATE TABLE {schema}.w (a varchar(65536))", f"SELECT 'a'::varchar(70000)"):
        d = run(rd, ddl)
        assert d["Status"] == "FAILED" and "length for type varchar cannot exceed 65535" in d["Error"], d.get("Error")
    assert pg_rows(f"SELECT id, a FROM {schema}.v") == [(1, "é" * 32)]


def test_varchar_bytes_hold_for_temp_like_and_create_table_as(rd, schema):
    run_ok(rd, f"CREATE TABLE {schema}.v (a varchar(8))")
    sid = rd.batch_execute_statement(Sqls=[
        f"CREATE TEMP TABLE stage (LIKE {schema}.v)",
        "INSERT INTO stage VALUES ('ééé')",  # 6 bytes
        f"CREATE TABLE {schema}.copy AS SELECT a FROM stage",
        f"CREATE TEMP TABLE other AS SELECT a FROM {schema}.v",
        "INSERT INTO other VALUES ('éééé')",  # 8 bytes
    ], **TARGET)["Id"]
    assert wait_done(rd, sid)["Status"] == "FINISHED"
    for sqls in (["CREATE TEMP TABLE stage (LIKE {schema}.v)", "INSERT INTO stage VALUES ('ééééé')"],
                 ["CREATE TEMP TABLE stage AS SELECT a FROM {schema}.v", "INSERT INTO stage VALUES ('ééééé')"],
                 ["INSERT INTO {schema}.copy VALUES ('ééééé')"]):
        d = wait_done(rd, rd.batch_execute_statement(Sqls=[s.format(schema=schema) for s in sqls], **TARGET)["Id"])
        assert d["Status"] == "FAILED", sqls
        assert d["Error"].startswith("ERROR: value too long for type character varying(8)"), d["Error"]
    assert pg_rows(f"SELECT a FROM {schema}.copy") == [("ééé",)]


def test_translate_char_types():
    assert emu.translate_char_types("CREATE TABLE t (a VARCHAR(MAX), b character varying ( max ), c char(10))") == \
        "CREATE TABLE t (a VARCHAR(65535), b character varying(65535), c char(10))"
    assert emu.translate_char_types("SELECT 'varchar(99999)'") == "SELECT 'varchar(99999)'"
    with pytest.raises(emu.StatementError, match="cannot exceed 4096"):
        emu.translate_char_types("CREATE TABLE t (c CHAR(4097))")
    assert emu.created_table('CREATE TEMP TABLE IF NOT EXISTS s."T x" (LIKE y)') == 's."T x"'
    assert emu.created_table("create table t as select 1") == "t"
    assert emu.created_table("ALTER TABLE ONLY s.t ADD COLUMN c varchar(3)") == "s.t"
    assert emu.created_table("ALTER TABLE s.t DROP COLUMN c") is None


# ------------------------------------------------------------------------------------------
# COPY: what Redshift refuses, and NULL handling as Redshift documents it

COPY_CSV = "IAM_ROLE default FORMAT AS CSV GZIP MANIFEST MAXERROR 0"


def copy_files(s3, bucket: str, prefix: str, *texts: str) -> str:
    """gzip CSV parts and a manifest naming them; the manifest's URL."""
    entries = []
    for n, text in enumerate(texts):
        put_gzip_csv(s3, bucket, f"{prefix}/part-{n}.csv.gz", text)
        entries.append({"url": f"s3://{bucket}/{prefix}/part-{n}.csv.gz", "mandatory": True})
    s3.put_object(Bucket=bucket, Key=f"{prefix}/manifest", Body=json.dumps({"entries": entries}).encode())
    return f"s3://{bucket}/{prefix}/manifest"


def test_copy_refuses_a_string_longer_than_its_column_in_bytes(rd, s3, schema, bucket):
    run_ok(rd, f"CREATE TABLE {schema}.v (id int, a varchar(64))")
    ok = copy_files(s3, bucket, "ok", f"1,{'é' * 32}\n")
    assert run_ok(rd, f"COPY {schema}.v FROM '{ok}' {COPY_CSV}")["ResultRows"] == 1
    bad = copy_files(s3, bucket, "bad", "id,a\n2,a\n", f"id,a\n3,b\n4,{'é' * 33}\n5,c\n")
    d = run(rd, f"COPY {schema}.v FROM '{bad}' {COPY_CSV} IGNOREHEADER 1")
    assert d["Status"] == "FAILED"
    assert "Load into table 'v' failed. Check 'sys_load_error_detail' system table for details." in d["Error"]
    assert "String length exceeds DDL length" in d["Error"] and "1204" in d["Error"]
    assert f"s3://{bucket}/bad/part-1.csv.gz line 3, column a" in d["Error"], d["Error"]
    assert pg_rows(f"SELECT id FROM {schema}.v") == [(1,)]  # nothing of the failed COPY
    # a table PostgreSQL made itself, without the emulator's constraints, is held to the same
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {schema}.raw (id int, a text)")
    long = copy_files(s3, bucket, "long", f"1,{'x' * 257}\n")
    d = run(rd, f"COPY {schema}.raw FROM '{long}' {COPY_CSV}")
    assert d["Status"] == "FAILED" and "String length exceeds DDL length" in d["Error"]


@pytest.mark.parametrize("column_type", ["timestamp", "timestamptz"])
def test_copy_timestamps_take_at_most_6_fractional_digits(rd, s3, schema, bucket, column_type):
    run_ok(rd, f"CREATE TABLE {schema}.ts (id int, at {column_type})")
    ok = copy_files(s3, bucket, "ok", "1,2026-11-27 01:02:03.123456\n2,2026-11-27 01:02:03\n")
    assert run_ok(rd, f"COPY {schema}.ts FROM '{ok}' {COPY_CSV} TIMEFORMAT 'auto'")["ResultRows"] == 2
    assert pg_rows(f"SELECT id, to_char(at, 'YYYY-MM-DD HH24:MI:SS.US') FROM {schema}.ts ORDER BY id") == [
        (1, "2026-11-27 01:02:03.123456"), (2, "2026-11-27 01:02:03.000000")]
    bad = copy_files(s3, bucket, "bad", "3,2026-11-27 01:02:03.5\n4,2026-11-27 01:02:03.1234567\n")
    d = run(rd, f"COPY {schema}.ts FROM '{bad}' {COPY_CSV} TIMEFORMAT 'auto'")
    assert d["Status"] == "FAILED"
    assert "Invalid timestamp format or value" in d["Error"] and "1206" in d["Error"], d["Error"]
    assert "line 2, column at" in d["Error"] and "2026-11-27 01:02:03.1234567" in d["Error"]
    assert pg_rows(f"SELECT count(*) FROM {schema}.ts") == [(2,)]


NULLS_TABLE = "(s varchar(10), i int, t timestamp, b boolean, n numeric(6,2))"


def copy_nulls(rd, s3, schema, bucket, options: str, text: str, fmt: str = "CSV") -> list[tuple]:
    table = f"{schema}.n_{uuid.uuid4().hex[:6]}"
    run_ok(rd, f"CREATE TABLE {table} {NULLS_TABLE.replace('(', '(line int, ', 1)}")
    s3.put_object(Bucket=bucket, Key=f"{table}.txt", Body=text.encode())
    run_ok(rd, f"COPY {table} FROM 's3://{bucket}/{table}.txt' IAM_ROLE default {fmt} {options}")
    return pg_rows(f"SELECT s, i, t::text, b, n::text FROM {table} ORDER BY line")


NULLS_CSV = ('1,,,,,\n'            # empty fields
             '2,\\N,\\N,\\N,\\N,\\N\n'  # the default NULL string
             '3,"",5,,t,1.5\n'     # a quoted empty string
             '4,"  ",,,,\n'        # blanks
             '5,nil,6,,,\n')


def test_copy_csv_nulls_by_default_empty_varchar_is_an_empty_string(rd, s3, schema, bucket):
    """Redshift's CSV NULL string is \\N; an empty CHAR/VARCHAR field loads as '', an empty
    field of any other type as NULL (PostgreSQL's CSV COPY would take empty as NULL everywhere
    and refuse \\N for a number)."""
    assert copy_nulls(rd, s3, schema, bucket, "", NULLS_CSV) == [
        ("", None, None, None, None),
        (None, None, None, None, None),
        ("", 5, None, True, "1.50"),
        ("  ", None, None, None, None),
        ("nil", 6, None, None, None)]


def test_copy_csv_nulls_with_emptyasnull_blanksasnull_and_null_as(rd, s3, schema, bucket):
    assert copy_nulls(rd, s3, schema, bucket, "EMPTYASNULL", NULLS_CSV) == [
        (None, None, None, None, None), (None, None, None, None, None), (None, 5, None, True, "1.50"),
        ("  ", None, None, None, None), ("nil", 6, None, None, None)]
    assert copy_nulls(rd, s3, schema, bucket, "BLANKSASNULL", NULLS_CSV) == [
        ("", None, None, None, None), (None, None, None, None, None), ("", 5, None, True, "1.50"),
        (None, None, None, None, None), ("nil", 6, None, None, None)]
    assert copy_nulls(rd, s3, schema, bucket, "NULL AS 'nil'", "1,,,,,\n2,\\N,nil,nil,nil,nil\n5,nil,6,,,\n") == [
        ("", None, None, None, None), ("\\N", None, None, None, None), (None, 6, None, None, None)]
    # NULL AS '\N' is the default said out loud; a \N into a number under NULL AS 'nil' is not a number
    d = run(rd, f"CREATE TABLE {schema}.num (i int)")
    s3.put_object(Bucket=bucket, Key="num.csv", Body=b"\\N\n")
    d = run(rd, f"COPY {schema}.num FROM 's3://{bucket}/num.csv' IAM_ROLE default CSV NULL AS 'nil'")
    assert d["Status"] == "FAILED" and "Load into table 'num' failed" in d["Error"] and "line 1, column i" in d["Error"]


def test_copy_delimited_text_nulls(rd, s3, schema, bucket):
    assert copy_nulls(rd, s3, schema, bucket, "", "1|||||\n2|\\N|\\N|\\N|\\N|\\N\n3|x|7|2026-01-02 03:04:05|f|2\n",
                      fmt="") == [("", None, None, None, None), (None, None, None, None, None),
                                  ("x", 7, "2026-01-02 03:04:05", False, "2.00")]


def test_copy_load_errors_name_the_file_line_and_column(rd, s3, schema, bucket):
    run_ok(rd, f"CREATE TABLE {schema}.e (id int NOT NULL, n bigint, v varchar(4))")
    cases = [("1,2,a\n2,x7,b\n", "line 2, column n", "invalid input syntax for type bigint"),
             ("1,2,a\n2,3,b\n,4,c\n", "line 3, column id", "Missing data for not-null field"),
             ("1,2,a\n2,3,b,extra\n", "line 2", "extra data after last expected column")]
    for n, (text, where, what) in enumerate(cases):
        url = copy_files(s3, bucket, f"e{n}", text)
        d = run(rd, f"COPY {schema}.e FROM '{url}' {COPY_CSV}")
        assert d["Status"] == "FAILED", text
        assert "Load into table 'e' failed" in d["Error"] and f"part-0.csv.gz {where}" in d["Error"], d["Error"]
        assert what in d["Error"], d["Error"]
    assert pg_rows(f"SELECT count(*) FROM {schema}.e") == [(0,)]


# ------------------------------------------------------------------------------------------
# the 100 KB statement limit

def padded(n_bytes: int, filler: str = "x") -> str:
    """A statement of exactly n_bytes UTF-8 bytes (filler may be multi-byte)."""
    head = "SELECT 1 -- "
    body = filler * ((n_bytes - len(head)) // len(filler.encode()))
    sql = head + body
    return sql + " " * (n_bytes - len(sql.encode()))


def test_statement_size_limit_is_100_kb_per_statement_and_per_batch(rd):
    limit = emu.MAX_SQL_BYTES
    assert limit == 100 * 1024
    assert run(rd, padded(limit, "é"))["Status"] == "FINISHED"  # bytes, not characters
    for sql in (padded(limit + 1), padded(limit + 1, "é")):
        with pytest.raises(ClientError) as e:
            rd.execute_statement(Sql=sql, **TARGET)
        assert error_code(e) == "ValidationException" and "100 KB" in str(e.value)
    with pytest.raises(ClientError) as e:  # one statement of a batch over the limit
        rd.batch_execute_statement(Sqls=["SELECT 1", padded(limit + 1)], **TARGET)
    assert error_code(e) == "ValidationException" and "Sqls[2]" in str(e.value) and "100 KB" in str(e.value)
    with pytest.raises(ClientError) as e:  # each within the limit, together over it
        rd.batch_execute_statement(Sqls=[padded(60 * 1024), padded(60 * 1024)], **TARGET)
    assert error_code(e) == "ValidationException" and "together" in str(e.value) and "100 KB" in str(e.value)
    sid = rd.batch_execute_statement(Sqls=[padded(50 * 1024), padded(50 * 1024)], **TARGET)["Id"]
    assert wait_done(rd, sid)["Status"] == "FINISHED"


# ------------------------------------------------------------------------------------------
# trailing blanks in VARCHAR comparisons

def test_trailing_blanks_are_insignificant_in_varchar_comparisons(rd, new_database):
    db = new_database()
    run_ok_in(rd, db, "CREATE TABLE a (k varchar(8), n int); CREATE TABLE b (k varchar(8), m int);"
                      " INSERT INTO a VALUES ('x', 1), ('x  ', 2), ('y', 3); INSERT INTO b VALUES ('x ', 10), ('y', 30)")

    def one(sql: str):
        return [[next(iter(f.values())) for f in row] for row in records(rd, run_ok_in(rd, db, sql)["Id"])]

    assert one("SELECT 'a'::varchar = 'a  '::varchar, 'a'::varchar <> 'a  '::varchar, 'a '::varchar < 'a'::varchar,"
               " 'a'::varchar = ' a'::varchar") == [[True, False, False, False]]
    assert one("SELECT n FROM a WHERE k = 'x' ORDER BY n") == [[1], [2]]  # a column against a literal
    assert one("SELECT n FROM a WHERE k IN ('x ', 'z') ORDER BY n") == [[1], [2]]
    assert one("SELECT a.n, b.m FROM a JOIN b ON a.k = b.k ORDER BY a.n") == [[1, 10], [2, 10], [3, 30]]
    assert one("SELECT count(DISTINCT k) FROM a") == [[2]]
    assert one("SELECT count(*) FROM (SELECT k FROM a GROUP BY k) g") == [[2]]
    assert one("SELECT n FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.k = a.k) ORDER BY n") == [[1], [2], [3]]
    assert one("SELECT n, row_number() OVER (PARTITION BY k ORDER BY n) FROM a ORDER BY n") == [[1, 1], [2, 2], [3, 1]]
    assert one("SELECT octet_length(k) FROM a ORDER BY n") == [[1], [3], [1]]  # the blanks are kept, only compared away
    # not modelled: values PostgreSQL types as TEXT (text columns, ||, lower(), ::text) compare as PostgreSQL does
    assert one("SELECT 'a'::text = 'a  '::text, lower('A'::varchar) = 'a '::varchar") == [[False, False]]
    # and a database the emulator did not create (such as the default one) is PostgreSQL's
    assert records(rd, run_ok(rd, "SELECT 'a'::varchar = 'a  '::varchar")["Id"]) == [[{"booleanValue": False}]]


def test_trailing_blank_varchar_equality_keeps_hash_joins(rd, new_database):
    db = new_database()
    run_ok_in(rd, db, "CREATE TABLE s (customer varchar(64), event_id varchar(64), v int);"
                      " CREATE TABLE t (customer varchar(64), event_id varchar(64), v int);"
                      " INSERT INTO s SELECT 'c' || (g % 50), 'e' || g, g FROM generate_series(1, 100000) g;"
                      " INSERT INTO t SELECT 'c' || (g % 50), 'e' || g, g FROM generate_series(50001, 150000) g;"
                      " ANALYZE s; ANALYZE t")
    plan = "\n".join(r[0]["stringValue"] for r in records(rd, run_ok_in(
        rd, db, "EXPLAIN VERBOSE SELECT count(*) FROM s JOIN t ON s.customer = t.customer AND s.event_id = t.event_id")["Id"]))
    assert "Hash Join" in plan and "Nested Loop" not in plan, plan
    # the join runs on the trailing-blank equality on varchar (PostgreSQL's own would be text's:
    # "(s.customer)::text = (t.customer)::text")
    assert "Hash Cond: ((s.customer = t.customer) AND (s.event_id = t.event_id))" in plan, plan
    plan = "\n".join(r[0]["stringValue"] for r in records(rd, run_ok_in(
        rd, db, "EXPLAIN DELETE FROM t WHERE EXISTS (SELECT 1 FROM s WHERE s.customer = t.customer"
                " AND s.event_id = t.event_id)")["Id"]))
    assert "Hash" in plan and "Semi Join" in plan and "Nested Loop" not in plan, plan
    assert records(rd, run_ok_in(rd, db, "SELECT count(*) FROM s JOIN t USING (customer, event_id)")["Id"]) == \
        [[{"longValue": 50000}]]


def test_create_table_as_is_analyzed_as_redshift_does(rd, schema):
    # Redshift runs ANALYZE on what CREATE [TEMP] TABLE AS makes; without statistics PostgreSQL
    # plans a join against the fresh table as a nested loop (the merge's key table: quadratic).
    sid = rd.batch_execute_statement(Sqls=[
        "CREATE TEMP TABLE keys AS SELECT a FROM generate_series(1, 1000) a",
        f"CREATE TABLE {schema}.made (a) AS SELECT generate_series(1, 500)",
        "SELECT relname::text, reltuples::int FROM pg_class WHERE relname IN ('keys', 'made') ORDER BY 1",
    ], **TARGET)["Id"]
    assert wait_done(rd, sid)["Status"] == "FINISHED"
    got = {r[0]["stringValue"]: r[1]["longValue"] for r in records(rd, f"{sid}:3")}
    assert got == {"keys": 1000, "made": 500}, got  # never analyzed would read -1
    assert emu.created_as_select("CREATE TEMP TABLE k AS SELECT 1") and emu.created_as_select("create table t (a) as (select 1)")
    assert not emu.created_as_select("CREATE TABLE t (a int, b text)") and not emu.created_as_select("CREATE TABLE x (LIKE y)")


def test_add_column_takes_one_nullable_column_or_a_not_null_one_with_a_default(rd, schema):
    run_ok(rd, f"CREATE TABLE {schema}.e (id int NOT NULL, a varchar(8))")
    run_ok(rd, f"INSERT INTO {schema}.e (id, a) VALUES (1, 'x')")
    d = run(rd, f"ALTER TABLE {schema}.e ADD COLUMN b varchar(4), ADD COLUMN c int")
    assert d["Status"] == "FAILED" and d["Error"] == 'ERROR: syntax error at or near ","', d.get("Error")
    d = run(rd, f"ALTER TABLE {schema}.e ADD COLUMN b varchar(4) NOT NULL")
    assert d["Status"] == "FAILED" and d["Error"] == (
        "ERROR: ALTER TABLE ADD COLUMN defined as NOT NULL must have a non-null default expression"), d.get("Error")
    assert [r[0] for r in pg_rows(f"SELECT column_name FROM information_schema.columns WHERE table_schema = '{schema}'"
                                  " ORDER BY ordinal_position")] == ["id", "a"], "nothing added by the refused statements"
    run_ok(rd, f"ALTER TABLE {schema}.e ADD COLUMN b varchar(4) NOT NULL DEFAULT 'd'")
    run_ok(rd, f"ALTER TABLE {schema}.e ADD COLUMN c varchar(4)")
    run_ok(rd, f"ALTER TABLE {schema}.e ADD CONSTRAINT e_id UNIQUE (id)")  # a constraint is no column
    assert pg_rows(f"SELECT id, a, b, c FROM {schema}.e") == [(1, "x", "d", None)]
    d = run(rd, f"UPDATE {schema}.e SET c = 'ééé'")  # an added VARCHAR is held to its bytes too
    assert d["Error"] == "ERROR: value too long for type character varying(4)", d.get("Error")


def test_svv_columns_describes_local_tables_as_redshift_does(rd, schema):
    run_ok(rd, f"CREATE TABLE {schema}.s (id bigint NOT NULL, v varchar(64), t text, at timestamp, f double precision)")
    sid = run_ok(rd, "SELECT column_name, data_type, character_maximum_length, is_nullable FROM svv_columns"
                     f" WHERE table_schema = '{schema}' AND table_name = 's' ORDER BY ordinal_position")["Id"]
    got = [[next(iter(f.values())) if not f.get("isNull") else None for f in r] for r in records(rd, sid)]
    assert got == [["id", "bigint", None, "NO"], ["v", "character varying", 64, "YES"],
                   ["t", "character varying", 256, "YES"], ["at", "timestamp without time zone", None, "YES"],
                   ["f", "double precision", None, "YES"]], got
