"""The store's one failure type, and the guard that translates driver errors into it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from eventsourcing.persistence import IntegrityError, PersistenceError


class StorageError(RuntimeError):
    """The store is unreachable or failed; nothing was acknowledged."""


@contextmanager
def guard() -> Iterator[None]:
    """Translate driver failures into StorageError, once, at the edge of the store."""
    try:
        yield
    except IntegrityError:
        raise
    except (PersistenceError, sqlite3.Error, psycopg.Error, OSError) as error:
        raise StorageError(f"storage unavailable: {type(error).__name__}: {error}") from error
