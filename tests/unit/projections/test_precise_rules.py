"""CONTRACT.md "Precise rules" of issue 15, each in the one place it belongs (pure).

Bodies are real-shaped endive events (builders.py); the metadata moves start from the
2020-08-27 `customer.updated` body stripe-ruby-mock published (tests/fixtures, MIT).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from billing_ledger.http.billing import preferred_customer
from billing_ledger.ledger.canonical import Snapshot
from billing_ledger.projections.fold import by_object, state_at
from billing_ledger.projections.history import changes
from billing_ledger.projections.invoices import user_invoices
from billing_ledger.projections.links import links_of
from billing_ledger.projections.policy import LEGACY, evaluate, rule_witnesses
from tests.unit.builders import (
    DAY,
    Json,
    M,
    T,
    active_entitlement,
    checkout_session,
    customer,
    event,
    example_plans,
    gather,
    inputs,
    invoice_event,
    item,
    link,
    snap,
    sub_event,
    summary,
)

PLANS = example_plans()
RUBY_MOCK = Path(__file__).parents[2] / "fixtures" / "stripe-ruby-mock"
SUMMARY = "entitlements.active_entitlement_summary.updated"


def summary_update(id: str, created: int, keys: tuple[str, ...], before: tuple[str, ...]) -> Json:
    """A summary update whose previous_attributes list the entitlements as they were."""
    previous = {"entitlements": {"data": [active_entitlement(k) for k in before]}}
    return event(SUMMARY, summary(*keys), id=id, created=created, previous=previous)


def linked(*events: Json) -> list[Json]:
    return [link(id="evt_link", created=T - 100), *events]


# -- 1. same-second summaries: the witness orders them ---------------------------------


def test_same_second_summaries_are_ordered_by_the_witness_whatever_their_ids() -> None:
    first = ("core", "starter")
    second = ("core", "pro", "starter")
    for low, high in (("evt_a", "evt_z"), ("evt_z", "evt_a")):
        events = [
            summary_update(low, T, first, ()),
            summary_update(high, T, second, first),  # names the first's list as "before"
        ]
        chosen = state_at([snap(e) for e in events], T)
        assert chosen is not None and chosen.event_id == high
        assert chosen.state.lookup_keys == second  # type: ignore[union-attr]


def test_a_witness_given_as_a_bare_list_counts_too() -> None:
    bare = summary_update("evt_a", T, ("core", "pro"), ())
    bare["data"]["previous_attributes"] = {"entitlements": [active_entitlement("core")]}
    events = [summary_update("evt_z", T, ("core",), ()), bare]
    chosen = state_at([snap(e) for e in events], T)
    assert chosen is not None and chosen.event_id == "evt_a"


def test_same_second_summaries_decide_the_users_features_by_the_witness() -> None:
    pro_sub = sub_event("created", "e1", T - 10, prices=("price_pro",))
    events = linked(
        pro_sub,
        summary_update("evt_z", T, ("core",), ()),
        summary_update("evt_a", T, ("core", "pro"), ("core",)),
    )
    assert evaluate(inputs("u_1", events), PLANS, T).features == ("core", "pro")
    assert evaluate(inputs("u_1", events), PLANS, T, LEGACY).features == ("core",)


# -- 2. a summary is trusted only until a subscription stops granting -------------------


def paused_trial_with_addon() -> list[Json]:
    trial = {"trial": (T, T + 14 * DAY), "period": (T, T + 14 * DAY)}
    paused = trial | {"status": "paused", "paused_type": "trial_end_without_payment_method"}
    addon = {"id": "sub_2", "prices": ("price_addon",)}
    return linked(
        sub_event("created", "e1", T, status="trialing", **trial),
        sub_event("created", "e2", T, **addon),
        event(SUMMARY, summary("core", "export", "pro"), id="e3", created=T),
        sub_event("updated", "e4", T + 14 * DAY, {"status": "trialing"}, **paused),
    )


def test_a_paused_plans_features_do_not_leak_through_an_add_on() -> None:
    ent = evaluate(inputs("u_1", paused_trial_with_addon()), PLANS, T + 14 * DAY)
    assert ent.features == ("core", "export")
    assert ent.plans == ("addon", "free")  # consistent with the features now
    assert ent.reasons["export"] == "plan addon via sub_2 (active)"
    old = evaluate(inputs("u_1", paused_trial_with_addon()), PLANS, T + 14 * DAY, LEGACY)
    assert old.features == ("core", "export", "pro")


def test_the_summary_still_decides_before_the_pause() -> None:
    ent = evaluate(inputs("u_1", paused_trial_with_addon()), PLANS, T + DAY)
    assert ent.features == ("core", "export", "pro")
    assert ent.reasons["pro"].startswith("entitlement summary of cus_1")


def test_a_summary_after_the_pause_is_trusted_again() -> None:
    later = event(SUMMARY, summary("core", "export"), id="e5", created=T + 15 * DAY)
    events = [*paused_trial_with_addon(), later]
    ent = evaluate(inputs("u_1", events), PLANS, T + 15 * DAY)
    assert ent.features == ("core", "export")
    assert ent.reasons["export"].startswith("entitlement summary of cus_1")


def test_past_due_beyond_grace_distrusts_the_summary_too() -> None:
    events = linked(
        sub_event("created", "e1", T),
        sub_event("created", "e2", T, id="sub_2", prices=("price_addon",)),
        event(SUMMARY, summary("core", "export", "pro"), id="e3", created=T),
        sub_event("updated", "e4", T + DAY, {"status": "active"}, status="past_due"),
    )
    assert evaluate(inputs("u_1", events), PLANS, T + 2 * DAY).features == (
        "core",
        "export",
        "pro",
    )
    assert evaluate(inputs("u_1", events), PLANS, T + 8 * DAY).features == ("core", "export")


# -- 3. payment_failed follows the latest attempt, whatever the invoice's status -------


def failed_then(status_event: str, status: str) -> list[Json]:
    due = {"id": "in_4", "created": T + M, "billing_reason": "subscription_cycle"}
    return linked(
        sub_event("created", "e1", T, period=(T + M, T + 2 * M)),
        invoice_event("payment_failed", "e2", T + M, status="open", attempt_count=4, **due),
        invoice_event(status_event, "e3", T + M + DAY, status=status, attempt_count=4, **due),
    )


def test_payment_failed_stays_when_the_invoice_is_marked_uncollectible() -> None:
    events = failed_then("marked_uncollectible", "uncollectible")
    assert evaluate(inputs("u_1", events), PLANS, T + M + 2 * DAY).warnings == ("payment_failed",)
    assert evaluate(inputs("u_1", events), PLANS, T + M + 2 * DAY, LEGACY).warnings == ()


def test_payment_failed_stays_when_the_invoice_is_voided() -> None:
    events = failed_then("voided", "void")
    assert evaluate(inputs("u_1", events), PLANS, T + M + 2 * DAY).warnings == ("payment_failed",)


def test_payment_failed_ends_when_an_uncollectible_invoice_is_paid() -> None:
    due = {"id": "in_4", "created": T + M, "billing_reason": "subscription_cycle"}
    paid = invoice_event(
        "paid", "e4", T + M + 3 * DAY, status="paid", amount_paid=2000, attempt_count=4, **due
    )
    events = [*failed_then("marked_uncollectible", "uncollectible"), paid]
    assert evaluate(inputs("u_1", events), PLANS, T + M + 3 * DAY).warnings == ()


# -- 4. a scheduled cancellation does not cut access at cancel_at -----------------------


def test_cancel_at_without_the_deletion_is_bounded_by_the_period_end_plus_leeway() -> None:
    scheduled = {"cancel_at": T + M, "cancel_at_period_end": True, "canceled_at": T + DAY}
    events = linked(sub_event("updated", "e1", T + DAY, {"cancel_at": None}, **scheduled))
    sub = evaluate(inputs("u_1", events), PLANS, T + DAY).subscriptions[0]
    assert (sub.access_until, sub.until_rule) == (T + M + 2 * DAY, "period end + leeway passed")
    assert evaluate(inputs("u_1", events), PLANS, T + M + DAY).features == ("core", "pro")
    assert evaluate(inputs("u_1", events), PLANS, T + M + 2 * DAY).features == ("core",)
    assert evaluate(inputs("u_1", events), PLANS, T + M, LEGACY).features == ("core",)


def test_a_final_prorated_period_ending_at_cancel_at_gives_cancel_at_plus_leeway() -> None:
    final = {"cancel_at": T + 10 * DAY, "period": (T, T + 10 * DAY)}
    events = linked(sub_event("updated", "e1", T + DAY, {"cancel_at": None}, **final))
    sub = evaluate(inputs("u_1", events), PLANS, T + DAY).subscriptions[0]
    assert sub.access_until == T + 12 * DAY


def test_the_deletion_event_ends_access_at_ended_at() -> None:
    scheduled = {"cancel_at": T + M, "cancel_at_period_end": True}
    gone = {"status": "canceled", "ended_at": T + M - 5, **scheduled}
    events = linked(
        sub_event("updated", "e1", T + DAY, {"cancel_at": None}, **scheduled),
        sub_event("deleted", "e2", T + M - 5, **gone),
    )
    assert evaluate(inputs("u_1", events), PLANS, T + M - 6).features == ("core", "pro")
    assert evaluate(inputs("u_1", events), PLANS, T + M - 5).features == ("core",)


# -- 5. a metadata link ends when the metadata moves to another user --------------------


def ruby_mock_customer(id: str, created: int, user: str, before: str | None) -> Json:
    """stripe-ruby-mock's customer.updated body, with metadata.app_user_id moved."""
    raw: dict[str, Any] = json.loads((RUBY_MOCK / "customer.updated.json").read_text())
    body = copy.deepcopy(raw)
    body.update(id=id, created=created)
    body["data"]["object"]["id"] = "cus_1"
    body["data"]["object"]["metadata"] = {"app_user_id": user}
    body["data"]["previous_attributes"] = {"metadata": {"app_user_id": before}}
    return body


def moved() -> list[Json]:
    return [
        ruby_mock_customer("evt_c1", T, "u_1", None),
        sub_event("created", "e1", T),
        ruby_mock_customer("evt_c2", T + 10 * DAY, "u_2", "u_1"),
    ]


def test_a_moved_customer_is_linked_to_the_new_user_only() -> None:
    old, new = inputs("u_1", moved()), inputs("u_2", moved())
    assert evaluate(old, PLANS, T + 10 * DAY - 1).features == ("core", "pro")
    gone = evaluate(old, PLANS, T + 10 * DAY)
    assert (gone.features, gone.customer_ids) == (("core",), ())
    assert user_invoices(old, T + 10 * DAY) == []
    assert evaluate(new, PLANS, T + 10 * DAY).features == ("core", "pro")
    assert evaluate(old, PLANS, T + 10 * DAY, LEGACY).features == ("core", "pro")


def test_a_same_second_move_is_ordered_by_its_witness() -> None:
    events = [
        ruby_mock_customer("evt_z", T, "u_1", None),
        ruby_mock_customer("evt_a", T, "u_2", "u_1"),
        sub_event("created", "e1", T),
    ]
    assert evaluate(inputs("u_1", events), PLANS, T).customer_ids == ()
    assert evaluate(inputs("u_2", events), PLANS, T).customer_ids == ("cus_1",)


def test_moving_back_links_the_first_user_again() -> None:
    events = [*moved(), ruby_mock_customer("evt_c3", T + 20 * DAY, "u_1", "u_2")]
    old = inputs("u_1", events)
    assert evaluate(old, PLANS, T + 15 * DAY).customer_ids == ()
    assert evaluate(old, PLANS, T + 20 * DAY).customer_ids == ("cus_1",)
    assert evaluate(inputs("u_2", events), PLANS, T + 20 * DAY).customer_ids == ()


def test_subscription_metadata_moves_end_that_link_too() -> None:
    events = [
        sub_event("created", "e1", T, app_user_id="u_1"),
        sub_event(
            "updated", "e2", T + DAY, {"metadata": {"app_user_id": "u_1"}}, app_user_id="u_2"
        ),
    ]
    assert evaluate(inputs("u_1", events), PLANS, T).customer_ids == ("cus_1",)
    assert evaluate(inputs("u_1", events), PLANS, T + DAY).customer_ids == ()
    assert evaluate(inputs("u_2", events), PLANS, T + DAY).features == ("core", "pro")


def test_checkout_and_service_links_outlast_a_metadata_move() -> None:
    session = checkout_session(client_reference_id="u_1")
    for first in (
        event("checkout.session.completed", session, id="evt_cs", created=T),
        link(user_id="u_1", id="evt_l", created=T),
    ):
        events = [first, *moved()]
        ent = evaluate(inputs("u_1", events), PLANS, T + 20 * DAY)
        assert ent.customer_ids == ("cus_1",)


def test_removing_the_metadata_moves_nothing() -> None:
    cleared = event("customer.updated", customer(), id="evt_c2", created=T + DAY)
    events = [ruby_mock_customer("evt_c1", T, "u_1", None), sub_event("created", "e1", T), cleared]
    assert evaluate(inputs("u_1", events), PLANS, T + 2 * DAY).customer_ids == ("cus_1",)


def test_a_deleted_customer_stays_listed_after_its_metadata_link() -> None:
    gone = event("customer.deleted", customer(deleted=True), id="evt_cd", created=T + DAY)
    events = [ruby_mock_customer("evt_c1", T, "u_1", None), sub_event("created", "e1", T), gone]
    ent = evaluate(inputs("u_1", events), PLANS, T + 2 * DAY)
    assert (ent.customer_ids, ent.features) == (("cus_1",), ("core",))


def test_history_credits_the_move_to_the_snapshot_that_moved_it() -> None:
    last = changes(inputs("u_1", moved()), PLANS, T + 20 * DAY)[-1]
    assert (last.at, last.event_id, last.features_after) == (T + 10 * DAY, "evt_c2", ("core",))
    assert last.reason == "cus_1 moved to u_2 via customer_metadata"


def test_a_moved_customer_is_not_the_old_users_for_checkout_or_the_portal() -> None:
    assert preferred_customer(inputs("u_1", moved()), T + DAY) == "cus_1"
    assert preferred_customer(inputs("u_1", moved()), T + 10 * DAY) is None
    assert preferred_customer(inputs("u_2", moved()), T + 10 * DAY) == "cus_1"


# -- the same kind of tie elsewhere: every field a subscription update names ------------


def test_a_same_second_plan_change_is_ordered_by_its_items_witness() -> None:
    old_items = {"items": {"data": [item("price_basic", T, T + M)]}}
    for low, high in (("evt_a", "evt_z"), ("evt_z", "evt_a")):
        events = linked(
            sub_event("updated", high, T, old_items, prices=("price_pro",)),
            sub_event("updated", low, T, {"items": {}}, prices=("price_basic",)),
        )
        assert evaluate(inputs("u_1", events), PLANS, T).features == ("core", "pro")


def test_a_same_second_trial_extension_is_ordered_by_its_witness() -> None:
    for low, high in (("evt_a", "evt_z"), ("evt_z", "evt_a")):
        events = linked(
            sub_event("updated", high, T, {"trial_end": T + DAY}, status="trialing",
                      trial=(T, T + 9 * DAY), period=(T, T + 9 * DAY)),
            sub_event("updated", low, T, {"trial_end": None}, status="trialing",
                      trial=(T, T + DAY), period=(T, T + DAY)),
        )  # fmt: skip
        sub = evaluate(inputs("u_1", events), PLANS, T).subscriptions[0]
        assert sub.trial_end == T + 9 * DAY


# -- every warning against every way an invoice ends; every link source against its ends --


@pytest.mark.parametrize(
    ("end", "status", "warns"),
    [
        ("paid", "paid", False),
        ("voided", "void", True),
        ("marked_uncollectible", "uncollectible", True),
        ("updated", "open", True),
        ("finalized", "open", True),
    ],
)
def test_payment_failed_against_each_way_the_invoice_can_end(
    end: str, status: str, warns: bool
) -> None:
    events = failed_then(end, status)
    warnings = evaluate(inputs("u_1", events), PLANS, T + M + 2 * DAY).warnings
    assert warnings == (("payment_failed",) if warns else ())


def source(via: str) -> Json:
    """A link of u_1 to cus_1 of each kind the contract names."""
    return {
        "checkout": event("checkout.session.completed", checkout_session(), id="l", created=T),
        "ledger": link(id="l", created=T),
        "customer": event("customer.created", customer(app_user_id="u_1"), id="l", created=T),
        "subscription": sub_event("created", "l", T, app_user_id="u_1"),
    }[via]


@pytest.mark.parametrize("via", ["checkout", "ledger", "customer", "subscription"])
def test_every_link_source_against_the_customers_deletion(via: str) -> None:
    gone = event("customer.deleted", customer(deleted=True), id="evt_cd", created=T + DAY)
    events = [source(via), sub_event("created", "e1", T, id="sub_9"), gone]
    ent = evaluate(inputs("u_1", events), PLANS, T + 2 * DAY)
    assert (ent.customer_ids, ent.features) == (("cus_1",), ("core",))


@pytest.mark.parametrize(
    ("via", "ends"), [("checkout", False), ("ledger", False), ("customer", True)]
)
def test_every_link_source_against_a_customer_metadata_move(via: str, ends: bool) -> None:
    away = ruby_mock_customer("evt_mv", T + DAY, "u_2", "u_1")
    events = [source(via), sub_event("created", "e1", T, id="sub_9"), away]
    ent = evaluate(inputs("u_1", events), PLANS, T + 2 * DAY)
    assert ent.customer_ids == (() if ends else ("cus_1",))


ODD = [None, 7, True, "x", [], {}, [1, "a", None], {"data": "x"}, {"data": [7, {"price": 7}]}]


@pytest.mark.parametrize("odd", ODD)
def test_a_witness_of_any_shape_orders_without_raising(odd: Any) -> None:
    fields = ("entitlements", "metadata", "items", "status", "pause_collection", "trial_end")
    events = [
        summary_update("evt_a", T, ("core",), ()),
        event(SUMMARY, summary("core", "pro"), id="evt_b", created=T,
              previous=dict.fromkeys(fields, odd)),
        sub_event("updated", "evt_c", T, dict.fromkeys(fields, odd)),
        sub_event("updated", "evt_d", T, {"metadata": odd}),
        ruby_mock_customer("evt_e", T, "u_1", None) | {"id": "evt_e"},
    ]  # fmt: skip
    events[-1]["data"]["previous_attributes"] = {"metadata": odd}
    ent = evaluate(inputs("u_1", events), PLANS, T)
    assert ent.customer_ids == ("cus_1",)
    assert changes(inputs("u_1", events), PLANS, T + DAY) == changes(
        inputs("u_1", events[::-1]), PLANS, T + DAY
    )


# -- what a read that loads only each object's present must load as well ---------------


def present_only(events: list[Json]) -> list[Snapshot]:
    """Each object's latest second, plus the rules' witnesses (policy.rule_witnesses)."""
    kept: list[Snapshot] = []
    for snaps in by_object(snap(e) for e in events).values():
        top = max(s.created for s in snaps)
        chosen = {s.event_id: s for s in snaps if s.created == top}
        chosen |= {s.event_id: s for s in rule_witnesses(snaps)}
        kept += chosen.values()
    return kept


def test_a_present_only_read_still_sees_a_pause_after_the_summary() -> None:
    resumed = sub_event("updated", "e5", T + 16 * DAY, {"status": "paused"},
                        period=(T + 16 * DAY, T + M + 16 * DAY))  # fmt: skip
    events = [*paused_trial_with_addon(), resumed]
    at = T + 17 * DAY
    full = evaluate(inputs("u_1", events), PLANS, at)
    assert full.features == ("core", "export", "pro")  # plans decide: pro is back via sub_1
    assert full.reasons["pro"] == "plan pro via sub_1 (active)"
    partial = gather("u_1", present_only(events))
    assert evaluate(partial, PLANS, at) == full


def test_a_present_only_read_still_sees_who_owns_the_metadata() -> None:
    cleared = event("customer.updated", customer(), id="evt_c3", created=T + 20 * DAY)
    events = [*moved(), cleared]
    for user in ("u_1", "u_2"):
        full = evaluate(inputs(user, events), PLANS, T + 21 * DAY)
        partial = gather(user, [*present_only(events), *links_carried(events, user)])
        assert evaluate(partial, PLANS, T + 21 * DAY) == full
    assert evaluate(inputs("u_1", events), PLANS, T + 21 * DAY).customer_ids == ()


def links_carried(events: list[Json], user: str) -> list[Snapshot]:
    """The snapshots whose links the views' links table keeps (all of them, in this test)."""
    return [s for s in map(snap, events) if links_of(s) and links_of(s)[0].user_id == user]
