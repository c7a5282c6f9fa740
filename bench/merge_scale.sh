#!/usr/bin/env bash
# Does the embedded merge cost follow the change or the target's size? (Not a test.) Merges a
# file of 100,000 new rows into an empty target and into one of 10,000,000 rows, and prints the
# ratio (goal ≤ 2); see benches/merge_scale.rs for how the large state is built. Builds with the
# bench (release) profile; needs ~6 GB of disk under BENCH_DIR (default a temporary folder).
#   BENCH_TARGET_ROWS=10000000 BENCH_NEW_ROWS=100000 BENCH_NEW_KEYS=interleaved bash bench/merge_scale.sh
#   BENCH_NEW_KEYS=appended bash bench/merge_scale.sh      (new ids after every existing one)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wau-ingest/target}"
exec cargo bench --bench merge_scale
