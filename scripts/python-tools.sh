# Shared by .ci/emulator-checks, .ci/dashboard-checks and scripts/local-aws.sh (source it; it
# sets VENV and exits on failure): a private virtualenv with moto[server], psycopg[binary],
# boto3, pytest and PyYAML in $VENV (not system-wide: some of these downgrade boto3 and break
# a system awscli), and PostgreSQL up on 127.0.0.1:5432 (started with pg_ctlcluster when it
# is not).
# Expects step() and fail() from the caller.

step "tools"
VENV="${WAU_EMULATOR_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/wau-ingest-emulator/venv}"
tools_ok() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" - <<'PY' 2>/dev/null
import boto3, psycopg, pytest, yaml, moto.server  # noqa: F401  (importable, not just listed)
import flask, werkzeug  # noqa: F401  (moto's server extra)
PY
}
if ! tools_ok; then
    echo "installing moto[server], psycopg[binary], boto3, pytest, PyYAML into $VENV"
    if [[ ! -x "$VENV/bin/python" ]]; then
        mkdir -p "$(dirname "$VENV")"
        python3 -m venv "$VENV" || fail "cannot create virtualenv $VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        'moto[server]>=5' 'psycopg[binary]>=3.1' boto3 pytest pyyaml \
        || fail "pip install into $VENV"
    tools_ok || fail "tools still not importable from $VENV after install"
fi
echo "using $VENV ($("$VENV/bin/python" -c 'import boto3, psycopg, moto; print("boto3", boto3.__version__, "psycopg", psycopg.__version__, "moto", moto.__version__)'))"

# ---------------------------------------------------------------------------------------------
step "postgresql on 127.0.0.1:5432"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    command -v pg_ctlcluster >/dev/null || fail "PostgreSQL is not running and pg_ctlcluster is missing"
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    echo "starting PostgreSQL $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start \
        || fail "pg_ctlcluster $version main start"
    deadline=$((SECONDS + 60))
    until pg_isready -q -h 127.0.0.1 -p 5432; do
        (( SECONDS < deadline )) || fail "PostgreSQL not ready on 127.0.0.1:5432 within 60 s"
        sleep 0.5
    done
fi
pg_isready -h 127.0.0.1 -p 5432

