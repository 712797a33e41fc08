"""Upgrading to rules 2 (issue 15): `replay --dry-run` names exactly the users it changes.

A ledger no replay of this version recorded was answered by rules 1. The dry run evaluates
every user under rules 1 on the live rows and under rules 2 on the rebuilt ones, at now,
and lists those whose answer differs; the swap records rules 2, so the next run lists none.
"""

from __future__ import annotations

import time

from tests.integration.test_replay import replay
from tests.support.app import client_for, settings_for
from tests.support.ledger import Ledger
from tests.unit.builders import (
    DAY,
    Json,
    active_entitlement,
    checkout_session,
    customer,
    event,
    invoice_event,
    item,
    sub_event,
    summary,
)

SUMMARY = "entitlements.active_entitlement_summary.updated"
TODAY = int(time.time()) // DAY * DAY
B = TODAY - 40 * DAY
PERIOD = (B, B + 90 * DAY)


def linked(user: str, cus: str) -> Json:
    session = checkout_session(
        id=f"cs_{cus}", customer=cus, subscription=None, client_reference_id=user
    )
    return event("checkout.session.completed", session, id=f"evt_cs_{cus}", created=B)


def sub(cus: str, sub_id: str, **fields: object) -> dict[str, object]:
    return {"id": sub_id, "customer": cus, "period": PERIOD} | fields


def affected() -> list[Json]:
    """One user per rule whose answer rules 2 change (and one for the items witness), and two
    whose answers they do not."""
    before = {"entitlements": {"data": [active_entitlement("core")]}}
    pro = summary("core", "pro", customer="cus_w")
    paused = sub("cus_p", "sub_p", status="paused")
    due = {"id": "in_f", "customer": "cus_f", "subscription": "sub_f", "created": B + DAY}
    final = sub("cus_c", "sub_c", cancel_at=TODAY - 1, period=(B, TODAY - 1))
    old_items = {"items": {"data": [item("price_basic", *PERIOD)]}}
    return [
        # 1. witness: the summary naming the other's list as before is the later.
        linked("u_witness", "cus_w"),
        sub_event("created", "evt_w0", B, **sub("cus_w", "sub_w")),
        event(SUMMARY, pro, id="evt_w1", created=B + DAY, previous=before),
        event(SUMMARY, summary("core", customer="cus_w"), id="evt_w2", created=B + DAY),
        # 2. a paused plan behind an add-on, under a summary sent before the pause.
        linked("u_paused", "cus_p"),
        sub_event("created", "evt_p0", B, **sub("cus_p", "sub_p")),
        sub_event("created", "evt_p1", B, **sub("cus_p", "sub_pa", prices=("price_addon",))),
        event(SUMMARY, summary("core", "export", "pro", customer="cus_p"), id="evt_p2", created=B),
        sub_event("updated", "evt_p3", B + 20 * DAY, {"status": "active"}, **paused),
        # 3. the latest attempt failed, the invoice was then marked uncollectible.
        linked("u_failed", "cus_f"),
        sub_event("created", "evt_f0", B, **sub("cus_f", "sub_f")),
        invoice_event("payment_failed", "evt_f1", B + DAY, status="open", attempt_count=8, **due),
        invoice_event(
            "marked_uncollectible",
            "evt_f2",
            B + 9 * DAY,
            status="uncollectible",
            attempt_count=8,
            **due,
        ),
        # 4. cancel_at passed, the deletion event not (yet) delivered: leeway still holds.
        linked("u_cancel", "cus_c"),
        sub_event("updated", "evt_c0", B + DAY, {"cancel_at": None}, **final),
        # 5. the customer's metadata moved from u_moved_from to u_moved_to.
        event(
            "customer.created",
            customer(id="cus_m", app_user_id="u_moved_from"),
            id="evt_m0",
            created=B,
        ),
        sub_event("created", "evt_m1", B, **sub("cus_m", "sub_m")),
        event(
            "customer.updated",
            customer(id="cus_m", app_user_id="u_moved_to"),
            id="evt_m2",
            created=B + 10 * DAY,
            previous={"metadata": {"app_user_id": "u_moved_from"}},
        ),
        # And the same kind of tie elsewhere: a same-second plan change named by its items.
        linked("u_plan", "cus_i"),
        sub_event("updated", "evt_ia", B + DAY, old_items, **sub("cus_i", "sub_i")),
        sub_event(
            "updated",
            "evt_iz",
            B + DAY,
            {"items": {}},
            **sub("cus_i", "sub_i", prices=("price_basic",)),
        ),
        # Untouched by the rules: a plain paying user.
        linked("u_plain", "cus_x"),
        sub_event("created", "evt_x0", B, **sub("cus_x", "sub_x")),
    ]


def named(lines: list[str]) -> set[str]:
    start = lines.index("users whose features would change now:") + 1
    return {line.split(":")[0].strip() for line in lines[start:] if line.startswith("  u_")}


def test_a_dry_run_after_the_upgrade_names_exactly_the_users_the_fixed_rules_change(
    database_url: str,
) -> None:
    config = settings_for(database_url)
    with client_for(config) as (client, deps):
        ledger = Ledger(client, deps)
        ledger.deliver(*affected())
        ledger.features("u_plain")  # waits until the projections applied everything
    lines = replay(config, dry_run=True)
    assert "rules: 1 (recorded by the last replay, or none) -> 2" in lines
    assert named(lines) == {
        "u_witness",
        "u_paused",
        "u_failed",
        "u_cancel",
        "u_moved_from",
        "u_plan",
    }
    assert (
        "  u_failed: core, pro (warnings: (none) -> payment_failed)  /admin/users/u_failed" in lines
    )
    assert "  u_moved_from: core, pro -> core (-pro)  /admin/users/u_moved_from" in lines
    swapped = replay(config)  # records rules 2
    assert named(swapped) == named(lines)
    again = replay(config, dry_run=True)
    assert "users whose features would change now: none" in again
    assert not any(line.startswith("rules: ") for line in again)
