"""What the ledger stores for one Stripe event, and how it is laid out in a stored event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# The ledger's own event types (customer links, reconcile observations, backfill cursors,
# replay records) are recorded by the ledger alone: Stripe never sends one, and a body
# claiming one, signed or listed by the Events API, would forge the ledger's own facts.
RESERVED_TYPE_PREFIX = "ledger."

# The state of each stored event is one JSON header line, a newline, then the body
# exactly as received: the raw bytes stay intact for audit and re-verification.
_SEPARATOR = b"\n"


class EnvelopeError(ValueError):
    """A stored event's state is not a ledger envelope."""


@dataclass(frozen=True)
class Incoming:
    """A verified event, about to be appended."""

    event_id: str
    type: str
    created: int
    livemode: bool
    api_version: str | None
    body: bytes
    received_at: float
    source: str = "webhook"  # webhook | backfill | ledger (events of our own)
    signature: str | None = None
    thin: bool = False


@dataclass(frozen=True)
class Recorded:
    """An event as stored, with its place in the ledger's total order."""

    position: int
    version: int  # 1 is the canonical body; later versions are alternate renderings
    event_id: str
    type: str
    created: int
    livemode: bool
    api_version: str | None
    received_at: float
    source: str
    thin: bool
    body: bytes
    signature: str | None = None  # the Stripe-Signature header it was delivered with

    def payload(self) -> dict[str, Any]:
        """The parsed body."""
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed


@dataclass(frozen=True)
class AppendResult:
    """The answer to one append: recorded for the first time, or a duplicate."""

    event_id: str
    status: str  # recorded | duplicate
    position: int


def encode_state(event: Incoming) -> bytes:
    """Lay an incoming event out as stored-event state."""
    header = {
        "type": event.type,
        "created": event.created,
        "livemode": event.livemode,
        "api_version": event.api_version,
        "received_at": event.received_at,
        "source": event.source,
        "signature": event.signature,
        "thin": event.thin,
    }
    return orjson.dumps(header) + _SEPARATOR + event.body


def decode_state(position: int, event_id: str, version: int, state: bytes) -> Recorded:
    """Read stored-event state back into a Recorded event."""
    head, sep, body = bytes(state).partition(_SEPARATOR)
    if not sep:
        raise EnvelopeError(f"event {event_id} at position {position} has no header")
    header = orjson.loads(head)
    return Recorded(
        position=position,
        version=version,
        event_id=event_id,
        type=header["type"],
        created=header["created"],
        livemode=header["livemode"],
        api_version=header["api_version"],
        received_at=header["received_at"],
        source=header["source"],
        thin=header.get("thin", False),
        body=body,
        signature=header.get("signature"),
    )


def as_stored(event: Incoming, position: int) -> Recorded:
    """The event as the store would hand it back at `position`: the same round trip."""
    return decode_state(position, event.event_id, 1, encode_state(event))
