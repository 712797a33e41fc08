"""The catalog folded from product and price events: order-independent, archives kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from billing_ledger.ledger.canonical import Item
from billing_ledger.projections import catalog
from billing_ledger.projections.plans import parse_plans
from tests.unit.builders import T, event, example_plans, snapshots

Json = dict[str, Any]


def product(id: str = "prod_pro", *, name: str = "Pro", active: bool = True) -> Json:
    return {
        "id": id,
        "object": "product",
        "active": active,
        "name": name,
        "description": "Everything in Basic, and more",
        "livemode": False,
    }


def price(
    id: str = "price_pro",
    *,
    product: str = "prod_pro",
    amount: int = 1900,
    lookup_key: str | None = "pro_monthly",
    active: bool = True,
    interval: str | None = "month",
) -> Json:
    return {
        "id": id,
        "object": "price",
        "active": active,
        "currency": "eur",
        "lookup_key": lookup_key,
        "product": product,
        "recurring": {"interval": interval, "interval_count": 1} if interval else None,
        "type": "recurring" if interval else "one_time",
        "unit_amount": amount,
        "livemode": False,
    }


def built(envelopes: list[Json]) -> catalog.Catalog:
    return catalog.build(catalog.chosen(snapshots(envelopes)), example_plans())


LIFECYCLE = [
    event("product.created", product(), id="evt_p1", created=T),
    event("price.created", price(), id="evt_c1", created=T),
    event(
        "price.created",
        price("price_pro_year", lookup_key=None, interval="year", amount=19000),
        id="evt_c2",
        created=T,
    ),
    # Archived in the same second it was created: the witness orders the two.
    event(
        "price.created",
        price("price_pro_old", lookup_key=None, amount=1500),
        id="evt_c3",
        created=T + 5,
    ),
    event(
        "price.updated",
        price("price_pro_old", lookup_key=None, amount=1500, active=False),
        id="evt_c4",
        created=T + 5,
        previous={"active": True},
    ),
    event(
        "product.updated",
        product(name="Pro plan"),
        id="evt_p2",
        created=T + 9,
        previous={"name": "Pro"},
    ),
]


def test_a_plan_lists_the_prices_that_select_it_with_the_contract_fields() -> None:
    found = built(LIFECYCLE).to_json()
    pro = next(p for p in found["plans"] if p["id"] == "pro")
    assert pro["name"] == "Pro"
    assert pro["description"] == "Everything in Basic, and more"
    assert pro["features"] == ["core", "pro"]
    assert [p["id"] for p in pro["prices"]] == ["price_pro", "price_pro_year", "price_pro_old"]
    assert pro["prices"][0] == {
        "id": "price_pro",
        "product": "prod_pro",
        "unit_amount": 1900,
        "currency": "eur",
        "type": "recurring",
        "interval": "month",
        "lookup_key": "pro_monthly",
        "active": True,
    }


def test_an_archived_price_is_kept_but_not_offered() -> None:
    pro = built(LIFECYCLE).plan("pro")
    assert pro is not None
    assert [p.id for p in pro.offered] == ["price_pro", "price_pro_year"]
    assert pro.prices[-1].active is False


def test_a_deleted_price_stays_deleted_whatever_arrives_later() -> None:
    later = event("price.updated", price(), id="evt_late", created=T + 100)
    gone = event("price.deleted", price(), id="evt_gone", created=T + 50)
    found = built([*LIFECYCLE, later, gone]).price("price_pro")
    assert found is not None and found.active is False


def test_an_archived_product_offers_none_of_its_prices() -> None:
    archived = event("product.updated", product(active=False), id="evt_p3", created=T + 20)
    pro = built([*LIFECYCLE, archived]).plan("pro")
    assert pro is not None and pro.offered == ()


@settings(max_examples=60, deadline=None)
@given(st.permutations(LIFECYCLE))
def test_any_order_of_the_same_events_gives_the_same_catalog(order: list[Json]) -> None:
    assert built(order) == built(LIFECYCLE)


def test_an_item_naming_only_its_price_matches_a_plan_by_the_catalogs_lookup_key() -> None:
    plans = parse_plans(
        {"plans": [{"id": "pro", "lookup_keys": ["pro_monthly"], "features": ["pro"]}]}
    )
    bare = Item("price_new", None, None, None, None)
    assert plans.plan_for_item(bare) is None
    found = catalog.build(
        catalog.chosen(snapshots([event("price.created", price("price_new"), id="e", created=T)])),
        plans,
    )
    matched = plans.with_catalog(found.index()).plan_for_item(bare)
    assert matched is not None and matched.id == "pro"


def test_the_plans_file_names_and_describes_a_plan() -> None:
    plans = parse_plans(
        {
            "plans": [
                {
                    "id": "lifetime",
                    "name": "Lifetime",
                    "mode": "one_time",
                    "description": "Pay once, keep Pro",
                    "prices": ["price_l"],
                    "features": ["pro"],
                }
            ]
        }
    )
    plan = catalog.build([], plans).plans[0]
    assert (plan.name, plan.description, plan.mode) == (
        "Lifetime",
        "Pay once, keep Pro",
        "one_time",
    )


def ruby_mock(name: str) -> Json:
    path = Path(__file__).parents[2] / "fixtures" / "stripe-ruby-mock" / f"{name}.json"
    envelope: Json = json.loads(path.read_text())
    return envelope


def test_stripes_price_and_product_events_of_2020_fold_into_the_catalog() -> None:
    envelopes = [ruby_mock(n) for n in ("price.created", "product.created")]
    found = catalog.build(catalog.chosen(snapshots(envelopes)), example_plans())
    price = found.price("price_000000000000000000000000")
    assert price is not None
    assert (price.unit_amount, price.currency, price.type, price.interval, price.active) == (
        1500,
        "usd",
        "recurring",
        "month",
        True,
    )
    assert found.products["prod_00000000000000"].name == "myproduct"


def test_a_deleted_product_takes_its_prices_off_sale() -> None:
    envelopes = [ruby_mock(n) for n in ("price.created", "product.created", "product.deleted")]
    found = catalog.build(catalog.chosen(snapshots(envelopes)), example_plans())
    price = found.price("price_000000000000000000000000")
    assert price is not None and price.active is False
    assert found.products["prod_00000000000000"].deleted is True
