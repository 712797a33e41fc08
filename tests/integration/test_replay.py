"""`billing-ledger replay` on SQLite and PostgreSQL: rebuild beside, compare, swap."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pytest

from billing_ledger.bootstrap import build
from billing_ledger.commands.replay import cmd_replay
from billing_ledger.ledger.own_events import REPLAY
from billing_ledger.projections.views import ViewRows
from billing_ledger.replay.rebuild import SHADOW_SUFFIX
from billing_ledger.settings import Settings
from tests.support.app import client_for, settings_for
from tests.support.databases import open_store
from tests.support.ledger import Ledger, reads_of
from tests.unit.builders import (
    DAY,
    EXAMPLE_PLANS,
    checkout_session,
    event,
    invoice,
    sub_event,
)

USERS = ("u_1", "u_2", "u_3")
# Forty days ago, so that "now" (when replay evaluates users) falls inside the periods.
B = int(time.time()) // DAY * DAY - 40 * DAY
PERIOD = (B, B + 90 * DAY)
TIMES = (B - 1, B + DAY, B + 35 * DAY, B + 40 * DAY)


def lifecycle(ledger: Ledger) -> None:
    """Three users: one paying, one past_due then recovered, one canceled."""
    for n, user in enumerate(USERS, 1):
        cus, sub = f"cus_{n}", f"sub_{n}"
        session = checkout_session(
            id=f"cs_{n}", customer=cus, subscription=sub, client_reference_id=user
        )
        paid = invoice(
            id=f"in_{n}",
            customer=cus,
            subscription=sub,
            status="paid",
            amount_paid=2000,
            attempt_count=1,
            paid_at=B + 1,
        )
        ledger.deliver(
            event("checkout.session.completed", session, id=f"evt_cs_{n}", created=B),
            sub_event("created", f"evt_sub_{n}", B, id=sub, customer=cus, period=PERIOD),
            event("invoice.paid", paid, id=f"evt_in_{n}", created=B + 1),
        )
    two = {"id": "sub_2", "customer": "cus_2", "period": PERIOD}
    ended = B + 5 * DAY
    ledger.deliver(
        sub_event(
            "updated", "evt_pd_2", B + 30 * DAY, {"status": "active"}, status="past_due", **two
        ),
        sub_event("updated", "evt_ok_2", B + 33 * DAY, {"status": "past_due"}, **two),
        sub_event(
            "deleted",
            "evt_del_3",
            ended,
            id="sub_3",
            customer="cus_3",
            period=PERIOD,
            status="canceled",
            canceled_at=ended,
            ended_at=ended,
        ),
    )
    ledger.features("u_1")  # waits until the projections applied everything


def replay(config: Settings, *, dry_run: bool = False, projection: str | None = None) -> list[str]:
    lines: list[str] = []
    args = argparse.Namespace(projection=projection, dry_run=dry_run)
    assert cmd_replay(args, config, lines.append) == 0
    return lines


def live_rows(config: Settings) -> tuple[ViewRows, int, int]:
    """The live rows, the tracked position and the store's head."""
    deps = build(config, run_projections=False)
    try:
        return deps.views.rows(), deps.views.position(), deps.store.head()
    finally:
        deps.close()


def test_dropping_the_projection_tables_and_replaying_gives_identical_rows_and_reads(
    database_url: str,
) -> None:
    config = settings_for(database_url)
    with client_for(config) as (client, deps):
        ledger = Ledger(client, deps)
        lifecycle(ledger)
        before_rows = deps.views.rows()
        before_reads = reads_of(ledger, USERS, TIMES)
    deps = build(config, run_projections=False)
    deps.views.drop()  # every table of the projection, tracking included
    deps.close()
    lines = replay(config)
    rows, position, head = live_rows(config)
    assert rows == before_rows
    assert position == head  # the tracked position is the rebuilt head, set in the swap
    assert f"  billing_snapshots: {len(rows.snapshots)} added, 0 changed, 0 removed" in lines
    assert f"  billing_links: {len(rows.links)} added, 0 changed, 0 removed" in lines
    assert lines[-1] == f"swapped: the live tables now hold the rebuild (position {head})"
    with client_for(config) as (client, deps):
        ledger = Ledger(client, deps)
        ledger.last = head
        after_reads = reads_of(ledger, USERS, TIMES)
    strip = [{k: v for k, v in r.items() if k != "position"} for r in after_reads]
    assert strip == [{k: v for k, v in r.items() if k != "position"} for r in before_reads]


def test_a_replay_of_an_unchanged_ledger_reports_no_difference_and_records_itself(
    database_url: str,
) -> None:
    config = settings_for(database_url)
    with client_for(config) as (client, deps):
        lifecycle(Ledger(client, deps))
    before, _, _ = live_rows(config)
    lines = replay(config)
    assert "  billing_snapshots: 0 added, 0 changed, 0 removed" in lines
    assert "  billing_links: 0 added, 0 changed, 0 removed" in lines
    assert "users whose features would change now: none" in lines
    assert live_rows(config)[0] == before
    replays = [e for e in open_store(database_url).read(0, 1000) if e.type == REPLAY]
    assert len(replays) == 1 and replays[0].source == "ledger"


def test_a_dry_run_reports_a_damaged_projection_and_leaves_it_as_it_is(database_url: str) -> None:
    config = settings_for(database_url)
    with client_for(config) as (client, deps):
        lifecycle(Ledger(client, deps))
        with deps.views.db.transaction() as cursor:  # lose one event's rows: a projection bug
            cursor.execute(f"DELETE FROM {deps.views.snapshots} WHERE event_id = 'evt_del_3'")
    damaged, _, head = live_rows(config)
    lines = replay(config, dry_run=True)
    assert "  billing_snapshots: 1 added, 0 changed, 0 removed" in lines
    assert lines[-1] == "dry run: nothing swapped"
    assert live_rows(config)[0] == damaged and open_store(database_url).head() == head
    assert not shadow_exists(config)  # the shadow never outlives the run


def shadow_exists(config: Settings) -> bool:
    """Whether replay's shadow snapshot table is still in the database."""
    deps = build(config, run_projections=False)
    shadow = deps.views.shadow(SHADOW_SUFFIX)
    name = shadow.names["billing_snapshots"]
    sqlite = deps.views.db.dialect == "sqlite"
    query = (
        "SELECT name FROM sqlite_master WHERE name = ?"
        if sqlite
        else "SELECT table_name FROM information_schema.tables "
        "WHERE table_name = %s AND table_schema = current_schema()"
    )
    try:
        with deps.views.db.transaction(commit=False) as cursor:
            if not sqlite:
                cursor.execute(f'SET LOCAL search_path TO "{deps.views.db.url.schema}"')
            cursor.execute(query, (name,))
            return bool(cursor.fetchall())
    finally:
        deps.close()


def test_a_damaged_projection_is_repaired_and_the_user_regains_what_they_lost(
    database_url: str,
) -> None:
    config = settings_for(database_url)
    with client_for(config) as (client, deps):
        lifecycle(Ledger(client, deps))
        expected = deps.views.rows()
        with deps.views.db.transaction() as cursor:
            cursor.execute(f"DELETE FROM {deps.views.snapshots} WHERE event_id = 'evt_ok_2'")
    lines = replay(config)
    assert "users whose features would change now:" in lines
    assert "  u_2: core -> core, pro (+pro)  /admin/users/u_2" in lines
    assert live_rows(config)[0] == expected


def test_a_dry_run_with_a_new_plans_file_names_whose_features_would_change(
    database_url: str, tmp_path: Path
) -> None:
    config = settings_for(database_url)
    with client_for(config) as (client, deps):
        lifecycle(Ledger(client, deps))
    replay(config)  # records the plans in force
    richer = tmp_path / "plans.toml"
    richer.write_text(
        EXAMPLE_PLANS.read_text().replace(
            'features = ["core", "pro"]', 'features = ["core", "pro", "beta"]'
        )
    )
    lines = replay(replace(config, plans_path=richer), dry_run=True)
    assert any(line.startswith("plans: ") and "(LEDGER_PLANS)" in line for line in lines)
    changed = lines[lines.index("users whose features would change now:") + 1 :][:-1]
    assert changed == [
        "  u_1: core, pro -> beta, core, pro (+beta)  /admin/users/u_1",
        "  u_2: core, pro -> beta, core, pro (+beta)  /admin/users/u_2",
    ]


def test_an_unknown_projection_exits_2_in_one_line(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = settings_for(database_url)
    args = argparse.Namespace(projection="nope", dry_run=False)
    assert cmd_replay(args, config) == 2
    assert capsys.readouterr().err == (
        "billing-ledger replay: unknown projection 'nope' (known: billing)\n"
    )
