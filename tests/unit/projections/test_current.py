"""Property: each object's present answers every read at or after its latest snapshot as
the whole history does, and is a function of the set of snapshots."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_ledger.ledger.canonical import Snapshot, snapshot_to_json
from billing_ledger.projections.current import (
    _ordered_as_before,
    present,
    present_after,
    present_of_all,
)
from billing_ledger.projections.fold import ranked
from billing_ledger.projections.invoices import user_invoices
from billing_ledger.projections.links import customer_of
from billing_ledger.projections.policy import UserInputs, evaluate
from billing_ledger.projections.purchases import attached
from billing_ledger.projections.queries import checkout_confirmed, preferred_customer
from tests.unit.builders import DAY, M, T, inputs, invoice_event, snapshots, sub_event
from tests.unit.projections.test_order_independence import PLANS, QUERY_TIMES, USERS, ledgers


def stored(full: UserInputs) -> UserInputs:
    """The inputs as the views hold them: one row per (event, object)."""
    rows = {(s.event_id, s.kind, s.object_id): s for s in full.snapshots}
    return UserInputs(full.user_id, full.links, tuple(rows.values()))


def cut(full: UserInputs) -> tuple[UserInputs, int]:
    kept, last = present_of_all(full.snapshots)
    since = max([last, *(link.created for link in full.links)])
    return UserInputs(full.user_id, full.links, tuple(kept)), since


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_present_answers_like_the_whole_history_at_or_after_the_latest_snapshot(
    data: st.DataObject,
) -> None:
    events = data.draw(ledgers())
    for user in USERS:
        full = stored(inputs(user, events))
        present, since = cut(full)
        for at in {since, since + 1, since + DAY, since + 9 * DAY, since + 2 * M, *QUERY_TIMES}:
            if at < since:
                continue
            assert evaluate(present, PLANS, at) == evaluate(full, PLANS, at)
            assert user_invoices(present, at) == user_invoices(full, at)
            assert preferred_customer(present, at) == preferred_customer(full, at)
            for s in full.snapshots:
                if s.kind == "checkout_session":
                    confirmed = checkout_confirmed(full, s.object_id, at)
                    assert checkout_confirmed(present, s.object_id, at) == confirmed


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_the_present_does_not_depend_on_arrival_order(data: st.DataObject) -> None:
    events = data.draw(ledgers())
    shuffled = data.draw(st.permutations(events))
    for user in USERS:
        mine, _ = cut(stored(inputs(user, events)))
        theirs, _ = cut(stored(inputs(user, shuffled)))
        assert sorted(map(snapshot_to_json, mine.snapshots)) == sorted(
            map(snapshot_to_json, theirs.snapshots)
        )


def test_a_long_history_keeps_a_handful_of_snapshots() -> None:
    common = {"id": "sub_1", "customer": "cus_1", "prices": ("price_pro",), "period": (T, T + M)}
    envelopes = [sub_event("created", "evt_0", T, None, status="active", **common)]
    envelopes += [
        sub_event("updated", f"evt_{n}", T + n, {"status": "active"}, status="active", **common)
        for n in range(1, 200)
    ]
    inv = {"id": "in_1", "customer": "cus_1", "subscription": "sub_1", "created": T}
    envelopes += [
        invoice_event("payment_failed", f"evt_f{n}", T + n, status="open", attempt_count=n, **inv)
        for n in range(1, 4)
    ]
    kept, _ = present_of_all(snapshots(envelopes))
    assert len(kept) <= 5  # the subscription's latest, the invoice's three attempts


def _objects(events: list[Any]) -> list[list[Snapshot]]:
    """Each (object, customer)'s stored snapshots, as the present table groups them."""
    rows = {(s.event_id, s.kind, s.object_id): s for s in attached(snapshots(events))}
    groups: dict[tuple[str, str, str], list[Snapshot]] = {}
    for s in rows.values():
        if (customer := customer_of(s)) is not None:
            groups.setdefault((s.kind, s.object_id, customer), []).append(s)
    return list(groups.values())


def _same(one: list[Snapshot], other: list[Snapshot]) -> bool:
    return sorted(map(snapshot_to_json, one)) == sorted(map(snapshot_to_json, other))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_present_after_a_batch_is_the_present_of_history_and_batch(
    data: st.DataObject,
) -> None:
    """For any history H and batch B of an object, `present_after` answers None or
    present(H + B); in order (B all later) and ordered as before it answers."""
    for group in _objects(data.draw(ledgers())):
        how = data.draw(st.sampled_from(("in order", "within a second", "any")))
        in_order = how == "in order"
        cut = data.draw(st.sampled_from(sorted({s.created for s in group})))
        if in_order:  # a cut at a second: the history before it, the batch after
            history = [s for s in group if s.created < cut]
            batch = [s for s in group if s.created >= cut]
        elif how == "within a second":  # the cut's second split between the two
            first = data.draw(st.sets(st.sampled_from([s.event_id for s in group])))
            history = [
                s for s in group if s.created < cut or (s.created == cut and s.event_id in first)
            ]
            batch = [s for s in group if s not in history]
        else:  # any split, arrival out of order included
            into = data.draw(st.lists(st.booleans(), min_size=len(group), max_size=len(group)))
            history = [s for s, b in zip(group, into, strict=True) if not b]
            batch = [s for s, b in zip(group, into, strict=True) if b]
        now = present(history)
        found = present_after(now, batch)
        if found is not None:
            assert _same(found, present(group))
        elif in_order and batch and history:
            keyed = ranked(now)
            assert not _ordered_as_before(keyed, keyed[-1][1].created)
        again = present_after(present(group), batch)  # the batch applied a second time
        assert again is None or _same(again, present(group))


def test_the_present_after_a_batch_needs_the_history_when_the_batch_is_not_later() -> None:
    common = {"id": "sub_1", "customer": "cus_1", "prices": ("price_pro",), "period": (T, T + M)}
    group = snapshots(
        [
            sub_event("created", "evt_0", T, None, status="active", **common),
            sub_event("updated", "evt_2", T + 2, {"status": "active"}, status="past_due", **common),
            sub_event("updated", "evt_1", T + 1, {"status": "active"}, status="active", **common),
        ]
    )
    history, late = group[:2], group[2:]
    now = present(history)
    assert present_after(now, late) is None  # T + 1 is before T + 2
    assert present_after(now, [s for s in late if s.created > T + 2]) is None
    later = snapshots(
        [sub_event("updated", "evt_3", T + 3, {"status": "past_due"}, status="active", **common)]
    )
    found = present_after(now, later)
    assert found is not None and _same(found, present([*history, *later]))
    assert present_after([], later) == later  # a new object: its batch alone


def test_the_present_after_a_batch_needs_the_history_when_a_kept_second_lost_a_snapshot() -> None:
    """x and y share a second; v names x as its "before" there, so the history orders x
    below y and keeps y as the latest active. The present keeps both (x names the user) but
    not v, and ordered alone it would put x above y: the history must decide."""
    common = {"id": "sub_1", "customer": "cus_1", "prices": ("price_pro",), "period": (T, T + M)}
    x = sub_event("updated", "evt_b", T, None, status="active", app_user_id="u_1", **common)
    y = sub_event("updated", "evt_a", T, None, status="active", cancel_at_period_end=True, **common)
    v = sub_event(
        "updated",
        "evt_c",
        T,
        {"status": "active", "cancel_at_period_end": False},
        status="trialing",
        **common,
    )
    w = sub_event("updated", "evt_d", T + DAY, None, status="trialing", **common)
    history = snapshots([x, y, v, w])
    now = present(history)
    kept = {s.event_id for s in now}
    assert kept >= {"evt_a", "evt_b"} and "evt_c" not in kept
    later = snapshots(
        [sub_event("updated", "evt_e", T + 2 * DAY, None, status="past_due", **common)]
    )
    assert not _ordered_as_before(ranked(now), T + DAY)
    assert present_after(now, later) is None
    # What answering from the present alone would have kept: not the history's answer.
    assert not _same(present([*now, *later]), present([*history, *later]))
