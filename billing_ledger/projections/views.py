"""The SQL read models: every snapshot and every user link, as sets of rows, with tracking.

The rows are a function of the set of stored events, never of their arrival order: no
ledger position is stored in a row, and applying a batch twice changes nothing
(`ON CONFLICT DO NOTHING`). Each batch commits its rows and the projection's position in
one transaction through eventsourcing's tracking recorders. A `suffix` names a second set
of tables, so replay can rebuild beside the live views and `promote` swaps them in at once.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, TypeVar, cast

import psycopg
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder

from billing_ledger.ledger.canonical import (
    CHARGE,
    DISPUTE,
    Snapshot,
    snapshot_from_json,
    snapshot_to_json,
)
from billing_ledger.ledger.store import READ_LOCK_TIMEOUT, Database, StorageError, guard
from billing_ledger.projections import announce
from billing_ledger.projections import cache as read_cache
from billing_ledger.projections import catalog as catalog_fold
from billing_ledger.projections.cache import BatchLog, CacheStats, Entry, ReadCache, estimate
from billing_ledger.projections.cards import CardFact, fact_from_json
from billing_ledger.projections.current import latest, present, present_after
from billing_ledger.projections.links import LinkRow, customer_of, links_of
from billing_ledger.projections.policy import UserInputs
from billing_ledger.projections.purchases import with_customer

log = logging.getLogger("billing_ledger.projections")

SNAPSHOTS = "billing_snapshots"
LINKS = "billing_links"
TRACKING = "billing_tracking"  # our own table: other projections keep theirs
# Each object's present (projections/current.py), rewritten with its snapshots: a read at
# "now" loads a handful of rows per object instead of its whole history.
CURRENT = "billing_current"
SKIPPED = "billing_skipped"  # events the projection refused, committed with the position
CARDS = "billing_cards"  # payment-method facts (projections/cards.py), for the billing page
_NOTIFY = "SELECT pg_notify(%s, %s)"  # a committed batch to the processes that read
SKIPPED_LISTED = 100  # the newest skips `skipped()` lists (all are counted)
# Each product's and price's chosen snapshot (projections/catalog.py), rewritten with its
# snapshots like the present: GET /v1/catalog and /pricing read a few rows, never Stripe.
CATALOG = "billing_catalog"
# A row of the tracking table: the position of the last batch that touched the catalog, so
# a reader loads the catalog again only when it moved.
CATALOG_VERSION = ":catalog"
# A row of the tracking table once every object's present is in the present table (see
# `_fill_current`): a batch takes an object without present rows for one it has never seen.
PRESENT_FILLED = ":present"
# The tables a swap replaces, in the one order that reads, batches and the swap take their
# locks in (PostgreSQL): then none of them can wait for another in a cycle.
SWAPPED = (LINKS, SNAPSHOTS, CARDS, CURRENT, TRACKING, SKIPPED, CATALOG)
CACHE_SIZE = read_cache.CACHE_SIZE
CACHE_SNAPSHOTS = read_cache.CACHE_SNAPSHOTS
KEYS_PER_STATEMENT = 200  # objects named in one statement (SQLite's parameter limit)
# PostgreSQL takes them as two arrays, one parameter each: fewer round trips a batch. Up to
# 2,000 the planner guesses 200 distinct pairs and probes the indexes; at 5,000 it guessed
# 500 and scanned the whole present table to delete a batch's rows.
PG_KEYS_PER_STATEMENT = 2000
SWAP_LOCK_TIMEOUT = 0.5  # how long one attempt of a swap waits for the live tables
# A second row of the tracking table counts the swaps these tables have been through: a
# process that sees it change knows its cached rows and positions are of other tables.
GENERATION = ":generation"

SnapshotRow = tuple[str, str, str | None, str, str, int, bool, str]
_SNAPSHOT_ORDER = attrgetter("kind", "object_id", "created", "event_id")  # a user's inputs
LinkTuple = tuple[str, str, int, str, str]


@dataclass(frozen=True)
class PresentRead:
    """What one read at now found: the views' position, the catalog's version (the position
    of the last batch that changed it) and the user's present (None: the history decides)."""

    position: int
    catalog_version: int
    entry: Entry | None


class PositionMovedError(RuntimeError):
    """The tracked position is not where the batch expected it: read again from `tracked`."""

    def __init__(self, name: str, tracked: int, after: int, position: int) -> None:
        super().__init__(f"projection {name} is at {tracked}, not ready for ({after}, {position}]")
        self.tracked = tracked


class TablesBusyError(RuntimeError):
    """A swap could not lock the live tables in time: some session holds them."""


class ShadowBehindError(RuntimeError):
    """The live tables have applied more than the shadow: catch it up and swap again."""


@dataclass(frozen=True)
class Skipped:
    """An event the projection skipped for its content, and why."""

    event_id: str
    position: int
    event_type: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """As /healthz lists it."""
        return {
            "event_id": self.event_id,
            "position": self.position,
            "type": self.event_type,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class BatchRows:
    """A batch's rows as `Views.apply` writes them: its snapshots' rows (as they are and as
    stored), its links, whether no key needed escaping, the customers and users named."""

    snapshots: Sequence[Snapshot]
    rows: list[SnapshotRow]
    stored: list[SnapshotRow]  # `rows` as the database holds them
    links: list[LinkTuple]  # as the database holds them
    plain: bool
    customers: set[str | None]
    users: set[str]


@dataclass(frozen=True)
class ViewRows:
    """Every row of the views, sorted: what replay compares."""

    snapshots: tuple[SnapshotRow, ...]
    links: tuple[LinkTuple, ...]


def snapshot_row(snapshot: Snapshot) -> SnapshotRow:
    """One snapshot as a row of the snapshot table."""
    return (
        snapshot.kind,
        snapshot.object_id,
        customer_of(snapshot),
        snapshot.event_id,
        snapshot.event_type,
        snapshot.created,
        snapshot.observation,
        snapshot_to_json(snapshot).decode(),
    )


def _card_row(fact: CardFact) -> tuple[Any, ...]:
    """One payment-method fact as a row of the cards table (keys escaped by the insert)."""
    keys = (fact.event_id, fact.kind, fact.object_id, fact.customer_id, fact.payment_method)
    return (*keys, fact.created, fact.to_json().decode())


def _same(value: str) -> str:
    return value


def link_tuple(link: LinkRow) -> LinkTuple:
    """One link as a row of the links table."""
    return (link.user_id, link.customer_id, link.created, link.event_id, link.via)


class _SQLiteTracking(SQLiteTrackingRecorder):
    """eventsourcing's SQLite tracking recorder, on a table named by us (its own is fixed)."""

    def __init__(self, datastore: SQLiteDatastore, table: str) -> None:
        self.table = table  # read by construct_create_table_statements during __init__
        super().__init__(datastore)
        self.insert_tracking_statement = (
            f"INSERT INTO {table} VALUES (:application_name, :notification_id) "
            "ON CONFLICT (application_name) DO UPDATE SET notification_id = :notification_id "
            f"WHERE {table}.notification_id < :notification_id RETURNING notification_id"
        )
        self.select_max_tracking_id_statement = (
            f"SELECT MAX(notification_id) FROM {table} WHERE application_name=?"
        )

    def construct_create_table_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} (application_name TEXT, "
            "notification_id INTEGER, PRIMARY KEY (application_name)) WITHOUT ROWID"
        ]


class Views:
    """The snapshot and link tables of one projection, in the store's database."""

    def __init__(self, db: Database, *, name: str = "billing", suffix: str = "") -> None:
        if not (name + suffix).replace("_", "").isalnum():
            raise ValueError(f"projection names are letters, digits and _: {name + suffix!r}")
        self.db = db
        self.name = name
        self.suffix = suffix
        self.names = {
            base: base + suffix
            for base in (SNAPSHOTS, LINKS, TRACKING, SKIPPED, CURRENT, CARDS, CATALOG)
        }
        self.snapshots = db.table(self.names[SNAPSHOTS])
        self.links = db.table(self.names[LINKS])
        self.tracking = db.table(self.names[TRACKING])
        self.skips = db.table(self.names[SKIPPED])
        self.current = db.table(self.names[CURRENT])
        self.cards = db.table(self.names[CARDS])
        self.catalog_table = db.table(self.names[CATALOG])
        self.tracker: _SQLiteTracking | PostgresTrackingRecorder
        if db.dialect == "sqlite":
            self.tracker = _SQLiteTracking(db.sqlite, self.names[TRACKING])
        else:
            self.tracker = PostgresTrackingRecorder(
                db.postgres, tracking_table_name=self.names[TRACKING]
            )
        # Where this process announces its committed batches (PostgreSQL): every process
        # that reads these tables listens there (projections/announce.py).
        self.channel = announce.channel(db.url.schema, name + suffix)
        self._sql = _Statements(self)
        self._recent: tuple[float, int] = (-1.0, 0)
        # The batches this process committed: a cached user none of them touched is still
        # current, so steady ingestion does not empty the caches (projections/cache.py).
        self.batches = BatchLog()
        self.cache = ReadCache(self.batches)  # whole histories (`at` in the past, history)
        self.present_cache = ReadCache(self.batches)  # each object's present (reads at now)
        # (position when read, what skipped_at answers): /healthz asks on every call.
        self._skips: tuple[int | None, dict[str, Any]] = (None, _skips_json([], 0))
        self._generation: int | None = None  # of the tables last read (None: none read yet)
        # (position checked at, catalog version, chosen snapshots): see `catalog_states`.
        self._catalog: tuple[int, int, tuple[Snapshot, ...]] | None = None

    def shadow(self, suffix: str) -> Views:
        """The same projection under other table names (for replay)."""
        return Views(self.db, name=self.name, suffix=suffix)

    def create(self) -> None:
        """Create the tables and indexes (idempotent).

        On PostgreSQL nothing runs when they all exist: `CREATE INDEX IF NOT EXISTS` still
        takes its table's SHARE lock, and a command starting beside a runner that was
        applying a batch deadlocked with it."""
        self.db.ensure_schema()
        if not self._created():
            with self.db.transaction() as cursor:
                for statement in self._sql.create:
                    cursor.execute(statement)
        with guard():
            self.tracker.create_table()
        self._fill_current()

    def _created(self) -> bool:
        """Whether every table and index of `create` exists already (PostgreSQL; on SQLite
        the statements run, under its one writer lock)."""
        if self.db.dialect != "postgres":
            return False
        names = [self.db.table(name) for name in _created_names(self._sql.create)]
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(
                "SELECT count(*) FROM unnest(%s::text[]) AS r(name) WHERE to_regclass(r.name) IS NULL",
                (names,),
            )
            missing = _values(cursor.fetchall()[0])[0]
        return bool(missing == 0)

    def drop(self) -> None:
        """Drop the tables (replay's shadow, or a rebuild from nothing)."""
        with self.db.transaction() as cursor:
            tables = (self.snapshots, self.links, self.tracking, self.skips, self.current)
            for table in (*tables, self.cards, self.catalog_table):
                cursor.execute(f"DROP TABLE IF EXISTS {table}")

    def position(self) -> int:
        """The position this projection has applied, 0 before its first batch.

        Reading it notices a swap by another process (see `GENERATION`)."""
        rows = self._read_rows(self._sql.tracked, (self.name, self.name + GENERATION))
        position, generation = self._tracking_of(rows)
        self._saw(generation)
        return position

    def apply(
        self,
        snapshots: Sequence[Snapshot],
        after: int,
        position: int,
        skipped: Sequence[Skipped] = (),
        cards: Sequence[CardFact] = (),
        made: BatchRows | None = None,
    ) -> None:
        """Commit a batch's rows, its card facts, its skipped events and the position
        (`after`, `position`] in one transaction; `made`: `batch_rows(snapshots)`, when the
        caller computed it already (the runner does, while the last batch commits)."""
        if made is None or made.snapshots is not snapshots:
            made = self.batch_rows(snapshots)
        rows, plain = made.rows, made.plain
        with self.db.transaction() as cursor:
            if self.db.dialect == "postgres":
                # Derived rows and their position commit together: a crash can only lose
                # both, and the runner applies them again. No need to wait for the flush.
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
            self._insert(cursor, made.stored, made.links)
            if cards:
                self._insert_cards(cursor, [_card_row(c) for c in cards])
            tracked = self._tracked(cursor, lock=True)
            # A gap (tracked < after) or a batch already covered: another runner, or a
            # swap by replay, moved the position. Roll back and read again from there.
            if tracked < after or tracked >= position:
                raise PositionMovedError(self.name, tracked, after, position)
            # After the position check: a skip is recorded once, with the range it is in.
            if skipped:
                cursor.executemany(self._sql.insert_skipped, [_skip_row(s) for s in skipped])
            # After the position's row lock: one writer at a time rewrites the present.
            disputes = self._attach_disputes(cursor, snapshots)
            touched = {(s.kind, s.object_id) for s in snapshots} | {(DISPUTE, c) for c in disputes}
            self._rewrite_present(cursor, touched, snapshots, rows, plain=plain)
            self._rewrite_catalog(cursor, snapshots, position)
            self._track(cursor, Tracking(self.name, position))
            customers = made.customers | set(disputes.values())
            users = made.users
            if self.db.dialect == "postgres":  # delivered at commit, in commit order
                cursor.execute(
                    _NOTIFY, (self.channel, announce.encode(after, position, customers, users))
                )
        self.batches.remember(after, position, customers, users)
        known = self._catalog
        if known is not None and known[0] == tracked and not _touches_catalog(snapshots):
            # The catalog read at `tracked` is still the catalog at `position`: no query.
            self._catalog = (position, known[1], known[2])

    def batch_rows(self, snapshots: Sequence[Snapshot]) -> BatchRows:
        """What `apply` writes for these snapshots, computed outside its transaction (pure:
        the runner computes it while the batch before commits)."""
        rows = [snapshot_row(s) for s in snapshots]
        links = sorted({link_tuple(link) for s in snapshots for link in links_of(s)})
        # Whether the batch's keys are as PostgreSQL holds them (almost always): one scan.
        plain = self.db.dialect == "sqlite" or not _any_needs_escape(rows)
        customers = {row[2] for row in rows} | {link[1] for link in links}
        users = {link[0] for link in links}
        stored = rows if plain else [_escaped(r) if _needs_escape(r) else r for r in rows]
        if self.db.dialect == "postgres" and _any_needs_escape(links):
            links = [_escaped(r) if _needs_escape(r) else r for r in links]
        return BatchRows(snapshots, rows, stored, links, plain, customers, users)

    def _track(self, cursor: Any, tracking: Tracking) -> None:
        """Record the position in this transaction with the tracking recorder's own statement
        (the recorder's insert_tracking would open a transaction of its own)."""
        params = {
            "application_name": tracking.application_name,
            "notification_id": tracking.notification_id,
        }
        cursor.execute(self.tracker.insert_tracking_statement, params)
        if cursor.fetchone() is None:  # the statement's WHERE refused a position not ahead
            raise PositionMovedError(self.name, self._tracked(cursor, lock=False), 0, 0)

    # -- each object's present ----------------------------------------------------------

    def _rewrite_present(
        self,
        cursor: Any,
        objects: set[tuple[str, str]],
        batch: Sequence[Snapshot] = (),
        rows: Sequence[SnapshotRow] = (),
        *,
        plain: bool = False,
    ) -> None:
        """Compute the present of these objects again, with the batch's snapshots (`rows`
        their rows, `plain` when none of their keys needs escaping): from each object's
        present and the batch when that is provably the same (`current.present_after`, the
        usual case in order), else from its history."""
        text: Callable[[str], str] = _same if plain else self._text
        mine: dict[tuple[str, str], dict[str, list[tuple[Snapshot, str]]]] = {}
        for s, row in zip(batch, rows, strict=True):
            if (customer := row[2]) is not None:  # nobody reads one without a customer
                key = (text(row[0]), text(row[1]))
                mine.setdefault(key, {}).setdefault(text(customer), []).append((s, row[7]))
        keys = sorted((text(kind), text(oid)) for kind, oid in objects)
        step = KEYS_PER_STATEMENT if self.db.dialect == "sqlite" else PG_KEYS_PER_STATEMENT
        found: list[tuple[Any, ...]] = []  # inserted once, after every chunk's DELETE
        for start in range(0, len(keys), step):
            chunk = keys[start : start + step]
            where, params = self._sql.objects_in(chunk)
            cursor.execute(f"{self._sql.delete_current}{where} {_RETURNING_CURRENT}", params)
            before: dict[tuple[str, str], dict[str, list[tuple[Any, ...]]]] = {}
            for old in map(_values, cursor.fetchall()):
                before.setdefault((old[0], old[1]), {}).setdefault(old[2], []).append(old)
            again: list[tuple[str, str]] = []
            for key in chunk:
                new = mine.get(key)
                if new is not None and len(new) == 1 and key not in before and key[0] != DISPUTE:
                    ((customer, pairs),) = new.items()
                    if len(pairs) == 1:  # one snapshot of an object new here: its present
                        s, raw = pairs[0]
                        found.append((*key, customer, text(s.event_id), s.created, raw))
                        continue
                after = self._present_after(key, before.get(key, {}), new)
                if after is None:
                    again.append(key)
                else:
                    found += after
            if again:  # from the whole history of these objects
                where, params = self._sql.objects_in(again)
                cursor.execute(self._sql.history_of_objects + where, params)
                found += self._present_rows([_values(r) for r in cursor.fetchall()], batch)
        if found:
            self._insert_current(cursor, found)

    def _present_after(
        self,
        key: tuple[str, str],
        before: dict[str, list[tuple[Any, ...]]],
        mine: dict[str, list[tuple[Snapshot, str]]] | None,
    ) -> list[tuple[Any, ...]] | None:
        """An object's present rows from its present rows `before` and the batch's snapshots
        of it (with their JSON), customer by customer; None: its history must decide."""
        if mine is None or key[0] == DISPUTE:
            return None  # a dispute's customer comes from its charge's rows (_attach_disputes)
        kind, object_id = key
        rows = [row for customer, old in before.items() if customer not in mine for row in old]
        for customer, new in mine.items():
            old = before.get(customer, [])
            current = [snapshot_from_json(row[5]) for row in old]
            kept = present_after(current, [s for s, _ in new])
            if kept is None:
                return None
            raw = {s.event_id: text for s, text in new}
            raw.update((s.event_id, row[5]) for s, row in zip(current, old, strict=True))
            last = max(old[0][4] if old else 0, max(s.created for s, _ in new))
            rows += [
                (kind, object_id, customer, self._text(s.event_id), last, raw[s.event_id])
                for s in kept
            ]
        return rows

    def _insert_current(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        if self.db.dialect == "sqlite":
            cursor.executemany(self._sql.insert_current, rows)
            return
        # COPY, several times faster than an INSERT a row: the DELETE before it in this
        # transaction left none of these rows to conflict with.
        _copy(cursor, self.current, _CURRENT_COLUMNS, rows)

    def _attach_disputes(self, cursor: Any, batch: Sequence[Snapshot]) -> dict[str, str]:
        """Give each dispute row its charge's customer (a dispute names only its charge), once
        both are stored, whichever came first; {charge id: customer} of those attached now."""
        charges = sorted({s.object_id for s in batch if s.kind in (CHARGE, DISPUTE)})
        attached: dict[str, str] = {}
        for start in range(0, len(charges), KEYS_PER_STATEMENT):
            keys = [self._text(c) for c in charges[start : start + KEYS_PER_STATEMENT]]
            cursor.execute(self._sql.attach_disputes(len(keys)), self._sql.once(keys))
            for charge, customer in (_values(r) for r in cursor.fetchall()):
                attached[self._plain(charge)] = self._plain(customer)
        return attached

    def _rewrite_catalog(self, cursor: Any, batch: Sequence[Snapshot], position: int) -> None:
        """Choose again, from all their snapshots, the products and prices this batch touched;
        note the catalog's version (the position) in the tracking table."""
        if not _touches_catalog(batch):
            return
        objects = {(s.kind, s.object_id) for s in batch if s.kind in catalog_fold.CATALOG_KINDS}
        keys = sorted((self._text(kind), self._text(oid)) for kind, oid in objects)
        for start in range(0, len(keys), KEYS_PER_STATEMENT):
            where, params = self._sql.objects_in(keys[start : start + KEYS_PER_STATEMENT])
            cursor.execute(f"DELETE FROM {self.catalog_table} WHERE {where}", params)
            cursor.execute(self._sql.history_of_objects + where, params)
            history = [snapshot_from_json(_values(r)[4]) for r in cursor.fetchall()]
            rows = [
                (*map(self._text, (s.kind, s.object_id, s.event_id)), snapshot_to_json(s).decode())
                for s in catalog_fold.chosen(history)
            ]
            cursor.executemany(self._sql.insert_catalog, rows)
        version = {"application_name": self.name + CATALOG_VERSION, "notification_id": position}
        cursor.execute(self.tracker.insert_tracking_statement, version)
        cursor.fetchall()

    # -- the catalog ------------------------------------------------------------------------

    def catalog_version(self) -> int:
        """The position of the last batch that changed the catalog (0: none yet)."""
        with self._reading() as cursor:
            return self._catalog_version(cursor)

    def _catalog_version(self, cursor: Any) -> int:
        cursor.execute(
            self._sql.tracked, (self.name + CATALOG_VERSION, self.name + CATALOG_VERSION)
        )
        found = [_values(r)[1] for r in cursor.fetchall()]
        return int(found[0]) if found else 0

    def catalog_states(self, position: int | None = None) -> tuple[Snapshot, ...]:
        """Each product's and price's chosen snapshot, sorted by (kind, id).

        Read from the database only when the views moved past `position` since the last
        read (one small query then), and loaded again only when the catalog changed. The
        same tuple object is returned while nothing changed."""
        known = self._catalog
        if known is not None and position is not None and known[0] == position:
            return known[2]
        with self._reading() as cursor:
            version = self._catalog_version(cursor)
            if known is not None and known[1] == version:
                states = known[2]
            else:
                cursor.execute(f"SELECT json FROM {self.catalog_table}")
                found = (snapshot_from_json(_values(r)[0]) for r in cursor.fetchall())
                states = tuple(sorted(found, key=lambda s: (s.kind, s.object_id)))
        self._catalog = (position if position is not None else -1, version, states)
        return states

    def catalog_current(self, position: int, version: int) -> tuple[Snapshot, ...] | None:
        """The cached catalog when `version` (read with `position`, see `present_read`) is
        still the one it was loaded at, now noted as checked at `position`; else None."""
        known = self._catalog
        if known is None or known[1] != version:
            return None
        if known[0] < position:
            self._catalog = (position, version, known[2])
        return known[2]

    def catalog_position(self) -> int | None:
        """The position the cached catalog was last checked at (None: not read yet)."""
        return self._catalog[0] if self._catalog is not None else None

    def _present_rows(
        self, found: list[tuple[Any, ...]], batch: Sequence[Snapshot] = ()
    ) -> list[tuple[Any, ...]]:
        """(kind, object_id, customer, event_id, latest, json) rows from history rows."""
        groups: dict[tuple[str, str, str], dict[str, str]] = {}
        for kind, object_id, customer, event_id, raw in found:
            if customer is not None:  # nobody's inputs hold a snapshot without a customer
                groups.setdefault((kind, object_id, customer), {})[event_id] = raw
        # The batch's snapshots are decoded already: only older ones are decoded again.
        known = {
            (self._text(s.event_id), self._text(s.kind), self._text(s.object_id)): s for s in batch
        }
        rows: list[tuple[Any, ...]] = []
        for (kind, object_id, customer), raws in groups.items():
            history = [
                known.get((event_id, kind, object_id)) or snapshot_from_json(raw)
                for event_id, raw in raws.items()
            ]
            last = latest(history)
            for s in present(history):
                event_id = self._text(s.event_id)
                rows.append((kind, object_id, customer, event_id, last, raws[event_id]))
        return rows

    def _fill_current(self) -> None:
        """Compute the present of every object that has snapshots but no present rows, in
        one transaction holding the position's row (no batch commits meanwhile: a batch
        takes an object without present rows for new), then note the table complete
        (PRESENT_FILLED). A fill cut short leaves nothing, and the next start does it all."""
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(self._sql.tracked, (self.name + PRESENT_FILLED,) * 2)
            if cursor.fetchall():
                cursor.execute(f"SELECT 1 FROM {self.current} LIMIT 1")
                if cursor.fetchall():  # complete; an empty one was dropped: fill it again
                    return
            # Nothing to fill (a new ledger, or one made complete): no write at start, where
            # every process of `serve` creates the views at once (SQLite: one writer).
            cursor.execute(f"{self._sql.objects_without_present} LIMIT 1")
            if not cursor.fetchall():
                return
        with self.db.transaction() as cursor:
            self._tracked(cursor, lock=True)  # a runner elsewhere waits its turn
            cursor.execute(self._sql.objects_without_present)
            objects = {(self._plain(k), self._plain(o)) for k, o in map(_values, cursor.fetchall())}
            for start in range(0, len(objects), 10 * KEYS_PER_STATEMENT):
                chunk = sorted(objects)[start : start + 10 * KEYS_PER_STATEMENT]
                self._rewrite_present(cursor, set(chunk))
            gone = f"DELETE FROM {self.tracking} WHERE application_name = {self.db.param}"
            cursor.execute(gone, (self.name + PRESENT_FILLED,))  # a table dropped and filled
            filled = {"application_name": self.name + PRESENT_FILLED, "notification_id": 1}
            cursor.execute(self.tracker.insert_tracking_statement, filled)
            cursor.fetchall()
        if objects:
            log.info("projection %s: computed the present of %d objects", self.name, len(objects))

    # -- payment-method facts (projections/cards.py) ------------------------------------

    def _insert_cards(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        if self.db.dialect == "sqlite":
            cursor.executemany(self._sql.insert_cards, rows)
            return
        if _any_needs_escape(rows):
            rows = [_escaped(r) if _needs_escape(r) else r for r in rows]
        _copy_insert(cursor, self.cards, "_billing_cards_in", rows, _CARD_COLUMNS)

    def card_facts(self, customers: Sequence[str]) -> list[CardFact]:
        """Every payment-method fact of these customers, and of the payment methods they name."""
        if not customers:
            return []
        keys = [self._text(c) for c in customers[:KEYS_PER_STATEMENT]]
        rows = self._read_rows(self._sql.cards_of(len(keys)), self._sql.twice(keys))
        return [fact_from_json(r[0]) for r in rows]

    def card_rows(self) -> tuple[tuple[Any, ...], ...]:
        """Every fact row, sorted: two views built from the same events compare equal."""
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT event_id, kind, object_id, json FROM {self.cards}")
            return tuple(sorted(self._link(r) for r in cursor.fetchall()))

    def _plain(self, value: str) -> str:
        """A key as read from the database, unescaped."""
        return value if self.db.dialect == "sqlite" else _unescape(value)

    def _insert(self, cursor: Any, rows: list[SnapshotRow], links: list[LinkTuple]) -> None:
        """The rows and links (as stored: `BatchRows.stored`, `BatchRows.links`)."""
        # Links, then snapshots, then tracking: the order reads and the swap lock them in
        # (PostgreSQL), so that no two of them can wait for each other.
        if self.db.dialect == "sqlite":
            cursor.executemany(self._sql.insert_links, links)
            cursor.executemany(self._sql.insert_snapshots, rows)
            return
        _copy_insert(cursor, self.links, "_billing_links_in", links, _LINK_COLUMNS)
        _copy_insert(cursor, self.snapshots, "_billing_snapshots_in", rows, _SNAPSHOT_COLUMNS)

    def _tracked(self, cursor: Any, *, lock: bool) -> int:
        """The tracked position; notes the tables' generation (forgetting the cache if new)."""
        position, generation = self._tracking_row(cursor, lock=lock)
        self._saw(generation)
        return position

    def _tracking_row(self, cursor: Any, *, lock: bool) -> tuple[int, int]:
        """(position, generation) as these tables track them, 0 for a row not there yet."""
        statement = self._sql.tracked_for_update if lock else self._sql.tracked
        cursor.execute(statement, (self.name, self.name + GENERATION))
        return self._tracking_of([_values(row) for row in cursor.fetchall()])

    def _tracking_of(self, rows: list[tuple[Any, ...]]) -> tuple[int, int]:
        """(position, generation) from the rows of the tracking statement."""
        found = dict(rows)
        return int(found.get(self.name, 0)), int(found.get(self.name + GENERATION, 0))

    def _saw(self, generation: int) -> None:
        """Forget every cached read when the tables are not the ones they were loaded from."""
        if generation == self._generation:
            return
        if self._generation is not None:
            log.info("projection %s: tables swapped (generation %d)", self.name, generation)
        self._forget(generation)

    def _forget(self, generation: int | None) -> None:
        self.cache.clear()
        self.present_cache.clear()
        self.batches.clear()
        self._catalog = None
        self._generation = generation
        self._recent = (-1.0, 0)

    def skipped(self) -> tuple[list[Skipped], int]:
        """The newest SKIPPED_LISTED skipped events, oldest first, and how many there are."""
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(self._sql.skipped, (SKIPPED_LISTED,))
            listed = [_skip(_values(r)) for r in cursor.fetchall()]
            cursor.execute(f"SELECT COUNT(*) AS n FROM {self.skips}")
            total = int(_values(cursor.fetchone())[0])
        return sorted(listed, key=lambda s: s.position), total

    def skipped_at(self, position: int) -> dict[str, Any]:
        """`{"skipped": [...], "skipped_total": N}` as /healthz shows them at `position`, read
        again only when the position moved (a skip commits with its position)."""
        read_at, skips = self._skips
        if read_at == position:
            return skips
        try:
            skips = _skips_json(*self.skipped())
        except StorageError:  # the database is away: the last list read stands
            return skips
        self._skips = (position, skips)
        return skips

    def load_inputs(self, user_id: str) -> UserInputs:
        """Everything the policy needs for one user: their links, their customers' snapshots."""
        return self._load(self._sql.inputs_of_user, user_id)[0]

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        """A cursor for one read, which waits at most READ_LOCK_TIMEOUT for a table lock
        (on PostgreSQL; a lock not granted by then is a StorageError)."""
        if self.db.dialect == "sqlite":
            with self.db.transaction(commit=False) as cursor:
                yield cursor
            return
        with guard(), self.db.postgres.get_connection() as conn, conn.cursor() as cursor:
            # One round trip opens the transaction and bounds its lock waits (SET LOCAL).
            cursor.execute(_READ_BEGIN)
            try:
                yield cursor
            finally:
                conn.execute("ROLLBACK")  # a read: nothing to keep

    def _read_rows(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of one read statement, in one round trip: on PostgreSQL through the read
        pool, whose sessions bound their lock waits (READ_LOCK_TIMEOUT), so the statement
        goes alone and each connection prepares it once (psycopg's threshold): the server
        neither parses nor plans it again, which cost it about three times the execution."""
        if self.db.dialect == "sqlite":
            with self.db.transaction(commit=False) as cursor:
                cursor.execute(statement, params)
                return [_values(r) for r in cursor.fetchall()]
        with self.db.read_connection() as conn:
            return conn.execute(statement, params).fetchall()

    def cached_inputs(self, user_id: str, position: int) -> UserInputs | None:
        """The user's inputs if they are current at `position`, else None."""
        found = self.cache.get(user_id, position)
        return found.inputs if found is not None else None

    def inputs(self, user_id: str, position: int) -> UserInputs:
        """The user's inputs, loaded at most once while the views stand at `position`.

        `position` must be read before calling: rows loaded afterwards are at least as new.
        """
        found = self.cached_inputs(user_id, position)
        if found is not None:
            return found
        loaded, size = self._load(self._sql.inputs_of_user, user_id)
        self.cache.put(user_id, Entry(position, loaded, size))
        return loaded

    def present_read(self, user_id: str) -> PresentRead:
        """The views' position, the catalog's version and the user's present, in one
        statement (one consistent snapshot, one round trip); the entry is not cached."""
        rows = self._read_rows(self._sql.present_and_tracked, self._present_params(user_id))
        return self._present_read_of(user_id, rows)

    async def present_read_async(self, user_id: str) -> PresentRead:
        """`present_read` awaited on the event loop (PostgreSQL): the same statement,
        prepared once per connection, on the loop's async read connections."""
        params = self._present_params(user_id)
        with guard():
            async with self.db.read_connection_async() as conn:
                cursor = await conn.execute(self._sql.present_and_tracked, params, prepare=True)
                rows = await cursor.fetchall()
        return self._present_read_of(user_id, rows)

    def _present_params(self, user_id: str) -> tuple[str, ...]:
        key = self._text(user_id)
        return (key, key, *self._tracking_names())

    def _present_read_of(self, user_id: str, rows: list[tuple[Any, ...]]) -> PresentRead:
        found: dict[str, int] = {}
        links: list[tuple[Any, ...]] = []
        snapshots: list[tuple[Any, ...]] = []
        for row in rows:  # one pass: a cold read's rows are sorted out once
            tag = row[0]
            if tag == "s":
                snapshots.append(row)
            elif tag == "l":
                links.append(row)
            else:
                found[str(row[1])] = int(row[3])
        position = found.get(self.name, 0)
        self._saw(found.get(self.name + GENERATION, 0))
        entry = self._present_entry(user_id, position, links, snapshots)
        return PresentRead(position, found.get(self.name + CATALOG_VERSION, 0), entry)

    def _tracking_names(self) -> tuple[str, str, str]:
        return (self.name, self.name + GENERATION, self.name + CATALOG_VERSION)

    def _present_entry(
        self,
        user_id: str,
        position: int,
        links: list[tuple[Any, ...]],
        snapshots: list[tuple[Any, ...]],
    ) -> Entry | None:
        inputs, size = self._inputs(user_id, links, snapshots)
        objects = {(s.kind, s.object_id) for s in inputs.snapshots}
        if len({(s.kind, s.object_id, customer_of(s)) for s in inputs.snapshots}) != len(objects):
            return None  # one object under two customers: only the history is exact
        # The links' and the objects' latest.
        since = max([int(r[3]) for r in links] + [int(r[3]) for r in snapshots], default=0)
        return Entry(position, inputs, size, since)

    def _load(self, statement: str, user_id: str) -> tuple[UserInputs, int]:
        key = self._text(user_id)
        # One statement, one round trip, one consistent snapshot of both tables.
        rows = self._read_rows(statement, (key, key))
        return self._inputs(
            user_id, [r for r in rows if r[0] == "l"], [r for r in rows if r[0] == "s"]
        )

    def _inputs(
        self, user_id: str, link_rows: list[tuple[Any, ...]], snapshot_rows: list[tuple[Any, ...]]
    ) -> tuple[UserInputs, int]:
        links = tuple(LinkRow(*t) for t in sorted(self._link(r[1:6]) for r in link_rows))
        snapshots = sorted([self._snapshot_of(r) for r in snapshot_rows], key=_SNAPSHOT_ORDER)
        inputs = UserInputs(user_id=user_id, links=links, snapshots=tuple(snapshots))
        return inputs, estimate(inputs, sum(len(r[6]) for r in snapshot_rows))

    def _snapshot_of(self, row: tuple[Any, ...]) -> Snapshot:
        """A user-input row's snapshot; a dispute gets the customer its row was attached to."""
        found = snapshot_from_json(row[6])
        if found.kind == DISPUTE and row[2] is not None:
            return with_customer(found, self._plain(row[2]))
        return found

    @property
    def cache_size(self) -> int:
        """Users the history cache keeps at most."""
        return self.cache.size

    @cache_size.setter
    def cache_size(self, value: int) -> None:
        self.cache.size = value

    @property
    def cache_snapshots(self) -> int:
        """Snapshots the history cache keeps at most."""
        return self.cache.snapshots

    @cache_snapshots.setter
    def cache_snapshots(self, value: int) -> None:
        self.cache.snapshots = value

    @property
    def cached(self) -> tuple[int, int]:
        """(users, snapshots) the history cache holds now."""
        stats = self.cache.stats()
        return stats.entries, stats.snapshots

    def cache_stats(self) -> dict[str, CacheStats]:
        """Each read cache's figures, by name."""
        return {"history": self.cache.stats(), "present": self.present_cache.stats()}

    def recent_position(self, max_age: float = 0.1) -> int:
        """The applied position, read from the database at most every `max_age` seconds."""
        read_at, position = self._recent
        now = time.monotonic()
        if now - read_at > max_age:
            position = self.position()
            self._recent = (now, position)
        return position

    def load_inputs_of(self, users: Sequence[str]) -> dict[str, UserInputs]:
        """`load_inputs` of many users: one statement (one consistent snapshot) per
        KEYS_PER_STATEMENT of them, instead of one each (the change feed's step)."""
        found: dict[str, UserInputs] = {}
        for start in range(0, len(users), KEYS_PER_STATEMENT):
            found.update(self._load_many(users[start : start + KEYS_PER_STATEMENT]))
        return found

    def _load_many(self, users: Sequence[str]) -> dict[str, UserInputs]:
        keys = [self._text(u) for u in users]
        rows = self._read_rows(self._sql.inputs_of_users(len(keys)), self._sql.twice(keys))
        links_by_user: dict[Any, list[tuple[Any, ...]]] = {}
        snapshots_by_customer: dict[Any, list[tuple[Any, ...]]] = {}
        for r in rows:  # keys compared as stored (escaped on PostgreSQL), on both sides
            if r[0] == "l":
                links_by_user.setdefault(r[1], []).append(r)
            else:
                snapshots_by_customer.setdefault(r[2], []).append(r)
        found: dict[str, UserInputs] = {}
        for user, key in zip(users, keys, strict=True):
            links = links_by_user.get(key, [])
            customers = {r[2] for r in links}
            snapshots = [s for c in customers for s in snapshots_by_customer.get(c, ())]
            found[user] = self._inputs(user, links, snapshots)[0]
        return found

    def users_of_customers(self, customers: Sequence[str]) -> set[str]:
        """The users linked to any of these customers (by any route)."""
        found: set[str] = set()
        for start in range(0, len(customers), KEYS_PER_STATEMENT):
            keys = [self._text(c) for c in customers[start : start + KEYS_PER_STATEMENT]]
            with self.db.transaction(commit=False) as cursor:
                cursor.execute(self._sql.users_of_customers(len(keys)), self._sql.once(keys))
                found.update(self._link(r)[0] for r in cursor.fetchall())
        return found

    def customers_of_charges(self, charges: Sequence[str]) -> set[str]:
        """The customers these charges belong to (a dispute's, through its charge)."""
        found: set[str] = set()
        for start in range(0, len(charges), KEYS_PER_STATEMENT):
            keys = [self._text(c) for c in charges[start : start + KEYS_PER_STATEMENT]]
            with self.db.transaction(commit=False) as cursor:
                cursor.execute(self._sql.customers_of_charges(len(keys)), self._sql.once(keys))
                found.update(self._plain(_values(r)[0]) for r in cursor.fetchall())
        return found

    def users_of(self, customer_id: str) -> list[str]:
        """The users linked to one customer (by any route), sorted."""
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(self._sql.users_of_customer, (self._text(customer_id),))
            return sorted({self._link(r)[0] for r in cursor.fetchall()})

    def customers_of_object(self, object_id: str) -> list[str]:
        """The customers an object (a subscription, an invoice) belongs to, sorted."""
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(
                f"SELECT DISTINCT customer_id FROM {self.current} WHERE object_id = "
                f"{self.db.param}",
                (self._text(object_id),),
            )
            return sorted(r["customer_id"] for r in cursor.fetchall() if r["customer_id"])

    def rows(self) -> ViewRows:
        """Every row, sorted: two views built from the same events compare equal."""
        with self.db.transaction(commit=False) as cursor:  # links first, as every reader
            cursor.execute(f"SELECT {', '.join(_LINK_COLUMNS)} FROM {self.links}")
            links = sorted(self._link(r) for r in cursor.fetchall())
            cursor.execute(f"SELECT {', '.join(_SNAPSHOT_COLUMNS)} FROM {self.snapshots}")
            snapshots = sorted(self._snapshot(r) for r in cursor.fetchall())
        return ViewRows(snapshots=tuple(snapshots), links=tuple(links))

    def present_rows(self) -> tuple[tuple[Any, ...], ...]:
        """Every row of the present table, sorted (kind, object, customer, event, latest)."""
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(
                f"SELECT kind, object_id, customer_id, event_id, latest FROM {self.current}"
            )
            return tuple(sorted(self._link(r) for r in cursor.fetchall()))

    def _text(self, value: str) -> str:
        """A key as the database holds it."""
        return value if self.db.dialect == "sqlite" else _escape(value)

    def _snapshot(self, row: Any) -> SnapshotRow:
        values = _snapshot_values(row)
        return values if self.db.dialect == "sqlite" else _unescaped(values)

    def _link(self, row: Any) -> Any:
        values = _values(row)
        return values if self.db.dialect == "sqlite" else _unescaped(values)

    def promote(
        self,
        shadow: Views,
        *,
        lock_timeout: float = SWAP_LOCK_TIMEOUT,
        while_locked: Callable[[], None] = lambda: None,
    ) -> int:
        """Replace these tables by `shadow`'s in one transaction (its rows and its position).

        First the live tables are locked, all in one statement and in the readers' order,
        waiting at most `lock_timeout` (else TablesBusyError, nothing changed). Holding them,
        nothing more commits to them: `while_locked` runs (replay catches the shadow up
        there), then the shadow must have applied at least what they had (else
        ShadowBehindError). Returns the position the promoted tables track.
        """
        if shadow.suffix == self.suffix or shadow.name != self.name:
            raise ValueError("promote takes a shadow of the same projection")
        try:
            with self.db.transaction() as cursor:
                restore = self._hold(cursor, shadow, lock_timeout)
                try:
                    while_locked()
                    position, generation = self._replace(cursor, shadow)
                finally:
                    restore()
        except _NotGranted:
            raise TablesBusyError(self._busy(lock_timeout)) from None
        self._forget(generation)
        log.info("projection %s: promoted tables of suffix %r", self.name, shadow.suffix)
        return position

    def _hold(self, cursor: Any, shadow: Views, timeout: float) -> Callable[[], None]:
        """Lock the live tables (SQLite: the whole database) for the transaction; returns
        what puts the connection's own lock wait back."""
        ms = max(1, round(timeout * 1000))
        if self.db.dialect == "postgres":
            cursor.execute(f"SET LOCAL lock_timeout = {ms}")
            try:
                cursor.execute(self._sql.lock_all(self))
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                raise _NotGranted from None
            return lambda: None
        cursor.execute("PRAGMA busy_timeout")
        (before,) = cursor.fetchone()
        cursor.execute(f"PRAGMA busy_timeout = {ms}")
        try:  # a first write takes the database's write lock: no writer commits after it
            cursor.execute(self._sql.forget_generation(shadow), (self.name + GENERATION,))
        except sqlite3.OperationalError:
            cursor.execute(f"PRAGMA busy_timeout = {int(before)}")
            raise _NotGranted from None
        return lambda: cursor.execute(f"PRAGMA busy_timeout = {int(before)}")

    def _replace(self, cursor: Any, shadow: Views) -> tuple[int, int]:
        """Drop the live tables and rename the shadow's into place; (position, generation)."""
        live, generation = self._tracking_row(cursor, lock=False)
        position, _ = shadow._tracking_row(cursor, lock=False)
        if position < live:
            raise ShadowBehindError(
                f"projection {self.name}: the rebuild is at {position}, the live tables at {live}"
            )
        if self.db.dialect == "postgres":
            cursor.execute(self._sql.lock_all(shadow))
        cursor.execute(self._sql.forget_generation(shadow), (self.name + GENERATION,))
        cursor.execute(self._sql.set_generation(shadow), (self.name + GENERATION, generation + 1))
        for base in SWAPPED:
            cursor.execute(f"DROP TABLE IF EXISTS {self.db.table(self.names[base])}")
            cursor.execute(
                f'ALTER TABLE {self.db.table(shadow.names[base])} RENAME TO "{self.names[base]}"'
            )
        for statement in self._sql.rename_indexes(shadow):
            cursor.execute(statement)
        return position, generation + 1

    def _busy(self, timeout: float) -> str:
        """One line for an operator: which tables stayed locked, and by whom (PostgreSQL)."""
        names = ", ".join(self.names[base] for base in SWAPPED)
        line = f"the live tables ({names}) stayed locked for {timeout:g} s"
        if self.db.dialect != "postgres":
            return f"{line} (another writer holds the database)"
        try:
            with self._reading() as cursor:
                tables = [self.db.table(self.names[base]) for base in SWAPPED]
                cursor.execute(_HOLDERS, (tables, timeout))
                holders = [f"pid {r['pid']} ({r['state']})" for r in cursor.fetchall()]
        except StorageError:
            holders = []
        return f"{line}, held by {', '.join(holders)}" if holders else line


class _NotGranted(Exception):
    """A swap's lock was not granted in time (translated once the transaction is gone)."""


# The sessions holding locks on some tables since before the swap's wait (not a passing read).
_HOLDERS = (
    "SELECT DISTINCT l.pid, a.state FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.granted AND l.relation = ANY(%s::regclass[]) AND l.pid <> pg_backend_pid() "
    "AND a.xact_start < now() - make_interval(secs => %s) ORDER BY l.pid"
)
_READ_LOCK = f"SET LOCAL lock_timeout = {round(READ_LOCK_TIMEOUT * 1000)}"
_READ_BEGIN = f"BEGIN; {_READ_LOCK}"


def _touches_catalog(snapshots: Sequence[Snapshot]) -> bool:
    return any(s.kind in catalog_fold.CATALOG_KINDS for s in snapshots)


def _skips_json(listed: list[Skipped], total: int) -> dict[str, Any]:
    return {"skipped": [s.to_json() for s in listed], "skipped_total": total}


def _skip_row(skip: Skipped) -> tuple[str, int, str, str]:
    # The JSON column escapes NUL itself; these are text columns, so escape them alike.
    return (_escape(skip.event_id), skip.position, _escape(skip.event_type), _escape(skip.reason))


def _skip(row: tuple[Any, ...]) -> Skipped:
    event_id, position, event_type, reason = row
    return Skipped(_unescape(event_id), int(position), _unescape(event_type), _unescape(reason))


_SNAPSHOT_COLUMNS = (
    "kind",
    "object_id",
    "customer_id",
    "event_id",
    "event_type",
    "created",
    "observation",
    "json",
)
_LINK_COLUMNS = ("user_id", "customer_id", "created", "event_id", "via")
_CURRENT_COLUMNS = ("kind", "object_id", "customer_id", "event_id", "latest", "json")
_RETURNING_CURRENT = f"RETURNING {', '.join(_CURRENT_COLUMNS)}"
_CARD_COLUMNS = (
    "event_id",
    "kind",
    "object_id",
    "customer_id",
    "payment_method",
    "created",
    "json",
)


_T = TypeVar("_T", bound=tuple[Any, ...])


def _any_needs_escape(rows: Sequence[tuple[Any, ...]]) -> bool:
    """Whether any row needs `_escaped`: one scan of the batch's text, not one per row."""
    text = "".join([v for row in rows for v in row[:6] if isinstance(v, str)])
    return "\x00" in text or "\\" in text


def _needs_escape(row: tuple[Any, ...]) -> bool:
    return any(isinstance(v, str) and ("\x00" in v or "\\" in v) for v in row[:6])


def _escape(text: str) -> str:
    """PostgreSQL text cannot hold NUL: write it as \\0, and a backslash as two."""
    if "\x00" not in text and "\\" not in text:
        return text
    return text.replace("\\", "\\\\").replace("\x00", "\\0")


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return re.sub(r"\\(.)", lambda m: "\x00" if m.group(1) == "0" else m.group(1), text)


def _escaped(row: _T) -> _T:
    """A row's keys escaped for PostgreSQL (the JSON column escapes NUL itself)."""
    keys = tuple(_escape(v) if isinstance(v, str) else v for v in row[:6])
    return cast(_T, keys + row[6:])


def _unescaped(row: _T) -> _T:
    keys = tuple(_unescape(v) if isinstance(v, str) else v for v in row[:6])
    return cast(_T, keys + row[6:])


def _values(row: Any) -> tuple[Any, ...]:
    return tuple(row.values()) if isinstance(row, dict) else tuple(row)


def _snapshot_values(row: Any) -> SnapshotRow:
    kind, object_id, customer, event_id, event_type, created, observation, raw = _values(row)
    return (kind, object_id, customer, event_id, event_type, created, bool(observation), raw)


def _copy_insert(
    cursor: Any, table: str, temp: str, rows: Sequence[tuple[Any, ...]], columns: Sequence[str]
) -> None:
    """COPY the rows in; when some are already there, insert only the new ones."""
    if not rows:
        return
    try:
        # Almost every batch is new: a plain COPY is several times faster than an upsert.
        # A savepoint keeps the transaction usable when a re-applied row is refused.
        with cursor.connection.transaction():
            _copy(cursor, table, columns, rows)
        return
    except psycopg.errors.UniqueViolation:
        pass
    # COPY has no ON CONFLICT: stage the rows, then insert what is missing.
    cursor.execute(
        f"CREATE TEMPORARY TABLE {temp} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    _copy(cursor, temp, columns, rows)
    names = ", ".join(columns)
    cursor.execute(
        f"INSERT INTO {table} ({names}) SELECT {names} FROM {temp} ON CONFLICT DO NOTHING"
    )


# The views' columns that are not text, as COPY's binary format names their types.
_BINARY_TYPES = {"created": "int8", "latest": "int8", "observation": "bool"}


def _copy(cursor: Any, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """COPY rows into a table in the binary format: neither side escapes or parses text
    (measured: about half the client's CPU a row of text COPY, a sixth less of the server's)."""
    names = ", ".join(columns)
    with cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([_BINARY_TYPES.get(column, "text") for column in columns])
        for row in rows:
            copy.write_row(row)


_CREATES = re.compile(r'CREATE (?:TABLE|INDEX) IF NOT EXISTS (?:"[^"]+"\.)?"?([^"\s]+)"?')


def _created_names(statements: Sequence[str]) -> list[str]:
    """The unqualified names of the relations these CREATE ... IF NOT EXISTS make."""
    return [m.group(1) for m in map(_CREATES.match, statements) if m]


class _Statements:
    """The SQL of one set of view tables, in the database's dialect."""

    def __init__(self, views: Views) -> None:
        self.views = views
        self.sqlite = views.db.dialect == "sqlite"
        self.create = self._create()
        self._inserts(views.db.param)
        self._reads(views.db.param)

    def _create(self) -> list[str]:
        """The tables and indexes, each statement safe to run again."""
        views = self.views
        text, integer = ("TEXT", "INTEGER") if self.sqlite else ("text", "bigint")
        boolean = "INTEGER" if self.sqlite else "boolean"
        snap, links, current = views.names[SNAPSHOTS], views.names[LINKS], views.names[CURRENT]
        cards = views.names[CARDS]
        catalog = views.names[CATALOG]
        return [
            f"CREATE TABLE IF NOT EXISTS {views.snapshots} (kind {text} NOT NULL, "
            f"object_id {text} NOT NULL, customer_id {text}, event_id {text} NOT NULL, "
            f"event_type {text} NOT NULL, created {integer} NOT NULL, "
            f"observation {boolean} NOT NULL, json {text} NOT NULL, "
            f'CONSTRAINT "{snap}_pkey" PRIMARY KEY (event_id, kind, object_id))',
            f'CREATE INDEX IF NOT EXISTS "{snap}_customer" ON {views.snapshots} (customer_id)',
            f'CREATE INDEX IF NOT EXISTS "{snap}_object" ON {views.snapshots} (kind, object_id)',
            f"CREATE TABLE IF NOT EXISTS {views.links} (user_id {text} NOT NULL, "
            f"customer_id {text} NOT NULL, created {integer} NOT NULL, "
            f"event_id {text} NOT NULL, via {text} NOT NULL, "
            f'CONSTRAINT "{links}_pkey" PRIMARY KEY (user_id, customer_id, event_id, via))',
            f'CREATE INDEX IF NOT EXISTS "{links}_customer" ON {views.links} (customer_id)',
            # No key or index: nothing to rename in a swap, and the position check in
            # `apply` already records each skip once. It holds a handful of rows.
            f"CREATE TABLE IF NOT EXISTS {views.skips} (event_id {text} NOT NULL, "
            f"position {integer} NOT NULL, event_type {text} NOT NULL, reason {text} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {views.current} (kind {text} NOT NULL, "
            f"object_id {text} NOT NULL, customer_id {text} NOT NULL, "
            f"event_id {text} NOT NULL, latest {integer} NOT NULL, json {text} NOT NULL, "
            f'CONSTRAINT "{current}_pkey" PRIMARY KEY (kind, object_id, customer_id, event_id))',
            f'CREATE INDEX IF NOT EXISTS "{current}_customer" ON {views.current} (customer_id)',
            f"CREATE TABLE IF NOT EXISTS {views.cards} (event_id {text} NOT NULL, "
            f"kind {text} NOT NULL, object_id {text} NOT NULL, customer_id {text}, "
            f"payment_method {text}, created {integer} NOT NULL, json {text} NOT NULL, "
            f'CONSTRAINT "{cards}_pkey" PRIMARY KEY (event_id, kind, object_id))',
            f'CREATE INDEX IF NOT EXISTS "{cards}_customer" ON {views.cards} (customer_id)',
            f"CREATE TABLE IF NOT EXISTS {views.catalog_table} (kind {text} NOT NULL, "
            f"object_id {text} NOT NULL, event_id {text} NOT NULL, json {text} NOT NULL, "
            f'CONSTRAINT "{catalog}_pkey" PRIMARY KEY (kind, object_id))',
        ]

    def _inserts(self, p: str) -> None:
        """The statements that write rows, `p` the dialect's parameter mark."""
        views = self.views
        self.insert_cards = (
            f"INSERT INTO {views.cards} (event_id, kind, object_id, customer_id, payment_method, "
            f"created, json) VALUES ({', '.join([p] * 7)}) ON CONFLICT DO NOTHING"
        )
        self.insert_catalog = (
            f"INSERT INTO {views.catalog_table} (kind, object_id, event_id, json) "
            f"VALUES ({', '.join([p] * 4)})"
        )
        self.insert_current = (
            f"INSERT INTO {views.current} (kind, object_id, customer_id, event_id, latest, json) "
            f"VALUES ({', '.join([p] * 6)})"
        )
        self.delete_current = f"DELETE FROM {views.current} WHERE "
        self.history_of_objects = (
            f"SELECT kind, object_id, customer_id, event_id, json FROM {views.snapshots} WHERE "
        )
        ignore = "INSERT OR IGNORE" if self.sqlite else "INSERT"
        self.insert_snapshots = (
            f"{ignore} INTO {views.snapshots} ({', '.join(_SNAPSHOT_COLUMNS)}) "
            f"VALUES ({', '.join([p] * len(_SNAPSHOT_COLUMNS))})"
        )
        self.insert_links = (
            f"{ignore} INTO {views.links} ({', '.join(_LINK_COLUMNS)}) "
            f"VALUES ({', '.join([p] * len(_LINK_COLUMNS))})"
        )
        self.insert_skipped = f"INSERT INTO {views.skips} VALUES ({p}, {p}, {p}, {p})"

    def _reads(self, p: str) -> None:
        """The statements that read rows, `p` the dialect's parameter mark."""
        views = self.views
        self.skipped = (
            f"SELECT event_id, position, event_type, reason FROM {views.skips} "
            f"ORDER BY position DESC LIMIT {p}"
        )
        self.objects_without_present = (
            f"SELECT DISTINCT s.kind, s.object_id FROM {views.snapshots} s "
            "WHERE s.customer_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
            f"{views.current} c WHERE c.kind = s.kind AND c.object_id = s.object_id)"
        )
        # The position's row and the generation's (GENERATION), in one statement.
        self.tracked = (
            f"SELECT application_name, notification_id FROM {views.tracking} "
            f"WHERE application_name IN ({p}, {p})"
        )
        # SQLite holds the database's write lock by now; PostgreSQL locks the row.
        self.tracked_for_update = self.tracked if self.sqlite else f"{self.tracked} FOR UPDATE"
        self.users_of_customer = f"SELECT user_id FROM {views.links} WHERE customer_id = {p}"
        links_of = f"SELECT customer_id FROM {views.links} WHERE user_id = {p}"
        # ANY(ARRAY(...)) makes PostgreSQL probe the customer index even before the freshly
        # filled tables have statistics (with IN it may scan every snapshot).
        customer_in = (
            f"customer_id IN ({links_of})"
            if self.sqlite
            else f"customer_id = ANY(ARRAY({links_of}))"
        )
        # Named columns: PostgreSQL rows arrive as dicts, where two "?column?" would collide.
        links_of_user = (
            f"SELECT 'l' AS tag, {', '.join(_LINK_COLUMNS)}, NULL AS json FROM {views.links} "
            f"WHERE user_id = {p} UNION ALL "
        )
        self.inputs_of_user = (
            f"{links_of_user}SELECT 's', NULL, customer_id, created, event_id, NULL, json "
            f"FROM {views.snapshots} WHERE {customer_in}"
        )
        # The same shape from each object's present: `created` carries the object's latest.
        self.present_of_user = (
            f"{links_of_user}SELECT 's', NULL, customer_id, latest, event_id, NULL, json "
            f"FROM {views.current} WHERE {customer_in}"
        )
        # ...with the tracking rows (position, generation, catalog version) of the same
        # snapshot: a read at now checks all three in its one statement.
        self.present_and_tracked = (
            f"{self.present_of_user} UNION ALL SELECT 't', application_name, NULL, "
            f"notification_id, NULL, NULL, NULL FROM {views.tracking} "
            f"WHERE application_name IN ({p}, {p}, {p})"
        )

    def _any(self, column: str, count: int) -> str:
        """`column` equal to one of `count` parameters (one array on PostgreSQL)."""
        if self.sqlite:
            return f"{column} IN ({', '.join(['?'] * count)})"
        return f"{column} = ANY(%s)"

    def once(self, keys: list[str]) -> list[Any]:
        """The parameters of one `_any` condition."""
        return keys if self.sqlite else [keys]

    def twice(self, keys: list[str]) -> list[Any]:
        """The parameters of two `_any` conditions on the same keys."""
        return self.once(keys) * 2

    def inputs_of_users(self, count: int) -> str:
        """`inputs_of_user` for `count` users: their links, then their customers' snapshots."""
        views, users = self.views, self._any("user_id", count)
        customers = f"SELECT customer_id FROM {views.links} WHERE {users}"
        customer_in = (
            f"customer_id IN ({customers})"
            if self.sqlite
            else f"customer_id = ANY(ARRAY({customers}))"
        )
        return (
            f"SELECT 'l' AS tag, {', '.join(_LINK_COLUMNS)}, NULL AS json FROM {views.links} "
            f"WHERE {users} UNION ALL "
            f"SELECT 's', NULL, customer_id, created, event_id, NULL, json "
            f"FROM {views.snapshots} WHERE {customer_in}"
        )

    def cards_of(self, count: int) -> str:
        """The card facts of `count` customers, and the facts of the payment methods they name
        (a detached payment method's last event may not name its customer)."""
        cards, customers = self.views.cards, self._any("customer_id", count)
        named = f"SELECT payment_method FROM {cards} WHERE {customers}"
        return (
            f"SELECT json FROM {cards} WHERE {customers} OR (kind = 'payment_method' AND "
            f"object_id IN ({named} AND payment_method IS NOT NULL))"
        )

    def users_of_customers(self, count: int) -> str:
        """The user of every link to one of `count` customers."""
        return f"SELECT user_id FROM {self.views.links} WHERE {self._any('customer_id', count)}"

    def customers_of_charges(self, count: int) -> str:
        """The customers of `count` charges."""
        return (
            f"SELECT DISTINCT customer_id FROM {self.views.snapshots} WHERE kind = 'charge' "
            f"AND customer_id IS NOT NULL AND {self._any('object_id', count)}"
        )

    def attach_disputes(self, count: int) -> str:
        """Set the customer of unattached dispute rows of `count` charges from the charge's
        rows; returns (charge id, customer) of each row it set."""
        snap = self.views.snapshots
        owner = (
            f"SELECT MAX(c.customer_id) FROM {snap} c "
            "WHERE c.kind = 'charge' AND c.object_id = d.object_id"
        )
        return (
            f"UPDATE {snap} AS d SET customer_id = ({owner}) WHERE d.kind = 'dispute' "
            f"AND d.customer_id IS NULL AND {self._any('d.object_id', count)} "
            f"AND ({owner}) IS NOT NULL RETURNING object_id, customer_id"
        )

    def objects_in(self, keys: Sequence[tuple[str, str]]) -> tuple[str, list[Any]]:
        """A condition naming these (kind, object_id) pairs, and its parameters."""
        if self.sqlite:
            pairs = ", ".join(["(?, ?)"] * len(keys))
            return f"(kind, object_id) IN (VALUES {pairs})", [v for key in keys for v in key]
        # %b: psycopg dumps a text array in its binary form about 4x faster than as text
        # (which quotes each element through a regular expression): 2,000 keys a statement.
        return (
            "(kind, object_id) IN (SELECT unnest(%b::text[]), unnest(%b::text[]))",
            [[k for k, _ in keys], [o for _, o in keys]],
        )

    def lock_all(self, views: Views) -> str:
        """Lock every swapped table of `views` at once, in SWAPPED's order (PostgreSQL)."""
        tables = ", ".join(views.db.table(views.names[base]) for base in SWAPPED)
        return f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE"

    def forget_generation(self, shadow: Views) -> str:
        """Delete the shadow's generation row (it is written once, by the swap)."""
        return f"DELETE FROM {shadow.tracking} WHERE application_name = {self.views.db.param}"

    def set_generation(self, shadow: Views) -> str:
        """Give the shadow's tracking table its generation row."""
        p = self.views.db.param
        return (
            f"INSERT INTO {shadow.tracking} (application_name, notification_id) VALUES ({p}, {p})"
        )

    def rename_indexes(self, shadow: Views) -> list[str]:
        """Give the promoted tables' indexes the live names (index names are per schema)."""
        live, db = self.views, self.views.db
        pairs = (
            [
                (f"{shadow.names[SNAPSHOTS]}{end}", f"{live.names[SNAPSHOTS]}{end}")
                for end in ("_pkey", "_customer", "_object")
            ]
            + [
                (f"{shadow.names[base]}{end}", f"{live.names[base]}{end}")
                for base in (LINKS, CURRENT, CARDS)
                for end in ("_pkey", "_customer")
            ]
            + [(f"{shadow.names[CATALOG]}_pkey", f"{live.names[CATALOG]}_pkey")]
        )
        if not self.sqlite:
            schema = db.url.schema
            return [f'ALTER INDEX "{schema}"."{old}" RENAME TO "{new}"' for old, new in pairs]
        # SQLite cannot rename an index: drop the shadow's and build the live ones again.
        # Its primary keys are automatic indexes that follow their table.
        return [
            f'DROP INDEX IF EXISTS "{old}"' for old, new in pairs if not old.endswith("pkey")
        ] + [s for s in self.create if s.startswith("CREATE INDEX")]
