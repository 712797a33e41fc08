"""Property: each object's present answers every read at or after its latest snapshot as
the whole history does, and is a function of the set of snapshots."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_ledger.ledger.canonical import snapshot_to_json
from billing_ledger.projections.current import present_of_all
from billing_ledger.projections.invoices import user_invoices
from billing_ledger.projections.policy import UserInputs, evaluate
from billing_ledger.projections.queries import checkout_confirmed, preferred_customer
from tests.unit.builders import DAY, M, T, inputs, invoice_event, sub_event
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
    from tests.unit.builders import snapshots

    kept, _ = present_of_all(snapshots(envelopes))
    assert len(kept) <= 5  # the subscription's latest, the invoice's three attempts
