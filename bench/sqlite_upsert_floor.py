#!/usr/bin/env python3
"""The engine's own floor under `bench/merge_scale.sh` (a benchmark, not a test).

What does SQLite itself charge for putting NEW rows with new keys into a key-unique table
that already holds BASE rows, against putting them into an empty one? No staging, no ledger,
no dedupe: one `INSERT OR REPLACE … SELECT` of the rows from a temporary table into the
product's own target table (its DDL from `wau-ingest migrate --print sqlite`: keyed by the
dedupe key, WITHOUT ROWID), with the product's connection settings (WAL, synchronous FULL,
a 16 MiB page cache). The keys are placed as `benches/merge_scale.rs` places them:
`interleaved` (each new key between existing ones, as random ids fall) or `appended` (after
every existing one, as time-ordered ids fall). Prints both times and their ratio: the ratio
the product's merge is held to by issue 10 (≤ 2), paid by the engine alone.

    python3 bench/sqlite_upsert_floor.py --bin target/debug/wau-ingest [--base 10000000] \
        [--new 100000] [--keys interleaved|appended] [--layout keyed|rowid] [--dir /tmp/floor]

`--layout rowid` measures the same on another layout than the product's: a rowid table (rows in
arrival order) with a unique index on the dedupe key instead of the keyed table.
"""
import argparse
import os
import re
import sqlite3
import subprocess
import tempfile
import time

SETTINGS = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -16384; PRAGMA temp_store = FILE;"


def target_ddl(binary, layout):
    out = subprocess.run([binary, "migrate", "--print", "sqlite"], check=True, capture_output=True, text=True).stdout
    for stmt in out.split(";\n"):
        stmt = stmt.strip()
        if re.match(r"CREATE TABLE IF NOT EXISTS wau_audit_logs\b", stmt):
            if layout == "rowid":
                if " WITHOUT ROWID" not in stmt or "PRIMARY KEY (" not in stmt:
                    raise SystemExit(f"the target is no longer a keyed table: {stmt}")
                stmt = stmt.replace(" WITHOUT ROWID", "").replace("PRIMARY KEY (", "UNIQUE (")
            return stmt
    raise SystemExit("no CREATE TABLE wau_audit_logs in `migrate --print sqlite`")


def columns(conn):
    return [r[1] for r in conn.execute("PRAGMA table_info(wau_audit_logs)")]


def values(eid, n):
    """SQL for a value of each target column, shaped like benches/merge_scale.rs's rows, for event
    id expression `eid` of row number `n` (SQL expressions)."""
    return {
        "customer": "'acme'",
        "event_id": eid,
        "event_time": f"printf('2026-11-16T10:%02d:%02d.%06dZ', {n} % 60, ({n} / 60) % 60, {n} % 1000000)",
        "user_id": f"printf('user-%06d', {n} % 50000)",
        "user_email": f"printf('user-%06d@example.com', {n} % 50000)",
        "event_type": f"CASE {n} % 4 WHEN 0 THEN 'login' WHEN 1 THEN 'view' WHEN 2 THEN 'export' ELSE 'logout' END",
        "source_ip": f"printf('10.%d.%d.%d', {n} % 256, ({n} / 256) % 256, {n} % 200)",
        "user_agent": "'Mozilla/5.0 (X11; Linux x86_64) wau-bench/1.0'",
        "_file_key": f"printf('csv/acme/bulk-%d.csv', {n} / 100000)",
        "_file_version": f"printf('sha256:%064d', {n} / 100000)",
        "_line": f"{n} % 100000 + 2",
        "_loaded_at": "'2026-11-20T00:00:00Z'",
    }


def generated(cols, count, eid):
    """`INSERT … SELECT` of `count` generated rows, in row-number order."""
    v = values(eid, "n")
    exprs = ", ".join(v.get(c, "'x'") for c in cols)
    return (f"WITH RECURSIVE r(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM r WHERE n + 1 < {count}) "
            f"SELECT {exprs} FROM r")


def fresh(path, ddl):
    for ext in ("", "-wal", "-shm"):
        try:
            os.remove(path + ext)
        except FileNotFoundError:
            pass
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SETTINGS)
    conn.execute(ddl)
    return conn


def stage_new(conn, cols, new, prefix):
    conn.execute("CREATE TEMP TABLE new_rows AS SELECT * FROM wau_audit_logs WHERE 0")
    conn.execute(f"INSERT INTO new_rows ({', '.join(cols)}) " + generated(cols, new, f"printf('{prefix}-%08d', n)"))


def upsert(conn, cols):
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(f"INSERT OR REPLACE INTO wau_audit_logs ({', '.join(cols)}) SELECT {', '.join(cols)} FROM new_rows")
    conn.execute("COMMIT")
    return time.perf_counter() - started


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--base", type=int, default=10_000_000)
    ap.add_argument("--new", type=int, default=100_000)
    ap.add_argument("--keys", choices=["interleaved", "appended"], default="interleaved")
    ap.add_argument("--layout", choices=["keyed", "rowid"], default="keyed")
    ap.add_argument("--dir")
    a = ap.parse_args()
    ddl = target_ddl(a.bin, a.layout)
    folder = a.dir or tempfile.mkdtemp(prefix="upsert-floor-")
    os.makedirs(folder, exist_ok=True)
    prefix = "bench" if a.keys == "interleaved" else "zz"

    empty = fresh(os.path.join(folder, "empty.sqlite"), ddl)
    cols = columns(empty)
    stage_new(empty, cols, a.new, prefix)
    into_empty = upsert(empty, cols)
    empty.close()

    path = os.path.join(folder, "large.sqlite")
    large = fresh(path, ddl)
    copies = max(a.base // a.new, 1)
    started = time.perf_counter()
    large.execute("BEGIN")
    # Key order, as a bulk build leaves a keyed table: copy c of new key i is `bench-i-c`.
    large.execute(
        f"INSERT INTO wau_audit_logs ({', '.join(cols)}) "
        + generated(cols, a.new * copies, f"printf('bench-%08d-%03d', n / {copies}, n % {copies})")
    )
    large.execute("COMMIT")
    large.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    large.close()
    held = a.new * copies
    print(f"base: {held} rows, {os.path.getsize(path) / 1e6:.0f} MB, built in {time.perf_counter() - started:.1f} s", flush=True)
    large = sqlite3.connect(path, isolation_level=None)
    large.executescript(SETTINGS)
    stage_new(large, cols, a.new, prefix)
    into_large = upsert(large, cols)
    large.close()
    print(f"INSERT OR REPLACE of {a.new} new rows ({a.keys} keys) into the {a.layout} target:")
    print(f"  empty target          {into_empty:8.2f} s")
    print(f"  target of {held:<11} {into_large:8.2f} s")
    print(f"  ratio                 {into_large / into_empty:8.2f}  (the engine's own; the product's merge goal is <= 2)")
    if not a.dir:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)


if __name__ == "__main__":
    main()
