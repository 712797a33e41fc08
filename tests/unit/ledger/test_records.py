"""An incoming event reads back from its stored layout as it went in."""

from __future__ import annotations

from billing_ledger.ledger.records import Incoming, Recorded, as_stored

EVENT = Incoming(
    event_id="evt_1",
    type="customer.updated",
    created=1_700_000_000,
    livemode=True,
    api_version="2025-03-31.basil",
    body=b'{"id": "evt_1"}',
    received_at=1_700_000_001.5,
    source="backfill",
    signature="t=1,v1=abc",
    thin=True,
)


def test_an_incoming_event_as_stored_keeps_every_field_at_its_position() -> None:
    assert as_stored(EVENT, 7) == Recorded(
        position=7,
        version=1,
        event_id="evt_1",
        type="customer.updated",
        created=1_700_000_000,
        livemode=True,
        api_version="2025-03-31.basil",
        received_at=1_700_000_001.5,
        source="backfill",
        thin=True,
        body=b'{"id": "evt_1"}',
        signature="t=1,v1=abc",
    )
