"""`billing-ledger project`: the projection runner alone, in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from billing_ledger.settings import Settings

log = logging.getLogger("billing_ledger.projections")


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
        log.info("projections running from position %d", deps.runner.position)
        while not stopping.wait(1.0):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        deps.close()
    return 0
