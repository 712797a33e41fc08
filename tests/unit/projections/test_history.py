"""History: every change of a user's features, caused by an event or by a rule of time."""

from __future__ import annotations

from billing_ledger.http import wire
from billing_ledger.projections.history import Change, changes
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
    served,
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
    assert [served(wire.Change, c) for c in history(events, T + M)] == [
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
