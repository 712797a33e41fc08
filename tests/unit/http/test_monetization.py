"""The pure parts of the monetization flows: link events, the customer choice, page copy."""

from __future__ import annotations

import orjson
import pytest

from billing_ledger.http.billing import (
    CheckoutRequest,
    checkout_params,
    link_event,
    link_event_id,
    preferred_customer,
)
from billing_ledger.http.pages.render import PriceTag, day, money
from billing_ledger.http.signin import safe_next, valid_user_id
from billing_ledger.http.stripe_client import customer_idempotency_key, is_live_key, search_query
from billing_ledger.ledger.canonical import Link
from billing_ledger.ledger.normalise import normalise
from billing_ledger.ledger.records import Recorded
from tests.unit.builders import DAY, T, customer, event, inputs, link, subscription


def test_customer_mapping_link_event_normalises_to_the_users_link() -> None:
    incoming = link_event("u_1", "cus_1", livemode=False, now=T + 0.5)
    stored = Recorded(
        1,
        1,
        incoming.event_id,
        incoming.type,
        incoming.created,
        incoming.livemode,
        None,
        incoming.received_at,
        incoming.source,
        False,
        incoming.body,
    )
    snapshot = normalise(stored)
    assert snapshot is not None and snapshot.state == Link(user_id="u_1", customer_id="cus_1")
    assert snapshot.created == T and incoming.source == "ledger"
    assert orjson.loads(incoming.body)["data"]["object"] == {
        "object": "ledger.customer_link",
        "user_id": "u_1",
        "customer": "cus_1",
    }


def test_customer_mapping_link_ids_are_stable_per_user_customer_and_mode() -> None:
    same = link_event_id("u_1", "cus_1", False)
    assert same == link_event_id("u_1", "cus_1", False) and same.startswith("lgr_link_")
    others = {
        link_event_id("u_2", "cus_1", False),
        link_event_id("u_1", "cus_2", False),
        link_event_id("u_1", "cus_1", True),
    }
    assert same not in others and len(others) == 3


def test_customer_mapping_idempotency_key_depends_on_the_user_alone() -> None:
    assert customer_idempotency_key("u_1") == customer_idempotency_key("u_1")
    assert customer_idempotency_key("u_1") != customer_idempotency_key("u_2")
    assert "u_1" not in customer_idempotency_key("u_1")  # no user id in Stripe's logs


def test_customer_mapping_prefers_a_customer_with_a_live_subscription() -> None:
    user = inputs(
        "u_1",
        [
            link(customer="cus_old", id="lgr_a", created=T),
            event(
                "customer.subscription.created",
                subscription(customer="cus_old", period=(T, T + 30 * DAY)),
                id="evt_s",
                created=T + 1,
            ),
            link(customer="cus_new", id="lgr_b", created=T + 5),
        ],
    )
    assert preferred_customer(user, T + 10) == "cus_old"


def test_customer_mapping_takes_the_latest_link_and_skips_deleted_customers() -> None:
    user = inputs(
        "u_1",
        [
            link(customer="cus_a", id="lgr_a", created=T),
            link(customer="cus_b", id="lgr_b", created=T + 5),
            event(
                "customer.deleted", customer(id="cus_b", deleted=True), id="evt_d", created=T + 6
            ),
        ],
    )
    assert preferred_customer(user, T + 5) == "cus_b"
    assert preferred_customer(user, T + 10) == "cus_a"
    assert preferred_customer(inputs("u_2", []), T) is None


def test_checkout_session_creation_parameters_carry_the_user_three_ways() -> None:
    params = checkout_params(
        "https://shop.test", CheckoutRequest("u_1", "pro_monthly", 3), "price_pro", "cus_1"
    )
    assert params["client_reference_id"] == "u_1"
    assert params["subscription_data"] == {"metadata": {"app_user_id": "u_1"}}
    assert params["line_items"] == [{"price": "price_pro", "quantity": 3}]
    assert params["success_url"].endswith("/billing?success=true&session_id={CHECKOUT_SESSION_ID}")


@pytest.mark.parametrize(
    ("user", "query"),
    [
        ("u_1", "metadata['app_user_id']:'u_1'"),
        ("o'brien", "metadata['app_user_id']:'o\\'brien'"),
        ("a\\b", "metadata['app_user_id']:'a\\\\b'"),
    ],
)
def test_customer_mapping_search_query_escapes_quotes(user: str, query: str) -> None:
    assert search_query(user) == query


def test_checkout_session_creation_livemode_follows_the_api_key() -> None:
    assert is_live_key("sk_live_x") and is_live_key("rk_live_x")
    assert not is_live_key("sk_test_x") and not is_live_key("sk_fake")


def test_billing_page_state_formats_amounts_dates_and_intervals() -> None:
    assert money(2000, "usd") == "$20.00" and money(123456, "eur") == "€1,234.56"
    assert money(500, "jpy") == "¥500" and money(None, "usd") == "—"
    assert money(1900, "eur", "de_DE") == "19,00\xa0€"  # formatted for the locale (babel)
    assert day(T) == "1 Jan 2026" and day(None) == "—"
    price = PriceTag("price_1", 900, "usd", "recurring", "month", 1)
    assert price.text("en") == "$9.00 / month"
    quarterly = PriceTag("price_1", 900, "usd", "recurring", "month", 3)
    assert quarterly.text("en") == "$9.00 every 3 months"
    assert PriceTag("price_2", 19900, "eur", "one_time", None).text("en") == "€199.00 once"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/pricing", "/pricing"),
        ("/billing?success=true", "/billing?success=true"),
        ("//evil.test", "/billing"),
        ("/\\evil.test", "/billing"),
        ("https://evil.test", "/billing"),
        ("", "/billing"),
        (None, "/billing"),
        ("/a\nb", "/billing"),
    ],
)
def test_sign_in_returns_only_to_local_paths(raw: object, expected: str) -> None:
    assert safe_next(raw) == expected


def test_sign_in_takes_user_ids_the_api_would_take() -> None:
    assert valid_user_id("  u_1 ") == "u_1"
    assert valid_user_id("") is None and valid_user_id("x" * 201) is None
    assert valid_user_id("u\t1") is None and valid_user_id(7) is None
