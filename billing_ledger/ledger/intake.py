"""A webhook's intake before it is stored: bounded body reads, the signature, the event.

Each refusal is an `IntakeError` with the stable code the HTTP side answers; nothing refused
is stored. Types under `ledger.` are the ledger's own (ledger/own_events.py): a signed
webhook may not claim one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

from billing_ledger.ledger.records import RESERVED_TYPE_PREFIX, Incoming
from billing_ledger.ledger.verify import MalformedEventError, parse_event, verify

# An ASGI server's receive(): the ledger reads a body from its messages, no framework between.
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class IntakeError(ValueError):
    """A delivery refused before anything is stored."""


class SecretNotSetError(IntakeError):
    """No webhook secret is configured: nothing can be verified."""


class PayloadTooLargeError(IntakeError):
    """The body is larger than the configured limit."""


class BusyError(IntakeError):
    """As many bodies as allowed are being read, none of them verified yet."""


class SenderGoneError(IntakeError):
    """The sender closed the connection before its body was read."""


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


def refuse_reserved_type(event_type: str) -> None:
    """Raise MalformedEventError for a type only the ledger itself may record."""
    if event_type.startswith(RESERVED_TYPE_PREFIX):
        raise MalformedEventError(
            f'"type" {event_type!r} is reserved for events the ledger records itself'
        )


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body from the ASGI messages, refused as soon as it (or its declared length)
    passes `limit`; SenderGoneError when the sender disconnects first."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"body of {declared} bytes exceeds the {limit}-byte limit")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise SenderGoneError("the sender closed the connection")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"body exceeds the {limit}-byte limit")
        parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def verified_event(body: bytes, header: str, secrets: Sequence[str], tolerance: int) -> Incoming:
    """The event of a body whose Stripe-Signature holds (kept beside it), not a reserved type."""
    verify(body, header, secrets, tolerance)
    event = parse_event(body, signature=header)
    refuse_reserved_type(event.type)
    return event
