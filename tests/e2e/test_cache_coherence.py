"""With `serve`'s defaults (the runner in a process of its own), the HTTP process hears each
committed batch and keeps the users it did not touch cached: /metrics shows the present
cache's hits rising at new positions (projections/announce.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_swap import NOW, subscribe
from tests.support.databases import postgres_url
from tests.support.server import running
from tests.support.signing import SECRET

pytestmark = pytest.mark.e2e

USERS = range(1, 21)


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_url()


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.02)


def present_hits(client: httpx.Client) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "ledger_read_cache_hits" and sample.labels.get("cache") == "present"
    )


def read_at(client: httpx.Client, n: int) -> int:
    """User n's entitlements at now (no min_position: the cache's path); the position."""
    response = client.get(f"/v1/users/u_{n}/entitlements", params={"at": NOW})
    assert response.status_code == 200, response.text
    position: int = response.json()["position"]
    return position


def test_users_no_batch_touched_stay_cached_in_the_http_process(pg_url: str) -> None:
    env = {"LEDGER_DATABASE_URL": pg_url, "STRIPE_WEBHOOK_SECRET": SECRET}
    with running(env) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        first = max(subscribe(client, n) for n in USERS)
        wait_until(lambda: read_at(client, 1) >= first, "the first users are applied")
        for n in USERS:
            read_at(client, n)  # cached at the position now
        later = subscribe(client, 99)  # another user's customer: touches none of them
        wait_until(lambda: read_at(client, 99) >= later, "the new batch is read")
        # Each user once, at the new position: a read before the HTTP process heard of the
        # batch misses (and caches that user anew, so none is read twice); once it has,
        # every read is a hit. Without the notifications, none would be.
        hit = []
        for n in USERS:
            before = present_hits(client)
            assert read_at(client, n) == later
            hit.append(present_hits(client) > before)
        assert any(hit), "no untouched user stayed cached across the batch"
        assert all(hit[hit.index(True) :]), hit
