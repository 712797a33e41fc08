"""A projection applied in another process, as an HTTP process sees it.

`serve` runs the runner in a supervised process of its own; each HTTP process follows the
tracked position from the database and learns the runner's error (if any) from a small
status file the runner process rewrites when it changes. It has the read side of Runner:
`position`, `status()` and `wait_for()`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from billing_ledger.projections.views import Views

REFRESH_SECONDS = 0.01  # at most one read of the tracked position per process this often


class Follower:
    """The tracked position of a projection someone else applies, refreshed on demand."""

    def __init__(self, views: Views, status_file: Path | None = None) -> None:
        self.views = views
        self.name = views.name
        self.status_file = status_file
        self._lock = threading.Lock()
        self._read_at = -1.0
        self._position = 0

    @property
    def position(self) -> int:
        """The tracked position, at most REFRESH_SECONDS old."""
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= REFRESH_SECONDS:
                self._position = max(self._position, self.views.position())
                self._read_at = now
            return self._position

    def status(self) -> dict[str, dict[str, Any]]:
        """`{name: {"position", "error", "skipped", "skipped_total"}}`, as /healthz shows it
        (the skipped events are read from the views, where the runner commits them)."""
        try:
            position = self.position
        except Exception as e:  # /healthz must answer even when the database does not
            return {self.name: {"position": 0, "error": f"{type(e).__name__}: {e}"}}
        skipped = self.views.skipped_at(position)
        return {self.name: {"position": position, "error": self.error(), **skipped}}

    def error(self) -> str | None:
        """What the runner process last reported as failing, None when all is well."""
        if self.status_file is None:
            return None
        try:
            found = orjson.loads(self.status_file.read_bytes()).get("error")
        except (OSError, orjson.JSONDecodeError):
            return None  # not written yet, or being replaced
        return found if isinstance(found, str) else None

    def wait_for(self, position: int, timeout: float) -> bool:
        """Wait until the views have applied `position`; False when `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while self.position < position:
            if time.monotonic() >= deadline:
                return False
            time.sleep(REFRESH_SECONDS)
        return True

    def start(self) -> None:
        """Nothing to start: the runner is another process."""

    def stop(self) -> None:
        """Nothing to stop."""


def write_status(path: Path, error: str | None) -> None:
    """Replace the status file at once (readers never see half of it)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_bytes(orjson.dumps({"error": error, "pid": os.getpid()}))
    partial.replace(path)
