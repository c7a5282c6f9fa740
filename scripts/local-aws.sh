#!/usr/bin/env bash
# The AWS path on one machine: PostgreSQL (if not running), a moto server (S3, SQS, Glue, real
# S3→SQS notifications) and the Redshift Data API emulator over PostgreSQL.
#
#   scripts/local-aws.sh up      start them (idempotent) and print the environment to export
#   scripts/local-aws.sh env     print that environment again
#   scripts/local-aws.sh down    stop moto and the emulator (PostgreSQL is left running)
#
#   eval "$(scripts/local-aws.sh up)"   # then AWS SDKs and the aws CLI talk to the local stack
#
# Ports: WAU_MOTO_PORT (default 5000), WAU_EMULATOR_PORT (default 9465). State (pids, logs) in
# ${XDG_RUNTIME_DIR:-/tmp}/wau-local-aws. Everything it prints on stdout is shell to eval;
# progress goes to stderr.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${XDG_RUNTIME_DIR:-/tmp}/wau-local-aws"
MOTO_PORT="${WAU_MOTO_PORT:-5000}"
EMU_PORT="${WAU_EMULATOR_PORT:-9465}"
PG_DSN="${WAU_TEST_PG:-host=127.0.0.1 port=5432 user=postgres dbname=test}"

step() { printf '== local-aws: %s\n' "$*" >&2; }
fail() { printf 'local-aws: FAILED: %s\n' "$*" >&2; exit 1; }

print_env() {
    cat <<ENV
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$MOTO_PORT AWS_ENDPOINT_URL_SQS=http://127.0.0.1:$MOTO_PORT AWS_ENDPOINT_URL_GLUE=http://127.0.0.1:$MOTO_PORT
export AWS_ENDPOINT_URL_REDSHIFT_DATA=http://127.0.0.1:$EMU_PORT
export WAU_INGEST_AWS_S3_FORCE_PATH_STYLE=true
export WAU_EMULATOR_PYTHON=${VENV:-${WAU_EMULATOR_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/wau-ingest-emulator/venv}}/bin/python
ENV
}

alive() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

wait_http() {  # name url
    local deadline=$((SECONDS + 60))
    until "$VENV/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$2" 2>/dev/null; do
        alive "$1" || fail "$1 exited; see $STATE/$1.log"
        (( SECONDS < deadline )) || fail "$1 not answering at $2 within 60 s; see $STATE/$1.log"
        sleep 0.2
    done
}

start() {  # name command...
    local name=$1
    shift
    if alive "$name"; then
        step "$name already running (pid $(cat "$STATE/$name.pid"))"
        return
    fi
    nohup "$@" >"$STATE/$name.log" 2>&1 &
    echo $! >"$STATE/$name.pid"
    step "$name started (pid $!, log $STATE/$name.log)"
}

case "${1:-}" in
    up)
        mkdir -p "$STATE"
        # shellcheck source=python-tools.sh
        source "$ROOT/scripts/python-tools.sh" >&2
        start moto "$VENV/bin/python" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT"
        wait_http moto "http://127.0.0.1:$MOTO_PORT/moto-api/"
        start redshift-emulator "$VENV/bin/python" "$ROOT/tests/support/redshift_emulator.py" \
            --port "$EMU_PORT" --pg "$PG_DSN" --s3-endpoint "http://127.0.0.1:$MOTO_PORT"
        wait_http redshift-emulator "http://127.0.0.1:$EMU_PORT/health"
        print_env
        ;;
    env)
        print_env
        ;;
    down)
        for name in redshift-emulator moto; do
            if alive "$name"; then
                kill "$(cat "$STATE/$name.pid")"
                step "$name stopped"
            fi
            rm -f "$STATE/$name.pid"
        done
        ;;
    *)
        echo "usage: $0 up|env|down" >&2
        exit 2
        ;;
esac
