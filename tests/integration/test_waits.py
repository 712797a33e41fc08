"""Waits and outages: reads waiting for a position hold no worker thread, and /healthz answers
whatever the database does (issue 16, item 6)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from billing_ledger.bootstrap import build
from billing_ledger.http import reads
from billing_ledger.http.app import create_app
from tests.support.app import settings_for
from tests.support.ledger import Ledger
from tests.support.pgcluster import cluster
from tests.unit.builders import DAY, T, checkout_session, event, subscription

WAITERS = 60
FAR = 10**17  # a position no test reaches


class Counting:
    """Counts the HTTP requests that reached the app (so a test knows they are pending)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.entered += 1
        await self.app(scope, receive, send)


def wait_until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def counted(database_url: str) -> Iterator[tuple[TestClient, Counting, Ledger]]:
    deps = build(settings_for(database_url))
    app = Counting(create_app(deps))
    with TestClient(app) as client:
        yield client, app, Ledger(client, deps)


def subscribe(ledger: Ledger) -> None:
    ledger.deliver(
        event("checkout.session.completed", checkout_session(), id="evt_1", created=T),
        event("customer.subscription.created", subscription(), id="evt_2", created=T),
    )


def far_read(client: TestClient) -> httpx.Response:
    return client.get("/v1/users/u_2/entitlements", params={"min_position": FAR})


def test_sixty_reads_waiting_for_a_far_position_delay_neither_healthz_nor_another_read(
    counted: tuple[TestClient, Counting, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app, ledger = counted
    monkeypatch.setattr(reads, "MIN_POSITION_WAIT", 3.0)
    subscribe(ledger)
    ledger.features()  # caught up: the reads below need no wait
    before = app.entered
    with ThreadPoolExecutor(WAITERS) as pool:
        waits: list[Future[httpx.Response]] = [
            pool.submit(far_read, client) for _ in range(WAITERS)
        ]
        wait_until(lambda: app.entered >= before + WAITERS)
        health = client.get("/healthz")
        other = client.get("/v1/users/u_1/entitlements", params={"at": T + 10 * DAY})
        pending = [w for w in waits if not w.done()]
        answers = [w.result() for w in waits]
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert other.status_code == 200 and other.json()["features"] == ["core", "pro"]
    assert len(pending) == WAITERS  # both answered while every wait was still pending
    assert {(a.status_code, a.json()["error"]) for a in answers} == {(503, "not_caught_up")}
    metrics = client.get("/metrics").text
    assert 'ledger_read_cache_entries{cache="present"}' in metrics
    assert "ledger_reads_waiting 0.0" in metrics


@pytest.mark.postgres
def test_healthz_answers_degraded_while_postgresql_is_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reads, "MIN_POSITION_WAIT", 5.0)
    with cluster() as pg:
        deps = build(settings_for(f"{pg.url}?schema=ledger"))
        app = Counting(create_app(deps))
        with TestClient(app) as client:
            ledger = Ledger(client, deps)
            subscribe(ledger)
            assert client.get("/healthz").json()["status"] == "ok"
            pg.stop()
            try:
                with ThreadPoolExecutor(1) as pool:
                    before = app.entered
                    waiting = pool.submit(far_read, client)
                    wait_until(lambda: app.entered > before)
                    health = client.get("/healthz")
                    still_waiting = not waiting.done()
                    waited = waiting.result()
                metrics_status = client.get("/metrics").status_code
            finally:
                pg.start()  # so that the app's shutdown finds its database again
    assert still_waiting  # /healthz answered before the wait's own timeout
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "degraded" and body["error"]
    assert set(body) >= {"status", "head", "projections"}
    assert waited.status_code == 503
    assert metrics_status == 200
