"""Every change of a user's features over time, and the `explain` narrative (pure).

History is `evaluate` re-run at every moment something could change: each snapshot's or
link's `created`, and each rule time (`access_until`) an evaluation announces.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from billing_ledger.ledger.canonical import (
    CHECKOUT_SESSION,
    CUSTOMER,
    ENTITLEMENT_SUMMARY,
    INVOICE,
    LINK,
    SUBSCRIPTION,
    Customer,
    EntitlementSummary,
    Snapshot,
)
from billing_ledger.projections.fold import ObjectKey, by_object, state_at
from billing_ledger.projections.links import customer_of
from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import (
    Entitlements,
    SubscriptionAccess,
    UserInputs,
    access,
    evaluate,
)


@dataclass(frozen=True)
class Change:
    """One change of the user's feature set, and what caused it."""

    at: int
    event_id: str | None  # None: a rule took effect (grace end, period end)
    event_type: str | None
    features_before: tuple[str, ...]
    features_after: tuple[str, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT.md history entry."""
        return {
            "at": self.at,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "features_before": list(self.features_before),
            "features_after": list(self.features_after),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class _Cause:
    event_id: str | None
    event_type: str | None
    reason: str


def _event_times(inputs: UserInputs, until: int) -> set[int]:
    times = {s.created for s in inputs.snapshots} | {row.created for row in inputs.links}
    return {t for t in times if t <= until}


def _snapshot_by_event(inputs: UserInputs, event_id: str) -> Snapshot | None:
    return next((s for s in inputs.snapshots if s.event_id == event_id), None)


def _status_change(before: SubscriptionAccess | None, after: SubscriptionAccess) -> str:
    was = before.status if before is not None else "unseen"
    return f"{after.id} {was} -> {after.status}"


def _subscription_cause(
    inputs: UserInputs, before: Entitlements | None, after: Entitlements, at: int
) -> _Cause | None:
    """A subscription whose grant changed because of a snapshot created at `at`."""
    earlier = {s.id: s for s in (before.subscriptions if before else ())}
    for sub in after.subscriptions:
        old = earlier.get(sub.id)
        if old is not None and (old.grants_access, old.features) == (
            sub.grants_access,
            sub.features,
        ):
            continue
        chosen = _snapshot_by_event(inputs, sub.event_id)
        if chosen is not None and chosen.created == at:
            return _Cause(sub.event_id, chosen.event_type, _status_change(old, sub))
    return None


def _link_cause(
    inputs: UserInputs, before: Entitlements | None, after: Entitlements, at: int
) -> _Cause | None:
    """A link, created at `at`, that brought a new customer to the user."""
    known = set(before.customer_ids if before else ())
    for row in sorted(inputs.links, key=lambda r: (r.customer_id, r.event_id)):
        if row.created == at and row.customer_id not in known:
            carrier = _snapshot_by_event(inputs, row.event_id)
            event_type = carrier.event_type if carrier is not None else None
            reason = f"{row.customer_id} linked to {row.user_id} via {row.via}"
            return _Cause(row.event_id, event_type, reason)
    return None


# Which object most likely explains a change nobody else claimed, most likely first.
_KIND_PRIORITY = (ENTITLEMENT_SUMMARY, CUSTOMER, SUBSCRIPTION, LINK, CHECKOUT_SESSION, INVOICE)


def _chosen_at(objects: dict[ObjectKey, list[Snapshot]], at: int) -> list[Snapshot]:
    """Snapshots created at `at` that the fold chose for their object, likeliest cause first."""
    chosen = [state_at(snaps, at) for snaps in objects.values()]
    found = [s for s in chosen if s is not None and s.created == at]
    rank = {kind: i for i, kind in enumerate(_KIND_PRIORITY)}
    return sorted(found, key=lambda s: (rank.get(s.kind, len(rank)), s.object_id))


def _describe(s: Snapshot) -> str:
    state = s.state
    if isinstance(state, EntitlementSummary):
        listed = ", ".join(state.lookup_keys) or "nothing"
        return f"entitlement summary of {state.customer_id} lists {listed}"
    if isinstance(state, Customer) and state.deleted:
        return f"customer {state.id} deleted"
    return f"{s.event_type} for {s.object_id}"


def _other_cause(inputs: UserInputs, after: Entitlements, at: int) -> _Cause | None:
    """Any other chosen snapshot of `at` (an entitlement summary, a deleted customer, ...)."""
    linked = set(after.customer_ids)
    objects = by_object(s for s in inputs.snapshots if customer_of(s) in linked)
    for s in _chosen_at(objects, at):
        return _Cause(s.event_id, s.event_type, _describe(s))
    return None


def _rule_cause(before: Entitlements | None, at: int) -> _Cause | None:
    """A time rule: the earlier evaluation said this grant would end at `at`."""
    for sub in before.subscriptions if before else ():
        if sub.grants_access and sub.access_until == at:
            return _Cause(None, None, f"{sub.until_rule} for {sub.id}")
    return None


def _cause(inputs: UserInputs, before: Entitlements | None, after: Entitlements, at: int) -> _Cause:
    return (
        _subscription_cause(inputs, before, after, at)
        or _link_cause(inputs, before, after, at)
        or _rule_cause(before, at)
        or _other_cause(inputs, after, at)
        or _Cause(None, None, "features changed")
    )


def changes(inputs: UserInputs, plans: Plans, until: int) -> list[Change]:
    """Every change of the user's features up to `until`, oldest first."""
    pending = sorted(_event_times(inputs, until))
    heapq.heapify(pending)
    seen: set[int] = set()
    features = plans.default_features()  # what a user the ledger has never seen has
    before: Entitlements | None = None
    found: list[Change] = []
    while pending:
        at = heapq.heappop(pending)
        if at in seen:
            continue
        seen.add(at)
        now = evaluate(inputs, plans, at)
        for sub in now.subscriptions:
            # A grant ends by itself at access_until: evaluate again then.
            if sub.access_until is not None and sub.access_until <= until:
                heapq.heappush(pending, sub.access_until)
        if now.features != features:
            cause = _cause(inputs, before, now, at)
            found.append(
                Change(at, cause.event_id, cause.event_type, features, now.features, cause.reason)
            )
        features, before = now.features, now
    return found


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _diff(change: Change) -> str:
    added = sorted(set(change.features_after) - set(change.features_before))
    removed = sorted(set(change.features_before) - set(change.features_after))
    return " ".join([*(f"+{f}" for f in added), *(f"-{f}" for f in removed)])


def _subscription_line(sub: SubscriptionAccess) -> str:
    if sub.grants_access:
        until = _iso(sub.access_until) if sub.access_until is not None else "no end"
        return f"  {sub.id} ({sub.customer_id}): {sub.status}, grants until {until}"
    return f"  {sub.id} ({sub.customer_id}): {sub.status}, grants nothing: {sub.denied}"


def explain(inputs: UserInputs, plans: Plans, at: int, feature: str | None = None) -> list[str]:
    """Human lines for `billing-ledger explain`: each change, its cause, the state at `at`."""
    now = evaluate(inputs, plans, at)
    lines = [f"{inputs.user_id} at {_iso(at)}: features {', '.join(now.features) or '(none)'}"]
    for c in changes(inputs, plans, at):
        if feature is not None and (feature in c.features_before) == (feature in c.features_after):
            continue
        cause = c.event_id or "rule"
        lines.append(f"{_iso(c.at)}  {_diff(c):<16} {c.reason}  [{cause}]")
    lines.append(f"customers: {', '.join(now.customer_ids) or '(none)'}")
    lines.extend(_subscription_line(s) for s in now.subscriptions)
    if now.warnings:
        lines.append(f"warnings: {', '.join(now.warnings)}")
    if feature is not None:
        allowed, reason = access(now, feature)
        lines.append(f"{feature}: {'allowed' if allowed else 'denied'} ({reason})")
    return lines
