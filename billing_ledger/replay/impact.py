"""Whose access an operation changes: the policy evaluated on two sets of views, at one time."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import evaluate
from billing_ledger.projections.views import Views


@dataclass(frozen=True)
class FeatureChange:
    """One user whose features differ between two evaluations."""

    user_id: str
    before: tuple[str, ...]
    after: tuple[str, ...]

    def line(self) -> str:
        """`u_1: core, pro -> core (-pro)`."""
        added = [f"+{f}" for f in sorted(set(self.after) - set(self.before))]
        removed = [f"-{f}" for f in sorted(set(self.before) - set(self.after))]
        return (
            f"{self.user_id}: {_names(self.before)} -> {_names(self.after)} "
            f"({' '.join(added + removed)})"
        )


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
    progress: Callable[[int], None] | None = None,
) -> list[FeatureChange]:
    """The users among `users` whose features differ between `before` and `after` at `at`
    (`progress` hears of each user evaluated)."""
    found = []
    for user_id in sorted(set(users)):
        old = features(*before, user_id, at)
        new = features(*after, user_id, at)
        if old != new:
            found.append(FeatureChange(user_id, old, new))
        if progress is not None:
            progress(1)
    return found


def users_of(views: Views, customers: Iterable[str]) -> set[str]:
    """The users linked to any of these customers."""
    return {user for customer in set(customers) for user in views.users_of(customer)}
