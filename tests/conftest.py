"""Fixtures shared by the unit and integration tests: a PostgreSQL schema of the test's own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from scheduler.store import redact

POSTGRES_URL = os.environ.get("SCHEDULER_TEST_POSTGRES_URL", "postgresql://127.0.0.1/test")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL, once it answered."""
    psycopg = pytest.importorskip("psycopg")
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=2):
            pass
    except psycopg.Error as exc:
        message = f"no PostgreSQL at {redact(POSTGRES_URL)} (set SCHEDULER_TEST_POSTGRES_URL): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A new schema, dropped with everything in it after the test."""
    import psycopg

    schema = f"scheduler_test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def schema_url(base: str, schema: str) -> str:
    """base, with the schema as search_path (so tests never meet) and as application_name (to find them)."""
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options={quote(f'-csearch_path={schema}', safe='')}&application_name={schema}"


@pytest.fixture
def postgres_store_url(postgres_url: str, postgres_schema: str) -> str:
    """A store URL for an empty schema of the test's own on the test server."""
    return schema_url(postgres_url, postgres_schema)
