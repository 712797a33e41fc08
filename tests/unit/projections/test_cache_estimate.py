"""The read cache's byte estimate against what its entries keep alive, traced."""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import astuple
from typing import Any

import orjson

from billing_ledger.ledger.canonical import snapshot_from_json, snapshot_to_json
from billing_ledger.projections.cache import Entry, estimate
from billing_ledger.projections.links import LinkRow
from billing_ledger.projections.policy import UserInputs
from tests.unit.builders import DAY, M, T, checkout_session, event, inputs, invoice, subscription

USERS = 300  # entries per measurement: the figure is per entry, the noise spread over many


def ledger(n: int, renewals: int) -> list[dict[str, Any]]:
    """User u_n's Checkout, then `renewals` subscription updates and paid invoices."""
    ids = {"customer": f"cus_{n}", "subscription": f"sub_{n}"}
    session = checkout_session(id=f"cs_{n}", client_reference_id=f"u_{n}", **ids)
    found = [event("checkout.session.completed", session, id=f"evt_{n}", created=T)]
    for step in range(1, renewals + 1):
        start = T + step * M
        sub = subscription(id=f"sub_{n}", customer=f"cus_{n}", period=(start, start + M))
        paid = invoice(id=f"in_{n}_{step}", status="paid", amount_paid=2000, created=start, **ids)
        found += [
            event("customer.subscription.updated", sub, id=f"evt_{n}_s{step}", created=start),
            event("invoice.paid", paid, id=f"evt_{n}_i{step}", created=start + DAY),
        ]
    return found


def traced_and_estimated(renewals: int) -> tuple[int, int]:
    """Bytes USERS cache entries hold once built from their rows (the user id, the links'
    fields and the snapshots' JSON, as the views read them), and what the estimate says."""
    rows = []
    for n in range(USERS):
        user = inputs(f"u_{n}", ledger(n, renewals))
        fields = orjson.dumps([user.user_id, [astuple(link) for link in user.links]])
        rows.append((fields, [snapshot_to_json(s) for s in user.snapshots]))
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        kept = {}
        for fields, json in rows:
            user_id, links = orjson.loads(fields)
            loaded = UserInputs(
                user_id,
                tuple(LinkRow(*link) for link in links),
                tuple(snapshot_from_json(j) for j in json),
            )
            kept[user_id] = Entry(1, loaded, estimate(loaded, sum(len(j) for j in json)))
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    return traced, sum(entry.size for entry in kept.values())


def test_the_estimate_is_near_what_entries_of_one_snapshot_hold() -> None:
    traced, estimated = traced_and_estimated(0)
    assert 0.9 <= traced / estimated <= 1.0, (traced, estimated)  # 0-10% above


def test_the_estimate_is_near_what_entries_of_many_snapshots_hold() -> None:
    traced, estimated = traced_and_estimated(5)  # eleven snapshots each
    assert 0.9 <= traced / estimated <= 1.0, (traced, estimated)  # 0-10% above
