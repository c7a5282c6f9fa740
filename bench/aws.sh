#!/usr/bin/env bash
# The AWS-path benchmark (not a test): a private local stack (moto + the Data API emulator over
# PostgreSQL) on free ports, a release build of wau-ingest, then bench/aws_bench.py:
# 200 files x 5000 rows end to end against references measured in the same run on the same
# objects: (a) one Data API COPY of every raw object under the prefix, (b) a per-notification
# loader (4 workers: receive, Data API COPY of that object, poll, delete), and the limit (the same
# objects read from the S3 endpoint + PostgreSQL COPY FROM STDIN of the same rows); then the
# event -> staging-commit lag p50/p99 under that load.
#
#   bash bench/aws.sh                    # BENCH_FILES, BENCH_ROWS, BENCH_BATCH_MAX_AGE_SECS to vary
#   BENCH_BIN=path/to/wau-ingest bash bench/aws.sh   # skip the release build
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wau-ingest/target}"
BIN="${BENCH_BIN:-}"
if [[ -z "$BIN" ]]; then
    cargo build --release --locked --bin wau-ingest >&2
    BIN="$CARGO_TARGET_DIR/release/wau-ingest"
fi
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export XDG_RUNTIME_DIR="$(mktemp -d)" WAU_MOTO_PORT="$(free_port)" WAU_EMULATOR_PORT="$(free_port)"
trap 'scripts/local-aws.sh down >/dev/null 2>&1 || true; rm -rf "$XDG_RUNTIME_DIR"' EXIT
eval "$(scripts/local-aws.sh up)"
"$WAU_EMULATOR_PYTHON" bench/aws_bench.py --bin "$BIN" --files "${BENCH_FILES:-200}" --rows "${BENCH_ROWS:-5000}"
