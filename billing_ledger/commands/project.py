"""`billing-ledger project`: the projection runner alone, in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from types import FrameType

from billing_ledger.bootstrap import build
from billing_ledger.projections.follower import write_status
from billing_ledger.projections.runner import Runner
from billing_ledger.replay.integrity import announce
from billing_ledger.settings import Settings

log = logging.getLogger("billing_ledger.projections")


def cmd_project(args: argparse.Namespace, settings: Settings) -> int:
    """Run the projections until SIGINT or SIGTERM, then stop after the current batch."""
    deps = build(settings, run_projections=True)
    runner = deps.runner
    assert isinstance(runner, Runner)  # run_projections: this process applies
    announce("project", deps.store)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping the projections", signum)
        stopping.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        runner.start()
        for follower in (deps.feed, deps.notifier):  # the change feed follows the runner
            if follower is not None:
                follower.start()
        log.info("projections running from position %d", runner.position)
        _report(runner, settings, stopping)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        deps.close()
    return 0


def _report(runner: Runner, settings: Settings, stopping: threading.Event) -> None:
    """Until stopped: publish the runner's error when it changes; stop if orphaned."""
    status_file = settings.projection_status_file
    parent = settings.supervisor_pid
    reported: tuple[str | None] | None = None
    while not stopping.wait(0.2):
        if parent and os.getppid() != parent:
            log.warning("the supervising process %d is gone: stopping the projections", parent)
            return
        # Not status(): it lists the skipped events, a query five times a second for nothing.
        error = runner.error
        if status_file and reported != (error,):
            write_status(status_file, error)
            reported = (error,)
