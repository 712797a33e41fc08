"""`billing-ledger reconcile` against localstripe, on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from billing_ledger.bootstrap import build
from billing_ledger.commands.replay import cmd_backfill, cmd_reconcile, cmd_replay
from billing_ledger.ledger.own_events import OBSERVATION
from billing_ledger.replay.impact import features
from billing_ledger.replay.rebuild import catch_up
from billing_ledger.settings import Settings
from tests.support.databases import open_store
from tests.support.http_stub import serving_get
from tests.support.localstripe import API_KEY, flush
from tests.support.stripe_world import StripeWorld
from tests.unit.builders import active_entitlement


def settings(database_url: str, api_base: str) -> Settings:
    return Settings(database_url=database_url, stripe_api_key=API_KEY, stripe_api_base=api_base)


def backfill(config: Settings) -> None:
    assert cmd_backfill(argparse.Namespace(since=None, types=None), config, lambda _: None) == 0


def reconcile(config: Settings) -> list[str]:
    lines: list[str] = []
    assert cmd_reconcile(argparse.Namespace(), config, lines.append) == 0
    return lines


def features_now(config: Settings, user_id: str = "u_1") -> tuple[str, ...]:
    deps = build(config, run_projections=False)
    try:
        catch_up(deps.store, deps.views, livemode=False)
        return features(deps.views, deps.plans, user_id, int(time.time()))
    finally:
        deps.close()


@pytest.fixture
def world(localstripe_url: str) -> StripeWorld:
    flush(localstripe_url)
    world = StripeWorld(localstripe_url)
    world.plan("prod_pro", "price_pro")
    return world


def test_a_cancellation_whose_event_never_arrived_is_corrected_by_reconcile(
    database_url: str, world: StripeWorld
) -> None:
    config = settings(database_url, world.url)
    sub = world.subscribe(world.customer("u_1"), "price_pro")
    backfill(config)  # everything up to here reached the ledger
    assert features_now(config) == ("core", "pro")
    world.cancel(sub)  # customer.subscription.deleted: never delivered
    lines = reconcile(config)
    assert features_now(config) == ("core",)
    assert lines[0].startswith(
        "reconcile: observed 1 customers, 1 prices, 1 products, 1 subscriptions; 1 differ"
    )
    drift = next(line for line in lines if sub in line)
    assert "status active -> canceled" in drift and "ended_at null -> " in drift
    assert "  u_1: core, pro -> core (-pro)" in lines
    assert "note: active entitlements: not offered by this API (skipped)" in lines


def test_observations_are_our_own_events_with_the_object_as_stripe_rendered_it(
    database_url: str, world: StripeWorld
) -> None:
    config = settings(database_url, world.url)
    sub = world.subscribe(world.customer("u_1"), "price_pro")
    world.cancel(sub)
    reconcile(config)
    store = open_store(database_url)
    observed = [e for e in store.read(0, 1000) if e.type == OBSERVATION]
    bodies = {e.payload()["data"]["object"]["id"]: e.payload() for e in observed}
    body = bodies[sub]
    assert body["id"].startswith("lgr_obs_") and body["source"] == "reconcile"
    assert body["created"] == body["observed_at"] and body["livemode"] is False
    assert body["api_version"] == "2026-10-28.endive"
    assert body["data"]["object"]["status"] == "canceled"
    assert all(e.source == "ledger" for e in observed)


def test_a_second_reconcile_finds_nothing_to_record(database_url: str, world: StripeWorld) -> None:
    config = settings(database_url, world.url)
    world.subscribe(world.customer("u_1"), "price_pro")
    reconcile(config)
    head = open_store(database_url).head()
    lines = reconcile(config)
    assert "0 differ; recorded 0 observations" in lines[0]
    assert open_store(database_url).head() == head


def test_objects_the_ledger_never_saw_are_recorded_and_grant(
    database_url: str, world: StripeWorld
) -> None:
    config = settings(database_url, world.url)
    sub = world.subscribe(world.customer("u_1"), "price_pro")
    lines = reconcile(config)  # no event ever reached the ledger
    assert f"  {sub} (subscription): unknown to the ledger" in lines
    assert features_now(config) == ("core", "pro")


def test_reconcile_without_an_api_key_exits_non_zero_in_one_line(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = Settings(database_url=database_url)
    assert cmd_reconcile(argparse.Namespace(), config) == 2
    assert capsys.readouterr().err == (
        "billing-ledger reconcile: not_configured: STRIPE_API_KEY is not set\n"
    )


def test_a_replay_after_reconcile_reads_the_observations_and_calls_no_api(
    database_url: str, world: StripeWorld
) -> None:
    config = settings(database_url, world.url)
    sub = world.subscribe(world.customer("u_1"), "price_pro")
    backfill(config)
    world.cancel(sub)
    reconcile(config)
    offline = replace(config, stripe_api_key=None, stripe_api_base="http://127.0.0.1:1")
    lines: list[str] = []
    assert (
        cmd_replay(argparse.Namespace(projection=None, dry_run=False), offline, lines.append) == 0
    )
    assert "  billing_snapshots: 0 added, 0 changed, 0 removed" in lines
    assert features_now(offline) == ("core",)


@contextmanager
def with_entitlements(upstream: str, lookup_keys: list[str]) -> Iterator[str]:
    """localstripe behind a proxy that also answers the active entitlements list."""

    def answer(path: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
        if not path.startswith("/v1/entitlements/active_entitlements"):
            auth = {"Authorization": headers["Authorization"]}
            found = httpx.get(upstream + path, headers=auth)
            return found.status_code, found.content
        customer = parse_qs(urlsplit(path).query)["customer"][0]
        return 200, orjson.dumps(
            {
                "object": "list",
                "has_more": False,
                "data": [active_entitlement(k) for k in lookup_keys],
                "url": f"/v1/entitlements/active_entitlements?customer={customer}",
            }
        )

    with serving_get(answer) as url:
        yield url


def test_where_the_api_lists_active_entitlements_they_are_observed_per_linked_customer(
    database_url: str, world: StripeWorld
) -> None:
    customer = world.customer("u_1")
    world.subscribe(customer, "price_pro")
    with with_entitlements(world.url, ["pro"]) as proxy:
        lines = reconcile(settings(database_url, proxy))
    assert "1 entitlement summaries" in lines[0]
    assert f"  {customer} (entitlement_summary): unknown to the ledger" in lines
    assert not any(line.startswith("note: active entitlements") for line in lines)
    assert features_now(settings(database_url, world.url)) == ("core", "pro")


def test_an_empty_entitlements_list_is_not_recorded_where_the_ledger_has_no_summary(
    database_url: str, world: StripeWorld
) -> None:
    world.subscribe(world.customer("u_1"), "price_pro")
    with with_entitlements(world.url, []) as proxy:
        lines = reconcile(settings(database_url, proxy))
    assert "entitlement summaries" not in lines[0]
    assert features_now(settings(database_url, world.url)) == ("core", "pro")
