#!/usr/bin/env bash
# Peak-memory benchmark of `reconcile` and `replay` over large listings (not a test; CI does not
# run it). See bench/reconcile_bench.py for what it builds.
#
#   bash bench/reconcile.sh                 # local: 1,000,000 files, a ledger of ~990,000 rows
#   BENCH_OBJECTS=100000 bash bench/reconcile.sh
#   BENCH_S3_OBJECTS=20000 bash bench/reconcile.sh s3   # on a private moto stack (free ports)
#   BENCH_BIN=path/to/wau-ingest ...         # skip the release build
# BENCH_DIR (default $TMPDIR or /tmp) holds the generated folder and ledger, deleted afterwards
# unless BENCH_KEEP is set;
# BENCH_MEMORY_LIMIT_MIB (default 100) is the PASS/FAIL line for each run's peak RSS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ -x /usr/bin/time ] || { echo "GNU time is needed (apt-get install time)"; exit 2; }
mode="${1:-local}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wau-ingest/target}"
BIN="${BENCH_BIN:-}"
if [[ -z "$BIN" ]]; then
    cargo build --release --locked --bin wau-ingest >&2
    BIN="$CARGO_TARGET_DIR/release/wau-ingest"
fi
dir=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/wau-reconcile.XXXXXX")
cleanup() { if [[ -n "${BENCH_KEEP:-}" ]]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi; }
limit="${BENCH_MEMORY_LIMIT_MIB:-100}"
case "$mode" in
    local)
        trap cleanup EXIT
        python3 bench/reconcile_bench.py local --bin "$BIN" --dir "$dir" \
            --objects "${BENCH_OBJECTS:-1000000}" --limit-mib "$limit"
        ;;
    s3)
        free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
        export XDG_RUNTIME_DIR="$dir/xdg" WAU_MOTO_PORT="$(free_port)" WAU_EMULATOR_PORT="$(free_port)"
        mkdir -p "$XDG_RUNTIME_DIR"
        trap 'scripts/local-aws.sh down >/dev/null 2>&1 || true; cleanup' EXIT
        eval "$(scripts/local-aws.sh up)"
        "$WAU_EMULATOR_PYTHON" bench/reconcile_bench.py s3 --bin "$BIN" --dir "$dir" \
            --objects "${BENCH_S3_OBJECTS:-20000}" --limit-mib "$limit"
        ;;
    *)
        echo "usage: $0 [local|s3]" >&2
        exit 2
        ;;
esac
