"""GET /v1/catalog through the real app on SQLite and PostgreSQL: folded from signed events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from billing_ledger.projections.views import CATALOG
from tests.support.app import client_for, settings_for
from tests.support.ledger import Ledger
from tests.unit.builders import DAY, M, T, checkout_session, event, subscription
from tests.unit.projections.test_catalog import price, product

Json = dict[str, Any]
PRICE_FIELDS = {
    "id",
    "product",
    "unit_amount",
    "currency",
    "type",
    "interval",
    "lookup_key",
    "active",
}


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    with client_for(settings_for(database_url, api_token="t0ken")) as (client, deps):
        client.headers["authorization"] = "Bearer t0ken"
        yield Ledger(client, deps)


def publish(ledger: Ledger) -> None:
    ledger.deliver(
        event("price.created", price(), id="evt_c1", created=T),  # before its product
        event("product.created", product(), id="evt_p1", created=T),
        event("price.created", price("price_old", lookup_key=None), id="evt_c2", created=T),
        event(
            "price.updated",
            price("price_old", lookup_key=None, active=False),
            id="evt_c3",
            created=T + 1,
            previous={"active": True},
        ),
    )


def pro(ledger: Ledger) -> Json:
    plans = ledger.get("/v1/catalog")["plans"]
    found: Json = next(p for p in plans if p["id"] == "pro")
    return found


def test_the_catalog_has_exactly_the_contract_fields(ledger: Ledger) -> None:
    publish(ledger)
    body = ledger.get("/v1/catalog")
    assert set(body) == {"plans"}
    assert [p["id"] for p in body["plans"]] == ["free", "basic", "pro", "addon"]
    for plan in body["plans"]:
        assert set(plan) == {"id", "name", "description", "features", "prices"}
        assert all(set(p) == PRICE_FIELDS for p in plan["prices"])
    assert pro(ledger)["prices"][0] == {
        "id": "price_pro",
        "product": "prod_pro",
        "unit_amount": 1900,
        "currency": "eur",
        "type": "recurring",
        "interval": "month",
        "lookup_key": "pro_monthly",
        "active": True,
    }


def test_an_archived_price_is_listed_inactive(ledger: Ledger) -> None:
    publish(ledger)
    prices = {p["id"]: p["active"] for p in pro(ledger)["prices"]}
    assert prices == {"price_pro": True, "price_old": False}


def test_a_later_price_event_changes_the_catalog_a_late_older_one_does_not(ledger: Ledger) -> None:
    publish(ledger)
    ledger.deliver(event("price.updated", price(active=False), id="evt_c4", created=T + 9))
    ledger.deliver(event("price.updated", price(), id="evt_c5", created=T + 2))  # older
    assert {p["id"]: p["active"] for p in pro(ledger)["prices"]}["price_pro"] is False


def test_the_catalog_needs_the_token(ledger: Ledger) -> None:
    response = ledger.client.get("/v1/catalog", headers={"authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_a_bad_min_position_is_refused(ledger: Ledger) -> None:
    response = ledger.client.get("/v1/catalog", params={"min_position": "x"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_parameter"


def test_an_item_with_an_unexpanded_price_grants_through_the_catalog(ledger: Ledger) -> None:
    sub = subscription(prices=("price_new",))
    sub["items"]["data"][0]["price"] = "price_new"  # an id alone: no lookup key, no product
    ledger.deliver(
        event("checkout.session.completed", checkout_session(), id="evt_1", created=T),
        event("customer.subscription.created", sub, id="evt_2", created=T),
    )
    assert ledger.features(at=T + DAY) == ["core"]
    ledger.deliver(
        event(
            "price.created",
            price("price_new", lookup_key="pro_monthly", product="prod_x"),
            id="evt_c9",
            created=T + 3,
        ),
    )
    assert ledger.features(at=T + DAY) == ["core", "pro"]
    assert ledger.features(at=T + M - DAY) == ["core", "pro"]


def test_a_rebuild_gives_the_same_catalog(ledger: Ledger) -> None:
    publish(ledger)
    before = ledger.get("/v1/catalog")
    fresh = ledger.rebuilt()
    db = ledger.deps.views.db

    def rows(table: str) -> list[tuple[Any, ...]]:
        with db.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT kind, object_id, event_id, json FROM {db.table(table)}")
            return sorted(
                tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cursor.fetchall()
            )

    assert rows(fresh.names[CATALOG]) == rows(ledger.deps.views.names[CATALOG])
    ledger.deps.views.promote(fresh)
    assert ledger.get("/v1/catalog") == before


def test_the_change_feed_matches_plans_through_the_catalog_as_the_reads_do(ledger: Ledger) -> None:
    ledger.deliver(
        event(
            "price.created",
            price("price_new", lookup_key="pro_monthly", product="prod_x"),
            id="evt_c9",
            created=T,
        )
    )
    sub = subscription(prices=("price_new",), period=(int(time.time()) - DAY, int(time.time()) + M))
    sub["items"]["data"][0]["price"] = "price_new"
    ledger.deliver(
        event("checkout.session.completed", checkout_session(), id="evt_1", created=T + 1),
        event("customer.subscription.created", sub, id="evt_2", created=T + 1),
    )
    assert ledger.features() == ["core", "pro"]
    found: list[Json] = []
    after, deadline = 0, time.monotonic() + 20
    while not found:  # long-polls: each waits up to 1 s for a change
        assert time.monotonic() < deadline, "the feed shows no change for u_1"
        page = ledger.get("/v1/changes", after=after, wait=1)
        found += [c for c in page["changes"] if c["user_id"] == "u_1"]
        after = page["next"]
    assert found[-1]["features_after"] == ["core", "pro"]
