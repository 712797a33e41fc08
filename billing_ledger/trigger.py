"""`billing-ledger trigger LIFECYCLE --user U`: realistic, signed Stripe events for local work.

The events are shaped as the current API version sends them (the demo's builders: periods on
subscription items, the invoice's subscription under `parent`), signed with the first
STRIPE_WEBHOOK_SECRET and posted to a running service. A user's customer and subscription
ids derive from the user id, so `subscribe`, then `payment-failed`, then `recover` act on one
subscription. Events are stamped a few seconds in the past, in order.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import stripe

from billing_ledger.demo import DAY, Json, _event, _invoice, _price, _subscription
from billing_ledger.settings import Settings, SettingsError

MONTH = 30 * DAY
LIFETIME_PRICE = "price_lifetime"


@dataclass(frozen=True)
class Ids:
    """One user's Stripe ids, the same on every run."""

    user: str
    customer: str
    subscription: str

    @classmethod
    def of(cls, user: str) -> Ids:
        """Ids derived from the user id."""
        tag = hashlib.sha256(user.encode()).hexdigest()[:14]
        return cls(user, f"cus_{tag}", f"sub_{tag}")

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.user, self.customer, self.subscription)


Step = tuple[str, Json, Json | None]  # (type, object, previous_attributes)


def _sub(ids: Ids, status: str, now: int, **extra: Any) -> Json:
    return _subscription(status, now, now + MONTH, ids=ids.triple, **extra)


def _inv(ids: Ids, now: int, paid: bool, attempt: int = 1) -> Json:
    status = "paid" if paid else "open"
    invoice_id = f"in_{secrets.token_hex(7)}"
    return _invoice(invoice_id, status, now, attempt, paid, (ids.customer, ids.subscription))


def _customer(ids: Ids) -> Json:
    return {
        "id": ids.customer,
        "object": "customer",
        "email": None,
        "metadata": {"app_user_id": ids.user},
        "livemode": False,
    }


def _session(ids: Ids, mode: str, **extra: Any) -> Json:
    return {
        "id": f"cs_test_{secrets.token_hex(12)}",
        "object": "checkout.session",
        "mode": mode,
        "status": "complete",
        "payment_status": "paid",
        "client_reference_id": ids.user,
        "customer": ids.customer,
        "subscription": ids.subscription if mode == "subscription" else None,
        "metadata": {},
        "livemode": False,
    } | extra


def subscribe(ids: Ids, now: int) -> list[Step]:
    """Checkout completed, the subscription active, its first invoice paid."""
    return [
        ("customer.created", _customer(ids), None),
        ("checkout.session.completed", _session(ids, "subscription"), None),
        ("customer.subscription.created", _sub(ids, "active", now), None),
        ("invoice.paid", _inv(ids, now, True), None),
    ]


def trial(ids: Ids, now: int) -> list[Step]:
    """Checkout completed into a 14-day trial."""
    sub = _sub(ids, "trialing", now, trial_start=now, trial_end=now + 14 * DAY)
    return [
        ("customer.created", _customer(ids), None),
        ("checkout.session.completed", _session(ids, "subscription"), None),
        ("customer.subscription.created", sub, None),
    ]


def renew(ids: Ids, now: int) -> list[Step]:
    """A new period starts and its invoice is paid."""
    return [
        ("invoice.paid", _inv(ids, now, True), None),
        ("customer.subscription.updated", _sub(ids, "active", now), {"items": {}}),
    ]


def payment_failed(ids: Ids, now: int) -> list[Step]:
    """The renewal's payment fails: the subscription goes past_due (the grace period starts)."""
    return [
        ("invoice.payment_failed", _inv(ids, now, False), None),
        ("customer.subscription.updated", _sub(ids, "past_due", now), {"status": "active"}),
    ]


def recover(ids: Ids, now: int) -> list[Step]:
    """A retry succeeds: the invoice is paid, the subscription active again."""
    return [
        ("invoice.paid", _inv(ids, now, True, attempt=2), None),
        ("customer.subscription.updated", _sub(ids, "active", now), {"status": "past_due"}),
    ]


def cancel_scheduled(ids: Ids, now: int) -> list[Step]:
    """The customer cancels at the period's end: access stays until then."""
    sub = _sub(
        ids, "active", now, cancel_at_period_end=True, cancel_at=now + MONTH, canceled_at=now
    )
    previous = {"cancel_at_period_end": False, "cancel_at": None, "canceled_at": None}
    return [("customer.subscription.updated", sub, previous)]


def cancel(ids: Ids, now: int) -> list[Step]:
    """The subscription ends now."""
    sub = _sub(ids, "canceled", now, canceled_at=now, ended_at=now)
    return [("customer.subscription.deleted", sub, None)]


def _charge(ids: Ids, refunded: bool) -> Json:
    return {
        "id": f"ch_{hashlib.sha256(ids.user.encode()).hexdigest()[:14]}",
        "object": "charge",
        "amount": 9900,
        "amount_refunded": 9900 if refunded else 0,
        "refunded": refunded,
        "currency": "usd",
        "customer": ids.customer,
        "payment_intent": f"pi_{hashlib.sha256(ids.user.encode()).hexdigest()[:14]}",
        "status": "succeeded",
        "livemode": False,
    }


def one_time(ids: Ids, now: int) -> list[Step]:
    """A one-time purchase through Checkout in payment mode (price_lifetime)."""
    price = _price() | {"id": LIFETIME_PRICE, "type": "one_time", "recurring": None}
    session = _session(
        ids,
        "payment",
        metadata={"price": LIFETIME_PRICE},
        payment_intent=_charge(ids, False)["payment_intent"],
        line_items={"object": "list", "data": [{"price": price, "quantity": 1}]},
    )
    return [
        ("customer.created", _customer(ids), None),
        ("checkout.session.completed", session, None),
        ("charge.succeeded", _charge(ids, False), None),
    ]


def refund(ids: Ids, now: int) -> list[Step]:
    """The one-time purchase's charge is refunded in full."""
    return [("charge.refunded", _charge(ids, True), {"amount_refunded": 0, "refunded": False})]


LIFECYCLES: dict[str, Callable[[Ids, int], list[Step]]] = {
    "subscribe": subscribe,
    "trial": trial,
    "renew": renew,
    "payment-failed": payment_failed,
    "recover": recover,
    "cancel-scheduled": cancel_scheduled,
    "cancel": cancel,
    "one-time": one_time,
    "refund": refund,
}


def events(name: str, user: str, now: int | None = None) -> list[Json]:
    """The lifecycle's event envelopes, stamped in order just before `now`."""
    now = int(time.time()) if now is None else now
    steps = LIFECYCLES[name](Ids.of(user), now)
    return [
        _event(f"evt_{secrets.token_hex(12)}", type_, now - len(steps) + i, obj, previous)
        for i, (type_, obj, previous) in enumerate(steps, 1)
    ]


def send(url: str, secret: str, envelopes: list[Json], say: Callable[[str], None]) -> bool:
    """Sign and post each event as Stripe does; True when every one was recorded."""
    ok = True
    with httpx.Client(base_url=url.rstrip("/"), timeout=10) as client:
        for envelope in envelopes:
            body = orjson.dumps(envelope)
            header = stripe.WebhookSignature.generate_signature_header(
                body.decode(), secret, int(time.time())
            )
            response = client.post(
                "/webhooks/stripe",
                content=body,
                headers={"stripe-signature": header, "content-type": "application/json"},
            )
            ok = ok and response.status_code == 200
            say(f"  {envelope['type']:<34} {response.status_code} {response.text[:120]}")
    return ok


def cmd_trigger(args: argparse.Namespace, settings: Settings) -> int:
    """Send one lifecycle (or list them)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per event is printed below
    if args.list or args.lifecycle is None:
        for name, build in LIFECYCLES.items():
            print(f"{name:<18} {build.__doc__}")
        return 0
    if args.lifecycle not in LIFECYCLES:
        raise SettingsError("LIFECYCLE", f"unknown {args.lifecycle!r}; try --list")
    if not args.user:
        raise SettingsError("--user", "name the app user the lifecycle is for")
    if not settings.webhook_secrets:
        raise SettingsError("STRIPE_WEBHOOK_SECRET", "is not set: nothing could sign the events")
    print(f"{args.lifecycle} for {args.user} -> {args.url}/webhooks/stripe")
    try:
        sent = send(args.url, settings.webhook_secrets[0], events(args.lifecycle, args.user), print)
    except httpx.HTTPError as e:
        raise SettingsError(
            "--url", f"{args.url} is unreachable: {type(e).__name__}: {e}"
        ) from None
    return 0 if sent else 1
