"""One-time purchases through the real pipeline (signed webhooks), on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from billing_ledger import trigger
from tests.support.app import client_for, settings_for
from tests.support.ledger import Ledger, reads_of
from tests.unit.builders import (
    DAY,
    EXAMPLE_PLANS,
    LIFETIME,
    Json,
    T,
    charge,
    dispute,
    event,
    payment_session,
    sale,
    subscription,
)

LATER = T + 400 * DAY  # long after any period: only a purchase still grants
PRO = ["core", "pro"]


@pytest.fixture
def ledger(database_url: str, tmp_path: Path) -> Iterator[Ledger]:
    plans = tmp_path / "plans.toml"
    plans.write_text(EXAMPLE_PLANS.read_text() + LIFETIME)
    with client_for(settings_for(database_url, plans_path=str(plans))) as (client, deps):
        yield Ledger(client, deps)


def buy(ledger: Ledger) -> None:
    """u_1 buys the lifetime plan: the sale we record, then Stripe's events."""
    ledger.record(sale(id="lgr_sale_1", created=T - 5))
    ledger.deliver(
        event("checkout.session.completed", payment_session(), id="evt_cs", created=T),
        event("charge.succeeded", charge(), id="evt_ch", created=T),
    )


def refund(ledger: Ledger, amount: int, event_id: str, created: int) -> None:
    obj = charge(amount_refunded=amount)
    ledger.deliver(event("charge.refunded", obj, id=event_id, created=created))


def test_the_lifetime_plan_is_granted_by_the_paid_session(ledger: Ledger) -> None:
    buy(ledger)
    body = ledger.entitlements(at=LATER)
    assert body["features"] == PRO
    assert body["plans"] == ["free", "lifetime"]
    assert body["purchases"] == [
        {"id": "cs_pay_1", "price_ids": ["price_lifetime"], "status": "paid", "grants_access": True}
    ]
    assert ledger.access("pro", at=LATER)["allowed"] is True


def test_a_partial_refund_keeps_the_plan_a_full_refund_ends_it(ledger: Ledger) -> None:
    buy(ledger)
    refund(ledger, 1000, "evt_r1", T + DAY)
    assert ledger.features(at=LATER) == PRO
    assert ledger.entitlements(at=LATER)["purchases"][0]["status"] == "paid"
    refund(ledger, 9900, "evt_r2", T + 2 * DAY)
    assert ledger.features(at=LATER) == ["core"]
    assert ledger.entitlements(at=LATER)["purchases"][0]["status"] == "refunded"
    history = ledger.history(at=LATER)
    assert [(c["event_id"], c["features_after"]) for c in history] == [
        ("evt_cs", PRO),
        ("evt_r2", ["core"]),
    ]


@pytest.mark.parametrize("dispute_first", [True, False])
def test_a_lost_dispute_ends_the_plan_whether_or_not_its_charge_came_first(
    ledger: Ledger, dispute_first: bool
) -> None:
    lost = event("charge.dispute.closed", dispute(status="lost"), id="evt_dp", created=T + DAY)
    ledger.record(sale(id="lgr_sale_1", created=T - 5))
    paid = event("checkout.session.completed", payment_session(), id="evt_cs", created=T)
    paid_by = event("charge.succeeded", charge(), id="evt_ch", created=T)
    ordered = [lost, paid, paid_by] if dispute_first else [paid, paid_by, lost]
    for envelope in ordered:
        ledger.deliver(envelope)
    assert ledger.features(at=LATER) == ["core"]
    assert ledger.entitlements(at=LATER)["purchases"][0]["status"] == "disputed"
    assert ledger.features(at=T + 1) == PRO  # before the dispute: the history decides


def test_a_rebuild_gives_the_same_rows_and_reads(ledger: Ledger) -> None:
    ledger.deliver(
        event(
            "charge.dispute.created",
            dispute(status="needs_response"),
            id="evt_dp0",
            created=T + DAY,
        )
    )
    buy(ledger)
    refund(ledger, 1000, "evt_r1", T + DAY)
    before = reads_of(ledger, ["u_1"], [T + 1, T + 2 * DAY, LATER])
    fresh = ledger.rebuilt()
    assert fresh.rows() == ledger.live_rows()
    assert fresh.present_rows() == ledger.deps.views.present_rows()
    ledger.deps.views.promote(fresh)
    assert reads_of(ledger, ["u_1"], [T + 1, T + 2 * DAY, LATER]) == before


def test_a_subscription_reports_its_quantity(ledger: Ledger) -> None:
    sub: Json = subscription()
    sub["items"]["data"][0]["quantity"] = 7
    ledger.deliver(
        event("checkout.session.completed", payment_session(), id="evt_cs", created=T),
        event("customer.subscription.created", sub, id="evt_sub", created=T),
    )
    assert ledger.subscription("sub_1", at=T + DAY)["quantity"] == 7


def feed_until(ledger: Ledger, count: int) -> list[Json]:
    """u_1's rows of the change feed once there are `count` (long-polls, 20 s at most)."""
    found: list[Json] = []
    after, deadline = 0, time.monotonic() + 20
    while len(found) < count:
        assert time.monotonic() < deadline, f"the feed shows only {found}"
        page = ledger.get("/v1/changes", after=after, wait=1)
        found += [c for c in page["changes"] if c["user_id"] == "u_1"]
        after = page["next"]
    return found


def test_the_change_feed_shows_a_lost_dispute_that_names_only_its_charge(ledger: Ledger) -> None:
    buy(ledger)
    assert [c["event_id"] for c in feed_until(ledger, 1)] == ["evt_cs"]
    lost = dispute(status="lost")
    ledger.deliver(event("charge.dispute.closed", lost, id="evt_dp", created=T + DAY))
    found = feed_until(ledger, 2)
    assert [(c["event_id"], c["features_after"]) for c in found] == [
        ("evt_cs", PRO),
        ("evt_dp", ["core"]),
    ]


def test_the_trigger_lifecycles_one_time_and_refund_grant_then_end_the_plan(
    ledger: Ledger,
) -> None:
    now = int(time.time())
    ledger.deliver(*trigger.events("one-time", "u_trig", now - 100))
    assert ledger.features("u_trig") == PRO
    assert ledger.entitlements("u_trig")["purchases"][0]["price_ids"] == ["price_lifetime"]
    ledger.deliver(*trigger.events("refund", "u_trig", now - 50))
    assert ledger.features("u_trig") == ["core"]
    assert ledger.entitlements("u_trig")["purchases"][0]["status"] == "refunded"


def timeline(ledger: Ledger) -> list[tuple[str, str | None, list[str]]]:
    body = ledger.get("/v1/users/u_1/timeline", at=LATER)
    wanted = ("purchase", "refund")
    return [
        (e["kind"], e["event_id"], e["features_after"])
        for e in body["entries"]
        if e["kind"] in wanted
    ]


def test_the_timeline_shows_the_purchase_and_its_full_refund(ledger: Ledger) -> None:
    buy(ledger)
    refund(ledger, 1000, "evt_r1", T + DAY)  # partial: no entry
    refund(ledger, 9900, "evt_r2", T + 2 * DAY)
    assert timeline(ledger) == [("purchase", "evt_cs", PRO), ("refund", "evt_r2", ["core"])]


def test_the_timeline_shows_a_lost_dispute_as_the_end_of_the_purchase(ledger: Ledger) -> None:
    buy(ledger)
    lost = event("charge.dispute.closed", dispute(status="lost"), id="evt_dp", created=T + DAY)
    ledger.deliver(lost)
    found = timeline(ledger)
    assert found == [("purchase", "evt_cs", PRO), ("refund", "evt_dp", ["core"])]
    detail = ledger.get("/v1/users/u_1/timeline", at=LATER)["entries"]
    assert any("lost to a dispute" in e["detail"] for e in detail if e["kind"] == "refund")
