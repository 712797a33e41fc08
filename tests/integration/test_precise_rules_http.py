"""Issue 15's precise rules through the real pipeline, on SQLite and PostgreSQL.

Each test posts signed webhooks in a delivery order that used to give the wrong answer,
reads through /v1, and ends by rebuilding the views from position 0 (the same rows).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_scenarios_http import checkout, rebuild_equals_live
from tests.support.app import client_for, settings_for
from tests.support.ledger import Ledger
from tests.unit.builders import (
    DAY,
    Json,
    M,
    T,
    active_entitlement,
    customer,
    event,
    invoice_event,
    sub_event,
    summary,
)

SUMMARY = "entitlements.active_entitlement_summary.updated"
LEEWAY = 2 * DAY


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    with client_for(settings_for(database_url)) as (client, deps):
        yield Ledger(client, deps)


def summary_update(id: str, created: int, keys: tuple[str, ...], before: tuple[str, ...]) -> Json:
    previous = {"entitlements": {"data": [active_entitlement(k) for k in before]}}
    return event(SUMMARY, summary(*keys), id=id, created=created, previous=previous)


@pytest.mark.parametrize("ids", [("evt_sa", "evt_sz"), ("evt_sz", "evt_sa")])
def test_rule_same_second_summaries_follow_the_witness_not_the_event_id(
    ledger: Ledger, ids: tuple[str, str]
) -> None:
    first, second = ids
    ledger.deliver(
        checkout(T - 10),
        sub_event("created", "evt_s", T - 10),
        summary_update(second, T + 300, ("core", "pro"), ("core",)),  # names the first's list
        summary_update(first, T + 300, ("core",), ()),
    )
    assert ledger.features(at=T + 300) == ["core", "pro"]
    rebuild_equals_live(ledger)


def test_rule_a_paused_plan_does_not_leak_through_an_add_on(ledger: Ledger) -> None:
    trial = {"trial": (T, T + 14 * DAY), "period": (T, T + 14 * DAY)}
    paused = trial | {"status": "paused", "paused_type": "trial_end_without_payment_method"}
    ledger.deliver(
        checkout(T),
        sub_event("created", "evt_t", T, status="trialing", **trial),
        sub_event("created", "evt_a", T, id="sub_2", prices=("price_addon",)),
        event(SUMMARY, summary("core", "export", "pro"), id="evt_sum", created=T),
        sub_event("updated", "evt_p", T + 14 * DAY, {"status": "trialing"}, **paused),
    )
    assert ledger.features(at=T + DAY) == ["core", "export", "pro"]
    body = ledger.entitlements(at=T + 14 * DAY)
    assert (body["features"], body["plans"]) == (["core", "export"], ["addon", "free"])
    assert ledger.access("pro", at=T + 14 * DAY)["allowed"] is False
    rebuild_equals_live(ledger)


@pytest.mark.parametrize(
    ("kind", "status"), [("marked_uncollectible", "uncollectible"), ("voided", "void")]
)
def test_rule_payment_failed_stays_whatever_the_invoice_became(
    ledger: Ledger, kind: str, status: str
) -> None:
    due = {"id": "in_4", "created": T + M, "billing_reason": "subscription_cycle"}
    ledger.deliver(
        checkout(T),
        sub_event("created", "evt_s", T, period=(T + M, T + 2 * M)),
        invoice_event("payment_failed", "evt_f", T + M, status="open", attempt_count=8, **due),
        sub_event("updated", "evt_pd", T + M, {"status": "active"}, status="past_due", period=(T + M, T + 2 * M)),
        invoice_event(kind, "evt_end", T + M + 14 * DAY, status=status, attempt_count=8, **due),
        sub_event("updated", "evt_back", T + M + 14 * DAY, {"status": "past_due"}, period=(T + M, T + 2 * M)),
    )  # fmt: skip
    body = ledger.entitlements(at=T + M + 15 * DAY)
    assert body["subscriptions"][0]["status"] == "active"
    assert body["warnings"] == ["payment_failed"]
    rebuild_equals_live(ledger)


def test_rule_a_scheduled_cancellation_does_not_cut_access_at_cancel_at(ledger: Ledger) -> None:
    scheduled = {"cancel_at": T + M, "cancel_at_period_end": True, "canceled_at": T + DAY}
    ledger.deliver(
        checkout(T),
        sub_event("created", "evt_s", T),
        sub_event("updated", "evt_c", T + DAY, {"cancel_at": None}, **scheduled),
    )
    sub = ledger.subscription("sub_1", at=T + DAY)
    assert sub["access_until"] == T + M + LEEWAY
    assert ledger.features(at=T + M) == ["core", "pro"]  # no deletion event yet
    assert ledger.features(at=T + M + LEEWAY) == ["core"]
    ended = {"status": "canceled", "ended_at": T + M, **scheduled}
    ledger.deliver(sub_event("deleted", "evt_d", T + M, **ended))
    assert ledger.features(at=T + M) == ["core"]
    assert ledger.features(at=T + M - 1) == ["core", "pro"]
    rebuild_equals_live(ledger)


def test_rule_a_customer_moved_to_another_user_ends_the_old_metadata_link(
    ledger: Ledger,
) -> None:
    ledger.deliver(
        event("customer.created", customer(app_user_id="u_1"), id="evt_c1", created=T),
        sub_event("created", "evt_s", T),
        event(
            "customer.updated",
            customer(app_user_id="u_2"),
            id="evt_c2",
            created=T + 10 * DAY,
            previous={"metadata": {"app_user_id": "u_1"}},
        ),
    )
    assert ledger.features("u_1", at=T + 10 * DAY - 1) == ["core", "pro"]
    old = ledger.entitlements("u_1", at=T + 10 * DAY)
    assert (old["features"], old["customer_ids"]) == (["core"], [])
    assert ledger.invoices("u_1", at=T + 10 * DAY) == []
    assert ledger.features("u_2", at=T + 10 * DAY) == ["core", "pro"]
    last = ledger.history("u_1", at=T + 20 * DAY)[-1]
    assert (last["event_id"], last["features_after"]) == ("evt_c2", ["core"])
    rebuild_equals_live(ledger)
