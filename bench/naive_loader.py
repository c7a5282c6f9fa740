"""The naive loader (a reference for benches/embedded.rs, not a tool): what a team writes instead
of this service to get an audit-log CSV into SQLite. Python's csv module reads the file, sqlite3's
executemany inserts every row after the header into a table with the contract's columns, in one
transaction: no validation, no dedupe, no ledger, no provenance. Standard library only.

    python3 bench/naive_loader.py FILE.csv DB.sqlite     # prints the rows inserted
"""

import csv
import sqlite3
import sys

DDL = """CREATE TABLE t (customer TEXT NOT NULL, event_id TEXT NOT NULL, event_time TEXT NOT NULL,
  user_id TEXT NOT NULL, user_email TEXT, event_type TEXT NOT NULL, source_ip TEXT, user_agent TEXT)"""


def main() -> int:
    path, db_path = sys.argv[1], sys.argv[2]
    db = sqlite3.connect(db_path)
    db.execute(DDL)
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        next(rows)  # the header
        with db:  # one transaction
            inserted = db.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows).rowcount
    db.close()
    print(inserted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
