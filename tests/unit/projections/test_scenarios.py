"""STRIPE-SEMANTICS section 8, scenario by scenario, on the pure core.

Each scenario feeds real-shaped events (delivery order as written in the scenario) through
normalise -> gather -> evaluate. `entitlements()` also evaluates the events in reverse and
rotated order and insists on the same answer: order-independence is checked everywhere.
"""

from __future__ import annotations

from typing import Any

from billing_ledger.http import wire
from billing_ledger.ledger.canonical import Invoice, Subscription
from billing_ledger.ledger.normalise import normalise
from billing_ledger.projections.fold import Attempt, state_at
from billing_ledger.projections.history import changes
from billing_ledger.projections.invoices import InvoiceView, user_invoices
from billing_ledger.projections.policy import Entitlements, SubscriptionAccess, access, evaluate
from tests.unit.builders import (
    DAY,
    M,
    T,
    checkout_session,
    event,
    example_plans,
    inputs,
    invoice,
    invoice_event,
    observation,
    recorded,
    served,
    snap,
    snapshots,
    sub_event,
    subscription,
    summary,
    summary_event,
)

Json = dict[str, Any]
PLANS = example_plans()
LEEWAY = 2 * DAY
GRACE = 7 * DAY
CORE = ("core",)  # the default free plan's features: every user has them
PRO = ("core", "pro")


def orders(events: list[Json]) -> list[list[Json]]:
    """Delivery order, reversed, and rotated by one."""
    return [events, events[::-1], events[1:] + events[:1]]


def entitlements(events: list[Json], at: int, user: str = "u_1") -> Entitlements:
    """Evaluate at `at`, the same in several delivery orders."""
    results = [evaluate(inputs(user, order), PLANS, at) for order in orders(events)]
    assert all(r == results[0] for r in results[1:])
    return results[0]


def features(events: list[Json], at: int) -> tuple[str, ...]:
    return entitlements(events, at).features


def only_sub(ent: Entitlements) -> SubscriptionAccess:
    (sub,) = ent.subscriptions
    return sub


def invoices(events: list[Json], at: int, user: str = "u_1") -> list[InvoiceView]:
    results = [user_invoices(inputs(user, order), at) for order in orders(events)]
    assert all(r == results[0] for r in results[1:])
    return results[0]


def invoice_state(events: list[Json], invoice_id: str, at: int) -> Invoice:
    chosen = state_at([s for s in snapshots(events) if s.object_id == invoice_id], at)
    assert chosen is not None and isinstance(chosen.state, Invoice)
    return chosen.state


def checkout(created: int = T, id: str = "evt_1") -> Json:
    return event("checkout.session.completed", checkout_session(), id=id, created=created)


# -- A. Baseline ------------------------------------------------------------------------


def s1_events() -> list[Json]:
    paid = {"amount_paid": 2000, "attempt_count": 1, "finalized_at": T, "paid_at": T + 1}
    return [
        checkout(),
        sub_event("created", "evt_2", T),
        invoice_event("created", "evt_3", T),
        invoice_event("finalized", "evt_4", T, status="open", finalized_at=T),
        invoice_event("paid", "evt_5", T + 1, status="paid", **paid),
    ]


def test_s1_happy_path_via_checkout_grants_pro_until_period_end_plus_leeway() -> None:
    ent = entitlements(s1_events(), T + 1)
    sub = only_sub(ent)
    assert (sub.status, sub.current_period_end, sub.access_until) == (
        "active",
        T + M,
        T + M + LEEWAY,
    )
    assert ent.customer_ids == ("cus_1",)
    assert ent.features == PRO
    assert ent.plans == ("free", "pro")
    assert features(s1_events(), T + M + LEEWAY - 1) == PRO
    assert features(s1_events(), T + M + LEEWAY) == CORE
    (inv,) = invoices(s1_events(), T + 1)
    assert (inv.id, inv.status, inv.amount_paid) == ("in_1", "paid", 2000)


def test_s1_entitlements_json_matches_the_contract_example() -> None:
    ent = entitlements(s1_events(), T)
    # The subscription as GET /v1/users/{id}/entitlements writes it (http/wire.py).
    assert served(wire.Subscription, ent.subscriptions[0]) == {
        "id": "sub_1",
        "customer_id": "cus_1",
        "status": "active",
        "price_ids": ["price_pro"],
        "current_period_end": 1769817600,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "grants_access": True,
        "access_until": 1769990400,
        "quantity": 1,
    }
    assert (ent.features, ent.plans, ent.customer_ids, ent.warnings) == (
        ("core", "pro"),
        ("free", "pro"),
        ("cus_1",),
        (),
    )


def test_s2_reversed_delivery_builds_up_to_the_same_end_state() -> None:
    events = s1_events()[::-1]
    paid_first = snap(events[0]).state
    assert isinstance(paid_first, Invoice)
    assert (paid_first.status, paid_first.subscription_id) == ("paid", "sub_1")
    only_paid = entitlements(events[:1], T + 1)
    assert (only_paid.features, only_paid.customer_ids, only_paid.subscriptions) == (CORE, (), ())
    unattributed = entitlements(events[:4], T + 1)
    assert (unattributed.features, unattributed.customer_ids) == (CORE, ())
    assert entitlements(events, T + 1) == entitlements(s1_events(), T + 1)


def test_s3_exact_duplicates_change_nothing() -> None:
    events = s1_events()
    assert entitlements([*events, events[4], events[4]], T + 1) == entitlements(events, T + 1)


def test_s4_logical_duplicate_with_another_id_changes_nothing() -> None:
    events = s1_events()
    twin = dict(events[4], id="evt_5b")
    assert entitlements([*events, twin], T + 1) == entitlements(events, T + 1)
    assert [a.number for a in invoices([*events, twin], T + 1)[0].attempts] == [1]


# -- B. Reordering ----------------------------------------------------------------------


def test_s8_updated_before_created_is_active() -> None:
    events = [
        sub_event("updated", "evt_b", T + 1, {"status": "incomplete"}, app_user_id="u_1"),
        sub_event("created", "evt_a", T, status="incomplete", app_user_id="u_1"),
    ]
    assert only_sub(entitlements(events, T + 1)).status == "active"
    assert features(events, T + 1) == PRO


def test_s10_deleted_then_an_older_updated_stays_canceled() -> None:
    events = [
        checkout(T - 10),
        sub_event(
            "deleted", "e1", T + 100, status="canceled", ended_at=T + 100, canceled_at=T + 100
        ),
        sub_event("updated", "e2", T + 50, status="active"),
    ]
    ent = entitlements(events, T + 200)
    assert only_sub(ent).status == "canceled"
    assert ent.features == CORE
    assert access(ent, "pro") == (False, "sub_1 is canceled")


def test_s12_invoice_paid_before_created_and_finalized_stays_paid() -> None:
    events = [
        invoice_event("paid", "e1", T + 5, status="paid", paid_at=T + 5, finalized_at=T + 3),
        invoice_event("finalized", "e2", T + 3, status="open", finalized_at=T + 3),
        invoice_event("created", "e3", T),
    ]
    for order in orders(events):
        inv = invoice_state(order, "in_1", T + 10)
        assert (inv.status, inv.paid_at) == ("paid", T + 5)


def test_s14_checkout_link_arriving_last_grants_from_its_created() -> None:
    events = [
        sub_event("created", "evt_2", T),
        invoice_event("paid", "evt_5", T + 1, status="paid", amount_paid=2000, paid_at=T + 1),
        checkout(T + 30),
    ]
    assert features(events, T + 29) == CORE
    assert features(events, T + 30) == PRO


def test_s14_subscription_metadata_links_as_well() -> None:
    events = [sub_event("created", "evt_2", T, app_user_id="u_1")]
    ent = entitlements(events, T)
    assert (ent.features, ent.customer_ids) == (PRO, ("cus_1",))


def test_s15_concurrent_created_and_updated_of_one_second_is_active() -> None:
    events = [
        sub_event("created", "evt_x", T, status="incomplete", app_user_id="u_1"),
        sub_event("updated", "evt_a", T, {"status": "incomplete"}, app_user_id="u_1"),
    ]
    assert only_sub(entitlements(events, T)).status == "active"


def test_s16_entitlement_summaries_out_of_order_keep_the_newer() -> None:
    events = [
        checkout(T),
        sub_event("created", "evt_s", T),
        summary_event("evt_new", T + 200, "core"),
        summary_event("evt_old", T + 100, "core", "pro"),
    ]
    assert features(events, T + 150) == PRO
    ent = entitlements(events, T + 300)
    assert ent.features == CORE
    assert access(ent, "pro") == (False, "the entitlement summary of cus_1 does not list it")


def test_s17_same_second_summaries_are_ambiguous_until_observed() -> None:
    events = [
        checkout(T),
        sub_event("created", "evt_s", T),
        summary_event("evt_p", T + 300, "core"),
        summary_event("evt_q", T + 300, "core", "pro"),
    ]
    assert entitlements(events, T + 300).needs_refetch == ("cus_1",)
    observed = observation(summary("core", "pro"), id="obs_1", observed_at=T + 301)
    ent = entitlements([*events, observed], T + 301)
    assert (ent.features, ent.needs_refetch) == (PRO, ())


# -- C. Trials --------------------------------------------------------------------------


def s18_events() -> list[Json]:
    trial = {"status": "trialing", "trial": (T, T + 14 * DAY), "period": (T, T + 14 * DAY)}
    zero = {"id": "in_0", "status": "paid", "amount_due": 0, "paid_at": T}
    return [
        checkout(),
        sub_event("created", "evt_t", T, **trial),
        invoice_event("paid", "evt_0", T, **zero),
    ]


def test_s18_trial_start_with_a_zero_invoice_grants_pro() -> None:
    ent = entitlements(s18_events(), T + DAY)
    assert (only_sub(ent).status, ent.features) == ("trialing", PRO)
    (inv,) = invoices(s18_events(), T + DAY)
    assert (inv.status, inv.amount_paid, inv.attempts) == ("paid", 0, ())


def test_s19_trial_will_end_is_a_notification_and_the_warning_comes_from_time() -> None:
    trial = {"status": "trialing", "trial": (T, T + 14 * DAY), "period": (T, T + 14 * DAY)}
    reminders = [sub_event("trial_will_end", f"evt_w{i}", T + 11 * DAY, **trial) for i in (1, 2)]
    before = entitlements(s18_events(), T + 11 * DAY)
    after = entitlements([*s18_events(), *reminders], T + 11 * DAY)
    assert after.to_json() == before.to_json()
    assert after.features == PRO
    # The warning is a rule of time: trial_end less than three days away.
    assert entitlements(s18_events(), T + 11 * DAY).warnings == ()
    assert entitlements(s18_events(), T + 11 * DAY + 1).warnings == ("trial_ending",)


def s20_events() -> list[Json]:
    start, end = T + 14 * DAY, T + 14 * DAY + M
    converted = sub_event("updated", "evt_c", start, {"status": "trialing"}, period=(start, end))
    cycle = invoice_event(
        "paid",
        "evt_p",
        start,
        id="in_2",
        status="paid",
        amount_paid=2000,
        attempt_count=1,
        billing_reason="subscription_cycle",
    )
    return [*s18_events(), converted, cycle]


def test_s20_trial_converts_and_access_runs_to_the_new_period_end() -> None:
    ent = entitlements(s20_events(), T + 14 * DAY)
    sub = only_sub(ent)
    assert (sub.status, sub.access_until) == ("active", T + 14 * DAY + M + LEEWAY)
    assert ent.features == PRO


def s21_events() -> list[Json]:
    start = T + 14 * DAY
    paused = {"status": "paused", "trial": (T, start), "period": (T, start)}
    return [
        *s18_events(),
        summary_event("evt_sum", T, "core", "pro"),
        sub_event("updated", "evt_u", start, {"status": "trialing"}, **paused),
        sub_event("paused", "evt_pz", start, **paused),
    ]


def test_s21_trial_ends_paused_and_the_stale_summary_grants_nothing() -> None:
    ent = entitlements(s21_events(), T + 14 * DAY)
    assert only_sub(ent).status == "paused"
    assert ent.features == CORE  # only the default plan
    assert access(ent, "pro") == (False, "sub_1 is paused")


def test_s22_trial_ends_canceled_for_good() -> None:
    end = T + 14 * DAY
    canceled = {"status": "canceled", "ended_at": end, "trial": (T, end), "period": (T, end)}
    events = [*s18_events(), sub_event("deleted", "evt_d", end, **canceled)]
    ent = entitlements(events, end)
    assert (only_sub(ent).status, ent.features) == ("canceled", CORE)
    late = sub_event("updated", "evt_late", end + DAY, status="active")
    assert only_sub(entitlements([*events, late], end + DAY)).status == "canceled"


def s23_events() -> list[Json]:
    start = T + 14 * DAY
    failing = {
        "id": "in_3",
        "status": "open",
        "finalized_at": start,
        "billing_reason": "subscription_cycle",
    }
    return [
        *s18_events(),
        sub_event(
            "updated",
            "evt_pd",
            start,
            {"status": "trialing"},
            status="past_due",
            period=(start, start + M),
        ),
        invoice_event("finalized", "evt_f", start, **failing),
        invoice_event("payment_failed", "evt_pf", start + 3600, attempt_count=1, **failing),
    ]


def test_s23_trial_into_past_due_keeps_access_for_the_grace_window_only() -> None:
    start = T + 14 * DAY
    ent = entitlements(s23_events(), start + DAY)
    sub = only_sub(ent)
    assert (sub.status, sub.past_due_since, sub.access_until) == ("past_due", start, start + GRACE)
    assert ent.features == PRO
    assert ent.warnings == ("payment_failed",)
    assert features(s23_events(), start + GRACE - 1) == PRO
    late = entitlements(s23_events(), start + GRACE)
    assert late.features == CORE
    assert access(late, "pro") == (False, "sub_1 is past_due beyond the grace period")
    assert invoices(s23_events(), start + GRACE)[0].status == "open"


def test_s24_paused_subscription_resumed_restores_features() -> None:
    back = T + 20 * DAY
    events = [
        *s21_events(),
        sub_event("resumed", "evt_r", back, status="active", period=(back, back + M)),
        sub_event(
            "updated",
            "evt_ra",
            back,
            {"status": "paused"},
            status="active",
            period=(back, back + M),
        ),
        invoice_event(
            "paid", "evt_rp", back, id="in_r", status="paid", amount_paid=2000, attempt_count=1
        ),
    ]
    assert features(events, back - 1) == CORE
    ent = entitlements(events, back)
    assert (only_sub(ent).status, ent.features) == ("active", PRO)


# -- D. Payment failure and recovery ----------------------------------------------------


def s25_events() -> list[Json]:
    due = {"id": "in_4", "status": "open", "billing_reason": "subscription_cycle", "created": T + M}
    renewed = {"period": (T + M, T + 2 * M)}
    return [
        checkout(),
        sub_event("created", "evt_2", T),
        invoice_event(
            "payment_failed",
            "evt_f1",
            T + M,
            attempt_count=1,
            next_payment_attempt=T + M + 3 * DAY,
            **due,
        ),
        sub_event("updated", "evt_pd", T + M, {"status": "active"}, status="past_due", **renewed),
        invoice_event(
            "payment_failed",
            "evt_f2",
            T + M + 3 * DAY,
            attempt_count=2,
            next_payment_attempt=T + M + 5 * DAY,
            **due,
        ),
        invoice_event(
            "paid",
            "evt_ok",
            T + M + 5 * DAY,
            **(due | {"status": "paid"}),
            attempt_count=3,
            amount_paid=2000,
        ),
        sub_event("updated", "evt_back", T + M + 5 * DAY, {"status": "past_due"}, **renewed),
    ]


def test_s25_renewal_fails_and_recovers_within_grace_without_losing_access() -> None:
    events = s25_events()
    ent = entitlements(events, T + M + 6 * DAY)
    assert (only_sub(ent).status, ent.features, ent.warnings) == ("active", PRO, ())
    in_4 = next(i for i in invoices(events, T + M + 6 * DAY) if i.id == "in_4")
    assert (in_4.status, in_4.attempts) == (
        "paid",
        (Attempt(1, "failed"), Attempt(2, "failed"), Attempt(3, "succeeded")),
    )
    history = changes(inputs("u_1", events), PLANS, T + M + 6 * DAY)
    assert [(c.features_before, c.features_after) for c in history] == [(CORE, PRO)]


def test_s26_retries_exhausted_cancel_and_the_open_invoice_grants_nothing() -> None:
    end = T + M + 14 * DAY
    due = {"id": "in_4", "status": "open", "billing_reason": "subscription_cycle", "created": T + M}
    events = [
        *s25_events()[:5],
        invoice_event("payment_failed", "evt_f8", end - DAY, attempt_count=8, **due),
        sub_event(
            "deleted", "evt_del", end, status="canceled", ended_at=end, reason="payment_failed"
        ),
    ]
    ent = entitlements(events, end)
    assert (only_sub(ent).status, ent.features) == ("canceled", CORE)
    assert invoices(events, end)[0].status == "open"
    assert ent.warnings == ()  # a canceled subscription is no longer dunned here


def test_s29_first_payment_fails_and_expires_without_access_at_any_point() -> None:
    first = {"id": "in_5", "billing_reason": "subscription_create"}
    events = [
        checkout(),
        sub_event("created", "evt_c", T, status="incomplete"),
        invoice_event("payment_failed", "evt_f", T, status="open", attempt_count=1, **first),
        sub_event(
            "updated",
            "evt_x",
            T + 23 * 3600,
            {"status": "incomplete"},
            status="incomplete_expired",
            canceled_at=T + 23 * 3600,
        ),
        invoice_event(
            "voided", "evt_v", T + 23 * 3600, status="void", voided_at=T + 23 * 3600, **first
        ),
    ]
    for at in (T, T + 3600, T + 23 * 3600, T + 40 * DAY):
        assert features(events, at) == CORE
    assert only_sub(entitlements(events, T + DAY)).status == "incomplete_expired"
    (inv,) = invoices(events, T + DAY)
    assert (inv.status, inv.payment_reversed_after_activation) == ("void", False)


def test_s30_three_d_secure_grants_only_once_active() -> None:
    first = {"id": "in_6", "billing_reason": "subscription_create"}
    events = [
        checkout(),
        sub_event("created", "evt_c", T, status="incomplete"),
        invoice_event(
            "payment_action_required", "evt_a", T, status="open", attempt_count=1, **first
        ),
        invoice_event(
            "paid", "evt_p", T + 60, status="paid", attempt_count=1, amount_paid=2000, **first
        ),
        sub_event("updated", "evt_u", T + 60, {"status": "incomplete"}),
    ]
    assert features(events, T + 59) == CORE
    assert features(events, T + 60) == PRO


def test_s31_delayed_payment_voided_after_activation_keeps_access_and_is_flagged() -> None:
    ach = {"id": "in_7", "billing_reason": "subscription_create"}
    events = [
        checkout(),
        sub_event("created", "evt_c", T),
        invoice_event("finalized", "evt_f", T, status="open", finalized_at=T, **ach),
        invoice_event(
            "voided",
            "evt_v",
            T + 4 * DAY,
            status="void",
            finalized_at=T,
            voided_at=T + 4 * DAY,
            **ach,
        ),
    ]
    ent = entitlements(events, T + 5 * DAY)
    assert (only_sub(ent).status, ent.features) == ("active", PRO)
    (inv,) = invoices(events, T + 5 * DAY)
    assert inv.payment_reversed_after_activation is True
    assert invoices(events, T + DAY)[0].payment_reversed_after_activation is False


# -- E. Cancellation and reactivation ---------------------------------------------------


def s34_first() -> list[Json]:
    scheduled = {"cancel_at_period_end": True, "cancel_at": T + M, "canceled_at": T + 10 * DAY}
    prev = {"cancel_at_period_end": False, "cancel_at": None, "canceled_at": None}
    return [
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event("updated", "evt_s", T + 10 * DAY, prev, **scheduled),
    ]


def test_s34_cancel_at_period_end_keeps_access_until_the_end_then_none() -> None:
    between = entitlements(s34_first(), T + 10 * DAY)
    sub = only_sub(between)
    assert (sub.status, sub.grants_access, sub.access_until) == ("active", True, T + M + LEEWAY)
    assert between.warnings == ("cancellation_scheduled",)
    assert between.features == PRO
    ended = [*s34_first(), sub_event("deleted", "evt_d", T + M, status="canceled", ended_at=T + M)]
    after = entitlements(ended, T + M)
    assert (only_sub(after).status, after.features, after.warnings) == ("canceled", CORE, ())
    # Without the .deleted event, cancel_at is bounded like any period end (P5), and
    # canceled_at is never an end.
    assert features(s34_first(), T + M) == PRO
    assert features(s34_first(), T + M + LEEWAY - 1) == PRO
    assert features(s34_first(), T + M + LEEWAY) == CORE


def test_s35_portal_cancel_in_flexible_mode_is_scheduled_by_cancel_at() -> None:
    flexible = {
        "billing_mode": "flexible",
        "cancel_at": T + M,
        "canceled_at": T + 10 * DAY,
        "reason": "cancellation_requested",
    }
    events = [
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event("updated", "evt_p", T + 10 * DAY, {"cancel_at": None}, **flexible),
    ]
    ent = entitlements(events, T + 10 * DAY)
    assert ent.warnings == ("cancellation_scheduled",)
    assert (ent.features, only_sub(ent).access_until) == (PRO, T + M + LEEWAY)


def test_s36_reactivation_before_the_period_end_continues_into_the_next_period() -> None:
    renewed = {"period": (T + M, T + 2 * M)}
    events = [
        *s34_first(),
        sub_event(
            "updated", "evt_r", T + 20 * DAY, {"cancel_at_period_end": True, "cancel_at": T + M}
        ),
        invoice_event(
            "paid",
            "evt_p",
            T + M,
            id="in_2",
            status="paid",
            amount_paid=2000,
            attempt_count=1,
            billing_reason="subscription_cycle",
        ),
        sub_event("updated", "evt_n", T + M, {"items": {}}, **renewed),
    ]
    ent = entitlements(events, T + 20 * DAY)
    assert (ent.warnings, only_sub(ent).cancel_at, only_sub(ent).cancel_at_period_end) == (
        (),
        None,
        False,
    )
    assert only_sub(entitlements(events, T + M + DAY)).access_until == T + 2 * M + LEEWAY
    history = changes(inputs("u_1", events), PLANS, T + M + 5 * DAY)
    assert [c.features_after for c in history] == [PRO]


def test_s38_immediate_cancel_ends_access_at_once() -> None:
    now = T + 5 * DAY
    cancel = {
        "status": "canceled",
        "canceled_at": now,
        "ended_at": now,
        "reason": "cancellation_requested",
    }
    events = [
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event("deleted", "evt_d", now, **cancel),
    ]
    assert features(events, now - 1) == PRO
    assert features(events, now) == CORE


def test_s40_resubscribe_after_cancellation_uses_the_new_subscription() -> None:
    now = T + 5 * DAY
    events = [
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event("deleted", "evt_d", now, status="canceled", ended_at=now, canceled_at=now),
        event(
            "checkout.session.completed",
            checkout_session(id="cs_2", subscription="sub_2"),
            id="evt_c2",
            created=now + DAY,
        ),
        sub_event(
            "created",
            "evt_s2",
            now + DAY,
            id="sub_2",
            prices=("price_basic",),
            period=(now + DAY, now + DAY + M),
        ),
    ]
    ent = entitlements(events, now + DAY)
    assert [(s.id, s.status) for s in ent.subscriptions] == [
        ("sub_1", "canceled"),
        ("sub_2", "active"),
    ]
    assert ent.features == CORE
    assert access(ent, "core") == (True, "plan basic via sub_2 (active)")
    assert ent.plans == ("basic", "free")


# -- F. Plan changes --------------------------------------------------------------------


def test_s41_upgrade_mid_period_grants_pro_from_the_update() -> None:
    up = T + 10 * DAY
    proration = {"id": "in_9", "billing_reason": "subscription_update", "created": up}
    events = [
        checkout(),
        sub_event("created", "evt_2", T, prices=("price_basic",)),
        sub_event("updated", "evt_up", up, {"items": {"data": []}}),
        invoice_event("created", "evt_ic", up, **proration),
        invoice_event(
            "paid", "evt_ip", up, status="paid", amount_paid=1000, attempt_count=1, **proration
        ),
    ]
    assert features(events, up - 1) == CORE
    ent = entitlements(events, up)
    assert (ent.features, only_sub(ent).current_period_end) == (PRO, T + M)
    assert invoices(events, up)[0].status == "paid"


def s42_first(up: int) -> Json:
    pending = {"expires_at": up + DAY, "subscription_items": [{"price": "price_pro"}]}
    return sub_event("updated", "evt_pu", up, prices=("price_basic",), pending_update=pending)


def test_s42_pending_upgrade_whose_payment_fails_never_grants_pro() -> None:
    up = T + 10 * DAY
    events = [
        checkout(),
        sub_event("created", "evt_2", T, prices=("price_basic",)),
        s42_first(up),
        invoice_event(
            "payment_failed",
            "evt_f",
            up,
            id="in_10",
            status="open",
            attempt_count=1,
            billing_reason="subscription_update",
        ),
        sub_event("pending_update_expired", "evt_x", up + DAY, prices=("price_basic",)),
    ]
    for at in (up, up + 3600, up + DAY, up + 2 * DAY):
        ent = entitlements(events, at)
        assert (ent.features, only_sub(ent).status) == (CORE, "active")


def test_s43_pending_upgrade_grants_pro_only_once_the_items_change() -> None:
    up = T + 10 * DAY
    events = [
        checkout(),
        sub_event("created", "evt_2", T, prices=("price_basic",)),
        s42_first(up),
        invoice_event(
            "paid",
            "evt_p",
            up + 1,
            id="in_10",
            status="paid",
            amount_paid=1000,
            attempt_count=1,
            billing_reason="subscription_update",
        ),
        sub_event("pending_update_applied", "evt_a", up + 2),
        sub_event("updated", "evt_u", up + 2, {"pending_update": {"expires_at": up + DAY}}),
    ]
    assert features(events, up + 1) == CORE
    assert features(events, up + 2) == PRO


def test_s45_summary_and_upgrade_in_one_second_give_pro_in_either_order() -> None:
    up = T + 10 * DAY
    events = [
        checkout(),
        sub_event("created", "evt_2", T, prices=("price_basic",)),
        summary_event("evt_sum", up, "core", "pro"),
        sub_event("updated", "evt_up", up, {"items": {"data": []}}),
    ]
    ent = entitlements(events, up)
    assert ent.features == PRO
    assert ent.reasons["pro"] == "entitlement summary of cus_1 via sub_1 (active)"


# -- G. Multiple subscriptions and customer lifecycle -----------------------------------


def test_s46_two_subscriptions_then_one_deleted() -> None:
    end = T + 10 * DAY
    events = [
        checkout(),
        sub_event("created", "evt_1s", T, prices=("price_basic",)),
        sub_event("created", "evt_2s", T, id="sub_2", prices=("price_addon",)),
        sub_event(
            "deleted",
            "evt_2d",
            end,
            id="sub_2",
            prices=("price_addon",),
            status="canceled",
            ended_at=end,
        ),
    ]
    assert features(events, end - 1) == ("core", "export")
    ent = entitlements(events, end)
    assert ent.features == CORE
    assert [(s.id, s.status) for s in ent.subscriptions] == [
        ("sub_1", "active"),
        ("sub_2", "canceled"),
    ]


def test_s46_the_customer_wide_summary_is_applied_whole() -> None:
    end = T + 10 * DAY
    events = [
        checkout(),
        sub_event("created", "evt_1s", T, prices=("price_basic",)),
        sub_event("created", "evt_2s", T, id="sub_2", prices=("price_addon",)),
        summary_event("evt_sum1", T, "core", "export"),
        sub_event(
            "deleted",
            "evt_2d",
            end,
            id="sub_2",
            prices=("price_addon",),
            status="canceled",
            ended_at=end,
        ),
        summary_event("evt_sum2", end, "core"),
    ]
    assert features(events, end - 1) == ("core", "export")
    assert features(events, end) == CORE


def test_deleted_customer_never_grants_again_but_stays_listed() -> None:
    gone = T + 3 * DAY
    deleted = event(
        "customer.deleted",
        {"id": "cus_1", "object": "customer", "deleted": True},
        id="evt_cd",
        created=gone,
    )
    events = [*s1_events(), deleted, sub_event("updated", "evt_late", gone + 1)]
    ent = entitlements(events, gone + 1)
    assert (ent.features, ent.customer_ids) == (CORE, ("cus_1",))
    assert access(ent, "pro") == (False, "customer cus_1 is deleted")
    assert len(invoices(events, gone + 1)) == 1


# -- H. Robustness ----------------------------------------------------------------------


def test_s50_unknown_and_future_event_types_change_nothing() -> None:
    unknown = [
        event(
            "billing.credit_grant.created",
            {"id": "credgr_1", "object": "billing.credit_grant"},
            id="evt_x",
            created=T + 5,
        ),
        event(
            "customer.subscription.frobnicated",
            subscription(status="canceled"),
            id="evt_y",
            created=T + 5,
        ),
    ]
    assert all(normalise(recorded(e)) is None for e in unknown)
    assert entitlements([*s1_events(), *unknown], T + 10) == entitlements(s1_events(), T + 10)


def test_s56_truncated_summary_is_not_trusted_until_observed() -> None:
    ten = [f"feat_{i}" for i in range(9)] + ["pro"]
    fourteen = [*ten, "core", "export", "feat_x", "feat_y"]
    events = [
        checkout(),
        sub_event("created", "evt_2", T),
        summary_event("evt_sum", T + 100, *ten, has_more=True),
    ]
    ent = entitlements(events, T + 100)
    assert (ent.features, ent.needs_refetch) == (PRO, ("cus_1",))
    observed = observation(summary(*fourteen), id="obs_1", observed_at=T + 101)
    ent = entitlements([*events, observed], T + 101)
    assert ent.features == tuple(sorted(fourteen))
    assert ent.needs_refetch == ()


def test_s57_invoice_upcoming_creates_no_invoice() -> None:
    preview = invoice(status="draft", billing_reason="upcoming")
    del preview["id"]
    upcoming = event("invoice.upcoming", preview, id="evt_up", created=T + M - 3 * DAY)
    assert normalise(recorded(upcoming)) is None
    assert invoices([*s1_events(), upcoming], T + M) == invoices(s1_events(), T + M)


def test_s59a_endive_pause_endpoint_withholds_then_restores_features() -> None:
    pause, back = T + 5 * DAY, T + 9 * DAY
    paused = {"status": "paused", "paused_type": "pause_requested"}
    events = [
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event("paused", "evt_p", pause, **paused),
        sub_event("updated", "evt_pu", pause, {"status": "active"}, **paused),
        sub_event("resumed", "evt_r", back),
        sub_event("updated", "evt_ru", back, {"status": "paused"}),
    ]
    assert features(events, pause) == CORE
    assert features(events, back) == PRO


def test_s59b_pause_on_first_payment_failure_grants_nothing_and_the_invoice_stays_open() -> None:
    failing = {"id": "in_8", "status": "open", "attempt_count": 1}
    events = [
        checkout(),
        invoice_event("payment_failed", "evt_f", T, **failing),
        sub_event(
            "updated",
            "evt_p",
            T + 60,
            {"status": "incomplete"},
            status="paused",
            paused_type="first_payment_failure",
        ),
    ]
    ent = entitlements(events, T + 60)
    assert (only_sub(ent).status, ent.features) == ("paused", CORE)
    assert invoices(events, T + 60)[0].status == "open"


def test_s62_dispute_driven_cancellation_records_its_reason() -> None:
    events = [
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event(
            "deleted",
            "evt_d",
            T + DAY,
            status="canceled",
            ended_at=T + DAY,
            reason="payment_disputed",
        ),
    ]
    assert features(events, T + DAY) == CORE
    chosen = state_at([s for s in snapshots(events) if s.kind == "subscription"], T + DAY)
    assert chosen is not None and isinstance(chosen.state, Subscription)
    assert (chosen.state.status, chosen.state.cancellation_reason) == (
        "canceled",
        "payment_disputed",
    )
