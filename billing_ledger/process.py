"""Process-wide settings of the long-running commands, and the supervision of child processes."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger("billing_ledger.process")

RESTART_FIRST = 0.2  # seconds before restarting a child that died
RESTART_MAX = 10.0

# A projection batch keeps thousands of parsed bodies and snapshots alive at once, so the
# default first-generation threshold (700 allocations) runs the cyclic collector thousands of
# times per million events, each pass walking the batch again: about 15% of a catch-up.
# Almost everything the ledger allocates is freed by reference counting; the collector only
# needs to run now and then.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Collect rarely, and never walk what startup allocated (the modules, settings, plans)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Supervised:
    """A child process kept running: started again whenever it dies, until `stop()`.

    A clean exit (status 0: it was asked to stop, e.g. by a signal to the whole group) is
    not restarted; a crash or a kill is, after a back-off that grows while it keeps dying
    young.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.on_exit = on_exit
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)

    def start(self) -> Supervised:
        """Start the child and watch it."""
        self.process = subprocess.Popen(self.command, env=self.env)
        log.info("%s started (pid %d)", self.name, self.process.pid)
        self._thread.start()
        return self

    def _watch(self) -> None:
        backoff = RESTART_FIRST
        while self.process is not None:
            started = time.monotonic()
            status = self.process.wait()
            if self._stopping.is_set() or status == 0:
                return
            log.warning(
                "%s (pid %d) exited with status %d; restarting", self.name, self.process.pid, status
            )
            if self.on_exit is not None:
                self.on_exit(status)
            backoff = RESTART_FIRST if time.monotonic() - started > RESTART_MAX else backoff
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, RESTART_MAX)
            self.process = subprocess.Popen(self.command, env=self.env)
            self.restarts += 1
            log.info("%s restarted (pid %d)", self.name, self.process.pid)

    def stop(self, timeout: float = 30) -> None:
        """Ask the child to stop (SIGTERM), kill it after `timeout`, stop watching."""
        self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._thread.is_alive():
            self._thread.join(5)


def default_workers() -> int:
    """HTTP processes when `--workers` is not given: the machine's cores, at most four."""
    return max(1, min(os.cpu_count() or 1, 4))
