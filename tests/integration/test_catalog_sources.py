"""The catalog filled by `backfill` and `reconcile` against localstripe, on both databases."""

from __future__ import annotations

import argparse

import pytest

from billing_ledger.bootstrap import build
from billing_ledger.commands.replay import cmd_backfill, cmd_reconcile
from billing_ledger.projections.catalog import Catalog
from billing_ledger.replay.rebuild import catch_up
from billing_ledger.settings import Settings
from tests.support.localstripe import API_KEY, flush
from tests.support.stripe_world import StripeWorld


def settings(database_url: str, api_base: str) -> Settings:
    return Settings(database_url=database_url, stripe_api_key=API_KEY, stripe_api_base=api_base)


def catalog_of(config: Settings) -> Catalog:
    deps = build(config, run_projections=False)
    try:
        catch_up(deps.store, deps.views, livemode=False)
        found: Catalog = deps.reads.catalog(deps.views.position())
        return found
    finally:
        deps.close()


@pytest.fixture
def world(localstripe_url: str) -> StripeWorld:
    flush(localstripe_url)
    world = StripeWorld(localstripe_url)
    world.plan("prod_pro", "price_pro", amount=1900)
    return world


def test_backfill_brings_the_prices_stripe_created_into_the_catalog(
    database_url: str, world: StripeWorld
) -> None:
    config = settings(database_url, world.url)
    assert cmd_backfill(argparse.Namespace(since=None, types=None), config, lambda _: None) == 0
    price = catalog_of(config).price("price_pro")
    assert price is not None
    assert (price.unit_amount, price.currency, price.interval, price.active) == (
        1900,
        "usd",
        "month",
        True,
    )
    pro = catalog_of(config).plan("pro")
    assert pro is not None and [p.id for p in pro.offered] == ["price_pro"]


def test_reconcile_records_the_products_and_prices_the_ledger_lacks(
    database_url: str, world: StripeWorld
) -> None:
    config = settings(database_url, world.url)
    lines: list[str] = []
    assert cmd_reconcile(argparse.Namespace(), config, lines.append) == 0
    found = catalog_of(config)
    assert found.products["prod_pro"].name == "prod_pro"
    price = found.price("price_pro")
    assert price is not None and price.unit_amount == 1900 and price.product == "prod_pro"
    again: list[str] = []
    assert cmd_reconcile(argparse.Namespace(), config, again.append) == 0
    assert "0 differ; recorded 0 observations" in again[0]
