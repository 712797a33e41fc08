"""Answers reused across `at` equal a fresh evaluation at every time, whatever the order."""

from __future__ import annotations

import bisect
import gc
import weakref
from dataclasses import dataclass, fields, is_dataclass, replace
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_ledger.projections.answers import Answers, boundaries, interval, shifts_of, times_in
from billing_ledger.projections.policy import UserInputs, evaluate
from tests.unit.builders import (
    DAY,
    M,
    T,
    checkout_session,
    event,
    example_plans,
    inputs,
    invoice_event,
    sub_event,
    summary_event,
)
from tests.unit.projections.test_order_independence import USERS, ledgers

Json = dict[str, Any]
PLANS = example_plans()


def checkout(created: int = T) -> Json:
    return event("checkout.session.completed", checkout_session(), id="evt_cs", created=created)


LIVES: dict[str, list[Json]] = {
    "paid": [
        checkout(),
        sub_event("created", "evt_2", T),
        invoice_event("paid", "evt_5", T + 1, status="paid", amount_paid=2000, attempt_count=1),
    ],
    "trial": [
        checkout(),
        sub_event(
            "created",
            "evt_t",
            T,
            status="trialing",
            trial=(T, T + 14 * DAY),
            period=(T, T + 14 * DAY),
        ),
    ],
    "past_due": [
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event(
            "updated",
            "evt_pd",
            T + M,
            {"status": "active"},
            status="past_due",
            period=(T + M, T + 2 * M),
        ),
        invoice_event("payment_failed", "evt_f", T + M, id="in_4", status="open", attempt_count=1),
    ],
    "scheduled_cancel": [
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event(
            "updated",
            "evt_s",
            T + 10 * DAY,
            {"cancel_at_period_end": False},
            cancel_at_period_end=True,
            cancel_at=T + M,
            canceled_at=T + 10 * DAY,
        ),
        sub_event("deleted", "evt_d", T + M, status="canceled", ended_at=T + M),
    ],
    "summary": [
        checkout(T + 30),
        sub_event("created", "evt_2", T, prices=("price_basic",)),
        summary_event("evt_sum", T + 100, "core", "pro"),
    ],
    "nothing": [],
}


def user_inputs(name: str) -> UserInputs:
    return inputs("u_1", LIVES[name])


def interesting_times(subject: UserInputs) -> list[int]:
    edges = boundaries(subject, PLANS)
    near = {e + d for e in edges for d in (-2, -1, 0, 1, 2)}
    return sorted(near | {T - DAY, T, T + 3 * M, 2**40})


@pytest.mark.parametrize("name", list(LIVES))
def test_every_boundary_and_its_neighbours_answer_as_a_fresh_evaluation(name: str) -> None:
    subject = user_inputs(name)
    answers = Answers(PLANS)
    for at in interesting_times(subject):
        assert answers.entitlements(subject, at) == evaluate(subject, PLANS, at), at


@pytest.mark.parametrize("name", list(LIVES))
@settings(max_examples=60, deadline=None)
@given(offsets=st.lists(st.integers(min_value=-DAY, max_value=3 * M), min_size=1, max_size=40))
def test_any_order_of_times_answers_as_a_fresh_evaluation(name: str, offsets: list[int]) -> None:
    subject = user_inputs(name)
    answers = Answers(PLANS)
    for offset in offsets:
        assert answers.entitlements(subject, T + offset) == evaluate(subject, PLANS, T + offset)


@pytest.mark.parametrize("name", list(LIVES))
@settings(max_examples=60, deadline=None)
@given(offset=st.integers(min_value=-2 * M, max_value=4 * M))
def test_the_interval_of_a_time_is_between_its_nearest_boundaries(name: str, offset: int) -> None:
    subject, at = user_inputs(name), T + offset
    edges = boundaries(subject, PLANS)
    index = bisect.bisect_right(edges, at)
    nearest = (
        edges[index - 1] if index else -(2**63),
        edges[index] if index < len(edges) else None,
    )
    assert interval(times_in(subject), shifts_of(PLANS), at) == nearest


def test_new_inputs_are_evaluated_again() -> None:
    answers = Answers(PLANS)
    before = answers.entitlements(user_inputs("nothing"), T)
    after = answers.entitlements(inputs("u_1", LIVES["paid"]), T + 1)
    assert before.features == ("core",) and after.features == ("core", "pro")


def test_the_oldest_user_is_forgotten_when_full() -> None:
    answers = Answers(PLANS, size=1)
    first = inputs("u_1", [])
    answers.entitlements(first, T)
    answers.entitlements(inputs("u_2", []), T)
    assert list(answers._answers) == ["u_2"]


def test_the_answers_hold_at_most_their_budget_of_snapshots() -> None:
    paid = inputs("u_1", LIVES["paid"])
    assert paid.snapshots
    answers = Answers(PLANS, snapshots=len(paid.snapshots))
    answers.entitlements(paid, T)
    assert answers.held == (1, len(paid.snapshots))
    twin = replace(paid, user_id="u_2")  # the same history under another user
    answers.entitlements(twin, T)  # over budget: u_1 goes
    assert list(answers._answers) == ["u_2"]
    assert answers.held == (1, len(paid.snapshots))
    answers.entitlements(inputs("u_3", []), T)  # nothing held: both fit
    assert answers.held == (2, len(paid.snapshots))


def test_an_answer_keeps_no_inputs_alive() -> None:
    answers = Answers(PLANS)
    subject = inputs("u_1", LIVES["paid"])
    answers.entitlements(subject, T)
    gone = weakref.ref(subject)
    del subject
    gc.collect()
    assert gone() is None  # the caches let them go: so did the answers


def test_the_answers_of_inputs_let_go_are_forgotten() -> None:
    answers = Answers(PLANS)
    answers.entitlements(inputs("u_1", LIVES["paid"]), T)  # nobody holds these inputs
    kept = inputs("u_2", LIVES["paid"])
    answers.entitlements(kept, T)
    assert list(answers._answers) == ["u_2"]
    assert answers.held == (1, len(kept.snapshots))


def walked_times(subject: UserInputs) -> tuple[int, ...]:
    """`times_in` as first written: every int (not bool) in any dataclass, tuple or list."""
    found = {s.created for s in subject.snapshots} | {link.created for link in subject.links}

    def walk(value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, tuple | list):
            for item in value:
                walk(item)
        elif is_dataclass(value) and not isinstance(value, type):
            for f in fields(value):
                walk(getattr(value, f.name))

    for snapshot in subject.snapshots:
        walk(snapshot.state)
    return tuple(sorted(found))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=ledgers())
def test_the_times_found_are_every_whole_number_the_states_hold(events: list[Json]) -> None:
    for user in USERS:
        subject = inputs(user, events)
        assert times_in(subject) == walked_times(subject)


class Level(IntEnum):
    LOW = 7


@dataclass(frozen=True)
class _One:
    value: Any


@dataclass(frozen=True)
class _Odd:
    flag: bool
    ratio: float
    level: Level
    nested: _One
    listed: list[Any]
    text: str
    nothing: None = None


def test_the_times_found_skip_bools_and_floats_and_walk_any_nesting() -> None:
    base = user_inputs("paid")
    odd = _Odd(True, 2.5, Level.LOW, _One((T + 3, False)), [_One(T + 4), [T + 5]], "99")
    first = replace(base.snapshots[0], state=odd)
    subject = replace(base, links=(), snapshots=(first, *base.snapshots))
    assert times_in(subject) == walked_times(subject)
    alone = times_in(replace(subject, snapshots=(first,)))
    assert alone == tuple(sorted({first.created, 7, T + 3, T + 4, T + 5}))
