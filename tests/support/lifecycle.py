"""One user's subscription lifecycle as signed Stripe webhooks, posted to a running ledger.

Bodies are real-shaped endive events (tests/unit/builders.py) stamped around the current
time, signed with the real HMAC scheme, and sent as Stripe sends them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tests.support.signing import SECRET, sign
from tests.unit.builders import checkout_session, event, invoice, subscription

Json = dict[str, Any]
MONTH = 30 * 86400

Post = Callable[[str, bytes, dict[str, str]], httpx.Response]


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:14]}"


@dataclass
class Lifecycle:
    """The events of one subscription, each sent once and signed; remembers positions."""

    post: Post  # (path, body, headers) -> response: an httpx or TestClient post
    user: str
    customer: str = field(default_factory=lambda: _id("cus"))
    sub: str = field(default_factory=lambda: _id("sub"))
    price: str = "price_pro"
    start: int = field(default_factory=lambda: int(time.time()) - 60)
    secret: str = SECRET
    clock: int = 0  # seconds added to `start` for each event, so they order by `created`
    positions: list[int] = field(default_factory=list)

    @property
    def period(self) -> tuple[int, int]:
        """The current billing period: a month from the start."""
        return (self.start, self.start + MONTH)

    def send(self, type_: str, obj: Json, previous: Json | None = None) -> httpx.Response:
        """Sign and post one event; returns the ledger's answer."""
        self.clock += 1
        body = orjson.dumps(
            event(type_, obj, id=_id("evt"), created=self.start + self.clock, previous=previous)
        )
        headers = {"stripe-signature": sign(body, self.secret), "content-type": "application/json"}
        response = self.post("/webhooks/stripe", body, headers)
        if response.status_code == 200:
            self.positions.append(response.json()["position"])
        return response

    @property
    def last(self) -> int:
        """The position of the last event stored."""
        return max(self.positions, default=0)

    def subscription(self, status: str = "active", **fields: Any) -> Json:
        """This subscription's object, tagged with the user."""
        return subscription(
            id=self.sub,
            customer=self.customer,
            status=status,
            prices=(self.price,),
            period=self.period,
            app_user_id=self.user,
            **fields,
        )

    def invoice(self, invoice_id: str, status: str, **fields: Any) -> Json:
        """An invoice of this subscription."""
        return invoice(
            id=invoice_id,
            customer=self.customer,
            subscription=self.sub,
            status=status,
            created=self.start,
            **fields,
        )

    def checkout_completed(self, session_id: str | None = None) -> httpx.Response:
        """checkout.session.completed: the authoritative link of user and customer."""
        session = checkout_session(
            id=session_id or _id("cs_test"),
            customer=self.customer,
            subscription=self.sub,
            client_reference_id=self.user,
        )
        return self.send("checkout.session.completed", session)

    def subscription_created(self, status: str = "active") -> httpx.Response:
        """customer.subscription.created."""
        return self.send("customer.subscription.created", self.subscription(status))

    def subscription_updated(
        self, previous: Json, status: str = "active", **fields: Any
    ) -> httpx.Response:
        """customer.subscription.updated, with what changed in previous_attributes."""
        return self.send(
            "customer.subscription.updated", self.subscription(status, **fields), previous
        )

    def subscription_deleted(self) -> httpx.Response:
        """customer.subscription.deleted: canceled now."""
        now = self.start + self.clock + 1
        obj = self.subscription("canceled", canceled_at=now, ended_at=now)
        return self.send("customer.subscription.deleted", obj)

    def invoice_paid(self, invoice_id: str, amount: int = 2000) -> httpx.Response:
        """invoice.paid (and the invoice as paid)."""
        paid_at = self.start + self.clock + 1
        obj = self.invoice(
            invoice_id,
            "paid",
            amount_due=amount,
            amount_paid=amount,
            attempt_count=1,
            finalized_at=self.start,
            paid_at=paid_at,
        )
        return self.send("invoice.paid", obj)

    def invoice_payment_failed(self, invoice_id: str, attempt: int = 1) -> httpx.Response:
        """invoice.payment_failed: the invoice stays open, a retry is scheduled."""
        obj = self.invoice(
            invoice_id,
            "open",
            attempt_count=attempt,
            finalized_at=self.start,
            next_payment_attempt=self.start + 3 * 86400,
            billing_reason="subscription_cycle",
        )
        return self.send("invoice.payment_failed", obj)

    def subscribe(self, session_id: str | None = None) -> None:
        """The happy path after Checkout: completed, subscription active, first invoice paid."""
        for response in (
            self.checkout_completed(session_id),
            self.subscription_created(),
            self.invoice_paid(_id("in")),
        ):
            assert response.status_code == 200, response.text


def httpx_poster(base_url: str) -> Post:
    """Post to a running server."""

    def post(path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{base_url}{path}", content=body, headers=headers, timeout=10)

    return post
