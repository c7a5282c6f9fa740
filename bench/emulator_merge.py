#!/usr/bin/env python3
"""The product's merge on the Data API emulator, timed (a benchmark, not a test).

Stages ROWS rows of FILES loaded, unmerged files in a fresh emulator database (the product's
own Redshift DDL from `wau-ingest migrate --print redshift`), then runs the merge exactly as the
Glue job does (`wau-ingest merge --print-sql`, split and parameter-filled by
deploy/glue/merge_job.py) as one BatchExecuteStatement, and prints how long it took.

    python3 bench/emulator_merge.py --bin target/debug/wau-ingest --endpoint http://127.0.0.1:9465 \
        [--rows 30000] [--files 30]

Needs the local stack's environment (`eval "$(scripts/local-aws.sh up)"`) and boto3 (the
emulator's virtualenv has it).
"""
import argparse
import datetime
import os
import subprocess
import sys
import time
import uuid

import boto3

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "deploy", "glue"))
import merge_job  # noqa: E402

TARGET = {"WorkgroupName": "bench"}


def wait(rd, sid):
    while (d := rd.describe_statement(Id=sid))["Status"] not in ("FINISHED", "FAILED", "ABORTED"):
        time.sleep(0.05)
    if d["Status"] != "FINISHED":
        raise SystemExit(f"statement {sid} {d['Status']}: {d.get('Error')}")
    return d


def run(rd, database, sql):
    return wait(rd, rd.execute_statement(Sql=sql, Database=database, **TARGET)["Id"])


def batch(rd, database, sqls):
    return wait(rd, rd.batch_execute_statement(Sqls=sqls, Database=database, **TARGET)["Id"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL_REDSHIFT_DATA"))
    ap.add_argument("--rows", type=int, default=30000)
    ap.add_argument("--files", type=int, default=30)
    ap.add_argument("--shared-keys", action="store_true",
                    help="every file holds the same event ids (each key has FILES candidates), not one key per row")
    args = ap.parse_args()
    rd = boto3.client("redshift-data", endpoint_url=args.endpoint, region_name="us-east-1")
    database = f"bench_merge_{uuid.uuid4().hex[:10]}"
    run(rd, "test", f"CREATE DATABASE {database}")
    try:
        ddl = subprocess.run([args.bin, "migrate", "--print", "redshift"], check=True, capture_output=True,
                             text=True).stdout
        batch(rd, database, [s.strip() for s in ddl.split(";\n") if s.strip()])
        per_file = args.rows // args.files
        run(rd, database, f"""
            INSERT INTO wau_ingest_files (bucket, key, version, sequencer, size_bytes, rows_read, rows_loaded,
                rows_rejected, status, reason, batch_id, event_at, loaded_at, merged_at, contract_version)
            SELECT 'b', 'csv/acme/f' || i || '.csv', 'v1', lpad(i::text, 12, '0'), 1, {per_file}, {per_file}, 0,
                   'loaded', NULL, i, now(), now(), NULL, 2
            FROM generate_series(1, {args.files}) i""")
        run(rd, database, f"""
            INSERT INTO wau_audit_logs_staging (customer, event_id, event_time, user_id, user_email, event_type,
                source_ip, user_agent, _file_key, _file_version, _line, _batch_id)
            SELECT 'acme', 'e' || {"r" if args.shared_keys else f"((f - 1) * {per_file} + r)"}, now(), 'u' || (r % 997),
                   NULL, 'login', NULL, NULL,
                   'csv/acme/f' || f || '.csv', 'v1', r + 1, f
            FROM generate_series(1, {args.files}) f, generate_series(1, {per_file}) r""")
        text = subprocess.run([args.bin, "merge", "--print-sql"], check=True, capture_output=True, text=True).stdout
        sqls = merge_job.render_parameters(merge_job.split_statements(text),
                                           datetime.datetime.now(datetime.timezone.utc))
        started = time.monotonic()
        batch(rd, database, sqls)
        took = time.monotonic() - started
        target = rd.get_statement_result(Id=run(rd, database, "SELECT COUNT(*) FROM wau_audit_logs")["Id"])
        count = target["Records"][0][0]["longValue"]
        keys = f"{per_file} keys in every file" if args.shared_keys else "every row its own key"
        print(f"merge of {args.rows} staged rows ({args.files} files, {keys}): {took:.2f} s, "
              f"{count} target rows")
    finally:
        run(rd, "test", f"DROP DATABASE IF EXISTS {database}")


if __name__ == "__main__":
    main()
