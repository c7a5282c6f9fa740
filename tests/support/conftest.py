"""Fixtures shared by the emulator's tests and the product-SQL test: one moto server and one
emulator for the whole session, a PostgreSQL schema and an S3 bucket per test, and databases
created through the emulator (as Redshift's CREATE DATABASE) and dropped after the test."""
from __future__ import annotations

import os
import sys
import urllib.request
import uuid

import boto3
import psycopg
import pytest
from botocore.config import Config

from test_redshift_emulator import CREDS, HERE, PAGE_ROWS, PG_DSN, Child, free_port, run_ok


@pytest.fixture(scope="session")
def moto_url():
    try:
        psycopg.connect(PG_DSN, connect_timeout=5).close()
    except psycopg.Error as e:
        pytest.fail(f"PostgreSQL is not reachable at {PG_DSN!r}: {e}")
    port = free_port()
    child = Child("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
    url = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=url, **CREDS)
    child.wait_ready(lambda: s3.list_buckets() is not None)
    yield url
    child.stop()


@pytest.fixture(scope="session")
def emulator_url(moto_url):
    port = free_port()
    child = Child("redshift-emulator", [sys.executable, os.path.join(HERE, "redshift_emulator.py"),
                                        "--port", str(port), "--pg", PG_DSN, "--s3-endpoint", moto_url,
                                        "--page-rows", str(PAGE_ROWS)])
    url = f"http://127.0.0.1:{port}"
    child.wait_ready(lambda: urllib.request.urlopen(url + "/health", timeout=2).status == 200)
    yield url
    child.stop()


@pytest.fixture()
def rd(emulator_url):
    return boto3.client("redshift-data", endpoint_url=emulator_url, **CREDS)


@pytest.fixture()
def s3(moto_url):
    return boto3.client("s3", endpoint_url=moto_url, config=Config(s3={"addressing_style": "path"}), **CREDS)


@pytest.fixture()
def schema():
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture()
def bucket(s3):
    name = f"stage-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture()
def new_database(rd):
    """new_database(level=None) -> name: ``CREATE DATABASE name [ISOLATION LEVEL level]`` through
    the emulator; every database made is dropped at the end of the test."""
    made = []

    def make(level: str | None = None) -> str:
        name = f"db_{uuid.uuid4().hex[:12]}"
        made.append(name)
        run_ok(rd, f"CREATE DATABASE {name}" + (f" ISOLATION LEVEL {level}" if level else ""))
        return name

    yield make
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
