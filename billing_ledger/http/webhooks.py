"""POST /webhooks/stripe: verify, record, answer. A 2xx only after the commit.

A plain ASGI app under its route, not a Starlette endpoint: the headers are read from the
scope, the body from the server's messages and the answer sent as two messages, without the
Request, the Response and the route's second exception layer around each delivery (a
refusal raised here reaches the app's handlers in http/errors.py all the same).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from billing_ledger.http import wire
from billing_ledger.http.errors import NotStoredError, answer_for
from billing_ledger.http.wire import encode, shaped
from billing_ledger.ledger.intake import (
    BodyReads,
    IntakeError,
    SecretNotSetError,
    read_body,
    verified_event,
)
from billing_ledger.ledger.logfmt import fields
from billing_ledger.ledger.records import AppendResult, Incoming
from billing_ledger.ledger.store import StorageError
from billing_ledger.ledger.verify import InvalidSignatureError, MalformedEventError

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

log = logging.getLogger("billing_ledger.webhooks")

# What each refusal answers is its row in http/errors.py; nothing refused is stored.
REFUSED = (IntakeError, InvalidSignatureError, MalformedEventError)

_JSON_HEADERS = [(b"content-type", b"application/json")]


class WebhookEndpoint:
    """Verify the signature, append the event once, answer with its position."""

    __name__ = "receive_webhook"  # the route's name, as when it was a function

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deps: Services = scope["state"]["deps"]
        try:
            event = await _intake(scope, receive, deps)
        except REFUSED as e:
            _refused(deps, e)
            raise
        try:
            result = await deps.writer.append(event)
        except StorageError as e:
            _unstored(deps, event, e)
            raise NotStoredError("the ledger could not store the event; retry later") from None
        body = _stored(deps, event, result)
        headers = [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


receive_webhook = WebhookEndpoint()


def body_reads(app: Any, limit: int) -> BodyReads:
    """The app's bound on unverified body reads, made on first use."""
    state = app.state
    if not hasattr(state, "body_reads"):
        state.body_reads = BodyReads(limit)
    reads: BodyReads = state.body_reads
    return reads


def _header(scope: Scope, name: bytes) -> str | None:
    """One request header's value (the first, as Starlette's Headers.get), None when absent."""
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


async def _intake(scope: Scope, receive: Receive, deps: Services) -> Incoming:
    """Read the body (within the bounds), verify its signature, parse it as an event."""
    settings = deps.settings
    if not settings.webhook_secrets:
        raise SecretNotSetError("STRIPE_WEBHOOK_SECRET is not set")
    header = _header(scope, b"stripe-signature")
    if not header:  # refused before a byte of the body is read
        raise InvalidSignatureError("missing Stripe-Signature header")
    declared = _header(scope, b"content-length")
    with body_reads(scope["app"], settings.max_body_reads).slot():
        body = await read_body(receive, declared, settings.max_body_bytes)
    return verified_event(body, header, settings.webhook_secrets, settings.webhook_tolerance)


def _refused(deps: Services, refusal: Exception) -> None:
    """Count and log a refusal; its answer is its row in http/errors.py."""
    code = answer_for(refusal).code
    deps.metrics.rejections.labels(code).inc()
    # The same leading fields as an accepted event's line; none is known before parsing.
    log.info(
        "%s",
        fields(
            event=None,
            type=None,
            position=None,
            outcome="rejected",
            reason=code,
            message=str(refusal),
        ),
    )


def _unstored(deps: Services, event: Incoming, failure: StorageError) -> None:
    log.error(
        "%s",
        fields(
            event=event.event_id,
            type=event.type,
            position=None,
            outcome="storage_unavailable",
            error=str(failure),
        ),
    )
    deps.metrics.rejections.labels("storage_unavailable").inc()


def _stored(deps: Services, event: Incoming, result: AppendResult) -> bytes:
    """Count and log the stored event; the answer's body."""
    deps.metrics.events.labels(result.status).inc()
    log.info(
        "%s",
        fields(
            event=result.event_id,
            type=event.type,
            position=result.position,
            outcome=result.status,
            livemode=event.livemode,
        ),
    )
    return encode(shaped(wire.WebhookAccepted, result))
