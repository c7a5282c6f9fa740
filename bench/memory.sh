#!/usr/bin/env bash
# Peak-memory benchmark of `wau-ingest validate` (not a test; CI does not run it).
#
# Memory is bounded per record, not only per file: whatever the input, the validator holds one
# input buffer, at most one record (limits.max_record_bytes) and one chunk of good rows. This
# generates, streaming into a temporary folder that is deleted afterwards:
#   bomb        a gzip bomb of one line of BENCH_MEMORY_BYTES (default 1 GiB), ~1 MiB on disk
#   single-line a plain file of one line of BENCH_MEMORY_BYTES
#   wide        valid rows with a row of 10^6 columns among them
#   valid       BENCH_MEMORY_BYTES of valid rows
# and runs the release binary's `validate` on each under /usr/bin/time -v, printing its peak
# RSS and PASS/FAIL against BENCH_MEMORY_LIMIT_MIB (default 100).
#   BENCH_MEMORY_BYTES=$((1<<30)) BENCH_DIR=/tmp bash bench/memory.sh
# (BENCH_BIN=path runs that binary instead of building the release one.)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || { echo "GNU time is needed (apt-get install time)"; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wau-ingest/target}"
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release --bin wau-ingest; fi
bin="${BENCH_BIN:-$CARGO_TARGET_DIR/release/wau-ingest}"
size=${BENCH_MEMORY_BYTES:-$((1 << 30))}
limit_mib=${BENCH_MEMORY_LIMIT_MIB:-100}

dir=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/wau-memory.XXXXXX")
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/csv/acme"
header="customer,event_id,event_time,user_id,user_email,event_type,source_ip,user_agent"
rows() { # rows PREFIX COUNT: COUNT valid rows with event ids PREFIX-1…
  awk -v p="$1" -v n="$2" 'BEGIN { for (i = 1; i <= n; i++)
    printf "acme,%s-%d,2026-11-23T10:00:00Z,u%d,u%d@example.com,login,10.0.0.1,Mozilla/5.0 (X11; Linux x86_64)\n", p, i, i % 50000, i % 50000 }'
}

echo "generating inputs of $size bytes in $dir"
head -c "$size" /dev/zero | tr '\0' 'a' | gzip -9 > "$dir/csv/acme/bomb.csv.gz"
head -c "$size" /dev/zero | tr '\0' 'x' > "$dir/csv/acme/single-line.csv"
{
  echo "$header"
  rows w 1000
  awk 'BEGIN { for (i = 1; i < 1000000; i++) printf "x,"; print "x" }'
  rows v 1000
} > "$dir/csv/acme/wide.csv"
awk -v h="$header" -v size="$size" 'BEGIN {
  print h; n = length(h) + 1
  for (i = 1; ; i++) {
    line = sprintf("acme,r-%d,2026-11-23T10:00:00Z,u%d,u%d@example.com,login,10.0.0.1,Mozilla/5.0 (X11; Linux x86_64)", i, i % 50000, i % 50000)
    if (n + length(line) + 1 > size) break
    print line; n += length(line) + 1
  } }' > "$dir/csv/acme/valid.csv"

fail=0
printf '%-12s %14s %12s %9s  %s\n' input bytes "peak RSS" result "validate says"
for name in bomb.csv.gz single-line.csv wide.csv valid.csv; do
  f="$dir/csv/acme/$name"
  out=$(cd "$dir" && WAU_INGEST_SOURCE_DIR="$dir" /usr/bin/time -v "$bin" validate "$f" 2>"$dir/time.txt" || true)
  kib=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$dir/time.txt")
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ { print $2 }' "$dir/time.txt")
  mib=$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')
  verdict=$(echo "$out" | awk 'NR == 2 { $1 = ""; print }' | sed 's/^ *//')
  if awk -v k="$kib" -v l="$limit_mib" 'BEGIN { exit !(k / 1024 < l) }'; then res=PASS; else res=FAIL; fail=1; fi
  printf '%-12s %14s %8s MiB %9s  %s (%s)\n' "${name%%.*}" "$(stat -c %s "$f")" "$mib" "$res" "$verdict" "$secs"
  echo "$out" | sed -n '3,$p' | head -3 | sed 's/^/    /'
done
exit $fail
