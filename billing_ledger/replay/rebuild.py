"""Replay: rebuild a projection from position 0 beside the live one, compare, then swap.

The shadow tables are filled by the runner's own apply path, so a rebuild is exactly what
live projection would have produced. The live tables answer reads until one transaction
renames the shadow's tables (rows and tracked position together) into their place. That
transaction first locks the live tables, in the order readers take them and waiting a
bounded time (retried with a back-off); holding them, nothing more commits to them, and the
shadow is caught up to the head before the rename, so it holds everything they held.

The views hold snapshots, not features: a new plans file changes no row. So that a dry run
can say what a plans change would do and to whom, each swap records the plans it applied
(a `ledger.replay` event of our own, appended once the swap has committed, so a failed
swap records nothing), and the next run evaluates every affected user under those plans on
the live rows and under the current plans on the rebuilt rows.
"""

from __future__ import annotations

import hashlib
import logging
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from billing_ledger.ledger.own_events import REPLAY, of_type, own_event
from billing_ledger.ledger.records import Incoming
from billing_ledger.ledger.store import Database, EventStore, StorageError, retrying
from billing_ledger.progress import Progress, quiet
from billing_ledger.projections.plans import Plans, PlansError, parse_plans
from billing_ledger.projections.policy import CURRENT, RULES_VERSION, Rules
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import (
    SWAP_LOCK_TIMEOUT,
    ShadowBehindError,
    TablesBusyError,
    Views,
)
from billing_ledger.replay import impact, tables

log = logging.getLogger("billing_ledger.replay")

SHADOW_SUFFIX = "_replay"
BATCH = 5000  # events per shadow transaction: fewer, larger commits while rebuilding
RUNNING = "another replay is running on this database; nothing was changed"


class ReplayRunningError(RuntimeError):
    """Another replay holds this database's replay lock (the two would share the shadow)."""


class SwapFailedError(RuntimeError):
    """The swap could not lock the live tables in any attempt: nothing swapped or recorded."""


class RecordNotStoredError(RuntimeError):
    """The swap committed but its `ledger.replay` record could not be appended."""


@dataclass(frozen=True)
class SwapLocks:
    """How long each attempt of a swap waits for the live tables, how many, the first pause."""

    timeout: float = SWAP_LOCK_TIMEOUT
    attempts: int = 6
    backoff: float = 0.25  # doubled after each busy attempt


def _no_hold(stage: str) -> None:
    return None


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
    rules_before: int = RULES_VERSION  # the rules the last swap recorded (1: none recorded)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase, in order

    @property
    def rate(self) -> float:
        """Events rebuilt per second."""
        return self.events / self.seconds if self.seconds else 0.0


@dataclass(eq=False)
class Rebuild:
    """Rebuild one projection into shadow tables, compare them, and swap them in."""

    store: EventStore
    live: Views
    plans: PlansFile
    _: KW_ONLY
    livemode: bool
    clock: Callable[[], float] = time.time
    batch: int = BATCH
    locks: SwapLocks = SwapLocks()
    # Called at "caught_up" (before the swap's transaction) and "locked" (holding the
    # live tables): tests hold the swap open there while events arrive.
    hold: Callable[[str], None] = _no_hold

    def __post_init__(self) -> None:
        self.shadow = self.live.shadow(SHADOW_SUFFIX)

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
        report.rules_before = last_rules(self.store)
        rules = (Rules(report.rules_before), CURRENT)
        if before_plans != self.plans.plans or rules[0] != rules[1]:
            users = set(tables.users(self.live)) | set(tables.users(self.shadow))
        else:
            customers = {c for d in report.diffs for c in d.customers}
            users = impact.users_of(self.live, customers) | impact.users_of(self.shadow, customers)
        now = int(self.clock())
        before = (self.live, before_plans)
        with Progress("replay compare users", len(users)) as progress:
            report.users = impact.changes(
                users, before, (self.shadow, self.plans.plans), now, rules, progress.advance
            )

    def swap(self, report: RebuildReport) -> None:
        """Catch the shadow up, swap it in under the live tables' locks, record the replay.

        Runners elsewhere go on from their own positions, which are at most the swapped
        tables' (nothing commits to the live tables while the swap holds them).
        """
        report.position = self._catch_up()
        self.hold("caught_up")
        self._promote(report)
        report.swapped = True
        try:
            retrying(3, lambda: self.store.append([self._record(report)]))
        except StorageError as e:
            raise RecordNotStoredError(
                f"swapped (position {report.position}), but its ledger.replay record could "
                f"not be stored ({e}): a dry run compares with the plans recorded before"
            ) from None
        # Apply the record (no rows) so that the tracked position is the head, as it was. A
        # serving runner applies it too (SQLite may refuse one of the two writers at once):
        # failing here is no failure of the swap.
        try:
            report.position = retrying(
                3, lambda: catch_up(self.store, self.live, livemode=self.livemode)
            )
        except StorageError as e:
            log.warning("replay: swapped; the runners will apply the replay record: %s", e)

    def _promote(self, report: RebuildReport) -> None:
        """Promote the shadow, trying again after a pause while the live tables are busy."""
        pause, why = self.locks.backoff, ""
        for _ in range(self.locks.attempts):
            try:
                report.position = self.live.promote(
                    self.shadow,
                    lock_timeout=self.locks.timeout,
                    while_locked=lambda: self._locked(report),
                )
                return
            except ShadowBehindError as behind:  # the live runner passed it: catch up again
                why = str(behind)
                report.position = self._catch_up()
                continue
            except TablesBusyError as busy:
                why = str(busy)
            time.sleep(pause)
            pause *= 2
        raise SwapFailedError(
            f"could not swap in {self.locks.attempts} attempts: {why}; nothing was changed"
        )

    def _locked(self, report: RebuildReport) -> None:
        """Holding the live tables: catch the shadow up to the head."""
        self.hold("locked")
        if self.store.db.dialect == "postgres":
            # On SQLite the swap holds the database's one write lock, which this catch-up
            # would wait for: there promote checks the shadow has not fallen behind instead.
            report.position = self._catch_up()

    def _record(self, report: RebuildReport) -> Incoming:
        """The `ledger.replay` event: an audit record, and the plans it applied."""
        diffs = {d.table: [d.added, d.changed, d.removed] for d in report.diffs}
        obj = {
            "object": REPLAY,
            "projection": self.live.name,
            "rebuilt_to": report.position,
            "rows_added_changed_removed": diffs,
            "plans_sha256_12": self.plans.sha,
            "plans_toml": self.plans.text,
            "rules_version": RULES_VERSION,
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


def last_rules(store: EventStore) -> int:
    """The rules version the last swap recorded; 1 for a ledger no swap of this version
    recorded (its answers were served by the rules before issue 15's fixes)."""
    version = 1
    for event in of_type(store, REPLAY):
        recorded = event.payload().get("data", {}).get("object", {}).get("rules_version")
        version = recorded if isinstance(recorded, int) else 1
    return version


@contextmanager
def replay_lock(db: Database) -> Iterator[None]:
    """Hold this database's one replay lock (per schema on PostgreSQL) until the block ends,
    or raise ReplayRunningError at once. Either kind ends with its holder's process."""
    lock = db.session_lock("replay")
    if not lock.try_acquire():
        raise ReplayRunningError(RUNNING)
    try:
        yield
    finally:
        lock.release()
