"""Read-only SQL over the views' tables that operations need beyond the views' own API.

Replay compares two sets of tables row by row and reconcile reads one object's snapshots;
both stay in SQL (counts and keys), so a rebuild of millions of rows is compared without
loading it into memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from billing_ledger.ledger.canonical import Snapshot, snapshot_from_json
from billing_ledger.projections.views import LINKS, SNAPSHOTS, Views


@dataclass(frozen=True)
class Table:
    """One view table: its base name, key columns and the other columns."""

    base: str
    keys: tuple[str, ...]
    values: tuple[str, ...]


# The views' tables (projections/views.py); a rebuild test fails if these drift from it.
TABLES = (
    Table(
        SNAPSHOTS,
        ("event_id", "kind", "object_id"),
        ("customer_id", "event_type", "created", "observation", "json"),
    ),
    Table(LINKS, ("user_id", "customer_id", "event_id", "via"), ("created",)),
)


@dataclass(frozen=True)
class TableDiff:
    """How one table of a rebuild differs from the live one."""

    table: str
    added: int
    changed: int
    removed: int
    customers: tuple[str, ...]  # customers whose rows differ (whose users may change)

    @property
    def same(self) -> bool:
        """No row differs."""
        return not (self.added or self.changed or self.removed)


def _rows(cursor: Any) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cursor.fetchall()]


def _scalar(cursor: Any, sql: str) -> int:
    cursor.execute(sql)
    return int(_rows(cursor)[0][0])


def _missing(a: str, b: str, keys: Sequence[str]) -> str:
    """Rows of table `a` whose key is not in table `b`."""
    on = " AND ".join(f"b.{k} = a.{k}" for k in keys)
    return f"FROM {a} a WHERE NOT EXISTS (SELECT 1 FROM {b} b WHERE {on})"


def _changed(a: str, b: str, table: Table, sqlite: bool) -> str:
    """Rows present in both tables under one key, with some other column different."""
    differs = "IS NOT" if sqlite else "IS DISTINCT FROM"
    on = " AND ".join(f"b.{k} = a.{k}" for k in table.keys)
    unequal = " OR ".join(f"a.{v} {differs} b.{v}" for v in table.values)
    return f"FROM {a} a JOIN {b} b ON {on} WHERE {unequal}"


def diff(live: Views, shadow: Views) -> list[TableDiff]:
    """Per table: rows the shadow adds, changes and removes, compared with the live tables."""
    sqlite = live.db.dialect == "sqlite"
    found = []
    with live.db.transaction(commit=False) as cursor:
        for table in TABLES:
            old = live.db.table(live.names[table.base])
            new = live.db.table(shadow.names[table.base])
            parts = (_missing(new, old, table.keys), _changed(new, old, table, sqlite))
            gone = _missing(old, new, table.keys)
            added, changed, removed = (
                _scalar(cursor, f"SELECT COUNT(*) {p}") for p in (*parts, gone)
            )
            customers = _customers(cursor, (*parts, gone)) if added or changed or removed else ()
            name = live.names[table.base]
            found.append(TableDiff(name, added, changed, removed, customers))
    return found


def _customers(cursor: Any, parts: Sequence[str]) -> tuple[str, ...]:
    """The customers of the differing rows (a second pass, only when some row differs)."""
    cursor.execute(" UNION ".join(f"SELECT a.customer_id {p}" for p in parts))
    return tuple(sorted({r[0] for r in _rows(cursor) if r[0] is not None}))


def snapshots_of(views: Views, kind: str, object_id: str) -> list[Snapshot]:
    """Every snapshot the views hold of one object."""
    p = views.db.param
    sql = f"SELECT json FROM {views.snapshots} WHERE kind = {p} AND object_id = {p}"
    with views.db.transaction(commit=False) as cursor:
        cursor.execute(sql, (kind, object_id))
        return [snapshot_from_json(r[0]) for r in _rows(cursor)]


def object_ids(views: Views, kind: str) -> list[str]:
    """The ids of every object of one kind the views hold a snapshot of, sorted."""
    p = views.db.param
    sql = f"SELECT DISTINCT object_id FROM {views.snapshots} WHERE kind = {p}"
    with views.db.transaction(commit=False) as cursor:
        cursor.execute(sql, (kind,))
        return sorted(r[0] for r in _rows(cursor))


def linked_customers(views: Views) -> list[str]:
    """Every customer some user is linked to, sorted."""
    with views.db.transaction(commit=False) as cursor:
        cursor.execute(f"SELECT DISTINCT customer_id FROM {views.links}")
        return sorted(r[0] for r in _rows(cursor))


def users(views: Views) -> list[str]:
    """Every user the views link to a customer, sorted."""
    with views.db.transaction(commit=False) as cursor:
        cursor.execute(f"SELECT DISTINCT user_id FROM {views.links}")
        return sorted(r[0] for r in _rows(cursor))
