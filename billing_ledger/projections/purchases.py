"""One-time purchases: a paid Checkout Session in payment mode, until refunded or disputed (pure).

A `one_time` plan (CONTRACT.md, plans file additions) is granted by its session: the
session's chosen snapshot is complete, in payment mode, and paid (`checkout.session.completed`
with `payment_status` paid, or `checkout.session.async_payment_succeeded`). What it sells
comes from `metadata.price` and from the sale this service recorded when it created the
session. The grant ends when the payment's charge (linked through the session's
payment_intent) is refunded in full or loses a dispute; a partial refund changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from billing_ledger.ledger.canonical import (
    DISPUTE,
    Charge,
    CheckoutSession,
    Dispute,
    Item,
    Sale,
    Snapshot,
)
from billing_ledger.projections.plans import Plan, Plans
from billing_ledger.projections.shapes import json_of

PAID = "paid"
REFUNDED = "refunded"
DISPUTED = "disputed"
LOST = "lost"  # the dispute status that takes the money back


@dataclass(frozen=True)
class PurchaseAccess:
    """One one-time purchase as the policy sees it at `at`."""

    id: str  # the Checkout Session's id
    customer_id: str | None
    price_ids: tuple[str, ...]
    status: str  # paid, refunded or disputed
    grants_access: bool
    plan_ids: tuple[str, ...] = ()  # the one_time plans its prices select
    features: tuple[str, ...] = ()
    event_id: str = ""  # the event that decided the status (payment, refund or dispute)
    charge_id: str | None = None
    denied: str | None = None  # why it grants nothing, when it does not

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT.md purchase object."""
        return json_of(self, "id price_ids status grants_access")


@dataclass(frozen=True)
class Paying:
    """What one purchase reads: its session's chosen snapshot and those of its payment."""

    session: Snapshot
    sale: Snapshot | None
    charges: Sequence[Snapshot]
    disputes: Sequence[Snapshot]


def is_paid(session: CheckoutSession) -> bool:
    """Whether a session's state is a paid one-time payment."""
    return (
        session.mode == "payment"
        and session.status == "complete"
        and session.payment_status == PAID
    )


def _price_ids(paying: Paying) -> tuple[str, ...]:
    session = paying.session.state
    assert isinstance(session, CheckoutSession)
    found = {session.price_id} if session.price_id else set()
    if paying.sale is not None and isinstance(paying.sale.state, Sale):
        found.update(paying.sale.state.price_ids)
    return tuple(sorted(found))


def _one_time_plans(price_ids: Iterable[str], plans: Plans) -> list[Plan]:
    matched = {
        p.id: p
        for p in (plans.plan_for_item(Item(pid, None, None, None, None)) for pid in price_ids)
        if p is not None and p.one_time
    }
    return [matched[k] for k in sorted(matched)]


def _ending(paying: Paying) -> tuple[str, Snapshot, str] | None:
    """(status, snapshot, charge id) of what ended the purchase, if anything did."""
    for s in paying.disputes:
        if isinstance(s.state, Dispute) and s.state.status == LOST:
            return DISPUTED, s, s.state.charge_id
    for s in paying.charges:
        charge = s.state
        if isinstance(charge, Charge) and _refunded_in_full(charge):
            return REFUNDED, s, charge.id
    return None


def _refunded_in_full(charge: Charge) -> bool:
    if charge.amount > 0:
        return charge.amount_refunded >= charge.amount
    return charge.refunded


def purchase(paying: Paying, plans: Plans, deleted: frozenset[str]) -> PurchaseAccess:
    """Apply the one-time rules to one paid session."""
    session = paying.session.state
    assert isinstance(session, CheckoutSession)
    price_ids = _price_ids(paying)
    matched = _one_time_plans(price_ids, plans)
    ended = _ending(paying)
    status, decided, charge_id = ended or (PAID, paying.session, None)
    denied = None if status == PAID else f"{session.id} is {status} (charge {charge_id})"
    if session.customer_id in deleted:
        denied = f"customer {session.customer_id} is deleted"
    return PurchaseAccess(
        id=session.id,
        customer_id=session.customer_id,
        price_ids=price_ids,
        status=status,
        grants_access=denied is None,
        plan_ids=tuple(p.id for p in matched),
        features=tuple(sorted({f for p in matched for f in p.features})),
        event_id=decided.event_id,
        charge_id=charge_id,
        denied=denied,
    )


def payings(
    sessions: Iterable[Snapshot],
    sales: Mapping[str, Snapshot],
    charges: Iterable[Snapshot],
    disputes: Mapping[str, Snapshot],
) -> list[Paying]:
    """Each paid session with what its payment became, from each object's chosen snapshot."""
    by_intent: dict[str, list[Snapshot]] = {}
    for s in charges:
        if isinstance(s.state, Charge) and s.state.payment_intent_id:
            by_intent.setdefault(s.state.payment_intent_id, []).append(s)
    found = []
    for s in sorted(sessions, key=lambda s: s.object_id):
        session = s.state
        if not isinstance(session, CheckoutSession) or not is_paid(session):
            continue
        paid_by = sorted(by_intent.get(session.payment_intent_id or "", ()), key=_id)
        disputed = [disputes[c.object_id] for c in paid_by if c.object_id in disputes]
        found.append(Paying(s, sales.get(session.id), paid_by, disputed))
    return found


def _id(s: Snapshot) -> str:
    return s.object_id


def attached(snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    """The snapshots with each dispute given its charge's customer (a dispute names only its
    charge), as the views attach them; disputes of charges not among them stay unattached."""
    pile = list(snapshots)
    owners = sorted(
        (s.object_id, s.state.customer_id)
        for s in pile
        if isinstance(s.state, Charge) and s.state.customer_id
    )
    customers = dict(owners)  # the greatest customer of a charge, as the views' MAX
    return [with_customer(s, customers.get(s.object_id)) if s.kind == DISPUTE else s for s in pile]


def with_customer(snapshot: Snapshot, customer_id: str | None) -> Snapshot:
    """A dispute's snapshot with the customer its charge belongs to."""
    state = snapshot.state
    if not isinstance(state, Dispute) or customer_id is None or state.customer_id is not None:
        return snapshot
    return replace(snapshot, state=replace(state, customer_id=customer_id))
