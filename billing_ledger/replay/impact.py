"""Whose answers an operation changes: the policy evaluated on two sets of views, at one time.

Each side has its views, its plans and its rules (`policy.Rules`): a new plans file, a
rebuilt projection, or rules fixed since the last replay all show as the users they touch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import CURRENT, Entitlements, Rules, evaluate
from billing_ledger.projections.views import Views

# The parts of an answer besides its features, as a line names them when they differ.
_LISTED = ("warnings", "customer_ids", "plans")
_OTHER = ("subscriptions", "reasons")


@dataclass(frozen=True)
class FeatureChange:
    """One user whose answer differs between two evaluations."""

    user_id: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    details: tuple[str, ...] = ()  # what else differs, when the features do not

    def line(self) -> str:
        """`u_1: core, pro -> core (-pro)`, or `u_2: core (warnings: (none) -> payment_failed)`."""
        if self.before == self.after:
            return f"{self.user_id}: {_names(self.after)} ({'; '.join(self.details)})"
        added = [f"+{f}" for f in sorted(set(self.after) - set(self.before))]
        removed = [f"-{f}" for f in sorted(set(self.before) - set(self.after))]
        return (
            f"{self.user_id}: {_names(self.before)} -> {_names(self.after)} "
            f"({' '.join(added + removed)})"
        )


def _details(old: Entitlements, new: Entitlements) -> tuple[str, ...]:
    before, after = old.to_json(), new.to_json()
    found = [
        f"{key}: {_names(tuple(before[key]))} -> {_names(tuple(after[key]))}"
        for key in _LISTED
        if before[key] != after[key]
    ]
    found += [f"{key} differ" for key in _OTHER if before[key] != after[key]]
    return tuple(found)


def _names(features: tuple[str, ...]) -> str:
    return ", ".join(features) or "(none)"


def features(views: Views, plans: Plans, user_id: str, at: int) -> tuple[str, ...]:
    """The user's features at `at`, as these views and plans answer."""
    return evaluate(views.load_inputs(user_id), plans, at).features


def changes(
    users: Iterable[str],
    before: tuple[Views, Plans],
    after: tuple[Views, Plans],
    at: int,
    rules: tuple[Rules, Rules] = (CURRENT, CURRENT),
    progress: Callable[[int], None] | None = None,
) -> list[FeatureChange]:
    """The users among `users` whose answer differs between `before` and `after` at `at`
    (`progress` hears of each user evaluated)."""
    found = []
    for user_id in sorted(set(users)):
        old = evaluate(before[0].load_inputs(user_id), before[1], at, rules[0])
        new = evaluate(after[0].load_inputs(user_id), after[1], at, rules[1])
        if old.to_json() != new.to_json():
            details = _details(old, new)
            found.append(FeatureChange(user_id, old.features, new.features, details))
        if progress is not None:
            progress(1)
    return found


def users_of(views: Views, customers: Iterable[str]) -> set[str]:
    """The users linked to any of these customers."""
    return {user for customer in set(customers) for user in views.users_of(customer)}
