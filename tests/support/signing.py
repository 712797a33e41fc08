"""Sign bodies with Stripe's real HMAC scheme, through the SDK."""

from __future__ import annotations

import time

import orjson
import stripe

SECRET = "whsec_test_secret_for_the_ledger"


def sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """A Stripe-Signature header for `body` (the SDK wants a str: bytes would sign wrongly)."""
    return stripe.WebhookSignature.generate_signature_header(
        body.decode("utf-8"), secret, int(time.time()) if timestamp is None else timestamp
    )


def event_body(
    event_id: str,
    event_type: str = "customer.subscription.updated",
    created: int = 1767225600,
    obj: dict[str, object] | None = None,
    livemode: bool = False,
    pad_to: int = 0,
) -> bytes:
    """A Stripe event envelope (API version endive); `pad_to` grows it with metadata."""
    data_object: dict[str, object] = obj or {
        "id": "sub_1",
        "object": "subscription",
        "status": "active",
    }
    event: dict[str, object] = {
        "id": event_id,
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created,
        "data": {"object": data_object},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
    body = orjson.dumps(event)
    if pad_to > len(body):
        data_object = dict(data_object)
        data_object["metadata"] = {"padding": "x" * (pad_to - len(body) - 30)}
        event["data"] = {"object": data_object}
        body = orjson.dumps(event)
    return body
