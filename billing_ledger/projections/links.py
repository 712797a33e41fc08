"""Which app user a Stripe customer belongs to, as each snapshot tells it (CONTRACT.md)."""

from __future__ import annotations

from dataclasses import dataclass

from billing_ledger.ledger.canonical import (
    CheckoutSession,
    Customer,
    EntitlementSummary,
    Invoice,
    Link,
    Snapshot,
    Subscription,
)
from billing_ledger.ledger.user_ids import linkable

VIA_CHECKOUT = "checkout_session"
VIA_CUSTOMER = "customer_metadata"
VIA_SUBSCRIPTION = "subscription_metadata"
VIA_LEDGER = "ledger"


@dataclass(frozen=True)
class LinkRow:
    """One piece of evidence that a user owns a customer, from `created` on."""

    user_id: str
    customer_id: str
    created: int
    event_id: str
    via: str


def _row(
    snapshot: Snapshot, user_id: str | None, customer_id: str | None, via: str
) -> list[LinkRow]:
    if not user_id or not customer_id or not linkable(user_id):
        return []  # an id the reads could never serve is not linked (ledger/user_ids.py)
    return [LinkRow(user_id, customer_id, snapshot.created, snapshot.event_id, via)]


def links_of(snapshot: Snapshot) -> list[LinkRow]:
    """The user links a snapshot carries (none for most)."""
    state = snapshot.state
    if isinstance(state, CheckoutSession):
        # Only a completed session is the authoritative link; an expired one proves nothing.
        if state.status != "complete":
            return []
        return _row(snapshot, state.client_reference_id, state.customer_id, VIA_CHECKOUT)
    if isinstance(state, Customer):
        return _row(snapshot, state.app_user_id, state.id, VIA_CUSTOMER)
    if isinstance(state, Subscription):
        return _row(snapshot, state.app_user_id, state.customer_id, VIA_SUBSCRIPTION)
    if isinstance(state, Link):
        return _row(snapshot, state.user_id, state.customer_id, VIA_LEDGER)
    return []


# A tuple, not `A | B | ...`: that builds a union object on every call of a hot path.
_OWNED = (Subscription, Invoice, CheckoutSession, EntitlementSummary, Link)


def customer_of(snapshot: Snapshot) -> str | None:
    """The Stripe customer a snapshot belongs to (how a user's snapshots are gathered)."""
    state = snapshot.state
    if isinstance(state, Customer):
        return state.id
    if isinstance(state, _OWNED):
        return state.customer_id
    return None
