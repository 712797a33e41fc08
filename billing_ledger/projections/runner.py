"""The projection runner: reads the store in position order and applies batches to the views.

One batch is one transaction (rows and position together). A failing event stops the
projection where it is, names the event in `status()`, and is retried after a back-off;
ingestion is untouched. On PostgreSQL a session-level advisory lock per projection keeps
every runner but one idle, and LISTEN on the store's channel wakes the active one; SQLite
has no notifications, so the runner polls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import psycopg

from billing_ledger.ledger.canonical import Snapshot
from billing_ledger.ledger.logfmt import fields
from billing_ledger.ledger.normalise import normalise
from billing_ledger.ledger.records import Recorded
from billing_ledger.ledger.store import TABLE, EventStore
from billing_ledger.projections.views import PositionMovedError, Views

log = logging.getLogger("billing_ledger.projections")

POLL_SECONDS = 0.1
# After a wake-up, let deliveries gather this long before reading: under a steady stream the
# runner then commits tens of events a transaction instead of one or two, which leaves the
# CPU to ingestion; the views trail the ledger by at most this much more.
SETTLE_SECONDS = 0.05
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0


class ProjectionError(RuntimeError):
    """An event the projection could not apply: it stops there until the cause is fixed."""

    def __init__(
        self,
        name: str,
        event_id: str,
        position: int,
        cause: BaseException,
        event_type: str | None = None,
    ) -> None:
        super().__init__(
            f"projection {name} stopped at event {event_id} (position {position}): "
            f"{type(cause).__name__}: {cause}"
        )
        self.event_id = event_id
        self.position = position
        self.event_type = event_type


@dataclass
class _Prepared:
    """A batch's snapshots up to the first failing event (if any)."""

    snapshots: list[Snapshot]
    last: int  # the position the batch reaches
    error: ProjectionError | None = None


class Runner:
    """Keeps one projection's views caught up with the store."""

    def __init__(
        self,
        store: EventStore,
        views: Views,
        livemode: bool,
        name: str = "billing",
        batch: int = 1000,
        poll: float = POLL_SECONDS,
    ) -> None:
        self.store = store
        self.views = views
        self.livemode = livemode
        self.name = name
        self.batch = batch
        self.poll = poll
        self.applied = 0  # events this runner applied itself (not skipped ones)
        self._position: int | None = None
        self._error: str | None = None
        self._changed = threading.Condition()
        self._apply_lock = threading.Lock()  # catch_up() and the thread take turns
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._flagged: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None  # reads ahead, writes behind
        self._leader = _leader_for(self)

    @property
    def position(self) -> int:
        """The position the views have applied (as last seen by this runner)."""
        if self._position is None:
            self._set_position(self.views.position())
        return self._position or 0

    def status(self) -> dict[str, dict[str, Any]]:
        """`{name: {"position": N, "error": None | TEXT}}`, as /healthz shows it."""
        try:
            position = self.position
        except Exception as e:  # /healthz must answer even when the database does not
            return {self.name: {"position": 0, "error": f"{type(e).__name__}: {e}"}}
        return {self.name: {"position": position, "error": self._error}}

    def start(self) -> None:
        """Run in a background thread until `stop()`."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"runner-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after its current batch) and release the lock."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._release_workers()

    def wait_for(self, position: int, timeout: float) -> bool:
        """Wait until the views have applied `position`; False when `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while self.position < position:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:
                self._changed.wait(min(left, self.poll))
            if self._thread is None or not self._leader.held:
                # No thread of ours applies: the position moves in another process.
                self._set_position(self.views.position())
        return True

    def catch_up(self) -> int:
        """Apply everything up to the head now, in this thread; returns the position."""
        head = self.store.head()
        try:
            while self.position < head and self._step() > 0:
                pass
        finally:
            if self._thread is None:
                self._release_workers()  # no thread of ours will need them again soon
        return self.position

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        try:
            while not self._stopping.is_set():
                if not self._leader.acquire():
                    self._follow()
                    continue
                try:
                    read = self._step()
                except Exception:  # recorded in status(); the projection retries later
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_FIRST
                if read < self.batch:
                    self._leader.wait(self.poll, self._stopping)
        finally:
            self._leader.release()

    def _follow(self) -> None:
        """Another runner holds the projection: keep our view of its position fresh."""
        try:
            self._set_position(self.views.position())
            self._error = None
        except Exception as e:  # the database is away; status() says so
            self._error = f"{type(e).__name__}: {e}"
        self._stopping.wait(self.poll)

    def _step(self) -> int:
        """Apply batches while full ones keep coming; returns how many events were read."""
        with self._apply_lock:
            try:
                read = self._pipeline()
            except ProjectionError as e:
                self._fail(str(e), e)
                raise
            except Exception as e:
                self._fail(f"projection {self.name}: {type(e).__name__}: {e}")
                raise
            self._error = None
            return read

    def _pipeline(self) -> int:
        """Read the next batch and commit the last one while this one is prepared.

        The database work of reading and writing overlaps the Python work of normalising,
        which roughly halves a long catch-up. Batches still commit one by one, in order.
        """
        pool = self._workers()
        # From the tracked position, not the one cached: another process may have swapped
        # the tables (replay), and reading it tells the views to forget their cache too.
        self._set_position(self.views.position())
        after, read = self.position, 0
        reading = pool.submit(self.store.read, after, self.batch)
        writing: Future[bool] | None = None
        failure: ProjectionError | None = None
        try:
            while failure is None and not self._stopping.is_set():
                events = reading.result()
                if not events:
                    break
                read += len(events)
                full = len(events) >= self.batch
                if full:
                    reading = pool.submit(self.store.read, events[-1].position, self.batch)
                prepared = self._prepare(events, after)
                if writing is not None and not writing.result():
                    break  # the position moved under us: start again from where it is
                writing = pool.submit(self._commit, prepared, after)
                failure, after = prepared.error, prepared.last
                if not full:
                    break
        finally:
            if writing is not None:
                wait([writing])  # never leave a commit running behind the lock
        if writing is not None and writing.result() and failure is not None:
            raise failure
        return read

    def _commit(self, prepared: _Prepared, after: int) -> bool:
        """Commit one prepared batch; False when another runner or a swap moved the position."""
        if prepared.last <= after:
            return True
        try:
            self.views.apply(prepared.snapshots, after, prepared.last)
        except PositionMovedError as moved:
            log.info("%s; reading again from %d", moved, moved.tracked)
            self._set_position(moved.tracked)
            return False
        self.applied += len(prepared.snapshots)
        self._set_position(prepared.last)
        # One line per batch, not per event: a catch-up applies thousands a second.
        log.info(
            "%s",
            fields(
                projection=self.name,
                outcome="applied",
                events=len(prepared.snapshots),
                after=after,
                position=prepared.last,
            ),
        )
        return True

    def _release_workers(self) -> None:
        with self._apply_lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix=f"runner-{self.name}")
        return self._pool

    def _prepare(self, events: Sequence[Recorded], after: int) -> _Prepared:
        prepared = _Prepared([], after)
        for event in events:
            try:
                snapshot = self._snapshot(event)
            except Exception as e:  # a fold does not catch: stop here and say which event
                prepared.error = ProjectionError(
                    self.name, event.event_id, event.position, e, event.type
                )
                return prepared
            if snapshot is not None:
                prepared.snapshots.append(snapshot)
            prepared.last = event.position
        return prepared

    def _snapshot(self, event: Recorded) -> Snapshot | None:
        """The snapshot to apply, or None for an event the projections skip (and why)."""
        if event.version > 1 or event.thin:
            return None  # an alternate rendering of a stored id, or a thin notification
        if event.livemode != self.livemode:
            self._flag(event)
            return None
        return normalise(event)

    def _flag(self, event: Recorded) -> None:
        """Log an event of the other mode once: it is stored, flagged, never projected."""
        if event.event_id in self._flagged:
            return
        if len(self._flagged) > 10_000:
            self._flagged.clear()
        self._flagged.add(event.event_id)
        log.warning(
            "%s",
            fields(
                projection=self.name,
                event=event.event_id,
                type=event.type,
                position=event.position,
                outcome="skipped",
                reason="other_mode",
                livemode=event.livemode,
            ),
        )

    def _fail(self, message: str, failed: ProjectionError | None = None) -> None:
        if message != self._error:
            log.error(
                "%s",
                fields(
                    projection=self.name,
                    event=failed.event_id if failed else None,
                    type=failed.event_type if failed else None,
                    position=failed.position if failed else None,
                    outcome="failed",
                    error=message,
                ),
            )
        self._error = message

    def _set_position(self, position: int, *, notify: bool = True) -> None:
        with self._changed:
            if self._position is None or position != self._position:
                self._position = position
                if notify:
                    self._changed.notify_all()


class _Leader:
    """Who may apply: on SQLite every runner (apply is idempotent and position-checked)."""

    held = True

    def acquire(self) -> bool:
        return True

    def wait(self, timeout: float, stopping: threading.Event) -> None:
        stopping.wait(timeout)

    def release(self) -> None:
        return None


class _PostgresLeader(_Leader):
    """A session-level advisory lock on a connection of its own, which also LISTENs."""

    def __init__(self, runner: Runner) -> None:
        url = runner.store.db.url
        self.conninfo = url.conninfo()
        self.key = url.lock_key(f"{runner.name}{runner.views.suffix}")  # per projection
        self.channel: str = getattr(runner.store.recorder, "channel_name", TABLE)
        self.conn: psycopg.Connection[Any] | None = None
        self.held = False

    def acquire(self) -> bool:
        if self.held:
            return True
        try:
            if self.conn is None:
                self.conn = psycopg.connect(self.conninfo, autocommit=True)
            row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            self.held = bool(row and row[0])
            if self.held:
                self.conn.execute(f'LISTEN "{self.channel}"')
                log.info("projection lock %d acquired", self.key)
        except psycopg.Error as e:
            log.warning("projection lock unavailable: %s", e)
            self.release()
        return self.held

    def wait(self, timeout: float, stopping: threading.Event) -> None:
        """Sleep until the store notifies an insert, `timeout` passes, or we stop."""
        if self.conn is None:
            stopping.wait(timeout)
            return
        try:
            for _ in self.conn.notifies(timeout=timeout, stop_after=1):
                stopping.wait(SETTLE_SECONDS)
        except psycopg.Error as e:  # the lock went with the connection: contend again
            log.warning("projection lock connection lost: %s", e)
            self.release()

    def release(self) -> None:
        if self.conn is not None:
            self.conn.close()  # closing the session releases its advisory lock
        self.conn = None
        self.held = False


def _leader_for(runner: Runner) -> _Leader:
    return _PostgresLeader(runner) if runner.store.db.dialect == "postgres" else _Leader()
