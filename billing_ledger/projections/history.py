"""Every change of a user's features over time, pure (the CLI's explain: replay/explain.py).

History is the policy applied at every moment something could change: each snapshot's or
link's `created`, and each rule time (`access_until`) an evaluation announces. It is one
pass: the times are visited in order and each object's fold advances by the snapshots that
became eligible (`_Sweep`), so a user's n events cost O(n log n), not n evaluations of n.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from billing_ledger.ledger.canonical import (
    CHARGE,
    CHECKOUT_SESSION,
    CUSTOMER,
    DISPUTE,
    ENTITLEMENT_SUMMARY,
    INVOICE,
    LINK,
    SALE,
    SUBSCRIPTION,
    Customer,
    EntitlementSummary,
    Invoice,
    Snapshot,
    Subscription,
)
from billing_ledger.projections.fold import (
    Attempt,
    Key,
    ObjectKey,
    attempt_of,
    by_object,
    is_terminal,
    ranked,
)
from billing_ledger.projections.links import VIA_CUSTOMER, VIA_SUBSCRIPTION, customer_of
from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import (
    Entitlements,
    Folded,
    Folds,
    SubscriptionAccess,
    UserInputs,
    customers_at,
    decide,
    denies,
    evaluate,
    fold_objects,
    held,
    invoice_rank,
    link_spans,
)
from billing_ledger.projections.purchases import PurchaseAccess

_Grant = TypeVar("_Grant", SubscriptionAccess, PurchaseAccess)


@dataclass(frozen=True)
class Change:
    """One change of the user's feature set, and what caused it."""

    at: int
    event_id: str | None  # None: a rule took effect (grace end, period end)
    event_type: str | None
    features_before: tuple[str, ...]
    features_after: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class _Cause:
    event_id: str | None
    event_type: str | None
    reason: str


# -- the one-pass fold ------------------------------------------------------------------


def _is_past_due(s: Snapshot) -> bool:
    return isinstance(s.state, Subscription) and s.state.status == "past_due"


@dataclass
class _Running:
    """One object's fold as the sweep stands: what `policy.fold_object` computes at once."""

    rivals: frozenset[str]  # events whose snapshot ties a differing one (fold.is_ambiguous)
    top: tuple[Key, Snapshot] | None = None
    terminal: bool = False  # a terminal snapshot is eligible: it is the state for good
    run_start: int | None = None  # first of the trailing past_due run (non-terminal order)
    tried: set[Attempt] = field(default_factory=set)
    denied_since: int | None = None
    folded: Folded | None = None  # cached until the next snapshot of this object

    def add(self, group: list[tuple[Key, Snapshot]], plans: Plans) -> None:
        """Snapshots of one second, ascending by key: they become eligible together."""
        for key, s in group:
            if self.top is None or key > self.top[0]:
                self.top = (key, s)
            if is_terminal(s.state):
                self.terminal = True
            elif _is_past_due(s):
                self.run_start = s.created if self.run_start is None else self.run_start
            else:
                self.run_start = None
            attempt = attempt_of(s)
            if attempt is not None:
                self.tried.add(attempt)
            if denies(s, plans):
                self.denied_since = s.created
        self.folded = None

    def fold(self) -> Folded | None:
        """The fold as `policy.fold_object` would give it now (None before any snapshot)."""
        if self.top is None:
            return None
        if self.folded is None:
            chosen = self.top[1]
            since = None if self.terminal or chosen.kind != SUBSCRIPTION else self.run_start
            self.folded = Folded(
                chosen=chosen,
                past_due_since=since,
                attempts=tuple(sorted(self.tried)) if chosen.kind == INVOICE else (),
                ambiguous=chosen.event_id in self.rivals,
                denied_since=self.denied_since,
            )
        return self.folded


def _ambiguous(keyed: list[tuple[Key, Snapshot]]) -> frozenset[str]:
    """Events whose snapshot, were it the state, ties a differing state (fold.is_ambiguous)."""
    groups: dict[Key, list[Snapshot]] = defaultdict(list)
    for key, s in keyed:
        groups[key[:-2]].append(s)
    return frozenset(
        s.event_id
        for group in groups.values()
        if len(group) > 1
        for s in group
        if any(o.state != s.state for o in group)
    )


@dataclass
class _Book:
    """One customer's folded objects as `policy.folds_of` reads them, kept current."""

    subscriptions: dict[str, Folded] = field(default_factory=dict)
    summary: Folded | None = None
    customer: Folded | None = None
    ambiguous: set[ObjectKey] = field(default_factory=set)
    invoices: dict[str, dict[str, Folded]] = field(default_factory=lambda: defaultdict(dict))
    counted: dict[str, str] = field(default_factory=dict)  # invoice id -> its subscription
    latest: dict[str, tuple[tuple[int, str], Folded]] = field(default_factory=dict)
    # One-time purchases' objects by kind, then id (policy.Folds.sessions and the rest).
    paying: dict[str, dict[str, Folded]] = field(default_factory=lambda: defaultdict(dict))

    def put(self, key: ObjectKey, folded: Folded) -> None:
        """Record an object's new fold."""
        kind, oid = key
        (self.ambiguous.add if folded.ambiguous else self.ambiguous.discard)(key)
        if kind == SUBSCRIPTION:
            self.subscriptions[oid] = folded
        elif kind == ENTITLEMENT_SUMMARY:
            self.summary = folded
        elif kind == CUSTOMER:
            self.customer = folded
        elif kind == INVOICE:
            self._put_invoice(oid, folded)
        elif kind in _PAYING:
            self.paying[kind][oid] = folded

    def _put_invoice(self, oid: str, folded: Folded) -> None:
        rank = invoice_rank(folded)
        state = folded.chosen.state
        sid = state.subscription_id if rank is not None and isinstance(state, Invoice) else None
        was = self.counted.pop(oid, None)
        if was is not None:
            del self.invoices[was][oid]
        if sid is not None and rank is not None:
            self.invoices[sid][oid] = folded
            self.counted[oid] = sid
            best = self.latest.get(sid)
            if best is None or rank >= best[0]:
                self.latest[sid] = (rank, folded)
                if was is None or was == sid:
                    return
        if was is not None and was in self.latest and self.latest[was][1].chosen.object_id == oid:
            self._rescan(was)  # the latest invoice moved away or ranks lower now: look again
        elif sid is not None and self.latest[sid][1].chosen.object_id == oid:
            self._rescan(sid)

    def _rescan(self, sid: str) -> None:
        ranked_ = [(invoice_rank(f), f) for f in self.invoices[sid].values()]
        found = [(r, f) for r, f in ranked_ if r is not None]
        if found:
            self.latest[sid] = max(found, key=lambda pair: pair[0])
        else:
            self.latest.pop(sid, None)


_PAYING = (CHECKOUT_SESSION, SALE, CHARGE, DISPUTE)


def _folds(books: Iterable[_Book]) -> Folds:
    """The policy's reading of these customers' books, as `policy.folds_of` would give it."""
    subscriptions: list[Folded] = []
    summaries: dict[str, Folded] = {}
    customers: dict[str, Folded] = {}
    latest: dict[str, tuple[tuple[int, str], Folded]] = {}
    ambiguous: set[str] = set()
    paying: dict[str, dict[str, Folded]] = {kind: {} for kind in _PAYING}
    for book in books:
        for kind, found in book.paying.items():
            paying[kind].update(found)
        subscriptions += book.subscriptions.values()
        if book.summary is not None:
            summaries[book.summary.chosen.object_id] = book.summary
        if book.customer is not None:
            customers[book.customer.chosen.object_id] = book.customer
        for sid, pair in book.latest.items():
            if sid not in latest or pair[0] > latest[sid][0]:
                latest[sid] = pair
        ambiguous.update(oid for _, oid in book.ambiguous)
    return Folds(
        subscriptions=tuple(subscriptions),
        summaries=summaries,
        customers=customers,
        latest_invoices={sid: f for sid, (_, f) in latest.items()},
        ambiguous=frozenset(ambiguous),
        sessions=paying[CHECKOUT_SESSION],
        sales=paying[SALE],
        charges=paying[CHARGE],
        disputes=paying[DISPUTE],
    )


class _Sweep:
    """The user's objects folded at increasing times, each snapshot added once."""

    def __init__(self, inputs: UserInputs, plans: Plans) -> None:
        self.inputs = inputs
        self.plans = plans
        self.spans = link_spans(inputs)
        self.running: dict[ObjectKey, _Running] = {}
        self.customer: dict[ObjectKey, str | None] = {}
        self.books: dict[str | None, _Book] = defaultdict(_Book)
        pending: list[tuple[int, ObjectKey, list[tuple[Key, Snapshot]]]] = []
        for key, snaps in by_object(inputs.snapshots).items():
            keyed = ranked(snaps)
            self.running[key] = _Running(_ambiguous(keyed))
            self.customer[key] = customer_of(snaps[0])
            seconds: dict[int, list[tuple[Key, Snapshot]]] = defaultdict(list)
            for pair in keyed:
                seconds[pair[1].created].append(pair)
            pending += [(t, key, group) for t, group in seconds.items()]
        pending.sort(key=lambda p: p[0])
        self.pending = pending
        self.next = 0

    def advance(self, at: int) -> list[ObjectKey]:
        """Add every snapshot created at or before `at`; the objects that moved."""
        touched: list[ObjectKey] = []
        while self.next < len(self.pending) and self.pending[self.next][0] <= at:
            _, key, group = self.pending[self.next]
            self.running[key].add(group, self.plans)
            touched.append(key)
            self.next += 1
        for key in dict.fromkeys(touched):
            folded = self.running[key].fold()
            if folded is not None:
                self.books[self.customer[key]].put(key, folded)
        return touched

    def evaluate(self, at: int) -> tuple[Entitlements, list[Folded]]:
        """`policy.evaluate(inputs, plans, at)`, for `at` no earlier than the last call, and
        the folds of the user's objects that moved since that call."""
        touched = self.advance(at)
        customers = held(self.spans, at)
        folds = _folds(self.books[cid] for cid in customers if cid in self.books)
        linked = set(customers)
        moved = [
            folded
            for key in dict.fromkeys(touched)
            if self.customer[key] in linked and (folded := self.running[key].fold()) is not None
        ]
        return decide(self.inputs.user_id, customers, folds, self.plans, at), moved


def _one_customer_per_object(inputs: UserInputs) -> bool:
    """The sweep keeps one customer per object (Stripe never moves one): check it holds."""
    seen: dict[ObjectKey, str | None] = {}
    for s in inputs.snapshots:
        if seen.setdefault((s.kind, s.object_id), customer_of(s)) != customer_of(s):
            return False
    return True


# -- causes -----------------------------------------------------------------------------


@dataclass
class _Index:
    """Look-ups the causes need, built once per history."""

    inputs: UserInputs
    by_event: dict[str, Snapshot] = field(default_factory=dict)
    by_created: dict[int, list[Snapshot]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        for s in self.inputs.snapshots:
            self.by_event.setdefault(s.event_id, s)  # the first, as a scan would find
            self.by_created[s.created].append(s)


def _status_change(before: SubscriptionAccess | None, after: SubscriptionAccess) -> str:
    was = before.status if before is not None else "unseen"
    return f"{after.id} {was} -> {after.status}"


def _moved(
    index: _Index,
    grants: tuple[Iterable[_Grant], Iterable[_Grant]],
    at: int,
    state: Callable[[_Grant], tuple[Any, ...]],
    why: Callable[[_Grant | None, _Grant], str],
) -> _Cause | None:
    """The first grant of `after` whose `state` moved (or is new), when the snapshot it
    chose was created at `at`; `why` says how."""
    before, after = grants
    earlier = {g.id: g for g in before}
    for grant in after:
        old = earlier.get(grant.id)
        if old is not None and state(old) == state(grant):
            continue
        chosen = index.by_event.get(grant.event_id)
        if chosen is not None and chosen.created == at:
            return _Cause(grant.event_id, chosen.event_type, why(old, grant))
    return None


def _subscription_cause(
    index: _Index, before: Entitlements | None, after: Entitlements, at: int
) -> _Cause | None:
    """A subscription whose grant changed because of a snapshot created at `at`."""
    grants = (before.subscriptions if before else (), after.subscriptions)
    return _moved(index, grants, at, lambda s: (s.grants_access, s.features), _status_change)


def _purchase_cause(
    index: _Index, before: Entitlements | None, after: Entitlements, at: int
) -> _Cause | None:
    """A one-time purchase paid, refunded or lost in a dispute by an event created at `at`."""
    grants = (before.purchases if before else (), after.purchases)
    return _moved(index, grants, at, lambda p: (p.status, p.grants_access), _purchase_change)


def _purchase_change(_: PurchaseAccess | None, bought: PurchaseAccess) -> str:
    what = ", ".join(bought.plan_ids) or "no plan"
    reason = f"purchase {bought.id} {bought.status} ({what})"
    if bought.charge_id is not None:
        reason += f", charge {bought.charge_id}"
    return reason


def _link_cause(
    index: _Index, before: Entitlements | None, after: Entitlements, at: int
) -> _Cause | None:
    """A link, created at `at`, that brought a new customer to the user."""
    known = set(before.customer_ids if before else ())
    now = set(after.customer_ids)
    rows = (r for r in index.inputs.links if r.created == at)
    for row in sorted(rows, key=lambda r: (r.customer_id, r.event_id)):
        if row.customer_id not in known and row.customer_id in now:
            carrier = index.by_event.get(row.event_id)
            event_type = carrier.event_type if carrier is not None else None
            reason = f"{row.customer_id} linked to {row.user_id} via {row.via}"
            return _Cause(row.event_id, event_type, reason)
    return None


_VIA = {CUSTOMER: VIA_CUSTOMER, SUBSCRIPTION: VIA_SUBSCRIPTION}


def _move_cause(
    index: _Index, before: Entitlements | None, after: Entitlements, at: int
) -> _Cause | None:
    """A customer the user lost at `at` because its metadata named another user."""
    lost = set(before.customer_ids if before else ()) - set(after.customer_ids)
    for s in sorted(index.by_created.get(at, ()), key=lambda s: (s.kind, s.event_id)):
        user = getattr(s.state, "app_user_id", None)
        cid = customer_of(s)
        if cid in lost and user and user != index.inputs.user_id and s.kind in _VIA:
            return _Cause(s.event_id, s.event_type, f"{cid} moved to {user} via {_VIA[s.kind]}")
    return None


# Which object most likely explains a change nobody else claimed, most likely first.
_KIND_PRIORITY = (ENTITLEMENT_SUMMARY, CUSTOMER, SUBSCRIPTION, LINK, CHECKOUT_SESSION, INVOICE)
_RANK = {kind: i for i, kind in enumerate(_KIND_PRIORITY)}


def _describe(s: Snapshot) -> str:
    state = s.state
    if isinstance(state, EntitlementSummary):
        listed = ", ".join(state.lookup_keys) or "nothing"
        return f"entitlement summary of {state.customer_id} lists {listed}"
    if isinstance(state, Customer) and state.deleted:
        return f"customer {state.id} deleted"
    return f"{s.event_type} for {s.object_id}"


def _other_cause(moved: Iterable[Folded], at: int) -> _Cause | None:
    """Any other chosen snapshot of `at` (an entitlement summary, a deleted customer, ...)."""
    found = [f.chosen for f in moved if f.chosen.created == at]
    for s in sorted(found, key=lambda s: (_RANK.get(s.kind, len(_RANK)), s.object_id)):
        return _Cause(s.event_id, s.event_type, _describe(s))
    return None


def _rule_cause(before: Entitlements | None, at: int) -> _Cause | None:
    """A time rule: the earlier evaluation said this grant would end at `at`."""
    for sub in before.subscriptions if before else ():
        if sub.grants_access and sub.access_until == at:
            return _Cause(None, None, f"{sub.until_rule} for {sub.id}")
    return None


def _cause(
    index: _Index,
    before: Entitlements | None,
    after: Entitlements,
    moved: list[Folded],
    at: int,
) -> _Cause:
    return (
        _subscription_cause(index, before, after, at)
        or _purchase_cause(index, before, after, at)
        or _link_cause(index, before, after, at)
        or _move_cause(index, before, after, at)
        or _rule_cause(before, at)
        or _other_cause(moved, at)
        or _Cause(None, None, "features changed")
    )


def _event_times(inputs: UserInputs, until: int) -> set[int]:
    times = {s.created for s in inputs.snapshots} | {row.created for row in inputs.links}
    return {t for t in times if t <= until}


Evaluator = Callable[[int], tuple[Entitlements, list[Folded]]]


def _evaluator(inputs: UserInputs, plans: Plans) -> Evaluator:
    """The sweep's evaluation, or the policy's own where the sweep's premise fails."""
    if _one_customer_per_object(inputs):
        return _Sweep(inputs, plans).evaluate

    def each(at: int) -> tuple[Entitlements, list[Folded]]:
        objects = fold_objects(inputs, customers_at(inputs, at), plans, at)
        return evaluate(inputs, plans, at), list(objects.values())

    return each


def changes(inputs: UserInputs, plans: Plans, until: int) -> list[Change]:
    """Every change of the user's features up to `until`, oldest first."""
    return changes_until(inputs, plans, until)[0]


def changes_until(
    inputs: UserInputs, plans: Plans, until: int
) -> tuple[list[Change], Entitlements]:
    """`changes`, and the entitlements at `until` (`policy.evaluate`'s) from the same pass:
    the change feed needs both, and evaluating again would fold every object twice."""
    pending = sorted(_event_times(inputs, until))
    heapq.heapify(pending)
    seen: set[int] = set()
    features = plans.default_features()  # what a user the ledger has never seen has
    before: Entitlements | None = None
    found: list[Change] = []
    index = _Index(inputs)
    evaluate_at = _evaluator(inputs, plans)
    while pending:
        at = heapq.heappop(pending)
        if at in seen:
            continue
        seen.add(at)
        now, moved = evaluate_at(at)
        for sub in now.subscriptions:
            # A grant ends by itself at access_until: evaluate again then.
            if sub.access_until is not None and sub.access_until <= until:
                heapq.heappush(pending, sub.access_until)
        if now.features != features:
            cause = _cause(index, before, now, moved, at)
            found.append(
                Change(at, cause.event_id, cause.event_type, features, now.features, cause.reason)
            )
        features, before = now.features, now
    if before is None or until not in seen:
        before = evaluate_at(until)[0]  # no later than every time visited: one more step
    return found, before
