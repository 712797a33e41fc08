"""The change feed: every change of a user's features, each at a position of its own.

A projection of its own, behind the billing views. For each stretch of ledger positions the
views have applied, it re-evaluates the users those events touch (at now) and appends a row
when their features differ from the ones it last recorded; a user whose grant ends by a time
rule (grace end, period end, `cancel_at`) is re-evaluated once that time has passed, so the
rule's row appears then, with `event_id` null. Rows, the users' last features and the
tracking positions commit in one transaction; a commit assigns positions after every row
already stored, so a reader never sees a change twice or out of order, and positions survive
restarts (the rows are never rebuilt: replaying the billing views does not renumber them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from billing_ledger.background import Background
from billing_ledger.ledger.canonical import DISPUTE
from billing_ledger.ledger.normalise import normalise
from billing_ledger.ledger.records import Recorded
from billing_ledger.ledger.store import Database, EventStore
from billing_ledger.projections.cache import Applied
from billing_ledger.projections.history import Change, changes_until
from billing_ledger.projections.links import customer_of, links_of
from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import Entitlements
from billing_ledger.projections.views import Views

log = logging.getLogger("billing_ledger.projections")

CHANGES = "billing_feed_changes"
USERS = "billing_feed_users"
STATE = "billing_feed_state"
FEED = "changes"  # the projection's row in the state table
EVENTS_PER_STEP = 1000
DUE_PER_STEP = 1000
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class FeedChange:
    """One row of the feed (CONTRACT.md, Change feed)."""

    position: int
    user_id: str
    at: int
    event_id: str | None
    event_type: str | None
    features_before: tuple[str, ...]
    features_after: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class _Observed:
    """A user re-evaluated: the changes to record and when to look again."""

    user_id: str
    features: tuple[str, ...]
    next_check: int | None
    changes: tuple[FeedChange, ...]  # positions 0: assigned at commit
    last_at: int  # the `at` of the last change recorded for the user


def next_check(entitlements: Entitlements, now: int) -> int | None:
    """The first time after `now` at which a grant ends by itself, or None."""
    ends = [
        s.access_until
        for s in entitlements.subscriptions
        if s.grants_access and s.access_until is not None and s.access_until > now
    ]
    return min(ends, default=None)


def _change(user_id: str, before: tuple[str, ...], cause: Change) -> FeedChange:
    return FeedChange(
        0,
        user_id,
        cause.at,
        cause.event_id,
        cause.event_type,
        before,
        cause.features_after,
        cause.reason,
    )


def observe(
    user_id: str, inputs: Any, plans: Plans, before: tuple[str, ...], last_at: int, now: int
) -> _Observed:
    """Every change of the user's history after `last_at` that moves their features away from
    `before`, in order, then the net change if the history does not end at now's features
    (an event arriving late, created before `last_at`); pure."""
    history, entitlements = changes_until(inputs, plans, now)  # one pass, not two
    after = entitlements.features
    found: list[FeedChange] = []
    current = before
    for cause in history:
        if cause.at > last_at and cause.features_after != current:
            found.append(_change(user_id, current, cause))
            current = cause.features_after
            last_at = cause.at
    if current != after:
        net = Change(now, None, None, current, after, "features changed")
        found.append(_change(user_id, current, net))
        last_at = max(last_at, now)
    return _Observed(user_id, after, next_check(entitlements, now), tuple(found), last_at)


def touched(events: Iterable[Recorded], livemode: bool) -> tuple[set[str], set[str], set[str]]:
    """(users, customers, disputed charges) the events name, as the billing projection would
    read them (a dispute names only its charge, whose customer the views know)."""
    users: set[str] = set()
    customers: set[str] = set()
    charges: set[str] = set()
    for event in events:
        if event.version > 1 or event.thin or event.livemode != livemode:
            continue
        try:
            snapshot = normalise(event)
        except Exception:  # the billing projection decides what to do with it; we skip it
            log.warning(
                "feed: event %s at %d not readable; skipped", event.event_id, event.position
            )
            continue
        if snapshot is None:
            continue
        users.update(row.user_id for row in links_of(snapshot))
        customer = customer_of(snapshot)
        if customer is not None:
            customers.add(customer)
        elif snapshot.kind == DISPUTE:
            charges.add(snapshot.object_id)
    return users, customers, charges


def _logged(
    batches: Iterable[Applied], after: int, applied: int
) -> tuple[int, set[str], set[str]] | None:
    """(position reached, users, customers) of the logged batches that follow `after` without
    a gap, up to `applied` and about EVENTS_PER_STEP positions; None when the first is not
    logged or lists no customers (too many). A batch that began before `after` (a stretch read
    from the events ended inside it) counts whole: evaluating a user again records nothing
    new."""
    reached, users, customers = after, set[str](), set[str]()
    for batch in batches:
        if batch.position <= reached:
            continue
        if batch.after > reached or batch.customers is None or batch.position > applied:
            break
        users |= batch.users
        customers.update(c for c in batch.customers if c is not None)
        reached = batch.position
        if reached - after >= EVENTS_PER_STEP:
            break
    return (reached, users, customers) if reached > after else None


def _rows(cursor: Any) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cursor.fetchall()]


def _features(raw: str) -> tuple[str, ...]:
    return tuple(orjson.loads(raw))


@dataclass(frozen=True)
class _Start:
    """What one step read of the feed's tables (FeedTables.begin)."""

    expected: tuple[int, int]  # (ledger position, feed position) tracked
    users: list[str]  # to evaluate: those the stretch touched and those due, sorted
    last: dict[str, tuple[tuple[str, ...], int]]  # their recorded features and last `at`
    due: int  # how many were due (DUE_PER_STEP: maybe more)


class FeedTables:
    """The feed's tables: its rows, each user's last features, and tracking positions."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.changes = db.table(CHANGES)
        self.users = db.table(USERS)
        self.state = db.table(STATE)
        self.p = db.param
        integer = "INTEGER" if db.dialect == "sqlite" else "bigint"
        self._create = [
            f"CREATE TABLE IF NOT EXISTS {self.changes} (position {integer} PRIMARY KEY, "
            f"user_id TEXT NOT NULL, at {integer} NOT NULL, event_id TEXT, event_type TEXT, "
            "features_before TEXT NOT NULL, features_after TEXT NOT NULL, reason TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self.users} (user_id TEXT PRIMARY KEY, "
            f"features TEXT NOT NULL, next_check {integer}, last_at {integer} NOT NULL)",
            f'CREATE INDEX IF NOT EXISTS "{USERS}_next" ON {self.users} (next_check)',
            f"CREATE TABLE IF NOT EXISTS {self.state} (name TEXT PRIMARY KEY, "
            f"ledger_position {integer} NOT NULL, feed_position {integer} NOT NULL)",
        ]

    def create(self) -> None:
        """Create the tables (idempotent)."""
        self.db.ensure_schema()
        with self.db.transaction() as cursor:
            for statement in self._create:
                cursor.execute(statement)

    def tracked(self, name: str) -> tuple[int, int]:
        """(ledger position, feed position) of one reader of the feed; (0, 0) before any."""
        with self.db.transaction(commit=False) as cursor:
            return self._tracked(cursor, name)

    def _tracked(self, cursor: Any, name: str) -> tuple[int, int]:
        cursor.execute(
            f"SELECT ledger_position, feed_position FROM {self.state} WHERE name = {self.p}",
            (name,),
        )
        rows = _rows(cursor)
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def head(self) -> int:
        """The greatest position in the feed, 0 when empty."""
        return self.tracked(FEED)[1]

    def read(self, after: int, limit: int) -> list[FeedChange]:
        """Up to `limit` rows after `after`, in position order."""
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(
                f"SELECT position, user_id, at, event_id, event_type, features_before, "
                f"features_after, reason FROM {self.changes} WHERE position > {self.p} "
                f"ORDER BY position LIMIT {self.p}",
                (after, limit),
            )
            rows = _rows(cursor)
        return [
            FeedChange(
                int(r[0]), r[1], int(r[2]), r[3], r[4], _features(r[5]), _features(r[6]), r[7]
            )
            for r in rows
        ]

    def snapshot(self) -> tuple[int, dict[str, tuple[str, ...]]]:
        """(feed position, every recorded user's features), read together."""
        with self.db.transaction(commit=False) as cursor:
            _, position = self._tracked(cursor, FEED)
            cursor.execute(f"SELECT user_id, features FROM {self.users}")
            return position, {r[0]: _features(r[1]) for r in _rows(cursor)}

    def last_features(self, users: Sequence[str]) -> dict[str, tuple[tuple[str, ...], int]]:
        """(features, `at` of the last change) recorded for these users (absent: never)."""
        with self.db.transaction(commit=False) as cursor:
            return self._last_features(cursor, users)

    def _last_features(
        self, cursor: Any, users: Sequence[str]
    ) -> dict[str, tuple[tuple[str, ...], int]]:
        found: dict[str, tuple[tuple[str, ...], int]] = {}
        for start in range(0, len(users), 500):
            chunk = users[start : start + 500]
            marks = ", ".join([self.p] * len(chunk))
            cursor.execute(
                f"SELECT user_id, features, last_at FROM {self.users} WHERE user_id IN ({marks})",
                tuple(chunk),
            )
            found.update((r[0], (_features(r[1]), int(r[2]))) for r in _rows(cursor))
        return found

    def begin(self, touched: Sequence[str], now: int) -> _Start:
        """What a step reads of the feed's own tables, in one transaction: the feed's tracking,
        the users due (a rule's time passed) and the last features of those and `touched`."""
        with self.db.transaction(commit=False) as cursor:
            expected = self._tracked(cursor, FEED)
            due = self._due(cursor, now, DUE_PER_STEP)
            users = sorted({*touched, *due})
            return _Start(expected, users, self._last_features(cursor, users), len(due))

    def due(self, now: int, limit: int = DUE_PER_STEP) -> list[str]:
        """Users whose next rule time has passed."""
        with self.db.transaction(commit=False) as cursor:
            return self._due(cursor, now, limit)

    def _due(self, cursor: Any, now: int, limit: int) -> list[str]:
        cursor.execute(
            f"SELECT user_id FROM {self.users} WHERE next_check <= {self.p} "
            f"ORDER BY next_check LIMIT {self.p}",
            (now, limit),
        )
        return [r[0] for r in _rows(cursor) if "\x00" not in r[0]]

    def commit(
        self, expected: tuple[int, int], ledger_position: int, observed: Sequence[_Observed]
    ) -> list[FeedChange] | None:
        """Append the changes after every stored row and move the tracking, in one transaction.

        None when another process committed since `expected` was read (nothing written).
        """
        feed_position = expected[1]
        appended: list[FeedChange] = []
        for seen in observed:
            for change in seen.changes:
                feed_position += 1
                appended.append(_at_position(change, feed_position))
        new = (ledger_position, feed_position)
        rows = [_change_row(c) for c in appended]
        users = [
            (o.user_id, orjson.dumps(o.features).decode(), o.next_check, o.last_at)
            for o in observed
        ]
        with self.db.transaction() as cursor:
            if self.db.dialect == "postgres" and expected != (0, 0):
                return appended if self._write_at_once(cursor, expected, new, rows, users) else None
            if not self._advance(cursor, FEED, expected, new):
                return None
            cursor.executemany(self._insert_change, rows)
            cursor.executemany(self._upsert_user, users)
        return appended

    def _write_at_once(
        self,
        cursor: Any,
        expected: tuple[int, int],
        new: tuple[int, int],
        rows: Sequence[tuple[Any, ...]],
        users: Sequence[tuple[Any, ...]],
    ) -> bool:
        """PostgreSQL: move the tracking and write the rows and users in one statement (one
        round trip); nothing is written when the tracking is not at `expected`."""
        columns = [list(c) for c in zip(*rows, strict=True)] or [[]] * 8
        user_columns = [list(c) for c in zip(*users, strict=True)] or [[]] * 4
        cursor.execute(self._commit_at_once, (*new, FEED, *expected, *columns, *user_columns))
        return bool(_rows(cursor))

    @property
    def _commit_at_once(self) -> str:
        moved = "WHERE EXISTS (SELECT 1 FROM moved)"
        return (
            f"WITH moved AS (UPDATE {self.state} SET ledger_position = %s, feed_position = %s "
            "WHERE name = %s AND ledger_position = %s AND feed_position = %s RETURNING name), "
            f"written AS (INSERT INTO {self.changes} (position, user_id, at, event_id, "
            "event_type, features_before, features_after, reason) SELECT * FROM unnest("
            "%s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], "
            f"%s::text[], %s::text[]) {moved}), "
            f"recorded AS (INSERT INTO {self.users} (user_id, features, next_check, last_at) "
            f"SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) {moved} "
            "ON CONFLICT (user_id) DO UPDATE SET features = excluded.features, "
            "next_check = excluded.next_check, last_at = excluded.last_at) "
            "SELECT name FROM moved"
        )

    def _advance(
        self, cursor: Any, name: str, expected: tuple[int, int], new: tuple[int, int]
    ) -> bool:
        """Move one tracking row from `expected` to `new`; False when it is not at `expected`."""
        p = self.p
        if expected == (0, 0):
            cursor.execute(
                f"INSERT INTO {self.state} (name, ledger_position, feed_position) "
                f"VALUES ({p}, 0, 0) ON CONFLICT (name) DO NOTHING",
                (name,),
            )
        # The first write takes the lock (SQLite's database lock, PostgreSQL's row lock);
        # a concurrent committer then finds the row moved and matches nothing.
        cursor.execute(
            f"UPDATE {self.state} SET ledger_position = {p}, feed_position = {p} "
            f"WHERE name = {p} AND ledger_position = {p} AND feed_position = {p} RETURNING name",
            (*new, name, *expected),
        )
        return bool(_rows(cursor))

    def advance(self, name: str, expected: tuple[int, int], new: tuple[int, int]) -> bool:
        """Move a reader's tracking row (the notifier's position) in a transaction of its own."""
        with self.db.transaction() as cursor:
            return self._advance(cursor, name, expected, new)

    @property
    def _insert_change(self) -> str:
        marks = ", ".join([self.p] * 8)
        return (
            f"INSERT INTO {self.changes} (position, user_id, at, event_id, event_type, "
            f"features_before, features_after, reason) VALUES ({marks})"
        )

    @property
    def _upsert_user(self) -> str:
        p = self.p
        return (
            f"INSERT INTO {self.users} (user_id, features, next_check, last_at) "
            f"VALUES ({p}, {p}, {p}, {p}) "
            "ON CONFLICT (user_id) DO UPDATE SET features = excluded.features, "
            "next_check = excluded.next_check, last_at = excluded.last_at"
        )


def _at_position(change: FeedChange, position: int) -> FeedChange:
    return replace(change, position=position)


def _change_row(c: FeedChange) -> tuple[Any, ...]:
    return (
        c.position,
        c.user_id,
        c.at,
        c.event_id,
        c.event_type,
        orjson.dumps(list(c.features_before)).decode(),
        orjson.dumps(list(c.features_after)).decode(),
        c.reason,
    )


class FeedProjector:
    """Keeps the feed behind the billing views: one step per stretch of applied positions."""

    def __init__(
        self,
        store: EventStore,
        views: Views,
        plans: Plans,
        livemode: bool,
        clock: Callable[[], float] = time.time,
        wake: Callable[[int, float], bool] | None = None,
        plans_now: Callable[[], Plans] | None = None,
        applied: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.views = views
        self.plans = plans
        # The plans matching through the catalog as the reads do (Reads.current_plans).
        self.plans_now = plans_now
        self.livemode = livemode
        self.tables = FeedTables(store.db)
        self.clock = clock
        self.wake = wake  # runner.wait_for: returns early once the views pass a position
        # The position the views have applied: the runner's, kept in memory as it commits
        # (no query); else read from the views' tracking.
        self.applied = applied if applied is not None else views.position
        self.head = 0  # the feed position this process last committed or saw
        # The ledger position the feed's tracking stood at when this process last read or
        # moved it (None: read it); checked again in each step's one read of the feed's tables.
        self._ledger: int | None = None
        self.error: str | None = None
        self._background = Background("feed", self._run)
        self._stopping = self._background.stopping
        self._lock = threading.Lock()

    def start(self) -> None:
        """Follow the views in a background thread until `stop()`."""
        self._background.start()

    def stop(self) -> None:
        """Stop after the current step."""
        self._background.stop()

    def catch_up(self) -> int:
        """Step until nothing is left to do; returns the feed position."""
        while self.step():
            pass
        return self.head

    def step(self) -> bool:
        """Record what the next stretch of positions and the due rules change; True when more
        may be left at once (call again), False when this step reached what the views have
        applied (it may have recorded changes: no empty step after it to find that out)."""
        with self._lock:
            for _ in range(10):  # another process committing first: read again
                more = self._attempt()
                if more is not None:
                    return more
            return True

    def _attempt(self) -> bool | None:
        """One try at a step; None when the feed's tracking was not where this process left
        it (another process committed): nothing written, try again from where it is."""
        if self._ledger is None:
            self._ledger = self.tables.tracked(FEED)[0]
        now, after = int(self.clock()), self._ledger
        target, users, more = self._stretch(after)
        start = self.tables.begin(users, now)
        self.head = max(self.head, start.expected[1])
        if start.expected[0] != after:
            self._ledger = start.expected[0]
            return None
        if target == after and not start.users:
            return False
        appended = self.tables.commit(start.expected, target, self._observe(start, now))
        if appended is None:
            self._ledger = None
            return None
        self._ledger = target
        self.head = max(self.head, start.expected[1] + len(appended))
        return more or start.due >= DUE_PER_STEP

    def _stretch(self, after: int) -> tuple[int, list[str], bool]:
        """The next stretch the views have applied after `after`: how far it reaches, the users
        its events touch, and whether the views have applied more beyond it.

        The batches this process's views committed say whom they touched (their batch log):
        the events are read again and normalised only where the log does not cover the
        stretch (another process applied, a batch touched too many to list, a swap)."""
        applied = self.applied()
        if applied <= after:
            return after, [], False
        logged = _logged(self.views.batches.recent(), after, applied)
        if logged is not None:
            target, users, customers = logged
            return target, self._users(users, customers, set()), target < applied
        events = [e for e in self.store.read(after, EVENTS_PER_STEP) if e.position <= applied]
        full = len(events) >= EVENTS_PER_STEP
        target = events[-1].position if full else applied
        return target, self._users(*touched(events, self.livemode)), full

    def _users(self, users: set[str], customers: set[str], charges: set[str]) -> list[str]:
        """These users and those of the customers and charges, through the views' links (no
        query when there are none)."""
        if charges:
            customers |= self.views.customers_of_charges(sorted(charges))
        if customers:
            users |= self.views.users_of_customers(sorted(customers))
        return sorted(u for u in users if "\x00" not in u)

    def _observe(self, start: _Start, now: int) -> list[_Observed]:
        users, never = start.users, (self.plans.default_features(), 0)
        if not users:
            return []
        inputs = self.views.load_inputs_of(users)
        plans = self.plans_now() if self.plans_now is not None else self.plans
        return [observe(u, inputs[u], plans, *start.last.get(u, never), now) for u in users]

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                moved = self.step()
                self.error = None
                if not moved:
                    self._idle()  # its wait reads the database too
            except Exception as e:  # the database is away: say so, try again shortly
                if self.error is None:
                    log.exception("feed: step failed")
                self.error = f"{type(e).__name__}: {e}"
                self._stopping.wait(1.0)

    def _idle(self) -> None:
        """Wait for the views to move (or a short while, for rules coming due)."""
        if self.wake is not None:
            after = self._ledger if self._ledger is not None else self.tables.tracked(FEED)[0]
            self.wake(after + 1, 0.25)
            return
        self._stopping.wait(POLL_SECONDS)
