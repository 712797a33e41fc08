"""`billing-ledger explain` in words: the lines replay/explain.py writes for a user's inputs."""

from __future__ import annotations

from billing_ledger.replay.explain import explain
from tests.unit.builders import DAY, T, charge, event, example_plans, inputs, link, sub_event
from tests.unit.projections.test_purchases import PLANS as LIFETIME_PLANS
from tests.unit.projections.test_purchases import bought

PLANS = example_plans()


def test_explain_tells_the_story_of_one_feature() -> None:
    events = [
        link(id="evt_l", created=T),
        sub_event("created", "evt_c", T),
        sub_event("updated", "evt_pd", T + DAY, {"status": "active"}, status="past_due"),
    ]
    lines = explain(inputs("u_1", events), PLANS, T + 10 * DAY, "pro")
    assert lines[0] == "u_1 at 2026-01-11T00:00:00Z: features {core}"
    gained, lost = (line for line in lines if "(+pro)" in line or "(-pro)" in line)
    assert "sub_1 unseen -> active" in gained and gained.endswith(
        "event evt_c (customer.subscription.created)"
    )
    assert "past_due grace ended for sub_1" in lost and lost.endswith("  rule")
    assert "  sub_1 (cus_1, price_pro): past_due, grants nothing" in "\n".join(lines)
    assert lines[-1] == "pro: denied: sub_1 is past_due beyond the grace period"


def test_explain_skips_changes_that_do_not_touch_the_feature() -> None:
    events = [
        link(id="evt_l", created=T),
        sub_event("created", "evt_c", T, prices=("price_addon",)),
    ]
    lines = explain(inputs("u_1", events), PLANS, T + DAY, "pro")
    assert not any("+export" in line for line in lines)
    assert lines[-1] == "pro: denied: no plan grants pro"
    assert any("(+export)" in line for line in explain(inputs("u_1", events), PLANS, T + DAY))


def test_explain_tells_the_purchase_and_its_refund() -> None:
    full = event("charge.refunded", charge(amount_refunded=9900), id="evt_r", created=T + DAY)
    lines = explain(inputs("u_1", [*bought(), full]), LIFETIME_PLANS, T + 2 * DAY)
    assert any("cs_pay_1 bought lifetime (one-time)" in line for line in lines)
    (refund,) = (line for line in lines if "refunded in full" in line)
    assert "(-pro)" in refund and refund.endswith("event evt_r (charge.refunded)")
    assert lines[0].endswith("features {core}")
    paid = explain(inputs("u_1", bought()), LIFETIME_PLANS, T + DAY)
    assert "pro: allowed: plan lifetime via cs_pay_1 (paid)" in paid
