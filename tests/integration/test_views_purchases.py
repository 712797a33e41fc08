"""The catalog table and the disputes' customers on SQLite and PostgreSQL: a function of the
set of snapshots, whatever order and batches they are applied in."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from billing_ledger.ledger.canonical import Snapshot
from billing_ledger.ledger.store import Database, DatabaseUrl
from billing_ledger.projections.views import CATALOG, Views
from tests.unit.builders import (
    DAY,
    T,
    charge,
    dispute,
    event,
    payment_session,
    sale,
    snapshots,
)
from tests.unit.projections.test_catalog import price, product


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(DatabaseUrl.parse(database_url))
    yield database
    database.close()


def events() -> list[Snapshot]:
    """A catalog with archives and same-second updates, and two purchases: one whose dispute
    comes before its charge is known, one refunded."""
    return snapshots(
        [
            event("product.created", product(), id="e_p1", created=T),
            event("price.created", price(), id="e_c1", created=T),
            event(
                "price.updated",
                price(active=False),
                id="e_c2",
                created=T,
                previous={"active": True},
            ),
            event("price.updated", price(amount=2500), id="e_c3", created=T + 9),
            event("product.deleted", product(), id="e_p2", created=T + 20),
            sale(id="lgr_sale_1", created=T),
            event("checkout.session.completed", payment_session(), id="e_s1", created=T),
            event(
                "charge.dispute.created",
                dispute(status="needs_response"),
                id="e_d1",
                created=T + DAY,
            ),
            event("charge.dispute.closed", dispute(status="lost"), id="e_d2", created=T + 2 * DAY),
            event("charge.succeeded", charge(), id="e_ch1", created=T),
            event(
                "checkout.session.completed",
                payment_session(id="cs_2", customer="cus_2", payment_intent="pi_2"),
                id="e_s2",
                created=T,
            ),
            event(
                "charge.refunded",
                charge(id="ch_2", customer="cus_2", payment_intent="pi_2", amount_refunded=9900),
                id="e_ch2",
                created=T + DAY,
            ),
        ]
    )


def applied(db: Database, suffix: str, order: list[Snapshot], batch: int) -> Views:
    views = Views(db, suffix=suffix)
    views.drop()
    views.create()
    for n, start in enumerate(range(0, len(order), batch)):
        views.apply(order[start : start + batch], n, n + 1)
    return views


def catalog_rows(views: Views) -> list[tuple[Any, ...]]:
    with views.db.transaction(commit=False) as cursor:
        cursor.execute(
            f"SELECT kind, object_id, event_id, json FROM {views.db.table(views.names[CATALOG])}"
        )
        return sorted(
            tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cursor.fetchall()
        )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_order_and_batching_gives_the_same_rows(db: Database, seed: int) -> None:
    order = events()
    first = applied(db, "_a", order, len(order))
    shuffled = order[:]
    random.Random(seed).shuffle(shuffled)
    second = applied(db, "_b", shuffled, seed)
    assert second.rows() == first.rows()
    assert second.present_rows() == first.present_rows()
    assert catalog_rows(second) == catalog_rows(first)
    chosen = {(r[0], r[1]): r[2] for r in catalog_rows(first)}
    assert chosen == {("price", "price_pro"): "e_c3", ("product", "prod_pro"): "e_p2"}


def test_a_dispute_row_gets_its_charges_customer_whichever_came_first(db: Database) -> None:
    order = events()
    disputes_first = applied(db, "_c", sorted(order, key=lambda s: s.kind != "dispute"), 1)
    rows = [r for r in disputes_first.rows().snapshots if r[0] == "dispute"]
    assert {r[2] for r in rows} == {"cus_1"}
    inputs = disputes_first.load_inputs("u_1")
    found = [s for s in inputs.snapshots if s.kind == "dispute"]
    assert len(found) == 2 and all(s.state.customer_id == "cus_1" for s in found)
    assert disputes_first.customers_of_charges(["ch_1", "ch_9"]) == {"cus_1"}
