"""The card on file, folded from payment-method, customer and subscription events (pure)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from billing_ledger.ledger.records import Recorded
from billing_ledger.projections.cards import (
    Card,
    CardFact,
    card_facts,
    card_on_file,
    fact_from_json,
)
from tests.unit.builders import event

Json = dict[str, Any]


def recorded(type_: str, obj: Json, created: int, previous: Json | None = None) -> Recorded:
    """A stored event around `obj`."""
    body = event(type_, obj, id=f"evt_{type_}_{created}", created=created, previous=previous)
    return Recorded(
        position=created,
        version=1,
        event_id=str(body["id"]),
        type=type_,
        created=created,
        livemode=False,
        api_version=None,
        received_at=0.0,
        source="webhook",
        thin=False,
        body=orjson.dumps(body),
    )


def card(pm: str, last4: str, customer: str | None = "cus_1", brand: str = "visa") -> Json:
    """A card payment method."""
    details = {"brand": brand, "last4": last4, "exp_month": 4, "exp_year": 2031, "funding": "x"}
    return {"id": pm, "object": "payment_method", "type": "card", "customer": customer,
            "card": details}  # fmt: skip


def customer(default: Any) -> Json:
    """cus_1 with an invoice-settings default payment method."""
    return {
        "id": "cus_1",
        "object": "customer",
        "invoice_settings": {"default_payment_method": default},
    }


def fold(*events: Recorded) -> Card | None:
    """The card of cus_1 after these events."""
    facts: list[CardFact] = [f for e in events for f in card_facts(e)]
    return card_on_file(facts, ["cus_1"])


def test_an_attached_card_is_the_card_on_file_with_brand_last_four_and_expiry() -> None:
    found = fold(recorded("payment_method.attached", card("pm_1", "4242"), 10))
    assert found == Card("Visa", "4242", 4, 2031)
    assert found.label == "Visa ending in 4242" and found.expires == "04/2031"


def test_the_customers_default_payment_method_wins_over_a_card_attached_later() -> None:
    found = fold(
        recorded("payment_method.attached", card("pm_1", "4242"), 10),
        recorded("customer.updated", customer("pm_1"), 11),
        recorded("payment_method.attached", card("pm_2", "0005", brand="mastercard"), 12),
    )
    assert found is not None and found.last4 == "4242"


def test_a_subscriptions_default_payment_method_is_used_when_the_customer_names_none() -> None:
    sub = {"id": "sub_1", "object": "subscription", "customer": "cus_1",
           "default_payment_method": "pm_1"}  # fmt: skip
    found = fold(
        recorded("payment_method.attached", card("pm_1", "4242"), 10),
        recorded("payment_method.attached", card("pm_2", "0005", brand="amex"), 11),
        recorded("customer.subscription.created", sub, 12),
    )
    assert found is not None and found.last4 == "4242"


def test_a_detached_card_is_no_longer_on_file() -> None:
    detached = recorded(
        "payment_method.detached", card("pm_1", "4242", customer=None), 12, {"customer": "cus_1"}
    )
    found = fold(
        recorded("payment_method.attached", card("pm_1", "4242"), 10),
        recorded("customer.updated", customer("pm_1"), 11),
        detached,
    )
    assert found is None


def test_an_expanded_default_payment_method_carries_its_own_details() -> None:
    found = fold(recorded("customer.updated", customer(card("pm_9", "1881")), 10))
    assert found == Card("Visa", "1881", 4, 2031)


def test_a_setup_intent_that_saved_a_card_and_an_updated_expiry() -> None:
    setup = {
        "id": "seti_1",
        "object": "setup_intent",
        "customer": "cus_1",
        "payment_method": "pm_1",
    }
    renewed = card("pm_1", "4242") | {"card": {"brand": "visa", "last4": "4242", "exp_month": 9,
                                               "exp_year": 2035}}  # fmt: skip
    found = fold(
        recorded("setup_intent.succeeded", setup, 10),
        recorded("payment_method.attached", card("pm_1", "4242"), 11),
        recorded("payment_method.automatically_updated", renewed, 12),
    )
    assert found is not None and found.expires == "09/2035"


def test_other_customers_cards_and_other_event_types_say_nothing() -> None:
    assert (
        fold(recorded("payment_method.attached", card("pm_1", "4242", customer="cus_2"), 10))
        is None
    )
    assert card_facts(recorded("invoice.paid", {"id": "in_1", "object": "invoice"}, 10)) == ()


EVENTS = [
    recorded("payment_method.attached", card("pm_1", "4242"), 10),
    recorded("payment_method.attached", card("pm_2", "0005", brand="mastercard"), 11),
    recorded("customer.updated", customer("pm_2"), 12),
    recorded("customer.updated", customer("pm_1"), 13),
    recorded(
        "payment_method.detached", card("pm_1", "4242", customer=None), 14, {"customer": "cus_1"}
    ),
    recorded("payment_method.attached", card("pm_3", "1117", brand="discover"), 14),
]


@given(st.permutations(list(range(len(EVENTS)))), st.integers(1, len(EVENTS)))
def test_any_order_of_the_same_events_shows_the_same_card(order: list[int], n: int) -> None:
    chosen = sorted(order[:n])
    expected = fold(*(EVENTS[i] for i in chosen))
    assert fold(*(EVENTS[i] for i in order if i in chosen)) == expected


def test_a_fact_is_stored_as_an_object_of_every_field_in_order_and_read_back_whole() -> None:
    fact = CardFact(
        "payment_method", "pm_1", "evt_1", 5, "cus_1", "pm_1", False, "visa", "4242", 12, 2030
    )
    stored = fact.to_json()
    assert list(orjson.loads(stored)) == list(CardFact.__dataclass_fields__)
    assert orjson.loads(stored)["attached"] is False
    assert fact_from_json(stored) == fact
