"""Explain: the timeline of why a user's access is what it is, for a person to read.

Every line names its cause: a stored event (its id and type, fetchable at
`GET /v1/events/{id}`) or a time rule (grace end, period end), with the features and the
subscription status before and after. The policy and history are the projections' own
(`policy.evaluate`, `history.changes`), so this says exactly what the reads answer.
"""

from __future__ import annotations

from datetime import UTC, datetime

from billing_ledger.projections.history import Change, changes
from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import (
    Entitlements,
    SubscriptionAccess,
    UserInputs,
    access,
    evaluate,
)


def iso(t: int) -> str:
    """Unix seconds as ISO 8601 in UTC."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _features(names: tuple[str, ...]) -> str:
    return "{" + ", ".join(names) + "}"


def _delta(change: Change) -> str:
    added = [f"+{f}" for f in sorted(set(change.features_after) - set(change.features_before))]
    removed = [f"-{f}" for f in sorted(set(change.features_before) - set(change.features_after))]
    return " ".join(added + removed)


def _cause(change: Change) -> str:
    if change.event_id is None:
        return f"rule: {change.reason}"
    return f"event {change.event_id} ({change.event_type}): {change.reason}"


def change_line(change: Change) -> str:
    """`2026-01-01T00:00:00Z  {core} -> {core, pro} (+pro)  event evt_1 (type): reason`."""
    return (
        f"  {iso(change.at)}  {_features(change.features_before)} -> "
        f"{_features(change.features_after)} ({_delta(change)})  {_cause(change)}"
    )


def _subscription_line(sub: SubscriptionAccess) -> str:
    where = f"{sub.id} ({sub.customer_id}, {', '.join(sub.price_ids) or 'no prices'})"
    if sub.grants_access:
        until = iso(sub.access_until) if sub.access_until is not None else "no end"
        return f"  {where}: {sub.status}, grants {_features(sub.features)} until {until}"
    return f"  {where}: {sub.status}, grants nothing: {sub.denied}"


def _now_lines(now: Entitlements, feature: str | None) -> list[str]:
    lines = [f"customers: {', '.join(now.customer_ids)}"]
    lines += [_subscription_line(s) for s in now.subscriptions]
    if now.warnings:
        lines.append(f"warnings: {', '.join(now.warnings)}")
    for name in [feature] if feature else now.features:
        allowed, reason = access(now, name)
        lines.append(f"{name}: {'allowed' if allowed else 'denied'}: {reason}")
    return lines


def _unknown(user_id: str, plans: Plans, at: int, feature: str | None) -> list[str]:
    defaults = [p.id for p in plans.default_plans()]
    lines = [
        f"{user_id} at {iso(at)}: features {_features(plans.default_features())}",
        f"the ledger has never seen {user_id}: no Stripe customer is linked to this user, "
        f"so only the default plans apply ({', '.join(defaults) or 'none'})",
    ]
    if feature:
        allowed = feature in plans.default_features()
        lines.append(f"{feature}: {'allowed' if allowed else 'denied'} (default plans)")
    return lines


def explain(inputs: UserInputs, plans: Plans, at: int, feature: str | None = None) -> list[str]:
    """The lines of `billing-ledger explain`: the state at `at`, then each change and why."""
    if not inputs.links and not inputs.snapshots:
        return _unknown(inputs.user_id, plans, at, feature)
    now = evaluate(inputs, plans, at)
    timeline = [
        c
        for c in changes(inputs, plans, at)
        if feature is None or (feature in c.features_before) != (feature in c.features_after)
    ]
    subject = f" ({feature} only)" if feature else ""
    return [
        f"{inputs.user_id} at {iso(at)}: features {_features(now.features)}",
        f"timeline{subject}, oldest first (events: GET /v1/events/{{id}}):",
        *([change_line(c) for c in timeline] or ["  no change: the default plans throughout"]),
        *_now_lines(now, feature),
    ]
