"""Projection catch-up on PostgreSQL: events/s applied from position 0 to the head.

Appends N realistic subscription, invoice and Checkout events (1-3 KB, endive shapes) to a
fresh schema, then prints, in the same run: the rate of merely reading the rows back and
JSON-decoding each body (the floor any projection pays), and the runner's catch-up rate
into fresh views, with their ratio. Goal (issue 10): catch-up at least 0.8 of the
read-and-decode rate. Both read through `EventStore.read`, as the runner does.
Reproduce: `make bench`, or `PYTHONPATH=. .venv/bin/python bench/project.py`
(BENCH_PROJECT_EVENTS=N for a quicker run; default 1,000,000).
"""

from __future__ import annotations

import os
import sys
import time

from bench.common import fill, fresh_store, read_and_decode
from billing_ledger.ledger.store import EventStore
from billing_ledger.process import tune_gc
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views

EVENTS = int(os.environ.get("BENCH_PROJECT_EVENTS", "1000000"))
READ_BATCH = 5000


def catch_up(store: EventStore) -> tuple[int, float]:
    """A runner applying everything into fresh views."""
    views = Views(store.db)
    views.create()
    runner = Runner(store, views, livemode=False, batch=READ_BATCH)
    started = time.perf_counter()
    runner.catch_up()
    return runner.applied, time.perf_counter() - started


def main() -> int:
    tune_gc()  # as `billing-ledger project` does; the baseline runs under it too
    with fresh_store("bench") as store:
        began = time.perf_counter()
        size = fill(store, EVENTS)
        print(
            f"appended {EVENTS:,} events (mean {size:,.0f} B) in {time.perf_counter() - began:.1f} s"
        )
        read_count, read_seconds = read_and_decode(store)
        applied, apply_seconds = catch_up(store)
        baseline = read_count / read_seconds
        rate = EVENTS / apply_seconds
        print(
            f"read + JSON-decode: {baseline:,.0f} events/s ({read_count:,} in {read_seconds:.1f} s)"
        )
        print(
            f"catch-up:           {rate:,.0f} events/s ({applied:,} snapshots in {apply_seconds:.1f} s)"
        )
        print(f"ratio: {rate / baseline:.2f} of read-and-decode (goal >= 0.80)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
