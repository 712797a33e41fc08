"""STRIPE-SEMANTICS section 8 through the HTTP API, on SQLite and PostgreSQL.

Each scenario posts signed webhooks in its delivery order to the real app, reads the answer
through /v1, and ends by rebuilding the views from position 0, which must give the very
same rows (S5). Scenarios that need Stripe's API (S6 backfill, S60 reconcile) live with
replay; recorded observations (S17, S56) are appended as the live pipeline appends them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from billing_ledger.projections.views import Views
from tests.support.app import client_for, settings_for
from tests.support.ledger import Ledger, reads_of
from tests.support.signing import sign
from tests.unit.builders import (
    DAY,
    M,
    T,
    checkout_session,
    event,
    invoice_event,
    observation,
    snapshots,
    sub_event,
    subscription,
    summary,
    summary_event,
)

Json = dict[str, Any]
LEEWAY = 2 * DAY
GRACE = 7 * DAY
CORE = ["core"]
PRO = ["core", "pro"]


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    with client_for(settings_for(database_url)) as (client, deps):
        yield Ledger(client, deps)


def rebuild_equals_live(ledger: Ledger) -> None:
    """S5: the store applied again from nothing gives byte-identical rows."""
    assert ledger.deps.runner.wait_for(ledger.deps.store.head(), 10)
    rebuilt = ledger.rebuilt()
    assert rebuilt.rows() == ledger.live_rows()
    assert rebuilt.position() == ledger.deps.views.position()


def checkout(created: int = T, id: str = "evt_1") -> Json:
    return event("checkout.session.completed", checkout_session(), id=id, created=created)


def status_of(ledger: Ledger, sub_id: str, at: int) -> str:
    status: str = ledger.subscription(sub_id, at=at)["status"]
    return status


# -- A. Baseline, idempotency, replay ---------------------------------------------------


def s1_events() -> list[Json]:
    paid = {"amount_paid": 2000, "attempt_count": 1, "finalized_at": T, "paid_at": T + 1}
    return [
        checkout(),
        sub_event("created", "evt_2", T),
        invoice_event("created", "evt_3", T),
        invoice_event("finalized", "evt_4", T, status="open", finalized_at=T),
        invoice_event("paid", "evt_5", T + 1, status="paid", **paid),
    ]


def assert_s1_end_state(ledger: Ledger) -> None:
    body = ledger.entitlements(at=T + 1)
    assert body["features"] == PRO and body["customer_ids"] == ["cus_1"]
    (sub,) = body["subscriptions"]
    assert (sub["status"], sub["current_period_end"]) == ("active", T + M)
    assert sub["access_until"] == T + M + LEEWAY
    assert ledger.features(at=T + M + LEEWAY - 1) == PRO
    assert ledger.features(at=T + M + LEEWAY) == CORE
    (inv,) = ledger.invoices(at=T + 1)
    assert (inv["id"], inv["status"], inv["amount_paid"]) == ("in_1", "paid", 2000)


def test_s1_happy_path_via_checkout(ledger: Ledger) -> None:
    ledger.deliver(*s1_events())
    assert_s1_end_state(ledger)
    rebuild_equals_live(ledger)


def test_s2_fully_reversed_delivery(ledger: Ledger) -> None:
    events = s1_events()[::-1]
    ledger.deliver(events[0])  # invoice.paid alone: a paid invoice, nobody's access yet
    assert ledger.entitlements(at=T + 1)["customer_ids"] == []
    assert ledger.features(at=T + 1) == CORE
    ledger.deliver(*events[1:4])  # the subscription is active but unattributed
    assert ledger.features(at=T + 1) == CORE
    ledger.deliver(events[4])
    assert_s1_end_state(ledger)
    rebuild_equals_live(ledger)


def test_s3_exact_duplicates(ledger: Ledger) -> None:
    ledger.deliver(*s1_events())
    body = orjson.dumps(s1_events()[4])
    answers = [ledger.post(body, sign(body, timestamp=int(time.time()) - i)) for i in range(3)]
    assert [a["status"] for a in answers] == ["duplicate"] * 3
    stored = ledger.get("/v1/events/evt_5")
    assert {a["position"] for a in answers} == {stored["position"]}
    assert_s1_end_state(ledger)
    rebuild_equals_live(ledger)


def test_s4_logical_duplicate_with_another_id(ledger: Ledger) -> None:
    ledger.deliver(*s1_events())
    twin = dict(s1_events()[4], id="evt_5b")
    assert ledger.deliver(twin)[0]["status"] == "recorded"
    assert ledger.get("/v1/events/evt_5b")["payload"]["data"] == s1_events()[4]["data"]
    assert_s1_end_state(ledger)
    rebuild_equals_live(ledger)


def test_s5_replay_from_nothing_gives_identical_reads(ledger: Ledger) -> None:
    ledger.deliver(*s1_events())
    ledger.deliver(
        sub_event("updated", "evt_s", T + 10 * DAY, {"cancel_at_period_end": False},
                  cancel_at_period_end=True, cancel_at=T + M),
        sub_event("deleted", "evt_d", T + M, status="canceled", ended_at=T + M),
    )  # fmt: skip
    times = [T, T + 1, T + 10 * DAY, T + M, T + 2 * M]
    before = reads_of(ledger, ["u_1", "u_2"], times)
    live = ledger.live_rows()
    # (a) stored order, into fresh tables that then replace the live ones at once.
    rebuilt = ledger.rebuilt("_replay")
    assert rebuilt.rows() == live
    ledger.deps.views.promote(rebuilt)
    assert reads_of(ledger, ["u_1", "u_2"], times) == before
    # (b) and (c): the same snapshots applied in other orders and batchings.
    applied = snapshots([*s1_events(), *ledger_events(ledger)[5:]])
    for seed in range(5):
        order = list(applied)
        random.Random(seed).shuffle(order)
        assert rows_in_order(ledger.deps.views.shadow(f"_perm{seed}"), order) == live


def ledger_events(ledger: Ledger) -> list[Json]:
    """Every stored event's first body, in position order."""
    return [e.payload() for e in ledger.deps.store.read(0, 10_000) if e.version == 1]


def rows_in_order(views: Views, order: list[Any]) -> Any:
    views.drop()
    views.create()
    for position, snapshot in enumerate(order, 1):
        views.apply([snapshot], position - 1, position)
    return views.rows()


def test_s7_same_id_in_another_api_version_is_a_duplicate(ledger: Ledger) -> None:
    ledger.deliver(checkout(), sub_event("created", "evt_2", T))
    endive = sub_event("updated", "evt_9", T + DAY, {"status": "incomplete"})
    acacia = sub_event("updated", "evt_9", T + DAY, {"status": "incomplete"})
    acacia["api_version"] = "2025-02-24.acacia"
    obj = acacia["data"]["object"]
    obj["current_period_start"], obj["current_period_end"] = T, T + M
    for raw in obj["items"]["data"]:
        del raw["current_period_start"], raw["current_period_end"]
    ledger.deliver(endive)
    before = ledger.entitlements(at=T + DAY)
    assert ledger.deliver(acacia)[0]["status"] == "duplicate"
    after = ledger.entitlements(at=T + DAY)
    assert {**after, "position": 0} == {**before, "position": 0}  # the alternate has a position
    assert before["subscriptions"][0]["current_period_end"] == T + M
    assert ledger.get("/v1/events/evt_9")["payload"]["api_version"] == "2026-10-28.endive"
    rebuild_equals_live(ledger)


# -- B. Reordering and concurrency ------------------------------------------------------


def test_s8_updated_before_created(ledger: Ledger) -> None:
    ledger.deliver(
        sub_event("updated", "evt_b", T + 1, {"status": "incomplete"}, app_user_id="u_1"),
        sub_event("created", "evt_a", T, status="incomplete", app_user_id="u_1"),
    )
    assert status_of(ledger, "sub_1", T + 1) == "active"
    assert ledger.features(at=T + 1) == PRO
    rebuild_equals_live(ledger)


def test_s10_deleted_then_an_older_updated(ledger: Ledger) -> None:
    ledger.deliver(
        checkout(T - 10),
        sub_event("deleted", "e1", T + 100, status="canceled", ended_at=T + 100, canceled_at=T + 100),
        sub_event("updated", "e2", T + 50, status="active"),
    )  # fmt: skip
    assert status_of(ledger, "sub_1", T + 200) == "canceled"
    assert ledger.features(at=T + 200) == CORE
    assert ledger.access("pro", at=T + 200) == {"allowed": False, "reason": "sub_1 is canceled"}
    rebuild_equals_live(ledger)


def test_s12_invoice_paid_before_created_and_finalized(ledger: Ledger) -> None:
    ledger.deliver(
        checkout(),
        invoice_event("paid", "e1", T + 5, status="paid", paid_at=T + 5, finalized_at=T + 3, amount_paid=2000),
        invoice_event("finalized", "e2", T + 3, status="open", finalized_at=T + 3),
        invoice_event("created", "e3", T),
    )  # fmt: skip
    assert ledger.invoice("in_1", at=T + 10)["status"] == "paid"
    assert ledger.invoice("in_1", at=T + 4)["status"] == "open"
    rebuild_equals_live(ledger)


def test_s14_checkout_link_arriving_last(ledger: Ledger) -> None:
    ledger.deliver(
        sub_event("created", "evt_2", T),
        invoice_event("paid", "evt_5", T + 1, status="paid", amount_paid=2000, paid_at=T + 1),
    )
    assert ledger.features(at=T + 30) == CORE
    ledger.deliver(checkout(T + 30))
    assert ledger.features(at=T + 29) == CORE
    assert ledger.features(at=T + 30) == PRO
    rebuild_equals_live(ledger)


def test_s14_the_subscriptions_metadata_links_as_well(ledger: Ledger) -> None:
    ledger.deliver(sub_event("created", "evt_2", T, app_user_id="u_1"))
    body = ledger.entitlements(at=T)
    assert (body["features"], body["customer_ids"]) == (PRO, ["cus_1"])
    rebuild_equals_live(ledger)


def test_s15_concurrent_created_and_updated_of_one_second(ledger: Ledger) -> None:
    created = orjson.dumps(sub_event("created", "evt_x", T, status="incomplete", app_user_id="u_1"))
    updated = orjson.dumps(
        sub_event("updated", "evt_a", T, {"status": "incomplete"}, app_user_id="u_1")
    )
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(ledger.post, [created, updated]))
    assert {a["status"] for a in answers} == {"recorded"}
    assert status_of(ledger, "sub_1", T) == "active"
    rebuild_equals_live(ledger)


def test_s16_entitlement_summaries_out_of_order(ledger: Ledger) -> None:
    ledger.deliver(
        checkout(T),
        sub_event("created", "evt_s", T),
        summary_event("evt_new", T + 200, "core"),
        summary_event("evt_old", T + 100, "core", "pro"),
    )
    assert ledger.features(at=T + 150) == PRO
    assert ledger.features(at=T + 300) == CORE
    rebuild_equals_live(ledger)


def test_s17_summary_tie_resolved_by_a_recorded_observation(ledger: Ledger) -> None:
    ledger.deliver(
        checkout(T),
        sub_event("created", "evt_s", T),
        summary_event("evt_p", T + 300, "core"),
        summary_event("evt_q", T + 300, "core", "pro"),
    )
    ledger.record(observation(summary("core", "pro"), id="obs_1", observed_at=T + 301))
    assert ledger.features(at=T + 301) == PRO
    rebuild_equals_live(ledger)  # replay reads the observation: no API call


# -- C. Trials --------------------------------------------------------------------------


def s18_events() -> list[Json]:
    trial = {"status": "trialing", "trial": (T, T + 14 * DAY), "period": (T, T + 14 * DAY)}
    zero = {"id": "in_0", "status": "paid", "amount_due": 0, "paid_at": T}
    return [
        checkout(),
        sub_event("created", "evt_t", T, **trial),
        invoice_event("paid", "evt_0", T, **zero),
    ]


def test_s18_trial_start_with_a_zero_invoice(ledger: Ledger) -> None:
    ledger.deliver(*s18_events())
    assert status_of(ledger, "sub_1", T + DAY) == "trialing"
    assert ledger.features(at=T + DAY) == PRO
    (inv,) = ledger.invoices(at=T + DAY)
    assert (inv["id"], inv["status"], inv["amount_paid"]) == ("in_0", "paid", 0)
    rebuild_equals_live(ledger)


def test_s19_trial_will_end_twice_changes_nothing(ledger: Ledger) -> None:
    ledger.deliver(*s18_events())
    before = ledger.entitlements(at=T + 11 * DAY)
    trial = {"status": "trialing", "trial": (T, T + 14 * DAY), "period": (T, T + 14 * DAY)}
    ledger.deliver(
        *(sub_event("trial_will_end", f"evt_w{i}", T + 11 * DAY, **trial) for i in (1, 2))
    )
    after = ledger.entitlements(at=T + 11 * DAY)
    assert {**after, "position": 0} == {**before, "position": 0}
    assert ledger.entitlements(at=T + 11 * DAY + 1)["warnings"] == ["trial_ending"]
    rebuild_equals_live(ledger)


def test_s20_trial_converts(ledger: Ledger) -> None:
    start, end = T + 14 * DAY, T + 14 * DAY + M
    ledger.deliver(
        *s18_events(),
        sub_event("updated", "evt_c", start, {"status": "trialing"}, period=(start, end)),
        invoice_event("paid", "evt_p", start, id="in_2", status="paid", amount_paid=2000,
                      attempt_count=1, billing_reason="subscription_cycle"),
    )  # fmt: skip
    sub = ledger.subscription("sub_1", at=start)
    assert (sub["status"], sub["access_until"]) == ("active", end + LEEWAY)
    assert ledger.features(at=end + LEEWAY - 1) == PRO
    rebuild_equals_live(ledger)


def s21_events() -> list[Json]:
    start = T + 14 * DAY
    paused = {"status": "paused", "trial": (T, start), "period": (T, start)}
    return [
        *s18_events(),
        summary_event("evt_sum", T, "core", "pro"),
        sub_event("updated", "evt_u", start, {"status": "trialing"}, **paused),
        sub_event("paused", "evt_pz", start, **paused),
    ]


def test_s21_trial_ends_paused_and_the_stale_summary_grants_nothing(ledger: Ledger) -> None:
    ledger.deliver(*s21_events())
    assert status_of(ledger, "sub_1", T + 14 * DAY) == "paused"
    assert ledger.features(at=T + 14 * DAY) == CORE
    assert ledger.access("pro", at=T + 14 * DAY)["allowed"] is False
    rebuild_equals_live(ledger)


def test_s22_trial_ends_canceled(ledger: Ledger) -> None:
    end = T + 14 * DAY
    ledger.deliver(
        *s18_events(),
        sub_event("deleted", "evt_d", end, status="canceled", ended_at=end, trial=(T, end), period=(T, end)),
    )  # fmt: skip
    assert status_of(ledger, "sub_1", end) == "canceled"
    assert ledger.features(at=end) == CORE
    rebuild_equals_live(ledger)


def test_s23_trial_into_past_due_keeps_access_for_the_grace_window(ledger: Ledger) -> None:
    start = T + 14 * DAY
    failing = {
        "id": "in_3",
        "status": "open",
        "finalized_at": start,
        "billing_reason": "subscription_cycle",
    }
    ledger.deliver(
        *s18_events(),
        sub_event("updated", "evt_pd", start, {"status": "trialing"}, status="past_due", period=(start, start + M)),
        invoice_event("finalized", "evt_f", start, **failing),
        invoice_event("payment_failed", "evt_pf", start + 3600, attempt_count=1, **failing),
    )  # fmt: skip
    body = ledger.entitlements(at=start + DAY)
    (sub,) = body["subscriptions"]
    assert (sub["status"], sub["access_until"]) == ("past_due", start + GRACE)
    assert (body["features"], body["warnings"]) == (PRO, ["payment_failed"])
    assert ledger.features(at=start + GRACE - 1) == PRO
    assert ledger.features(at=start + GRACE) == CORE
    assert ledger.invoice("in_3", at=start + GRACE)["status"] == "open"
    lapse = ledger.history(at=start + GRACE)[-1]
    assert (lapse["at"], lapse["event_id"], lapse["features_after"]) == (start + GRACE, None, CORE)
    rebuild_equals_live(ledger)


def test_s24_paused_subscription_resumed(ledger: Ledger) -> None:
    back = T + 20 * DAY
    ledger.deliver(
        *s21_events(),
        sub_event("resumed", "evt_r", back, status="active", period=(back, back + M)),
        sub_event("updated", "evt_ra", back, {"status": "paused"}, status="active", period=(back, back + M)),
        invoice_event("paid", "evt_rp", back, id="in_r", status="paid", amount_paid=2000, attempt_count=1),
    )  # fmt: skip
    assert ledger.features(at=back - 1) == CORE
    assert status_of(ledger, "sub_1", back) == "active"
    assert ledger.features(at=back) == PRO
    rebuild_equals_live(ledger)


# -- D. Payment failure and recovery ----------------------------------------------------


def s25_events() -> list[Json]:
    due = {"id": "in_4", "status": "open", "billing_reason": "subscription_cycle", "created": T + M}
    renewed = {"period": (T + M, T + 2 * M)}
    return [
        checkout(),
        sub_event("created", "evt_2", T),
        invoice_event("payment_failed", "evt_f1", T + M, attempt_count=1, next_payment_attempt=T + M + 3 * DAY, **due),
        sub_event("updated", "evt_pd", T + M, {"status": "active"}, status="past_due", **renewed),
        invoice_event("payment_failed", "evt_f2", T + M + 3 * DAY, attempt_count=2, next_payment_attempt=T + M + 5 * DAY, **due),
        invoice_event("paid", "evt_ok", T + M + 5 * DAY, **(due | {"status": "paid"}), attempt_count=3, amount_paid=2000),
        sub_event("updated", "evt_back", T + M + 5 * DAY, {"status": "past_due"}, **renewed),
    ]  # fmt: skip


def test_s25_renewal_fails_and_recovers_within_grace(ledger: Ledger) -> None:
    ledger.deliver(*s25_events())
    body = ledger.entitlements(at=T + M + 6 * DAY)
    assert (body["subscriptions"][0]["status"], body["features"], body["warnings"]) == (
        "active",
        PRO,
        [],
    )
    assert ledger.entitlements(at=T + M + DAY)["warnings"] == ["payment_failed"]
    assert ledger.invoice("in_4", at=T + M + 6 * DAY)["status"] == "paid"
    # Access was continuous: one change only, the first grant.
    changes = ledger.history(at=T + M + 6 * DAY)
    assert [(c["features_before"], c["features_after"]) for c in changes] == [(CORE, PRO)]
    rebuild_equals_live(ledger)


def test_s26_retries_exhausted_then_canceled(ledger: Ledger) -> None:
    end = T + M + 14 * DAY
    due = {"id": "in_4", "status": "open", "billing_reason": "subscription_cycle", "created": T + M}
    ledger.deliver(
        *s25_events()[:5],
        invoice_event("payment_failed", "evt_f8", end - DAY, attempt_count=8, **due),
        sub_event("deleted", "evt_del", end, status="canceled", ended_at=end, reason="payment_failed"),
    )  # fmt: skip
    assert status_of(ledger, "sub_1", end) == "canceled"
    assert ledger.features(at=end) == CORE
    assert ledger.invoice("in_4", at=end)["status"] == "open"  # and it grants nothing
    rebuild_equals_live(ledger)


def test_s29_first_payment_fails_and_expires(ledger: Ledger) -> None:
    first = {"id": "in_5", "billing_reason": "subscription_create"}
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_c", T, status="incomplete"),
        invoice_event("payment_failed", "evt_f", T, status="open", attempt_count=1, **first),
        sub_event("updated", "evt_x", T + 23 * 3600, {"status": "incomplete"}, status="incomplete_expired", canceled_at=T + 23 * 3600),
        invoice_event("voided", "evt_v", T + 23 * 3600, status="void", voided_at=T + 23 * 3600, **first),
    )  # fmt: skip
    for at in (T, T + 3600, T + 23 * 3600, T + 40 * DAY):
        assert ledger.features(at=at) == CORE
    assert status_of(ledger, "sub_1", T + DAY) == "incomplete_expired"
    assert ledger.invoice("in_5", at=T + DAY)["status"] == "void"
    assert ledger.history(at=T + 40 * DAY) == []
    rebuild_equals_live(ledger)


def test_s30_three_d_secure_on_the_first_invoice(ledger: Ledger) -> None:
    first = {"id": "in_6", "billing_reason": "subscription_create"}
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_c", T, status="incomplete"),
        invoice_event("payment_action_required", "evt_a", T, status="open", attempt_count=1, **first),
        invoice_event("paid", "evt_p", T + 60, status="paid", attempt_count=1, amount_paid=2000, **first),
        sub_event("updated", "evt_u", T + 60, {"status": "incomplete"}),
    )  # fmt: skip
    assert ledger.features(at=T + 59) == CORE
    assert ledger.features(at=T + 60) == PRO
    rebuild_equals_live(ledger)


def test_s31_delayed_payment_voided_after_activation_keeps_access(ledger: Ledger) -> None:
    ach = {"id": "in_7", "billing_reason": "subscription_create"}
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_c", T),
        invoice_event("finalized", "evt_f", T, status="open", finalized_at=T, **ach),
        invoice_event("voided", "evt_v", T + 4 * DAY, status="void", finalized_at=T, voided_at=T + 4 * DAY, **ach),
    )  # fmt: skip
    assert status_of(ledger, "sub_1", T + 5 * DAY) == "active"
    assert ledger.features(at=T + 5 * DAY) == PRO
    assert ledger.invoice("in_7", at=T + 5 * DAY)["status"] == "void"
    rebuild_equals_live(ledger)


# -- E. Cancellation and reactivation ---------------------------------------------------


def s34_first() -> list[Json]:
    scheduled = {"cancel_at_period_end": True, "cancel_at": T + M, "canceled_at": T + 10 * DAY}
    prev = {"cancel_at_period_end": False, "cancel_at": None, "canceled_at": None}
    return [
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event("updated", "evt_s", T + 10 * DAY, prev, **scheduled),
    ]


def test_s34_cancel_at_period_end_then_the_end(ledger: Ledger) -> None:
    ledger.deliver(*s34_first())
    body = ledger.entitlements(at=T + 10 * DAY)
    (sub,) = body["subscriptions"]
    assert (sub["status"], sub["cancel_at_period_end"], sub["access_until"]) == (
        "active",
        True,
        T + M + LEEWAY,  # P5: bounded like any period end until the deletion event
    )
    assert (body["features"], body["warnings"]) == (PRO, ["cancellation_scheduled"])
    ledger.deliver(sub_event("deleted", "evt_d", T + M, status="canceled", ended_at=T + M))
    after = ledger.entitlements(at=T + M)
    assert (after["subscriptions"][0]["status"], after["features"]) == ("canceled", CORE)
    assert ledger.features(at=T + M - 1) == PRO  # canceled_at (T+10d) is not the end
    rebuild_equals_live(ledger)


def test_s35_portal_cancel_in_flexible_mode(ledger: Ledger) -> None:
    flexible = {
        "billing_mode": "flexible",
        "cancel_at": T + M,
        "canceled_at": T + 10 * DAY,
        "reason": "cancellation_requested",
    }
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event("updated", "evt_p", T + 10 * DAY, {"cancel_at": None}, **flexible),
    )  # fmt: skip
    body = ledger.entitlements(at=T + 10 * DAY)
    assert body["warnings"] == ["cancellation_scheduled"]
    assert (body["features"], body["subscriptions"][0]["access_until"]) == (PRO, T + M + LEEWAY)
    rebuild_equals_live(ledger)


def test_s36_reactivate_before_the_period_end(ledger: Ledger) -> None:
    ledger.deliver(
        *s34_first(),
        sub_event("updated", "evt_r", T + 20 * DAY, {"cancel_at_period_end": True, "cancel_at": T + M}),
        invoice_event("paid", "evt_p", T + M, id="in_2", status="paid", amount_paid=2000, attempt_count=1, billing_reason="subscription_cycle"),
        sub_event("updated", "evt_n", T + M, {"items": {}}, period=(T + M, T + 2 * M)),
    )  # fmt: skip
    sub = ledger.subscription("sub_1", at=T + 20 * DAY)
    assert (sub["cancel_at"], sub["cancel_at_period_end"]) == (None, False)
    assert ledger.entitlements(at=T + 20 * DAY)["warnings"] == []
    assert ledger.subscription("sub_1", at=T + M + DAY)["access_until"] == T + 2 * M + LEEWAY
    assert [c["features_after"] for c in ledger.history(at=T + M + 5 * DAY)] == [PRO]
    rebuild_equals_live(ledger)


def test_s38_immediate_cancel(ledger: Ledger) -> None:
    now = T + 5 * DAY
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event("deleted", "evt_d", now, status="canceled", canceled_at=now, ended_at=now, reason="cancellation_requested"),
    )  # fmt: skip
    assert ledger.features(at=now - 1) == PRO
    assert ledger.features(at=now) == CORE
    last = ledger.history(at=now)[-1]
    assert (last["at"], last["event_id"], last["features_after"]) == (now, "evt_d", CORE)
    rebuild_equals_live(ledger)


def test_s40_resubscribe_after_cancellation(ledger: Ledger) -> None:
    now = T + 5 * DAY
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event("deleted", "evt_d", now, status="canceled", ended_at=now, canceled_at=now),
        event("checkout.session.completed", checkout_session(id="cs_2", subscription="sub_2"), id="evt_c2", created=now + DAY),
        sub_event("created", "evt_s2", now + DAY, id="sub_2", prices=("price_basic",), period=(now + DAY, now + DAY + M)),
    )  # fmt: skip
    body = ledger.entitlements(at=now + DAY)
    assert [(s["id"], s["status"]) for s in body["subscriptions"]] == [
        ("sub_1", "canceled"),
        ("sub_2", "active"),
    ]
    assert (body["features"], body["plans"]) == (CORE, ["basic", "free"])
    assert ledger.access("core", at=now + DAY)["reason"] == "plan basic via sub_2 (active)"
    rebuild_equals_live(ledger)


# -- F. Plan changes --------------------------------------------------------------------


def test_s41_upgrade_mid_period(ledger: Ledger) -> None:
    up = T + 10 * DAY
    proration = {"id": "in_9", "billing_reason": "subscription_update", "created": up}
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_2", T, prices=("price_basic",)),
        sub_event("updated", "evt_up", up, {"items": {"data": []}}),
        invoice_event("created", "evt_ic", up, **proration),
        invoice_event("paid", "evt_ip", up, status="paid", amount_paid=1000, attempt_count=1, **proration),
    )  # fmt: skip
    assert ledger.features(at=up - 1) == CORE
    assert ledger.features(at=up) == PRO
    assert ledger.subscription("sub_1", at=up)["current_period_end"] == T + M
    assert ledger.invoice("in_9", at=up)["status"] == "paid"
    rebuild_equals_live(ledger)


def s42_first(up: int) -> Json:
    pending = {"expires_at": up + DAY, "subscription_items": [{"price": "price_pro"}]}
    return sub_event("updated", "evt_pu", up, prices=("price_basic",), pending_update=pending)


def test_s42_pending_upgrade_whose_payment_fails(ledger: Ledger) -> None:
    up = T + 10 * DAY
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_2", T, prices=("price_basic",)),
        s42_first(up),
        invoice_event("payment_failed", "evt_f", up, id="in_10", status="open", attempt_count=1, billing_reason="subscription_update"),
        sub_event("pending_update_expired", "evt_x", up + DAY, prices=("price_basic",)),
    )  # fmt: skip
    for at in (up, up + 3600, up + DAY, up + 2 * DAY):
        assert ledger.features(at=at) == CORE
        assert status_of(ledger, "sub_1", at) == "active"
    rebuild_equals_live(ledger)


def test_s43_pending_upgrade_whose_payment_succeeds(ledger: Ledger) -> None:
    up = T + 10 * DAY
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_2", T, prices=("price_basic",)),
        s42_first(up),
        invoice_event("paid", "evt_p", up + 1, id="in_10", status="paid", amount_paid=1000, attempt_count=1, billing_reason="subscription_update"),
        sub_event("pending_update_applied", "evt_a", up + 2),
        sub_event("updated", "evt_u", up + 2, {"pending_update": {"expires_at": up + DAY}}),
    )  # fmt: skip
    assert ledger.features(at=up + 1) == CORE
    assert ledger.features(at=up + 2) == PRO
    rebuild_equals_live(ledger)


@pytest.mark.parametrize("summary_first", [True, False])
def test_s45_summary_before_or_after_the_upgrade(ledger: Ledger, summary_first: bool) -> None:
    up = T + 10 * DAY
    pair = [
        summary_event("evt_sum", up, "core", "pro"),
        sub_event("updated", "evt_up", up, {"items": {"data": []}}),
    ]
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_2", T, prices=("price_basic",)),
        *(pair if summary_first else pair[::-1]),
    )
    assert ledger.features(at=up) == PRO
    rebuild_equals_live(ledger)


# -- G. Multiple subscriptions and customer lifecycle -----------------------------------


def test_s46_two_subscriptions_for_one_customer(ledger: Ledger) -> None:
    end = T + 10 * DAY
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_1s", T, prices=("price_basic",)),
        sub_event("created", "evt_2s", T, id="sub_2", prices=("price_addon",)),
        sub_event("deleted", "evt_2d", end, id="sub_2", prices=("price_addon",), status="canceled", ended_at=end),
    )  # fmt: skip
    assert ledger.features(at=end - 1) == ["core", "export"]
    body = ledger.entitlements(at=end)
    assert body["features"] == CORE
    assert [(s["id"], s["status"]) for s in body["subscriptions"]] == [
        ("sub_1", "active"),
        ("sub_2", "canceled"),
    ]
    rebuild_equals_live(ledger)


def test_a_deleted_customer_stays_listed_but_never_grants_again(ledger: Ledger) -> None:
    gone = T + 3 * DAY
    ledger.deliver(
        *s1_events(),
        event("customer.deleted", {"id": "cus_1", "object": "customer", "deleted": True}, id="evt_cd", created=gone),
        sub_event("updated", "evt_late", gone + 1),
    )  # fmt: skip
    body = ledger.entitlements(at=gone + 1)
    assert (body["features"], body["customer_ids"]) == (CORE, ["cus_1"])
    assert len(ledger.invoices(at=gone + 1)) == 1
    rebuild_equals_live(ledger)


# -- H. Robustness, security, versions --------------------------------------------------


def test_s50_unknown_and_future_event_types(ledger: Ledger) -> None:
    ledger.deliver(*s1_events())
    before = ledger.entitlements(at=T + 10)
    answers = ledger.deliver(
        event("billing.credit_grant.created", {"id": "credgr_1", "object": "billing.credit_grant"}, id="evt_x", created=T + 5),
        event("customer.subscription.frobnicated", subscription(status="canceled"), id="evt_y", created=T + 5),
    )  # fmt: skip
    assert [a["status"] for a in answers] == ["recorded", "recorded"]
    after = ledger.entitlements(at=T + 10)
    assert after["position"] > before["position"]
    assert {**after, "position": 0} == {**before, "position": 0}
    rebuild_equals_live(ledger)


def test_s51_an_event_of_the_other_mode_never_touches_the_projections(ledger: Ledger) -> None:
    ledger.deliver(*s1_events())
    before = ledger.entitlements(at=T + 10)
    live = sub_event("updated", "evt_live", T + 5, status="canceled")
    live["livemode"] = True
    assert ledger.deliver(live)[0]["status"] == "recorded"  # stored, flagged
    assert ledger.get("/v1/events/evt_live")["livemode"] is True
    after = ledger.entitlements(at=T + 10)
    assert {**after, "position": 0} == {**before, "position": 0}
    rebuild_equals_live(ledger)


def test_s51_a_live_deployment_ignores_test_events(database_url: str) -> None:
    with client_for(settings_for(database_url, livemode=True)) as (client, deps):
        ledger = Ledger(client, deps)
        ledger.deliver(*s1_events())  # livemode=false: the test data of the same ids
        assert ledger.features(at=T + 10) == CORE
        live = [dict(e, livemode=True, id=f"{e['id']}_live") for e in s1_events()]
        ledger.deliver(*live)
        assert ledger.features(at=T + 10) == PRO
        rebuild_equals_live(ledger)


def test_s53_a_replayed_old_delivery_is_rejected(ledger: Ledger) -> None:
    ledger.deliver(*s1_events())
    body = orjson.dumps(sub_event("deleted", "evt_2", T, status="canceled", ended_at=T))
    response = ledger.client.post(
        "/webhooks/stripe",
        content=body,
        headers={"stripe-signature": sign(body, timestamp=int(time.time()) - 3600)},
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_signature"
    assert ledger.features(at=T + 10) == PRO
    rebuild_equals_live(ledger)


def test_s55_a_thin_event_changes_no_projection(ledger: Ledger) -> None:
    ledger.deliver(*s1_events())
    before = ledger.entitlements(at=T + 10)
    thin = (
        b'{"id": "evt_thin", "object": "v2.core.event", "type": "v1.billing.meter.error_report_triggered",'
        b' "created": "2026-01-01T00:00:05.000Z", "livemode": false,'
        b' "related_object": {"id": "mtr_1", "type": "billing.meter", "url": "/v1/billing/meters/mtr_1"}}'
    )
    assert ledger.post(thin)["status"] == "recorded"
    after = ledger.entitlements(at=T + 10)
    assert {**after, "position": 0} == {**before, "position": 0}
    rebuild_equals_live(ledger)


def test_s56_a_truncated_summary_is_trusted_only_once_observed(ledger: Ledger) -> None:
    ten = [f"feat_{i}" for i in range(9)] + ["pro"]
    fourteen = [*ten, "core", "export", "feat_x", "feat_y"]
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_2", T),
        summary_event("evt_sum", T + 100, *ten, has_more=True),
    )
    assert ledger.features(at=T + 100) == PRO
    ledger.record(observation(summary(*fourteen), id="obs_1", observed_at=T + 101))
    assert ledger.features(at=T + 101) == sorted(fourteen)
    rebuild_equals_live(ledger)


def test_s57_invoice_upcoming_is_not_an_invoice(ledger: Ledger) -> None:
    ledger.deliver(*s1_events())
    preview = invoice_event("upcoming", "evt_up", T + M - 3 * DAY, billing_reason="upcoming")
    del preview["data"]["object"]["id"]
    ledger.deliver(preview)
    assert [i["id"] for i in ledger.invoices(at=T + M)] == ["in_1"]
    rebuild_equals_live(ledger)


def test_s59a_pause_endpoint_withholds_then_restores(ledger: Ledger) -> None:
    pause, back = T + 5 * DAY, T + 9 * DAY
    paused = {"status": "paused", "paused_type": "pause_requested"}
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event("paused", "evt_p", pause, **paused),
        sub_event("updated", "evt_pu", pause, {"status": "active"}, **paused),
        sub_event("resumed", "evt_r", back),
        sub_event("updated", "evt_ru", back, {"status": "paused"}),
    )
    assert ledger.features(at=pause) == CORE
    assert ledger.features(at=back) == PRO
    rebuild_equals_live(ledger)


def test_s59b_paused_on_first_payment_failure(ledger: Ledger) -> None:
    failing = {"id": "in_8", "status": "open", "attempt_count": 1}
    ledger.deliver(
        checkout(),
        invoice_event("payment_failed", "evt_f", T, **failing),
        sub_event("updated", "evt_p", T + 60, {"status": "incomplete"}, status="paused", paused_type="first_payment_failure"),
    )  # fmt: skip
    assert status_of(ledger, "sub_1", T + 60) == "paused"
    assert ledger.features(at=T + 60) == CORE
    assert ledger.invoice("in_8", at=T + 60)["status"] == "open"
    rebuild_equals_live(ledger)


def test_s61_a_projection_error_still_acknowledges_the_event(ledger: Ledger) -> None:
    broken = orjson.dumps(
        {"id": "evt_broken", "object": "event", "type": "invoice.created", "created": T,
         "livemode": False, "data": {"object": "in_1"}}
    )  # fmt: skip
    assert ledger.post(broken)["status"] == "recorded"
    assert ledger.post(orjson.dumps(checkout()))["status"] == "recorded"  # ingestion goes on
    assert ledger.features() == CORE  # the projection went past it (no grant yet)
    billing = ledger.client.get("/healthz").json()["projections"]["billing"]
    assert billing["error"] is None
    assert [s["event_id"] for s in billing["skipped"]] == ["evt_broken"]


def test_s62_dispute_driven_cancellation(ledger: Ledger) -> None:
    ledger.deliver(
        checkout(),
        sub_event("created", "evt_2", T),
        sub_event("deleted", "evt_d", T + DAY, status="canceled", ended_at=T + DAY, reason="payment_disputed"),
    )  # fmt: skip
    assert status_of(ledger, "sub_1", T + DAY) == "canceled"
    assert ledger.features(at=T + DAY) == CORE
    rebuild_equals_live(ledger)
