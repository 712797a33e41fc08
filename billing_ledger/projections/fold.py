"""The order-independent choice of an object's state among its snapshots (STRIPE-SEMANTICS 6.3).

Stripe delivers out of order and stamps `created` in whole seconds, so "the latest event
wins" is wrong twice over. Instead every snapshot of one object gets a key that depends
only on the *set* of snapshots, and the state at time `at` is the greatest eligible one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from billing_ledger.ledger.canonical import (
    Charge,
    Customer,
    Dispute,
    EntitlementSummary,
    Invoice,
    Price,
    Product,
    Snapshot,
    State,
    Subscription,
    snapshot_to_json,
)

TERMINAL_SUBSCRIPTION = frozenset({"canceled", "incomplete_expired"})
TERMINAL_INVOICE = frozenset({"paid", "void"})
CLOSED_DISPUTE = frozenset({"won", "lost"})  # a closed dispute is decided for good

# Within one second, *.created comes before *.updated before *.deleted (default 1).
_TYPE_RANK = {
    "customer.subscription.created": 0,
    "customer.subscription.deleted": 2,
    "invoice.created": 0,
    "invoice.deleted": 2,
    "customer.created": 0,
    "customer.deleted": 2,
    "product.created": 0,
    "product.deleted": 2,
    "price.created": 0,
    "price.deleted": 2,
    "plan.created": 0,
    "plan.deleted": 2,
    "charge.succeeded": 0,
    "charge.refunded": 2,
    "charge.dispute.created": 0,
    "charge.dispute.closed": 2,
    # The async outcome of a delayed payment follows the session's completion.
    "checkout.session.async_payment_succeeded": 2,
    "checkout.session.async_payment_failed": 2,
}

# Subscription statuses that only ever come first (1.2's graph never returns to them).
_EARLY_SUBSCRIPTION = frozenset({"incomplete", "trialing"})
# Invoices move draft < open < uncollectible < paid/void, never back.
_INVOICE_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}

# previous_attributes keys that mean the same thing on the canonical state.
_WITNESS_FIELDS: dict[type, tuple[str, ...]] = {
    Subscription: (
        "status",
        "cancel_at",
        "cancel_at_period_end",
        "canceled_at",
        "ended_at",
        "trial_end",
    ),
    Invoice: ("status", "paid", "attempt_count", "amount_paid", "amount_remaining"),
    Product: ("active", "name", "description"),
    Price: ("active", "lookup_key", "nickname"),
    Charge: ("amount_refunded", "refunded"),
    Dispute: ("status",),
}


def _listed(value: Any) -> list[Any]:
    """A previous list field: Stripe renders it whole, bare or as a list object's `data`."""
    data = value.get("data") if isinstance(value, dict) else value
    return data if isinstance(data, list) else []


def _entry_key(entry: Any, field: str) -> Any:
    """`entry[field]`, or the id of an expanded object there (a price, a feature)."""
    value = entry.get(field) if isinstance(entry, dict) else None
    return value.get("id") if isinstance(value, dict) else value


def _metadata_user(previous: Mapping[str, Any]) -> dict[str, Any]:
    """metadata.app_user_id as it was, when the previous metadata names that key."""
    metadata = previous.get("metadata")
    if isinstance(metadata, dict) and "app_user_id" in metadata:
        return {"app_user_id": metadata["app_user_id"] or None}
    return {}


def _lookup_keys(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return None
    feature = entry.get("feature")
    nested = feature.get("lookup_key") if isinstance(feature, dict) else None
    return entry.get("lookup_key") or nested


def _subscription_before(previous: Mapping[str, Any]) -> dict[str, Any]:
    found = {k: previous[k] for k in _WITNESS_FIELDS[Subscription] if k in previous}
    if "items" in previous:  # a plan change or a renewal: the whole item list as it was
        found["items"] = _items(_listed(previous["items"]))
    if "pause_collection" in previous:  # an object or null: the state keeps whether set
        found["pause_collection"] = bool(previous["pause_collection"])
    return found | _metadata_user(previous)


def _items(raw: list[Any]) -> tuple[tuple[str, int | None], ...]:
    """Items as (price id, period end) pairs, the part a renewal or plan change moves."""
    pairs = {
        (str(_entry_key(i, "price") or _entry_key(i, "plan")), _period_end(i))
        for i in raw
        if _entry_key(i, "price") or _entry_key(i, "plan")
    }
    return tuple(sorted(pairs, key=repr))


def _period_end(raw: Any) -> int | None:
    end = raw.get("current_period_end") if isinstance(raw, dict) else None
    return end if isinstance(end, int) and not isinstance(end, bool) else None


def _summary_before(previous: Mapping[str, Any]) -> dict[str, Any]:
    if "entitlements" not in previous:
        return {}
    keys = {_lookup_keys(e) for e in _listed(previous["entitlements"])}
    return {"lookup_keys": tuple(sorted(str(k) for k in keys if k))}


def _invoice_before(previous: Mapping[str, Any]) -> dict[str, Any]:
    return {k: previous[k] for k in _WITNESS_FIELDS[Invoice] if k in previous}


def _catalog_before(fields: tuple[str, ...]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Witness fields read as they are (a price's archive flips `active`: 6.3 (c))."""
    return lambda previous: {k: previous[k] for k in fields if k in previous}


# What another snapshot's previous_attributes say this object was, in the state's terms.
_BEFORE: dict[type, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    Subscription: _subscription_before,
    Invoice: _invoice_before,
    Customer: _metadata_user,
    EntitlementSummary: _summary_before,
    Product: _catalog_before(_WITNESS_FIELDS[Product]),
    Price: _catalog_before(_WITNESS_FIELDS[Price]),
    Charge: _catalog_before(_WITNESS_FIELDS[Charge]),
    Dispute: _catalog_before(_WITNESS_FIELDS[Dispute]),
}


def _now(state: State, name: str) -> Any:
    """The state's value of a witness field (items as _items reads them)."""
    if name == "items" and isinstance(state, Subscription):
        pairs = {(i.price_id, i.current_period_end) for i in state.items if i.price_id}
        return tuple(sorted(pairs, key=repr))
    return getattr(state, name)


_DELETABLE = (Customer, Product, Price)  # a tuple: `A | B` builds a union on each call


def is_terminal(state: State) -> bool:
    """A state no later snapshot may replace (terminal absorption)."""
    if isinstance(state, Subscription):
        return state.status in TERMINAL_SUBSCRIPTION
    if isinstance(state, Invoice):
        return state.status in TERMINAL_INVOICE or state.deleted
    if isinstance(state, _DELETABLE):
        return state.deleted
    if isinstance(state, Dispute):
        return state.status in CLOSED_DISPUTE
    return False


def _status_rank(state: State) -> tuple[int, ...]:
    if isinstance(state, Subscription):
        return (0 if state.status in _EARLY_SUBSCRIPTION else 1,)
    if isinstance(state, Invoice):
        transitions = (state.finalized_at, state.marked_uncollectible_at, state.paid_at)
        done = sum(t is not None for t in (*transitions, state.voided_at))
        return (_INVOICE_RANK.get(state.status or "", 0), done, state.attempt_count)
    if isinstance(state, Charge):
        return (state.amount_refunded,)  # refunds only ever add up
    return (0,)


def _names_as_before(previous: Mapping[str, Any], state: State) -> bool:
    """Whether `previous` (another snapshot's previous_attributes) describes `state`."""
    reader = _BEFORE.get(type(state))
    before = reader(previous) if reader is not None and previous else {}
    return bool(before) and all(_now(state, k) == v for k, v in before.items())


def _superseded(group: Sequence[Snapshot]) -> list[bool]:
    """For one second's snapshots: which ones another names as its "before"."""
    return [
        any(j != i and _names_as_before(other.previous, s.state) for j, other in enumerate(group))
        for i, s in enumerate(group)
    ]


@dataclass(frozen=True, eq=False)
class _Rendering:
    """The very last resort, for two renderings of one event id: compare their bytes."""

    snapshot: Snapshot

    def __lt__(self, other: _Rendering) -> bool:
        return snapshot_to_json(self.snapshot) < snapshot_to_json(other.snapshot)


Key = tuple[Any, ...]


def _key(s: Snapshot, superseded: bool) -> Key:
    return (
        is_terminal(s.state),  # (a)
        s.created,  # (b)
        s.observation,  # (c) a recorded re-fetch outranks same-second webhooks
        not superseded,
        _TYPE_RANK.get(s.event_type, 1),
        _status_rank(s.state),
        s.event_id,  # (d) deterministic, but arbitrary: see is_ambiguous
        _Rendering(s),
    )


def _keyed(snapshots: Iterable[Snapshot]) -> list[tuple[Key, Snapshot]]:
    """Each snapshot with its key, ascending; ties are judged per same-second group."""
    groups: dict[int, list[Snapshot]] = defaultdict(list)
    for s in snapshots:
        groups[s.created].append(s)
    keyed = [
        (_key(s, lost), s)
        for group in groups.values()
        for s, lost in zip(group, _superseded(group), strict=True)
    ]
    return sorted(keyed, key=lambda pair: pair[0])


def ranked(snapshots: Iterable[Snapshot]) -> list[tuple[Key, Snapshot]]:
    """One object's snapshots with their fold keys, ascending (keys depend on the set only)."""
    return _keyed(snapshots)


def ordered(snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    """One object's snapshots in the fold's total order; the last one is the state."""
    return [s for _, s in _keyed(snapshots)]


def _eligible(snapshots: Iterable[Snapshot], at: int) -> list[Snapshot]:
    return [s for s in snapshots if s.created <= at]


def state_at(snapshots: Iterable[Snapshot], at: int) -> Snapshot | None:
    """The chosen snapshot of one object among those created at or before `at`."""
    keyed = _keyed(_eligible(snapshots, at))
    return keyed[-1][1] if keyed else None


def is_ambiguous(snapshots: Iterable[Snapshot], at: int) -> bool:
    """Whether only the event id chose between differing states (S17: ask Stripe)."""
    return ambiguous_in(_keyed(_eligible(snapshots, at)))


def ambiguous_in(keyed: Sequence[tuple[Key, Snapshot]]) -> bool:
    """`is_ambiguous` over snapshots already keyed and sorted (`ranked`)."""
    if not keyed:
        return False
    top_key, winner = keyed[-1]
    rivals = [s for key, s in keyed[:-1] if key[:-2] == top_key[:-2]]
    return any(s.state != winner.state for s in rivals)


def _is_past_due(s: Snapshot) -> bool:
    return isinstance(s.state, Subscription) and s.state.status == "past_due"


def past_due_since(snapshots: Iterable[Snapshot], at: int) -> int | None:
    """Start of the current past_due episode: first of the trailing run of past_due states."""
    return past_due_in(ordered(_eligible(snapshots, at)))


def past_due_in(order: Sequence[Snapshot]) -> int | None:
    """`past_due_since` over snapshots already in the fold's order."""
    if not order or not _is_past_due(order[-1]):
        return None
    start = order[-1]
    for s in reversed(order):
        if not _is_past_due(s):
            break
        start = s
    return start.created


def eligible(snapshots: Iterable[Snapshot], at: int) -> list[Snapshot]:
    """The snapshots created at or before `at`."""
    return _eligible(snapshots, at)


ObjectKey = tuple[str, str]


def by_object(snapshots: Iterable[Snapshot]) -> dict[ObjectKey, list[Snapshot]]:
    """Group snapshots by (kind, object id), the unit the fold chooses within."""
    objects: dict[ObjectKey, list[Snapshot]] = defaultdict(list)
    for s in snapshots:
        objects[(s.kind, s.object_id)].append(s)
    return dict(objects)


FAILED = "failed"
SUCCEEDED = "succeeded"

# Payment attempts are append-only facts, not states: accumulate them (6.3, layer 1).
_ATTEMPT_OUTCOME = {
    "invoice.payment_failed": FAILED,
    "invoice.paid": SUCCEEDED,
    "invoice.payment_succeeded": SUCCEEDED,
}


@dataclass(frozen=True, order=True)
class Attempt:
    """One payment attempt on an invoice and how it ended."""

    number: int
    outcome: str


def attempt_of(s: Snapshot) -> Attempt | None:
    """The payment attempt an invoice snapshot records, if any."""
    outcome = _ATTEMPT_OUTCOME.get(s.event_type)
    if outcome is None or not isinstance(s.state, Invoice):
        return None
    # A $0 invoice is paid without any attempt.
    return Attempt(s.state.attempt_count, outcome) if s.state.attempt_count > 0 else None


def attempts(snapshots: Iterable[Snapshot], at: int) -> tuple[Attempt, ...]:
    """The set of (attempt_count, outcome) facts of one invoice up to `at`, sorted."""
    found = {a for s in _eligible(snapshots, at) if (a := attempt_of(s)) is not None}
    return tuple(sorted(found))
