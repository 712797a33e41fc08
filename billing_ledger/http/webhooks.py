"""POST /webhooks/stripe: verify, record, answer. A 2xx only after the commit."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from billing_ledger.http import wire
from billing_ledger.http.errors import NotStoredError, answer_for
from billing_ledger.http.wire import answer, shaped
from billing_ledger.ledger.intake import (
    BodyReads,
    IntakeError,
    SecretNotSetError,
    SenderGoneError,
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


async def receive_webhook(request: Request) -> Response:
    """Verify the signature, append the event once, answer with its position."""
    deps: Services = request.state.deps
    try:
        event = await _intake(request, deps)
    except REFUSED as e:
        _refused(deps, e)
        raise
    try:
        result = await deps.writer.append(event)
    except StorageError as e:
        _unstored(deps, event, e)
        raise NotStoredError("the ledger could not store the event; retry later") from None
    return _stored(deps, event, result)


def body_reads(request: Request, limit: int) -> BodyReads:
    """The app's bound on unverified body reads, made on first use."""
    state = request.app.state
    if not hasattr(state, "body_reads"):
        state.body_reads = BodyReads(limit)
    reads: BodyReads = state.body_reads
    return reads


async def _intake(request: Request, deps: Services) -> Incoming:
    """Read the body (within the bounds), verify its signature, parse it as an event."""
    settings = deps.settings
    if not settings.webhook_secrets:
        raise SecretNotSetError("STRIPE_WEBHOOK_SECRET is not set")
    header = request.headers.get("stripe-signature")
    if not header:  # refused before a byte of the body is read
        raise InvalidSignatureError("missing Stripe-Signature header")
    declared = request.headers.get("content-length")
    try:
        with body_reads(request, settings.max_body_reads).slot():
            body = await read_body(request.stream(), declared, settings.max_body_bytes)
    except ClientDisconnect:
        raise SenderGoneError("the sender closed the connection") from None
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


def _stored(deps: Services, event: Incoming, result: AppendResult) -> Response:
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
    return answer(shaped(wire.WebhookAccepted, result))
