"""Webhook verification: Stripe's own signature scheme, then one JSON parse.

`WebhookSignature.verify_header` checks the HMAC and the tolerance without building a
`StripeObject` (`Webhook.construct_event` costs ~40x more per event), so the hot path
verifies the raw bytes and parses once with orjson. Both names are bound here once: through
the SDK's lazy module attributes each use was an import lookup (~15 us a webhook).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeGuard

import orjson
from stripe import SignatureVerificationError, WebhookSignature

from billing_ledger.ledger.records import Incoming

THIN_EVENT_OBJECT = "v2.core.event"


class InvalidSignatureError(ValueError):
    """The Stripe-Signature header is missing, malformed, stale, or matches no secret."""


class MalformedEventError(ValueError):
    """The body is signed but is not a Stripe event."""


def verify(body: bytes, header: str | None, secrets: Sequence[str], tolerance: int) -> None:
    """Accept when any configured secret verifies the body (Stripe rotates secrets this way)."""
    if not header:
        raise InvalidSignatureError("missing Stripe-Signature header")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignatureError(
            "body is not UTF-8, so it cannot carry a valid signature"
        ) from None
    last = "no webhook secret configured"
    for secret in secrets:
        try:
            WebhookSignature.verify_header(text, header, secret, tolerance or None)
        except SignatureVerificationError as error:
            last = str(error)
            continue
        _refuse_future(header, tolerance)
        return
    raise InvalidSignatureError(_short(last))


def _refuse_future(header: str, tolerance: int) -> None:
    """The SDK bounds only a timestamp's age: one far ahead would stay replayable for years."""
    if not tolerance:
        return  # the tolerance check is off altogether
    # The SDK has parsed the header already, taking the first t= as the signed timestamp.
    signed = int(next(p[2:] for p in header.split(",") if p.startswith("t=")))
    if signed > time.time() + tolerance:
        raise InvalidSignatureError("timestamp is in the future, outside the tolerance zone")


def _short(message: str) -> str:
    # The SDK's messages are long and name remedies for its own users; keep the first clause.
    return message.split(". ")[0].rstrip(".")


def parse_event(
    body: bytes, signature: str | None = None, received_at: float | None = None
) -> Incoming:
    """Read the fields the ledger keys and orders by; reject what is not a Stripe event."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedEventError("body is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedEventError("body is not a JSON object")
    thin = data.get("object") == THIN_EVENT_OBJECT
    if not thin and data.get("object") != "event":
        raise MalformedEventError('"object" is not "event" or "v2.core.event"')
    event_id, event_type = data.get("id"), data.get("type")
    if not _storable_text(event_id):
        raise MalformedEventError('"id" must be 1 to 255 characters, none of them NUL')
    if not _storable_text(event_type):
        raise MalformedEventError('"type" must be 1 to 255 characters, none of them NUL')
    livemode = data.get("livemode", False)
    if not isinstance(livemode, bool):
        raise MalformedEventError('"livemode" must be true or false')
    if not thin and not isinstance(data.get("data"), dict):
        raise MalformedEventError('"data" must be an object')
    api_version = data.get("api_version")
    return Incoming(
        event_id=event_id,
        type=event_type,
        created=_created(data.get("created")),
        livemode=livemode,
        api_version=api_version if isinstance(api_version, str) else None,
        body=body,
        received_at=time.time() if received_at is None else received_at,
        thin=thin,
        signature=signature,
    )


def _storable_text(value: object) -> TypeGuard[str]:
    """A key the store can hold on either database: PostgreSQL text cannot contain NUL, and a
    DataError there would fail the whole group-commit batch as "storage unavailable"."""
    return isinstance(value, str) and 0 < len(value) <= 255 and "\x00" not in value


def _created(value: Any) -> int:
    """Snapshot events carry Unix seconds; thin (v2) events an ISO 8601 string."""
    if isinstance(value, bool):
        raise MalformedEventError('"created" must be Unix seconds')
    if isinstance(value, int) and 0 <= value < 2**40:
        return value
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    raise MalformedEventError('"created" must be Unix seconds (or ISO 8601 in a v2 event)')
