"""`billing-ledger explain` on SQLite and PostgreSQL: every change named with its cause."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from billing_ledger.commands.replay import cmd_explain
from billing_ledger.replay.explain import iso
from billing_ledger.settings import Settings
from tests.support.app import client_for, settings_for
from tests.support.ledger import Ledger
from tests.unit.builders import (
    DAY,
    M,
    T,
    checkout_session,
    event,
    invoice,
    sub_event,
)

SECOND = (T + M, T + 2 * M)  # the renewed period
PAST_DUE = T + M + 3600
RECOVERED = T + M + 8 * DAY  # a day after the grace ended
SCHEDULED = T + M + 10 * DAY
ENDED = T + 2 * M
AFTER = ENDED + DAY


def demo_lifecycle(ledger: Ledger) -> None:
    """Checkout, a paid first invoice, a failed renewal, recovery, a scheduled cancellation."""
    paid = invoice(status="paid", amount_paid=2000, attempt_count=1, paid_at=T + 1)
    ledger.deliver(
        event("checkout.session.completed", checkout_session(), id="evt_checkout", created=T),
        sub_event("created", "evt_created", T),
        event("invoice.paid", paid, id="evt_paid", created=T + 1),
        sub_event(
            "updated",
            "evt_past_due",
            PAST_DUE,
            {"status": "active"},
            status="past_due",
            period=SECOND,
        ),
        sub_event("updated", "evt_recovered", RECOVERED, {"status": "past_due"}, period=SECOND),
        sub_event(
            "updated",
            "evt_scheduled",
            SCHEDULED,
            {"cancel_at_period_end": False},
            cancel_at_period_end=True,
            period=SECOND,
        ),
        sub_event(
            "deleted",
            "evt_deleted",
            ENDED,
            status="canceled",
            period=SECOND,
            canceled_at=ENDED,
            ended_at=ENDED,
        ),
    )
    ledger.features()  # waits until the projections applied everything


@pytest.fixture
def config(database_url: str) -> Iterator[Settings]:
    settings = settings_for(database_url)
    with client_for(settings) as (client, deps):
        demo_lifecycle(Ledger(client, deps))
    yield settings


def explain(
    config: Settings, user_id: str = "u_1", *, at: str | None = None, feature: str | None = None
) -> list[str]:
    lines: list[str] = []
    args = argparse.Namespace(user_id=user_id, feature=feature, at=at, json=False, csv=False)
    assert cmd_explain(args, config, lines.append) == 0
    return lines


def _entry(at: int, kind: str, detail: str, cause: str) -> str:
    return f"  {iso(at)}  {kind:<24} {detail}  {cause}"


def test_explain_names_every_change_of_a_lifecycle_and_its_cause(config: Settings) -> None:
    lines = explain(config, at=str(AFTER))
    updated = "(customer.subscription.updated)"
    assert lines[:13] == [
        f"u_1 at {iso(AFTER)}: features {{core}}",
        "timeline, oldest first (events: GET /v1/events/{id}):",
        _entry(
            T,
            "link",
            "cus_1 linked to u_1 via checkout_session",
            "event evt_checkout (checkout.session.completed)",
        ),
        _entry(
            T,
            "subscription_status",
            "sub_1 unseen -> active; {core} -> {core, pro} (+pro)",
            "event evt_created (customer.subscription.created)",
        ),
        _entry(
            T + 1, "payment_succeeded", "in_1 (20.00 USD) paid", "event evt_paid (invoice.paid)"
        ),
        _entry(
            PAST_DUE,
            "subscription_status",
            "sub_1 active -> past_due",
            f"event evt_past_due {updated}",
        ),
        _entry(
            PAST_DUE + 7 * DAY,
            "rule",
            "past_due grace ended for sub_1; {core, pro} -> {core} (-pro)",
            "rule",
        ),
        _entry(
            RECOVERED,
            "subscription_status",
            "sub_1 past_due -> active; {core} -> {core, pro} (+pro)",
            f"event evt_recovered {updated}",
        ),
        _entry(
            SCHEDULED,
            "cancellation_scheduled",
            "sub_1 cancels on 2 Mar 2026",
            f"event evt_scheduled {updated}",
        ),
        _entry(
            ENDED,
            "subscription_status",
            "sub_1 active -> canceled; {core, pro} -> {core} (-pro)",
            "event evt_deleted (customer.subscription.deleted)",
        ),
        "upcoming, if no further event arrives:",
        "  nothing: no rule changes anything",
        "customers: cus_1",
    ]
    assert lines[13:] == [
        "  sub_1 (cus_1, price_pro): canceled, grants nothing: sub_1 is canceled",
        "core: allowed: plan free (default)",
    ]


def test_explain_at_a_time_shows_the_state_then_and_the_changes_until_then(
    config: Settings,
) -> None:
    lines = explain(config, at=iso(SCHEDULED + DAY))
    assert lines[0] == f"u_1 at {iso(SCHEDULED + DAY)}: features {{core, pro}}"
    assert len([line for line in lines if "(+pro)" in line or "(-pro)" in line]) == 3
    assert "upcoming, if no further event arrives:" in lines
    assert (
        f"  {iso(ENDED + 2 * DAY)}  {'rule':<24} loses pro at the period end (with leeway), "
        "4 Mar 2026, unless the cancellation is withdrawn (sub_1)"
    ) in lines
    assert (
        f"  sub_1 (cus_1, price_pro): active, grants {{core, pro}} until {iso(ENDED + 2 * DAY)}"
        in lines
    )
    assert "warnings: cancellation_scheduled" in lines
    assert "pro: allowed: plan pro via sub_1 (active)" in lines


def test_explain_of_one_feature_keeps_its_changes_and_says_why_it_is_denied(
    config: Settings,
) -> None:
    lines = explain(config, at=str(AFTER), feature="pro")
    assert lines[1] == "timeline (pro only), oldest first (events: GET /v1/events/{id}):"
    assert lines[-1] == "pro: denied: sub_1 is canceled"
    assert len([line for line in lines if "(-pro)" in line or "(+pro)" in line]) == 4


def test_a_user_the_ledger_never_saw_gets_the_defaults_and_is_told_so(config: Settings) -> None:
    lines = explain(config, "u_stranger", feature="pro")
    assert lines[1] == (
        "the ledger has never seen u_stranger: no Stripe customer is linked to this user, "
        "so only the default plans apply (free)"
    )
    assert lines[0].endswith("features {core}") and lines[-1] == "pro: denied (default plans)"


def test_a_bad_at_exits_2_in_one_line(config: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(user_id="u_1", feature=None, at="next week")
    assert cmd_explain(args, config) == 2
    assert capsys.readouterr().err == (
        "billing-ledger explain: --at: expected ISO 8601 or Unix seconds, got 'next week'\n"
    )
