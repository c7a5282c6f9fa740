"""Glue Python-shell job: run the wau-ingest merge SQL as ONE Redshift Data API batch.

The SQL file is written by `wau-ingest merge --print-sql` and uploaded to S3; this job only
runs it, so the Glue path and the in-service path (WAU_INGEST_MERGE_RUNNER=sql) execute the
same text. A BatchExecuteStatement runs its statements serially in one transaction, so the
merge (delete touched keys, insert winners, advance the watermark) commits whole or not at all.

Job arguments (Glue passes them as `--name value`):
  --merge_sql_uri   s3://bucket/key of the merge SQL
  --workgroup_name  Redshift Serverless workgroup
  --database        database name
  --timeout_secs    optional, give up (and cancel the statement) after this long; default 3300

SQL file format:
  * a statement ends at a line whose last non-blank character is `;` (a `;` inside a line does
    not split, so string literals containing `;` are safe unless they end a line);
  * lines whose first non-blank characters are `--` are comments and are skipped; blank lines
    are skipped; trailing `-- ...` comments inside a statement line are kept (Redshift
    ignores them);
  * text after the last `;` that is not a comment is an error (a truncated file must not run);
  * 1 to 40 statements (the BatchExecuteStatement limit), each under 100 KB.

A batch that fails on a concurrency conflict (Redshift's `1023 … Serializable isolation
violation`, or `could not complete because of conflict with concurrent transaction`) is
submitted again, up to MAX_CONFLICT_RETRIES times with growing pauses, as the service's own
runner does (`is_serialization_conflict` in src/warehouse/redshift/data_api.rs: the same rule). The
merge SQL begins with `LOCK wau_ingest_lock`, so it waits for the service's commits rather
than conflicting with them; the retry covers what the lock cannot (other writers of the tables).

Exit status: 0 when the batch FINISHED; 1 when it FAILED (after the conflict retries), was
ABORTED or timed out (Glue then marks the run FAILED and retries it once, MaxRetries 1); 2 on a
bad argument or SQL file.
"""

import datetime
import re
import sys
import time

MAX_STATEMENTS = 40
MAX_STATEMENT_BYTES = 100 * 1024
TERMINAL_STATES = ("FINISHED", "FAILED", "ABORTED")
MAX_CONFLICT_RETRIES = 6
CONFLICT_PAUSE_SECS = (1, 2, 4, 8, 15, 30)
REQUIRED_ARGS = ("merge_sql_uri", "workgroup_name", "database")


def is_conflict(error):
    """A FAILED batch worth submitting again: a concurrency abort (the Rust rule, twin of
    `is_serialization_conflict`): any `serializ…` text, Redshift's snapshot-isolation text,
    a deadlock, or the error number 1023 standing alone."""
    lower = (error or "").lower()
    if ("serializ" in lower or "conflict with concurrent transaction" in lower
            or "deadlock detected" in lower):
        return True
    return re.search(r"(?<![0-9A-Za-z])1023(?![0-9A-Za-z])", error or "") is not None


class MergeSqlError(ValueError):
    """The merge SQL file cannot be run as a batch."""


def split_statements(text):
    """Split merge SQL into statements (see the module docstring for the format)."""
    statements = []
    current = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line.rstrip())
        if stripped.endswith(";"):
            statement = "\n".join(current).strip()
            statement = statement[:-1].rstrip()
            if not statement:
                raise MergeSqlError(f"line {number}: empty statement")
            statements.append(statement)
            current = []
    if current:
        raise MergeSqlError(
            "text after the last statement does not end with ';' "
            f"(starts with {current[0].strip()[:60]!r}); is the file truncated?"
        )
    if not statements:
        raise MergeSqlError("no statements found")
    if len(statements) > MAX_STATEMENTS:
        raise MergeSqlError(
            f"{len(statements)} statements; one batch takes at most {MAX_STATEMENTS}"
        )
    for index, statement in enumerate(statements, start=1):
        size = len(statement.encode("utf-8"))
        if size > MAX_STATEMENT_BYTES:
            raise MergeSqlError(
                f"statement {index} is {size} bytes; the limit is {MAX_STATEMENT_BYTES}"
            )
    return statements


# `:name` but not a `::cast`; the merge SQL holds no string literal with a colon in it.
PARAMETER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


def render_parameters(statements, now):
    """Fill in the merge SQL's parameters. A batch cannot carry a value from one statement to
    the next, so `:merged_at` becomes one UTC timestamp literal in every statement (target rows,
    ledger stamps and the merge history agree), and the history's `:rows_deleted` /
    `:rows_inserted` become NULL (the in-service runner records them; here they are unknown).
    Any other parameter is an error: the file is not what this job knows how to run."""
    values = {
        "merged_at": "'" + now.strftime("%Y-%m-%d %H:%M:%S.%f") + "'",
        "rows_deleted": "NULL",
        "rows_inserted": "NULL",
    }

    def value(match):
        name = match.group(1)
        if name not in values:
            raise MergeSqlError(f"unknown parameter :{name}")
        return values[name]

    return [PARAMETER.sub(value, statement) for statement in statements]


def parse_s3_uri(uri):
    if not uri.startswith("s3://"):
        raise MergeSqlError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key:
        raise MergeSqlError(f"s3 URI needs a bucket and a key: {uri!r}")
    return bucket, key


def resolve_args(argv):
    """Glue's getResolvedOptions when running in Glue, a tolerant parser elsewhere.

    Both ignore arguments they were not asked for (Glue adds --JOB_ID, --job-bookmark-option...).
    """
    wanted = list(REQUIRED_ARGS)
    optional = {"timeout_secs": "3300"}
    present = [name for name in optional if f"--{name}" in argv]
    try:
        from awsglue.utils import getResolvedOptions  # type: ignore
    except ImportError:
        getResolvedOptions = None
    if getResolvedOptions is not None:
        args = getResolvedOptions(argv, wanted + present)
    else:
        args = {}
        names = set(wanted + present)
        i = 1
        while i < len(argv):
            token = argv[i]
            if token.startswith("--"):
                name, eq, value = token[2:].partition("=")
                if not eq and i + 1 < len(argv):
                    value = argv[i + 1]
                    i += 1
                if name in names:
                    args[name] = value
            i += 1
        missing = [name for name in wanted if not args.get(name)]
        if missing:
            raise MergeSqlError("missing job arguments: " + ", ".join(f"--{m}" for m in missing))
    for name, default in optional.items():
        args.setdefault(name, default)
    return args


def wait_for(data_api, statement_id, timeout_secs, sleep=time.sleep, clock=time.monotonic):
    """Poll DescribeStatement until a terminal state; back off from 1 s to 10 s."""
    deadline = clock() + timeout_secs
    delay = 1.0
    while True:
        description = data_api.describe_statement(Id=statement_id)
        if description["Status"] in TERMINAL_STATES:
            return description
        if clock() >= deadline:
            return None
        sleep(delay)
        delay = min(delay * 2, 10.0)


def report(description, out):
    for sub in description.get("SubStatements", []):
        line = f"  {sub.get('Id')}: {sub.get('Status')}"
        if sub.get("ResultRows", -1) >= 0:
            line += f", {sub['ResultRows']} rows"
        if sub.get("Error"):
            line += f", error: {sub['Error']}"
        print(line, file=out)


def run(argv, s3=None, data_api=None, sleep=time.sleep, clock=time.monotonic, out=sys.stdout):
    try:
        args = resolve_args(argv)
        bucket, key = parse_s3_uri(args["merge_sql_uri"])
        timeout_secs = float(args["timeout_secs"])
    except (MergeSqlError, ValueError) as error:
        print(f"merge job: bad arguments: {error}", file=sys.stderr)
        return 2

    if s3 is None or data_api is None:
        import boto3

        s3 = s3 or boto3.client("s3")
        data_api = data_api or boto3.client("redshift-data")

    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    try:
        statements = split_statements(body.decode("utf-8"))
        statements = render_parameters(statements, datetime.datetime.now(datetime.timezone.utc))
    except (MergeSqlError, UnicodeDecodeError) as error:
        print(f"merge job: s3://{bucket}/{key}: {error}", file=sys.stderr)
        return 2

    for attempt in range(MAX_CONFLICT_RETRIES + 1):
        batch = data_api.batch_execute_statement(
            WorkgroupName=args["workgroup_name"],
            Database=args["database"],
            Sqls=statements,
            StatementName="wau-ingest-merge",
        )
        statement_id = batch["Id"]
        print(
            f"merge job: submitted {len(statements)} statements from s3://{bucket}/{key} "
            f"to {args['workgroup_name']}/{args['database']} as {statement_id}",
            file=out,
        )

        description = wait_for(data_api, statement_id, timeout_secs, sleep=sleep, clock=clock)
        if description is None:
            print(f"merge job: {statement_id} not finished after {timeout_secs:.0f} s; cancelling",
                  file=sys.stderr)
            try:
                data_api.cancel_statement(Id=statement_id)
            except Exception as error:  # the run fails either way; say why cancelling failed
                print(f"merge job: cancel {statement_id} failed: {error}", file=sys.stderr)
            return 1
        if (description["Status"] == "FAILED" and is_conflict(description.get("Error"))
                and attempt < MAX_CONFLICT_RETRIES):
            pause = CONFLICT_PAUSE_SECS[min(attempt, len(CONFLICT_PAUSE_SECS) - 1)]
            print(f"merge job: {statement_id} hit a concurrency conflict "
                  f"({description.get('Error')}); submitting again in {pause} s", file=out)
            sleep(pause)
            continue
        break

    status = description["Status"]
    report(description, out)
    if status != "FINISHED":
        print(f"merge job: {statement_id} {status}: {description.get('Error') or 'no error text'}",
              file=sys.stderr)
        return 1
    print(f"merge job: {statement_id} FINISHED", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv))
