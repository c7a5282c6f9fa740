"""The reconcile/replay memory benchmark (not a test), run by bench/reconcile.sh.

local  N small CSV files (one row each) in a folder sharded 1,000 to a subfolder, and a SQLite
       ledger that records all but every `--missing-every`-th of them. The ledger's DDL is the
       product's (`wau-ingest migrate`); its rows are copies of a row the product itself wrote
       (`wau-ingest replay` of the first file), with each file's key, content hash, mtime
       sequencer and size, stamped merged. Then, under /usr/bin/time -v: `wau-ingest reconcile`
       (finds and loads the missing files, merges) and `wau-ingest replay <folder>/csv/` (every
       file listed, each a duplicate by its stamp).
s3     N objects on the local stack's S3 (moto) under csv/s0/ ... csv/s3/, the ledger built
       from the listing the same way (sequencer = LastModified in seconds, version = etag),
       then `wau-ingest reconcile` over csv/s0/ (a quarter of the objects) and over csv/ (all):
       the peak RSS of the two shows whether memory grows with the listing.
Prints one line per run: listed, missing, seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HEADER = "customer,event_id,event_time,user_id,user_email,event_type,source_ip,user_agent"


def row(i: int) -> bytes:
    return f"{HEADER}\nacme,e{i},2026-11-23T10:00:00Z,u{i % 5000},,login,10.0.0.1,bench\n".encode()


def timed(cmd: list[str], env: dict) -> tuple[str, float, float]:
    """Runs cmd under GNU time: (stdout, seconds, peak RSS in MiB)."""
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-4000:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", p.stderr).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    return p.stdout, secs, kib / 1024


def report(name: str, out: str, secs: float, mib: float, limit_mib: float) -> bool:
    found = re.search(r"(\d+) object\(s\) in \S+ that the ledger lacks, of (\d+) listed", out)
    tally = re.search(r"files new (\d+) / duplicate (\d+)", out)
    what = (f"listed {found.group(2)}, missing {found.group(1)}" if found else "")
    if tally:
        what += f"{', ' if what else ''}new {tally.group(1)}, duplicate {tally.group(2)}"
    ok = mib < limit_mib
    print(f"{name:<28} {what:<48} {secs:8.1f} s {mib:8.1f} MiB  {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


def template_row(db: str, bucket: str) -> tuple[list[str], list]:
    c = sqlite3.connect(db)
    cur = c.execute("SELECT * FROM wau_ingest_files WHERE bucket = ?", [bucket])
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    if len(rows) != 1:
        sys.exit(f"expected the one ledger row the product wrote, found {len(rows)}")
    c.close()
    return names, list(rows[0])


def insert_ledger(db: str, names: list[str], template: list, rows) -> int:
    """Copies of `template` with bucket/key/version/sequencer/size_bytes from `rows`, merged."""
    idx = {n: i for i, n in enumerate(names)}
    template[idx["merged_at"]] = template[idx["loaded_at"]]
    c = sqlite3.connect(db)
    sql = f"INSERT INTO wau_ingest_files ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    n = 0

    def rows_out():
        nonlocal n
        for bucket, key, version, sequencer, size in rows:
            r = list(template)
            r[idx["bucket"]], r[idx["key"]], r[idx["version"]] = bucket, key, version
            r[idx["sequencer"]], r[idx["size_bytes"]] = sequencer, size
            n += 1
            yield r

    with c:
        c.executemany(sql, rows_out())
    c.close()
    return n


def local(args) -> bool:
    root = os.path.realpath(args.dir)
    inbox, db = os.path.join(root, "inbox"), os.path.join(root, "wau.sqlite")
    env = dict(os.environ, WAU_INGEST_SOURCE_DIR=inbox, WAU_INGEST_WAREHOUSE_SQLITE_PATH=db, RUST_LOG="warn")
    t0 = time.monotonic()
    keys = []
    for i in range(args.objects):
        d = os.path.join(inbox, "csv", "acme", f"d{i // 1000:04d}")
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        key = f"csv/acme/d{i // 1000:04d}/f{i:07d}.csv"
        with open(os.path.join(inbox, key), "wb") as f:
            f.write(row(i))
        keys.append(key)
    print(f"local: wrote {args.objects} files in {time.monotonic() - t0:.1f} s", flush=True)
    subprocess.run([args.bin, "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([args.bin, "replay", os.path.join(inbox, keys[0])], env=env, check=True, capture_output=True)
    bucket = "file://" + os.path.realpath(inbox)
    names, template = template_row(db, bucket)

    def recorded():
        for i, key in enumerate(keys):
            if i == 0 or i % args.missing_every == 1:
                continue  # the first file is the template; these are the missing ones
            path = os.path.join(inbox, key)
            st = os.stat(path)
            with open(path, "rb") as f:
                version = "sha256:" + hashlib.sha256(f.read()).hexdigest()
            yield bucket, key, version, str(st.st_mtime_ns).rjust(32, "0"), st.st_size

    t0 = time.monotonic()
    n = insert_ledger(db, names, template, recorded())
    print(f"local: ledger of {n + 1} rows in {time.monotonic() - t0:.1f} s", flush=True)
    ok = report("reconcile (local)", *timed([args.bin, "reconcile"], env), args.limit_mib)
    ok &= report("replay (local)", *timed([args.bin, "replay", os.path.join(inbox, "csv")], env), args.limit_mib)
    return ok


def s3(args) -> bool:
    import boto3
    from botocore.config import Config

    bucket = f"wau-reconcile-bench-{os.getpid()}"
    cfg = Config(s3={"addressing_style": "path"}, max_pool_connections=32)
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"], config=cfg)
    client.create_bucket(Bucket=bucket)
    keys = [f"csv/s{i % 4}/f{i:07d}.csv" for i in range(args.objects)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda ik: client.put_object(Bucket=bucket, Key=ik[1], Body=row(ik[0])), enumerate(keys)))
    print(f"s3: put {len(keys)} objects in {time.monotonic() - t0:.1f} s", flush=True)
    root = os.path.realpath(args.dir)
    db = os.path.join(root, "wau-s3.sqlite")
    env = dict(os.environ, WAU_INGEST_SOURCE_KIND="sqs", WAU_INGEST_SOURCE_QUEUE_URL="http://127.0.0.1:1/unused",
               WAU_INGEST_SOURCE_BUCKET=bucket, WAU_INGEST_WAREHOUSE_SQLITE_PATH=db, RUST_LOG="warn")
    subprocess.run([args.bin, "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([args.bin, "replay", f"s3://{bucket}/{keys[0]}"], env=env, check=True, capture_output=True)
    names, template = template_row(db, f"s3://{bucket}")
    # Spread over the four prefixes (a stride would fall in one of them).
    missing = {k for k in keys[1:] if int(hashlib.sha256(k.encode()).hexdigest(), 16) % args.missing_every == 0}

    def recorded():
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="csv/"):
            for o in page.get("Contents", []):
                if o["Key"] == keys[0] or o["Key"] in missing:
                    continue
                seq = str(int(o["LastModified"].timestamp())).rjust(32, "0")
                yield f"s3://{bucket}", o["Key"], "etag:" + o["ETag"].strip('"'), seq, o["Size"]

    n = insert_ledger(db, names, template, recorded())
    print(f"s3: ledger of {n + 1} rows", flush=True)
    ok = True
    for prefix in ["csv/s0/", "csv/"]:
        run_env = dict(env, WAU_INGEST_SOURCE_PREFIX=prefix)
        ok &= report(f"reconcile (s3, {prefix})", *timed([args.bin, "reconcile"], run_env), args.limit_mib)
    return ok


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["local", "s3"])
    p.add_argument("--bin", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--objects", type=int, default=1_000_000)
    p.add_argument("--missing-every", type=int, default=100)
    p.add_argument("--limit-mib", type=float, default=100.0)
    args = p.parse_args()
    ok = local(args) if args.mode == "local" else s3(args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
