"""The wire shapes: every body declared in http/wire.py is documented, and a shape filled
from a projection's dataclass holds the contract's fields only."""

from __future__ import annotations

import inspect

import msgspec
import orjson

from billing_ledger.http import openapi, wire
from billing_ledger.projections.policy import SubscriptionAccess

CONTRACT_SUBSCRIPTION = (
    *("id", "customer_id", "status", "price_ids", "current_period_end", "cancel_at"),
    *("cancel_at_period_end", "grants_access", "access_until", "quantity"),
)


def declared() -> set[str]:
    shapes = inspect.getmembers(wire, inspect.isclass)
    return {name for name, cls in shapes if issubclass(cls, msgspec.Struct)}


def test_every_declared_shape_is_a_component_of_the_document() -> None:
    components = set(orjson.loads(openapi.document())["components"]["schemas"])
    assert declared() - {"Body", "Error", "Struct"} <= components


def test_a_subscription_is_written_with_the_contract_fields_in_order() -> None:
    sub = SubscriptionAccess(
        *("sub_1", None, "past_due", ("price_pro",), 1769817600, None, False, True, 1769990400),
        trial_end=1769000000,
        past_due_since=1768000000,
    )
    written = orjson.loads(wire.encode(wire.shaped(wire.Subscription, sub)))
    assert tuple(written) == CONTRACT_SUBSCRIPTION
    assert written["customer_id"] is None and written["price_ids"] == ["price_pro"]


def test_a_field_left_unset_is_not_written_and_a_none_is_written_as_null() -> None:
    health = wire.Health("degraded", None, {"views": wire.ProjectionStatus(3, None)})
    written = orjson.loads(wire.encode(health))
    assert written == {
        "status": "degraded",
        "head": None,
        "projections": {"views": {"position": 3, "error": None}},
    }


def test_the_timeline_kinds_declared_on_the_wire_are_those_the_timeline_computes() -> None:
    from typing import get_args

    from billing_ledger.projections.timeline import KINDS

    assert set(get_args(wire.TimelineKind)) == set(KINDS)
