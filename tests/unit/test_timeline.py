"""The timeline: every change of a user's billing state with its cause, and what comes next."""

from __future__ import annotations

from billing_ledger.demo import USER, lifecycle
from billing_ledger.projections.history import changes
from billing_ledger.projections.timeline import KINDS, timeline
from tests.unit.builders import DAY, example_plans, inputs

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
