"""Entitlements reused across `at` while nothing that decides them can change.

`evaluate` costs a few hundred microseconds, more than the rest of a read. Its answer is a
step function of `at`: every rule compares `at` with a time found in the inputs (an event's
`created`, a period end, `cancel_at`, `trial_end`, ...) shifted by one of the policy's
constants (leeway, grace, the trial-ending window). Between two consecutive such instants
the answer cannot change, so one evaluation serves every `at` in that interval, for as long
as the user's inputs stay the same object (the views cache replaces it when they move).
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from operator import attrgetter
from typing import Any

from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import (
    TRIAL_ENDING_WINDOW,
    Entitlements,
    UserInputs,
    evaluate,
)

# An answer serves only while a read cache still holds the same inputs (it is checked by
# identity), so it refers to them weakly: an answer never keeps inputs alive that both caches
# have let go (when it held them, 60,000 snapshots of such inputs were another 60-90 MiB
# beside the present cache's). What is left is the answer itself, about 1.4 KB a user
# (tracemalloc, bench/read.py's users): 12,000 users, about 17 MiB at most, hold the 10,000
# users of bench/read.py; the snapshots bound keeps users of long histories (more times to
# remember) from taking more.
CACHE_SIZE = 12_000
CACHE_SNAPSHOTS = 60_000


# How `_add_times` walks a value of each type, found once per type: a getter of its fields
# (a dataclass), or one of these. A read walks every snapshot of the user: asking `fields()`
# and `isinstance` again for every value cost more than the evaluation it saves.
_SKIP, _TIME, _ITEMS = "skip", "time", "items"
_Walk = str | Callable[[Any], tuple[Any, ...]]
_WALKS: dict[type, _Walk] = {}


def _walk_of(kind: type) -> _Walk:
    if issubclass(kind, bool):
        return _SKIP
    if issubclass(kind, int):
        return _TIME
    if issubclass(kind, tuple | list):
        return _ITEMS
    if is_dataclass(kind):
        names = [f.name for f in fields(kind)]
        if len(names) > 1:
            return attrgetter(*names)  # every field's value at once, as a tuple
        return lambda value: tuple(getattr(value, name) for name in names)
    return _SKIP


def _add_times(value: Any, found: set[int]) -> None:
    """Every whole number inside a snapshot's state, into `found`: the times the rules may
    compare with."""
    kind = type(value)
    walk = _WALKS.get(kind)
    if walk is None:
        walk = _WALKS[kind] = _walk_of(kind)
    if walk is _TIME:
        found.add(value)
    elif walk is _ITEMS:
        for item in value:
            _add_times(item, found)
    elif not isinstance(walk, str):  # a dataclass (every other walk is _SKIP)
        # Most fields are a plain int, a str or None: decided here, without a call each.
        for item in walk(value):
            if type(item) is int:
                found.add(item)
            elif item is not None and type(item) is not str:
                _add_times(item, found)


def times_in(inputs: UserInputs) -> tuple[int, ...]:
    """Every time the inputs hold, sorted: the rules compare `at` with these, shifted."""
    times = {s.created for s in inputs.snapshots}
    times.update([link.created for link in inputs.links])
    for snapshot in inputs.snapshots:
        _add_times(snapshot.state, times)
    return tuple(sorted(times))


def shifts_of(plans: Plans) -> tuple[int, ...]:
    """How far from a time of the inputs a rule may flip: the policy's constants, each side."""
    offsets = (0, plans.leeway_seconds, plans.grace_seconds, -TRIAL_ENDING_WINDOW)
    # A rule `at < t` flips between t-1 and t, `at <= t` between t and t+1: mark both sides.
    return tuple(sorted({d + e for d in offsets for e in (-1, 0, 1)}))


def boundaries(inputs: UserInputs, plans: Plans) -> tuple[int, ...]:
    """Sorted instants around which `evaluate(inputs, plans, at)` may change its answer."""
    shifts = shifts_of(plans)
    return tuple(sorted({t + shift for t in times_in(inputs) for shift in shifts}))


def interval(times: tuple[int, ...], shifts: tuple[int, ...], at: int) -> tuple[int, int | None]:
    """The boundaries nearest `at`: the greatest at or before it (-2**63: none) and the least
    after it (None: none), by one bisection per shift instead of sorting every boundary."""
    low, high = -(2**63), None
    for shift in shifts:
        index = bisect.bisect_right(times, at - shift)  # the times t with t + shift <= at
        if index > 0:
            low = max(low, times[index - 1] + shift)
        if index < len(times):
            above = times[index] + shift
            high = above if high is None else min(high, above)
    return low, high


@dataclass(frozen=True, slots=True)
class _Answer:
    inputs: weakref.ref[UserInputs]  # the answer serves these inputs only, while they live
    snapshots: int  # how many they hold
    times: tuple[int, ...]
    low: int  # the answer holds for low <= at < high
    high: int | None
    result: Entitlements


class Answers:
    """Per user: the last evaluation and the interval of `at` it holds for."""

    def __init__(
        self, plans: Plans, size: int = CACHE_SIZE, snapshots: int = CACHE_SNAPSHOTS
    ) -> None:
        self.plans = plans
        self.size = size
        self.snapshots = snapshots
        self._shifts = shifts_of(plans)
        self._answers: dict[str, _Answer] = {}
        self._held = 0  # snapshots of the inputs the remembered answers were evaluated from

    def entitlements(self, inputs: UserInputs, at: int) -> Entitlements:
        """`evaluate(inputs, plans, at)`, computed again only when `at` leaves its interval."""
        found = self._answers.get(inputs.user_id)
        if found is not None and found.inputs() is not inputs:
            found = None  # evaluated from other inputs: of no use to these
        if found is not None and found.low <= at and (found.high is None or at < found.high):
            return found.result
        times = found.times if found is not None else times_in(inputs)
        answer = self._evaluate(inputs, at, times)
        self._remember(inputs.user_id, answer)
        return answer.result

    def _evaluate(self, inputs: UserInputs, at: int, times: tuple[int, ...]) -> _Answer:
        low, high = interval(times, self._shifts, at)
        result = evaluate(inputs, self.plans, at)
        return _Answer(weakref.ref(inputs), len(inputs.snapshots), times, low, high, result)

    def _remember(self, user_id: str, answer: _Answer) -> None:
        replaced = self._answers.pop(user_id, None)
        if replaced is not None:
            self._held -= replaced.snapshots
        self._answers[user_id] = answer
        self._held += answer.snapshots
        # Forget the least recently evaluated until both bounds hold and the oldest one's
        # inputs still live (never the one just put): the caches let go of the least recently
        # read first, so the answers that can no longer serve are found at the front.
        while len(self._answers) > 1 and (
            len(self._answers) > self.size
            or self._held > self.snapshots
            or self._answers[next(iter(self._answers))].inputs() is None
        ):
            oldest = self._answers.pop(next(iter(self._answers)))
            self._held -= oldest.snapshots

    @property
    def held(self) -> tuple[int, int]:
        """(users, snapshots) of the inputs the remembered answers were evaluated from."""
        return len(self._answers), self._held
