"""The access policy's rules one at a time: grants, time bounds, warnings, reasons, links."""

from __future__ import annotations

from billing_ledger.projections.links import LinkRow, links_of
from billing_ledger.projections.plans import Plan, Plans
from billing_ledger.projections.policy import UserInputs, access, evaluate, fold_object
from tests.unit.builders import (
    DAY,
    Json,
    M,
    T,
    checkout_session,
    customer,
    event,
    example_plans,
    inputs,
    invoice_event,
    link,
    snap,
    sub_event,
    subscription,
    summary_event,
)

PLANS = example_plans()


def linked(*events: Json) -> list[Json]:
    """The events, with u_1 linked to cus_1 at T by a link of our own."""
    return [link(id="evt_link", created=T), *events]


def test_unknown_user_gets_the_default_plans_only() -> None:
    ent = evaluate(UserInputs("u_new", (), ()), PLANS, T)
    assert ent.to_json() == {
        "user_id": "u_new",
        "features": ["core"],
        "plans": ["free"],
        "customer_ids": [],
        "subscriptions": [],
        "purchases": [],
        "warnings": [],
        "reasons": {"core": "plan free (default)"},
    }
    assert access(ent, "core") == (True, "plan free (default)")
    assert access(ent, "pro") == (False, "no plan grants pro")


def test_links_and_snapshots_created_after_at_do_not_count() -> None:
    events = [link(id="evt_link", created=T + 10), sub_event("created", "evt_s", T)]
    assert evaluate(inputs("u_1", events), PLANS, T + 9).customer_ids == ()
    assert evaluate(inputs("u_1", events), PLANS, T + 10).features == ("core", "pro")


def test_every_way_of_linking_a_user_to_a_customer() -> None:
    session = snap(event("checkout.session.completed", checkout_session(), id="e1", created=T))
    expired = snap(
        event("checkout.session.expired", checkout_session(status="expired"), id="e2", created=T)
    )
    with_metadata = snap(event("customer.updated", customer(app_user_id="u_1"), id="e3", created=T))
    on_sub = snap(sub_event("created", "e4", T, app_user_id="u_1"))
    ours = snap(link(id="e5", created=T))
    assert links_of(session) == [LinkRow("u_1", "cus_1", T, "e1", "checkout_session")]
    assert links_of(expired) == []
    assert links_of(with_metadata) == [LinkRow("u_1", "cus_1", T, "e3", "customer_metadata")]
    assert links_of(on_sub) == [LinkRow("u_1", "cus_1", T, "e4", "subscription_metadata")]
    assert links_of(ours) == [LinkRow("u_1", "cus_1", T, "e5", "ledger")]


def test_other_users_customers_are_not_mine() -> None:
    events = [
        link(user_id="u_2", customer="cus_2", id="evt_l2", created=T),
        sub_event("created", "evt_s2", T, id="sub_2", customer="cus_2"),
    ]
    ent = evaluate(inputs("u_1", events), PLANS, T)
    assert (ent.customer_ids, ent.subscriptions) == ((), ())


def test_grant_statuses_come_from_the_plans_file() -> None:
    only_active = Plans(PLANS.plans, grant_statuses=("active",))
    trial = sub_event("created", "evt_t", T, status="trialing", trial=(T, T + 14 * DAY))
    ent = evaluate(inputs("u_1", linked(trial)), only_active, T)
    assert ent.features == ("core",)
    assert access(ent, "pro") == (False, "sub_1 is trialing")


def test_statuses_that_never_grant() -> None:
    for status in ("paused", "unpaid", "incomplete", "incomplete_expired", "canceled"):
        ent = evaluate(inputs("u_1", linked(sub_event("created", "e", T, status=status))), PLANS, T)
        assert ent.features == ("core",), status
        assert not ent.subscriptions[0].grants_access


def test_past_due_grace_is_measured_from_the_start_of_the_episode() -> None:
    events = linked(
        sub_event("created", "e1", T),
        sub_event("updated", "e2", T + DAY, {"status": "active"}, status="past_due"),
        sub_event("updated", "e3", T + 3 * DAY, status="past_due", cancel_at_period_end=True),
    )
    sub = evaluate(inputs("u_1", events), PLANS, T + 4 * DAY).subscriptions[0]
    assert (sub.past_due_since, sub.access_until) == (T + DAY, T + 8 * DAY)
    assert evaluate(inputs("u_1", events), PLANS, T + 8 * DAY).features == ("core",)


def test_zero_grace_means_past_due_never_grants() -> None:
    strict = Plans(PLANS.plans, past_due_grace_days=0)
    events = linked(sub_event("created", "e1", T, status="past_due"))
    assert evaluate(inputs("u_1", events), strict, T).features == ("core",)


def test_access_until_is_the_earliest_rule() -> None:
    events = linked(sub_event("created", "e1", T, status="past_due"))
    sub = evaluate(inputs("u_1", events), PLANS, T).subscriptions[0]
    assert (sub.access_until, sub.until_rule) == (T + 7 * DAY, "past_due grace ended")
    plain = evaluate(inputs("u_1", linked(sub_event("created", "e1", T))), PLANS, T)
    assert plain.subscriptions[0].access_until == T + M + 2 * DAY


def test_no_grant_outlives_period_end_plus_leeway_without_renewal_events() -> None:
    events = linked(sub_event("created", "e1", T))
    ent = evaluate(inputs("u_1", events), PLANS, T + 365 * DAY)
    assert ent.features == ("core",)
    assert access(ent, "pro") == (False, "sub_1: period end + leeway passed")
    assert ent.subscriptions[0].access_until is None


def test_incomplete_summary_is_ignored_and_asks_for_a_refetch() -> None:
    events = linked(sub_event("created", "e1", T), summary_event("e2", T, "core", has_more=True))
    ent = evaluate(inputs("u_1", events), PLANS, T)
    assert ent.features == ("core", "pro")
    assert ent.needs_refetch == ("cus_1",)


def test_summary_without_a_granting_subscription_grants_nothing() -> None:
    events = linked(
        sub_event("created", "e1", T, status="unpaid"), summary_event("e2", T, "core", "pro")
    )
    assert evaluate(inputs("u_1", events), PLANS, T).features == ("core",)


def test_summary_of_one_customer_does_not_replace_another_customers_plans() -> None:
    events = linked(
        link(customer="cus_2", id="evt_link2", created=T),
        sub_event("created", "e1", T, prices=("price_basic",)),
        sub_event("created", "e2", T, id="sub_2", customer="cus_2", prices=("price_addon",)),
        summary_event("e3", T, "core"),
    )
    ent = evaluate(inputs("u_1", events), PLANS, T)
    assert ent.features == ("core", "export")
    assert ent.reasons["export"] == "plan addon via sub_2 (active)"
    assert ent.customer_ids == ("cus_1", "cus_2")


def test_plans_lists_default_plans_and_fully_held_subscription_plans() -> None:
    events = linked(sub_event("created", "e1", T, prices=("price_pro", "price_addon")))
    ent = evaluate(inputs("u_1", events), PLANS, T)
    assert ent.plans == ("addon", "free", "pro")
    assert ent.subscriptions[0].price_ids == ("price_addon", "price_pro")


def test_items_match_plans_by_lookup_key_and_product_too() -> None:
    by_lookup = Plans((Plan("gold", lookup_keys=("pro_monthly",), features=("gold",)),))
    by_product = Plans((Plan("gold", products=("prod_pro",), features=("gold",)),))
    events = linked(sub_event("created", "e1", T))
    assert evaluate(inputs("u_1", events), by_lookup, T).features == ("gold",)
    assert evaluate(inputs("u_1", events), by_product, T).features == ("gold",)


def test_payment_failed_warning_from_the_latest_invoice_until_paid() -> None:
    due = {"id": "in_9", "status": "open", "created": T + 5}
    events = linked(
        sub_event("created", "e1", T),
        invoice_event("payment_failed", "e2", T + 5, attempt_count=1, **due),
    )
    assert evaluate(inputs("u_1", events), PLANS, T + 5).warnings == ("payment_failed",)
    paid = invoice_event("paid", "e3", T + 9, attempt_count=1, **(due | {"status": "paid"}))
    assert evaluate(inputs("u_1", [*events, paid]), PLANS, T + 9).warnings == ()


def test_unpaid_subscription_warns_of_payment_failure() -> None:
    events = linked(sub_event("created", "e1", T, status="unpaid"))
    assert evaluate(inputs("u_1", events), PLANS, T).warnings == ("payment_failed",)


def test_cancellation_scheduled_warning_ends_with_the_cancellation() -> None:
    events = linked(sub_event("created", "e1", T, cancel_at=T + 10 * DAY))
    assert evaluate(inputs("u_1", events), PLANS, T).warnings == ("cancellation_scheduled",)
    assert evaluate(inputs("u_1", events), PLANS, T + 10 * DAY).warnings == ()


def test_entitlements_json_is_sorted_and_complete() -> None:
    events = linked(sub_event("created", "e1", T, prices=("price_pro", "price_addon")))
    body = evaluate(inputs("u_1", events), PLANS, T).to_json()
    assert body["features"] == ["core", "export", "pro"]
    assert body["reasons"] == {
        "core": "plan pro via sub_1 (active)",
        "export": "plan addon via sub_1 (active)",
        "pro": "plan pro via sub_1 (active)",
    }


def test_an_object_of_one_snapshot_folds_as_the_general_way_folds_it() -> None:
    past_due = subscription(status="past_due")
    envelopes = [
        event("customer.subscription.created", subscription(), id="evt_a", created=T),
        event("customer.subscription.updated", past_due, id="evt_b", created=T),
        event("customer.subscription.deleted", subscription(status="canceled"), id="c", created=T),
        invoice_event("payment_failed", "evt_d", T, status="open", attempt_count=2),
        event("checkout.session.completed", checkout_session(), id="evt_e", created=T),
    ]
    for envelope in envelopes:
        one = snap(envelope)
        for at in (T - 1, T, T + 40 * DAY):
            # Two of the same snapshot go the general way: sorted, tied, judged for a rival.
            assert fold_object([one], PLANS, at) == fold_object([one, one], PLANS, at)
