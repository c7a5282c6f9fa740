"""The product's own Redshift SQL, run through the Data API emulator on PostgreSQL.

`wau-ingest migrate --print redshift` and `wau-ingest merge --print-sql` print the exact text
Redshift (and the Glue merge job) runs. Here it goes through boto3's `redshift-data` client to
the emulator, split and parameter-filled by the Glue job's own code (deploy/glue/merge_job.py),
one BatchExecuteStatement each, as in production. The case checked is the one an upsert-style
merge gets wrong: two files hold the same key; the newer is overwritten by a version without
it; the older file's row must come back.

Needs WAU_INGEST_BIN (the built binary); `.ci/run` sets it.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys

import psycopg
import pytest

from test_redshift_emulator import PG_DSN, TARGET, wait_done

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "glue"))
import merge_job  # noqa: E402


def product_sql(*args: str) -> str:
    binary = os.environ.get("WAU_INGEST_BIN")
    if not binary:
        pytest.fail("set WAU_INGEST_BIN to the built wau-ingest binary (.ci/run does)")
    return subprocess.run([binary, *args], check=True, capture_output=True, text=True).stdout


def batch(rd, schema: str, statements: list[str]) -> dict:
    sqls = [f"SET search_path TO {schema}"] + statements
    d = wait_done(rd, rd.batch_execute_statement(Sqls=sqls, **TARGET)["Id"])
    assert d["Status"] == "FINISHED", d.get("Error")
    return d


def merge(rd, schema: str, at: datetime.datetime) -> None:
    statements = merge_job.split_statements(product_sql("merge", "--print-sql"))
    batch(rd, schema, merge_job.render_parameters(statements, at))


def load(rd, schema: str, key: str, version: str, sequencer: str, batch_id: int, rows: list[tuple[str, str]]):
    """What a committed micro-batch leaves behind: staging rows plus the file's ledger row,
    older versions of the key marked superseded (the product's own supersede statement)."""
    values = ", ".join(
        f"('acme', '{event_id}', '2026-11-23 10:00:00', '{user}', NULL, 'login', NULL, NULL, '{key}', '{version}', {line + 2}, {batch_id})"
        for line, (event_id, user) in enumerate(rows)
    )
    batch(rd, schema, [
        f"UPDATE wau_ingest_files SET status = 'superseded', merged_at = NULL WHERE bucket = 'b' AND key = '{key}' AND version <> '{version}' AND status = 'loaded' AND sequencer <= '{sequencer}'",
        "INSERT INTO wau_ingest_files (bucket, key, version, sequencer, size_bytes, rows_read, rows_loaded, rows_rejected, status, batch_id, loaded_at, contract_version)"
        f" VALUES ('b', '{key}', '{version}', '{sequencer}', 1, {len(rows)}, {len(rows)}, 0, 'loaded', {batch_id}, '2026-11-27 00:00:00', 1)",
        "INSERT INTO wau_audit_logs_staging (customer, event_id, event_time, user_id, user_email, event_type, source_ip, user_agent, _file_key, _file_version, _line, _batch_id)"
        f" VALUES {values}",
    ])


def target(schema: str) -> list[tuple]:
    with psycopg.connect(PG_DSN) as conn:
        return conn.execute(f"SELECT event_id, user_id, _file_key FROM {schema}.wau_audit_logs ORDER BY event_id").fetchall()


def test_redshift_ddl_and_merge_run_on_postgres_through_the_data_api(rd, schema):
    ddl = [s for s in merge_job.split_statements(product_sql("migrate", "--print", "redshift"))]
    batch(rd, schema, ddl)
    batch(rd, schema, ddl)  # migrate is idempotent

    load(rd, schema, "csv/acme/a.csv", "a1", "001", 1, [("e1", "from-a"), ("e2", "from-a")])
    load(rd, schema, "csv/acme/b.csv", "b1", "002", 1, [("e2", "from-b")])
    merge(rd, schema, datetime.datetime(2026, 11, 27, 1, 0, 0))
    assert target(schema) == [("e1", "from-a", "csv/acme/a.csv"), ("e2", "from-b", "csv/acme/b.csv")]

    load(rd, schema, "csv/acme/b.csv", "b2", "003", 2, [("e3", "from-b2")])
    merge(rd, schema, datetime.datetime(2026, 11, 27, 2, 0, 0))
    assert target(schema) == [
        ("e1", "from-a", "csv/acme/a.csv"),
        ("e2", "from-a", "csv/acme/a.csv"),
        ("e3", "from-b2", "csv/acme/b.csv"),
    ]
    merge(rd, schema, datetime.datetime(2026, 11, 27, 3, 0, 0))  # nothing pending: no change
    assert len(target(schema)) == 3

    with psycopg.connect(PG_DSN) as conn:
        staged = conn.execute(f"SELECT DISTINCT _file_version FROM {schema}.wau_audit_logs_staging ORDER BY 1").fetchall()
        unmerged = conn.execute(f"SELECT COUNT(*) FROM {schema}.wau_ingest_files WHERE merged_at IS NULL").fetchone()[0]
        weekly = conn.execute(f"SELECT customer, iso_week, active_users FROM {schema}.wau_weekly_active_users").fetchall()
    assert staged == [("a1",), ("b2",)], "the superseded version left staging"
    assert unmerged == 0
    assert weekly == [("acme", "2026-W48", 2)]
