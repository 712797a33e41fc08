"""Projection catch-up on PostgreSQL: events/s applied from position 0 to the head.

Appends N realistic subscription, invoice and Checkout events (1-3 KB, endive shapes) to a
fresh schema, then prints, in the same run: the rate of merely reading the rows back and
JSON-decoding each body (the floor any projection pays), and the runner's catch-up rate
into fresh views, with their ratio. Goal: catch-up at least half the read-and-decode rate.
Reproduce: `make bench`, or `PYTHONPATH=. .venv/bin/python bench/project.py`
(BENCH_PROJECT_EVENTS=N for a quicker run; default 1,000,000).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg

from billing_ledger.ledger.records import Incoming
from billing_ledger.ledger.store import Database, DatabaseUrl, EventStore
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views
from tests.unit.builders import DAY, M, T, checkout_session, event, invoice, subscription

PG = os.environ.get("LEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/ledger_test")
EVENTS = int(os.environ.get("BENCH_PROJECT_EVENTS", "1000000"))
APPEND_BATCH = 1000  # larger binary batches have stalled the pipelined insert
READ_BATCH = 5000
CUSTOMERS = max(1, EVENTS // 10)

Json = dict[str, Any]


def _padded(envelope: Json, index: int) -> bytes:
    """Grow the object's metadata so bodies spread over 1-3 KB, as real ones do."""
    body = orjson.dumps(envelope)
    target = 1024 + (index * 7919) % 2048
    if len(body) < target:
        obj = envelope["data"]["object"]
        obj["metadata"] = {**obj.get("metadata", {}), "note": "x" * (target - len(body) - 12)}
        body = orjson.dumps(envelope)
    return body


def _envelope(index: int) -> Json:
    """Event `index`: one customer's Checkout, subscription changes and invoices."""
    n = index % CUSTOMERS
    step = index // CUSTOMERS
    ids = {"customer": f"cus_{n}", "subscription": f"sub_{n}"}
    created = T + step * DAY + n % 3600
    eid = f"evt_{index}"
    if step == 0:
        session = checkout_session(id=f"cs_{n}", client_reference_id=f"u_{n}", **ids)
        return event("checkout.session.completed", session, id=eid, created=created)
    if step % 3 == 1:
        start = T + (step // 3) * M
        sub = subscription(
            id=ids["subscription"], customer=ids["customer"], period=(start, start + M)
        )
        return event("customer.subscription.updated", sub, id=eid, created=created)
    inv = invoice(
        id=f"in_{n}_{step}",
        status="paid",
        amount_paid=2000,
        attempt_count=1,
        created=created,
        **ids,
    )
    return event("invoice.paid", inv, id=eid, created=created)


def _incoming(index: int) -> Incoming:
    envelope = _envelope(index)
    return Incoming(
        event_id=envelope["id"],
        type=envelope["type"],
        created=envelope["created"],
        livemode=False,
        api_version=envelope["api_version"],
        body=_padded(envelope, index),
        received_at=time.time(),
    )


def _batches(count: int, size: int) -> Iterator[list[Incoming]]:
    for start in range(0, count, size):
        yield [_incoming(i) for i in range(start, min(count, start + size))]


def fill(store: EventStore, count: int) -> float:
    """Append `count` events in large batches; returns the mean body size."""
    total = 0
    for batch in _batches(count, APPEND_BATCH):
        store.append(batch)
        total += sum(len(e.body) for e in batch)
    return total / count


def read_and_decode(store: EventStore) -> tuple[int, float]:
    """Read every stored row in position order and parse its body: the baseline."""
    started, after, count = time.perf_counter(), 0, 0
    while True:
        events = store.read(after, READ_BATCH)
        if not events:
            return count, time.perf_counter() - started
        for e in events:
            orjson.loads(e.body)
        count += len(events)
        after = events[-1].position


def catch_up(store: EventStore) -> tuple[int, float]:
    """A runner applying everything into fresh views."""
    views = Views(store.db)
    views.create()
    runner = Runner(store, views, livemode=False, batch=READ_BATCH)
    started = time.perf_counter()
    runner.catch_up()
    return runner.applied, time.perf_counter() - started


def main() -> int:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    store = EventStore(Database(DatabaseUrl.parse(f"{PG}?schema={schema}")))
    try:
        store.create()
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
        print(f"ratio: {rate / baseline:.2f} of read-and-decode (goal >= 0.50)")
    finally:
        store.db.close()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return 0


if __name__ == "__main__":
    sys.exit(main())
