"""History: every change of a user's features, caused by an event or by a rule of time."""

from __future__ import annotations

from billing_ledger.projections.history import Change, changes, explain
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
    invoice,
    link,
    sub_event,
    summary_event,
)

PLANS = example_plans()
CORE, PRO = ("core",), ("core", "pro")


def history(events: list[Json], until: int) -> list[Change]:
    return changes(inputs("u_1", events), PLANS, until)


def test_a_user_without_events_has_no_history() -> None:
    assert history([], T + M) == []


def test_grace_end_is_a_rule_driven_change_without_an_event() -> None:
    events = [
        link(id="evt_l", created=T),
        sub_event("created", "evt_c", T),
        sub_event("updated", "evt_pd", T + DAY, {"status": "active"}, status="past_due"),
    ]
    assert [c.to_json() for c in history(events, T + M)] == [
        {
            "at": T,
            "event_id": "evt_c",
            "event_type": "customer.subscription.created",
            "features_before": ["core"],
            "features_after": ["core", "pro"],
            "reason": "sub_1 unseen -> active",
        },
        {
            "at": T + 8 * DAY,
            "event_id": None,
            "event_type": None,
            "features_before": ["core", "pro"],
            "features_after": ["core"],
            "reason": "past_due grace ended for sub_1",
        },
    ]


def test_period_end_plus_leeway_is_a_rule_driven_change() -> None:
    events = [link(id="evt_l", created=T), sub_event("created", "evt_c", T)]
    last = history(events, T + 2 * M)[-1]
    assert (last.at, last.event_id, last.reason) == (
        T + M + 2 * DAY,
        None,
        "period end + leeway passed for sub_1",
    )


def test_cancel_at_without_the_deletion_ends_access_at_the_period_end_plus_leeway() -> None:
    # P5 (CONTRACT.md): a scheduled cancellation is bounded like any period end; a final
    # prorated period ending at cancel_at gives cancel_at + leeway.
    final = {"cancel_at": T + 9 * DAY, "period": (T, T + 9 * DAY)}
    events = [link(id="evt_l", created=T), sub_event("created", "evt_c", T, **final)]
    last = history(events, T + M)[-1]
    assert (last.at, last.reason, last.features_after) == (
        T + 11 * DAY,
        "period end + leeway passed for sub_1",
        CORE,
    )


def test_rule_changes_after_until_are_not_listed() -> None:
    events = [link(id="evt_l", created=T), sub_event("created", "evt_c", T)]
    assert [c.at for c in history(events, T + M)] == [T]


def test_a_same_second_tie_credits_the_event_the_fold_chose() -> None:
    events = [
        link(id="evt_l", created=T - 5),
        sub_event("updated", "evt_a", T, {"status": "incomplete"}),
        sub_event("created", "evt_z", T, status="incomplete"),
    ]
    (change,) = history(events, T + DAY)
    assert (change.event_id, change.event_type) == ("evt_a", "customer.subscription.updated")


def test_a_late_link_is_credited_to_the_checkout_session() -> None:
    session = event("checkout.session.completed", checkout_session(), id="evt_1", created=T + 30)
    events = [sub_event("created", "evt_2", T), session]
    (change,) = history(events, T + DAY)
    assert (change.at, change.event_id, change.event_type) == (
        T + 30,
        "evt_1",
        "checkout.session.completed",
    )
    assert change.reason == "cus_1 linked to u_1 via checkout_session"


def test_a_terminal_event_removes_features_and_says_so() -> None:
    events = [
        link(id="evt_l", created=T),
        sub_event("created", "evt_c", T),
        sub_event("deleted", "evt_d", T + 5 * DAY, status="canceled", ended_at=T + 5 * DAY),
    ]
    last = history(events, T + M)[-1]
    assert (last.event_id, last.reason, last.features_after) == (
        "evt_d",
        "sub_1 active -> canceled",
        CORE,
    )


def test_explain_tells_the_story_of_one_feature() -> None:
    events = [
        link(id="evt_l", created=T),
        sub_event("created", "evt_c", T),
        sub_event("updated", "evt_pd", T + DAY, {"status": "active"}, status="past_due"),
    ]
    lines = explain(inputs("u_1", events), PLANS, T + 10 * DAY, "pro")
    assert lines[0] == "u_1 at 2026-01-11T00:00:00Z: features core"
    assert "+pro" in lines[1] and "[evt_c]" in lines[1]
    assert (
        "-pro" in lines[2] and "past_due grace ended for sub_1" in lines[2] and "[rule]" in lines[2]
    )
    assert "sub_1 (cus_1): past_due, grants nothing" in "\n".join(lines)
    assert lines[-1] == "pro: denied (sub_1 is past_due beyond the grace period)"


def test_explain_skips_changes_that_do_not_touch_the_feature() -> None:
    events = [
        link(id="evt_l", created=T),
        sub_event("created", "evt_c", T, prices=("price_addon",)),
    ]
    lines = explain(inputs("u_1", events), PLANS, T + DAY, "pro")
    assert not any("+export" in line for line in lines)
    assert lines[-1] == "pro: denied (no plan grants pro)"
    assert any("+export" in line for line in explain(inputs("u_1", events), PLANS, T + DAY))


def test_a_summary_change_is_credited_to_the_summary_event() -> None:
    events = [
        link(id="evt_l", created=T),
        sub_event("created", "evt_c", T),
        event("invoice.created", invoice(), id="evt_i", created=T + DAY),
        summary_event("evt_s", T + DAY, "core"),
    ]
    last = history(events, T + 2 * DAY)[-1]
    assert (last.event_id, last.reason) == ("evt_s", "entitlement summary of cus_1 lists core")


def test_a_deleted_customer_is_credited_with_the_loss() -> None:
    gone = event("customer.deleted", customer(deleted=True), id="evt_cd", created=T + DAY)
    events = [link(id="evt_l", created=T), sub_event("created", "evt_c", T), gone]
    last = history(events, T + 2 * DAY)[-1]
    assert (last.event_id, last.reason, last.features_after) == (
        "evt_cd",
        "customer cus_1 deleted",
        CORE,
    )
