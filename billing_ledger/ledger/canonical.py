"""The canonical shapes the projections read, whatever Stripe API version rendered the event.

`normalise.py` turns a stored event into one `Snapshot` (or None when the event carries no
state the projections use). Every shape here is a frozen dataclass and round-trips through
JSON (`snapshot_to_json` / `snapshot_from_json`), which is how the views store them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

# Snapshot kinds.
SUBSCRIPTION = "subscription"
INVOICE = "invoice"
CUSTOMER = "customer"
CHECKOUT_SESSION = "checkout_session"
ENTITLEMENT_SUMMARY = "entitlement_summary"
LINK = "link"  # a user-to-customer link this service recorded itself (ledger.customer_link)
PRODUCT = "product"
PRICE = "price"
CHARGE = "charge"
DISPUTE = "dispute"  # keyed by its charge: Stripe lets a charge be disputed once
SALE = "checkout_sale"  # what a Checkout Session this service created sells (our own event)

# What a snapshot may keep of a payload, whatever a sender signed (normalise.py applies
# these before any fold sees it; nothing else of a payload is copied into a snapshot).
MAX_ID = 255  # ids and user ids: what the store and the /v1 routes accept
MAX_TEXT = 2048  # any other text (a status, a URL, an email)
MAX_INT = 2**53 - 1  # |n|: exact in JSON everywhere; sums with a leeway stay in 64 bits
MAX_ITEMS = 100  # subscription items (Stripe allows 20)
MAX_LOOKUP_KEYS = 1000  # entitlements of one summary (Stripe embeds at most 10)
MAX_DEPTH = 8  # nesting of a previous_attributes value (Stripe objects nest about 5 deep)
MAX_PREVIOUS = 16_384  # previous_attributes kept per snapshot, in roughly encoded bytes


@dataclass(frozen=True, slots=True)
class Item:
    """One subscription item: what is bought, and its billing period."""

    price_id: str | None
    lookup_key: str | None
    product_id: str | None
    current_period_start: int | None
    current_period_end: int | None
    quantity: int | None = None


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription's state as one event rendered it."""

    id: str
    customer_id: str | None
    status: str
    items: tuple[Item, ...]
    current_period_end: int | None  # max over items; the top-level field before basil
    cancel_at: int | None
    cancel_at_period_end: bool
    canceled_at: int | None
    ended_at: int | None
    trial_end: int | None
    app_user_id: str | None  # metadata.app_user_id
    cancellation_reason: str | None = None
    pause_collection: bool = False  # a collection pause: does not change access
    has_pending_update: bool = False  # items still show the old prices while pending


@dataclass(frozen=True, slots=True)
class Invoice:
    """An invoice's state as one event rendered it."""

    id: str
    customer_id: str | None
    subscription_id: str | None  # top level before basil, parent.subscription_details after
    status: str | None
    paid: bool  # status == "paid" (the `paid` boolean before basil)
    amount_due: int
    amount_paid: int
    amount_remaining: int
    currency: str | None
    attempt_count: int
    next_payment_attempt: int | None
    billing_reason: str | None
    hosted_invoice_url: str | None
    created: int | None  # the invoice object's own `created`
    paid_at: int | None  # status_transitions.paid_at
    voided_at: int | None = None
    finalized_at: int | None = None
    marked_uncollectible_at: int | None = None
    deleted: bool = False  # invoice.deleted: a draft removed for good
    number: str | None = None  # the invoice number a customer sees (set once finalized)
    invoice_pdf: str | None = None


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer as one event rendered it."""

    id: str
    deleted: bool
    app_user_id: str | None  # metadata.app_user_id
    email: str | None = None


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    """A Checkout Session: the authoritative user link once complete."""

    id: str
    customer_id: str | None
    subscription_id: str | None
    client_reference_id: str | None
    mode: str | None
    status: str | None
    payment_status: str | None
    payment_intent_id: str | None = None  # payment mode: the payment its charge belongs to
    price_id: str | None = None  # metadata.price, which this service puts on its sessions


@dataclass(frozen=True, slots=True)
class EntitlementSummary:
    """A customer's active entitlement summary (customer-wide)."""

    customer_id: str
    lookup_keys: tuple[str, ...]
    complete: bool  # False when Stripe truncated the list (has_more): never trust it whole


@dataclass(frozen=True, slots=True)
class Link:
    """A user-to-customer link this service recorded itself."""

    user_id: str
    customer_id: str


@dataclass(frozen=True, slots=True)
class Product:
    """A catalog product as one event rendered it."""

    id: str
    name: str | None
    description: str | None
    active: bool
    deleted: bool = False  # product.deleted: removed for good


@dataclass(frozen=True, slots=True)
class Price:
    """A catalog price as one event rendered it."""

    id: str
    product_id: str | None
    unit_amount: int | None
    currency: str | None
    type: str | None  # one_time or recurring
    interval: str | None  # recurring.interval
    interval_count: int | None
    lookup_key: str | None
    active: bool  # false once archived
    nickname: str | None = None
    deleted: bool = False  # price.deleted: removed for good


@dataclass(frozen=True, slots=True)
class Charge:
    """A charge: how much of it was refunded."""

    id: str
    customer_id: str | None
    payment_intent_id: str | None
    amount: int
    amount_refunded: int
    refunded: bool  # Stripe's own "fully refunded"


@dataclass(frozen=True, slots=True)
class Dispute:
    """A dispute of one charge; `lost` takes the money back for good."""

    charge_id: str
    id: str
    payment_intent_id: str | None
    status: str
    customer_id: str | None = None  # the charge's, once the views know it (not in the body)


@dataclass(frozen=True, slots=True)
class Sale:
    """What one Checkout Session created by this service sells, to whom."""

    session_id: str
    customer_id: str | None
    user_id: str | None
    price_ids: tuple[str, ...]
    mode: str | None


State = (
    Subscription
    | Invoice
    | Customer
    | CheckoutSession
    | EntitlementSummary
    | Link
    | Product
    | Price
    | Charge
    | Dispute
    | Sale
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One object's state at one event, with what orders it among its siblings."""

    kind: str
    object_id: str
    event_id: str
    event_type: str
    created: int  # the event's `created`; for an observation, the time observed
    state: State
    observation: bool = False  # a recorded re-fetch (ledger.observation)
    previous: dict[str, Any] = field(default_factory=dict)  # data.previous_attributes


_CLASSES: dict[str, type[State]] = {
    SUBSCRIPTION: Subscription,
    INVOICE: Invoice,
    CUSTOMER: Customer,
    CHECKOUT_SESSION: CheckoutSession,
    ENTITLEMENT_SUMMARY: EntitlementSummary,
    LINK: Link,
    PRODUCT: Product,
    PRICE: Price,
    CHARGE: Charge,
    DISPUTE: Dispute,
    SALE: Sale,
}


def snapshot_to_json(snapshot: Snapshot) -> bytes:
    """Serialise a snapshot (orjson writes dataclasses natively)."""
    return orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS)


class _Envelope(msgspec.Struct):
    """A stored snapshot with its state still undecoded (its class depends on `kind`)."""

    kind: str
    object_id: str
    event_id: str
    event_type: str
    created: int
    state: msgspec.Raw
    observation: bool = False
    previous: dict[str, Any] = msgspec.field(default_factory=dict)


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_STATES = {kind: msgspec.json.Decoder(cls) for kind, cls in _CLASSES.items()}


def snapshot_from_json(raw: bytes | str) -> Snapshot:
    """Rebuild a snapshot serialised by `snapshot_to_json`: decoded straight into the
    classes (msgspec, strictly typed: a third of the cost of building them from a parsed
    dict); a row the classes do not type (a field from before a default was added, a number
    where a string was stored, 1.0 for 1) goes the general way, so both give one snapshot."""
    try:
        envelope = _ENVELOPE.decode(raw)
        state = _STATES[envelope.kind].decode(envelope.state)
    except (msgspec.ValidationError, KeyError):
        return snapshot_from_data(orjson.loads(raw))
    return Snapshot(
        envelope.kind,
        envelope.object_id,
        envelope.event_id,
        envelope.event_type,
        envelope.created,
        state,
        envelope.observation,
        envelope.previous,
    )


def snapshot_from_data(data: dict[str, Any]) -> Snapshot:
    """A snapshot from its parsed JSON, whatever the types of its values."""
    state_data = dict(data["state"])
    if data["kind"] == SUBSCRIPTION:
        state_data["items"] = tuple(Item(**i) for i in state_data["items"])
    if data["kind"] == ENTITLEMENT_SUMMARY:
        state_data["lookup_keys"] = tuple(state_data["lookup_keys"])
    if data["kind"] == SALE:
        state_data["price_ids"] = tuple(state_data["price_ids"])
    data["state"] = _CLASSES[data["kind"]](**state_data)
    return Snapshot(**data)
