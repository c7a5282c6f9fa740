#!/usr/bin/env bash
# Where the embedded merge spends its time (not a test): stage 1 M rows with the release
# binary, then time, with the sqlite3 CLI, the steps of the merge on SQLite:
#   collecting the touched keys, the join that finds their candidate rows, and the same join
#   with the ROW_NUMBER() winner selection. Needs the sqlite3 CLI.
#   bash bench/merge-anatomy.sh            (BENCH_ROWS=1000000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v sqlite3 >/dev/null || { echo "the sqlite3 CLI is needed (apt-get install sqlite3)"; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wau-ingest/target}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT

# The benchmark's generator writes the input (and builds the release binary).
BENCH_PARSE_ONLY=1 BENCH_DIR="$dir" cargo bench -q --bench embedded >/dev/null
bin="$CARGO_TARGET_DIR/release/wau-ingest"
"$bin" --db "$dir/m.sqlite" replay "$dir/inbox/csv/acme/bench.csv"

J="FROM wau_merge_keys k CROSS JOIN wau_audit_logs_staging s CROSS JOIN wau_ingest_files f
   WHERE k.customer = s.customer AND k.event_id = s.event_id AND f.key = s._file_key
     AND f.version = s._file_version AND f.batch_id = s._batch_id AND f.status = 'loaded'"
sqlite3 "$dir/m.sqlite" <<SQL
.timer on
.print -- collect the touched keys
CREATE TEMP TABLE wau_merge_keys AS SELECT DISTINCT s.customer, s.event_id FROM wau_ingest_files f JOIN wau_audit_logs_staging s ON f.key = s._file_key AND f.version = s._file_version AND f.batch_id = s._batch_id WHERE f.merged_at IS NULL;
CREATE INDEX wau_merge_keys_key ON wau_merge_keys (customer, event_id);
.print -- the join alone
SELECT COUNT(*) $J;
.print -- the join with the ROW_NUMBER() winner selection
SELECT COUNT(*) FROM (SELECT s.*, ROW_NUMBER() OVER (PARTITION BY s.customer, s.event_id ORDER BY f.sequencer DESC, f.batch_id DESC, s._line DESC, s._file_key DESC) AS rn $J) w WHERE rn = 1;
SQL
