"""One database URL per test: a fresh SQLite file, or a fresh PostgreSQL schema."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from billing_ledger.ledger.store import Database, DatabaseUrl, EventStore

PG_BASE = os.environ.get("LEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/ledger_test")


def sqlite_url(folder: Path) -> str:
    """A fresh SQLite database in `folder`."""
    return f"sqlite:///{folder / 'ledger.db'}"


def postgres_url() -> Iterator[str]:
    """A fresh schema in the test database, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{PG_BASE}?schema={schema}"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def open_store(url: str) -> EventStore:
    """Open (and create if needed) the store named by a LEDGER_DATABASE_URL."""
    store = EventStore(Database(DatabaseUrl.parse(url)))
    store.create()
    return store
