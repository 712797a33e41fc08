"""A stored snapshot decodes to the same object by the typed way and by the general one."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import orjson
import pytest

from billing_ledger.ledger import canonical
from billing_ledger.ledger.canonical import Snapshot, snapshot_from_json, snapshot_to_json
from tests.unit.builders import (
    T,
    charge,
    checkout_session,
    customer,
    dispute,
    event,
    invoice,
    link,
    observation,
    price,
    sale,
    snapshots,
    subscription,
    summary,
)

SUMMARY_UPDATED = "entitlements.active_entitlement_summary.updated"


def _every_kind() -> list[Snapshot]:
    envelopes = [
        event("checkout.session.completed", checkout_session(), id="evt_1", created=T),
        event("customer.subscription.created", subscription(), id="evt_2", created=T),
        event("invoice.paid", invoice(status="paid", amount_paid=2000), id="evt_3", created=T),
        event("customer.updated", customer(app_user_id="u_1"), id="evt_4", created=T),
        event(SUMMARY_UPDATED, summary("pro"), id="evt_5", created=T),
        event("charge.refunded", charge(), id="evt_6", created=T),
        event("price.created", price("price_basic"), id="evt_11", created=T),
        event("charge.dispute.created", dispute(status="needs_response"), id="evt_7", created=T),
        observation(subscription(status="past_due"), id="evt_8", observed_at=T + 1),
        link(id="evt_9", created=T),
        sale(id="evt_10", created=T),
    ]
    return snapshots(envelopes)


def _types(value: Any) -> Any:
    """The value with every part's type beside it: 1 and True, 1 and 1.0 differ here."""
    if hasattr(value, "__dataclass_fields__"):
        return (type(value), tuple(_types(getattr(value, f.name)) for f in fields(value)))
    if isinstance(value, list | tuple):
        return (type(value), tuple(_types(v) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((k, _types(v)) for k, v in value.items()))
    return (type(value), value)


def test_every_kind_decodes_as_the_general_way_does_to_the_types() -> None:
    found = _every_kind()
    assert len({s.kind for s in found}) >= 8
    for snapshot in found:
        raw = snapshot_to_json(snapshot)
        typed, general = snapshot_from_json(raw), canonical.snapshot_from_data(orjson.loads(raw))
        assert typed == general == snapshot
        assert _types(typed) == _types(general)
        assert repr(typed) == repr(general)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["state"].update(id=5),  # a number where a string was stored
        lambda d: d["state"].update(cancel_at_period_end=0),  # a number for a flag
        lambda d: d["state"].pop("has_pending_update"),  # a row from before that field
        lambda d: d.update(created=float(d["created"])),  # 1.0 for 1
        lambda d: d.pop("observation"),
    ],
)
def test_a_row_the_classes_do_not_type_decodes_the_general_way(change: Any) -> None:
    subscribed = next(s for s in _every_kind() if s.kind == canonical.SUBSCRIPTION)
    data = orjson.loads(snapshot_to_json(subscribed))
    change(data)
    raw = orjson.dumps(data)
    general = canonical.snapshot_from_data(orjson.loads(raw))
    assert _types(snapshot_from_json(raw)) == _types(general)
