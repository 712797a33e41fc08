"""The timeline: every change of a user's billing state with its cause, and what comes next."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_ledger.demo import USER, lifecycle
from billing_ledger.projections.history import changes
from billing_ledger.projections.timeline import KINDS, timeline
from tests.unit.builders import (
    DAY,
    checkout_session,
    customer,
    event,
    example_plans,
    inputs,
    sub_event,
    summary_event,
)
from tests.unit.projections.test_order_independence import PLANS, USERS, ledgers

T = 1767225600
M = 30 * DAY
PAST_DUE = T + M + 3600  # the renewal failed an hour ago
AFTER_SCHEDULE = T + M + 9 * DAY


def _kinds(at: int) -> list[tuple[str, str | None]]:
    found = timeline(inputs(USER, lifecycle(T)), example_plans(), at)
    return [(e.kind, e.event_id) for e in found.entries]


def test_the_demo_timeline_holds_the_failure_the_episode_the_recovery_and_the_schedule() -> None:
    assert _kinds(AFTER_SCHEDULE) == [
        ("link", "evt_demo_02"),
        ("subscription_status", "evt_demo_01"),
        ("payment_succeeded", "evt_demo_03"),
        ("subscription_status", "evt_demo_05"),
        ("payment_failed", "evt_demo_04"),
        ("subscription_status", "evt_demo_07"),
        ("payment_succeeded", "evt_demo_06"),
        ("cancellation_scheduled", "evt_demo_08"),
    ]


def test_during_the_past_due_episode_the_grace_end_is_upcoming() -> None:
    found = timeline(inputs(USER, lifecycle(T)), example_plans(), PAST_DUE)
    assert [u.to_json() for u in found.upcoming] == [
        {
            "at": T + M + 7 * DAY,
            "kind": "rule",
            "detail": "loses pro at the grace end, 7 Feb 2026, unless paid (sub_demo)",
        }
    ]
    assert found.entries[-2].detail == "sub_demo active -> past_due"


def test_the_change_of_features_sits_on_the_entry_history_credits() -> None:
    at = T + 70 * DAY
    events = inputs(USER, lifecycle(T))
    found = timeline(events, example_plans(), at)
    moved = [
        (e.at, e.event_id, e.features_before, e.features_after)
        for e in found.entries
        if e.features_before != e.features_after
    ]
    history = changes(events, example_plans(), at)
    assert moved == [(c.at, c.event_id, c.features_before, c.features_after) for c in history]
    assert found.entries[-1].kind == "rule"
    assert found.entries[-1].detail == "period end + leeway passed for sub_demo"
    assert found.upcoming == ()


def test_a_user_the_ledger_never_saw_has_an_empty_timeline() -> None:
    found = timeline(inputs("u_nobody", lifecycle(T)), example_plans(), T + DAY)
    assert found.to_json() == {"entries": [], "upcoming": []}
    assert found.features == ("core",)


def test_every_kind_is_one_of_the_contracts() -> None:
    assert {kind for kind, _ in _kinds(T + 70 * DAY)} <= set(KINDS)
    assert len(KINDS) == 12


def _entries(events: list[dict[str, object]], at: int) -> list[tuple[str, str | None, str]]:
    found = timeline(inputs("u_1", events), example_plans(), at)
    return [(e.kind, e.event_id, e.detail) for e in found.entries]


def _checkout() -> dict[str, object]:
    return event("checkout.session.completed", checkout_session(), id="evt_checkout", created=T)


def test_a_trial_starts_nears_its_end_then_converts() -> None:
    trial = (T, T + 14 * DAY)
    events = [
        _checkout(),
        sub_event("created", "evt_trial", T, status="trialing", trial=trial),
        sub_event(
            "updated",
            "evt_paid",
            T + 14 * DAY,
            {"status": "trialing"},
            period=(T + 14 * DAY, T + 44 * DAY),
        ),
    ]
    assert _entries(events, T + 20 * DAY)[1:] == [
        ("trial_started", "evt_trial", "sub_1 unseen -> trialing, trial until 15 Jan 2026"),
        ("trial_ending", None, "sub_1's trial ends on 15 Jan 2026"),
        ("subscription_status", "evt_paid", "sub_1 trialing -> active"),
    ]
    ending = timeline(inputs("u_1", events), example_plans(), T + 12 * DAY).entries[-1]
    assert ending.at == T + 11 * DAY + 1  # the warning holds under three days from the end


def test_a_trial_ahead_is_upcoming() -> None:
    events = [
        _checkout(),
        sub_event("created", "evt_trial", T, status="trialing", trial=(T, T + 14 * DAY)),
    ]
    found = timeline(inputs("u_1", events), example_plans(), T + DAY)
    assert found.upcoming[0].to_json() == {
        "at": T + 14 * DAY,
        "kind": "trial_ending",
        "detail": "sub_1's trial ends on 15 Jan 2026",
    }
    assert found.upcoming[1].kind == "rule"  # the period's end, after the trial's


def test_stripes_trial_notice_is_the_trial_ending_entry_once() -> None:
    trial = (T, T + 14 * DAY)
    notice = sub_event("trial_will_end", "evt_notice", T + 11 * DAY, status="trialing", trial=trial)
    events = [_checkout(), sub_event("created", "evt_trial", T, status="trialing", trial=trial)]
    entries = _entries([*events, notice], T + 12 * DAY)
    assert [e for e in entries if e[0] == "trial_ending"] == [
        ("trial_ending", "evt_notice", "sub_1's trial ends on 15 Jan 2026")
    ]


def test_a_plan_change_and_a_withdrawn_cancellation_are_named() -> None:
    events = [
        _checkout(),
        sub_event("created", "evt_created", T, prices=("price_basic",)),
        sub_event("updated", "evt_upgrade", T + DAY, {"items": {}}, prices=("price_pro",)),
        sub_event(
            "updated",
            "evt_cancel",
            T + 2 * DAY,
            {"cancel_at_period_end": False},
            cancel_at_period_end=True,
        ),
        sub_event("updated", "evt_keep", T + 3 * DAY, {"cancel_at_period_end": True}),
    ]
    found = timeline(inputs("u_1", events), example_plans(), T + 4 * DAY)
    assert [(e.kind, e.event_id, e.detail) for e in found.entries[2:]] == [
        ("plan_changed", "evt_upgrade", "sub_1 basic -> pro"),
        ("cancellation_scheduled", "evt_cancel", "sub_1 cancels on 31 Jan 2026"),
        ("cancellation_unscheduled", "evt_keep", "sub_1 no longer cancels"),
    ]
    upgrade = found.entries[2]
    assert (upgrade.features_before, upgrade.features_after) == (("core",), ("core", "pro"))
    assert [u.detail for u in found.upcoming] == [
        "loses pro at the period end (with leeway), 2 Feb 2026, unless renewed (sub_1)"
    ]


def test_a_deleted_customer_and_a_moved_one_are_link_entries() -> None:
    events = [
        _checkout(),
        sub_event("created", "evt_created", T),
        event("customer.deleted", customer(deleted=True), id="evt_gone", created=T + DAY),
    ]
    found = timeline(inputs("u_1", events), example_plans(), T + 2 * DAY)
    last = found.entries[-1]
    assert (last.kind, last.event_id, last.object_id) == ("link", "evt_gone", "cus_1")
    assert (last.features_before, last.features_after) == (("core", "pro"), ("core",))
    moved = [
        event("customer.created", customer(app_user_id="u_1"), id="evt_named", created=T),
        sub_event("created", "evt_created", T),
        event(
            "customer.updated",
            customer(app_user_id="u_2"),
            id="evt_moved",
            created=T + DAY,
            previous={"metadata": {"app_user_id": "u_1"}},
        ),
    ]
    entries = _entries(moved, T + 2 * DAY)
    assert entries[-1] == ("link", "evt_moved", "cus_1 moved to u_2")


def test_a_summary_that_changes_the_features_is_credited_with_its_own_entry() -> None:
    events = [
        _checkout(),
        sub_event("created", "evt_created", T),
        summary_event("evt_summary", T + DAY, "core"),
    ]
    found = timeline(inputs("u_1", events), example_plans(), T + 2 * DAY)
    last = found.entries[-1]
    assert (last.kind, last.event_id) == ("plan_changed", "evt_summary")
    assert last.features_after == ("core",)


@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_the_timeline_does_not_depend_on_the_order_events_arrive_in(data: st.DataObject) -> None:
    events = lifecycle(T)
    shuffled = data.draw(st.permutations(events))
    for at in (PAST_DUE, AFTER_SCHEDULE, T + 70 * DAY):
        expected = timeline(inputs(USER, events), example_plans(), at)
        assert timeline(inputs(USER, shuffled), example_plans(), at) == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_changes_of_features_are_historys_whatever_the_ledger_and_its_order(
    data: st.DataObject,
) -> None:
    events = data.draw(ledgers())
    shuffled = data.draw(st.permutations(events))
    until = T + 2 * M
    for user in USERS:
        mine = inputs(user, events)
        found = timeline(mine, PLANS, until)
        moved = [
            (e.at, e.event_id, e.features_before, e.features_after)
            for e in found.entries
            if e.features_before != e.features_after
        ]
        history = changes(mine, PLANS, until)
        assert moved == [(c.at, c.event_id, c.features_before, c.features_after) for c in history]
        assert all(e.kind in KINDS for e in found.entries)
        assert timeline(inputs(user, shuffled), PLANS, until) == found
