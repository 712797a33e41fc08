"""The upcaster: any supported Stripe API version's event body to one canonical `Snapshot`.

Supported renderings: localstripe's 2017-08-15 (`plan` instead of `price`, periods on the
subscription), 2020-08-27, 2025-02-24.acacia, and basil (2025-03-31) through
2026-10-28.endive (periods on items, the invoice's subscription under `parent`).
Pure: bytes in, a frozen snapshot (or None) out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from billing_ledger.ledger.canonical import (
    CHARGE,
    CHECKOUT_SESSION,
    CUSTOMER,
    DISPUTE,
    ENTITLEMENT_SUMMARY,
    INVOICE,
    LINK,
    MAX_DEPTH,
    MAX_ID,
    MAX_INT,
    MAX_ITEMS,
    MAX_LOOKUP_KEYS,
    MAX_PREVIOUS,
    MAX_TEXT,
    PRICE,
    PRODUCT,
    SALE,
    SUBSCRIPTION,
    Charge,
    CheckoutSession,
    Customer,
    Dispute,
    EntitlementSummary,
    Invoice,
    Item,
    Link,
    Price,
    Product,
    Sale,
    Snapshot,
    State,
    Subscription,
)
from billing_ledger.ledger.own_events import CHECKOUT_SALE, CUSTOMER_LINK, OBSERVATION
from billing_ledger.ledger.records import Recorded

THIN_EVENT_OBJECT = "v2.core.event"

Json = Mapping[str, Any]


class NormaliseError(ValueError):
    """A stored event whose body cannot be read as the Stripe object its type promises."""

    def __init__(self, event_id: str, problem: str) -> None:
        super().__init__(f"event {event_id}: {problem}")
        self.event_id = event_id
        self.problem = problem


class _Malformed(Exception):
    """Raised inside the readers; `normalise` adds the event id."""


# -- small readers that never trust a field's type --------------------------------------
# The rule for every field a fold reads: a value of the wrong type or beyond its bound
# (canonical.py) reads as absent; only a missing id or status, or more than MAX_ITEMS items,
# refuses the event (the runner skips it, listed).


# A body is orjson's: its values are exactly str, int, float, bool, dict, list or None, so
# `type(v) is int` says "an int, not a bool" in one test (this runs ~30 times an event).


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    return value if type(value) is str and 0 < len(value) <= limit else None


def _str(obj: Json, key: str) -> str | None:
    return _text(obj.get(key))


def _int(obj: Json, key: str) -> int | None:
    value = obj.get(key)
    # bool is an int in Python; a boolean is never a timestamp or an amount.
    return value if type(value) is int and -MAX_INT <= value <= MAX_INT else None


def _dict(obj: Json, key: str) -> Json:
    value = obj.get(key)
    return value if type(value) is dict else {}


def _id_of(value: Any) -> str | None:
    """An id, whether Stripe sent it bare or as an expanded object."""
    if type(value) is dict:
        value = value.get("id")
    return _text(value, MAX_ID)


def _required_id(obj: Json, key: str = "id") -> str:
    value = _id_of(obj.get(key))
    if value is None:
        raise _Malformed(f"data.object has no {key}")
    return value


def _app_user_id(obj: Json) -> str | None:
    # Only this one value of the metadata is kept, whatever else it holds.
    return _text(_dict(obj, "metadata").get("app_user_id"), MAX_ID)


# -- subscriptions ----------------------------------------------------------------------


def _item(raw: Json) -> Item:
    """One item; `price` since 2018, the legacy `plan` (whose id is the price id) before."""
    price = raw.get("price")
    plan = _dict(raw, "plan")
    if isinstance(price, str):  # an unexpanded price: only its id is known
        return _item_period(raw, _text(price, MAX_ID), None, _id_of(plan.get("product")))
    source: Json = price if isinstance(price, dict) else plan
    return _item_period(
        raw, _str(source, "id"), _str(source, "lookup_key"), _id_of(source.get("product"))
    )


def _item_period(raw: Json, price_id: str | None, lookup: str | None, product: str | None) -> Item:
    return Item(
        price_id=price_id,
        lookup_key=lookup,
        product_id=product,
        current_period_start=_int(raw, "current_period_start"),
        current_period_end=_int(raw, "current_period_end"),
        quantity=_int(raw, "quantity"),
    )


def _items(obj: Json) -> tuple[Item, ...]:
    data = _dict(obj, "items").get("data")
    raw_items = [raw for raw in data if isinstance(raw, dict)] if isinstance(data, list) else []
    if len(raw_items) > MAX_ITEMS:
        # Items decide access: a list cut short would grant or deny at random, so refuse it.
        raise _Malformed(f"subscription has more than {MAX_ITEMS} items")
    if not raw_items and isinstance(obj.get("plan"), dict):
        # 2017-era single-plan subscriptions carry the plan and quantity at the top level.
        raw_items = [{"plan": obj["plan"], "quantity": obj.get("quantity")}]
    return tuple(_item(raw) for raw in raw_items)


def _period_end(obj: Json, items: tuple[Item, ...]) -> int | None:
    """Basil moved periods onto items; the subscription's field remains before it."""
    ends = [i.current_period_end for i in items if i.current_period_end is not None]
    return max(ends) if ends else _int(obj, "current_period_end")


def subscription_state(event_type: str, obj: Json) -> Subscription:
    """Read a Stripe subscription object of any supported version."""
    status = _str(obj, "status")
    if status is None:
        raise _Malformed("subscription has no status")
    items = _items(obj)
    return Subscription(
        id=_required_id(obj),
        customer_id=_id_of(obj.get("customer")),
        status=status,
        items=items,
        current_period_end=_period_end(obj, items),
        cancel_at=_int(obj, "cancel_at"),
        cancel_at_period_end=obj.get("cancel_at_period_end") is True,
        canceled_at=_int(obj, "canceled_at"),
        ended_at=_int(obj, "ended_at"),
        trial_end=_int(obj, "trial_end"),
        app_user_id=_app_user_id(obj),
        cancellation_reason=_str(_dict(obj, "cancellation_details"), "reason"),
        pause_collection=bool(obj.get("pause_collection")),
        has_pending_update=bool(obj.get("pending_update")),
    )


# -- invoices ---------------------------------------------------------------------------


def _invoice_subscription(obj: Json) -> str | None:
    """Top-level `subscription` up to acacia; `parent.subscription_details` from basil."""
    top = _id_of(obj.get("subscription"))
    if top is not None:
        return top
    parent = _dict(obj, "parent")
    if parent.get("type") not in (None, "subscription_details"):
        return None  # e.g. quote_details: the invoice does not bill a subscription
    return _id_of(_dict(parent, "subscription_details").get("subscription"))


def _invoice_status(obj: Json) -> str | None:
    status = _str(obj, "status")
    # Invoices older than 2017 have no status, only the `paid` boolean.
    if status is None and obj.get("paid") is True:
        return "paid"
    return status


def invoice_state(event_type: str, obj: Json) -> Invoice:
    """Read a Stripe invoice object of any supported version."""
    status = _invoice_status(obj)
    transitions = _dict(obj, "status_transitions")
    amount_due = _int(obj, "amount_due") or 0
    amount_paid = _int(obj, "amount_paid") or 0
    remaining = _int(obj, "amount_remaining")
    return Invoice(
        id=_required_id(obj),
        customer_id=_id_of(obj.get("customer")),
        subscription_id=_invoice_subscription(obj),
        status=status,
        # Basil removed the `paid` boolean: derive it from the status, keep it before.
        paid=status == "paid" or obj.get("paid") is True,
        amount_due=amount_due,
        amount_paid=amount_paid,
        amount_remaining=remaining if remaining is not None else amount_due - amount_paid,
        currency=_str(obj, "currency"),
        attempt_count=_int(obj, "attempt_count") or 0,
        next_payment_attempt=_int(obj, "next_payment_attempt"),
        billing_reason=_str(obj, "billing_reason"),
        hosted_invoice_url=_str(obj, "hosted_invoice_url"),
        created=_int(obj, "created") or _int(obj, "date"),  # `date` before 2019
        paid_at=_int(transitions, "paid_at"),
        voided_at=_int(transitions, "voided_at"),
        finalized_at=_int(transitions, "finalized_at"),
        marked_uncollectible_at=_int(transitions, "marked_uncollectible_at"),
        deleted=event_type == "invoice.deleted" or obj.get("deleted") is True,
        number=_str(obj, "number"),
        invoice_pdf=_str(obj, "invoice_pdf"),
    )


# -- customers, Checkout, entitlements, our own links -----------------------------------


def customer_state(event_type: str, obj: Json) -> Customer:
    """Read a customer; `customer.deleted` bodies do not always say `deleted: true`."""
    return Customer(
        id=_required_id(obj),
        deleted=event_type == "customer.deleted" or obj.get("deleted") is True,
        app_user_id=_app_user_id(obj),
        email=_str(obj, "email"),
    )


# Older Checkout renderings have no `status`: the event type says what happened.
_CHECKOUT_STATUS_BY_TYPE = {
    "checkout.session.completed": "complete",
    "checkout.session.async_payment_succeeded": "complete",
    "checkout.session.async_payment_failed": "complete",
    "checkout.session.expired": "expired",
}


def checkout_state(event_type: str, obj: Json) -> CheckoutSession:
    """Read a Checkout Session."""
    return CheckoutSession(
        id=_required_id(obj),
        customer_id=_id_of(obj.get("customer")),
        subscription_id=_id_of(obj.get("subscription")),
        client_reference_id=_text(obj.get("client_reference_id"), MAX_ID),
        mode=_str(obj, "mode"),
        status=_str(obj, "status") or _CHECKOUT_STATUS_BY_TYPE.get(event_type),
        payment_status=_str(obj, "payment_status"),
        payment_intent_id=_id_of(obj.get("payment_intent")),
        price_id=_text(_dict(obj, "metadata").get("price"), MAX_ID),
    )


def _lookup_key(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    return _str(entry, "lookup_key") or _str(_dict(entry, "feature"), "lookup_key")


def summary_state(event_type: str, obj: Json) -> EntitlementSummary:
    """Read an active entitlement summary; a list cut short by `has_more` is incomplete."""
    raw = obj.get("entitlements")
    listed = raw if isinstance(raw, dict) else {"data": raw, "has_more": False}
    data = listed.get("data")
    keys = sorted({k for k in map(_lookup_key, data if isinstance(data, list) else []) if k})
    # A list of the wrong type or past the bound is kept like one Stripe cut short (has_more):
    # never trusted whole, so the plans decide.
    whole = data is None or (isinstance(data, list) and len(keys) <= MAX_LOOKUP_KEYS)
    return EntitlementSummary(
        customer_id=_required_id(obj, "customer"),
        lookup_keys=tuple(keys[:MAX_LOOKUP_KEYS]),
        complete=whole and listed.get("has_more") is not True,
    )


def link_state(event_type: str, obj: Json) -> Link:
    """Read a user-to-customer link this service recorded."""
    user_id = _text(obj.get("user_id"), MAX_ID)
    if user_id is None:
        raise _Malformed("customer link has no user_id")
    return Link(user_id=user_id, customer_id=_required_id(obj, "customer"))


# -- one-time purchases: charges, disputes, our own sale records ---------------------------


def charge_state(event_type: str, obj: Json) -> Charge:
    """Read a charge (its refunds as the amount refunded so far)."""
    return Charge(
        id=_required_id(obj),
        customer_id=_id_of(obj.get("customer")),
        payment_intent_id=_id_of(obj.get("payment_intent")),
        amount=_int(obj, "amount") or 0,
        amount_refunded=_int(obj, "amount_refunded") or 0,
        refunded=obj.get("refunded") is True,
    )


def dispute_state(event_type: str, obj: Json) -> Dispute:
    """Read a dispute; its charge is its key (a charge is disputed at most once)."""
    status = _str(obj, "status")
    if status is None:
        raise _Malformed("dispute has no status")
    return Dispute(
        charge_id=_required_id(obj, "charge"),
        id=_required_id(obj),
        payment_intent_id=_id_of(obj.get("payment_intent")),
        status=status,
    )


def sale_state(event_type: str, obj: Json) -> Sale:
    """Read what a Checkout Session this service created sells."""
    prices = obj.get("prices")
    listed = [p for p in prices if _text(p, MAX_ID)] if isinstance(prices, list) else []
    return Sale(
        session_id=_required_id(obj, "session"),
        customer_id=_id_of(obj.get("customer")),
        user_id=_text(obj.get("user_id"), MAX_ID),
        price_ids=tuple(sorted(set(listed))[:MAX_ITEMS]),
        mode=_str(obj, "mode"),
    )


# -- the catalog: products and prices ----------------------------------------------------


def product_state(event_type: str, obj: Json) -> Product:
    """Read a product; `product.deleted` bodies may still say `active: true`."""
    return Product(
        id=_required_id(obj),
        name=_str(obj, "name"),
        description=_str(obj, "description"),
        active=obj.get("active") is not False,
        deleted=event_type == "product.deleted" or obj.get("deleted") is True,
    )


def price_state(event_type: str, obj: Json) -> Price:
    """Read a price (or a legacy plan, whose id is the price id and whose amount is `amount`)."""
    recurring = _dict(obj, "recurring")
    interval = _str(recurring, "interval") or _str(obj, "interval")
    kind = _str(obj, "type") or ("recurring" if interval else None)
    amount = _int(obj, "unit_amount")
    return Price(
        id=_required_id(obj),
        product_id=_id_of(obj.get("product")),
        unit_amount=amount if amount is not None else _int(obj, "amount"),
        currency=_str(obj, "currency"),
        type=kind,
        interval=interval,
        interval_count=_int(recurring, "interval_count") or _int(obj, "interval_count"),
        lookup_key=_text(obj.get("lookup_key"), MAX_ID),
        active=obj.get("active") is not False,
        nickname=_str(obj, "nickname"),
        deleted=event_type in ("price.deleted", "plan.deleted") or obj.get("deleted") is True,
    )


# -- dispatch ---------------------------------------------------------------------------

Reader = Callable[[str, Json], State]

_SUBSCRIPTION = (SUBSCRIPTION, subscription_state)
_INVOICE = (INVOICE, invoice_state)
_CUSTOMER = (CUSTOMER, customer_state)
_CHECKOUT = (CHECKOUT_SESSION, checkout_state)
_SUMMARY = (ENTITLEMENT_SUMMARY, summary_state)
_PRODUCT = (PRODUCT, product_state)
_PRICE = (PRICE, price_state)
_CHARGE = (CHARGE, charge_state)
_DISPUTE = (DISPUTE, dispute_state)

READERS: dict[str, tuple[str, Reader]] = {
    "customer.subscription.created": _SUBSCRIPTION,
    "customer.subscription.updated": _SUBSCRIPTION,
    "customer.subscription.deleted": _SUBSCRIPTION,
    "customer.subscription.paused": _SUBSCRIPTION,
    "customer.subscription.resumed": _SUBSCRIPTION,
    "customer.subscription.trial_will_end": _SUBSCRIPTION,  # a notification; same state
    "customer.subscription.pending_update_applied": _SUBSCRIPTION,
    "customer.subscription.pending_update_expired": _SUBSCRIPTION,
    "invoice.created": _INVOICE,
    "invoice.finalized": _INVOICE,
    "invoice.updated": _INVOICE,
    "invoice.paid": _INVOICE,
    "invoice.payment_succeeded": _INVOICE,  # a logical duplicate of invoice.paid
    "invoice.payment_failed": _INVOICE,
    "invoice.payment_action_required": _INVOICE,
    "invoice.voided": _INVOICE,
    "invoice.marked_uncollectible": _INVOICE,
    "invoice.deleted": _INVOICE,
    # invoice.upcoming is absent on purpose: it renders a preview, not a stored invoice (S57).
    "customer.created": _CUSTOMER,
    "customer.updated": _CUSTOMER,
    "customer.deleted": _CUSTOMER,
    "checkout.session.completed": _CHECKOUT,
    "checkout.session.async_payment_succeeded": _CHECKOUT,
    "checkout.session.async_payment_failed": _CHECKOUT,
    "checkout.session.expired": _CHECKOUT,
    "entitlements.active_entitlement_summary.updated": _SUMMARY,
    CUSTOMER_LINK: (LINK, link_state),
    "product.created": _PRODUCT,
    "product.updated": _PRODUCT,
    "product.deleted": _PRODUCT,
    "price.created": _PRICE,
    "price.updated": _PRICE,
    "price.deleted": _PRICE,
    # Plans are the prices of API versions before 2018 (a plan's id is its price's id).
    "plan.created": _PRICE,
    "plan.updated": _PRICE,
    "plan.deleted": _PRICE,
    "charge.succeeded": _CHARGE,
    "charge.captured": _CHARGE,
    "charge.updated": _CHARGE,
    "charge.refunded": _CHARGE,
    "charge.dispute.created": _DISPUTE,
    "charge.dispute.updated": _DISPUTE,
    "charge.dispute.closed": _DISPUTE,
    "charge.dispute.funds_withdrawn": _DISPUTE,
    "charge.dispute.funds_reinstated": _DISPUTE,
    CHECKOUT_SALE: (SALE, sale_state),
}

# What a recorded re-fetch (`ledger.observation`) may hold, keyed by the object's `object`.
OBSERVED: dict[str, tuple[str, Reader]] = {
    "subscription": _SUBSCRIPTION,
    "invoice": _INVOICE,
    "customer": _CUSTOMER,
    "entitlements.active_entitlement_summary": _SUMMARY,
    "product": _PRODUCT,
    "price": _PRICE,
    "plan": _PRICE,
}


def body_of(event: Recorded) -> Json:
    """The event's parsed body, as `normalise` reads it (a NormaliseError when it is not a
    JSON object): a caller that reads the body too parses it once (projections/runner.py)."""
    try:
        body = event.payload()
    except orjson.JSONDecodeError:
        raise NormaliseError(event.event_id, "body is not JSON") from None
    if not isinstance(body, dict):
        raise NormaliseError(event.event_id, "body is not a JSON object")
    return body


def _data(event: Recorded, body: Json) -> tuple[Json, dict[str, Any]]:
    data = body.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(obj, dict):
        raise NormaliseError(event.event_id, "data.object is missing or not an object")
    previous = data.get("previous_attributes")
    return obj, bounded_previous(previous) if isinstance(previous, dict) else {}


def bounded_previous(previous: Json) -> dict[str, Any]:
    """The previous_attributes a snapshot keeps: each value whole, or dropped whole when it
    nests deeper than MAX_DEPTH or would take the kept total past MAX_PREVIOUS.

    A witness must be exact or absent, so no value is kept in part.
    """
    kept: dict[str, Any] = {}
    budget = MAX_PREVIOUS
    for key, value in previous.items():
        size = _encoded_size(value, MAX_DEPTH, budget - len(key))
        if size is not None:
            kept[key] = value
            budget -= len(key) + size
    return kept


def _encoded_size(value: Any, depth: int, budget: int) -> int | None:
    """About how many bytes `value` encodes to, or None past `depth` levels or `budget`."""
    if isinstance(value, (dict, list)):
        if depth <= 0:
            return None
        parts = value.items() if isinstance(value, dict) else enumerate(value)
        total = 2
        for key, inner in parts:
            size = _encoded_size(inner, depth - 1, budget - total)
            if size is None:
                return None
            total += size + (len(key) + 4 if isinstance(key, str) else 1)
            if total > budget:
                return None
        return total
    if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        return None  # no field it could witness holds it (see _int)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # not JSON
    size = len(value) + 2 if isinstance(value, str) else 8
    return size if size <= budget else None


_KEYED_BY_CUSTOMER = (EntitlementSummary, Link)  # a tuple: `A | B` builds a union each call


def _object_id(state: State) -> str:
    if isinstance(state, _KEYED_BY_CUSTOMER):
        return state.customer_id
    if isinstance(state, Dispute):
        return state.charge_id
    if isinstance(state, Sale):
        return state.session_id
    return state.id


def _snapshot(event: Recorded, kind: str, state: State, created: int, **extra: Any) -> Snapshot:
    object_id = _object_id(state)
    return Snapshot(
        kind=kind,
        object_id=object_id,
        event_id=event.event_id,
        event_type=event.type,
        created=created,
        state=state,
        **extra,
    )


def _read(event: Recorded, reader: Reader, event_type: str, obj: Json) -> State:
    try:
        return reader(event_type, obj)
    except _Malformed as e:
        raise NormaliseError(event.event_id, str(e)) from None


def _observation(event: Recorded, obj: Json, body: Json) -> Snapshot | None:
    """A recorded re-fetch: the object's snapshot, timed when it was observed."""
    entry = OBSERVED.get(_str(obj, "object") or "")
    if entry is None:
        return None
    kind, reader = entry
    observed_at = _int(body, "observed_at")
    created = observed_at if observed_at is not None else event.created
    state = _read(event, reader, OBSERVATION, obj)
    return _snapshot(event, kind, state, created, observation=True)


def normalise(event: Recorded, body: Json | None = None) -> Snapshot | None:
    """The canonical snapshot an event carries, or None when it carries no state we use
    (`body`: the event's body as `body_of` parsed it, when the caller has it already)."""
    if event.thin or (event.type not in READERS and event.type != OBSERVATION):
        return None
    if body is None:
        body = body_of(event)
    if body.get("object") == THIN_EVENT_OBJECT:
        return None
    obj, previous = _data(event, body)
    if event.type == OBSERVATION:
        return _observation(event, obj, body)
    kind, reader = READERS[event.type]
    state = _read(event, reader, event.type, obj)
    return _snapshot(event, kind, state, event.created, previous=previous)
