"""The access policy (STRIPE-SEMANTICS section 7, CONTRACT.md "Precise rules"), pure.

`evaluate(inputs, plans, at)` answers what a user may use at `at`, from every snapshot of
the user's linked customers. Nothing here reads a clock: the time rules (grace window,
period end plus leeway, cancel_at) are evaluated against `at`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from billing_ledger.ledger.canonical import (
    CUSTOMER,
    ENTITLEMENT_SUMMARY,
    INVOICE,
    SUBSCRIPTION,
    Customer,
    EntitlementSummary,
    Invoice,
    Snapshot,
    State,
    Subscription,
)
from billing_ledger.projections.fold import (
    FAILED,
    TERMINAL_SUBSCRIPTION,
    ObjectKey,
    attempts,
    by_object,
    is_ambiguous,
    past_due_since,
    state_at,
)
from billing_ledger.projections.links import LinkRow, customer_of, links_of
from billing_ledger.projections.plans import DAY, Plan, Plans

TRIAL_ENDING_WINDOW = 3 * DAY

# Why a grant ends at access_until: the rule names history uses.
RULE_PERIOD_END = "period end + leeway passed"
RULE_GRACE = "past_due grace ended"
RULE_CANCEL_AT = "cancel_at reached"
RULE_ENDED_AT = "ended_at reached"


@dataclass(frozen=True)
class UserInputs:
    """A user's links and every snapshot of every object of the customers they link."""

    user_id: str
    links: tuple[LinkRow, ...]
    snapshots: tuple[Snapshot, ...]


def gather(user_id: str, snapshots: Iterable[Snapshot]) -> UserInputs:
    """Pick out one user's inputs from a pile of snapshots (tests, explain, replay)."""
    pile = tuple(snapshots)
    links = tuple(
        sorted(
            (row for s in pile for row in links_of(s) if row.user_id == user_id),
            key=lambda r: (r.created, r.customer_id, r.event_id, r.via),
        )
    )
    customers = {row.customer_id for row in links}
    return UserInputs(user_id, links, tuple(s for s in pile if customer_of(s) in customers))


@dataclass(frozen=True)
class SubscriptionAccess:
    """One subscription as the policy sees it at `at`."""

    id: str
    customer_id: str | None
    status: str
    price_ids: tuple[str, ...]
    current_period_end: int | None
    cancel_at: int | None
    cancel_at_period_end: bool
    grants_access: bool
    access_until: int | None
    trial_end: int | None = None
    past_due_since: int | None = None
    event_id: str = ""  # the event whose snapshot the fold chose
    plan_ids: tuple[str, ...] = ()  # plans its items select
    features: tuple[str, ...] = ()  # what those plans would grant
    denied: str | None = None  # why it grants nothing, when it does not
    until_rule: str | None = None  # which rule sets access_until

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT.md subscription object."""
        return {
            "id": self.id,
            "customer_id": self.customer_id,
            "status": self.status,
            "price_ids": list(self.price_ids),
            "current_period_end": self.current_period_end,
            "cancel_at": self.cancel_at,
            "cancel_at_period_end": self.cancel_at_period_end,
            "grants_access": self.grants_access,
            "access_until": self.access_until,
            "trial_end": self.trial_end,
            "past_due_since": self.past_due_since,
        }


@dataclass(frozen=True)
class Entitlements:
    """What a user may use at one time, and why."""

    user_id: str
    features: tuple[str, ...]
    plans: tuple[str, ...]
    customer_ids: tuple[str, ...]
    subscriptions: tuple[SubscriptionAccess, ...]
    warnings: tuple[str, ...]
    reasons: Mapping[str, str] = field(default_factory=dict)  # feature -> why granted
    denials: Mapping[str, str] = field(default_factory=dict)  # feature -> why not
    # Objects only a re-fetch can settle: a same-second tie of differing states (S17) or a
    # truncated entitlement summary (S56). The live pipeline records an observation.
    needs_refetch: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT.md entitlements body, minus `position` and `at` (added by http/)."""
        return {
            "user_id": self.user_id,
            "features": list(self.features),
            "plans": list(self.plans),
            "customer_ids": list(self.customer_ids),
            "subscriptions": [s.to_json() for s in self.subscriptions],
            "warnings": list(self.warnings),
            "reasons": dict(sorted(self.reasons.items())),
        }


# -- one subscription -------------------------------------------------------------------


def _ends(sub: Subscription, since: int | None, plans: Plans) -> list[tuple[int, str]]:
    """Every time at which this grant would stop by itself, with the rule's name."""
    ends = [
        (sub.current_period_end + plans.leeway_seconds, RULE_PERIOD_END)
        if sub.current_period_end is not None
        else None,
        (since + plans.grace_seconds, RULE_GRACE) if since is not None else None,
        # A scheduled cancellation keeps access until it happens (P5), not a second longer.
        (sub.cancel_at, RULE_CANCEL_AT) if sub.cancel_at is not None else None,
        (sub.ended_at, RULE_ENDED_AT) if sub.ended_at is not None else None,
    ]
    return sorted(e for e in ends if e is not None)


def _status_denial(sub: Subscription, since: int | None, plans: Plans, at: int) -> str | None:
    if sub.status in plans.grant_statuses:
        return None
    if sub.status == "past_due" and since is not None:
        if at < since + plans.grace_seconds:
            return None
        return f"{sub.id} is past_due beyond the grace period"
    return f"{sub.id} is {sub.status}"


def _time_denial(sub: Subscription, ends: list[tuple[int, str]], at: int) -> str | None:
    passed = [rule for when, rule in ends if at >= when]
    return f"{sub.id}: {passed[0]}" if passed else None


def _plans_of(sub: Subscription, plans: Plans) -> list[Plan]:
    found = {p.id: p for p in map(plans.plan_for_item, sub.items) if p is not None}
    return [found[k] for k in sorted(found)]


def subscription_access(
    snapshots: Iterable[Snapshot], plans: Plans, at: int, deleted_customers: frozenset[str]
) -> SubscriptionAccess | None:
    """Apply P1-P3 and P5 to one subscription's state at `at`."""
    snaps = list(snapshots)
    chosen = state_at(snaps, at)
    if chosen is None or not isinstance(chosen.state, Subscription):
        return None
    sub = chosen.state
    since = past_due_since(snaps, at)
    ends = _ends(sub, since if sub.status == "past_due" else None, plans)
    denied = _status_denial(sub, since, plans, at) or _time_denial(sub, ends, at)
    if sub.customer_id in deleted_customers:
        denied = f"customer {sub.customer_id} is deleted"
    granted = denied is None
    matched = _plans_of(sub, plans)
    return SubscriptionAccess(
        id=sub.id,
        customer_id=sub.customer_id,
        status=sub.status,
        price_ids=tuple(sorted({i.price_id for i in sub.items if i.price_id})),
        current_period_end=sub.current_period_end,
        cancel_at=sub.cancel_at,
        cancel_at_period_end=sub.cancel_at_period_end,
        grants_access=granted,
        access_until=ends[0][0] if granted and ends else None,
        trial_end=sub.trial_end,
        past_due_since=since,
        event_id=chosen.event_id,
        plan_ids=tuple(p.id for p in matched),
        features=tuple(sorted({f for p in matched for f in p.features})),
        denied=denied,
        until_rule=ends[0][1] if granted and ends else None,
    )


# -- the user ---------------------------------------------------------------------------


def linked_customers(links: Iterable[LinkRow], at: int) -> tuple[str, ...]:
    """The user's customers as of `at`, sorted."""
    return tuple(sorted({row.customer_id for row in links if row.created <= at}))


@dataclass
class _Grants:
    """Features being collected, each with the first reason found."""

    reasons: dict[str, str] = field(default_factory=dict)
    denials: dict[str, str] = field(default_factory=dict)

    def grant(self, features: Iterable[str], reason: str) -> None:
        for feature in features:
            self.reasons.setdefault(feature, reason)

    def deny(self, features: Iterable[str], reason: str) -> None:
        for feature in features:
            self.denials.setdefault(feature, reason)


def _chosen(objects: Mapping[ObjectKey, list[Snapshot]], key: ObjectKey, at: int) -> State | None:
    chosen = state_at(objects.get(key, ()), at)
    return chosen.state if chosen is not None else None


def _summary(
    objects: Mapping[ObjectKey, list[Snapshot]], customer_id: str, at: int
) -> EntitlementSummary | None:
    """The customer's entitlement summary, if it may be trusted whole (S56)."""
    chosen = state_at(objects.get((ENTITLEMENT_SUMMARY, customer_id), ()), at)
    if chosen is None or not isinstance(chosen.state, EntitlementSummary):
        return None
    return chosen.state if chosen.state.complete or chosen.observation else None


def _grant_customer(
    grants: _Grants,
    subs: list[SubscriptionAccess],
    summary: EntitlementSummary | None,
    plans: Plans,
) -> None:
    """One customer's features: its plans, or its complete summary gated by P1 (S16, S21)."""
    granting = [s for s in subs if s.grants_access]
    for s in subs:
        if not s.grants_access and s.denied:
            grants.deny(s.features, s.denied)
    if summary is not None and granting:
        # The summary is customer-wide: applied whole, in place of every plan's features.
        gate = f"{granting[0].id} ({granting[0].status})"
        grants.grant(
            summary.lookup_keys, f"entitlement summary of {summary.customer_id} via {gate}"
        )
        unlisted = {f for s in granting for f in s.features} - set(summary.lookup_keys)
        grants.deny(unlisted, f"the entitlement summary of {summary.customer_id} does not list it")
        return
    for s in granting:
        for plan in (p for p in map(plans.by_id, s.plan_ids) if p is not None):
            grants.grant(plan.features, f"plan {plan.id} via {s.id} ({s.status})")


def _held_plans(plans: Plans, subs: Iterable[SubscriptionAccess], features: set[str]) -> list[str]:
    held = {p.id for p in plans.default_plans()}
    for s in subs:
        for plan in (p for p in map(plans.by_id, s.plan_ids) if p is not None):
            if s.grants_access and set(plan.features) <= features:
                held.add(plan.id)
    return sorted(held)


def _latest_invoice(
    objects: Mapping[ObjectKey, list[Snapshot]], subscription_id: str, at: int
) -> tuple[Invoice, list[Snapshot]] | None:
    found: list[tuple[tuple[int, str], Invoice, list[Snapshot]]] = []
    for (kind, _), snaps in objects.items():
        chosen = state_at(snaps, at) if kind == INVOICE else None
        if chosen is not None and isinstance(chosen.state, Invoice):
            inv = chosen.state
            if inv.subscription_id == subscription_id and not inv.deleted:
                found.append(((inv.created or chosen.created, inv.id), inv, snaps))
    if not found:
        return None
    _, invoice, snaps = max(found, key=lambda f: f[0])
    return invoice, snaps


def _payment_failed(
    sub: SubscriptionAccess, objects: Mapping[ObjectKey, list[Snapshot]], at: int
) -> bool:
    if sub.status in ("past_due", "unpaid"):
        return True
    latest = _latest_invoice(objects, sub.id, at)
    if latest is None or latest[0].status not in ("open", None):
        return False
    tried = attempts(latest[1], at)
    if not tried:
        return False
    last = tried[-1].number
    return {a.outcome for a in tried if a.number == last} == {FAILED}


def _cancellation_scheduled(sub: SubscriptionAccess, at: int) -> bool:
    if sub.cancel_at is not None:
        return at < sub.cancel_at
    return sub.cancel_at_period_end


def _trial_ending(sub: SubscriptionAccess, at: int) -> bool:
    return (
        sub.status == "trialing"
        and sub.trial_end is not None
        and sub.trial_end - at < TRIAL_ENDING_WINDOW
    )


def _warnings(
    subs: Iterable[SubscriptionAccess],
    objects: Mapping[ObjectKey, list[Snapshot]],
    deleted: frozenset[str],
    at: int,
) -> tuple[str, ...]:
    found: set[str] = set()
    for s in subs:
        if s.status in TERMINAL_SUBSCRIPTION or s.customer_id in deleted:
            continue  # an ended subscription warns of nothing
        if _payment_failed(s, objects, at):
            found.add("payment_failed")
        if _cancellation_scheduled(s, at):
            found.add("cancellation_scheduled")
        if _trial_ending(s, at):
            found.add("trial_ending")
    return tuple(sorted(found))


def _needs_refetch(
    objects: Mapping[ObjectKey, list[Snapshot]], customers: Iterable[str], at: int
) -> tuple[str, ...]:
    ids = {oid for (_, oid), snaps in objects.items() if is_ambiguous(snaps, at)}
    truncated = {
        cid
        for cid in customers
        if (chosen := state_at(objects.get((ENTITLEMENT_SUMMARY, cid), ()), at)) is not None
        and isinstance(chosen.state, EntitlementSummary)
        and not (chosen.state.complete or chosen.observation)
    }
    return tuple(sorted(ids | truncated))


def _deleted(
    objects: Mapping[ObjectKey, list[Snapshot]], customers: Iterable[str], at: int
) -> frozenset[str]:
    """Customers deleted at or before `at`: they never grant again."""
    return frozenset(
        cid
        for cid in customers
        if isinstance(state := _chosen(objects, (CUSTOMER, cid), at), Customer) and state.deleted
    )


def evaluate(inputs: UserInputs, plans: Plans, at: int) -> Entitlements:
    """The user's entitlements at `at` (policy P1-P5 over the user's snapshots)."""
    customers = linked_customers(inputs.links, at)
    linked = set(customers)
    objects = by_object(s for s in inputs.snapshots if customer_of(s) in linked)
    deleted = _deleted(objects, customers, at)
    subs = sorted(
        (
            access
            for (kind, _), snaps in objects.items()
            if kind == SUBSCRIPTION
            and (access := subscription_access(snaps, plans, at, deleted)) is not None
        ),
        key=lambda s: (s.customer_id or "", s.id),
    )
    grants = _Grants()
    for cid in customers:
        mine = [s for s in subs if s.customer_id == cid]
        _grant_customer(grants, mine, _summary(objects, cid, at), plans)
    for plan in plans.default_plans():
        grants.grant(plan.features, f"plan {plan.id} (default)")
    features = set(grants.reasons)
    return Entitlements(
        user_id=inputs.user_id,
        features=tuple(sorted(features)),
        plans=tuple(_held_plans(plans, subs, features)),
        customer_ids=customers,
        subscriptions=tuple(subs),
        warnings=_warnings(subs, objects, deleted, at),
        reasons=dict(sorted(grants.reasons.items())),
        denials={f: r for f, r in sorted(grants.denials.items()) if f not in features},
        needs_refetch=_needs_refetch(objects, customers, at),
    )


def access(entitlements: Entitlements, feature: str) -> tuple[bool, str]:
    """Whether the user may use `feature`, with a reason a person can read."""
    if feature in entitlements.features:
        return True, entitlements.reasons[feature]
    return False, entitlements.denials.get(feature, f"no plan grants {feature}")
