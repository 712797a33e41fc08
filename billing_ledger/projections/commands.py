"""`billing-ledger project`: the projection runner alone, in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from billing_ledger.settings import Settings

log = logging.getLogger("billing_ledger.projections")

# Set by `serve` for the runner process it supervises (not configuration).
STATUS_FILE = "LEDGER_PROJECTION_STATUS_FILE"  # where the HTTP processes read its error
SUPERVISOR = "LEDGER_SUPERVISOR_PID"  # stop when this parent is gone


def cmd_project(args: argparse.Namespace, settings: Settings) -> int:
    """Run the projections until SIGINT or SIGTERM, then stop after the current batch."""
    from billing_ledger.bootstrap import build
    from billing_ledger.replay.integrity import announce

    deps = build(settings, run_projections=True)
    announce("project", deps.store)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping the projections", signum)
        stopping.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        deps.runner.start()
        for follower in (deps.feed, deps.notifier):  # the change feed follows the runner
            if follower is not None:
                follower.start()
        log.info("projections running from position %d", deps.runner.position)
        _report(deps.runner, stopping)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        deps.close()
    return 0


def _report(runner: Any, stopping: threading.Event) -> None:
    """Until stopped: publish the runner's error when it changes; stop if orphaned."""
    status_file = os.environ.get(STATUS_FILE)
    parent = int(os.environ.get(SUPERVISOR) or 0)
    reported: tuple[str | None] | None = None
    while not stopping.wait(0.2):
        if parent and os.getppid() != parent:
            log.warning("the supervising process %d is gone: stopping the projections", parent)
            return
        error = runner.status()[runner.name]["error"]
        if status_file and reported != (error,):
            from billing_ledger.projections.follower import write_status

            write_status(Path(status_file), error)
            reported = (error,)
