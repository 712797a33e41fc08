"""Ten processes deliver one event id at the same moment: one stored copy."""

from __future__ import annotations

import multiprocessing
import time

from billing_ledger.ledger.records import Incoming
from tests.support.databases import open_store
from tests.support.signing import event_body


def _deliver(
    url: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue
) -> None:  # type: ignore[name-defined]
    try:
        store = open_store(url)
        body = event_body("evt_race", pad_to=3000)
        event = Incoming(
            "evt_race",
            "customer.subscription.updated",
            1767225600,
            False,
            "2026-10-28.endive",
            body,
            time.time(),
        )
        barrier.wait(timeout=60)
        result = store.append([event])[0]
        out.put((result.status, result.position))
        store.db.close()
    except Exception as error:  # the parent asserts on it: a failure here must not hang the race
        barrier.abort()
        out.put(("error", repr(error)))


def test_ten_concurrent_deliveries_from_separate_processes_store_one_copy(
    database_url: str,
) -> None:
    open_store(database_url).db.close()  # create the tables once, before the race
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(10)
    out = context.Queue()
    processes = [
        context.Process(target=_deliver, args=(database_url, barrier, out)) for _ in range(10)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    results = [out.get(timeout=5) for _ in processes]
    assert sorted(status for status, _ in results) == ["duplicate"] * 9 + ["recorded"], results
    assert len({position for _, position in results}) == 1
    store = open_store(database_url)
    assert [e.event_id for e in store.read(0)] == ["evt_race"]
    store.db.close()
