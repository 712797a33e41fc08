"""POST /webhooks/stripe: verify, record, answer. A 2xx only after the commit."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from billing_ledger.http.errors import error
from billing_ledger.ledger.logfmt import fields
from billing_ledger.ledger.records import RESERVED_TYPE_PREFIX, Incoming
from billing_ledger.ledger.store import StorageError
from billing_ledger.ledger.verify import (
    InvalidSignatureError,
    MalformedEventError,
    parse_event,
    verify,
)
from billing_ledger.settings import Settings

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

log = logging.getLogger("billing_ledger.webhooks")


class PayloadTooLargeError(ValueError):
    """The body is larger than the configured limit."""


class BusyError(RuntimeError):
    """As many bodies as allowed are being read, none of them verified yet."""


class BodyReads:
    """Bounds the bodies read at once before their signature is checked.

    Unverified bodies held open cost up to the body limit each (400 of 1 MiB took RSS from
    63 to 471 MiB), so past the bound a request is refused before its body is read. One
    per app: handlers run on its one event loop, so a plain count needs no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the reads, or raise BusyError when all are taken."""
        if self.active >= self.limit:
            raise BusyError(f"{self.limit} webhook bodies are being read already; retry later")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


def body_reads(request: Request, limit: int) -> BodyReads:
    """The app's bound on unverified body reads, made on first use."""
    state = request.app.state
    if not hasattr(state, "body_reads"):
        state.body_reads = BodyReads(limit)
    reads: BodyReads = state.body_reads
    return reads


def refuse_reserved_type(event_type: str) -> None:
    """Raise MalformedEventError for a type only the ledger itself may record."""
    if event_type.startswith(RESERVED_TYPE_PREFIX):
        raise MalformedEventError(
            f'"type" {event_type!r} is reserved for events the ledger records itself'
        )


async def receive_webhook(request: Request) -> Response:
    """Verify the signature, append the event once, answer with its position."""
    deps: Services = request.state.deps
    settings = deps.settings
    if not settings.webhook_secrets:
        return _reject(deps, 503, "not_configured", "STRIPE_WEBHOOK_SECRET is not set")
    try:
        event = await _verified_event(request, settings)
    except PayloadTooLargeError as e:
        return _reject(deps, 413, "payload_too_large", str(e))
    except InvalidSignatureError as e:
        return _reject(deps, 400, "invalid_signature", str(e))
    except MalformedEventError as e:
        return _reject(deps, 400, "malformed_event", str(e))
    except BusyError as e:
        return _reject(deps, 503, "busy", str(e), {"Retry-After": "1"})
    except ClientDisconnect:
        # The sender hung up mid-body: nothing to answer, nothing stored; one line, no trace.
        return _reject(deps, 400, "client_disconnected", "the sender closed the connection")
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


async def _verified_event(request: Request, settings: Settings) -> Incoming:
    """Read the body (within the bounds), verify its signature, parse it as an event."""
    header = request.headers.get("stripe-signature")
    if not header:  # refused before a byte of the body is read
        raise InvalidSignatureError("missing Stripe-Signature header")
    with body_reads(request, settings.max_body_reads).slot():
        body = await _read_body(request, settings.max_body_bytes)
    verify(body, header, settings.webhook_secrets, settings.webhook_tolerance)
    event = parse_event(body, signature=header)
    refuse_reserved_type(event.type)
    return event


def _reject(
    deps: Services, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    deps.metrics.rejections.labels(code).inc()
    # The same leading fields as an accepted event's line; none is known before parsing.
    log.info(
        "%s",
        fields(
            event=None, type=None, position=None, outcome="rejected", reason=code, message=message
        ),
    )
    return error(status, code, message, headers)


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
