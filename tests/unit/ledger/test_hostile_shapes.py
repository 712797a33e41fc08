"""Whatever shape a signed event has, normalising it either refuses it or keeps a bounded,
serialisable snapshot that the policy and history then read without raising."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_ledger.ledger.canonical import (
    MAX_DEPTH,
    MAX_PREVIOUS,
    Snapshot,
    snapshot_from_json,
    snapshot_to_json,
)
from billing_ledger.ledger.normalise import NormaliseError, bounded_previous, normalise
from billing_ledger.ledger.records import Recorded
from billing_ledger.projections.history import changes
from billing_ledger.projections.policy import evaluate
from tests.support.hostile import BASES, ODD_VALUES, deep, dumps, hostile, large, odd_type_events
from tests.unit.builders import DAY, T, example_plans, gather

PLANS = example_plans()
SNAPSHOT_BYTES = 64 * 1024  # well above any real snapshot, far below what a sender can send

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=30,
)
odd = st.one_of(
    st.sampled_from(ODD_VALUES),
    json_values,
    st.integers(1, 400).map(deep),
    st.integers(-(2**70), 2**70),
)
paths = st.sampled_from(sorted(BASES)).flatmap(
    lambda t: st.tuples(st.just(t), st.sampled_from(BASES[t][1]))
)


def recorded(body: bytes, envelope: dict[str, Any]) -> Recorded:
    return Recorded(
        position=1,
        version=1,
        event_id=envelope["id"],
        type=envelope["type"],
        created=envelope["created"],
        livemode=False,
        api_version=envelope.get("api_version"),
        received_at=float(T),
        source="webhook",
        thin=False,
        body=body,
    )


def read_back(envelope: dict[str, Any]) -> Snapshot | None:
    """Normalise as the runner does, then everything a read does with the snapshot."""
    try:
        snapshot = normalise(recorded(dumps(envelope), envelope))
    except NormaliseError:
        return None  # refused: the runner skips it, listed
    assert snapshot is not None
    raw = snapshot_to_json(snapshot)
    assert len(raw) <= SNAPSHOT_BYTES
    assert snapshot_from_json(raw) == snapshot
    inputs = gather("u_h", [snapshot])
    for at in (T - 1, T, T + 40 * DAY):
        orjson.dumps(evaluate(inputs, PLANS, at).to_json())
    changes(inputs, PLANS, T + 40 * DAY)
    return snapshot


@given(where=paths, value=odd, previous=st.one_of(st.none(), odd))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_value_in_any_field_the_folds_read_is_refused_or_kept_bounded(
    where: tuple[str, str], value: Any, previous: Any
) -> None:
    envelope = hostile(*where, value, "evt_h")
    if previous is not None:
        envelope["data"]["previous_attributes"] = previous
    read_back(envelope)


def test_every_odd_value_in_every_field_is_refused_or_kept_bounded() -> None:
    for envelope in odd_type_events():
        read_back(envelope)


@pytest.mark.parametrize("name", sorted(large("evt_large")))
def test_deep_and_huge_shapes_are_refused_or_kept_bounded(name: str) -> None:
    read_back(large("evt_large")[name])


def test_a_previous_value_too_deep_or_too_big_is_dropped_whole_and_the_rest_kept() -> None:
    kept = bounded_previous(
        {
            "status": "trialing",
            "deep": deep(MAX_DEPTH + 1),
            "shallow": deep(MAX_DEPTH - 1),
            "big": ["x" * 100] * 1000,
            "cancel_at": None,
        }
    )
    assert kept == {"status": "trialing", "shallow": deep(MAX_DEPTH - 1), "cancel_at": None}


@given(value=st.dictionaries(st.text(max_size=10), odd, max_size=20))
@settings(max_examples=200, deadline=None)
def test_what_previous_attributes_keeps_always_encodes_within_its_bound(
    value: dict[str, Any],
) -> None:
    kept = bounded_previous(value)
    assert set(kept) <= set(value)
    assert all(kept[k] is value[k] for k in kept)  # whole values, never parts
    # The estimate counts a number as 8 bytes and no escapes: allow the real encoding twice.
    assert len(orjson.dumps(kept)) <= 2 * MAX_PREVIOUS
