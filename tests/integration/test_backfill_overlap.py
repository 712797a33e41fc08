"""S6 and S7 with localstripe: backfill fills a webhook outage exactly, on both databases."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from billing_ledger.commands.replay import cmd_backfill
from billing_ledger.ledger.canonical import Subscription
from billing_ledger.ledger.normalise import normalise
from billing_ledger.projections.views import ViewRows
from billing_ledger.settings import Settings
from tests.support.app import client_for, settings_for
from tests.support.databases import postgres_url, sqlite_url
from tests.support.ledger import Ledger
from tests.support.localstripe import API_KEY, flush, list_events
from tests.support.signing import sign
from tests.support.stripe_world import StripeWorld

Json = dict[str, Any]
ENDIVE = "2026-10-28.endive"


@pytest.fixture
def world(localstripe_url: str) -> StripeWorld:
    flush(localstripe_url)
    world = StripeWorld(localstripe_url)
    world.plan("prod_pro", "price_pro")
    return world


@pytest.fixture
def baseline_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second database of the same kind, for the run whose webhook never went down."""
    if database_url.startswith("sqlite"):
        yield sqlite_url(tmp_path / "baseline")
    else:
        yield from postgres_url()


def webhook_body(event: Json) -> bytes:
    """The bytes localstripe's webhook sends (indented, sorted keys): not the API's."""
    return json.dumps(event, indent=2, sort_keys=True).encode()


def config(database_url: str, api_base: str) -> Settings:
    return settings_for(database_url, stripe_api_key=API_KEY, stripe_api_base=api_base)


def backfill(settings: Settings, since: int) -> str:
    lines: list[str] = []
    args = argparse.Namespace(since=str(since), types=None)
    assert cmd_backfill(args, settings, lines.append) == 0
    return lines[-1]


def settled(ledger: Ledger) -> ViewRows:
    """The view rows once the projections applied everything stored."""
    ledger.last = ledger.deps.store.head()
    ledger.features()
    rows: ViewRows = ledger.deps.views.rows()
    return rows


def reads(ledger: Ledger, users: list[str], at: int) -> list[Json]:
    return [{k: v for k, v in ledger.entitlements(u, at).items() if k != "position"} for u in users]


def test_s6_backfill_fills_the_outage_and_the_late_retries_are_duplicates(
    database_url: str, baseline_url: str, world: StripeWorld
) -> None:
    for user in ("u_a", "u_b"):
        world.subscribe(world.customer(user), "price_pro")
    delivered = list_events(world.url)
    subs = [world.subscribe(world.customer(f"u_{n}"), "price_pro") for n in range(6)]
    world.cancel(subs[0])
    world.cancel(subs[1])
    for n in (2, 3):  # two customers edited in the dashboard meanwhile
        customer = world.client.v1.subscriptions.retrieve(subs[n]).customer
        world.client.v1.customers.update(str(customer), {"metadata": {"plan_note": "vip"}})
    everything = list_events(world.url)
    known = {str(e["id"]) for e in delivered}
    missed = [e for e in everything if str(e["id"]) not in known]
    assert len(missed) == 40
    users = ["u_a", "u_b", *(f"u_{n}" for n in range(6))]

    settings = config(database_url, world.url)
    with client_for(settings) as (client, deps):
        ledger = Ledger(client, deps)
        for event in delivered:
            ledger.post(webhook_body(event))
        since = min(int(e["created"]) for e in missed) - 3600
        summary = backfill(settings, since)
        assert f"fetched {len(everything)}, recorded 40, duplicates {len(delivered)}" in summary
        retries = [ledger.post(webhook_body(e), sign(webhook_body(e))) for e in missed]
        assert {r["status"] for r in retries} == {"duplicate"}
        assert all(len(deps.store.versions(str(e["id"]))) == 1 for e in missed)
        at = int(time.time())
        rows, answers = settled(ledger), reads(ledger, users, at)

    with client_for(config(baseline_url, world.url)) as (client, deps):
        uninterrupted = Ledger(client, deps)
        for event in everything:
            uninterrupted.post(webhook_body(event))
        assert settled(uninterrupted) == rows
        assert reads(uninterrupted, users, at) == answers
    assert [a["features"] for a in answers] == [["core", "pro"]] * 2 + [["core"]] * 2 + [
        ["core", "pro"]
    ] * 4


def endive(event: Json) -> Json:
    """localstripe's 2017 subscription event as an endive endpoint would render it."""
    sub = dict(event["data"]["object"])
    period = {k: sub.pop(k) for k in ("current_period_start", "current_period_end")}
    plan = sub.pop("plan")
    sub.pop("quantity", None)
    price = {"id": plan["id"], "object": "price", "product": plan["product"], "lookup_key": None}
    items = [
        {**{k: v for k, v in item.items() if k != "plan"}, **period, "price": price}
        for item in sub["items"]["data"]
    ]
    sub["items"] = {**sub["items"], "data": items}
    return {**event, "api_version": ENDIVE, "data": {"object": sub}}


def test_s7_a_known_id_in_another_rendering_is_kept_as_an_alternate_and_changes_nothing(
    database_url: str, world: StripeWorld
) -> None:
    world.subscribe(world.customer("u_1"), "price_pro")
    events = list_events(world.url)
    created = next(e for e in events if e["type"] == "customer.subscription.created")
    settings = config(database_url, world.url)
    with client_for(settings) as (client, deps):
        ledger = Ledger(client, deps)
        for event in events:
            ledger.post(orjson.dumps(endive(event) if event is created else event))
        before, features = settled(ledger), ledger.features()
        summary = backfill(settings, int(created["created"]) - 3600)
        assert f"recorded 0, duplicates {len(events) - 1}, alternates 1" in summary
        first, alternate = deps.store.versions(str(created["id"]))
        assert (first.api_version, alternate.api_version) == (ENDIVE, "2017-08-15")
        assert (first.source, alternate.source) == ("webhook", "backfill")
        assert settled(ledger) == before and ledger.features() == features == ["core", "pro"]
    states = [normalise(version) for version in (first, alternate)]
    ends = {s.state.current_period_end for s in states if s and isinstance(s.state, Subscription)}
    assert len(ends) == 1  # the upcaster reads one period end from both renderings
