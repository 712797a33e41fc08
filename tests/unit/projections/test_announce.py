"""The payload of a committed batch's notification, and the batch log's duplicates."""

from __future__ import annotations

from billing_ledger.projections import announce
from billing_ledger.projections.cache import TOUCHED_KEPT, BatchLog
from billing_ledger.projections.links import LinkRow
from billing_ledger.projections.policy import UserInputs


def inputs(user_id: str, customer_id: str) -> UserInputs:
    return UserInputs(
        user_id=user_id,
        links=(LinkRow(user_id, customer_id, 0, "evt_1", "metadata"),),
        snapshots=(),
    )


def test_a_batch_round_trips_with_its_customers_and_users() -> None:
    payload = announce.encode(3, 7, {"cus_1", None}, {"u_1"})
    assert announce.decode(payload) == (3, 7, {"cus_1", None}, {"u_1"})


def test_a_batch_too_big_to_list_touches_everyone() -> None:
    many = {f"cus_{n:030d}" for n in range(300)}  # under TOUCHED_KEPT, over the bytes
    assert len(announce.encode(0, 1, many, set())) <= announce.PAYLOAD_BYTES + 100
    assert announce.decode(announce.encode(0, 1, many, set())) == (0, 1, None, set())
    over = {f"c{n}" for n in range(TOUCHED_KEPT + 1)}
    assert announce.decode(announce.encode(0, 1, over, set())) == (0, 1, None, set())


def test_an_unreadable_payload_is_refused() -> None:
    for payload in ("", "[1]", "{}", '["a", 2, []]', "[1, 2, 3, []]"):
        assert announce.decode(payload) is None


def test_channels_are_per_schema_and_suffix_and_valid_identifiers() -> None:
    live, shadow = announce.channel("public", "billing"), announce.channel("public", "billing_s")
    other = announce.channel("t_1", "billing")
    assert len({live, shadow, other}) == 3
    long = announce.channel("s" * 60, "billing")
    assert len(long.encode()) <= 63 and long != announce.channel("s" * 61, "billing")


def test_a_batch_heard_after_it_was_remembered_here_is_skipped() -> None:
    log = BatchLog()
    log.remember(0, 2, {"cus_1"}, {"u_1"})
    log.remember(2, 4, {"cus_1"}, {"u_1"})
    log.remember(0, 2, {"cus_1"}, {"u_1"})  # this process's own batch, notified late
    assert [(b.after, b.position) for b in log.recent()] == [(0, 2), (2, 4)]
    assert log.untouched(inputs("u_2", "cus_2"), 0, 4)


def test_a_batch_of_everyone_touches_every_user() -> None:
    log = BatchLog()
    log.remember(0, 2, None, set())
    assert not log.untouched(inputs("u_2", "cus_2"), 0, 2)
