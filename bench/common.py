"""Shared bench code: a realistic ledger of N events on a fresh PostgreSQL schema, and the
read-and-decode baseline every projection figure is measured against.

Events are one customer's Checkout, subscription renewals and paid invoices, in the endive
shapes of the unit tests' builders, padded to 1-3 KB as real bodies are.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg

from billing_ledger.ledger.records import Incoming
from billing_ledger.ledger.store import Database, DatabaseUrl, EventStore
from tests.unit.builders import DAY, M, T, checkout_session, event, invoice, subscription

PG = os.environ.get("LEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/ledger_test")
APPEND_BATCH = 1000  # larger binary batches have stalled the pipelined insert
READ_BATCH = 5000

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


def envelope(index: int, customers: int) -> Json:
    """Event `index`: one customer's Checkout, subscription changes and invoices."""
    n = index % customers
    step = index // customers
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


def incoming(index: int, customers: int) -> Incoming:
    """Event `index` as the webhook would hand it to the store."""
    env = envelope(index, customers)
    return Incoming(
        event_id=env["id"],
        type=env["type"],
        created=env["created"],
        livemode=False,
        api_version=env["api_version"],
        body=_padded(env, index),
        received_at=time.time(),
    )


def fill(store: EventStore, count: int) -> float:
    """Append `count` events (one customer per ten) in large batches; the mean body size."""
    customers, total = max(1, count // 10), 0
    for start in range(0, count, APPEND_BATCH):
        batch = [incoming(i, customers) for i in range(start, min(count, start + APPEND_BATCH))]
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


def settle(store: EventStore) -> None:
    """Vacuum, analyse and checkpoint the schema before anything is measured."""
    # Otherwise the writes that filling it left behind (hint bits, dirty pages, autovacuum)
    # land inside whichever measurement runs first.
    with psycopg.connect(PG, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (store.db.url.schema,)
        ).fetchall()
        for (table,) in tables:
            conn.execute(f'VACUUM (ANALYZE) "{store.db.url.schema}"."{table}"')
        conn.execute("CHECKPOINT")


@contextmanager
def fresh_store(prefix: str) -> Iterator[EventStore]:
    """An event store on a new schema of the test database, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    store = EventStore(Database(DatabaseUrl.parse(f"{PG}?schema={schema}")))
    try:
        store.create()
        yield store
    finally:
        store.db.close()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def server_role(pid: int, server: int) -> str:
    """What a process of the server is: serve's own, the runner, or one of uvicorn's."""
    if pid == server:
        return "serve"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if b"project" in argv:
        return "runner"
    return "worker" if any(b"spawn_main" in a for a in argv) else "helper"
