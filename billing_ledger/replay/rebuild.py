"""Replay: rebuild a projection from position 0 beside the live one, compare, then swap.

The shadow tables are filled by the runner's own apply path, so a rebuild is exactly what
live projection would have produced. The live tables answer reads until one transaction
renames the shadow's tables (rows and tracked position together) into their place.

The views hold snapshots, not features: a new plans file changes no row. So that a dry run
can say what a plans change would do and to whom, each swap records the plans it applied
(a `ledger.replay` event of our own), and the next run evaluates every affected user under
those plans on the live rows and under the current plans on the rebuilt rows.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from billing_ledger.ledger.records import Incoming
from billing_ledger.ledger.store import Database, EventStore, guard
from billing_ledger.progress import Progress, quiet
from billing_ledger.projections.plans import Plans, PlansError, parse_plans
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views
from billing_ledger.replay import impact, tables
from billing_ledger.replay.own_events import REPLAY, of_type, own_event

SHADOW_SUFFIX = "_replay"
BATCH = 5000  # events per shadow transaction: fewer, larger commits while rebuilding
RUNNING = "another replay is running on this database; nothing was changed"


class ReplayRunningError(RuntimeError):
    """Another replay holds this database's replay lock (the two would share the shadow)."""


@dataclass(frozen=True)
class PlansFile:
    """A plans file's text, parsed, and a short fingerprint of the text."""

    text: str
    plans: Plans

    @property
    def sha(self) -> str:
        """The first 12 hex digits of the text's SHA-256."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    @classmethod
    def read(cls, path: Path, plans: Plans) -> PlansFile:
        """The plans file the settings name (already parsed by bootstrap)."""
        return cls(path.read_text(encoding="utf-8"), plans)


@dataclass
class RebuildReport:
    """What a rebuild found and did."""

    projection: str
    position: int = 0
    seconds: float = 0.0
    events: int = 0
    diffs: list[tables.TableDiff] = field(default_factory=list)
    plans_before: PlansFile | None = None  # the plans the last swap recorded, if any
    plans_after: PlansFile | None = None
    users: list[impact.FeatureChange] = field(default_factory=list)
    swapped: bool = False
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase, in order

    @property
    def rate(self) -> float:
        """Events rebuilt per second."""
        return self.events / self.seconds if self.seconds else 0.0


class Rebuild:
    """Rebuild one projection into shadow tables, compare them, and swap them in."""

    def __init__(
        self,
        store: EventStore,
        live: Views,
        plans: PlansFile,
        *,
        livemode: bool,
        clock: Callable[[], float] = time.time,
        batch: int = BATCH,
    ) -> None:
        self.store = store
        self.live = live
        self.plans = plans
        self.livemode = livemode
        self.clock = clock
        self.batch = batch
        self.shadow = live.shadow(SHADOW_SUFFIX)

    def run(self, *, dry_run: bool) -> RebuildReport:
        """Build, compare, and (unless `dry_run`) swap; the shadow never outlives the run.

        The whole run holds the replay lock: a second replay fails at once, touching nothing.
        """
        with replay_lock(self.store.db):
            return self._run(dry_run)

    def _run(self, dry_run: bool) -> RebuildReport:
        report = RebuildReport(self.live.name, plans_after=self.plans)
        self.live.create()  # a dropped projection is rebuilt from nothing
        try:
            timed(report, "rebuild", self.build)
            timed(report, "compare", self.compare)
            if not dry_run:
                timed(report, "swap", self.swap)
        finally:
            if not report.swapped:
                self.shadow.drop()
        return report

    def build(self, report: RebuildReport) -> None:
        """Apply every stored event from position 0 into fresh shadow tables."""
        self.shadow.drop()
        self.shadow.create()
        started = time.perf_counter()
        report.position = self._catch_up()
        report.seconds = time.perf_counter() - started
        report.events = report.position  # positions count the events read (gaps aside)

    def _catch_up(self) -> int:
        return catch_up(
            self.store,
            self.shadow,
            livemode=self.livemode,
            batch=self.batch,
            label="replay rebuild",
        )

    def compare(self, report: RebuildReport) -> None:
        """Row differences per table, and the users whose features would change now."""
        report.diffs = tables.diff(self.live, self.shadow)
        report.plans_before = last_plans(self.store)
        before_plans = report.plans_before.plans if report.plans_before else self.plans.plans
        if before_plans != self.plans.plans:
            users = set(tables.users(self.live)) | set(tables.users(self.shadow))
        else:
            customers = {c for d in report.diffs for c in d.customers}
            users = impact.users_of(self.live, customers) | impact.users_of(self.shadow, customers)
        now = int(self.clock())
        before = (self.live, before_plans)
        with Progress("replay compare users", len(users)) as progress:
            report.users = impact.changes(
                users, before, (self.shadow, self.plans.plans), now, progress.advance
            )

    def swap(self, report: RebuildReport) -> None:
        """Record the replay, catch the shadow up to the head, and rename it into place."""
        self.store.append([self._record(report)])
        report.position = self._catch_up()
        self.live.promote(self.shadow)
        report.swapped = True

    def _record(self, report: RebuildReport) -> Incoming:
        """The `ledger.replay` event: an audit record, and the plans it applied."""
        # It also moves the head past any position a serving process cached reads at, so
        # every process loads the swapped rows (their caches are keyed by position).
        diffs = {d.table: [d.added, d.changed, d.removed] for d in report.diffs}
        obj = {
            "object": REPLAY,
            "projection": self.live.name,
            "rebuilt_to": report.position,
            "rows_added_changed_removed": diffs,
            "plans_sha256_12": self.plans.sha,
            "plans_toml": self.plans.text,
        }
        return own_event(REPLAY, obj, created=int(self.clock()), livemode=self.livemode)


def catch_up(
    store: EventStore,
    views: Views,
    *,
    livemode: bool,
    batch: int = 1000,
    label: str = "catch-up",
) -> int:
    """Apply what `views` lack, up to the store's head, through the runner; its position.

    Progress (a bar, or a line every few seconds) follows the runner's position."""
    runner = Runner(store, views, livemode=livemode, name=views.name, batch=batch)
    start = runner.position
    try:
        with (
            quiet("billing_ledger.projections"),
            Progress(label, max(0, store.head() - start)) as progress,
            progress.following(lambda: runner.position - start),
        ):
            return runner.catch_up()
    finally:
        runner.stop()  # its read-ahead and write-behind threads


def timed(report: RebuildReport, phase: str, step: Callable[[RebuildReport], None]) -> None:
    """Run one phase of a replay and record how long it took."""
    started = time.perf_counter()
    try:
        step(report)
    finally:
        report.phases[phase] = time.perf_counter() - started


def last_plans(store: EventStore) -> PlansFile | None:
    """The plans file the last swap recorded, or None (none recorded, or no longer valid)."""
    text: str | None = None
    for event in of_type(store, REPLAY):
        recorded = event.payload().get("data", {}).get("object", {}).get("plans_toml")
        text = recorded if isinstance(recorded, str) else text
    if text is None:
        return None
    try:
        return PlansFile(text, parse_plans(tomllib.loads(text), "<recorded plans>"))
    except (tomllib.TOMLDecodeError, PlansError):
        return None  # an older plans format: compare under the current plans only


@contextmanager
def replay_lock(db: Database) -> Iterator[None]:
    """Hold this database's one replay lock (per schema on PostgreSQL) until the block ends,
    or raise ReplayRunningError at once. Either kind ends with its holder's process."""
    hold = _advisory_lock if db.dialect == "postgres" else _file_lock
    with hold(db):
        yield


@contextmanager
def _advisory_lock(db: Database) -> Iterator[None]:
    """A session-level advisory lock keyed by schema, on a connection of its own."""
    with guard():
        conn = psycopg.connect(db.url.conninfo(), autocommit=True)
    try:
        with guard():
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s)", (db.url.lock_key("replay"),)
            ).fetchone()
        if not (row and row[0]):
            raise ReplayRunningError(RUNNING)
        yield
    finally:
        conn.close()  # closing the session releases its advisory lock


@contextmanager
def _file_lock(db: Database) -> Iterator[None]:
    """An exclusive flock on a file beside the SQLite database (kept there between runs).

    flock, not SQLite's own locks: holding a write transaction for the run would stop
    ingestion, and a lock row would outlive a replay that crashed."""
    with guard():
        fd = os.open(f"{db.url.path}.replay-lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReplayRunningError(RUNNING) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases its flock
