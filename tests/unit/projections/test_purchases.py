"""One-time purchases: granted by the paid session, ended by a full refund or a lost dispute."""

from __future__ import annotations

from billing_ledger.http import wire
from billing_ledger.projections.history import changes
from billing_ledger.projections.policy import evaluate
from tests.unit.builders import (
    DAY,
    Json,
    T,
    charge,
    dispute,
    event,
    inputs,
    lifetime_plans,
    payment_session,
    sale,
    served,
)

PLANS = lifetime_plans()
CORE, PRO = ("core",), ("core", "pro")


def bought(**session: object) -> list[Json]:
    return [
        sale(id="lgr_sale_1", created=T - 60),
        event("checkout.session.completed", payment_session(**session), id="evt_cs", created=T),  # type: ignore[arg-type]
        event("charge.succeeded", charge(), id="evt_ch", created=T),
    ]


def at(events: list[Json], when: int) -> tuple[str, ...]:
    return evaluate(inputs("u_1", events), PLANS, when).features


def test_a_paid_session_grants_the_lifetime_plan_for_good() -> None:
    ent = evaluate(inputs("u_1", bought()), PLANS, T + 400 * DAY)
    assert ent.features == PRO
    assert ent.plans == ("free", "lifetime")
    assert [p.to_json() for p in ent.purchases] == [
        {"id": "cs_pay_1", "price_ids": ["price_lifetime"], "status": "paid", "grants_access": True}
    ]
    assert ent.reasons["pro"] == "plan lifetime via cs_pay_1 (paid)"


def test_an_unpaid_session_grants_nothing_until_its_async_payment_succeeds() -> None:
    events = bought(payment_status="unpaid")
    assert at(events, T + DAY) == CORE
    later = event(
        "checkout.session.async_payment_succeeded",
        payment_session(),
        id="evt_async",
        created=T + DAY,
    )
    assert at([*events, later], T + DAY) == PRO


def test_a_full_refund_ends_the_grant_and_a_partial_one_does_not() -> None:
    partial = event("charge.refunded", charge(amount_refunded=1000), id="evt_r1", created=T + DAY)
    full = event("charge.refunded", charge(amount_refunded=9900), id="evt_r2", created=T + 2 * DAY)
    assert at([*bought(), partial], T + 3 * DAY) == PRO
    assert at([*bought(), partial, full], T + 3 * DAY) == CORE
    assert at([*bought(), partial, full], T + 2 * DAY - 1) == PRO
    ent = evaluate(inputs("u_1", [*bought(), full]), PLANS, T + 3 * DAY)
    assert ent.purchases[0].status == "refunded"
    assert ent.denials["pro"] == "cs_pay_1 is refunded (charge ch_1)"


def test_a_lost_dispute_ends_the_grant_a_won_one_does_not() -> None:
    opened = event(
        "charge.dispute.created", dispute(status="needs_response"), id="e1", created=T + DAY
    )
    won = event("charge.dispute.closed", dispute(status="won"), id="e2", created=T + 5 * DAY)
    lost = event("charge.dispute.closed", dispute(status="lost"), id="e3", created=T + 5 * DAY)
    assert at([*bought(), opened], T + 6 * DAY) == PRO
    assert at([*bought(), opened, won], T + 6 * DAY) == PRO
    assert at([*bought(), opened, lost], T + 6 * DAY) == CORE
    purchase = evaluate(inputs("u_1", [*bought(), lost]), PLANS, T + 6 * DAY).purchases[0]
    assert (purchase.status, purchase.grants_access) == ("disputed", False)


def test_history_names_the_purchase_and_the_refund() -> None:
    full = event("charge.refunded", charge(amount_refunded=9900), id="evt_r", created=T + DAY)
    found = changes(inputs("u_1", [*bought(), full]), PLANS, T + 9 * DAY)
    found = [served(wire.Change, c) for c in found]
    assert [(c["at"], c["event_id"], c["features_after"]) for c in found] == [
        (T, "evt_cs", ["core", "pro"]),
        (T + DAY, "evt_r", ["core"]),
    ]
    assert found[0]["reason"] == "purchase cs_pay_1 paid (lifetime)"
    assert found[1]["reason"] == "purchase cs_pay_1 refunded (lifetime), charge ch_1"


def test_a_price_no_one_time_plan_sells_grants_nothing() -> None:
    events = bought(price="price_pro")
    events[0] = sale(id="lgr_sale_1", created=T - 60, prices=("price_pro",))
    ent = evaluate(inputs("u_1", events), PLANS, T + DAY)
    assert ent.features == CORE
    assert ent.purchases[0].price_ids == ("price_pro",)


def test_the_sale_alone_names_the_price_when_the_session_has_no_metadata() -> None:
    assert at(bought(price=None), T + DAY) == PRO
