"""Committed batches announced to every process that reads (PostgreSQL).

The process that applies a batch sends, in the batch's own transaction, a NOTIFY on the
views' channel with what the batch touched; PostgreSQL delivers it after the commit, in
commit order. Every other process keeps one connection LISTENing (`Listener`, a daemon
thread) and feeds its views' batch log, so a cached user the batch did not touch stays a hit
at the new position (projections/cache.py), and wakes the reads waiting for a position.

Nothing is assumed of a lost notification: a read that sees a position whose batch this
process has not heard of finds a gap in the log and loads the entry again. SQLite has no
notifications: there, only the process that applies keeps its caches across batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from billing_ledger.projections.cache import BatchLog, listed

log = logging.getLogger(__name__)

PAYLOAD_BYTES = 7_500  # PostgreSQL refuses payloads of 8,000 bytes and more
EVERYONE = "*"  # the payload of a batch too big to list: it touches every user
TIMEOUT_SECONDS = 0.5  # how long one wait for notifications lasts (a stop waits as long)
BACKOFF_SECONDS = (0.1, 5.0)  # first and longest pause before connecting again


def channel(schema: str, name: str) -> str:
    """The channel of one projection's tables (`name`: the views' name and suffix, so a
    replay's shadow announces to nobody who reads the live ones) in one schema."""
    found = f"billing_views.{schema}.{name}"
    if len(found.encode()) <= 63:  # PostgreSQL's identifiers are 63 bytes at most
        return found
    return "billing_views." + hashlib.blake2b(found.encode(), digest_size=16).hexdigest()


def encode(after: int, position: int, customers: set[str | None], users: set[str]) -> str:
    """One batch as a notification's payload: its range and whom it touched, or EVERYONE
    after the range when the list would not fit."""
    if listed(customers):
        payload = json.dumps(
            [after, position, sorted(customers, key=str), sorted(users)], separators=(",", ":")
        )
        if len(payload.encode()) <= PAYLOAD_BYTES:
            return payload
    return json.dumps([after, position, EVERYONE], separators=(",", ":"))


def decode(payload: str) -> tuple[int, int, set[str | None] | None, set[str]] | None:
    """(after, position, customers or None for everyone, users); None when unreadable."""
    try:
        found = json.loads(payload)
        after, position = int(found[0]), int(found[1])
        if found[2] == EVERYONE:
            return after, position, None, set()
        customers = {c if c is None else str(c) for c in found[2]}
        return after, position, customers, {str(u) for u in found[3]}
    except (ValueError, TypeError, IndexError, KeyError):
        return None


class Listener:
    """One connection LISTENing on a channel, in a daemon thread: each announced batch goes
    to the batch log, then its position to `wake`. Connects again after a loss, with backoff."""

    def __init__(
        self,
        conninfo: str,
        channel_name: str,
        batches: BatchLog,
        wake: Callable[[int], None] = lambda position: None,
    ) -> None:
        self.conninfo = conninfo
        self.channel = channel_name
        self.batches = batches
        self._wake = wake
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self.heard = 0  # notifications taken (tests, /metrics later)

    @property
    def connected(self) -> bool:
        """Whether the connection LISTENs now (a wait then polls less often)."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Whether it LISTENs within `timeout` seconds (tests: the LISTEN precedes commits)."""
        return self._connected.wait(timeout)

    def start(self) -> None:
        """Listen in a thread of its own (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"listen-{self.channel}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2 * TIMEOUT_SECONDS) -> None:
        """Stop listening (the thread ends within one wait)."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        pause = BACKOFF_SECONDS[0]
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as connection:
                    connection.execute(f'LISTEN "{self.channel}"')
                    self._connected.set()
                    pause = BACKOFF_SECONDS[0]
                    self._listen(connection)
            except psycopg.Error as e:
                if not self._stopping.is_set():
                    log.warning("views notifications on %s lost: %s", self.channel, e)
            finally:
                self._connected.clear()
            if self._stopping.wait(pause):
                return
            pause = min(pause * 2, BACKOFF_SECONDS[1])

    def _listen(self, connection: psycopg.Connection[Any]) -> None:
        while not self._stopping.is_set():
            for notify in connection.notifies(timeout=TIMEOUT_SECONDS):
                self.heard += 1
                self._take(notify.payload)
                if self._stopping.is_set():
                    return

    def _take(self, payload: str) -> None:
        batch = decode(payload)
        if batch is None:
            log.warning("views notification on %s not understood: %.80r", self.channel, payload)
            return
        after, position, customers, users = batch
        self.batches.remember(after, position, customers, users)
        self._wake(position)
