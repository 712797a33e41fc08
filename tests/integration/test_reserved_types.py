"""The ledger's own event types (`ledger.*`) are refused from outside, on SQLite and PostgreSQL:
a signed webhook carrying one stores nothing, and backfill skips one the Events API lists."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing_ledger.ledger.own_events import (
    BACKFILL_CURSOR,
    BACKFILL_GAP,
    CUSTOMER_LINK,
    OBSERVATION,
    REPLAY,
)
from billing_ledger.replay.backfill import Backfill
from tests.support.app import client_for, settings_for
from tests.support.databases import open_store
from tests.support.http_stub import serving_get
from tests.support.localstripe import stripe_client
from tests.support.signing import event_body, sign

Json = dict[str, Any]
OWN_TYPES = [CUSTOMER_LINK, OBSERVATION, BACKFILL_CURSOR, BACKFILL_GAP, REPLAY, "ledger.new_kind"]
T = 1767225600


def rejections(metrics_text: str, reason: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == "ledger_webhook_rejections_total" and s.labels == {"reason": reason}:
                return float(s.value)
    return 0.0


@pytest.mark.parametrize("event_type", OWN_TYPES)
def test_a_signed_webhook_of_a_reserved_type_is_refused_and_stores_nothing(
    database_url: str, event_type: str
) -> None:
    link = {"object": CUSTOMER_LINK, "user_id": "u_victim", "customer": "cus_attacker"}
    body = event_body("evt_forged_own", event_type, obj=link)
    with client_for(settings_for(database_url)) as (client, deps):
        response = client.post(
            "/webhooks/stripe", content=body, headers={"stripe-signature": sign(body)}
        )
        assert response.status_code == 400
        answer = response.json()
        assert answer["error"] == "malformed_event"
        assert "reserved" in answer["message"] and event_type in answer["message"]
        assert deps.store.read(0, 10_000) == [] and deps.store.head() == 0
        assert rejections(client.get("/metrics").text, "malformed_event") == 1


def test_a_type_that_only_looks_like_ours_is_still_a_stripe_event(database_url: str) -> None:
    body = event_body("evt_lookalike", "ledgers.something_new")
    with client_for(settings_for(database_url)) as (client, deps):
        response = client.post(
            "/webhooks/stripe", content=body, headers={"stripe-signature": sign(body)}
        )
        assert response.status_code == 200 and response.json()["status"] == "recorded"
        assert [e.event_id for e in deps.store.read(0)] == ["evt_lookalike"]


def events_api(events: list[Json]) -> AbstractContextManager[str]:
    """A Stripe Events API that lists `events` on one page (and refuses nothing)."""
    page = orjson.dumps({"object": "list", "url": "/v1/events", "has_more": False, "data": events})
    return serving_get(lambda path, headers: (200, page))


def test_backfill_skips_and_counts_reserved_types_the_events_api_lists(database_url: str) -> None:
    listed = [orjson.loads(event_body("evt_real", created=T))] + [
        orjson.loads(event_body(f"evt_own_{i}", event_type, created=T + 1 + i))
        for i, event_type in enumerate(OWN_TYPES)
    ]
    store = open_store(database_url)
    try:
        with events_api(listed) as url:
            report = Backfill(store, stripe_client(url), livemode=False, clock=lambda: T + 60).run(
                T - 60, None
            )
        assert report.fetched == len(listed)
        assert report.recorded == 1 and report.skipped == len(OWN_TYPES)
        stored = [e for e in store.read(0, 10_000) if e.source == "backfill"]
        assert [e.event_id for e in stored] == ["evt_real"]
        assert all(store.get(f"evt_own_{i}") is None for i in range(len(OWN_TYPES)))
    finally:
        store.db.close()
