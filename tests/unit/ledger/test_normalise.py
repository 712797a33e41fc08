"""The upcaster reads every supported API version's payloads into the canonical shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from billing_ledger.ledger.canonical import (
    CHECKOUT_SESSION,
    CUSTOMER,
    ENTITLEMENT_SUMMARY,
    INVOICE,
    LINK,
    PRICE,
    PRODUCT,
    SUBSCRIPTION,
    CheckoutSession,
    Customer,
    EntitlementSummary,
    Invoice,
    Link,
    Subscription,
    snapshot_from_json,
    snapshot_to_json,
)
from billing_ledger.ledger.normalise import NormaliseError, normalise
from billing_ledger.ledger.records import Recorded
from tests.unit.builders import (
    DAY,
    M,
    T,
    checkout_session,
    customer,
    event,
    invoice,
    item,
    link,
    observation,
    recorded,
    snap,
    subscription,
    summary,
)

FIXTURES = Path(__file__).parents[2] / "fixtures"
RUBY_MOCK = FIXTURES / "stripe-ruby-mock"
OPENAPI = orjson.loads((FIXTURES / "stripe-openapi" / "objects.json").read_bytes())["resources"]

KIND_BY_PREFIX = {
    "customer.subscription.": SUBSCRIPTION,
    "invoice.": INVOICE,
    "customer.": CUSTOMER,
    "checkout.session.": CHECKOUT_SESSION,
    "product.": PRODUCT,
    "price.": PRICE,
    "plan.": PRICE,  # a plan is the price of API versions before 2018
}


def ruby_mock(name: str) -> dict[str, Any]:
    """A 2020-08-27-era Stripe event envelope."""
    envelope: dict[str, Any] = json.loads((RUBY_MOCK / f"{name}.json").read_text())
    return envelope


def openapi_event(type_: str, resource: str, created: int = T) -> dict[str, Any]:
    """A current-shape object from Stripe's OpenAPI fixtures, wrapped in an event."""
    return event(type_, OPENAPI[resource], id=f"evt_{resource}", created=created)


def state_of(envelope: dict[str, Any]) -> Any:
    return snap(envelope).state


# -- 2020-08-27 envelopes (stripe-ruby-mock) --------------------------------------------


@pytest.mark.parametrize(
    "name",
    sorted(p.stem for p in RUBY_MOCK.glob("*.json") if not p.stem.startswith("invoice.upcoming")),
)
def test_every_billing_fixture_of_2020_normalises_to_its_kind(name: str) -> None:
    envelope = ruby_mock(name)
    snapshot = normalise(recorded(envelope))
    kind = next((k for p, k in KIND_BY_PREFIX.items() if envelope["type"].startswith(p)), None)
    if kind is None:
        assert snapshot is None
    else:
        assert snapshot is not None
        assert snapshot.kind == kind
        assert snapshot.event_id == envelope["id"]
        assert snapshot.created == envelope["created"]


def test_pre_basil_subscription_takes_its_period_end_from_the_top_level() -> None:
    sub = state_of(ruby_mock("customer.subscription.created"))
    assert isinstance(sub, Subscription)
    assert sub.current_period_end == 1650998510
    assert sub.items[0].current_period_end is None
    assert sub.items[0].price_id == "price_000000000000000000000000"
    assert sub.items[0].product_id == "prod_00000000000000"
    assert sub.customer_id == "cus_00000000000000"


def test_updated_event_keeps_previous_attributes_for_the_fold() -> None:
    snapshot = snap(ruby_mock("customer.subscription.updated"))
    assert snapshot.previous == {"schedule": "sub_sched_000000000000000000000000"}


def test_deleted_subscription_keeps_ended_at_and_is_canceled() -> None:
    sub = state_of(ruby_mock("customer.subscription.deleted"))
    assert (sub.status, sub.ended_at, sub.canceled_at) == ("canceled", 1648320097, 1648320097)


def test_legacy_plan_only_items_use_the_plan_id_as_the_price() -> None:
    sub = state_of(ruby_mock("customer.subscription.trial_will_end"))
    assert sub.status == "trialing"
    assert [i.price_id for i in sub.items] == ["fkx0AFo_00000000000000", "fkx0AFo_00000000000001"]
    assert [i.product_id for i in sub.items] == ["pr_00000000000000", "pr_00000000000001"]
    assert sub.current_period_end == 1383759023
    assert sub.trial_end == 1381280730


def test_pre_basil_invoice_links_its_subscription_at_the_top_level() -> None:
    inv = state_of(ruby_mock("invoice.created"))
    assert isinstance(inv, Invoice)
    assert inv.subscription_id == "sub_000000000000000000000000"
    assert (inv.status, inv.paid) == ("draft", False)


def test_pre_basil_invoice_paid_reads_as_paid() -> None:
    inv = state_of(ruby_mock("invoice.paid"))
    assert inv.paid and inv.status == "paid"


def test_customer_deleted_is_deleted_even_without_the_flag_in_the_body() -> None:
    envelope = ruby_mock("customer.deleted")
    assert "deleted" not in envelope["data"]["object"]
    assert state_of(envelope) == Customer("cus_00000000000000", True, None, None)


def test_checkout_session_without_status_is_complete_by_its_event_type() -> None:
    session = state_of(ruby_mock("checkout.session.completed.payment_mode"))
    assert isinstance(session, CheckoutSession)
    assert (session.status, session.customer_id) == ("complete", "cus_00000000000000")


def test_invoice_upcoming_is_a_preview_and_carries_no_state() -> None:
    assert normalise(recorded(ruby_mock("invoice.upcoming"))) is None


def test_event_types_outside_the_table_carry_no_state() -> None:
    assert normalise(recorded(ruby_mock("subscription_schedule.updated"))) is None


# -- current shapes (stripe-openapi objects) --------------------------------------------


def test_current_subscription_takes_its_period_end_from_the_items() -> None:
    sub = state_of(openapi_event("customer.subscription.updated", "subscription"))
    assert (
        sub.current_period_end == OPENAPI["subscription"]["items"]["data"][0]["current_period_end"]
    )
    assert sub.items[0].price_id == "price_1PgafmB7WZ01zgkW6dKueIc5"
    assert sub.items[0].product_id == "prod_QXg1hqf4jFNsqG"
    assert sub.cancel_at_period_end is True
    assert sub.pause_collection is True
    assert sub.has_pending_update is True


def test_current_invoice_billing_a_quote_has_no_subscription() -> None:
    inv = state_of(openapi_event("invoice.updated", "invoice"))
    assert OPENAPI["invoice"]["parent"]["type"] == "quote_details"
    assert inv.subscription_id is None
    assert (inv.status, inv.paid, inv.amount_due, inv.amount_remaining) == (
        "draft",
        False,
        1000,
        1000,
    )


def test_current_deleted_customer_object_is_deleted() -> None:
    assert state_of(openapi_event("customer.deleted", "deleted_customer")).deleted is True


def test_current_customer_and_checkout_session_normalise() -> None:
    assert state_of(openapi_event("customer.updated", "customer")).id == "cus_QXg1o8vcGmoR32"
    session = state_of(openapi_event("checkout.session.expired", "checkout.session"))
    assert session.mode == "payment"


def test_basil_invoice_links_its_subscription_through_parent() -> None:
    inv = state_of(event("invoice.paid", invoice(status="paid"), id="evt_1", created=T))
    assert (inv.subscription_id, inv.paid) == ("sub_1", True)


def test_period_end_is_the_latest_item_period_end() -> None:
    obj = subscription(prices=("price_basic",))
    obj["items"]["data"].append(item("price_addon", T, T + 2 * M, 1))
    assert state_of(
        event("customer.subscription.created", obj, id="e", created=T)
    ).current_period_end == (T + 2 * M)


def test_price_lookup_key_and_expanded_product_are_read() -> None:
    obj = subscription()
    obj["items"]["data"][0]["price"]["product"] = {"id": "prod_pro", "object": "product"}
    first = state_of(event("customer.subscription.created", obj, id="e", created=T)).items[0]
    assert (first.price_id, first.lookup_key, first.product_id) == (
        "price_pro",
        "pro_monthly",
        "prod_pro",
    )


def test_same_event_in_endive_and_acacia_renderings_gives_one_period_end() -> None:
    endive = event("customer.subscription.updated", subscription(), id="evt_9", created=T)
    acacia_obj = subscription()
    acacia_obj["current_period_start"], acacia_obj["current_period_end"] = T, T + M
    for raw in acacia_obj["items"]["data"]:
        del raw["current_period_start"], raw["current_period_end"]
    acacia = event(
        "customer.subscription.updated",
        acacia_obj,
        id="evt_9",
        created=T,
        api_version="2025-02-24.acacia",
    )
    assert state_of(endive).current_period_end == state_of(acacia).current_period_end == T + M


# -- localstripe's 2017-08-15 shape -----------------------------------------------------


def localstripe_subscription() -> dict[str, Any]:
    """What localstripe exports: `plan` (no `price`), periods and plan on the subscription."""
    plan = {
        "id": "pro_monthly_plan",
        "object": "plan",
        "amount": 2000,
        "currency": "eur",
        "interval": "month",
        "interval_count": 1,
        "product": "prod_pro",
        "livemode": False,
        "created": T - DAY,
    }
    return {
        "id": "sub_local1",
        "object": "subscription",
        "created": T,
        "livemode": False,
        "customer": "cus_local1",
        "metadata": {"app_user_id": "u_local"},
        "cancel_at_period_end": False,
        "cancel_at": None,
        "canceled_at": None,
        "ended_at": None,
        "quantity": 1,
        "status": "active",
        "trial_end": None,
        "start_date": T,
        "items": {
            "object": "list",
            "url": "/v1/subscription_items?subscription=sub_local1",
            "data": [
                {"id": "si_local1", "object": "subscription_item", "plan": plan, "quantity": 1}
            ],
            "has_more": False,
        },
        "plan": plan,
        "current_period_start": T,
        "current_period_end": T + M,
    }


def test_localstripe_plan_shape_normalises() -> None:
    envelope = event(
        "customer.subscription.created",
        localstripe_subscription(),
        id="evt_local",
        created=T,
        api_version="2017-08-15",
    )
    sub = state_of(envelope)
    assert sub.items[0].price_id == "pro_monthly_plan"
    assert sub.items[0].product_id == "prod_pro"
    assert sub.current_period_end == T + M
    assert sub.app_user_id == "u_local"


def test_localstripe_subscription_without_items_falls_back_to_its_plan() -> None:
    obj = localstripe_subscription()
    del obj["items"]
    sub = state_of(event("customer.subscription.created", obj, id="e", created=T))
    assert [(i.price_id, i.quantity) for i in sub.items] == [("pro_monthly_plan", 1)]


def test_localstripe_invoice_with_date_and_no_parent() -> None:
    obj = {
        "id": "in_local1",
        "object": "invoice",
        "customer": "cus_local1",
        "subscription": "sub_local1",
        "date": T,
        "status": "paid",
        "total": 2000,
        "amount_due": 2000,
        "amount_paid": 2000,
        "attempt_count": 1,
        "currency": "eur",
        "status_transitions": {"finalized_at": T, "paid_at": T, "voided_at": None},
    }
    inv = state_of(event("invoice.payment_succeeded", obj, id="e", created=T))
    assert (inv.subscription_id, inv.created, inv.paid, inv.amount_remaining) == (
        "sub_local1",
        T,
        True,
        0,
    )


# -- our own event types, summaries, thin events, malformed bodies ----------------------


def test_entitlement_summary_with_has_more_is_incomplete() -> None:
    s = state_of(
        event(
            "entitlements.active_entitlement_summary.updated",
            summary("pro", "core", has_more=True),
            id="e",
            created=T,
        )
    )
    assert s == EntitlementSummary("cus_1", ("core", "pro"), complete=False)


def test_customer_link_event_is_a_link_snapshot() -> None:
    snapshot = snap(link(user_id="u_1", customer="cus_1", id="evt_l", created=T))
    assert (snapshot.kind, snapshot.object_id) == (LINK, "cus_1")
    assert snapshot.state == Link("u_1", "cus_1")


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        (subscription(status="canceled"), SUBSCRIPTION),
        (invoice(status="open"), INVOICE),
        (customer(), CUSTOMER),
        (summary("core"), ENTITLEMENT_SUMMARY),
    ],
)
def test_observation_is_timed_when_observed(obj: dict[str, Any], kind: str) -> None:
    snapshot = snap(observation(obj, id="obs_1", observed_at=T + 500))
    assert (snapshot.kind, snapshot.observation, snapshot.created) == (kind, True, T + 500)


def test_observation_of_an_unknown_object_carries_no_state() -> None:
    envelope = observation({"object": "charge", "id": "ch_1"}, id="obs", observed_at=T)
    assert normalise(recorded(envelope)) is None


def test_thin_events_carry_no_state() -> None:
    thin_body = {
        "id": "evt_thin",
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "related_object": {
            "id": "mtr_1",
            "type": "billing.meter",
            "url": "/v1/billing/meters/mtr_1",
        },
    }
    as_snapshot_type = dict(thin_body, type="customer.subscription.updated", created=T)
    assert normalise(recorded(as_snapshot_type)) is None
    assert (
        normalise(recorded(event("customer.updated", customer(), id="e", created=T), thin=True))
        is None
    )


def test_unknown_and_future_event_types_carry_no_state() -> None:
    for type_ in ("billing.credit_grant.created", "customer.subscription.frobnicated"):
        assert normalise(recorded(event(type_, subscription(), id="e", created=T))) is None


def test_missing_optional_fields_do_not_crash() -> None:
    sparse = {"id": "sub_2", "object": "subscription", "status": "active"}
    sub = state_of(event("customer.subscription.updated", sparse, id="e", created=T))
    assert (sub.items, sub.current_period_end, sub.customer_id) == ((), None, None)


def test_malformed_payload_raises_normalise_error_with_the_event_id() -> None:
    broken = event(
        "customer.subscription.updated", {"object": "subscription"}, id="evt_bad", created=T
    )
    with pytest.raises(NormaliseError) as raised:
        normalise(recorded(broken))
    assert raised.value.event_id == "evt_bad"
    not_json = Recorded(1, 1, "evt_nj", "invoice.paid", T, False, None, 0.0, "webhook", False, b"{")
    with pytest.raises(NormaliseError, match="evt_nj"):
        normalise(not_json)
    no_object = dict(
        event("invoice.paid", invoice(), id="evt_no", created=T), data={"object": None}
    )
    with pytest.raises(NormaliseError, match="evt_no"):
        normalise(recorded(no_object))


def test_every_snapshot_kind_round_trips_through_json() -> None:
    envelopes = [
        event("customer.subscription.created", subscription(), id="e1", created=T),
        event("invoice.paid", invoice(status="paid", paid_at=T), id="e2", created=T),
        event("customer.created", customer(app_user_id="u_1"), id="e3", created=T),
        event("checkout.session.completed", checkout_session(), id="e4", created=T),
        event(
            "entitlements.active_entitlement_summary.updated", summary("core"), id="e5", created=T
        ),
        link(id="e6", created=T),
    ]
    for envelope in envelopes:
        snapshot = snap(envelope)
        assert snapshot_from_json(snapshot_to_json(snapshot)) == snapshot


# -- the catalog and one-time purchases (current shapes) --------------------------------


def test_a_current_price_and_product_read_as_the_catalog_needs_them() -> None:
    price = state_of(openapi_event("price.updated", "price"))
    assert (price.id, price.product_id, price.unit_amount, price.type, price.interval) == (
        "price_1PgafmB7WZ01zgkW6dKueIc5",
        "prod_QXg1hqf4jFNsqG",
        2000,
        "recurring",
        "month",
    )
    product = state_of(openapi_event("product.updated", "product"))
    assert (product.name, product.description, product.active) == (
        "T-shirt",
        "Comfortable gray cotton t-shirt",
        True,
    )


def test_a_payment_mode_session_keeps_its_payment_intent_and_price() -> None:
    session = state_of(openapi_event("checkout.session.completed", "checkout.session"))
    assert (session.mode, session.payment_intent_id) == ("payment", "pi_1PgafyB7WZ01zgkWSjxsAJo3")
    tagged = dict(OPENAPI["checkout.session"], metadata={"price": "price_lifetime"})
    envelope = event("checkout.session.completed", tagged, id="evt_tagged", created=T)
    assert state_of(envelope).price_id == "price_lifetime"


def test_a_charge_and_its_dispute_read_with_the_dispute_keyed_by_its_charge() -> None:
    refunded = dict(OPENAPI["charge"], amount_refunded=100, refunded=True)
    charge = state_of(event("charge.refunded", refunded, id="evt_ch", created=T))
    assert (charge.amount, charge.amount_refunded, charge.refunded) == (100, 100, True)
    dispute = {"id": "dp_1", "object": "dispute", "charge": charge.id, "status": "lost"}
    found = snap(event("charge.dispute.closed", dispute, id="evt_dp", created=T))
    assert (found.kind, found.object_id, found.state.status) == ("dispute", charge.id, "lost")


def test_a_dispute_without_a_status_is_refused() -> None:
    dispute = {"id": "dp_1", "object": "dispute", "charge": "ch_1"}
    with pytest.raises(NormaliseError, match="dispute has no status"):
        normalise(recorded(event("charge.dispute.closed", dispute, id="evt_dp", created=T)))
