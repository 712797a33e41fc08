"""Which app user a Stripe customer belongs to, as each snapshot tells it (CONTRACT.md)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from billing_ledger.ledger.canonical import (
    CUSTOMER,
    SUBSCRIPTION,
    Charge,
    CheckoutSession,
    Customer,
    Dispute,
    EntitlementSummary,
    Invoice,
    Link,
    Sale,
    Snapshot,
    Subscription,
)
from billing_ledger.ledger.user_ids import linkable
from billing_ledger.projections.fold import Key, ranked

VIA_CHECKOUT = "checkout_session"
VIA_CUSTOMER = "customer_metadata"
VIA_SUBSCRIPTION = "subscription_metadata"
VIA_LEDGER = "ledger"
# Links that follow their object's metadata: the latest snapshot naming a user decides.
_METADATA = {VIA_CUSTOMER: CUSTOMER, VIA_SUBSCRIPTION: SUBSCRIPTION}


@dataclass(frozen=True, slots=True)
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
_OWNED = (Subscription, Invoice, CheckoutSession, EntitlementSummary, Link, Charge, Dispute, Sale)


def customer_of(snapshot: Snapshot) -> str | None:
    """The Stripe customer a snapshot belongs to (how a user's snapshots are gathered)."""
    state = snapshot.state
    if isinstance(state, Customer):
        return state.id
    if isinstance(state, _OWNED):
        return state.customer_id
    return None


@dataclass(frozen=True)
class Span:
    """A user holds a customer from `start` until `end` (None: for good, deleted or not)."""

    customer_id: str
    start: int
    end: int | None = None

    def holds(self, at: int) -> bool:
        """Whether the link holds at `at`."""
        return self.start <= at and (self.end is None or at < self.end)


def _owners(snapshots: Iterable[Snapshot]) -> list[tuple[int, str]]:
    """(created, user) each time the metadata's owner of one object may change, in order.

    The owner at `at` is the user named by the greatest, in the fold's order, of the
    snapshots created by `at` that name a user; a snapshot naming nobody moves nothing."""
    best: dict[int, tuple[Key, str]] = {}
    for key, s in ranked(snapshots):
        user = getattr(s.state, "app_user_id", None)
        if user and (s.created not in best or key > best[s.created][0]):
            best[s.created] = (key, user)
    found: list[tuple[int, str]] = []
    top: Key | None = None
    for created in sorted(best):
        key, user = best[created]
        if top is None or key > top:
            top = key
            found.append((created, user))
    return found


def _runs(owners: list[tuple[int, str]], user_id: str, customer_id: str) -> list[Span]:
    """The intervals during which `user_id` is the owner."""
    spans: list[Span] = []
    start: int | None = None
    for created, user in owners:
        if user == user_id and start is None:
            start = created
        elif user != user_id and start is not None:
            spans.append(Span(customer_id, start, created))
            start = None
    if start is not None:
        spans.append(Span(customer_id, start))
    return spans


def _objects_of(
    row: LinkRow, kind: str, carrier: Snapshot | None, pile: list[Snapshot]
) -> set[tuple[str, str]]:
    """The objects whose metadata a metadata link follows. Without its own snapshot (a read
    that loaded only each object's present): the customer, or the customer's subscriptions."""
    if carrier is not None:
        return {(kind, carrier.object_id)}
    if kind == CUSTOMER:
        return {(CUSTOMER, row.customer_id)}
    return {
        (s.kind, s.object_id) for s in pile if s.kind == kind and customer_of(s) == row.customer_id
    }


def spans(user_id: str, links: Iterable[LinkRow], snapshots: Iterable[Snapshot]) -> list[Span]:
    """When each of the user's links holds (CONTRACT.md): Checkout and the service's own
    links for good; a metadata link until that object's metadata names another user."""
    pile = list(snapshots)
    by_event = {s.event_id: s for s in reversed(pile)}  # the first rendering of an id
    grouped: dict[tuple[str, str], list[Snapshot]] = defaultdict(list)
    for s in pile:
        grouped[(s.kind, s.object_id)].append(s)
    owners: dict[tuple[str, str], list[tuple[int, str]]] = {}
    found: set[Span] = set()
    for row in links:
        kind = _METADATA.get(row.via)
        followed = _objects_of(row, kind, by_event.get(row.event_id), pile) if kind else set()
        for key in followed - owners.keys():
            owners[key] = _owners(grouped[key])
        named = sorted(key for key in followed if owners[key])
        if not named:  # nothing loaded names anyone: the link's own word holds
            found.add(Span(row.customer_id, row.created))
        for key in named:
            found.update(_runs(owners[key], user_id, row.customer_id))
    return sorted(found, key=lambda sp: (sp.start, sp.customer_id, sp.end or 0))
