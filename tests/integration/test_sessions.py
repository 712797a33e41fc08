"""POST /v1/checkout-sessions and /v1/portal-sessions against the HTTP-level fake Stripe.

Customers live in localstripe (behind the fake's proxy); Checkout, portal and Prices are
answered by the fake, which records exactly what the official SDK sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from billing_ledger.bootstrap import Deps
from billing_ledger.http.stripe_client import customer_idempotency_key
from billing_ledger.ledger.own_events import link_event_id
from tests.support.app import client_for, settings_for
from tests.support.databases import sqlite_url
from tests.support.fake_stripe import (
    API_ERROR,
    API_KEY,
    CARD_DECLINED,
    FakeStripe,
    stripe_error,
)
from tests.support.localstripe import stripe_client
from tests.support.server import free_port
from tests.support.signing import event_body, sign

APP_URL = "https://shop.example.test"
CHECKOUT = "/v1/checkout-sessions"
PORTAL = "/v1/portal-sessions"


@pytest.fixture
def app(fake_stripe: FakeStripe, database_url: str) -> Iterator[tuple[TestClient, Deps]]:
    """The real app on SQLite and on PostgreSQL, its Stripe base pointed at the fake."""
    settings = settings_for(
        database_url,
        stripe_api_key=API_KEY,
        stripe_api_base=fake_stripe.url,
        app_url=APP_URL,
    )
    with client_for(settings) as pair:
        yield pair


def new_user() -> str:
    """A user id no other test uses (localstripe lives for the whole session)."""
    return f"u_{uuid.uuid4().hex[:10]}"


def customers_of(localstripe: str, user_id: str) -> list[str]:
    """The ids of localstripe's customers tagged with the user."""
    listed = stripe_client(localstripe).v1.customers.list({"limit": 100}).auto_paging_iter()
    tagged = (c.to_dict() for c in listed)
    return [c["id"] for c in tagged if c["metadata"].get("app_user_id") == user_id]


def checkout(
    client: TestClient, user_id: str, price: str = "price_pro", **more: object
) -> httpx.Response:
    """POST /v1/checkout-sessions."""
    return client.post(CHECKOUT, json={"user_id": user_id, "price": price, **more})


# -- checkout session creation ----------------------------------------------------------


def test_checkout_session_creation_sends_subscription_mode_with_the_user_everywhere(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    user = new_user()
    response = checkout(client, user, quantity=2)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "url"} and body["id"].startswith("cs_")
    assert body["url"] == f"{fake_stripe.url}/c/pay/{body['id']}"
    (sent,) = fake_stripe.seen("POST", "/v1/checkout/sessions")
    assert sent.params == {
        "mode": "subscription",
        "customer": fake_stripe.state.sessions[body["id"]]["customer"],
        "client_reference_id": user,
        "line_items[0][price]": "price_pro",
        "line_items[0][quantity]": "2",
        "subscription_data[metadata][app_user_id]": user,
        "metadata[app_user_id]": user,
        "metadata[price]": "price_pro",
        "success_url": f"{APP_URL}/billing?success=true&session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{APP_URL}/pricing?canceled=true",
    }
    assert sent.params["customer"].startswith("cus_")
    assert sent.headers["idempotency-key"].startswith("ledger-checkout-")


def test_checkout_session_creation_resolves_a_lookup_key_through_the_prices_api(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    response = checkout(client, new_user(), price="pro_monthly")
    assert response.status_code == 201
    (listed,) = fake_stripe.seen("GET", "/v1/prices")
    assert listed.params["lookup_keys[0]"] == "pro_monthly"
    (sent,) = fake_stripe.seen("POST", "/v1/checkout/sessions")
    assert sent.params["line_items[0][price]"] == "price_pro"


def test_checkout_session_creation_defaults_the_quantity_to_one(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    assert checkout(client, new_user()).status_code == 201
    (sent,) = fake_stripe.seen("POST", "/v1/checkout/sessions")
    assert sent.params["line_items[0][quantity]"] == "1"


def test_checkout_session_creation_grants_no_access_by_itself(
    app: tuple[TestClient, Deps],
) -> None:
    client, deps = app
    user = new_user()
    assert checkout(client, user).status_code == 201
    deps.runner.wait_for(deps.store.head(), 5)
    entitlements = client.get(f"/v1/users/{user}/entitlements").json()
    assert entitlements["features"] == ["core"]
    assert entitlements["subscriptions"] == []
    assert len(entitlements["customer_ids"]) == 1  # linked, but nothing bought yet


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"price": "price_pro"}, "user_id"),
        ({"user_id": "", "price": "price_pro"}, "user_id"),
        ({"user_id": 7, "price": "price_pro"}, "user_id"),
        ({"user_id": "u" * 201, "price": "price_pro"}, "user_id"),
        ({"user_id": "u\n1", "price": "price_pro"}, "user_id"),
        ({"user_id": "u_1"}, "price"),
        ({"user_id": "u_1", "price": "price_pro", "quantity": 0}, "quantity"),
        ({"user_id": "u_1", "price": "price_pro", "quantity": "2"}, "quantity"),
        ({"user_id": "u_1", "price": "price_pro", "quantity": True}, "quantity"),
    ],
)
def test_checkout_session_creation_rejects_an_invalid_body_with_a_clear_code(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe, body: dict[str, object], problem: str
) -> None:
    client, _ = app
    response = client.post(CHECKOUT, json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert problem in response.json()["message"]
    assert fake_stripe.state.requests == []  # nothing reached Stripe


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"u_1"'])
def test_checkout_session_creation_rejects_a_body_that_is_not_a_json_object(
    app: tuple[TestClient, Deps], raw: bytes
) -> None:
    client, _ = app
    response = client.post(CHECKOUT, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_checkout_session_creation_without_an_api_key_is_not_configured(tmp_path: Path) -> None:
    with client_for(settings_for(sqlite_url(tmp_path))) as (client, _):
        response = checkout(client, "u_1")
        portal = client.post(PORTAL, json={"user_id": "u_1", "return_url": APP_URL})
    assert (response.status_code, response.json()["error"]) == (503, "not_configured")
    assert (portal.status_code, portal.json()["error"]) == (503, "not_configured")


def test_checkout_session_creation_needs_the_bearer_token_when_one_is_set(
    fake_stripe: FakeStripe, tmp_path: Path
) -> None:
    settings = settings_for(
        sqlite_url(tmp_path),
        stripe_api_key=API_KEY,
        stripe_api_base=fake_stripe.url,
        api_token="s3cret",
    )
    with client_for(settings) as (client, _):
        refused = checkout(client, new_user())
        allowed = client.post(
            CHECKOUT,
            json={"user_id": new_user(), "price": "price_pro"},
            headers={"authorization": "Bearer s3cret"},
        )
    assert refused.status_code == 401
    assert allowed.status_code == 201


# -- customer mapping -------------------------------------------------------------------


def test_customer_mapping_creates_one_tagged_customer_and_records_the_link_before_answering(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe, localstripe_url: str
) -> None:
    client, deps = app
    user = new_user()
    assert checkout(client, user).status_code == 201
    (customer,) = customers_of(localstripe_url, user)
    (created,) = fake_stripe.seen("POST", "/v1/customers")
    assert created.params == {"metadata[app_user_id]": user}
    assert created.headers["idempotency-key"] == customer_idempotency_key(user)
    # The link is in the store the moment the answer is out: no waiting for projections.
    stored = deps.store.get(link_event_id(user, customer, livemode=False))
    assert stored is not None and stored.source == "ledger"
    assert stored.type == "ledger.customer_link"
    assert stored.payload()["data"]["object"] == {
        "object": "ledger.customer_link",
        "user_id": user,
        "customer": customer,
    }
    assert stored.payload()["livemode"] is False


def test_customer_mapping_reuses_the_customer_on_the_next_checkout(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe, localstripe_url: str
) -> None:
    client, deps = app
    user = new_user()
    first = checkout(client, user)
    deps.runner.wait_for(deps.store.head(), 5)
    second = checkout(client, user, price="basic_monthly")
    assert first.status_code == second.status_code == 201
    assert len(customers_of(localstripe_url, user)) == 1
    assert len(fake_stripe.seen("POST", "/v1/customers")) == 1
    sessions = [s.params["customer"] for s in fake_stripe.seen("POST", "/v1/checkout/sessions")]
    assert sessions[0] == sessions[1]
    links = [e for e in deps.store.read(0) if e.type == "ledger.customer_link"]
    assert len(links) == 1


def test_customer_mapping_prefers_the_ledgers_own_link_over_any_stripe_lookup(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe, localstripe_url: str
) -> None:
    client, deps = app
    user = new_user()
    customer = stripe_client(localstripe_url).v1.customers.create({}).id  # untagged
    completed = {
        "id": f"cs_{uuid.uuid4().hex[:8]}",
        "object": "checkout.session",
        "mode": "subscription",
        "status": "complete",
        "payment_status": "paid",
        "client_reference_id": user,
        "customer": customer,
        "subscription": None,
    }
    body = event_body(f"evt_{uuid.uuid4().hex[:8]}", "checkout.session.completed", obj=completed)
    stored = client.post("/webhooks/stripe", content=body, headers={"stripe-signature": sign(body)})
    assert deps.runner.wait_for(stored.json()["position"], 5)
    assert checkout(client, user).status_code == 201
    (sent,) = fake_stripe.seen("POST", "/v1/checkout/sessions")
    assert sent.params["customer"] == customer
    assert fake_stripe.seen("GET", "/v1/customers/search") == []
    assert fake_stripe.seen("POST", "/v1/customers") == []


def test_customer_mapping_finds_an_existing_customer_with_the_search_api(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe, localstripe_url: str
) -> None:
    client, deps = app
    user = new_user()
    existing = (
        stripe_client(localstripe_url).v1.customers.create({"metadata": {"app_user_id": user}}).id
    )
    fake_stripe.enable_search()
    assert checkout(client, user).status_code == 201
    (searched,) = fake_stripe.seen("GET", "/v1/customers/search")
    assert searched.params["query"] == f"metadata['app_user_id']:'{user}'"
    assert fake_stripe.seen("POST", "/v1/customers") == []
    assert fake_stripe.seen("POST", "/v1/checkout/sessions")[0].params["customer"] == existing
    assert deps.store.get(link_event_id(user, existing, livemode=False)) is not None


def test_customer_mapping_lists_customers_when_the_search_api_is_missing(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe, localstripe_url: str
) -> None:
    client, _ = app
    user = new_user()
    existing = (
        stripe_client(localstripe_url).v1.customers.create({"metadata": {"app_user_id": user}}).id
    )
    assert checkout(client, user).status_code == 201
    assert fake_stripe.seen("GET", "/v1/customers")  # the listing fallback ran
    assert fake_stripe.seen("POST", "/v1/customers") == []
    assert fake_stripe.seen("POST", "/v1/checkout/sessions")[0].params["customer"] == existing


def test_customer_mapping_survives_a_lagging_search_index_through_the_idempotency_key(
    fake_stripe: FakeStripe, localstripe_url: str, tmp_path: Path
) -> None:
    # Two ledgers that share nothing (think: a retry after the first answer was lost) and a
    # search index that has not caught up: the second creation replays the first.
    fake_stripe.enable_search(lagging=True)
    user = new_user()
    seen_customers = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        settings = settings_for(
            sqlite_url(tmp_path / name),
            stripe_api_key=API_KEY,
            stripe_api_base=fake_stripe.url,
        )
        with client_for(settings) as (client, _):
            assert checkout(client, user).status_code == 201
        seen_customers.append(
            fake_stripe.seen("POST", "/v1/checkout/sessions")[-1].params["customer"]
        )
    keys = {r.headers["idempotency-key"] for r in fake_stripe.seen("POST", "/v1/customers")}
    assert keys == {customer_idempotency_key(user)}
    assert seen_customers[0] == seen_customers[1]
    assert customers_of(localstripe_url, user) == [seen_customers[0]]


# -- billing portal session creation ----------------------------------------------------


def test_billing_portal_session_creation_for_a_user_with_a_customer(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, deps = app
    user = new_user()
    assert checkout(client, user).status_code == 201
    deps.runner.wait_for(deps.store.head(), 5)
    response = client.post(PORTAL, json={"user_id": user, "return_url": f"{APP_URL}/account"})
    assert response.status_code == 201
    assert set(response.json()) == {"url"}
    assert response.json()["url"].startswith(f"{fake_stripe.url}/p/session/bps_")
    (sent,) = fake_stripe.seen("POST", "/v1/billing_portal/sessions")
    customer = fake_stripe.seen("POST", "/v1/checkout/sessions")[0].params["customer"]
    assert sent.params == {"customer": customer, "return_url": f"{APP_URL}/account"}


def test_billing_portal_session_creation_defaults_the_return_url_to_the_billing_page(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    user = new_user()
    assert checkout(client, user).status_code == 201
    assert client.post(PORTAL, json={"user_id": user}).status_code == 201
    (sent,) = fake_stripe.seen("POST", "/v1/billing_portal/sessions")
    assert sent.params["return_url"] == f"{APP_URL}/billing"


def test_billing_portal_session_creation_for_a_user_without_a_customer_is_unknown_customer(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    response = client.post(PORTAL, json={"user_id": new_user(), "return_url": APP_URL})
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_customer"
    assert fake_stripe.seen("POST", "/v1/customers") == []  # the portal never creates one


@pytest.mark.parametrize("url", ["", "ftp://x/y", "/billing", "javascript:alert(1)", 5])
def test_billing_portal_session_creation_rejects_a_return_url_that_is_not_absolute_http(
    app: tuple[TestClient, Deps], url: object
) -> None:
    client, _ = app
    response = client.post(PORTAL, json={"user_id": "u_1", "return_url": url})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


# -- user-facing billing error copy -----------------------------------------------------


def _refused(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] == code
    assert "Traceback" not in response.text and "stripe" not in body["message"].lower()
    message: str = body["message"]
    return message


def test_user_facing_billing_error_copy_for_a_declined_card(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    fake_stripe.fail_next("POST /v1/checkout/sessions", CARD_DECLINED)
    message = _refused(checkout(client, new_user()), 402, "card_declined")
    assert message == "Your card was declined. Nothing was charged; please try another card."


def test_user_facing_billing_error_copy_for_an_unknown_price(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    assert "price_nope" in _refused(
        checkout(client, new_user(), price="price_nope"), 400, "unknown_price"
    )
    assert _refused(checkout(client, new_user(), price="gold_yearly"), 400, "unknown_price")
    assert fake_stripe.seen("POST", "/v1/customers") == []  # no customer for a bad price


def test_user_facing_billing_error_copy_for_prices_that_cannot_start_a_subscription(
    app: tuple[TestClient, Deps],
) -> None:
    client, _ = app
    one_time = _refused(checkout(client, new_user(), price="price_setup"), 400, "invalid_price")
    retired = _refused(checkout(client, new_user(), price="price_retired"), 400, "invalid_price")
    assert "not a subscription price" in one_time
    assert "no longer for sale" in retired


def test_user_facing_billing_error_copy_when_stripe_fails_on_its_side(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    fake_stripe.fail_next("POST /v1/checkout/sessions", API_ERROR)
    response = checkout(client, new_user())
    message = _refused(response, 503, "stripe_unavailable")
    assert "Nothing was charged" in message
    assert response.headers["retry-after"] == "5"


def test_user_facing_billing_error_copy_when_stripe_cannot_be_reached(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = settings_for(sqlite_url(tmp_path), stripe_api_key=API_KEY, stripe_api_base=closed)
    with client_for(settings) as (client, _):
        message = _refused(checkout(client, "u_1"), 503, "stripe_unavailable")
    assert message.startswith("We could not reach our payment provider.")


def test_user_facing_billing_error_copy_for_any_other_stripe_error(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    fake_stripe.fail_next(
        "POST /v1/checkout/sessions",
        stripe_error(400, "invalid_request_error", "This account cannot use Checkout."),
    )
    message = _refused(checkout(client, new_user()), 502, "stripe_error")
    assert message == "Our payment provider could not complete the request. Nothing was charged."


def test_user_facing_billing_error_copy_for_a_rejected_api_key(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    fake_stripe.fail_next(
        "GET /v1/prices/price_pro",
        stripe_error(401, "invalid_request_error", "Invalid API Key provided: sk_test_***"),
    )
    message = _refused(checkout(client, new_user()), 502, "stripe_error")
    assert "sk_test" not in message
