"""Every change of a user's billing state, with its cause, and what the rules will change next.

History (projections/history.py) lists changes of features only. The timeline walks the same
moments in the same one pass (history's sweep, causes and rule times) and, at each, compares
the user's state with the one before: a subscription's status, plan, trial and scheduled
cancellation, each invoice's payment attempts, the user's customers, and the time rules
(grace end, period end) that ended a grant. The change of features at that moment is carried
by the entry history credits with it. `upcoming` continues the walk past `until` as if no
further event arrived: which grant ends when, and what the user loses then.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from billing_ledger.ledger.canonical import CUSTOMER, INVOICE, Customer, Invoice, Snapshot
from billing_ledger.projections.fold import (
    FAILED,
    SUCCEEDED,
    TERMINAL_SUBSCRIPTION,
    Attempt,
    attempt_of,
)
from billing_ledger.projections.history import _Cause, _cause, _evaluator, _event_times, _Index
from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import (
    RULE_ENDED_AT,
    RULE_GRACE,
    RULE_PERIOD_END,
    TRIAL_ENDING_WINDOW,
    Entitlements,
    Folded,
    SubscriptionAccess,
    UserInputs,
)
from billing_ledger.projections.shapes import json_of

SUBSCRIPTION_STATUS = "subscription_status"
PAYMENT_FAILED = "payment_failed"
PAYMENT_SUCCEEDED = "payment_succeeded"
CANCELLATION_SCHEDULED = "cancellation_scheduled"
CANCELLATION_UNSCHEDULED = "cancellation_unscheduled"
PLAN_CHANGED = "plan_changed"
TRIAL_STARTED = "trial_started"
TRIAL_ENDING = "trial_ending"
PURCHASE = "purchase"  # a one-time purchase paid (_purchase_entries)
REFUND = "refund"
RULE = "rule"
LINK = "link"

KINDS = (
    SUBSCRIPTION_STATUS,
    PAYMENT_FAILED,
    PAYMENT_SUCCEEDED,
    CANCELLATION_SCHEDULED,
    CANCELLATION_UNSCHEDULED,
    PLAN_CHANGED,
    TRIAL_STARTED,
    TRIAL_ENDING,
    PURCHASE,
    REFUND,
    RULE,
    LINK,
)

# The words `upcoming` uses for each rule that ends a grant, and what would prevent it.
_RULE_WORDS = {
    RULE_GRACE: ("at the grace end", "unless paid"),
    RULE_PERIOD_END: ("at the period end (with leeway)", "unless renewed"),
    RULE_ENDED_AT: ("when the subscription ends", ""),
}


@dataclass(frozen=True)
class Entry:
    """One change of the user's billing state and what caused it."""

    at: int
    event_id: str | None  # None: a rule took effect (grace end, period end)
    event_type: str | None
    object_id: str | None
    kind: str
    detail: str
    features_before: tuple[str, ...] = ()
    features_after: tuple[str, ...] = ()
    status: str | None = None  # a subscription's status from here on (the picture's band)

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT.md timeline entry."""
        return json_of(
            self, "at event_id event_type object_id kind detail features_before features_after"
        )


@dataclass(frozen=True)
class Upcoming:
    """A change the rules will make by themselves if no further event arrives."""

    at: int
    kind: str
    detail: str
    object_id: str | None = None
    features_after: tuple[str, ...] | None = None  # None: the features stay as they are

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT.md upcoming entry."""
        return {"at": self.at, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class Timeline:
    """A user's timeline up to `at`, and what comes next."""

    user_id: str
    at: int
    entries: tuple[Entry, ...]
    upcoming: tuple[Upcoming, ...]
    features: tuple[str, ...]  # the features at `at`

    def to_json(self) -> dict[str, Any]:
        """`GET /v1/users/{user_id}/timeline`, and `explain --json`."""
        return json_of(self, "entries upcoming")


def day(t: int) -> str:
    """`9 Dec 2026`: a date as a person says it (UTC)."""
    d = datetime.fromtimestamp(t, UTC)
    return f"{d.day} {d:%b %Y}"


def _names(features: Iterable[str]) -> str:
    return ", ".join(sorted(features)) or "nothing"


# -- what changed at one moment ---------------------------------------------------------


@dataclass
class _Moment:
    """The entries found at one time, before the change of features is placed on one."""

    at: int
    index: _Index
    previous_at: int | None  # the evaluation before this one
    attempts: dict[tuple[str, Attempt], Snapshot]  # the event recording each attempt
    announced: set[tuple[str, int]]  # trials (subscription, trial_end) already near their end
    found: list[Entry] = field(default_factory=list)

    def add(
        self,
        kind: str,
        detail: str,
        object_id: str | None,
        event_id: str | None,
        status: str | None = None,
    ) -> None:
        chosen = self.index.by_event.get(event_id) if event_id is not None else None
        event_type = chosen.event_type if chosen is not None else None
        entry = Entry(self.at, event_id, event_type, object_id, kind, detail, status=status)
        self.found.append(entry)


def _scheduled(sub: SubscriptionAccess) -> bool:
    return sub.cancel_at is not None or sub.cancel_at_period_end


def _cancel_time(sub: SubscriptionAccess) -> int | None:
    return sub.cancel_at if sub.cancel_at is not None else sub.current_period_end


def _cancel_words(sub: SubscriptionAccess) -> str:
    when = _cancel_time(sub)
    return f"{sub.id} cancels on {day(when)}" if when is not None else f"{sub.id} cancels"


def _plans(sub: SubscriptionAccess) -> str:
    return ", ".join(sub.plan_ids or sub.price_ids) or "no plan"


def _subscription_entries(
    moment: _Moment, old: SubscriptionAccess | None, new: SubscriptionAccess
) -> None:
    """What changed on one subscription between two evaluations."""
    add = moment.add
    if old is None or old.status != new.status:
        was = old.status if old is not None else "unseen"
        kind = TRIAL_STARTED if new.status == "trialing" else SUBSCRIPTION_STATUS
        detail = f"{new.id} {was} -> {new.status}"
        if kind == TRIAL_STARTED and new.trial_end is not None:
            detail += f", trial until {day(new.trial_end)}"
        add(kind, detail, new.id, new.event_id, new.status)
    if old is not None and (old.plan_ids, old.price_ids) != (new.plan_ids, new.price_ids):
        add(PLAN_CHANGED, f"{new.id} {_plans(old)} -> {_plans(new)}", new.id, new.event_id)
    if _scheduled(new) and (old is None or not _scheduled(old) or old.cancel_at != new.cancel_at):
        add(CANCELLATION_SCHEDULED, _cancel_words(new), new.id, new.event_id)
    elif (
        old is not None
        and _scheduled(old)
        and not _scheduled(new)
        and new.status not in TERMINAL_SUBSCRIPTION
    ):
        add(CANCELLATION_UNSCHEDULED, f"{new.id} no longer cancels", new.id, new.event_id)


def _attempt_events(snapshots: Iterable[Snapshot]) -> dict[tuple[str, Attempt], Snapshot]:
    """The first snapshot recording each payment attempt of each invoice."""
    found: dict[tuple[str, Attempt], Snapshot] = {}
    for s in sorted(snapshots, key=lambda s: (s.created, s.event_id)):
        attempt = attempt_of(s)
        if attempt is not None:
            found.setdefault((s.object_id, attempt), s)
    return found


def _amount(inv: Invoice) -> str:
    currency = (inv.currency or "").upper()
    return f"{inv.amount_due / 100:.2f} {currency}".strip()


def _invoice_entries(moment: _Moment, old: Folded | None, new: Folded) -> None:
    """Each payment attempt that ended since the invoice's last fold, failed or paid."""
    inv = new.chosen.state
    assert isinstance(inv, Invoice)
    seen = set(old.attempts) if old is not None else set()
    fresh = [a for a in new.attempts if a not in seen]
    for attempt in fresh:
        carrier = moment.attempts.get((inv.id, attempt))
        earlier = moment.previous_at is not None and carrier is not None
        if earlier and carrier is not None and carrier.created <= (moment.previous_at or 0):
            continue  # made before the customer was the user's: not the user's history
        event_id = carrier.event_id if carrier is not None else new.chosen.event_id
        if attempt.outcome == FAILED:
            detail = f"{inv.id} ({_amount(inv)}): payment attempt {attempt.number} failed"
            moment.add(PAYMENT_FAILED, detail, inv.id, event_id)
        elif attempt.outcome == SUCCEEDED:
            detail = f"{inv.id} ({_amount(inv)}) paid"
            moment.add(PAYMENT_SUCCEEDED, detail, inv.id, event_id)
    was_paid = old is not None and isinstance(old.chosen.state, Invoice) and old.chosen.state.paid
    if inv.paid and not was_paid and not fresh:  # paid without an attempt (a $0 invoice)
        detail = f"{inv.id} ({_amount(inv)}) paid"
        moment.add(PAYMENT_SUCCEEDED, detail, inv.id, new.chosen.event_id)


def _customer_entries(moment: _Moment, old: Folded | None, new: Folded) -> None:
    """A linked customer deleted: it never grants again."""
    state = new.chosen.state
    was = old.chosen.state if old is not None else None
    already = isinstance(was, Customer) and was.deleted
    if isinstance(state, Customer) and state.deleted and not already:
        detail = f"customer {state.id} deleted: it grants nothing from now on"
        moment.add(LINK, detail, state.id, new.chosen.event_id)


def _link_entries(moment: _Moment, before: Entitlements | None, now: Entitlements) -> None:
    """Customers the user gained or lost, with the evidence of each."""
    known = set(before.customer_ids if before else ())
    for cid in (c for c in now.customer_ids if c not in known):
        rows = [r for r in moment.index.inputs.links if r.customer_id == cid]
        row = max(
            (r for r in rows if r.created <= moment.at),
            key=lambda r: (r.created, r.event_id),
            default=None,
        )
        via = f" via {row.via}" if row is not None else ""
        event_id = row.event_id if row is not None else None
        moment.add(LINK, f"{cid} linked to {now.user_id}{via}", cid, event_id)
    for cid in sorted(known - set(now.customer_ids)):
        movers = [
            s
            for s in moment.index.by_created.get(moment.at, ())
            if getattr(s.state, "app_user_id", None) not in (None, now.user_id)
            and (s.object_id == cid or getattr(s.state, "customer_id", None) == cid)
        ]
        # Several snapshots of one second may move it (the customer's metadata and a
        # subscription's): the customer's own first, then by event id, whatever the arrival.
        carrier = min(movers, key=lambda s: (s.object_id != cid, s.event_id), default=None)
        user = getattr(carrier.state, "app_user_id", None) if carrier is not None else None
        detail = f"{cid} moved to {user}" if user else f"{cid} no longer linked"
        moment.add(LINK, detail, cid, carrier.event_id if carrier is not None else None)


def _purchase_entries(moment: _Moment, before: Entitlements | None, now: Entitlements) -> None:
    """One-time purchases paid, refunded in full or lost to a dispute at this moment."""
    earlier = {p.id: p for p in (before.purchases if before else ())}
    for bought in now.purchases:
        old = earlier.get(bought.id)
        what = ", ".join(bought.plan_ids or bought.price_ids)
        event_id = bought.event_id or None
        if bought.status == "paid" and (old is None or old.status != "paid"):
            moment.add(PURCHASE, f"{bought.id} bought {what} (one-time)", bought.id, event_id)
        elif bought.status != "paid" and (old is None or old.status == "paid"):
            ended = "refunded in full" if bought.status == "refunded" else "lost to a dispute"
            moment.add(REFUND, f"{bought.id} ({what}) {ended}", bought.id, event_id)


def _rule_entries(moment: _Moment, before: Entitlements | None, now: Entitlements) -> None:
    """Grants that ended at this moment by a time rule (grace end, period end, ended_at)."""
    current = {s.id: s for s in now.subscriptions}
    for sub in before.subscriptions if before else ():
        after = current.get(sub.id)
        ended = after is None or not after.grants_access
        if sub.grants_access and sub.access_until == moment.at and ended:
            moment.add(RULE, f"{sub.until_rule} for {sub.id}", sub.id, None)


def _trial_ending(sub: SubscriptionAccess, at: int) -> bool:
    """The policy's trial_ending warning holds at `at` (policy._trial_ending)."""
    return (
        sub.status == "trialing"
        and sub.trial_end is not None
        and sub.trial_end - at < TRIAL_ENDING_WINDOW
    )


_TRIAL_NOTICE = "customer.subscription.trial_will_end"  # Stripe's, three days before the end


def _trial_entries(moment: _Moment, now: Entitlements) -> None:
    """A trial near its end, once per trial: Stripe's notice, or the warning beginning."""
    notices = {
        s.object_id: s.event_id
        for s in moment.index.by_created.get(moment.at, ())
        if s.event_type == _TRIAL_NOTICE
    }
    for sub in now.subscriptions:
        if sub.status != "trialing" or sub.trial_end is None:
            continue
        if (sub.id, sub.trial_end) in moment.announced:
            continue
        if sub.id in notices or _trial_ending(sub, moment.at):
            moment.announced.add((sub.id, sub.trial_end))
            detail = f"{sub.id}'s trial ends on {day(sub.trial_end)}"
            moment.add(TRIAL_ENDING, detail, sub.id, notices.get(sub.id))


# Entries read off an object's new fold, by snapshot kind. One-time purchases add theirs
# here, each a function of the object's fold before and after.
FoldEntries = Callable[[_Moment, Folded | None, Folded], None]
_FOLD_ENTRIES: dict[str, FoldEntries] = {
    INVOICE: _invoice_entries,
    CUSTOMER: _customer_entries,
}


class _Walk:
    """The timeline's state between moments: the last evaluation and each object's fold."""

    def __init__(self, inputs: UserInputs, plans: Plans) -> None:
        self.index = _Index(inputs)
        self.attempts = _attempt_events(inputs.snapshots)
        self.evaluate = _evaluator(inputs, plans)
        self.plans = plans
        self.before: Entitlements | None = None
        self.previous_at: int | None = None
        self.folds: dict[tuple[str, str], Folded] = {}
        self.features = plans.default_features()
        self.announced: set[tuple[str, int]] = set()

    def step(self, at: int) -> list[Entry]:
        """Evaluate at `at` (no earlier than the last step); the entries of this moment."""
        now, moved = self.evaluate(at)
        moment = _Moment(at, self.index, self.previous_at, self.attempts, self.announced)
        before = self.before
        _link_entries(moment, before, now)
        earlier = {s.id: s for s in (before.subscriptions if before else ())}
        for sub in now.subscriptions:
            _subscription_entries(moment, earlier.get(sub.id), sub)
        _trial_entries(moment, now)
        _purchase_entries(moment, before, now)
        for folded in sorted(moved, key=lambda f: (f.chosen.kind, f.chosen.object_id)):
            key = (folded.chosen.kind, folded.chosen.object_id)
            old = self.folds.get(key)
            self.folds[key] = folded
            entries = _FOLD_ENTRIES.get(folded.chosen.kind)
            if entries is not None and old != folded:
                entries(moment, old, folded)
        _rule_entries(moment, before, now)
        found = self._place_features(moment, before, now, moved)
        self.before, self.previous_at, self.features = now, at, now.features
        return found

    def _place_features(
        self, moment: _Moment, before: Entitlements | None, now: Entitlements, moved: list[Folded]
    ) -> list[Entry]:
        """Each entry's features before and after; the change history credits goes on the
        entry of its cause (one of its own when no entry names that cause)."""
        was, after = self.features, now.features
        found = moment.found
        cause = None
        if after != was:
            cause = _cause(self.index, before, now, moved, moment.at)
            credited = next((i for i, e in enumerate(found) if _credits(e, cause)), None)
            if credited is None:
                moment.add(
                    _cause_kind(cause.event_id),
                    cause.reason,
                    _object_of(self.index, cause.event_id),
                    cause.event_id,
                )
                credited = len(found) - 1
        else:
            credited = len(found)
        return [
            replace(
                e,
                features_before=was if i <= credited else after,
                features_after=was if i < credited else after,
            )
            for i, e in enumerate(found)
        ]


def _credits(entry: Entry, cause: _Cause) -> bool:
    """Whether history's cause of a change of features is this entry's."""
    if cause.event_id is None:  # a rule: the entry of the rule, not one merely without event
        return entry.kind == RULE
    return entry.event_id == cause.event_id


def _cause_kind(event_id: str | None) -> str:
    """An uncredited change of features: a rule's, or an event's that no entry names (an
    entitlement summary listing other features)."""
    return RULE if event_id is None else PLAN_CHANGED


def _object_of(index: _Index, event_id: str | None) -> str | None:
    chosen = index.by_event.get(event_id) if event_id is not None else None
    return chosen.object_id if chosen is not None else None


def _until(inputs: UserInputs, until: int) -> UserInputs:
    """What the ledger knew at `until`: the walk past it then assumes no further event."""
    return UserInputs(
        inputs.user_id,
        tuple(r for r in inputs.links if r.created <= until),
        tuple(s for s in inputs.snapshots if s.created <= until),
    )


def _trial_times(now: Entitlements) -> list[int]:
    """When each trial enters its ending window: the warning holds from then on."""
    return [
        s.trial_end - TRIAL_ENDING_WINDOW + 1
        for s in now.subscriptions
        if s.status == "trialing" and s.trial_end is not None
    ]


def timeline(inputs: UserInputs, plans: Plans, until: int) -> Timeline:
    """Every change of the user's billing state up to `until`, oldest first, and the changes
    the rules will make after it if no further event arrives."""
    known = _until(inputs, until)
    walk = _Walk(known, plans)
    pending = sorted(_event_times(known, until) | {until})
    heapq.heapify(pending)
    seen: set[int] = set()
    entries: list[Entry] = []
    while pending:
        at = heapq.heappop(pending)
        if at in seen:
            continue
        seen.add(at)
        entries += walk.step(at)
        now = walk.before
        assert now is not None
        for t in [s.access_until for s in now.subscriptions] + _trial_times(now):
            if t is not None and at < t <= until:
                heapq.heappush(pending, t)  # a grant ends, or a trial nears its end, then
    now = walk.before
    assert now is not None
    upcoming = _upcoming(walk, now, until)
    return Timeline(inputs.user_id, until, tuple(entries), upcoming, now.features)


def _upcoming(walk: _Walk, now: Entitlements, until: int) -> tuple[Upcoming, ...]:
    """The rules' changes after `until`: each grant's end and what it takes away, each
    scheduled cancellation, each trial's end."""
    found: list[Upcoming] = []
    for sub in now.subscriptions:
        when = _cancel_time(sub)
        live = sub.status not in TERMINAL_SUBSCRIPTION
        if _scheduled(sub) and live and when is not None and when > until:
            found.append(Upcoming(when, CANCELLATION_SCHEDULED, _cancel_words(sub), sub.id))
        if sub.status == "trialing" and sub.trial_end is not None and sub.trial_end > until:
            detail = f"{sub.id}'s trial ends on {day(sub.trial_end)}"
            found.append(Upcoming(sub.trial_end, TRIAL_ENDING, detail, sub.id))
    ends = sorted(
        {
            (s.access_until, s.id, s.until_rule or "")
            for s in now.subscriptions
            if s.grants_access and s.access_until is not None and s.access_until > until
        }
    )
    features = now.features
    cancelling = {s.id for s in now.subscriptions if _scheduled(s)}
    for at, sid, rule in ends:
        then, _ = walk.evaluate(at)
        lost = sorted(set(features) - set(then.features))
        where, unless = _RULE_WORDS.get(rule, (f"when {rule}", ""))
        if rule == RULE_PERIOD_END and sid in cancelling:
            unless = "unless the cancellation is withdrawn"  # it will not renew by itself
        if lost:
            detail = f"loses {_names(lost)} {where}, {day(at)}"
        else:
            detail = f"{sid} stops granting {where}, {day(at)}; the features stay"
        detail += f", {unless}" if unless and lost else ""
        found.append(Upcoming(at, RULE, f"{detail} ({sid})", sid, then.features if lost else None))
        features = then.features
    return tuple(sorted(found, key=lambda u: (u.at, u.kind, u.object_id or "")))
