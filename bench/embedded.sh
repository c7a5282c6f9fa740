#!/usr/bin/env bash
# Embedded-path benchmark (not a test). Needs the sqlite3 CLI for the reference
# (apt-get install sqlite3). Builds with the bench (release) profile.
#   BENCH_ROWS=1000000 BENCH_RSS_BYTES=$((1<<30)) bash bench/embedded.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v sqlite3 >/dev/null || { echo "the sqlite3 CLI is needed (apt-get install sqlite3)"; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wau-ingest/target}"
exec cargo bench --bench embedded
