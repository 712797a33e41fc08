"""The card facts view on SQLite and PostgreSQL: written with the position, read by customer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billing_ledger.ledger.store import Database, DatabaseUrl
from billing_ledger.projections.cards import PAYMENT_METHOD, CardFact, card_on_file
from billing_ledger.projections.views import PositionMovedError, Views


@pytest.fixture
def views(database_url: str) -> Iterator[Views]:
    """Fresh view tables in the test's database."""
    db = Database(DatabaseUrl.parse(database_url))
    made = Views(db)
    made.create()
    try:
        yield made
    finally:
        db.close()


def method(event_id: str, pm: str, customer: str | None, attached: bool, created: int) -> CardFact:
    """A payment method fact."""
    return CardFact(PAYMENT_METHOD, pm, event_id, created, customer, payment_method=pm,
                    attached=attached, brand="visa", last4="4242", exp_month=1, exp_year=2030)  # fmt: skip


def test_card_facts_commit_with_the_position_once_and_are_read_by_customer(views: Views) -> None:
    attached = method("evt_1", "pm_1", "cus_1", True, 10)
    views.apply([], 0, 1, cards=[attached, method("evt_2", "pm_2", "cus_2", True, 11)])
    with pytest.raises(PositionMovedError):  # a covered batch: nothing written
        views.apply([], 0, 1, cards=[method("evt_3", "pm_3", "cus_1", True, 12)])
    assert views.position() == 1
    assert views.card_facts(["cus_1"]) == [attached]
    card = card_on_file(views.card_facts(["cus_1"]), ["cus_1"])
    assert card is not None and card.label == "Visa ending in 4242"


def test_a_detach_naming_no_customer_is_read_through_the_payment_method(views: Views) -> None:
    views.apply([], 0, 1, cards=[method("evt_1", "pm_1", "cus_1", True, 10)])
    views.apply([], 1, 2, cards=[method("evt_2", "pm_1", None, False, 11)])
    facts = views.card_facts(["cus_1"])
    assert len(facts) == 2 and card_on_file(facts, ["cus_1"]) is None
