"""History of one busy user: its time beside that user's cold entitlements read.

One user's Checkout and N subscription updates (a renewal each, every seventh past_due and
back, the plan switching between pro and basic every ten) are appended to a fresh PostgreSQL schema and projected by the runner. Then, each from
a cold read of the user's rows (`Views.load_inputs`, no cache), the bench times the
entitlements evaluation, the history (`/v1/users/{id}/history`'s computation) and the
`explain` lines. Goal (issue 16 item 5): history within 10x of the cold entitlements read.
Reproduce: `make bench BENCHES=history`, or `PYTHONPATH=. .venv/bin/python bench/history.py`
(BENCH_HISTORY_EVENTS=N, default 5,000; BENCH_HISTORY_ROUNDS=R, default 5, the median kept).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.common import fresh_store, settle
from billing_ledger.ledger.records import Incoming
from billing_ledger.ledger.store import EventStore
from billing_ledger.projections.history import changes
from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import evaluate
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views
from billing_ledger.replay.explain import explain
from tests.unit.builders import DAY, T, checkout_session, event, example_plans, subscription

EVENTS = int(os.environ.get("BENCH_HISTORY_EVENTS", "5000"))
ROUNDS = int(os.environ.get("BENCH_HISTORY_ROUNDS", "5"))
USER = "u_busy"
GOAL = 10.0

Json = dict[str, Any]


def _events(count: int) -> list[Json]:
    """Checkout, then `count` daily updates of one subscription, its plan switching every ten."""
    session = checkout_session(id="cs_busy", customer="cus_busy", subscription="sub_busy",
                               client_reference_id=USER)  # fmt: skip
    found = [event("checkout.session.completed", session, id="evt_cs", created=T)]
    status = "active"
    for n in range(count):
        start = T + n * DAY
        after = "past_due" if n % 7 == 6 else "active"
        prices = ("price_pro",) if (n // 10) % 2 == 0 else ("price_basic",)
        sub = subscription(id="sub_busy", customer="cus_busy", status=after, prices=prices,
                           period=(start, start + 30 * DAY))  # fmt: skip
        previous = {"status": status}
        found.append(event("customer.subscription.updated", sub, id=f"evt_{n}",
                           created=start, previous=previous))  # fmt: skip
        status = after
    return found


def _fill(store: EventStore, envelopes: list[Json]) -> None:
    for start in range(0, len(envelopes), 1000):
        store.append(
            [
                Incoming(
                    event_id=e["id"],
                    type=e["type"],
                    created=e["created"],
                    livemode=False,
                    api_version=e["api_version"],
                    body=orjson.dumps(e),
                    received_at=time.time(),
                )
                for e in envelopes[start : start + 1000]
            ]
        )


def _median(run: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(views: Views, plans: Plans, at: int) -> dict[str, float]:
    """Seconds, from a cold load of the user's rows, for each read."""
    return {
        "cold entitlements read": _median(lambda: evaluate(views.load_inputs(USER), plans, at)),
        "history": _median(lambda: changes(views.load_inputs(USER), plans, at)),
        "explain": _median(lambda: explain(views.load_inputs(USER), plans, at)),
    }


def main() -> None:
    plans = example_plans()
    with fresh_store("bench_history") as store:
        _fill(store, _events(EVENTS))
        views = Views(store.db)
        views.create()
        Runner(store, views, livemode=False, batch=5000).catch_up()
        settle(store)
        at = T + (EVENTS + 40) * DAY
        figures = measure(views, plans, at)
        found = len(changes(views.load_inputs(USER), plans, at))
    cold = figures["cold entitlements read"]
    print(f"one user, {EVENTS:,} subscription updates, {found} feature changes, median of {ROUNDS}")
    for name, seconds in figures.items():
        print(f"  {name:<24} {seconds * 1000:9.1f} ms  ({seconds / cold:5.1f}x the cold read)")
    ratio = figures["history"] / cold
    verdict = "ok" if ratio <= GOAL else "MISSED"
    print(f"history / cold entitlements read: {ratio:.1f}x (goal <= {GOAL:.0f}x): {verdict}")


if __name__ == "__main__":
    main()
