"""Process-wide settings for the long-running commands (serve, project, replay, backfill)."""

from __future__ import annotations

import gc

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
