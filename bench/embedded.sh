#!/usr/bin/env bash
# Embedded-path benchmark (not a test). Needs the sqlite3 CLI and python3 (stdlib only) for the
# references, `.import` and bench/naive_loader.py (apt-get install sqlite3). Builds with the
# bench (release) profile.
#   BENCH_ROWS=1000000 BENCH_RSS_BYTES=$((1<<30)) bash bench/embedded.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v sqlite3 >/dev/null || { echo "the sqlite3 CLI is needed (apt-get install sqlite3)"; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed for bench/naive_loader.py"; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wau-ingest/target}"
exec cargo bench --bench embedded
