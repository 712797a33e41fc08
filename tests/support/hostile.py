"""Hostile shapes of the fields the folds read: deep nesting, huge arrays, odd types.

Shared by the unit property (normalise and the policy over any of them) and the HTTP suite
(signed webhooks on SQLite and PostgreSQL). Bodies are written with the standard library's
encoder: orjson refuses to write nesting deeper than 254 levels, which a sender may well send.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

from tests.unit.builders import (
    T,
    checkout_session,
    customer,
    event,
    invoice,
    subscription,
    summary,
)

Json = dict[str, Any]


def deep(levels: int, leaf: Any = None) -> Any:
    """`{"a": {"a": ... leaf}}`, `levels` objects deep."""
    nested = leaf if leaf is not None else {}
    for _ in range(levels):
        nested = {"a": nested}
    return nested


def deep_list(levels: int) -> Any:
    """`[[[...]]]`, `levels` arrays deep."""
    nested: Any = []
    for _ in range(levels):
        nested = [nested]
    return nested


# Values of the wrong type or out of any sane range, for any field.
ODD_VALUES: tuple[Any, ...] = (
    "x",
    "",
    "\x00",
    "u\x00x",
    "9" * 5000,
    0,
    -1,
    3,
    1.5,
    True,
    False,
    None,
    [],
    {},
    [1, [2, [3]]],
    {"id": {"id": "nested"}},
    2**53,
    2**63 - 1,
    2**64 - 1,
    -(2**63),
    10**30,  # orjson reads an integer past 64 bits as a float
    deep(300),
    deep_list(300),
    list(range(1000)),
)

# The objects the folds read, and every path into them that normalise.py reads.
BASES: dict[str, tuple[Callable[[], Json], tuple[str, ...]]] = {
    "customer.subscription.updated": (
        lambda: subscription(id="sub_h", customer="cus_h", app_user_id="u_h"),
        (
            "id",
            "status",
            "customer",
            "items",
            "items.data",
            "items.data.0",
            "items.data.0.price",
            "items.data.0.price.id",
            "items.data.0.price.lookup_key",
            "items.data.0.price.product",
            "items.data.0.plan",
            "items.data.0.current_period_start",
            "items.data.0.current_period_end",
            "items.data.0.quantity",
            "plan",
            "quantity",
            "current_period_end",
            "cancel_at",
            "cancel_at_period_end",
            "canceled_at",
            "ended_at",
            "trial_end",
            "metadata",
            "metadata.app_user_id",
            "cancellation_details",
            "cancellation_details.reason",
            "pause_collection",
            "pending_update",
        ),
    ),
    "invoice.paid": (
        lambda: invoice(id="in_h", customer="cus_h", subscription="sub_h", status="paid"),
        (
            "id",
            "customer",
            "subscription",
            "parent",
            "parent.type",
            "parent.subscription_details",
            "parent.subscription_details.subscription",
            "status",
            "paid",
            "amount_due",
            "amount_paid",
            "amount_remaining",
            "currency",
            "attempt_count",
            "next_payment_attempt",
            "billing_reason",
            "hosted_invoice_url",
            "created",
            "date",
            "status_transitions",
            "status_transitions.paid_at",
            "status_transitions.voided_at",
            "status_transitions.finalized_at",
            "status_transitions.marked_uncollectible_at",
            "deleted",
        ),
    ),
    "customer.updated": (
        lambda: customer(id="cus_h", app_user_id="u_h"),
        ("id", "deleted", "metadata", "metadata.app_user_id", "email"),
    ),
    "checkout.session.completed": (
        lambda: checkout_session(
            id="cs_h", customer="cus_h", subscription="sub_h", client_reference_id="u_h"
        ),
        (
            "id",
            "customer",
            "subscription",
            "client_reference_id",
            "mode",
            "status",
            "payment_status",
        ),
    ),
    "entitlements.active_entitlement_summary.updated": (
        lambda: summary("pro", customer="cus_h"),
        (
            "customer",
            "entitlements",
            "entitlements.data",
            "entitlements.data.0",
            "entitlements.data.0.lookup_key",
            "entitlements.data.0.feature",
            "entitlements.has_more",
        ),
    ),
}


def replaced(obj: Json, path: str, value: Any) -> Json:
    """A copy of `obj` with the value at a dotted path (list indexes as digits) replaced."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        child = node[int(part)] if isinstance(node, list) else node.get(part)
        if not isinstance(child, dict | list) or (isinstance(child, list) and not child):
            child = {}
            if isinstance(node, list):
                node[int(part)] = child
            else:
                node[part] = child
        node = child
    if isinstance(node, list):
        node[int(last) if last.isdigit() else 0] = value
    else:
        node[last] = value
    return out


def hostile(event_type: str, path: str, value: Any, event_id: str) -> Json:
    """A signed-shape event of `event_type` whose object has `value` at `path`."""
    make, _ = BASES[event_type]
    return event(event_type, replaced(make(), path, value), id=event_id, created=T)


def odd_type_events(prefix: str = "evt_odd") -> Iterator[Json]:
    """One event per (object, path read by the folds, odd value)."""
    n = 0
    for event_type, (_, paths) in BASES.items():
        for path in paths:
            for value in ODD_VALUES:
                n += 1
                yield hostile(event_type, path, value, f"{prefix}_{n}")


def large(event_id: str) -> dict[str, Json]:
    """The big shapes, each under the 1 MiB body limit, by name."""
    sub = BASES["customer.subscription.updated"][0]
    base = sub()
    many_items = replaced(base, "items.data", [{}] * 100_000)
    keys = [{"lookup_key": f"k{n}"} for n in range(30_000)]
    summary_obj = replaced(
        BASES["entitlements.active_entitlement_summary.updated"][0](), "entitlements.data", keys
    )
    return {
        "previous_attributes 300 levels deep": event(
            "customer.subscription.updated", base, id=event_id, created=T, previous=deep(300)
        ),
        "metadata 300 levels deep": event(
            "customer.subscription.updated",
            replaced(base, "metadata", deep(300, {"app_user_id": "u_h"})),
            id=event_id,
            created=T,
        ),
        "previous_attributes holding 100,000 numbers": event(
            "customer.subscription.updated",
            base,
            id=event_id,
            created=T,
            previous={"items": {"data": list(range(100_000))}, "status": "trialing"},
        ),
        "100,000 subscription items": event(
            "customer.subscription.updated", many_items, id=event_id, created=T
        ),
        "30,000 entitlements": event(
            "entitlements.active_entitlement_summary.updated",
            summary_obj,
            id=event_id,
            created=T,
        ),
    }


def dumps(envelope: Json) -> bytes:
    """The body as a sender may write it (any depth, integers of any size)."""
    return json.dumps(envelope).encode()
