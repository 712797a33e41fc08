"""POST /webhooks/stripe: verify, record, answer. A 2xx only after the commit."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from billing_ledger.http.errors import error
from billing_ledger.ledger.logfmt import fields
from billing_ledger.ledger.records import RESERVED_TYPE_PREFIX
from billing_ledger.ledger.store import StorageError
from billing_ledger.ledger.verify import (
    InvalidSignatureError,
    MalformedEventError,
    parse_event,
    verify,
)

if TYPE_CHECKING:
    from billing_ledger.bootstrap import Deps

log = logging.getLogger("billing_ledger.webhooks")


class PayloadTooLargeError(ValueError):
    """The body is larger than the configured limit."""


def refuse_reserved_type(event_type: str) -> None:
    """Raise MalformedEventError for a type only the ledger itself may record."""
    if event_type.startswith(RESERVED_TYPE_PREFIX):
        raise MalformedEventError(
            f'"type" {event_type!r} is reserved for events the ledger records itself'
        )


async def receive_webhook(request: Request) -> Response:
    """Verify the signature, append the event once, answer with its position."""
    deps: Deps = request.state.deps
    settings = deps.settings
    if not settings.webhook_secrets:
        return _reject(deps, 503, "not_configured", "STRIPE_WEBHOOK_SECRET is not set")
    try:
        body = await _read_body(request, settings.max_body_bytes)
        verify(
            body,
            request.headers.get("stripe-signature"),
            settings.webhook_secrets,
            settings.webhook_tolerance,
        )
        event = parse_event(body, signature=request.headers.get("stripe-signature"))
        refuse_reserved_type(event.type)
    except PayloadTooLargeError as e:
        return _reject(deps, 413, "payload_too_large", str(e))
    except InvalidSignatureError as e:
        return _reject(deps, 400, "invalid_signature", str(e))
    except MalformedEventError as e:
        return _reject(deps, 400, "malformed_event", str(e))
    try:
        result = await deps.writer.append(event)
    except StorageError as e:
        log.error(
            "%s",
            fields(
                event=event.event_id,
                type=event.type,
                position=None,
                outcome="storage_unavailable",
                error=str(e),
            ),
        )
        deps.metrics.rejections.labels("storage_unavailable").inc()
        return error(
            503,
            "storage_unavailable",
            "the ledger could not store the event; retry later",
            headers={"Retry-After": "5"},
        )
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
    return JSONResponse(
        {"event_id": result.event_id, "status": result.status, "position": result.position}
    )


def _reject(deps: Deps, status: int, code: str, message: str) -> Response:
    deps.metrics.rejections.labels(code).inc()
    # The same leading fields as an accepted event's line; none is known before parsing.
    log.info(
        "%s",
        fields(
            event=None, type=None, position=None, outcome="rejected", reason=code, message=message
        ),
    )
    return error(status, code, message)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
