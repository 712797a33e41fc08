"""The projection runner: reads the store in position order and applies batches to the views.

One batch is one transaction (rows and position together). An event that fails for what it
holds (it cannot be normalised, or its rows cannot be written) is skipped: logged, recorded
with the position in the same transaction, listed in `status()`. A failure of the database
stops the projection where it is and is retried after a back-off; ingestion is untouched.
Which runner applies, and how it hears of new events, is the leader's business
(projections/leader.py); the others follow the tracked position.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import psycopg
from eventsourcing.persistence import DataError, IntegrityError, PersistenceError

from billing_ledger.background import Background
from billing_ledger.ledger.canonical import Snapshot
from billing_ledger.ledger.logfmt import fields
from billing_ledger.ledger.normalise import READERS, body_of, normalise
from billing_ledger.ledger.records import Recorded
from billing_ledger.ledger.store import TABLE, EventStore, StorageError
from billing_ledger.projections.cards import CARD_EVENTS, CardFact, card_facts
from billing_ledger.projections.leader import Leader
from billing_ledger.projections.views import BatchRows, PositionMovedError, Skipped, Views

log = logging.getLogger("billing_ledger.projections")

POLL_SECONDS = 0.1
# After a wake-up, let deliveries gather this long before reading: under a steady stream the
# runner then commits tens of events a transaction instead of one or two, which leaves the
# CPU to ingestion; the views trail the ledger by at most this much more.
SETTLE_SECONDS = 0.05
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0
REASON_CHARS = 300  # of a skip's reason, as recorded and listed
# Preparing a batch holds the GIL for tens of milliseconds, and each statement of the batch
# committing meanwhile waits for it when it returns: up to the interpreter's switch interval
# (5 ms) each, which made the commit the pipeline's longest stage. Let it in this often.
YIELD_EVERY = 32
# The event types whose bodies both normalise and the card facts read.
_BOTH_READ = CARD_EVENTS & READERS.keys()

# What a database raises; of these only the ones about a row's values say "this event".
_DATABASE_ERRORS = (StorageError, PersistenceError, psycopg.Error, sqlite3.Error, OSError)
_ROW_ERRORS = (
    DataError,
    IntegrityError,
    psycopg.DataError,
    psycopg.IntegrityError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
)


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
    error: ProjectionError | None = None  # unused since failing events are skipped
    positions: list[int] = field(default_factory=list)  # of each snapshot's event
    skipped: list[Skipped] = field(default_factory=list)
    cards: list[tuple[int, CardFact]] = field(default_factory=list)  # (position, fact)
    rows: BatchRows | None = None  # the snapshots' rows, made before the commit

    def cards_in(self, after: int, position: int) -> list[CardFact]:
        """The card facts of the events in (after, position]."""
        return [fact for at, fact in self.cards if after < at <= position]


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
        *,
        listen: bool = True,
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
        self._background = Background(f"runner-{name}", self._run)
        self._stopping = self._background.stopping
        self._flagged: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None  # reads ahead, writes behind
        channel: str = getattr(store.recorder, "channel_name", TABLE)
        self._leader = Leader(store.db, f"{name}{views.suffix}", channel, listen=listen)

    @property
    def position(self) -> int:
        """The position the views have applied (as last seen by this runner)."""
        if self._position is None:
            self._set_position(self.views.position())
        return self._position or 0

    @property
    def error(self) -> str | None:
        """Why the projection last failed, None while it applies; no query, unlike status()."""
        return self._error

    def status(self) -> dict[str, dict[str, Any]]:
        """`{name: {"position", "error", "skipped": [...], "skipped_total"}}`, as /healthz
        shows it (the skipped events newest 100, oldest first)."""
        try:
            position = self.position
        except Exception as e:  # /healthz must answer even when the database does not
            return {self.name: {"position": 0, "error": f"{type(e).__name__}: {e}"}}
        skipped = self.views.skipped_at(position)
        return {self.name: {"position": position, "error": self._error, **skipped}}

    def start(self) -> None:
        """Run in a background thread until `stop()`."""
        self._background.start()

    def stop(self) -> None:
        """Stop the thread (after its current batch) and release the lock."""
        self._background.stop()
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
            if not self._background.running or not self._leader.held:
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
            if not self._background.running:
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
                    self._idle()
        finally:
            self._leader.release()

    def _idle(self) -> None:
        """Wait for more, or only settle when more committed while the last batch was applied.

        Notifications queued meanwhile are dropped first, then the head is read: whatever
        commits after that read notifies again, so no wake-up is lost, and without
        notifications (SQLite, or none arriving) the next loop still starts after the settle.
        Settling when a little behind too: under a steady stream, a step started at once
        would take the few events that came during the last one (measured at 150 events/s:
        about 40% fewer batches, each with its fixed queries, and as many fewer steps of the
        feed). A full batch waiting is read at once: a backlog gains nothing by settling.
        """
        self._leader.drain()
        try:
            behind = self.store.head() - self.position
        except Exception:  # the database is away: the next step says so in status()
            behind = 0
        if behind >= self.batch:
            return
        if behind > 0 or self._leader.wait(self.poll, self._stopping):
            self._stopping.wait(SETTLE_SECONDS)

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
        """Commit one prepared batch; False when another runner or a swap moved the position.

        A batch failing for an event's content is applied again event by event (`_isolate`);
        a failure of the database propagates, and the batch is retried later as it was.
        """
        if prepared.last <= after:
            return True
        try:
            self._apply_or_isolate(prepared, after)
        except PositionMovedError as moved:
            log.info("%s; reading again from %d", moved, moved.tracked)
            self._set_position(moved.tracked)
            return False
        return True

    def _apply_or_isolate(self, prepared: _Prepared, after: int) -> None:
        try:
            cards = [fact for _, fact in prepared.cards]
            batch = prepared.snapshots
            self._apply(batch, after, prepared.last, prepared.skipped, cards, prepared.rows)
        except PositionMovedError:
            raise
        except Exception as e:
            if not _content_failure(e):
                raise
            log.warning(
                "%s",
                fields(
                    projection=self.name,
                    outcome="isolating",
                    after=after,
                    position=prepared.last,
                    error=_reason(e),
                ),
            )
            self._isolate(prepared, after)

    def _apply(
        self,
        snapshots: list[Snapshot],
        after: int,
        position: int,
        skipped: Sequence[Skipped],
        cards: Sequence[CardFact] = (),
        rows: BatchRows | None = None,
    ) -> None:
        """One transaction: rows, card facts, skips and position; then log it."""
        self.views.apply(snapshots, after, position, skipped, cards, rows)
        self.applied += len(snapshots)
        for skip in skipped:
            self._log_skip(skip)
        # One line per batch, not per event: a catch-up applies thousands a second.
        log.info(
            "%s",
            fields(
                projection=self.name,
                outcome="applied",
                events=len(snapshots),
                after=after,
                position=position,
            ),
        )
        self._set_position(position)  # after the lines: whoever waits for it sees them

    def _isolate(self, prepared: _Prepared, after: int) -> None:
        """Apply a failed batch one event a transaction, skipping each event that fails
        alone for its content. Deterministic: replay skips the same events the same way."""
        done = after
        for snapshot, position in zip(prepared.snapshots, prepared.positions, strict=True):
            earlier = [s for s in prepared.skipped if done < s.position <= position]
            cards = prepared.cards_in(done, position)
            try:
                self._apply([snapshot], done, position, earlier, cards)
            except PositionMovedError:
                raise
            except Exception as e:
                if not _content_failure(e):
                    raise
                skip = Skipped(snapshot.event_id, position, snapshot.event_type, _reason(e))
                self._apply([], done, position, [*earlier, skip])
            done = position
        if prepared.last > done:
            rest = [s for s in prepared.skipped if s.position > done]
            self._apply([], done, prepared.last, rest, prepared.cards_in(done, prepared.last))

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
        for index, event in enumerate(events):
            if index % YIELD_EVERY == 0:
                time.sleep(0)  # the GIL to the commit's thread, if its statement returned
            try:
                snapshot, facts = self._read(event)
                if facts:  # most events have none
                    prepared.cards += [(event.position, f) for f in facts]
            except Exception as e:  # normalising is pure: this event would fail every time
                reason = _reason(e)
                prepared.skipped.append(Skipped(event.event_id, event.position, event.type, reason))
                snapshot = None
            if snapshot is not None:
                prepared.snapshots.append(snapshot)
                prepared.positions.append(event.position)
            prepared.last = event.position
        # The rows too, here: the thread that commits the batch before waits on the database
        # meanwhile, and the commit's own Python work was the pipeline's longest stage.
        try:
            prepared.rows = self.views.batch_rows(prepared.snapshots)
        except Exception:  # a snapshot that cannot be written: the commit isolates it
            prepared.rows = None
        return prepared

    def _read(self, event: Recorded) -> tuple[Snapshot | None, tuple[CardFact, ...]]:
        """The snapshot to apply (None for an event the projections skip) and the event's
        payment-method facts (projections/cards.py); a body both read is parsed once."""
        if event.version > 1 or event.thin:
            return None, ()  # an alternate rendering of a stored id, or a thin notification
        if event.livemode != self.livemode:
            self._flag(event)
            return None, ()
        if event.type not in CARD_EVENTS:
            return normalise(event), ()
        if event.type not in _BOTH_READ:
            return normalise(event), card_facts(event)
        body = body_of(event)  # fails as normalise would, before any fact is read
        return normalise(event, body), card_facts(event, body)

    def _flag(self, event: Recorded) -> None:
        """Log an event of the other mode once: it is stored, flagged, never projected."""
        if event.event_id in self._flagged:
            return
        if len(self._flagged) > 10_000:
            self._flagged.clear()
        self._flagged.add(event.event_id)
        other_mode = Skipped(event.event_id, event.position, event.type, "other_mode")
        self._log_skip(other_mode, livemode=event.livemode)

    def _log_skip(self, skip: Skipped, **more: object) -> None:
        """One warning line for an event this projection does not apply."""
        where = fields(projection=self.name, event=skip.event_id, type=skip.event_type)
        said = fields(position=skip.position, outcome="skipped", reason=skip.reason, **more)
        log.warning("%s %s", where, said)

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


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from or during, outermost first."""
    found = [error]
    while len(found) < 10:
        last = found[-1]
        inner = last.__cause__ or (None if last.__suppress_context__ else last.__context__)
        if inner is None or inner in found:
            break
        found.append(inner)
    return found


def _content_failure(error: BaseException) -> bool:
    """Whether a failure comes from what the events hold, never from the database being
    away: no database error at all, or the database refusing a value (a DataError)."""
    database = [e for e in _chain(error) if isinstance(e, _DATABASE_ERRORS)]
    return not database or any(isinstance(e, _ROW_ERRORS) for e in database)


def _reason(error: BaseException) -> str:
    """Why an event was skipped: the innermost cause, in one line."""
    root = _chain(error)[-1]
    text = " ".join(f"{type(root).__name__}: {root}".split())
    return text[:REASON_CHARS]
