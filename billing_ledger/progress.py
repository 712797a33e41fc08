"""Progress of a long command: a bar on a terminal, a line every few seconds otherwise.

On a terminal (stderr) a rich bar shows the count of the total, the percentage, the rate and
the time left; piped or logged, one line every `INTERVAL` seconds says the same, so a long
replay in CI or under systemd is not silent. Stdout stays the command's answer.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bar
from rich.text import Text

INTERVAL = 5.0  # seconds between lines when stderr is not a terminal
FOLLOW_EVERY = 0.25  # seconds between samples of a count kept elsewhere
BAR_EVERY = 0.1  # seconds between updates of a bar (one per item would cost more than the item)


class _Rate(ProgressColumn):
    """Items per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "-/s", style="progress.data.speed")


def line(label: str, done: int, total: int | None, seconds: float) -> str:
    """`replay rebuild: 45,000/100,000 (45%), 8,200/s, ETA 7s`."""
    rate = done / seconds if seconds > 0 else 0.0
    if not total:
        return f"{label}: {done:,} done, {rate:,.0f}/s, {seconds:.0f}s so far"
    percent = 100 * done / total
    if done >= total:
        left = f"done in {seconds:.1f}s"
    else:
        left = f"ETA {(total - done) / rate:.0f}s" if rate > 0 else "ETA -"
    return f"{label}: {done:,}/{total:,} ({percent:.0f}%), {rate:,.0f}/s, {left}"


class Progress:
    """Counts work done towards an optional total and shows it while a block runs."""

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        stream: TextIO | None = None,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last_line = self.started
        self._bar: Bar | None = None
        self._task: TaskID | None = None
        self._printed: int | None = None  # the count the last line showed
        self._lock = threading.Lock()

    def __enter__(self) -> Progress:
        self.started = self._last_line = self.clock()
        if self.stream.isatty():
            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                _Rate(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=True,  # the command's answer is what stays on the screen
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done)
            self._bar.stop()
        elif self.clock() - self.started >= self.interval and self._printed != self.done:
            self._print()  # a long run ends with its last line; a short one says nothing

    @property
    def seconds(self) -> float:
        """Seconds since the block began."""
        return self.clock() - self.started

    def advance(self, count: int) -> None:
        """Count `count` more items done."""
        self.update(self.done + count)

    def update(self, done: int) -> None:
        """Set the count done (a count kept elsewhere, sampled)."""
        with self._lock:
            self.done = done
            now = self.clock()
            if self._bar is not None and self._task is not None:
                if now - self._last_line >= BAR_EVERY or done == self.total:
                    self._last_line = now
                    self._bar.update(self._task, completed=done)
            elif now - self._last_line >= self.interval:
                self._print()

    def _print(self) -> None:
        self._last_line = self.clock()
        self._printed = self.done
        print(line(self.label, self.done, self.total, self.seconds), file=self.stream, flush=True)

    @contextmanager
    def following(self, count: Callable[[], int]) -> Iterator[None]:
        """Sample `count()` in a thread of its own while the block runs (work that reports
        nothing itself, such as the projection runner's catch-up)."""
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(FOLLOW_EVERY):
                self.update(count())

        thread = threading.Thread(target=sample, name=f"progress-{self.label}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.update(count())


@contextmanager
def quiet(logger: str, level: int = logging.WARNING) -> Iterator[None]:
    """Hold `logger` at `level` while progress speaks for it (per-batch lines would bury the
    command's answer, and break a bar's line)."""
    target = logging.getLogger(logger)
    before = target.level
    target.setLevel(max(level, before))
    try:
        yield
    finally:
        target.setLevel(before)
