"""The fold chooses one state per object from the set of its snapshots, whatever the order."""

from __future__ import annotations

import itertools
from typing import Any

from billing_ledger.ledger.canonical import Invoice, Snapshot, Subscription
from billing_ledger.projections.fold import (
    Attempt,
    attempts,
    is_ambiguous,
    ordered,
    past_due_since,
    state_at,
)
from tests.unit.builders import (
    DAY,
    T,
    event,
    invoice,
    observation,
    snap,
    subscription,
    summary,
)

SUMMARY = "entitlements.active_entitlement_summary.updated"


def sub_event(
    type_: str, id: str, created: int, prev: dict[str, Any] | None = None, **fields: Any
) -> Snapshot:
    return snap(
        event(
            f"customer.subscription.{type_}",
            subscription(**fields),
            id=id,
            created=created,
            previous=prev,
        )
    )


def inv_event(type_: str, id: str, created: int, **fields: Any) -> Snapshot:
    return snap(event(f"invoice.{type_}", invoice(**fields), id=id, created=created))


def status_in_every_order(snaps: list[Snapshot], at: int) -> set[str]:
    """The chosen status for every permutation of the snapshots."""
    found = set()
    for perm in itertools.permutations(snaps):
        chosen = state_at(perm, at)
        assert chosen is not None and isinstance(chosen.state, Subscription | Invoice)
        assert chosen.state.status is not None
        found.add(chosen.state.status)
    return found


def test_nothing_before_the_first_snapshot() -> None:
    assert state_at([sub_event("created", "e1", T)], T - 1) is None


def test_later_created_wins() -> None:
    snaps = [
        sub_event("created", "e1", T, status="incomplete"),
        sub_event("updated", "e2", T + 1, status="active"),
    ]
    assert status_in_every_order(snaps, T + 1) == {"active"}
    assert status_in_every_order(snaps, T) == {"incomplete"}


def test_terminal_subscription_absorbs_a_later_non_terminal_snapshot() -> None:
    snaps = [
        sub_event("deleted", "e1", T + 50, status="canceled", ended_at=T + 50),
        sub_event("updated", "e2", T + 100, status="active"),
    ]
    assert status_in_every_order(snaps, T + 200) == {"canceled"}


def test_same_second_created_loses_to_updated() -> None:
    snaps = [
        sub_event("created", "e_b", T, status="incomplete"),
        sub_event("updated", "e_a", T, status="active"),
    ]
    assert status_in_every_order(snaps, T) == {"active"}


def test_snapshot_named_as_before_by_a_same_second_update_loses() -> None:
    # Both are .updated in one second; only previous_attributes says which came first.
    snaps = [
        sub_event("updated", "evt_z", T, {"status": "active"}, status="past_due"),
        sub_event("updated", "evt_a", T, {"status": "trialing"}, status="active"),
    ]
    assert status_in_every_order(snaps, T) == {"past_due"}
    assert not is_ambiguous(snaps, T)


def test_two_way_pairs_without_witness_fall_to_the_event_id_and_are_ambiguous() -> None:
    snaps = [
        sub_event("updated", "evt_2", T, status="past_due"),
        sub_event("updated", "evt_1", T, status="active"),
    ]
    assert status_in_every_order(snaps, T) == {"past_due"}
    assert is_ambiguous(snaps, T)


def test_mutual_witnesses_are_not_ranked_and_stay_deterministic() -> None:
    snaps = [
        sub_event("updated", "evt_1", T, {"status": "past_due"}, status="active"),
        sub_event("updated", "evt_2", T, {"status": "active"}, status="past_due"),
    ]
    assert len(status_in_every_order(snaps, T)) == 1
    assert is_ambiguous(snaps, T)


def test_identical_states_tied_on_event_id_are_not_ambiguous() -> None:
    snaps = [
        inv_event("paid", "evt_a", T, status="paid"),
        inv_event("payment_succeeded", "evt_b", T, status="paid"),
    ]
    assert not is_ambiguous(snaps, T)


def test_invoice_status_lattice_orders_a_same_second_group() -> None:
    snaps = [
        inv_event("created", "e3", T, status="draft"),
        inv_event("finalized", "e2", T, status="open", finalized_at=T),
        inv_event("updated", "e1", T, status="uncollectible", finalized_at=T),
    ]
    assert status_in_every_order(snaps, T) == {"uncollectible"}


def test_paid_invoice_is_never_replaced_by_open() -> None:
    snaps = [
        inv_event("paid", "e1", T + 5, status="paid", paid_at=T + 5),
        inv_event("payment_failed", "e2", T + 9, status="open", attempt_count=1),
    ]
    assert status_in_every_order(snaps, T + 10) == {"paid"}


def test_later_payment_attempt_wins_a_same_second_tie() -> None:
    snaps = [
        inv_event("payment_failed", "evt_z", T, status="open", attempt_count=1),
        inv_event("payment_failed", "evt_a", T, status="open", attempt_count=2),
    ]
    chosen = state_at(snaps, T)
    assert chosen is not None and chosen.event_id == "evt_a"


def test_observation_beats_webhooks_of_its_second_and_before() -> None:
    webhook = snap(event(SUMMARY, summary("core"), id="evt_z", created=T + 300))
    observed = snap(observation(summary("core", "pro"), id="obs_a", observed_at=T + 300))
    for perm in itertools.permutations([webhook, observed]):
        assert state_at(perm, T + 300) == observed


def test_webhook_after_the_observation_wins() -> None:
    observed = snap(observation(summary("core"), id="obs", observed_at=T + 300))
    webhook = snap(event(SUMMARY, summary("core", "pro"), id="evt", created=T + 301))
    assert state_at([observed, webhook], T + 400) == webhook


def test_ordered_is_the_same_for_every_permutation() -> None:
    snaps = [
        sub_event("created", "e1", T, status="incomplete"),
        sub_event("updated", "e2", T, {"status": "incomplete"}, status="active"),
        sub_event("updated", "e3", T + 5, {"status": "active"}, status="past_due"),
        sub_event("updated", "e4", T + 5, status="past_due", cancel_at=T + 9),
    ]
    orders = {tuple(s.event_id for s in ordered(perm)) for perm in itertools.permutations(snaps)}
    assert orders == {("e1", "e2", "e3", "e4")}


def test_past_due_since_is_the_first_of_the_trailing_past_due_run() -> None:
    snaps = [
        sub_event("updated", "e1", T, status="active"),
        sub_event("updated", "e2", T + DAY, {"status": "active"}, status="past_due"),
        sub_event("updated", "e3", T + 2 * DAY, status="past_due", cancel_at_period_end=True),
    ]
    assert past_due_since(snaps, T + 3 * DAY) == T + DAY
    assert past_due_since(snaps, T) is None


def test_a_return_to_active_ends_the_past_due_episode() -> None:
    snaps = [
        sub_event("updated", "e1", T, status="past_due"),
        sub_event("updated", "e2", T + DAY, {"status": "past_due"}, status="active"),
        sub_event("updated", "e3", T + 5 * DAY, {"status": "active"}, status="past_due"),
    ]
    assert past_due_since(snaps, T + 6 * DAY) == T + 5 * DAY
    assert past_due_since(snaps, T + 2 * DAY) is None


def test_attempts_accumulate_as_a_set_keyed_by_attempt_count() -> None:
    snaps = [
        inv_event("payment_failed", "e1", T, status="open", attempt_count=1),
        inv_event(
            "payment_failed", "e1b", T, status="open", attempt_count=1
        ),  # a logical duplicate
        inv_event("payment_failed", "e2", T + DAY, status="open", attempt_count=2),
        inv_event("paid", "e3", T + 2 * DAY, status="paid", attempt_count=3),
        inv_event("payment_succeeded", "e4", T + 2 * DAY, status="paid", attempt_count=3),
    ]
    assert attempts(snaps, T + 3 * DAY) == (
        Attempt(1, "failed"),
        Attempt(2, "failed"),
        Attempt(3, "succeeded"),
    )
    assert attempts(snaps, T) == (Attempt(1, "failed"),)
