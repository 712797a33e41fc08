"""Real-shaped Stripe event payloads for the pure read-side tests (2026-10-28.endive unless told).

Field names and nesting follow Stripe's current objects (see the stripe-openapi fixture):
periods on subscription items, the invoice's subscription under `parent`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

import billing_ledger
from billing_ledger.http.wire import Body, encode, shaped
from billing_ledger.ledger.canonical import Snapshot
from billing_ledger.ledger.normalise import normalise
from billing_ledger.ledger.records import Recorded
from billing_ledger.projections.links import customer_of, links_of
from billing_ledger.projections.plans import Plans, load_plans
from billing_ledger.projections.policy import UserInputs
from billing_ledger.projections.purchases import attached

T = 1767225600  # 2026-01-01T00:00Z
M = 2592000  # 30 days
DAY = 86400
ENDIVE = "2026-10-28.endive"

Json = dict[str, Any]

EXAMPLE_PLANS = Path(billing_ledger.__file__).parent / "plans.example.toml"

# price -> (product, lookup_key), the constants of STRIPE-SEMANTICS section 7.
PRICES = {
    "price_basic": ("prod_basic", "basic_monthly"),
    "price_pro": ("prod_pro", "pro_monthly"),
    "price_addon": ("prod_addon", "addon_monthly"),
}


def example_plans() -> Plans:
    """The shipped example plans: free (core), basic (core), pro (core, pro), addon (export)."""
    return load_plans(EXAMPLE_PLANS)


def sub_event(
    type_: str, event_id: str, created: int, previous: Json | None = None, /, **fields: Any
) -> Json:
    """A customer.subscription.<type_> event around `subscription(**fields)`."""
    obj = subscription(**fields)
    kind = f"customer.subscription.{type_}"
    return event(kind, obj, id=event_id, created=created, previous=previous)


def invoice_event(type_: str, event_id: str, created: int, /, **fields: Any) -> Json:
    """An invoice.<type_> event around `invoice(**fields)`."""
    return event(f"invoice.{type_}", invoice(**fields), id=event_id, created=created)


def summary_event(id: str, created: int, *keys: str, has_more: bool = False) -> Json:
    """An entitlements.active_entitlement_summary.updated event for cus_1."""
    obj = summary(*keys, has_more=has_more)
    return event("entitlements.active_entitlement_summary.updated", obj, id=id, created=created)


def event(
    type_: str,
    obj: Json,
    *,
    id: str,
    created: int,
    previous: Json | None = None,
    api_version: str | None = ENDIVE,
) -> Json:
    """A Stripe snapshot-event envelope."""
    data: Json = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": id,
        "object": "event",
        "api_version": api_version,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }


def recorded(envelope: Json, position: int = 1, *, thin: bool = False) -> Recorded:
    """The envelope as the store hands it to the projections."""
    return Recorded(
        position=position,
        version=1,
        event_id=envelope["id"],
        type=envelope["type"],
        created=envelope["created"],
        livemode=bool(envelope.get("livemode", False)),
        api_version=envelope.get("api_version"),
        received_at=float(envelope["created"]),
        source="webhook",
        thin=thin,
        body=orjson.dumps(envelope),
    )


def snap(envelope: Json) -> Snapshot:
    """Normalise one envelope that must carry state."""
    snapshot = normalise(recorded(envelope))
    assert snapshot is not None, envelope["type"]
    return snapshot


def snapshots(envelopes: Iterable[Json]) -> list[Snapshot]:
    """Normalise envelopes, dropping those that carry no state (as the runner does)."""
    found = (normalise(recorded(e, i)) for i, e in enumerate(envelopes, 1))
    return [s for s in found if s is not None]


def gather(user_id: str, snapshots: Iterable[Snapshot]) -> UserInputs:
    """One user's inputs from a pile of snapshots, picked as the service's views pick them
    in SQL (Views.load_inputs)."""
    pile = tuple(attached(snapshots))
    links = tuple(
        sorted(
            (row for s in pile for row in links_of(s) if row.user_id == user_id),
            key=lambda r: (r.created, r.customer_id, r.event_id, r.via),
        )
    )
    customers = {row.customer_id for row in links}
    return UserInputs(user_id, links, tuple(s for s in pile if customer_of(s) in customers))


def served(shape: type[Body], source: object) -> Any:
    """The JSON the API writes for `source` as `shape` (http/wire.py), decoded."""
    return orjson.loads(encode(shaped(shape, source)))


def inputs(user_id: str, envelopes: Iterable[Json]) -> UserInputs:
    """A user's inputs built from events, as the views would gather them."""
    return gather(user_id, snapshots(envelopes))


def price(price_id: str) -> Json:
    """A Price object; products and lookup keys from PRICES."""
    product, lookup_key = PRICES.get(price_id, (None, None))
    return {
        "id": price_id,
        "object": "price",
        "active": True,
        "currency": "usd",
        "lookup_key": lookup_key,
        "product": product,
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
        "type": "recurring",
        "unit_amount": 2000,
    }


def item(price_id: str, start: int, end: int, n: int = 0) -> Json:
    """A subscription item, periods on the item as since basil."""
    return {
        "id": f"si_{price_id}_{n}",
        "object": "subscription_item",
        "current_period_start": start,
        "current_period_end": end,
        "price": price(price_id),
        "quantity": 1,
    }


def subscription(
    *,
    id: str = "sub_1",
    customer: str = "cus_1",
    status: str = "active",
    prices: Iterable[str] = ("price_pro",),
    period: tuple[int, int] = (T, T + M),
    cancel_at: int | None = None,
    cancel_at_period_end: bool = False,
    canceled_at: int | None = None,
    ended_at: int | None = None,
    trial: tuple[int, int] | None = None,
    app_user_id: str | None = None,
    reason: str | None = None,
    pending_update: Json | None = None,
    billing_mode: str = "classic",
    paused_type: str | None = None,
) -> Json:
    """A Subscription object in the endive shape."""
    details = {"paused": {"subscription": {"type": paused_type}}} if paused_type else None
    return {
        "id": id,
        "object": "subscription",
        "billing_mode": {"type": billing_mode},
        "cancel_at": cancel_at,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": canceled_at,
        "cancellation_details": {"comment": None, "feedback": None, "reason": reason},
        "collection_method": "charge_automatically",
        "created": T,
        "customer": customer,
        "ended_at": ended_at,
        "items": {
            "object": "list",
            "data": [item(p, *period, n) for n, p in enumerate(prices)],
            "has_more": False,
        },
        "latest_invoice": None,
        "livemode": False,
        "metadata": {"app_user_id": app_user_id} if app_user_id else {},
        "pause_collection": None,
        "pending_update": pending_update,
        "start_date": T,
        "status": status,
        "status_details": details,
        "trial_end": trial[1] if trial else None,
        "trial_start": trial[0] if trial else None,
    }


def invoice(
    *,
    id: str = "in_1",
    customer: str = "cus_1",
    subscription: str | None = "sub_1",
    status: str = "draft",
    amount_due: int = 2000,
    amount_paid: int = 0,
    attempt_count: int = 0,
    next_payment_attempt: int | None = None,
    billing_reason: str = "subscription_create",
    created: int = T,
    finalized_at: int | None = None,
    paid_at: int | None = None,
    voided_at: int | None = None,
) -> Json:
    """An Invoice object in the basil+ shape (subscription under parent)."""
    parent = (
        {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": subscription},
        }
        if subscription
        else None
    )
    return {
        "id": id,
        "object": "invoice",
        "amount_due": amount_due,
        "amount_paid": amount_paid,
        "amount_remaining": amount_due - amount_paid,
        "attempt_count": attempt_count,
        "attempted": attempt_count > 0,
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": "usd",
        "customer": customer,
        "hosted_invoice_url": f"https://invoice.stripe.com/i/{id}",
        "livemode": False,
        "next_payment_attempt": next_payment_attempt,
        "parent": parent,
        "status": status,
        "status_transitions": {
            "finalized_at": finalized_at,
            "marked_uncollectible_at": None,
            "paid_at": paid_at,
            "voided_at": voided_at,
        },
    }


def checkout_session(
    *,
    id: str = "cs_1",
    customer: str | None = "cus_1",
    subscription: str | None = "sub_1",
    client_reference_id: str | None = "u_1",
    status: str = "complete",
    payment_status: str = "paid",
) -> Json:
    """A Checkout Session in subscription mode."""
    return {
        "id": id,
        "object": "checkout.session",
        "client_reference_id": client_reference_id,
        "customer": customer,
        "livemode": False,
        "metadata": {},
        "mode": "subscription",
        "payment_status": payment_status,
        "status": status,
        "subscription": subscription,
    }


def customer(*, id: str = "cus_1", app_user_id: str | None = None, deleted: bool = False) -> Json:
    """A Customer (or, deleted, what customer.deleted carries)."""
    obj: Json = {
        "id": id,
        "object": "customer",
        "email": "customer@example.com",
        "livemode": False,
        "metadata": {"app_user_id": app_user_id} if app_user_id else {},
    }
    if deleted:
        obj["deleted"] = True
    return obj


def active_entitlement(key: str) -> Json:
    """One entitlements.active_entitlement whose feature has lookup key `key`."""
    return {
        "id": f"ent_{key}",
        "object": "entitlements.active_entitlement",
        "feature": f"feat_{key}",
        "livemode": False,
        "lookup_key": key,
    }


def summary(*keys: str, customer: str = "cus_1", has_more: bool = False) -> Json:
    """An entitlements.active_entitlement_summary."""
    return {
        "object": "entitlements.active_entitlement_summary",
        "customer": customer,
        "livemode": False,
        "entitlements": {
            "object": "list",
            "data": [active_entitlement(k) for k in keys],
            "has_more": has_more,
            "url": "/v1/customer/cus_1/entitlements",
        },
    }


def link(*, user_id: str = "u_1", customer: str = "cus_1", id: str, created: int) -> Json:
    """A ledger.customer_link event of our own."""
    obj = {"object": "ledger.customer_link", "user_id": user_id, "customer": customer}
    return event("ledger.customer_link", obj, id=id, created=created, api_version=None)


def observation(obj: Json, *, id: str, observed_at: int) -> Json:
    """A ledger.observation: a recorded re-fetch of `obj` at `observed_at`."""
    envelope = event("ledger.observation", obj, id=id, created=observed_at)
    envelope["observed_at"] = observed_at
    return envelope


# -- one-time purchases -----------------------------------------------------------------

LIFETIME = """
[[plans]]
id = "lifetime"
name = "Lifetime"
description = "Pay once, keep Pro"
mode = "one_time"
prices = ["price_lifetime"]
features = ["core", "pro"]
"""


def lifetime_plans() -> Plans:
    """The example plans and a one-time "lifetime" plan (price_lifetime: core, pro)."""
    import tomllib

    from billing_ledger.projections.plans import parse_plans

    data = tomllib.loads(EXAMPLE_PLANS.read_text() + LIFETIME)
    return parse_plans(data)


def payment_session(
    *,
    id: str = "cs_pay_1",
    customer: str | None = "cus_1",
    client_reference_id: str | None = "u_1",
    payment_intent: str | None = "pi_1",
    price: str | None = "price_lifetime",
    status: str = "complete",
    payment_status: str = "paid",
) -> Json:
    """A Checkout Session in payment mode, as the service creates it (metadata.price)."""
    return {
        "id": id,
        "object": "checkout.session",
        "client_reference_id": client_reference_id,
        "customer": customer,
        "livemode": False,
        "metadata": {"app_user_id": client_reference_id, "price": price} if price else {},
        "mode": "payment",
        "payment_intent": payment_intent,
        "payment_status": payment_status,
        "status": status,
        "subscription": None,
        "amount_total": 9900,
        "currency": "eur",
    }


def charge(
    *,
    id: str = "ch_1",
    customer: str | None = "cus_1",
    payment_intent: str | None = "pi_1",
    amount: int = 9900,
    amount_refunded: int = 0,
) -> Json:
    """A Charge of a payment (refunds as amount_refunded)."""
    return {
        "id": id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "currency": "eur",
        "customer": customer,
        "livemode": False,
        "paid": True,
        "payment_intent": payment_intent,
        "refunded": amount_refunded >= amount,
        "status": "succeeded",
    }


def dispute(
    *, id: str = "dp_1", charge: str = "ch_1", payment_intent: str | None = "pi_1", status: str
) -> Json:
    """A Dispute of a charge (it names its charge, never a customer)."""
    return {
        "id": id,
        "object": "dispute",
        "amount": 9900,
        "charge": charge,
        "currency": "eur",
        "livemode": False,
        "payment_intent": payment_intent,
        "reason": "fraudulent",
        "status": status,
    }


def sale(
    *,
    session: str = "cs_pay_1",
    customer: str = "cus_1",
    user_id: str = "u_1",
    prices: Iterable[str] = ("price_lifetime",),
    id: str,
    created: int,
) -> Json:
    """A ledger.checkout_sale event of our own: what a session the service created sells."""
    obj = {
        "object": "ledger.checkout_sale",
        "session": session,
        "customer": customer,
        "user_id": user_id,
        "prices": list(prices),
        "mode": "payment",
    }
    return event("ledger.checkout_sale", obj, id=id, created=created, api_version=None)
