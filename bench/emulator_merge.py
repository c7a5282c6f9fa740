#!/usr/bin/env python3
"""The product's merge on the Data API emulator, timed (a benchmark, not a test).

Every database is a fresh emulator database holding the product's own Redshift DDL
(`wau-ingest migrate --print redshift`, its sort and distribution keys included), and every
merge is the text the Glue job runs (`wau-ingest merge --print-sql`, split and parameter-filled
by deploy/glue/merge_job.py) as one BatchExecuteStatement. Two measures, each printed with its
ratio:

* copy: ROWS rows in FILES files, as gzip CSV parts named by a manifest in S3, loaded into
  staging by the product's COPY (`Sql::copy_staging`'s text) through the emulator, then merged
  into the empty target. Goal: merge <= 2 x COPY.
* change: CHANGE staged rows (half of them new versions of keys the base holds, half new keys)
  merged into an empty target, and the same rows merged into a target (and staging) already
  holding BASE rows. Goal: the second merge <= 2 x the first. The base is built the way merges
  leave it (staging rows of merged files, the target their winners), then analyzed, as
  Redshift's automatic analyze would have.

    python3 bench/emulator_merge.py --bin target/debug/wau-ingest [--measure copy|change|all] \
        [--rows 1000000] [--files 100] [--base 10000000] [--change 100000]

`--measure staged [--rows N --files F --shared-keys]` is the older single measure: rows
inserted into staging (no COPY), merged into an empty target.

Needs the local stack's environment (`eval "$(scripts/local-aws.sh up)"`) and boto3 (the
emulator's virtualenv has it).
"""
import argparse
import datetime
import gzip
import io
import json
import os
import subprocess
import sys
import time
import uuid

import boto3

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "deploy", "glue"))
import merge_job  # noqa: E402

TARGET = {"WorkgroupName": "bench"}
STAGING_COLUMNS = ("customer, event_id, event_time, user_id, user_email, event_type, source_ip, user_agent,"
                   " _file_key, _file_version, _line, _batch_id")


def wait(rd, sid):
    delay = 0.05
    while (d := rd.describe_statement(Id=sid))["Status"] not in ("FINISHED", "FAILED", "ABORTED"):
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    if d["Status"] != "FINISHED":
        raise SystemExit(f"statement {sid} {d['Status']}: {d.get('Error')}")
    return d


def run(rd, database, sql):
    return wait(rd, rd.execute_statement(Sql=sql, Database=database, **TARGET)["Id"])


def batch(rd, database, sqls):
    return wait(rd, rd.batch_execute_statement(Sqls=sqls, Database=database, **TARGET)["Id"])


def scalar(rd, database, sql):
    return rd.get_statement_result(Id=run(rd, database, sql)["Id"])["Records"][0][0]["longValue"]


class Bench:
    def __init__(self, args):
        self.args = args
        self.rd = boto3.client("redshift-data", endpoint_url=args.endpoint, region_name="us-east-1")
        self.databases = []
        self.ddl = [s.strip() for s in merge_job.split_statements(self.product("migrate", "--print", "redshift"))]
        self.merge_sql = merge_job.split_statements(self.product("merge", "--print-sql"))

    def product(self, *argv):
        return subprocess.run([self.args.bin, *argv], check=True, capture_output=True, text=True).stdout

    def database(self):
        name = f"bench_merge_{uuid.uuid4().hex[:10]}"
        run(self.rd, "test", f"CREATE DATABASE {name}")
        self.databases.append(name)
        batch(self.rd, name, self.ddl)
        return name

    def drop(self):
        for name in self.databases:
            run(self.rd, "test", f"DROP DATABASE IF EXISTS {name}")

    def ledger(self, db, files, first_batch, key_prefix, rows_per_file, merged):
        """One loaded ledger row per file: key `<prefix><f>`, batch and sequencer first_batch + f."""
        run(self.rd, db, f"""
            INSERT INTO wau_ingest_files (bucket, key, version, sequencer, size_bytes, rows_read, rows_loaded,
                rows_rejected, status, reason, batch_id, event_at, loaded_at, merged_at, contract_version)
            SELECT 'b', '{key_prefix}' || f, 'v1', lpad(({first_batch} + f)::text, 12, '0'), 1, {rows_per_file},
                   {rows_per_file}, 0, 'loaded', NULL, {first_batch} + f, now(), now(),
                   {"now()" if merged else "NULL"}, 2
            FROM generate_series(1, {files}) f""")

    def merge(self, db):
        """Runs the merge; (seconds, seconds per step, rows in the target)."""
        sqls = merge_job.render_parameters(self.merge_sql, datetime.datetime.now(datetime.timezone.utc))
        started = time.monotonic()
        d = batch(self.rd, db, sqls)
        took = time.monotonic() - started
        steps = [(sub.get("QueryString", sqls[i]).split()[0:3], sub.get("Duration", -1) / 1e9)
                 for i, sub in enumerate(d.get("SubStatements", []))]
        return took, steps, scalar(self.rd, db, "SELECT COUNT(*) FROM wau_audit_logs")


def row_sql(i, file_key, line, batch_id):
    """A staged row of key number `i` (ten customers, event ids e<i>), as SQL over `i`."""
    return (f"'c' || ({i} % 10), 'e' || {i}, TIMESTAMP '2026-11-01 00:00:00' + ({i} % 600000) * INTERVAL '1 second',"
            f" 'u' || ({i} % 997), NULL, 'login', NULL, NULL, {file_key}, 'v1', {line}, {batch_id}")


def csv_row(i, f, line):
    return (f"c{i % 10},e{i},2026-11-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:{i % 59:02d},u{i % 997},,login,,,"
            f"csv/copy/f{f},v1,{line},{f}\n")


def measure_copy(b, rows, files):
    """ROWS rows by the product's COPY, then the merge of them into the empty target."""
    db = b.database()
    s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"), region_name="us-east-1")
    bucket = f"bench-merge-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    per_file, parts, entries = rows // files, 4, []
    for p in range(parts):
        out = io.StringIO()
        for f in range(1 + p * files // parts, 1 + (p + 1) * files // parts):
            for r in range(per_file):
                out.write(csv_row((f - 1) * per_file + r + 1, f, r + 2))
        key = f"staging/1/part-{p:05d}.csv.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(out.getvalue().encode(), 6))
        entries.append({"url": f"s3://{bucket}/{key}", "mandatory": True})
    s3.put_object(Bucket=bucket, Key="staging/1/manifest.json", Body=json.dumps({"entries": entries}).encode())
    b.ledger(db, files, 0, "csv/copy/f", per_file, merged=False)
    copy = (f"COPY wau_audit_logs_staging ({STAGING_COLUMNS}) FROM 's3://{bucket}/staging/1/manifest.json'"
            " IAM_ROLE default FORMAT AS CSV GZIP MANIFEST TIMEFORMAT 'YYYY-MM-DD HH:MI:SS' DATEFORMAT 'YYYY-MM-DD'"
            " NULL AS '' MAXERROR 0 COMPUPDATE OFF STATUPDATE OFF")
    started = time.monotonic()
    run(b.rd, db, copy)
    copy_s = time.monotonic() - started
    merge_s, steps, count = b.merge(db)
    assert count == rows, f"the merge left {count} target rows, not {rows}"
    print(f"copy:   COPY of {rows} rows ({files} files, {parts} gzip parts): {copy_s:.2f} s; "
          f"merge of them into the empty target: {merge_s:.2f} s; merge / COPY = {merge_s / copy_s:.2f} (goal <= 2)")
    print_steps(steps)
    return merge_s / copy_s


def stage_change(b, db, base, change):
    """CHANGE staged rows in 100 unmerged files: keys spread evenly over the base's (new versions
    of base keys when the base is there) and keys after the base's (new keys)."""
    files = 100
    per_file = change // files
    b.ledger(db, files, 10**9, "csv/change/f", per_file, merged=False)
    half = files // 2
    stride = max(base // (change // 2), 1)
    # files 1..50 hold keys stride * j (j = 1 .. change/2, all <= base), files 51..100 keys base + j
    run(b.rd, db, f"""
        INSERT INTO wau_audit_logs_staging ({STAGING_COLUMNS})
        SELECT {row_sql("k", "'csv/change/f' || f", "r + 1", f"{10**9} + f")}
        FROM (SELECT f, r, CASE WHEN f <= {half} THEN {stride} * ((f - 1) * {per_file} + r)
                                ELSE {base} + (f - {half} - 1) * {per_file} + r END AS k
              FROM generate_series(1, {files}) f, generate_series(1, {per_file}) r) g""")
    # The product's COPY leaves the zone maps of what it loaded (the emulator summarizes its BRIN
    # indexes); rows inserted here get theirs from VACUUM, as Redshift's automatic vacuum would.
    run(b.rd, db, "VACUUM wau_audit_logs_staging")


def measure_change(b, base, change):
    """CHANGE rows merged into an empty target, then into a target of BASE rows."""
    empty = b.database()
    stage_change(b, empty, base, change)
    empty_s, empty_steps, count = b.merge(empty)
    assert count == change, f"{count} target rows, not {change}"
    full = b.database()
    files = max(base // 10000, 1)
    per_file = base // files
    started = time.monotonic()
    b.ledger(full, files, 0, "csv/base/f", per_file, merged=True)
    run(b.rd, full, f"""
        INSERT INTO wau_audit_logs_staging ({STAGING_COLUMNS})
        SELECT {row_sql("((f - 1) * %d + r)" % per_file, "'csv/base/f' || f", "r + 1", "f")}
        FROM generate_series(1, {files}) f, generate_series(1, {per_file}) r""")
    cols = STAGING_COLUMNS.replace(", _batch_id", "").replace("_file_key, _file_version, _line", "")
    run(b.rd, full, f"""
        INSERT INTO wau_audit_logs ({cols} _file_key, _file_version, _line, _loaded_at)
        SELECT {cols} _file_key, _file_version, _line, now() FROM wau_audit_logs_staging""")
    for table in ("wau_audit_logs", "wau_audit_logs_staging", "wau_ingest_files"):
        run(b.rd, full, f"VACUUM {table}")
        run(b.rd, full, f"ANALYZE {table}")
    stage_change(b, full, base, change)
    print(f"change: base of {base} rows built in {time.monotonic() - started:.0f} s (not timed below)")
    full_s, full_steps, count = b.merge(full)
    assert count == base + change // 2, f"{count} target rows, not {base + change // 2}"
    print(f"change: merge of {change} staged rows (half new versions of existing keys, half new keys) into an"
          f" empty target: {empty_s:.2f} s; into a target of {base} rows: {full_s:.2f} s;"
          f" ratio = {full_s / empty_s:.2f} (goal <= 2)")
    print("  into the empty target:")
    print_steps(empty_steps)
    print(f"  into the target of {base} rows:")
    print_steps(full_steps)
    return full_s / empty_s


def print_steps(steps):
    for words, secs in steps:
        if secs >= 0.05:
            print(f"    {' '.join(words):<40} {secs:7.2f} s")


def measure_staged(b, rows, files, shared_keys):
    db = b.database()
    per_file = rows // files
    b.ledger(db, files, 0, "csv/acme/f", per_file, merged=False)
    run(b.rd, db, f"""
        INSERT INTO wau_audit_logs_staging ({STAGING_COLUMNS})
        SELECT 'acme', 'e' || {"r" if shared_keys else f"((f - 1) * {per_file} + r)"}, now(), 'u' || (r % 997),
               NULL, 'login', NULL, NULL, 'csv/acme/f' || f, 'v1', r + 1, f
        FROM generate_series(1, {files}) f, generate_series(1, {per_file}) r""")
    took, steps, count = b.merge(db)
    keys = f"{per_file} keys in every file" if shared_keys else "every row its own key"
    print(f"merge of {rows} staged rows ({files} files, {keys}): {took:.2f} s, {count} target rows")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL_REDSHIFT_DATA"))
    ap.add_argument("--measure", choices=("copy", "change", "all", "staged"), default="all")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--base", type=int, default=10_000_000)
    ap.add_argument("--change", type=int, default=100_000)
    ap.add_argument("--keep", action="store_true", help="keep the databases (their names are printed)")
    ap.add_argument("--shared-keys", action="store_true",
                    help="staged: every file holds the same event ids (each key has FILES candidates)")
    args = ap.parse_args()
    b = Bench(args)
    try:
        if args.measure == "staged":
            measure_staged(b, args.rows, args.files, args.shared_keys)
            return
        if args.measure in ("copy", "all"):
            measure_copy(b, args.rows, args.files)
        if args.measure in ("change", "all"):
            measure_change(b, args.base, args.change)
    finally:
        if args.keep:
            print("kept:", " ".join(b.databases))
        else:
            b.drop()


if __name__ == "__main__":
    main()
