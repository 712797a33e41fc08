"""The access policy (STRIPE-SEMANTICS section 7, CONTRACT.md "Precise rules"), pure.

`evaluate(inputs, plans, at)` answers what a user may use at `at`, from every snapshot of
the user's linked customers. Nothing here reads a clock: the time rules (grace window,
period end plus leeway, ended_at) are evaluated against `at`. `fold_objects` folds each
object at `at`; `decide` applies the policy to those folds (history feeds it its own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from billing_ledger.ledger.canonical import (
    CHARGE,
    CHECKOUT_SESSION,
    CUSTOMER,
    DISPUTE,
    ENTITLEMENT_SUMMARY,
    INVOICE,
    SALE,
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
    Attempt,
    ObjectKey,
    ambiguous_in,
    attempts,
    by_object,
    eligible,
    past_due_in,
    ranked,
)
from billing_ledger.projections.links import LinkRow, Span, customer_of, spans
from billing_ledger.projections.plans import DAY, Plan, Plans
from billing_ledger.projections.purchases import PurchaseAccess, payings, purchase
from billing_ledger.projections.shapes import json_of

TRIAL_ENDING_WINDOW = 3 * DAY

# Why a grant ends at access_until: the rule names history uses.
RULE_PERIOD_END = "period end + leeway passed"
RULE_GRACE = "past_due grace ended"
RULE_ENDED_AT = "ended_at reached"

# The precise rules' version (CONTRACT.md). 2: same-second summaries by their witness, the
# summary trusted only until a subscription stops granting, payment_failed whatever the
# invoice's status became, cancel_at bounded like any period end, metadata links that move.
RULES_VERSION = 2


@dataclass(frozen=True)
class Rules:
    """Which version of the precise rules to answer by (a dry run compares two)."""

    version: int = RULES_VERSION

    @property
    def legacy(self) -> bool:
        """Version 1: the rules before issue 15's five fixes."""
        return self.version < 2


CURRENT = Rules()
LEGACY = Rules(1)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class UserInputs:
    """A user's links and every snapshot of every object of the customers they link."""

    user_id: str
    links: tuple[LinkRow, ...]
    snapshots: tuple[Snapshot, ...]


@dataclass(frozen=True, slots=True)
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
    stopped_granting: int | None = None  # when it last entered a state granting nothing
    quantity: int | None = None  # the items' quantity (seats), the largest of several

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT.md subscription object."""
        return json_of(
            self,
            "id customer_id status price_ids current_period_end cancel_at cancel_at_period_end "
            "grants_access access_until trial_end past_due_since quantity",
        )


@dataclass(frozen=True, slots=True)
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
    purchases: tuple[PurchaseAccess, ...] = ()  # one-time purchases (projections/purchases)

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT.md entitlements body, minus `position` and `at` (added by http/)."""
        fields = json_of(
            self, "user_id features plans customer_ids subscriptions purchases warnings"
        )
        return {**fields, "reasons": dict(sorted(self.reasons.items()))}


# -- one subscription -------------------------------------------------------------------


def _ends(
    sub: Subscription, since: int | None, plans: Plans, rules: Rules = CURRENT
) -> list[tuple[int, str]]:
    """Every time at which this grant would stop by itself, with the rule's name."""
    ends = [
        (sub.current_period_end + plans.leeway_seconds, RULE_PERIOD_END)
        if sub.current_period_end is not None
        else None,
        (since + plans.grace_seconds, RULE_GRACE) if since is not None else None,
        (sub.ended_at, RULE_ENDED_AT) if sub.ended_at is not None else None,
        # P5: cancel_at ends nothing by itself; only rules 1 cut access there.
        (sub.cancel_at, "cancel_at reached")
        if rules.legacy and sub.cancel_at is not None
        else None,
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


@dataclass(frozen=True)
class Folded:
    """One object as the fold stands at `at`: its chosen snapshot and what its history adds."""

    chosen: Snapshot
    past_due_since: int | None = None
    attempts: tuple[Attempt, ...] = ()
    ambiguous: bool = False
    # The latest `created` of a snapshot in a status that grants nothing (not past_due).
    denied_since: int | None = None


def denies(s: Snapshot, plans: Plans) -> bool:
    """Whether a snapshot's status grants nothing (past_due grants for the grace window)."""
    state = s.state
    return (
        isinstance(state, Subscription)
        and state.status not in plans.grant_statuses
        and state.status != "past_due"  # past_due grants for the grace window
    )


def fold_object(snapshots: Iterable[Snapshot], plans: Plans, at: int) -> Folded | None:
    """One object's fold at `at`, or None when no snapshot of it is created by then."""
    snaps = eligible(snapshots, at)
    if len(snaps) == 1:  # each object of a read at now: its one snapshot, no tie to judge
        order, ambiguous = snaps, False
    else:
        keyed = ranked(snaps)  # one sort serves the choice, the episode and the tie
        if not keyed:
            return None
        order, ambiguous = [s for _, s in keyed], ambiguous_in(keyed)
    chosen = order[-1]
    denied = [s.created for s in snaps if denies(s, plans)]
    kind = chosen.kind
    return Folded(
        chosen=chosen,
        past_due_since=past_due_in(order) if kind == SUBSCRIPTION else None,
        attempts=attempts(snaps, at) if kind == INVOICE else (),
        ambiguous=ambiguous,
        denied_since=max(denied, default=None),
    )


def _access(
    folded: Folded, plans: Plans, at: int, deleted: frozenset[str], rules: Rules = CURRENT
) -> SubscriptionAccess | None:
    """Apply P1-P3 and P5 to one subscription's fold at `at`."""
    chosen = folded.chosen
    if not isinstance(chosen.state, Subscription):
        return None
    sub = chosen.state
    since = folded.past_due_since
    ends = _ends(sub, since if sub.status == "past_due" else None, plans, rules)
    denied = _status_denial(sub, since, plans, at) or _time_denial(sub, ends, at)
    if sub.customer_id in deleted:
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
        stopped_granting=_stopped_granting(folded, sub, plans, at),
        quantity=max((i.quantity for i in sub.items if i.quantity is not None), default=None),
    )


def _stopped_granting(folded: Folded, sub: Subscription, plans: Plans, at: int) -> int | None:
    """When the subscription last entered a state that grants nothing, by `at`."""
    times = [folded.denied_since]
    since = folded.past_due_since
    if sub.status == "past_due" and since is not None and at >= since + plans.grace_seconds:
        times.append(since + plans.grace_seconds)  # past_due beyond grace grants nothing
    return max((t for t in times if t is not None), default=None)


def subscription_access(
    snapshots: Iterable[Snapshot], plans: Plans, at: int, deleted_customers: frozenset[str]
) -> SubscriptionAccess | None:
    """Apply P1-P3 and P5 to one subscription's state at `at`."""
    folded = fold_object(snapshots, plans, at)
    return _access(folded, plans, at, deleted_customers) if folded is not None else None


# -- the user ---------------------------------------------------------------------------

Objects = Mapping[ObjectKey, Folded]


def invoice_rank(folded: Folded) -> tuple[int, str] | None:
    """How late an invoice is among its subscription's (None: it counts for none)."""
    inv = folded.chosen.state
    if not isinstance(inv, Invoice) or inv.deleted or inv.subscription_id is None:
        return None
    return (inv.created or folded.chosen.created, inv.id)


@dataclass(frozen=True)
class Folds:
    """What the policy reads of a user's folded objects at `at`."""

    subscriptions: tuple[Folded, ...]
    summaries: Mapping[str, Folded]  # customer id -> its entitlement summary
    customers: Mapping[str, Folded]  # customer id -> the customer
    latest_invoices: Mapping[str, Folded]  # subscription id -> its latest invoice
    ambiguous: frozenset[str]  # object ids only a re-fetch can settle (S17)
    # One-time purchases' objects, by id (a dispute by its charge's id).
    sessions: Mapping[str, Folded] = field(default_factory=dict)
    sales: Mapping[str, Folded] = field(default_factory=dict)
    charges: Mapping[str, Folded] = field(default_factory=dict)
    disputes: Mapping[str, Folded] = field(default_factory=dict)


def folds_of(objects: Objects) -> Folds:
    """The policy's reading of every folded object."""
    by_kind: dict[str, dict[str, Folded]] = {}
    for (kind, oid), folded in objects.items():
        by_kind.setdefault(kind, {})[oid] = folded
    return Folds(
        subscriptions=tuple(by_kind.get(SUBSCRIPTION, {}).values()),
        summaries=by_kind.get(ENTITLEMENT_SUMMARY, {}),
        customers=by_kind.get(CUSTOMER, {}),
        latest_invoices=_latest_invoices(by_kind.get(INVOICE, {}).values()),
        ambiguous=frozenset(oid for (_, oid), f in objects.items() if f.ambiguous),
        sessions=by_kind.get(CHECKOUT_SESSION, {}),
        sales=by_kind.get(SALE, {}),
        charges=by_kind.get(CHARGE, {}),
        disputes=by_kind.get(DISPUTE, {}),
    )


def link_spans(inputs: UserInputs, rules: Rules = CURRENT) -> tuple[Span, ...]:
    """When each of the user's links holds (rules 1: every link for good)."""
    if rules.legacy:
        return tuple(Span(row.customer_id, row.created) for row in inputs.links)
    return tuple(spans(inputs.user_id, inputs.links, inputs.snapshots))


def customers_at(inputs: UserInputs, at: int, rules: Rules = CURRENT) -> tuple[str, ...]:
    """The user's customers at `at`, sorted: those a link holds them by then."""
    return held(link_spans(inputs, rules), at)


def held(link_spans: Iterable[Span], at: int) -> tuple[str, ...]:
    """The customers these spans hold at `at`, sorted."""
    return tuple(sorted({sp.customer_id for sp in link_spans if sp.holds(at)}))


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


def _chosen(found: Mapping[str, Folded], oid: str) -> State | None:
    folded = found.get(oid)
    return folded.chosen.state if folded is not None else None


def _summary(folds: Folds, customer_id: str) -> Folded | None:
    """The customer's entitlement summary, if it may be trusted whole (S56)."""
    folded = folds.summaries.get(customer_id)
    if folded is None or not isinstance(folded.chosen.state, EntitlementSummary):
        return None
    return folded if folded.chosen.state.complete or folded.chosen.observation else None


def _trusted(summary: Folded | None, subs: list[SubscriptionAccess], rules: Rules) -> bool:
    """A summary is trusted only while no subscription of its customer has stopped granting
    after it (Stripe sends none when a trial ends into paused, STRIPE-SEMANTICS 1.5)."""
    if summary is None:
        return False
    if rules.legacy:
        return True
    created = summary.chosen.created
    return all(s.stopped_granting is None or s.stopped_granting <= created for s in subs)


def _grant_customer(
    grants: _Grants,
    subs: list[SubscriptionAccess],
    summary: Folded | None,
    plans: Plans,
    rules: Rules = CURRENT,
) -> None:
    """One customer's features: its plans, or its complete summary gated by P1 (S16, S21)."""
    granting = [s for s in subs if s.grants_access]
    for s in subs:
        if not s.grants_access and s.denied:
            grants.deny(s.features, s.denied)
    if summary is not None and granting and _trusted(summary, subs, rules):
        listed = summary.chosen.state
        assert isinstance(listed, EntitlementSummary)
        # The summary is customer-wide: applied whole, in place of every plan's features.
        gate = f"{granting[0].id} ({granting[0].status})"
        grants.grant(listed.lookup_keys, f"entitlement summary of {listed.customer_id} via {gate}")
        unlisted = {f for s in granting for f in s.features} - set(listed.lookup_keys)
        grants.deny(unlisted, f"the entitlement summary of {listed.customer_id} does not list it")
        return
    for s in granting:
        for plan in (p for p in map(plans.by_id, s.plan_ids) if p is not None):
            grants.grant(plan.features, f"plan {plan.id} via {s.id} ({s.status})")


def _purchases(folds: Folds, plans: Plans, deleted: frozenset[str]) -> list[PurchaseAccess]:
    """The user's paid one-time purchases, each with what its payment became."""
    found = payings(
        (f.chosen for f in folds.sessions.values()),
        {oid: f.chosen for oid, f in folds.sales.items()},
        (f.chosen for f in folds.charges.values()),
        {oid: f.chosen for oid, f in folds.disputes.items()},
    )
    return [purchase(p, plans, deleted) for p in found]


def _grant_purchases(grants: _Grants, bought: Iterable[PurchaseAccess], plans: Plans) -> None:
    for p in bought:
        if not p.grants_access:
            grants.deny(p.features, p.denied or f"{p.id} is {p.status}")
            continue
        for plan in (found for found in map(plans.by_id, p.plan_ids) if found is not None):
            grants.grant(plan.features, f"plan {plan.id} via {p.id} (paid)")


def _held_plans(
    plans: Plans,
    subs: Iterable[SubscriptionAccess],
    features: set[str],
    bought: Iterable[PurchaseAccess] = (),
) -> list[str]:
    held = {p.id for p in plans.default_plans()}
    held.update(pid for p in bought if p.grants_access for pid in p.plan_ids)
    for s in subs:
        for plan in (p for p in map(plans.by_id, s.plan_ids) if p is not None):
            if s.grants_access and set(plan.features) <= features:
                held.add(plan.id)
    return sorted(held)


def _latest_invoices(invoices: Iterable[Folded]) -> dict[str, Folded]:
    """Each subscription's latest invoice (by the invoice's own `created`, then id)."""
    found: dict[str, tuple[tuple[int, str], Folded]] = {}
    for folded in invoices:
        rank = invoice_rank(folded)
        inv = folded.chosen.state
        if rank is None or not isinstance(inv, Invoice) or inv.subscription_id is None:
            continue
        sid = inv.subscription_id
        if sid not in found or rank > found[sid][0]:
            found[sid] = (rank, folded)
    return {sid: folded for sid, (_, folded) in found.items()}


def _payment_failed(sub: SubscriptionAccess, latest: Folded | None, rules: Rules) -> bool:
    if sub.status in ("past_due", "unpaid"):
        return True
    if latest is None:
        return False
    inv = latest.chosen.state
    assert isinstance(inv, Invoice)
    # The latest attempt decides, whatever the status became (uncollectible, void): only a
    # payment ends the warning. Rules 1 looked at open invoices only.
    if inv.paid or (rules.legacy and inv.status not in ("open", None)):
        return False
    tried = latest.attempts
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
    latest: Mapping[str, Folded],
    deleted: frozenset[str],
    at: int,
    rules: Rules = CURRENT,
) -> tuple[str, ...]:
    found: set[str] = set()
    for s in subs:
        if s.status in TERMINAL_SUBSCRIPTION or s.customer_id in deleted:
            continue  # an ended subscription warns of nothing
        if _payment_failed(s, latest.get(s.id), rules):
            found.add("payment_failed")
        if _cancellation_scheduled(s, at):
            found.add("cancellation_scheduled")
        if _trial_ending(s, at):
            found.add("trial_ending")
    return tuple(sorted(found))


def _needs_refetch(folds: Folds, customers: Iterable[str]) -> tuple[str, ...]:
    truncated = {
        cid
        for cid in customers
        if (folded := folds.summaries.get(cid)) is not None
        and isinstance(folded.chosen.state, EntitlementSummary)
        and not (folded.chosen.state.complete or folded.chosen.observation)
    }
    return tuple(sorted(folds.ambiguous | truncated))


def _deleted(folds: Folds, customers: Iterable[str]) -> frozenset[str]:
    """Customers deleted at or before `at`: they never grant again."""
    return frozenset(
        cid
        for cid in customers
        if isinstance(state := _chosen(folds.customers, cid), Customer) and state.deleted
    )


def rule_witnesses(snapshots: Iterable[Snapshot], *, in_order: bool = False) -> list[Snapshot]:
    """Beyond one object's present (its latest second, its trailing past_due run and one
    snapshot per payment attempt), what the precise rules read at any later `at`: for each
    status the latest snapshot in it (when a subscription last stopped granting, whatever
    the plans' grant_statuses) and the greatest snapshot naming a user (who owns the
    metadata now). A read that loads only the present must load these too. `in_order`:
    the snapshots are in the fold's order already (`fold.ordered`), not keyed again."""
    order = list(snapshots) if in_order else [s for _, s in ranked(snapshots)]
    latest: dict[str, Snapshot] = {}
    for s in order:
        status = getattr(s.state, "status", None)
        if s.kind != SUBSCRIPTION or not isinstance(status, str):
            continue
        if status not in latest or s.created >= latest[status].created:
            latest[status] = s
    naming = [s for s in order if getattr(s.state, "app_user_id", None)]
    found = {s.event_id: s for s in [*latest.values(), *naming[-1:]]}
    return sorted(found.values(), key=lambda s: (s.created, s.event_id))


# The previous_attributes fields rules 1 read as witnesses (none of summaries or customers).
_RULES_1_WITNESSES = {
    SUBSCRIPTION: ("status", "cancel_at", "cancel_at_period_end", "canceled_at", "ended_at"),
    INVOICE: ("status", "paid", "attempt_count", "amount_paid", "amount_remaining"),
}


def _rules_1_witness(s: Snapshot) -> Snapshot:
    """The snapshot as rules 1 ordered it: only the witness fields they knew."""
    known = _RULES_1_WITNESSES.get(s.kind, ())
    kept = {k: v for k, v in s.previous.items() if k in known}
    return s if kept == s.previous else replace(s, previous=kept)


def fold_objects(
    inputs: UserInputs, customers: Iterable[str], plans: Plans, at: int, rules: Rules = CURRENT
) -> dict[ObjectKey, Folded]:
    """Every object of these customers, folded at `at` (those with a snapshot by then)."""
    linked = set(customers)
    pile = (s for s in inputs.snapshots if customer_of(s) in linked)
    if rules.legacy:
        pile = (_rules_1_witness(s) for s in pile)
    found = {key: fold_object(snaps, plans, at) for key, snaps in by_object(pile).items()}
    return {key: folded for key, folded in found.items() if folded is not None}


def decide(
    user_id: str,
    customers: tuple[str, ...],
    folds: Folds,
    plans: Plans,
    at: int,
    rules: Rules = CURRENT,
) -> Entitlements:
    """The user's entitlements at `at`, from their customers' objects folded at `at`."""
    deleted = _deleted(folds, customers)
    subs = sorted(
        (
            found
            for folded in folds.subscriptions
            if (found := _access(folded, plans, at, deleted, rules)) is not None
        ),
        key=lambda s: (s.customer_id or "", s.id),
    )
    grants = _Grants()
    for cid in customers:
        mine = [s for s in subs if s.customer_id == cid]
        _grant_customer(grants, mine, _summary(folds, cid), plans, rules)
    bought = _purchases(folds, plans, deleted)
    _grant_purchases(grants, bought, plans)
    for plan in plans.default_plans():
        grants.grant(plan.features, f"plan {plan.id} (default)")
    features = set(grants.reasons)
    return Entitlements(
        user_id=user_id,
        features=tuple(sorted(features)),
        plans=tuple(_held_plans(plans, subs, features, bought)),
        customer_ids=customers,
        subscriptions=tuple(subs),
        warnings=_warnings(subs, folds.latest_invoices, deleted, at, rules),
        reasons=dict(sorted(grants.reasons.items())),
        denials={f: r for f, r in sorted(grants.denials.items()) if f not in features},
        needs_refetch=_needs_refetch(folds, customers),
        purchases=tuple(bought),
    )


def evaluate(inputs: UserInputs, plans: Plans, at: int, rules: Rules = CURRENT) -> Entitlements:
    """The user's entitlements at `at` (policy P1-P5 over the user's snapshots)."""
    customers = customers_at(inputs, at, rules)
    objects = fold_objects(inputs, customers, plans, at, rules)
    return decide(inputs.user_id, customers, folds_of(objects), plans, at, rules)


def access(entitlements: Entitlements, feature: str) -> tuple[bool, str]:
    """Whether the user may use `feature`, with a reason a person can read."""
    if feature in entitlements.features:
        return True, entitlements.reasons[feature]
    return False, entitlements.denials.get(feature, f"no plan grants {feature}")
