"""Checkout in payment mode for one-time plans, and the plans' or settings' Checkout options,
against the HTTP-level fake Stripe (customers in localstripe), on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from billing_ledger.bootstrap import Deps
from billing_ledger.ledger.own_events import sale_event
from tests.support.app import client_for, settings_for
from tests.support.fake_stripe import API_KEY, FakeStripe
from tests.support.ledger import Ledger
from tests.unit.builders import LIFETIME, T, charge, event
from tests.unit.projections.test_catalog import price

APP_URL = "https://shop.example.test"
CHECKOUT = "/v1/checkout-sessions"


def plans_text(pro_options: str = "") -> str:
    return f"""
[[plans]]
id = "free"
default = true
features = ["core"]

[[plans]]
id = "pro"
prices = ["price_pro"]
lookup_keys = ["pro_monthly"]
features = ["core", "pro"]
{pro_options}

[[plans]]
id = "team"
prices = ["price_addon"]
features = ["export"]
seats = true
max_seats = 10
allow_promotion_codes = false
{LIFETIME}"""


Served = Callable[..., AbstractContextManager[tuple[TestClient, Deps]]]


@pytest.fixture
def served(fake_stripe: FakeStripe, database_url: str, tmp_path: Path) -> Served:
    """The real app on the test's database, its Stripe the fake, with these plans."""

    def serve(
        pro_options: str = "", **settings: object
    ) -> AbstractContextManager[tuple[TestClient, Deps]]:
        path = tmp_path / f"plans_{uuid.uuid4().hex[:6]}.toml"
        path.write_text(plans_text(pro_options))
        config = settings_for(
            database_url,
            stripe_api_key=API_KEY,
            stripe_api_base=fake_stripe.url,
            app_url=APP_URL,
            plans_path=path,
            **settings,
        )
        return client_for(config)

    return serve


@pytest.fixture
def app(served: Served) -> Iterator[tuple[TestClient, Deps]]:
    with served() as pair:
        yield pair


def new_user() -> str:
    return f"u_{uuid.uuid4().hex[:10]}"


def checkout(client: TestClient, user: str, reference: str, **more: object) -> dict[str, str]:
    response = client.post(CHECKOUT, json={"user_id": user, "price": reference, **more})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


def sent(fake_stripe: FakeStripe) -> dict[str, str]:
    (request,) = fake_stripe.seen("POST", "/v1/checkout/sessions")
    return request.params


def test_a_one_time_plans_price_opens_checkout_in_payment_mode(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    user = new_user()
    checkout(client, user, "price_lifetime")
    params = sent(fake_stripe)
    assert params["mode"] == "payment"
    assert params["line_items[0][price]"] == "price_lifetime"
    assert params["metadata[price]"] == "price_lifetime"
    assert params["metadata[app_user_id]"] == user
    assert params["payment_intent_data[metadata][app_user_id]"] == user
    assert not any(k.startswith("subscription_data") for k in params)


def test_the_service_records_what_each_session_it_creates_sells(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, deps = app
    user = new_user()
    session = checkout(client, user, "price_lifetime")
    customer = fake_stripe.state.sessions[session["id"]]["customer"]
    expected = sale_event(session["id"], user, customer, "price_lifetime", "payment", False, 0)
    stored = deps.store.get(expected.event_id)
    assert stored is not None and stored.source == "ledger"
    assert stored.payload()["data"]["object"] == {
        "object": "ledger.checkout_sale",
        "session": session["id"],
        "customer": customer,
        "user_id": user,
        "prices": ["price_lifetime"],
        "mode": "payment",
    }


def test_the_session_never_grants_by_itself_its_paid_completion_does(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, deps = app
    user = new_user()
    session = checkout(client, user, "price_lifetime")
    ledger = Ledger(client, deps)
    ledger.last = deps.store.head()  # the sale and the customer link
    assert ledger.features(user) == ["core"]
    paid = httpx.post(f"{fake_stripe.url}/c/pay/{session['id']}/complete")
    assert paid.status_code == 303
    completed = fake_stripe.state.sessions[session["id"]]
    assert completed["payment_status"] == "paid" and completed["subscription"] is None
    ledger.deliver(event("checkout.session.completed", completed, id=f"evt_{user}", created=T))
    assert ledger.features(user) == ["core", "pro"]
    assert ledger.entitlements(user)["purchases"] == [
        {
            "id": session["id"],
            "price_ids": ["price_lifetime"],
            "status": "paid",
            "grants_access": True,
        }
    ]
    refunded = charge(
        customer=completed["customer"],
        payment_intent=completed["payment_intent"],
        amount_refunded=9900,
    )
    ledger.deliver(event("charge.refunded", refunded, id=f"evt_r_{user}", created=T + 60))
    assert ledger.features(user) == ["core"]


def test_a_one_time_price_no_one_time_plan_sells_is_refused(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    response = client.post(CHECKOUT, json={"user_id": new_user(), "price": "price_setup"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_price"
    assert fake_stripe.seen("POST", "/v1/checkout/sessions") == []


def test_a_plans_promotion_codes_and_automatic_tax_reach_checkout(
    served: Served, fake_stripe: FakeStripe
) -> None:
    with served("allow_promotion_codes = true\nautomatic_tax = true\n") as (client, _):
        checkout(client, new_user(), "price_pro")
    params = sent(fake_stripe)
    assert params["allow_promotion_codes"] == "true"
    assert params["automatic_tax[enabled]"] == "true"
    assert params["customer_update[address]"] == "auto"  # Stripe Tax needs the address
    assert params["mode"] == "subscription"


def test_without_options_checkout_gets_neither(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    checkout(client, new_user(), "price_pro")
    params = sent(fake_stripe)
    assert "allow_promotion_codes" not in params and "automatic_tax[enabled]" not in params


def test_the_settings_defaults_apply_where_a_plan_says_nothing(
    served: Served, fake_stripe: FakeStripe
) -> None:
    with served(checkout_promotion_codes=True, checkout_automatic_tax=True) as (client, _):
        checkout(client, new_user(), "price_pro")
        checkout(client, new_user(), "price_addon", quantity=2)
    pro, team = (r.params for r in fake_stripe.seen("POST", "/v1/checkout/sessions"))
    assert pro["allow_promotion_codes"] == "true" and pro["automatic_tax[enabled]"] == "true"
    assert "allow_promotion_codes" not in team  # the plan's own false wins
    assert team["automatic_tax[enabled]"] == "true"


def test_a_seat_plan_lets_the_buyer_choose_the_quantity_within_its_bound(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    checkout(client, new_user(), "price_addon", quantity=3)
    params = sent(fake_stripe)
    assert params["line_items[0][quantity]"] == "3"
    assert params["line_items[0][adjustable_quantity][enabled]"] == "true"
    assert params["line_items[0][adjustable_quantity][minimum]"] == "1"
    assert params["line_items[0][adjustable_quantity][maximum]"] == "10"
    response = client.post(
        CHECKOUT, json={"user_id": new_user(), "price": "price_addon", "quantity": 11}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_quantity",
        "message": "At most 10 seats can be bought at once.",
    }
    assert len(fake_stripe.seen("POST", "/v1/checkout/sessions")) == 1


def test_a_price_the_catalog_knows_is_resolved_without_asking_stripe(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, deps = app
    ledger = Ledger(client, deps)
    ledger.deliver(
        event("price.created", price("price_pro", product="prod_pro"), id="evt_p", created=T)
    )
    ledger.get("/v1/catalog")  # the projections have the price
    checkout(client, new_user(), "pro_monthly")
    assert fake_stripe.seen("GET", "/v1/prices") == []
    assert sent(fake_stripe)["line_items[0][price]"] == "price_pro"
