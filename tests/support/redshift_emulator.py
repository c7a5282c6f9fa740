#!/usr/bin/env python3
"""Redshift Data API emulator that runs every statement on a real PostgreSQL.

The rule: the emulator is never kinder than Redshift. Where Redshift refuses, limits or
behaves differently in a way that changes a result, the emulator does the same or stricter
(each such behaviour has a test in test_redshift_emulator.py); what it cannot model is listed
under "What it deliberately does not do".

What it emulates
  The Data API's JSON protocol as the AWS SDKs speak it (HTTP POST, ``Content-Type:
  application/x-amz-json-1.1``, ``X-Amz-Target: RedshiftData.<Operation>``; SigV4 headers are
  accepted and ignored): ExecuteStatement, BatchExecuteStatement, DescribeStatement,
  GetStatementResult, CancelStatement and a minimal ListStatements. Statements run
  asynchronously on worker threads (SUBMITTED -> PICKED -> STARTED -> FINISHED | FAILED |
  ABORTED) and their state is kept in memory. A batch is one PostgreSQL session and one
  transaction: if any statement fails, everything is rolled back, the batch is FAILED with the
  error in ``Error``, and its sub-statements ``<id>:<n>`` show which one failed. ``:name``
  parameters are bound as strings that PostgreSQL casts implicitly. Results come back as typed
  fields (booleanValue, longValue, doubleValue, stringValue, isNull) with NextToken paging.
  Errors use the AWS JSON shape (``{"__type": ..., "message": ...}``, HTTP 400).

  * Limits. Sql over 100 KB (102,400 UTF-8 bytes) is a ValidationException naming the limit; in
    a batch, so is any one Sql over it and so are all Sqls together over it (the docs do not say
    which applies to a batch, so both do). 1 to 40 Sqls per batch.
  * Isolation, per database, SNAPSHOT by default as on new Redshift clusters and Serverless.
    SNAPSHOT is PostgreSQL REPEATABLE READ, which has the same anomalies (two transactions that
    insert the same new row through ``INSERT ... WHERE NOT EXISTS`` both commit); SERIALIZABLE
    is PostgreSQL SERIALIZABLE. A database is SERIALIZABLE only when it says so
    (``default_transaction_isolation`` set to serializable on the database); every other one,
    the DSN's default database included, is SNAPSHOT. Every batch is one transaction at its
    database's level, a lone ExecuteStatement runs in autocommit at the same level. Nothing runs
    inside a batch's transaction before its first statement, so ``LOCK t`` first is taken
    before the snapshot, as Redshift requires for it to serialize writers.
  * Conflicts. A PostgreSQL serialization failure (40001) or deadlock (40P01) is reported in
    Redshift's words for the database's level: on SERIALIZABLE ``ERROR: 1023 DETAIL:
    Serializable isolation violation on table - <table>, ...``, on SNAPSHOT ``ERROR: could not
    complete because of conflict with concurrent transaction`` (Redshift's text under snapshot
    isolation). Only PostgreSQL's SQLSTATE follows, in parentheses, not its words (they say
    "serialize"). So a client sees each text on the level where Redshift would send it, and
    must recognise both.
  * ``stv_db_isolation_level`` (db_name character(128), isolation_level character(20):
    'Serializable' or 'Snapshot Isolation', blank-padded like Redshift's CHAR) is a view in the
    schema ``redshift_emulator`` that the emulator creates in every database it serves, on
    first use, and appends to every session's search_path.
  * ``svv_columns`` (Redshift's SVV_COLUMNS: table_schema, table_name, column_name,
    ordinal_position, is_nullable, data_type, character_maximum_length, …) is a view in the same
    schema over information_schema.columns, as Redshift describes its local tables: TEXT (and
    VARCHAR without a length) reads as ``character varying`` of 256, lengths are the VARCHAR
    byte widths the emulator enforces (below).
  * ``ALTER TABLE ... ADD [COLUMN]`` takes one column (Redshift's grammar has one action per
    statement: a second, after a comma, is ``ERROR: syntax error at or near ","``), and a NOT
    NULL column only with a DEFAULT (``ERROR: ALTER TABLE ADD COLUMN defined as NOT NULL must
    have a non-null default expression``).
  * VARCHAR(n) holds n bytes of UTF-8, not n characters: after every CREATE TABLE (temporary,
    ``LIKE`` and ``AS`` included) and ``ALTER TABLE ... ADD`` run through the emulator, each
    VARCHAR, CHAR and TEXT column gets a CHECK constraint ``octet_length(col) <= n`` (VARCHAR
    without a length and TEXT are VARCHAR(256), as on Redshift); a violation by INSERT or
    UPDATE is ``ERROR: value too long for type character varying(n)``. ``VARCHAR(MAX)`` is
    VARCHAR(65535); a longer VARCHAR (CHAR: 4096) is refused.
  * COPY (below) loads each file through a temporary all-text table and converts each column
    the way Redshift's COPY does, in one ``INSERT ... SELECT`` that refuses, at the first
    offending row, what Redshift refuses. A failed COPY loads nothing and says
    ``Load into table 't' failed. Check 'sys_load_error_detail' system table for details.``
    followed by ``[emulator: <file> line <n>, column <c> (<type>): error <code>: <reason>;
    value '...']``, with Redshift's load error codes: 1204 ``String length exceeds DDL length``
    (a string longer in bytes than its column; tables PostgreSQL made itself are held to the
    same limits), 1206 ``Invalid timestamp format or value`` (a TIMESTAMP/TIMESTAMPTZ with more
    than 6 fractional-second digits: Redshift supports microseconds, PostgreSQL would round),
    1213 for a NULL into a NOT NULL column, 1207/1205/1200 for values the column's type cannot
    read, and PostgreSQL's own words for malformed CSV. Line numbers count header lines.
  * COPY NULL handling as Redshift documents it, in CSV and in delimited text: the NULL string
    is ``\\N`` (``NULL AS 'x'`` replaces it); an empty CHAR/VARCHAR field loads as '' (quoted
    or not), as NULL with EMPTYASNULL (``NULL AS ''`` is the same); BLANKSASNULL makes a
    CHAR/VARCHAR field of only white space NULL; an empty field of any other type (numbers,
    timestamps, booleans...) is always NULL.
  * Trailing blanks are insignificant when VARCHAR values are compared (``'a' = 'a  '``), in
    databases the emulator creates (``CREATE DATABASE`` through it): there the schema
    ``redshift_emulator`` holds ``=``, ``<>``, ``<``, ``<=``, ``>``, ``>=`` on (varchar, varchar)
    and default btree and hash operator classes for varchar, bound (LANGUAGE internal) to
    PostgreSQL's CHAR functions, which compare, hash and sort text without its trailing
    blanks, in C. So WHERE, JOIN, IN, EXISTS, GROUP BY, DISTINCT, window PARTITION BY and ORDER
    BY on varchar all ignore trailing blanks, and joins keep their hash plans (measured on a
    product-like merge, 100k keys over 300k staging rows: the same plans, hash joins, hash
    aggregates and the window sort, and times within the machine's noise, keys 0.6-2.0 s,
    delete 0.3-1.2 s, insert 1.8-4.2 s with the operators against 0.7-1.6, 0.3-1.2 and 1.3-4.6
    without). Values PostgreSQL types as TEXT (TEXT columns, ``||``, ``lower()``, ``::text``)
    still compare as PostgreSQL compares them (PostgreSQL's own ``=`` on text comes first), and
    so does every varchar in a database the emulator did not create (such as the default one).

What it translates (only what PostgreSQL lacks)
  * Redshift's table attributes in CREATE TABLE and CREATE TABLE AS, taken as its grammar has
    them and no other way: column attributes ``ENCODE enc``, ``DISTKEY``, ``SORTKEY``; table
    attributes in the documented order ``[BACKUP YES|NO] [DISTSTYLE AUTO|EVEN|KEY|ALL]
    [DISTKEY (col)] [[COMPOUND|INTERLEAVED] SORTKEY (col, ...) | SORTKEY AUTO] [ENCODE AUTO]``,
    each at most once (anything else is left for PostgreSQL, which refuses it as a syntax
    error). Refused as Redshift refuses them: a DISTKEY or SORTKEY column the table does not
    have (checked against the column list, or against the table made by ``LIKE`` or ``AS``,
    which is then not made), DISTKEY with DISTSTYLE EVEN, ALL or AUTO, DISTSTYLE KEY without a
    DISTKEY, two distribution keys, a sort key given both as column and table attribute, a
    column twice in a sort key, more than 400 compound or 8 interleaved sort key columns. The
    attributes are then dropped, and the physical design is translated into the plans it gives
    Redshift, so that the emulator's costs follow Redshift's (a faster executor, never a kinder
    one: nothing more is accepted). CREATE TABLE IF NOT EXISTS of a table that exists changes
    nothing.
    - A compound SORTKEY (a, b) becomes a B-tree index on (a, b); an interleaved one an index
      on each of its columns; SORTKEY AUTO, DISTSTYLE and DISTKEY nothing (one node). A table
      sorted by a key lets Redshift read only the blocks holding the keys a join or a predicate
      asks for (its zone maps); PostgreSQL needs the index to get that plan.
    - Redshift keeps a zone map (the min and max of each 1 MB block) of every column, so a
      column whose values follow the load order (a batch id, a load time) restricts a scan
      without being the sort key. PostgreSQL's BRIN index is the same structure (min and max of
      each range of 128 pages): every permanent table made through the emulator gets a BRIN
      index (``autosummarize = on``) on each number, date and time column, which skips a block
      range exactly where Redshift would skip a block (where the values follow the physical
      order), no more. Not on CHAR/VARCHAR, whose zone maps keep only 8 bytes on Redshift, nor
      on temporary tables (they live one session; a commit makes one). Redshift writes a
      block's zone map with the block, so a COPY summarizes the block ranges it filled
      (``brin_summarize_new_values``); rows that INSERT adds are summarized by autovacuum or
      VACUUM, and until then their ranges are read whole.
    - The planner is told that random reads cost about what sequential ones do
      (``random_page_cost`` 1.1, ``effective_cache_size`` 8 GB, per session): the data of a
      test database sits in memory, and PostgreSQL's defaults (for spinning disks) would scan a
      10 M-row table rather than probe a sort key's index for 100 k keys.
  * ``CREATE [TEMP] TABLE ... AS SELECT`` is followed by ``ANALYZE`` of the new table, as Redshift
    analyzes such tables on its own: without statistics PostgreSQL joins a fresh table by nested
    loop (the merge's key table; `bench/emulator_merge.py --shared-keys`: 16,000 staged rows
    merged in 7.95 s without, 0.27 s with; 32,000 in 19.5 s and 0.41 s).
  * ``CREATE DATABASE name [[WITH] ISOLATION LEVEL SNAPSHOT|SERIALIZABLE]``: the PostgreSQL
    database, then ``ALTER DATABASE name SET default_transaction_isolation TO 'repeatable
    read' | 'serializable'``, its search_path and the emulator's schema (with the VARCHAR
    operators above). ``ALTER DATABASE name ISOLATION LEVEL ...`` sets the same setting (new
    sessions see it). Neither runs inside a batch; other CREATE DATABASE options are refused.
  * ``COPY t [(cols)] FROM 's3://bucket/prefix-or-manifest' ...``: the objects (every key under
    the prefix, or the parts a MANIFEST lists) are read from S3 with boto3 (path-style, so moto
    works), gunzipped with GZIP, header lines dropped per file with IGNOREHEADER n, read by
    PostgreSQL's ``COPY ... FROM STDIN`` (CSV with CSV / FORMAT AS CSV, else text, default
    delimiter '|', NULL '\\N') into a temporary all-text table and loaded as above. All parts
    load atomically; a missing mandatory manifest part fails it. Concurrent COPYs into one
    table run one after another, as on Redshift ("concurrent COPYs into one table serialize",
    AWS's load troubleshooting): each takes a lock on its table that only another COPY into
    the same table waits for (PostgreSQL's SHARE UPDATE EXCLUSIVE, held to the end of the
    transaction); INSERT, UPDATE and DELETE do not wait for it. On 1M product-like rows
    (174 MB of CSV in 4 gzip parts, 12 columns, into a table with its byte-length checks, on
    the shared 2-core machine at load average ~10) the COPY takes 2.1-2.2 times as long as
    PostgreSQL's COPY straight into the table did (back to back: 7.8 -> 17.0 s, 11.2 -> 25.0 s,
    11.9 -> 25.0 s): the text table's own COPY, the second pass and the CHECK constraints. A
    regex on every timestamp cost 3 us a row more and is guarded by a LIKE.
  Everything else goes to PostgreSQL unchanged.

What it deliberately does not do
  Authentication and IAM (WorkgroupName / ClusterIdentifier / DbUser / SecretArn are echoed,
  not checked), sessions (SessionId / SessionKeepAliveSeconds are rejected), result expiry,
  rate limits, STL/SYS system tables (SYS_LOAD_ERROR_DETAIL is named, its row is in the
  error text), and Redshift SQL that PostgreSQL does not know (QUALIFY, MERGE ... REMOVE
  DUPLICATES). COPY: formats other than CSV and delimited text; TIMEFORMAT/DATEFORMAT strings
  (PostgreSQL reads any date/time it can; 'epochsecs'/'epochmillisecs' are refused); DECIMAL
  scale (PostgreSQL rounds where Redshift truncates). These are accepted and ignored, each
  stricter than Redshift or without effect on what loads: MAXERROR (every COPY stops at its
  first bad row, as with MAXERROR 0), ACCEPTINVCHARS (invalid UTF-8 fails the COPY),
  TRUNCATECOLUMNS (a too-long string fails the COPY), TRIMBLANKS, FILLRECORD, COMPUPDATE,
  STATUPDATE. VARCHAR byte limits are not added for a CREATE TABLE that is not the first
  statement of its Sql, nor to tables made outside the emulator (COPY still checks those).

Run standalone:
  python3 tests/support/redshift_emulator.py --port 9465 \
      --pg "host=127.0.0.1 port=5432 user=postgres dbname=test" \
      [--s3-endpoint http://127.0.0.1:5000]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import gzip
import json
import math
import re
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

TERMINAL = frozenset({"FINISHED", "FAILED", "ABORTED"})
MAX_SQL_BYTES = 100 * 1024
_PARAM_NAME = re.compile(r"^[0-9a-zA-Z_]+$")


class ApiError(Exception):
    """An error answered in the AWS JSON shape."""

    def __init__(self, kind: str, message: str, status: int = 400):
        super().__init__(message)
        self.kind, self.message, self.status = kind, message, status


class StatementError(Exception):
    """A statement failed; the message becomes the statement's ``Error``."""


# ------------------------------------------------------------------------------------------
# SQL scanning and translation (pure functions, unit-tested)

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def split_sql(sql: str) -> list[tuple[str, str]]:
    """Split SQL into (kind, text) segments; kind is code, string, ident or comment.

    Strings are '...' (with '' doubling; E'...' also with backslash escapes) and $tag$...$tag$.
    """
    segments: list[tuple[str, str]] = []
    i = start = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == "'":
            backslash = i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            j = i + 1
            while j < n:
                if backslash and sql[j] == "\\":
                    j += 2
                elif sql[j] == "'" and j + 1 < n and sql[j + 1] == "'":
                    j += 2
                elif sql[j] == "'":
                    break
                else:
                    j += 1
            end, kind = min(j + 1, n), "string"
        elif c == '"':
            j = i + 1
            while j < n and not (sql[j] == '"' and not sql.startswith('""', j)):
                j += 2 if sql.startswith('""', j) else 1
            end, kind = min(j + 1, n), "ident"
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            end, kind = (n if j < 0 else j), "comment"
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            end, kind = (n if j < 0 else j + 2), "comment"
        elif c == "$" and (m := _DOLLAR_TAG.match(sql, i)) and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            j = sql.find(m.group(0), m.end())
            end, kind = (n if j < 0 else j + len(m.group(0))), "string"
        else:
            i += 1
            continue
        if i > start:
            segments.append(("code", sql[start:i]))
        segments.append((kind, sql[i:end]))
        i = start = end
    if start < n:
        segments.append(("code", sql[start:]))
    return segments


_PLACEHOLDER = re.compile(r"(?<!:):([A-Za-z0-9_]+)")


def translate_parameters(sql: str, names) -> str:
    """Turn ``:name`` placeholders (for the given names only) into psycopg ``%(name)s``.

    Text inside quotes, quoted identifiers and comments is left alone, so are ``::casts``;
    every literal ``%`` is doubled because psycopg reads the whole text for placeholders.
    """
    out = []
    for kind, text in split_sql(sql):
        text = text.replace("%", "%%")
        if kind == "code":
            text = _PLACEHOLDER.sub(lambda m: f"%({m.group(1)})s" if m.group(1) in names else m.group(0), text)
        out.append(text)
    return "".join(out)


def _mask(sql: str) -> tuple[str, list[str]]:
    """Replace strings and comments by ``\\x00N\\x00`` so that regexes only see code."""
    pieces: list[str] = []
    out = []
    for kind, text in split_sql(sql):
        if kind in ("string", "comment"):
            out.append(f"\x00{len(pieces)}\x00")
            pieces.append(text)
        else:
            out.append(text)
    return "".join(out), pieces


def _unmask(text: str, pieces: list[str]) -> str:
    return re.sub(r"\x00(\d+)\x00", lambda m: pieces[int(m.group(1))], text)


def _unquote(piece: str) -> str:
    if piece[:1] in "eE" and piece[1:2] == "'":
        piece = piece[1:]
    if piece.startswith("'"):
        return piece[1:-1].replace("''", "'")
    m = _DOLLAR_TAG.match(piece)
    return piece[m.end():len(piece) - len(m.group(0))] if m else piece


_LEAD = r"^(?:\s|\x00\d+\x00)*"
_CREATE_TABLE = re.compile(_LEAD + r"CREATE\s+(?:(?:LOCAL|GLOBAL)\s+)?(?:(?:TEMP|TEMPORARY)\s+)?TABLE\b", re.I)
MAX_VARCHAR_BYTES = 65535  # Redshift's VARCHAR(MAX)
MAX_CHAR_BYTES = 4096
DEFAULT_VARCHAR_BYTES = 256  # VARCHAR without a length, and TEXT, are VARCHAR(256) on Redshift
_CHAR_TYPE = re.compile(r"\b(?P<kind>N?VARCHAR|CHARACTER\s+VARYING|N?CHAR|CHARACTER|BPCHAR)\s*\(\s*(?P<n>MAX|\d+)\s*\)", re.I)


def translate_char_types(sql: str) -> str:
    """``VARCHAR(MAX)`` is ``VARCHAR(65535)``; a length over Redshift's maximum is refused
    (VARCHAR 65535 bytes, CHAR 4096) as Redshift refuses it, before PostgreSQL sees it."""
    masked, pieces = _mask(sql)
    if "(" not in masked:
        return sql

    def one(m: re.Match) -> str:
        varying = "VAR" in m.group("kind").upper()
        limit = MAX_VARCHAR_BYTES if varying else MAX_CHAR_BYTES
        n = m.group("n").upper()
        if n == "MAX":
            return f"{m.group('kind')}({limit})"
        if int(n) > limit or int(n) < 1:
            kind = "varchar" if varying else "char"
            raise StatementError(f"length for type {kind} cannot exceed {limit}" if int(n) > limit
                                 else f"length for type {kind} must be at least 1")
        return m.group(0)

    out = _CHAR_TYPE.sub(one, masked)
    return sql if out == masked else _unmask(out, pieces)


_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = rf"{_IDENT}(?:\s*\.\s*{_IDENT})*"
_CREATE_TABLE_NAME = re.compile(
    _LEAD + r"CREATE\s+(?:(?:LOCAL|GLOBAL)\s+)?(?:(?:TEMP|TEMPORARY)\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"(?P<name>{_QUALIFIED})", re.I)
_ALTER_TABLE_ADD = re.compile(
    _LEAD + rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<name>{_QUALIFIED})\s+ADD\b", re.I)


_AS_SELECT = re.compile(r"\s*(?:\([^()]*\))?\s*AS\s*\(?\s*(?:SELECT|WITH)\b", re.I)


def created_as_select(sql: str) -> bool:
    """A ``CREATE [TEMP] TABLE ... AS SELECT`` (which Redshift analyzes automatically)."""
    masked, _ = _mask(sql)
    m = _CREATE_TABLE_NAME.match(masked)
    return bool(m) and _AS_SELECT.match(masked, m.end()) is not None


_ADD_COLUMN = re.compile(r"\bADD\s+(?:COLUMN\s+)?(?!CONSTRAINT\b|PRIMARY\b|UNIQUE\b|FOREIGN\b|CHECK\b)", re.I)


def check_add_column(sql: str) -> None:
    """Redshift's limits on ``ALTER TABLE ... ADD [COLUMN]``
    (https://docs.aws.amazon.com/redshift/latest/dg/r_ALTER_TABLE.html): one column per
    statement (its grammar takes one action: a second, after a comma, is a syntax error), and a
    NOT NULL column needs a DEFAULT (the rows already there must get a value)."""
    masked, _ = _mask(sql)
    m = _ALTER_TABLE_ADD.match(masked)
    if not m or not _ADD_COLUMN.match(masked, m.end() - 3):
        return
    rest = masked[m.end():]
    depth = 0
    for ch in rest:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            raise StatementError('syntax error at or near ","')
    if re.search(r"\bNOT\s+NULL\b", rest, re.I) and not re.search(r"\bDEFAULT\b", rest, re.I):
        raise StatementError("ALTER TABLE ADD COLUMN defined as NOT NULL must have a non-null default expression")


def created_table(sql: str) -> str | None:
    """The table a CREATE TABLE (also ``AS`` and ``LIKE``) or ``ALTER TABLE ... ADD`` names, as written."""
    masked, _ = _mask(sql)
    m = _CREATE_TABLE_NAME.match(masked) or _ALTER_TABLE_ADD.match(masked)
    return m.group("name") if m else None


# Redshift's table attributes, in the documented order (CREATE TABLE: ``[BACKUP {YES|NO}]
# [DISTSTYLE {AUTO|EVEN|KEY|ALL}] [DISTKEY (col)] [[COMPOUND|INTERLEAVED] SORTKEY (col, ...) |
# SORTKEY AUTO] [ENCODE AUTO]``; CREATE TABLE AS: the same before ``AS``, without ENCODE).
_TABLE_ATTRIBUTES = [(name, re.compile(r"\s*" + rx, re.I)) for name, rx in (
    ("backup", r"BACKUP\s+(?P<v>YES|NO)\b"),
    ("diststyle", r"DISTSTYLE\s+(?P<v>AUTO|EVEN|KEY|ALL)\b"),
    ("distkey", rf"DISTKEY\s*\(\s*(?P<v>{_IDENT})\s*\)"),
    ("sortkey", rf"(?:(?P<kind>COMPOUND|INTERLEAVED)\s+)?SORTKEY\s*(?:\(\s*(?P<v>{_IDENT}(?:\s*,\s*{_IDENT})*)\s*\)"
                r"|(?P<auto>AUTO)\b)"),
    ("encode", r"ENCODE\s+AUTO\b"),
)]
# Column attributes the emulator takes out of a column definition (ENCODE <encoding>, DISTKEY, SORTKEY).
_COLUMN_ATTRIBUTE = re.compile(r"\b(?P<attr>ENCODE\s+[A-Za-z0-9_]+|DISTKEY|SORTKEY)\b", re.I)
_NOT_A_COLUMN = {"CONSTRAINT", "PRIMARY", "UNIQUE", "FOREIGN", "CHECK", "LIKE", "EXCLUDE"}
MAX_COMPOUND_SORTKEY_COLUMNS = 400
MAX_INTERLEAVED_SORTKEY_COLUMNS = 8


def _folded(name: str) -> str:
    """An identifier as PostgreSQL (and Redshift) spells it: quoted as written, else lower case."""
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()


@dataclasses.dataclass
class TableDesign:
    """The Redshift physical design a CREATE TABLE declares: where rows live (DISTSTYLE,
    DISTKEY) and in what order (SORTKEY). ``columns`` are the names the column list defines
    (None when it does not: ``LIKE`` or ``AS``), checked against the keys before PostgreSQL runs
    anything; otherwise the keys are checked against the table once it exists."""
    diststyle: str | None = None  # AUTO | EVEN | KEY | ALL, as written
    distkey: str | None = None
    sortkind: str | None = None  # COMPOUND | INTERLEAVED | AUTO
    sortkey: list[str] = dataclasses.field(default_factory=list)
    columns: list[str] | None = None

    def check(self, columns: list[str] | None = None) -> None:
        """Refuses a design that names a column the table does not have."""
        have = columns if columns is not None else self.columns
        if have is None:
            return
        if self.distkey is not None and self.distkey not in have:
            raise StatementError(f'column "{self.distkey}" named in DISTKEY does not exist')
        for col in self.sortkey:
            if col not in have:
                raise StatementError(f'column "{col}" named in SORTKEY does not exist')

    def index_columns(self) -> list[list[str]]:
        """The indexes that translate the sort key for PostgreSQL (see the module docs)."""
        if self.sortkind == "COMPOUND":
            return [self.sortkey]
        if self.sortkind == "INTERLEAVED":
            return [[c] for c in self.sortkey]
        return []


def _top_level_split(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def _closing_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise StatementError('syntax error at end of input (unbalanced parentheses in CREATE TABLE)')


def _table_attributes(masked: str, pos: int) -> tuple[dict[str, re.Match], int]:
    """The table attributes from ``pos`` on, in the documented order, each at most once; where they end."""
    seen: dict[str, re.Match] = {}
    for name, rx in _TABLE_ATTRIBUTES:
        a = rx.match(masked, pos)
        if a is not None:
            seen[name] = a
            pos = a.end()
    return seen, pos


def translate_table_design(sql: str) -> tuple[str, TableDesign | None]:
    """A CREATE TABLE without its Redshift-only attributes, and the design they declare (None
    for any other statement). Takes exactly what Redshift's grammar takes: column attributes
    ``ENCODE enc``, ``DISTKEY`` and ``SORTKEY``; table attributes in the documented order, each
    at most once. Refuses, as Redshift does, a DISTKEY with a DISTSTYLE other than KEY, DISTSTYLE
    KEY without a DISTKEY, two distribution keys, a sort key given both ways, a column named
    twice in a sort key, too many sort key columns, and a key column that is not in the column
    list. Attributes out of order are left in the text for PostgreSQL to refuse as a syntax error."""
    masked, pieces = _mask(sql)
    m = _CREATE_TABLE_NAME.match(masked)
    if not m:
        return sql, None
    design = TableDesign()
    head, pos = masked[:m.end()], m.end()
    column_distkeys: list[str] = []
    column_sortkeys: list[str] = []
    body = ""
    ws = re.compile(r"\s*").match(masked, pos).end()
    if ws < len(masked) and masked[ws] == "(":
        close = _closing_paren(masked, ws)
        inner = masked[ws + 1:close]
        # ``CREATE TABLE t (a, b) [attributes] AS query`` names the query's columns: no types, no attributes.
        _, attributes_end = _table_attributes(masked, close + 1)
        ctas_names = re.match(r"\s*AS\b", masked[attributes_end:], re.I) is not None
        items = []
        names: list[str] = []
        has_like = False
        for item in _top_level_split(inner):
            first = re.match(rf"\s*({_IDENT})", item)
            if first is None or first.group(1).upper() in _NOT_A_COLUMN:
                has_like |= bool(first) and first.group(1).upper() == "LIKE"
                items.append(item)
                continue
            name = _folded(first.group(1))
            names.append(name)
            if ctas_names:
                items.append(item)
                continue
            rest = item[first.end():]
            for a in _COLUMN_ATTRIBUTE.finditer(rest):
                word = a.group("attr").split()[0].upper()
                if word == "DISTKEY":
                    column_distkeys.append(name)
                elif word == "SORTKEY":
                    column_sortkeys.append(name)
            items.append(item[:first.end()] + _COLUMN_ATTRIBUTE.sub("", rest))
        design.columns = None if has_like or ctas_names else names
        body = masked[pos:ws] + "(" + ",".join(items) + ")"
        pos = close + 1
    seen, pos = _table_attributes(masked, pos)
    tail = masked[pos:]
    if "diststyle" in seen:
        design.diststyle = seen["diststyle"].group("v").upper()
    if "distkey" in seen:
        design.distkey = _folded(seen["distkey"].group("v"))
    if "sortkey" in seen:
        s = seen["sortkey"]
        if s.group("auto"):
            if s.group("kind"):
                raise StatementError(f"syntax error at or near \"AUTO\" ({s.group('kind').upper()} SORTKEY needs columns)")
            design.sortkind = "AUTO"
        else:
            design.sortkind = (s.group("kind") or "COMPOUND").upper()
            design.sortkey = [_folded(c.strip()) for c in re.findall(_IDENT, s.group("v"))]
    if len(column_distkeys) > 1 or (column_distkeys and design.distkey is not None):
        raise StatementError("a table can have only one distribution key (DISTKEY)")
    if column_distkeys:
        design.distkey = column_distkeys[0]
    if column_sortkeys:
        if design.sortkind is not None:
            raise StatementError("SORTKEY given as a column attribute and as a table attribute")
        design.sortkind, design.sortkey = "COMPOUND", column_sortkeys
    if design.distkey is not None and design.diststyle not in (None, "KEY"):
        raise StatementError(f"DISTKEY cannot be used with DISTSTYLE {design.diststyle}")
    if design.diststyle == "KEY" and design.distkey is None:
        raise StatementError("DISTSTYLE KEY needs a DISTKEY column")
    if len(set(design.sortkey)) < len(design.sortkey):
        raise StatementError("a column appears more than once in SORTKEY")
    limit = MAX_INTERLEAVED_SORTKEY_COLUMNS if design.sortkind == "INTERLEAVED" else MAX_COMPOUND_SORTKEY_COLUMNS
    if len(design.sortkey) > limit:
        raise StatementError(f"a {design.sortkind.lower()} sort key has at most {limit} columns")
    design.check()
    return _unmask(head + body + tail, pieces), design


# Column types whose zone maps Redshift compares exactly (numbers, dates, times); for CHAR and
# VARCHAR it keeps only the first 8 bytes, which a BRIN index of the whole value would outdo.
_ZONE_MAP_TYPES = {20, 21, 23, 700, 701, 1700, 1082, 1114, 1184}


def apply_table_design(conn: psycopg.Connection, table: str, design: TableDesign) -> None:
    """After the table was made: its keys checked against its columns (``LIKE`` and ``AS``), the
    sort key's translation (B-tree indexes) and, on a permanent table, the zone maps' (a BRIN
    index of each number, date and time column); see the module docs."""
    oid = conn.execute("SELECT to_regclass(%s)::oid::int", [table]).fetchone()[0]
    if oid is None:
        return
    columns = conn.execute("SELECT attname::text, atttypid::int FROM pg_attribute WHERE attrelid = %s"
                           " AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [oid]).fetchall()
    if design.columns is None:
        design.check([name for name, _ in columns])
    regclass, temporary = conn.execute("SELECT %s::regclass::text, relpersistence = 't' FROM pg_class WHERE oid = %s",
                                       [oid, oid]).fetchone()
    for cols in design.index_columns():
        conn.execute(f"CREATE INDEX ON {regclass} ({', '.join(_ident(c) for c in cols)})")
    if not temporary:
        for name, typid in columns:
            if typid in _ZONE_MAP_TYPES:
                conn.execute(f"CREATE INDEX ON {regclass} USING brin ({_ident(name)}) WITH (autosummarize = on)")


_DATABASE_DDL = re.compile(
    _LEAD + rf"(?P<verb>CREATE|ALTER)\s+DATABASE\s+(?P<name>{_IDENT})"
    r"(?P<rest>(?:\s+WITH)?(?:\s+ISOLATION\s+LEVEL\s+(?P<level>SNAPSHOT|SERIALIZABLE))?)?(?P<tail>.*?)[\s;]*$", re.I | re.S)


_DROP_DATABASE = re.compile(_LEAD + rf"DROP\s+DATABASE\s+(?:IF\s+EXISTS\s+)?(?P<name>{_IDENT})", re.I)


def dropped_database(sql: str) -> str | None:
    """The database a ``DROP DATABASE`` names, as PostgreSQL spells it."""
    m = _DROP_DATABASE.match(_mask(sql)[0])
    if not m:
        return None
    name = m.group("name")
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()


@dataclasses.dataclass
class DatabaseDdl:
    verb: str  # CREATE | ALTER
    name: str  # as PostgreSQL spells it (unquoted names folded to lower case)
    level: str | None  # SNAPSHOT | SERIALIZABLE | None


def parse_database_ddl(sql: str) -> DatabaseDdl | None:
    """``CREATE DATABASE name [[WITH] ISOLATION LEVEL SNAPSHOT|SERIALIZABLE]`` and
    ``ALTER DATABASE name ISOLATION LEVEL ...``; None for anything else (other ALTER DATABASE
    forms go to PostgreSQL as they are)."""
    masked, pieces = _mask(sql)
    m = _DATABASE_DDL.match(masked)
    if not m:
        return None
    verb, level = m.group("verb").upper(), (m.group("level") or "").upper() or None
    if verb == "ALTER" and level is None:
        return None
    if m.group("tail").strip():
        raise StatementError(f"{verb} DATABASE option {_unmask(m.group('tail').strip(), pieces)!r} is not emulated"
                             " (only ISOLATION LEVEL SNAPSHOT | SERIALIZABLE)")
    name = m.group("name")
    name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
    return DatabaseDdl(verb, name, level)


@dataclasses.dataclass
class CopySpec:
    table: str
    columns: str  # "(a, b)" or ""
    source: str  # s3://bucket/key
    csv: bool = False
    delimiter: str | None = None
    quote: str | None = None
    null: str | None = None  # NULL AS '...'; None: Redshift's default, \N
    empty_as_null: bool = False  # EMPTYASNULL (or NULL AS '')
    blanks_as_null: bool = False  # BLANKSASNULL
    gzip: bool = False
    manifest: bool = False
    ignore_header: int = 0

    @property
    def null_string(self) -> str:
        return "\\N" if self.null is None else self.null

    def postgres_copy(self, table: str | None = None, columns: str | None = None) -> str:
        """The ``COPY ... FROM STDIN`` that reads one file of this spec (into an all-text table)."""
        lit = lambda s: "'" + s.replace("'", "''") + "'"  # noqa: E731
        opts = ["FORMAT csv" if self.csv else "FORMAT text",
                "DELIMITER " + lit(self.delimiter or ("," if self.csv else "|"))]
        if self.csv and self.quote:
            opts.append("QUOTE " + lit(self.quote))
        opts.append("NULL " + lit(self.null_string))
        cols = self.columns if columns is None else columns
        cols = f" {cols}" if cols else ""
        return f"COPY {table or self.table}{cols} FROM STDIN WITH ({', '.join(opts)})"


_COPY = re.compile(_LEAD + r"COPY\s+(?P<table>[^\s(]+)\s*(?P<cols>\([^)]*\))?\s*FROM\s+\x00(?P<src>\d+)\x00(?P<opts>.*?)[\s;]*$", re.I | re.S)
_COPY_IGNORED_WITH_VALUE = {"IAM_ROLE", "CREDENTIALS", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN",
                            "REGION", "DATEFORMAT", "MAXERROR", "ENCODING", "ESCAPE_CHARACTER"}
_COPY_IGNORED_FLAGS = {"TRIMBLANKS", "TRUNCATECOLUMNS", "FILLRECORD", "ACCEPTANYDATE",
                       "IGNOREBLANKLINES", "ROUNDEC", "EXPLICIT_IDS", "ESCAPE", "NOLOAD", "IGNOREALLERRORS"}
_COPY_OPTIONAL_VALUE = {"COMPUPDATE", "STATUPDATE", "ACCEPTINVCHARS"}


def parse_copy(sql: str) -> CopySpec | None:
    """Parse a Redshift ``COPY ... FROM 's3://...'``; None for any other statement."""
    masked, pieces = _mask(sql)
    m = _COPY.match(masked)
    if not m or not _unquote(pieces[int(m.group("src"))]).startswith("s3://"):
        return None
    spec = CopySpec(_unmask(m.group("table"), pieces), _unmask(m.group("cols") or "", pieces),
                    _unquote(pieces[int(m.group("src"))]))
    toks = re.findall(r"\x00\d+\x00|[A-Za-z_][A-Za-z0-9_]*|\d+|\S", m.group("opts"))
    i = 0

    def value(keyword: str) -> str:
        nonlocal i
        if i < len(toks) and toks[i].upper() == "AS":
            i += 1
        if i >= len(toks):
            raise StatementError(f"COPY {spec.table}: option {keyword} needs a value")
        i += 1
        tok = toks[i - 1]
        return _unquote(pieces[int(tok.strip("\x00"))]) if tok.startswith("\x00") else tok

    while i < len(toks):
        kw = toks[i].upper()
        i += 1
        if kw == "CSV":
            spec.csv = True
        elif kw == "FORMAT":
            fmt = value(kw).upper()
            if fmt != "CSV":
                raise StatementError(f"COPY {spec.table}: FORMAT {fmt} is not emulated (only CSV and delimited text)")
            spec.csv = True
        elif kw == "DELIMITER":
            spec.delimiter = value(kw)
        elif kw == "QUOTE":
            spec.quote = value(kw)
        elif kw == "NULL":
            spec.null = value(kw)
            spec.empty_as_null = spec.empty_as_null or spec.null == ""  # NULL AS '' is EMPTYASNULL
        elif kw == "EMPTYASNULL":
            spec.empty_as_null = True
        elif kw == "BLANKSASNULL":
            spec.blanks_as_null = True
        elif kw == "GZIP":
            spec.gzip = True
        elif kw == "MANIFEST":
            spec.manifest = True
        elif kw == "IGNOREHEADER":
            spec.ignore_header = int(value(kw))
        elif kw == "TIMEFORMAT":
            if value(kw).lower() in ("epochsecs", "epochmillisecs"):
                raise StatementError(f"COPY {spec.table}: TIMEFORMAT epochsecs/epochmillisecs is not emulated")
        elif kw in _COPY_IGNORED_WITH_VALUE:
            value(kw)
        elif kw in _COPY_OPTIONAL_VALUE:
            if i < len(toks) and (toks[i].upper() in ("AS", "ON", "OFF", "TRUE", "FALSE", "PRESET") or toks[i].startswith("\x00")):
                value(kw)
        elif kw not in _COPY_IGNORED_FLAGS:
            raise StatementError(f"COPY {spec.table}: option {toks[i - 1]} is not emulated")
    return spec


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


def read_copy_sources(s3, spec: CopySpec) -> list[tuple[str, bytes]]:
    """Fetch every file a COPY loads, before loading any, so that a missing part loads nothing."""
    from botocore.exceptions import ClientError

    def get(url: str) -> bytes | None:
        bucket, key = _split_s3(url)
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
                return None
            raise StatementError(f"COPY {spec.table}: cannot read {url}: {e}") from e

    files: list[tuple[str, bytes]] = []
    if spec.manifest:
        raw = get(spec.source)
        if raw is None:
            raise StatementError(f"COPY {spec.table}: manifest {spec.source} not found")
        try:
            entries = json.loads(raw)["entries"]
        except (ValueError, KeyError, TypeError) as e:
            raise StatementError(f"COPY {spec.table}: manifest {spec.source} is not a valid manifest: {e}") from e
        # Redshift loads a manifest's files in parallel across slices; so does this, with threads.
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            fetched = list(pool.map(lambda entry: get(entry["url"]), entries))
        for entry, data in zip(entries, fetched):
            if data is None and entry.get("mandatory", False):
                raise StatementError(f"COPY {spec.table}: mandatory manifest entry {entry['url']} not found "
                                     f"(manifest {spec.source})")
            if data is not None:
                files.append((entry["url"], data))
    else:
        bucket, prefix = _split_s3(spec.source)
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    files.append((f"s3://{bucket}/{obj['Key']}", get(f"s3://{bucket}/{obj['Key']}") or b""))
        except ClientError as e:
            raise StatementError(f"COPY {spec.table}: cannot list {spec.source}: {e}") from e
    if not files:
        raise StatementError(f"COPY {spec.table}: no S3 object found for {spec.source}")
    return files


_STRING_OIDS = {25: "text", 1043: "varchar", 1042: "char"}  # text, varchar, bpchar
_TIMESTAMP_OIDS = {1114, 1184}  # timestamp, timestamptz
_BLANKS = "E' \\t\\r\\n\\f\\v'"
# Redshift's load error codes (SYS_LOAD_ERROR_DETAIL.error_code) for what the emulator checks.
_LOAD_ERRORS = {
    "length": (1204, "String length exceeds DDL length"),
    "timestamp": (1206, "Invalid timestamp format or value: more than 6 fractional-second digits"),
}


@dataclasses.dataclass
class LoadColumn:
    name: str
    typid: int
    typmod: int
    typname: str  # format_type(), e.g. "character varying(64)"
    not_null: bool

    @property
    def max_bytes(self) -> int | None:
        """Redshift's byte limit for a string column (VARCHAR / TEXT without a length: 256)."""
        if self.typid not in _STRING_OIDS:
            return None
        return self.typmod - 4 if self.typmod >= 4 else DEFAULT_VARCHAR_BYTES


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_names(columns: str) -> list[str]:
    """The names of a COPY column list ``(a, "B")`` as PostgreSQL spells them."""
    names = []
    for part in re.findall(r'"(?:[^"]|"")+"|[^,\s()]+', columns):
        names.append(part[1:-1].replace('""', '"') if part.startswith('"') else part.lower())
    return names


def _load_columns(cur, spec: CopySpec) -> tuple[str, str, list[LoadColumn]]:
    """(relname, regclass text, the loaded columns in file order) of a COPY's target."""
    try:
        row = cur.execute("SELECT c.oid::int, c.relname::text, c.oid::regclass::text FROM pg_class c"
                          " WHERE c.oid = to_regclass(%s)", [spec.table]).fetchone()
    except psycopg.Error as e:
        raise StatementError(f"COPY {spec.table}: {e.diag.message_primary or e}") from None
    if row is None:
        raise StatementError(f'relation "{spec.table}" does not exist')
    oid, relname, regclass = row
    cols = {r[0]: LoadColumn(*r) for r in cur.execute(
        "SELECT attname::text, atttypid::int, atttypmod, format_type(atttypid, atttypmod), attnotnull"
        " FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", [oid])}
    if not spec.columns:
        return relname, regclass, list(cols.values())
    out = []
    for name in _column_names(spec.columns):
        if name not in cols:
            raise StatementError(f'column "{name}" of relation "{relname}" does not exist')
        out.append(cols[name])
    return relname, regclass, out


def _converted(spec: CopySpec, col: LoadColumn, src: str) -> str:
    """SQL turning the raw text ``src`` (NULL when the field was the NULL string) into the value
    Redshift's COPY loads: an empty CHAR/VARCHAR field is '' unless EMPTYASNULL, a blank one is
    NULL with BLANKSASNULL, an empty field of any other type is NULL."""
    if col.typid in _STRING_OIDS:
        conds = []
        if spec.empty_as_null:
            conds.append(f"{src} = ''")
        if spec.blanks_as_null:
            conds.append(f"({src} <> '' AND btrim({src}, {_BLANKS}) = '')")
        return f"CASE WHEN {' OR '.join(conds)} THEN NULL ELSE {src} END" if conds else src
    return f"CAST(NULLIF({src}, '') AS {col.typname})"


def run_copy(conn: psycopg.Connection, s3, spec: CopySpec) -> int:
    """Load every file of the COPY in one transaction (a savepoint inside a batch); rows loaded.

    Each file goes by PostgreSQL's COPY into a temporary all-text table; one query finds the
    first row Redshift would refuse (a string longer than its column in bytes, a timestamp with
    more than 6 fractional digits); then one ``INSERT ... SELECT`` converts every column the way
    Redshift's COPY does and loads the target."""
    files = read_copy_sources(s3, spec)
    tmp = f"pg_temp.rs_copy_{uuid.uuid4().hex[:12]}"
    with conn.transaction(), conn.cursor() as cur:
        relname, target, cols = _load_columns(cur, spec)
        # Concurrent COPYs into one table serialize on Redshift: this lock conflicts with
        # itself (and VACUUM/ANALYZE), not with the row locks of INSERT, UPDATE or DELETE.
        cur.execute(f"LOCK TABLE {target} IN SHARE UPDATE EXCLUSIVE MODE")
        raw = [f"c{i}" for i in range(len(cols))]
        failed = lambda where, code, reason, value=None: StatementError(  # noqa: E731
            f"Load into table '{relname}' failed. Check 'sys_load_error_detail' system table for details."
            f" [emulator: {where}: error {code}: {reason}" + (f"; value {value[:100]!r}" if value is not None else "") + "]")
        cur.execute(f"CREATE TEMP TABLE {tmp} ({', '.join(c + ' text' for c in raw)})")
        spans: list[tuple[str, int]] = []  # (url, rows) per file, in load order
        for url, data in files:
            if spec.gzip:
                try:
                    data = gzip.decompress(data)
                except (OSError, EOFError) as e:
                    raise StatementError(f"COPY {spec.table}: {url} is not gzip data: {e}") from e
            if spec.ignore_header:
                parts = data.split(b"\n", spec.ignore_header)
                data = parts[spec.ignore_header] if len(parts) > spec.ignore_header else b""
            try:
                with cur.copy(spec.postgres_copy(tmp, f"({', '.join(raw)})")) as copy:
                    copy.write(data)
            except psycopg.errors.DataError as e:  # malformed CSV, wrong field count, bad UTF-8
                context = e.diag.context or ""
                m = re.search(r"line (\d+)(?:, column c(\d+))?", context)
                where = url
                if m:
                    where += f" line {int(m.group(1)) + spec.ignore_header}"
                    if m.group(2) is not None:
                        where += f", column {cols[int(m.group(2))].name}"
                raise failed(where, 1200, e.diag.message_primary or str(e)) from None
            spans.append((url, max(cur.rowcount, 0)))

        def where_is(ctid: str, i: int) -> str:
            index = cur.execute(f"SELECT count(*) FROM {tmp} WHERE ctid < %s::tid", [ctid]).fetchone()[0]
            for url, n in spans:
                if index < n:
                    return f"{url} line {index + 1 + spec.ignore_header}, column {cols[i].name} ({cols[i].typname})"
                index -= n
            return f"row {index}, column {cols[i].name}"

        # Each column's conversion, refusing what Redshift refuses (a string longer than its column
        # in bytes, a timestamp with more than 6 fractional digits) by raising LOAD_ERROR_STATE
        # at the first such row: the one pass over the data is the INSERT itself.
        converted = []
        for i, col in enumerate(cols):
            value = _converted(spec, col, f"c{i}")
            refuse = f"{SCHEMA}.load_error(ctid, {i}, '{{}}')"
            if col.max_bytes is not None:
                value = f"CASE WHEN octet_length(c{i}) > {col.max_bytes} THEN {refuse.format('length')} ELSE {value} END"
            elif col.typid in _TIMESTAMP_OIDS:
                # LIKE first: a regex costs ~3 us a row, LIKE a tenth of it, and rarely passes
                value = (f"CASE WHEN (c{i} LIKE '%._______%' OR c{i} LIKE '%,_______%')"
                         f" AND c{i} ~ '[0-9]:[0-9][0-9][.,][0-9]{{7}}'"
                         f" THEN CAST({refuse.format('timestamp')} AS {col.typname}) ELSE {value} END")
            converted.append(value)
        try:
            with conn.transaction():
                cur.execute(f"INSERT INTO {target} ({', '.join(_ident(c.name) for c in cols)})"
                            f" SELECT {', '.join(converted)} FROM {tmp}")
                rows = max(cur.rowcount, 0)
        except psycopg.Error as e:
            if e.sqlstate == LOAD_ERROR_STATE:
                ctid, i, kind = (e.diag.message_primary or "").split(" ")
                i = int(i)
                value = cur.execute(f"SELECT c{i} FROM {tmp} WHERE ctid = %s::tid", [ctid]).fetchone()[0]
                raise failed(where_is(ctid, i), *_LOAD_ERRORS[kind], value) from None
            if not isinstance(e, (psycopg.errors.DataError, psycopg.errors.NotNullViolation)):
                raise
            message = e.diag.message_primary or str(e)
            code, probe = 1200, None
            if isinstance(e, psycopg.errors.NotNullViolation):
                code, message = 1213, f"Missing data for not-null field ({message})"
                probe = [(i, f"({_converted(spec, c, f'c{i}')}) IS NULL") for i, c in enumerate(cols)
                         if c.name == e.diag.column_name]
            elif (m := re.search(r'"((?:[^"]|"")*)"', message)) is not None:
                v = m.group(1).replace("'", "''")
                probe = [(i, f"c{i} = '{v}'") for i, c in enumerate(cols) if c.typid not in _STRING_OIDS]
            if probe:
                which = " ".join(f"WHEN {sql} THEN {i}" for i, sql in probe)
                bad = cur.execute(f"SELECT ctid::text, CASE {which} END FROM {tmp} WHERE {' OR '.join(s for _, s in probe)}"
                                  " ORDER BY ctid LIMIT 1").fetchone()
                if bad:
                    i = bad[1]
                    value = cur.execute(f"SELECT c{i} FROM {tmp} WHERE ctid = %s::tid", [bad[0]]).fetchone()[0]
                    if code == 1200:  # Redshift's code by the column's type
                        code = {20: 1207, 21: 1207, 23: 1207, 1700: 1207, 1082: 1205}.get(
                            cols[i].typid, 1206 if cols[i].typid in _TIMESTAMP_OIDS else 1200)
                    raise failed(where_is(bad[0], i), code, message, value) from None
            raise failed(spec.source, code, message) from None
        cur.execute(f"DROP TABLE {tmp}")
        # Redshift writes a block's zone maps with the block: the BRIN indexes that stand for
        # them (see apply_table_design) summarize the block ranges this COPY filled.
        cur.execute("SELECT brin_summarize_new_values(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = %s::regclass AND a.amname = 'brin'", [target])
    return rows


# ------------------------------------------------------------------------------------------
# Per-database objects and per-session settings

SCHEMA = "redshift_emulator"  # the emulator's objects in each database it serves (on the search path)
_DB_IS_SERIALIZABLE = ("EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c"
                       " WHERE s.setdatabase = {db} AND s.setrole = 0"
                       " AND lower(c) = 'default_transaction_isolation=serializable')")
# One round trip at the start of every session: the database's isolation level (SERIALIZABLE
# only when the database says so; anything else is SNAPSHOT = REPEATABLE READ), the emulator's
# schema on the search path, room for COPY's temporary tables, and the planner's costs for data
# that sits in memory (a test database on one machine): with PostgreSQL's default random page
# cost (4, for spinning disks) it would scan a 10 M-row table rather than probe a sort key's
# index for 100 k keys, a plan Redshift's zone maps never force (see translate_table_design).
SESSION_SQL = (
    "SELECT set_config('default_transaction_isolation', CASE WHEN "
    + _DB_IS_SERIALIZABLE.format(db="(SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())")
    + " THEN 'serializable' ELSE 'repeatable read' END, false),"
    f" set_config('search_path', CASE WHEN current_setting('search_path') ~ '\\m{SCHEMA}\\M'"
    f" THEN current_setting('search_path') ELSE current_setting('search_path') || ', {SCHEMA}' END, false),"
    " set_config('temp_buffers', '64MB', false),"
    " set_config('random_page_cost', '1.1', false), set_config('effective_cache_size', '8GB', false)")
# Redshift's SVV_COLUMNS (https://docs.aws.amazon.com/redshift/latest/dg/r_SVV_COLUMNS.html):
# the columns of local tables and views, by schema, in their order. Redshift has no TEXT type
# (TEXT and VARCHAR without a length are VARCHAR(256)) and counts VARCHAR lengths in bytes, as
# the emulator's VARCHAR(n) does (see enforce_byte_lengths): a PostgreSQL text column reads
# as character varying(256), as Redshift would have made it.
SVV_COLUMNS_SQL = (
    f"CREATE OR REPLACE VIEW {SCHEMA}.svv_columns AS SELECT c.table_catalog::text AS table_catalog,"
    " c.table_schema::text AS table_schema, c.table_name::text AS table_name, c.column_name::text AS column_name,"
    " c.ordinal_position::int AS ordinal_position, c.column_default::text AS column_default,"
    " c.is_nullable::text AS is_nullable,"
    " (CASE WHEN c.data_type = 'text' THEN 'character varying' ELSE c.data_type END)::text AS data_type,"
    " (CASE WHEN c.data_type IN ('text', 'character varying') THEN COALESCE(c.character_maximum_length, 256)"
    " ELSE c.character_maximum_length END)::int AS character_maximum_length,"
    " c.numeric_precision::int AS numeric_precision, c.numeric_precision_radix::int AS numeric_precision_radix,"
    " c.numeric_scale::int AS numeric_scale, c.datetime_precision::int AS datetime_precision,"
    " NULL::text AS remarks"
    f" FROM information_schema.columns c WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema', '{SCHEMA}')")
# Redshift's STV_DB_ISOLATION_LEVEL: db_name character(128), isolation_level character(20).
ISOLATION_VIEW_SQL = (
    f"CREATE OR REPLACE VIEW {SCHEMA}.stv_db_isolation_level AS SELECT d.datname::char(128) AS db_name,"
    " (CASE WHEN " + _DB_IS_SERIALIZABLE.format(db="d.oid")
    + " THEN 'Serializable' ELSE 'Snapshot Isolation' END)::char(20) AS isolation_level"
    " FROM pg_catalog.pg_database d WHERE NOT d.datistemplate")
# Trailing blanks are insignificant when Redshift compares VARCHARs. PostgreSQL's CHAR (bpchar)
# comparison, equality, hashing and sort support are exactly that, and take any varlena text:
# bound to (varchar, varchar) through LANGUAGE internal, they make `=`/`<>`/`<`... on varchar
# values and a default btree and hash operator class for varchar (GROUP BY, DISTINCT, window
# partitions, hash and merge joins, indexes) ignore trailing blanks, at C speed.
VARCHAR_OPS_SQL = [f"CREATE FUNCTION {SCHEMA}.varchar_{name}({args}) RETURNS {ret} LANGUAGE internal"
                   f" IMMUTABLE STRICT PARALLEL SAFE AS '{internal}'" for name, args, ret, internal in (
                       ("eq", "varchar, varchar", "boolean", "bpchareq"),
                       ("ne", "varchar, varchar", "boolean", "bpcharne"),
                       ("lt", "varchar, varchar", "boolean", "bpcharlt"),
                       ("le", "varchar, varchar", "boolean", "bpcharle"),
                       ("gt", "varchar, varchar", "boolean", "bpchargt"),
                       ("ge", "varchar, varchar", "boolean", "bpcharge"),
                       ("cmp", "varchar, varchar", "integer", "bpcharcmp"),
                       ("hash", "varchar", "integer", "hashbpchar"),
                       ("hash_extended", "varchar, bigint", "bigint", "hashbpcharextended"),
                       ("sortsupport", "internal", "void", "bpchar_sortsupport"))] + [
    f"CREATE OPERATOR {SCHEMA}.{op} (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = {SCHEMA}.varchar_{name},"
    f" COMMUTATOR = OPERATOR({SCHEMA}.{com}), NEGATOR = OPERATOR({SCHEMA}.{neg}), RESTRICT = {sel},"
    f" JOIN = {jsel}{extra})" for op, name, com, neg, sel, jsel, extra in (
        ("=", "eq", "=", "<>", "eqsel", "eqjoinsel", ", HASHES, MERGES"),
        ("<>", "ne", "<>", "=", "neqsel", "neqjoinsel", ""),
        ("<", "lt", ">", ">=", "scalarltsel", "scalarltjoinsel", ""),
        ("<=", "le", ">=", ">", "scalarlesel", "scalarlejoinsel", ""),
        (">", "gt", "<", "<=", "scalargtsel", "scalargtjoinsel", ""),
        (">=", "ge", "<=", "<", "scalargesel", "scalargejoinsel", ""))] + [
    f"CREATE OPERATOR CLASS {SCHEMA}.varchar_trailing_blanks_ops DEFAULT FOR TYPE varchar USING btree AS"
    f" OPERATOR 1 {SCHEMA}.<, OPERATOR 2 {SCHEMA}.<=, OPERATOR 3 {SCHEMA}.=, OPERATOR 4 {SCHEMA}.>=,"
    f" OPERATOR 5 {SCHEMA}.>, FUNCTION 1 {SCHEMA}.varchar_cmp(varchar, varchar),"
    f" FUNCTION 2 {SCHEMA}.varchar_sortsupport(internal)",
    f"CREATE OPERATOR CLASS {SCHEMA}.varchar_trailing_blanks_hash_ops DEFAULT FOR TYPE varchar USING hash AS"
    f" OPERATOR 1 {SCHEMA}.=, FUNCTION 1 {SCHEMA}.varchar_hash(varchar),"
    f" FUNCTION 2 {SCHEMA}.varchar_hash_extended(varchar, bigint)"]
# COPY's conversion raises this for the first row Redshift would refuse (one pass over the data).
LOAD_ERROR_STATE = "RSLOD"
LOAD_ERROR_SQL = (f"CREATE FUNCTION {SCHEMA}.load_error(row_ctid tid, col integer, kind text) RETURNS text"
                  " LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION USING ERRCODE = '" + LOAD_ERROR_STATE + "',"
                  " MESSAGE = row_ctid::text || ' ' || col || ' ' || kind; END$$")
_PREPARE_LOCK = 0x7265647368696674  # pg_advisory_xact_lock key: one emulator at a time sets a database up
_BYTES_CHECK = re.compile(r"^rs_(varchar|char)_(\d+)_\d+$")


def prepare_database(conn: psycopg.Connection, varchar_ops: bool = False) -> None:
    """The emulator's schema and views in the connected database (idempotent; other emulator
    processes may race); with ``varchar_ops`` also the trailing-blank VARCHAR comparison (only in
    databases the emulator creates: it changes what every varchar comparison there means)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_PREPARE_LOCK])
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        if conn.execute(f"SELECT to_regclass('{SCHEMA}.stv_db_isolation_level')").fetchone()[0] is None:
            conn.execute(ISOLATION_VIEW_SQL)
        if conn.execute(f"SELECT to_regclass('{SCHEMA}.svv_columns')").fetchone()[0] is None:
            conn.execute(SVV_COLUMNS_SQL)
        if conn.execute(f"SELECT to_regprocedure('{SCHEMA}.load_error(tid, integer, text)')").fetchone()[0] is None:
            conn.execute(LOAD_ERROR_SQL)
        if varchar_ops and conn.execute(f"SELECT to_regprocedure('{SCHEMA}.varchar_eq(varchar, varchar)')").fetchone()[0] is None:
            for sql in VARCHAR_OPS_SQL:
                conn.execute(sql)


def enforce_byte_lengths(conn: psycopg.Connection, table: str) -> None:
    """CHECK constraints that hold every CHAR/VARCHAR/TEXT column of ``table`` to Redshift's
    byte length (VARCHAR(n): n bytes of UTF-8; VARCHAR and TEXT: 256); idempotent."""
    oid = conn.execute("SELECT to_regclass(%s)::oid::int", [table]).fetchone()[0]
    if oid is None:
        return
    have = {r[0] for r in conn.execute("SELECT conname::text FROM pg_constraint WHERE conrelid = %s", [oid])}
    adds = []
    for attnum, name, typid, typmod in conn.execute(
            "SELECT attnum, attname::text, atttypid::int, atttypmod FROM pg_attribute WHERE attrelid = %s"
            " AND attnum > 0 AND NOT attisdropped AND atttypid IN (25, 1042, 1043) ORDER BY attnum", [oid]):
        n = typmod - 4 if typmod >= 4 else DEFAULT_VARCHAR_BYTES
        kind = "char" if typid == 1042 else "varchar"
        con = f"rs_{kind}_{n}_{attnum}"
        if con not in have:
            value = f"{_ident(name)}::text" if kind == "char" else _ident(name)
            adds.append(f"ADD CONSTRAINT {con} CHECK (octet_length({value}) <= {n})")
    if adds:
        regclass = conn.execute("SELECT %s::regclass::text", [oid]).fetchone()[0]
        conn.execute(f"ALTER TABLE {regclass} {', '.join(adds)}")


# ------------------------------------------------------------------------------------------
# Statements

def _field(oid: int, raw: bytes | None) -> dict:
    """One Data API typed field from a PostgreSQL text-format value."""
    if raw is None:
        return {"isNull": True}
    text = raw.decode()
    if oid == 16:  # bool
        return {"booleanValue": text == "t"}
    if oid in (20, 21, 23):  # int8, int2, int4
        return {"longValue": int(text)}
    if oid in (700, 701) and math.isfinite(float(text)):  # float4, float8
        return {"doubleValue": float(text)}
    return {"stringValue": text}  # numeric, text, timestamps, ... as Redshift sends them


@dataclasses.dataclass
class Statement:
    id: str
    sql: str
    database: str
    created_at: float = dataclasses.field(default_factory=time.time)
    status: str = "SUBMITTED"
    error: str | None = None
    updated_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    result_rows: int = -1
    result_size: int = 0
    columns: list[tuple[str, int, str]] | None = None  # (name, oid, typname); None: no result set
    rows: list[list[bytes | None]] = dataclasses.field(default_factory=list)
    query_id: int = 0
    subs: list["Statement"] = dataclasses.field(default_factory=list)
    request: dict = dataclasses.field(default_factory=dict)
    pid: int | None = None
    conn: psycopg.Connection | None = None

    def __post_init__(self):
        self.updated_at = self.created_at

    def describe(self) -> dict:
        out = {"Id": self.id, "Status": self.status, "CreatedAt": self.created_at, "UpdatedAt": self.updated_at,
               "QueryString": self.sql, "HasResultSet": self.columns is not None, "ResultRows": self.result_rows,
               "ResultSize": self.result_size, "RedshiftQueryId": self.query_id,
               "Duration": int((self.ended_at - self.started_at) * 1e9) if self.ended_at and self.started_at else -1}
        if self.error:
            out["Error"] = self.error
        return out


class Emulator:
    """Statement state, the worker threads and the Data API operations."""

    def __init__(self, dsn: str, s3_endpoint: str | None, page_rows: int = 1000, max_concurrency: int = 16):
        self.dsn, self.page_rows = dsn, page_rows
        self.default_db = conninfo_to_dict(dsn).get("dbname", "postgres")
        self.statements: dict[str, Statement] = {}
        self.client_tokens: dict[str, str] = {}
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self.known_dbs: set[str] = {self.default_db}
        self.prepared_dbs: set[str] = set()  # databases whose emulator schema this process has checked
        self.query_ids = iter(range(1, 1 << 62))
        self.s3_endpoint = s3_endpoint
        self._s3 = None
        self.s3_lock = threading.Lock()

    def s3(self):
        """The S3 client for COPY, made once (boto3 client creation is not thread-safe)."""
        with self.s3_lock:
            if self._s3 is None:
                import boto3
                from botocore.config import Config
                kwargs = {"region_name": "us-east-1", "config": Config(s3={"addressing_style": "path"})}
                if self.s3_endpoint:
                    kwargs.update(endpoint_url=self.s3_endpoint, aws_access_key_id="emulator",
                                  aws_secret_access_key="emulator")
                self._s3 = boto3.client("s3", **kwargs)
            return self._s3

    def dsn_for(self, database: str) -> str:
        """The named PostgreSQL database; one that does not exist fails the statement, as on
        Redshift (never a silent fallback to another database)."""
        if database and database not in self.known_dbs:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
                    self.known_dbs.add(database)
        if database not in self.known_dbs:
            raise StatementError(f'FATAL: database "{database}" does not exist')
        return make_conninfo(self.dsn, dbname=database)

    def _set(self, st: Statement, status: str, error: str | None = None) -> None:
        with self.lock:
            if st.status in TERMINAL:  # a cancelled statement stays ABORTED
                return
            now = time.time()
            st.status, st.updated_at = status, now
            if status == "STARTED":
                st.started_at, st.query_id = now, next(self.query_ids)
            if status in TERMINAL:
                st.ended_at = now
                st.started_at = st.started_at or now
            if error:
                st.error = error

    # --- requests ---------------------------------------------------------------------

    def _validate_common(self, req: dict) -> dict[str, str]:
        if req.get("SessionId") or req.get("SessionKeepAliveSeconds"):
            raise ApiError("ValidationException", "sessions (SessionId, SessionKeepAliveSeconds) are not emulated")
        if not req.get("Database"):
            raise ApiError("ValidationException", "Database is required")
        if not (req.get("WorkgroupName") or req.get("ClusterIdentifier") or req.get("SecretArn")):
            raise ApiError("ValidationException", "one of WorkgroupName, ClusterIdentifier or SecretArn is required")
        params = {}
        for p in req.get("Parameters") or []:
            name, value = p.get("name", ""), p.get("value")
            if not _PARAM_NAME.match(name):
                raise ApiError("ValidationException", f"parameter name {name!r} must match [0-9a-zA-Z_]+")
            if not isinstance(value, str) or not value:
                raise ApiError("ValidationException", f"parameter {name!r} needs a non-empty string value")
            params[name] = value
        return params

    def _submit(self, req: dict, sqls: list[str] | None) -> dict:
        params = self._validate_common(req)
        token = req.get("ClientToken")
        with self.lock:
            if token and token in self.client_tokens:
                st = self.statements[self.client_tokens[token]]
                return self._submitted(st)
        sid = str(uuid.uuid4())
        sql = req.get("Sql") if sqls is None else ";\n".join(sqls)
        st = Statement(sid, sql, req["Database"], request=req)
        if sqls is not None:
            st.subs = [Statement(f"{sid}:{n}", s, req["Database"], created_at=st.created_at) for n, s in enumerate(sqls, 1)]
        with self.lock:
            self.statements[sid] = st
            if token:
                self.client_tokens[token] = sid
        threading.Thread(target=self._run, args=(st, params), name=f"statement-{sid}", daemon=True).start()
        return self._submitted(st)

    def _submitted(self, st: Statement) -> dict:
        out = {"Id": st.id, "CreatedAt": st.created_at, "Database": st.database}
        for key in ("DbUser", "ClusterIdentifier", "WorkgroupName", "SecretArn", "DbGroups"):
            if st.request.get(key):
                out[key] = st.request[key]
        return out

    def execute_statement(self, req: dict) -> dict:
        sql = req.get("Sql")
        if not isinstance(sql, str) or not sql.strip():
            raise ApiError("ValidationException", "Sql is required")
        if len(sql.encode()) > MAX_SQL_BYTES:
            raise ApiError("ValidationException", f"Sql is longer than {MAX_SQL_BYTES} bytes: the statement size limit is 100 KB")
        return self._submit(req, None)

    def batch_execute_statement(self, req: dict) -> dict:
        sqls = req.get("Sqls")
        if not isinstance(sqls, list) or not 1 <= len(sqls) <= 40 or not all(isinstance(s, str) and s.strip() for s in sqls):
            raise ApiError("ValidationException", "Sqls must hold 1 to 40 non-empty statements")
        # The 100 KB statement limit: the docs do not say whether it holds per statement or for
        # the batch, so it holds for both.
        sizes = [len(s.encode()) for s in sqls]
        for n, size in enumerate(sizes, 1):
            if size > MAX_SQL_BYTES:
                raise ApiError("ValidationException", f"Sqls[{n}] is {size} bytes, longer than {MAX_SQL_BYTES} bytes:"
                                                      " the statement size limit is 100 KB")
        if sum(sizes) > MAX_SQL_BYTES:
            raise ApiError("ValidationException", f"Sqls are {sum(sizes)} bytes together, longer than {MAX_SQL_BYTES}"
                                                  " bytes: the statement size limit is 100 KB (held for the whole batch)")
        return self._submit(req, sqls)

    def _lookup(self, sid: str) -> Statement:
        parent_id, _, n = (sid or "").partition(":")
        with self.lock:
            st = self.statements.get(parent_id)
        if st is not None and n:
            st = st.subs[int(n) - 1] if n.isdigit() and 1 <= int(n) <= len(st.subs) else None
        if st is None:
            raise ApiError("ResourceNotFoundException", f"Query does not exist: statement {sid!r} is unknown")
        return st

    def describe_statement(self, req: dict) -> dict:
        st = self._lookup(req.get("Id", ""))
        with self.lock:
            out = st.describe()
            out.update(self._submitted(st))
            if st.pid:
                out["RedshiftPid"] = st.pid
            if st.request.get("Parameters"):
                out["QueryParameters"] = st.request["Parameters"]
            if st.subs:
                out["SubStatements"] = [s.describe() for s in st.subs]
                out["HasResultSet"] = any(s.columns is not None for s in st.subs)
                out["ResultRows"] = sum(max(s.result_rows, 0) for s in st.subs)
                out["ResultSize"] = sum(s.result_size for s in st.subs)
        return out

    def get_statement_result(self, req: dict) -> dict:
        sid = req.get("Id", "")
        st = self._lookup(sid)
        if st.subs:
            raise ApiError("ValidationException", f"statement {sid} is a batch: ask for a sub-statement id such as {sid}:1")
        if st.status != "FINISHED":
            raise ApiError("ValidationException", f"Query does not have result: statement {sid} is {st.status}")
        if st.columns is None:
            raise ApiError("ValidationException", f"Query does not have result: statement {sid} returned no result set")
        token = req.get("NextToken") or "0"
        if not token.isdigit() or int(token) > len(st.rows):
            raise ApiError("ValidationException", f"invalid NextToken {token!r} for statement {sid}")
        start = int(token)
        page = st.rows[start:start + self.page_rows]
        out = {"Records": [[_field(col[1], raw) for col, raw in zip(st.columns, row)] for row in page],
               "ColumnMetadata": [{"name": name, "label": name, "typeName": typ} for name, _, typ in st.columns],
               "TotalNumRows": len(st.rows)}
        if start + len(page) < len(st.rows):
            out["NextToken"] = str(start + len(page))
        return out

    def cancel_statement(self, req: dict) -> dict:
        st = self._lookup(req.get("Id", ""))
        with self.lock:
            if st.status in TERMINAL:
                raise ApiError("ValidationException", f"Could not cancel statement {st.id}: it is already {st.status}")
            conn = st.conn
        self._set(st, "ABORTED", "statement cancelled by CancelStatement")
        for sub in st.subs:
            self._set(sub, "ABORTED")
        if conn is not None:
            try:
                conn.cancel_safe()
            except psycopg.Error:  # the statement ended meanwhile
                pass
        return {"Status": True}

    def list_statements(self, req: dict) -> dict:
        wanted, name = req.get("Status", "ALL"), req.get("StatementName")
        with self.lock:
            found = sorted(self.statements.values(), key=lambda s: s.created_at, reverse=True)
        out = []
        for st in found:
            if wanted not in ("ALL", st.status) or (name and not st.request.get("StatementName", "").startswith(name)):
                continue
            item = {"Id": st.id, "Status": st.status, "CreatedAt": st.created_at, "UpdatedAt": st.updated_at,
                    "IsBatchStatement": bool(st.subs)}
            if st.subs:
                item["QueryStrings"] = [s.sql for s in st.subs]
            else:
                item["QueryString"] = st.sql
            for key in ("StatementName", "SecretArn"):
                if st.request.get(key):
                    item[key] = st.request[key]
            out.append(item)
        return {"Statements": out[: int(req.get("MaxResults") or 100)]}

    # --- execution ----------------------------------------------------------------------

    def _session(self, conn: psycopg.Connection, database: str) -> str:
        """Sets a new session up; the isolation level of its database ('serializable' or
        'repeatable read', which is how Redshift's SNAPSHOT behaves)."""
        if database not in self.prepared_dbs:
            prepare_database(conn)
            with self.lock:
                self.prepared_dbs.add(database)
        level = conn.execute(SESSION_SQL).fetchone()[0]
        conn.isolation_level = (psycopg.IsolationLevel.SERIALIZABLE if level == "serializable"
                                else psycopg.IsolationLevel.REPEATABLE_READ)
        return level

    def _run(self, st: Statement, params: dict[str, str]) -> None:
        with self.slots:
            if st.status in TERMINAL:
                return
            self._set(st, "PICKED")
            failed: Statement | None = None
            level = "repeatable read"
            try:
                database = self.database_for(st.database)
                with psycopg.connect(make_conninfo(self.dsn, dbname=database), autocommit=True) as conn:
                    with self.lock:
                        st.pid, st.conn = conn.info.backend_pid, conn
                    level = self._session(conn, database)
                    self._set(st, "STARTED")
                    # A batch is one transaction at its database's isolation level (SNAPSHOT:
                    # REPEATABLE READ, SERIALIZABLE: SERIALIZABLE); a lone statement runs in
                    # autocommit at the same level. Nothing runs inside the transaction before
                    # the batch's first statement, so a LOCK there comes before the snapshot.
                    with conn.transaction() if st.subs else contextlib.nullcontext():
                        for sub in st.subs or [st]:
                            failed = sub
                            if sub is not st:
                                self._set(sub, "STARTED")
                            self._execute(conn, sub, params, in_batch=bool(st.subs))
                            if sub is not st:
                                self._set(sub, "FINISHED")
                    failed = None
                self._set(st, "FINISHED")
            except Exception as e:  # noqa: BLE001 -- every failure is reported on the statement
                message = _error_text(e, level)
                if failed is not None and failed is not st:
                    self._set(failed, "FAILED", message)
                    for later in st.subs[st.subs.index(failed) + 1:]:
                        self._set(later, "ABORTED")
                    message = f"{message} [sub-statement {failed.id}]"
                self._set(st, "FAILED", message)
                print(f"redshift-emulator: statement {st.id} {st.status}: {st.error}", file=sys.stderr, flush=True)
            finally:
                with self.lock:
                    st.conn = None

    def database_for(self, database: str) -> str:
        """The named PostgreSQL database if it exists, else the default DSN's database."""
        return conninfo_to_dict(self.dsn_for(database)).get("dbname", self.default_db)

    def _database_ddl(self, conn: psycopg.Connection, ddl: DatabaseDdl, in_batch: bool) -> None:
        """CREATE DATABASE (SNAPSHOT unless told SERIALIZABLE) and ALTER DATABASE ... ISOLATION LEVEL."""
        if in_batch:
            raise StatementError(f"{ddl.verb} DATABASE cannot run inside a transaction block")
        name = _ident(ddl.name)
        if ddl.verb == "CREATE":
            conn.execute(f"CREATE DATABASE {name}")
            conn.execute(f"ALTER DATABASE {name} SET search_path TO \"$user\", public, {SCHEMA}")
            with psycopg.connect(make_conninfo(self.dsn, dbname=ddl.name), autocommit=True) as created:
                prepare_database(created, varchar_ops=True)
            with self.lock:
                self.known_dbs.add(ddl.name)
                self.prepared_dbs.add(ddl.name)
        level = "serializable" if ddl.level == "SERIALIZABLE" else "repeatable read"
        conn.execute(f"ALTER DATABASE {name} SET default_transaction_isolation TO '{level}'")

    def _execute(self, conn: psycopg.Connection, st: Statement, params: dict[str, str], in_batch: bool = False) -> None:
        ddl = parse_database_ddl(st.sql)
        if ddl is not None:
            self._database_ddl(conn, ddl, in_batch)
            st.result_rows = 0
            return
        copy = parse_copy(st.sql)
        if copy is not None:
            st.result_rows = run_copy(conn, self.s3(), copy)
            return
        sql, design = translate_table_design(st.sql)
        sql = translate_char_types(sql)
        check_add_column(sql)
        table = created_table(sql)
        if (dropped := dropped_database(sql)) is not None:  # a database of that name made later is new
            with self.lock:
                self.known_dbs.discard(dropped)
                self.prepared_dbs.discard(dropped)
        # A table with a design is made, checked and indexed atomically (a savepoint in a batch).
        with conn.transaction() if design is not None else contextlib.nullcontext(), conn.cursor() as cur:
            existed = design is not None and cur.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()[0]
            if params:
                cur.execute(translate_parameters(sql, params), params)
            else:
                cur.execute(sql)
            while cur.nextset():  # several statements in one Sql: the last one's result counts
                pass
            res = cur.pgresult
            if cur.description is None or res is None:
                st.result_rows = max(cur.rowcount, 0)
                if table is not None:
                    if design is not None and not existed:  # IF NOT EXISTS of a table there: nothing changes
                        apply_table_design(conn, table, design)
                    enforce_byte_lengths(conn, table)
                    if created_as_select(sql):
                        # Redshift analyzes what CREATE [TEMP] TABLE AS makes, on its own; a
                        # fresh PostgreSQL table has no statistics, and the planner then joins it
                        # by nested loop (the merge's key table: quadratic in the touched keys).
                        cur.execute(f"ANALYZE {table}")
                return
            rows = [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)]
            oids = [res.ftype(c) for c in range(res.nfields)]
            names = [res.fname(c).decode() for c in range(res.nfields)]
        typnames = dict(conn.execute("SELECT oid::int, typname::text FROM pg_type WHERE oid = ANY(%s)", [oids]).fetchall())
        st.columns = [(name, oid, typnames.get(oid, "unknown")) for name, oid in zip(names, oids)]
        st.rows, st.result_rows = rows, len(rows)
        st.result_size = sum(len(v) for row in rows for v in row if v is not None)


SNAPSHOT_CONFLICT = "ERROR: could not complete because of conflict with concurrent transaction"


def _error_text(e: Exception, level: str = "repeatable read") -> str:
    """A failure as Redshift words it. A serialization failure or deadlock is Redshift's error
    1023 on a SERIALIZABLE database and its snapshot-isolation conflict on a SNAPSHOT one."""
    if isinstance(e, (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)):
        # Only the SQLSTATE of PostgreSQL's error follows: its words ("could not serialize
        # access ...") would let a client that knows only error 1023 recognise a snapshot conflict.
        origin = f"(emulated from PostgreSQL SQLSTATE {e.sqlstate}" + (", a deadlock)" if e.sqlstate == "40P01" else ")")
        if level == "serializable":
            table = e.diag.table_name or "unknown"
            return f"ERROR: 1023 DETAIL: Serializable isolation violation on table - {table}, {origin}"
        return f"{SNAPSHOT_CONFLICT} {origin}"
    if isinstance(e, psycopg.errors.CheckViolation) and (m := _BYTES_CHECK.match(e.diag.constraint_name or "")):
        kind = "character varying" if m.group(1) == "varchar" else "character"
        return f"ERROR: value too long for type {kind}({m.group(2)})"
    if isinstance(e, psycopg.Error) and getattr(e, "diag", None) and e.diag.message_primary:
        detail = f" DETAIL: {e.diag.message_detail}" if e.diag.message_detail else ""
        return f"ERROR: {e.diag.message_primary}{detail}"
    return f"ERROR: {e}"


# ------------------------------------------------------------------------------------------
# HTTP

OPERATIONS = {
    "ExecuteStatement": Emulator.execute_statement,
    "BatchExecuteStatement": Emulator.batch_execute_statement,
    "DescribeStatement": Emulator.describe_statement,
    "GetStatementResult": Emulator.get_statement_result,
    "CancelStatement": Emulator.cancel_statement,
    "ListStatements": Emulator.list_statements,
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "redshift-data-emulator"
    # Headers and body go out as two writes; without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add about 40 ms to every response, which Redshift does not.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # quiet unless --verbose
        if getattr(self.server, "verbose", False):
            super().log_message(fmt, *args)

    def _send(self, status: int, payload: dict, error_type: str | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # liveness probe for harnesses
        self._send(200, {"status": "ok"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target", "")
        service, _, operation = target.partition(".")
        try:
            if service != "RedshiftData" or operation not in OPERATIONS:
                raise ApiError("UnknownOperationException", f"unknown operation {target!r}")
            try:
                request = json.loads(body or b"{}")
            except ValueError as e:
                raise ApiError("SerializationException", f"{operation}: body is not JSON: {e}") from e
            if not isinstance(request, dict):
                raise ApiError("SerializationException", f"{operation}: body must be a JSON object")
            self._send(200, OPERATIONS[operation](self.server.emulator, request))
        except ApiError as e:
            self._send(e.status, {"__type": e.kind, "message": e.message}, e.kind)
        except Exception as e:  # noqa: BLE001
            self._send(500, {"__type": "InternalServerException", "message": f"{operation}: {e!r}"}, "InternalServerException")


def serve(host: str, port: int, emulator: Emulator, verbose: bool = False) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.emulator, server.verbose = emulator, verbose
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Redshift Data API emulator over PostgreSQL")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9465, help="0 picks a free port (printed on start)")
    ap.add_argument("--pg", default="host=127.0.0.1 port=5432 user=postgres dbname=test", help="libpq DSN")
    ap.add_argument("--s3-endpoint", help="S3 endpoint for COPY (e.g. moto); default: AWS")
    ap.add_argument("--page-rows", type=int, default=1000, help="rows per GetStatementResult page")
    ap.add_argument("--max-concurrency", type=int, default=16, help="statements running at once")
    ap.add_argument("--verbose", action="store_true", help="log every HTTP request")
    args = ap.parse_args(argv)
    try:
        psycopg.connect(args.pg, connect_timeout=10).close()
    except psycopg.Error as e:
        print(f"redshift-emulator: cannot connect to PostgreSQL ({args.pg}): {e}", file=sys.stderr)
        return 2
    server = serve(args.host, args.port, Emulator(args.pg, args.s3_endpoint, args.page_rows, args.max_concurrency), args.verbose)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    host, port = server.server_address[:2]
    print(f"redshift-emulator listening on http://{host}:{port} (PostgreSQL: {args.pg})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
