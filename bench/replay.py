"""Replay on PostgreSQL: `billing-ledger replay`'s rebuild of N events, beside read-and-decode.

Appends N events (default 1,000,000) to a fresh schema, projects them live once, vacuums
and checkpoints, then, in the same run, prints the rate of reading every row back and
JSON-decoding its body (the floor any rebuild pays; the faster of a pass before and a pass
after the rebuild) and the rate of replay's rebuild into shadow tables, with their ratio
(goal >= 0.5), and the time the comparison and the swap took.
Reproduce: `make bench`, or `PYTHONPATH=. .venv/bin/python bench/replay.py [--events N]`
(or BENCH_REPLAY_EVENTS=N) for a quicker run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench.common import fill, fresh_store, read_and_decode, settle
from billing_ledger.ledger.store import EventStore
from billing_ledger.process import tune_gc
from billing_ledger.projections.plans import load_plans
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views
from billing_ledger.replay.rebuild import PlansFile, Rebuild, RebuildReport
from billing_ledger.settings import Settings

EVENTS = int(os.environ.get("BENCH_REPLAY_EVENTS", "1000000"))
STEP_SECONDS: dict[str, float] = {}


def live_views(store: EventStore) -> Views:
    """The live projection, caught up once (replay compares with it and swaps it out)."""
    views = Views(store.db)
    views.create()
    Runner(store, views, livemode=False, batch=5000).catch_up()
    return views


def replay(store: EventStore, views: Views) -> RebuildReport:
    """Replay's three steps, timed one by one: build, compare, swap."""
    path = Settings().plans_path
    rebuild = Rebuild(store, views, PlansFile.read(path, load_plans(path)), livemode=False)
    report = RebuildReport(views.name)
    rebuild.build(report)
    for step in (rebuild.compare, rebuild.swap):
        started = time.perf_counter()
        step(report)
        STEP_SECONDS[step.__name__] = time.perf_counter() - started
    return report


def main() -> int:
    """Fill, project, settle, then measure read-and-decode and replay's rebuild."""
    tune_gc()  # as `billing-ledger replay` does; the baseline runs under it too
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    count = parser.parse_args().events
    with fresh_store("bench_replay") as store:
        began = time.perf_counter()
        size = fill(store, count)
        print(
            f"appended {count:,} events (mean {size:,.0f} B) in {time.perf_counter() - began:.1f} s"
        )
        views = live_views(store)
        settle(store)
        read_count, read_seconds = read_and_decode(store)
        began = time.perf_counter()
        report = replay(store, views)
        wall = time.perf_counter() - began
        again, again_seconds = read_and_decode(store)
        # The faster of two baselines, one before and one after the rebuild: a ratio that
        # background load on the machine cannot flatter.
        read_seconds = min(read_seconds, again_seconds * read_count / again)
        baseline = read_count / read_seconds
        print(
            f"read + JSON-decode: {baseline:,.0f} events/s ({read_count:,} in {read_seconds:.1f} s)"
        )
        print(
            f"replay rebuild:     {report.rate:,.0f} events/s ({report.events:,} in {report.seconds:.1f} s)"
        )
        print(f"ratio: {report.rate / baseline:.2f} of read-and-decode (goal >= 0.50)")
        print(
            f"compare: {STEP_SECONDS['compare']:.1f} s; swap: {STEP_SECONDS['swap'] * 1000:.0f} ms"
        )
        print(f"replay wall time (rebuild + compare + swap): {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
