"""Who applies a projection, and how it hears of new events.

One holder of the projection's session lock applies (a PostgreSQL advisory lock, or an flock
beside a SQLite database); every other runner follows the tracked position. On PostgreSQL
the lock's own connection LISTENs on the store's channel; SQLite has no notifications, so
the holder polls.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from billing_ledger.ledger.store import Database, SessionLock, StorageError

log = logging.getLogger("billing_ledger.projections")


class Leader:
    """The session lock of one projection, and the wait for what the store appends."""

    def __init__(self, db: Database, projection: str, channel: str, *, listen: bool = True) -> None:
        self.lock: SessionLock = db.session_lock(f"projection.{projection}")
        self.channel = channel
        self.listen = listen and db.dialect == "postgres"

    @property
    def held(self) -> bool:
        """Whether this runner holds the projection."""
        return self.lock.held

    def acquire(self) -> bool:
        """Hold the projection (at once, or not now); True while held."""
        if self.lock.held:
            return True
        try:
            if self.lock.try_acquire():
                self._listen()
                log.info("projection lock %s acquired", self.lock.name)
        except (StorageError, psycopg.Error) as e:
            log.warning("projection lock unavailable: %s", e)
            self.release()
        return self.lock.held

    def _listen(self) -> None:
        if self.listen and self.lock.connection is not None:
            self.lock.connection.execute(f'LISTEN "{self.channel}"')

    def drain(self) -> None:
        """Forget the notifications already queued: the caller reads the head next."""
        self._notified(0.0)

    def wait(self, timeout: float, stopping: threading.Event) -> bool:
        """Sleep until the store notifies an insert, `timeout` passes, or we stop; True
        when notified."""
        connection = self.lock.connection if self.listen else None
        if connection is None:
            stopping.wait(timeout)
            return False
        return self._notified(timeout)

    def _notified(self, timeout: float) -> bool:
        connection = self.lock.connection if self.listen else None
        if connection is None:
            return False
        try:
            if not any(True for _ in connection.notifies(timeout=timeout, stop_after=1)):
                return False
            for _ in connection.notifies(timeout=0):  # and whatever else is queued, unwaited
                pass
            return True
        except psycopg.Error as e:  # the lock went with the connection: contend again
            log.warning("projection lock connection lost: %s", e)
            self.release()
            return False

    def release(self) -> None:
        """Let another runner take the projection."""
        self.lock.release()
