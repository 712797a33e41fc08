"""The one background thread of a long-running part (runner, feed, notifier, replica)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    """A daemon thread running `target` from `start()` until `stop()` sets `stopping`."""

    def __init__(self, name: str, target: Callable[[], None], join_seconds: float = 30) -> None:
        self.name = name
        self.target = target
        self.join_seconds = join_seconds
        self.stopping = threading.Event()  # what `target` watches, and waits on between steps
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the thread was started and not stopped since."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread, unless it runs already."""
        if self._thread is not None:
            return
        self.stopping.clear()
        self._thread = threading.Thread(target=self.target, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop, and wait (a bounded time) until it has."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_seconds)
            self._thread = None
