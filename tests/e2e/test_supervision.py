"""`serve` runs the projection runner in a supervised process: killed, it comes back, and
nothing is applied twice or lost."""

from __future__ import annotations

import itertools
import os
import re
import signal
import time

import httpx
import orjson
import pytest

from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views
from tests.support.databases import open_store
from tests.support.ledger import incoming
from tests.support.server import Server
from tests.support.signing import SECRET, sign
from tests.unit.builders import T, event, subscription

pytestmark = pytest.mark.e2e
PRELOADED = 20_000
APPLIED = re.compile(r"outcome=applied events=(\d+) after=(\d+) position=(\d+)")
STARTED = re.compile(r"projection runner (?:started|restarted) \(pid (\d+)\)")


def envelope(n: int) -> dict[str, object]:
    sub = subscription(
        id=f"sub_{n}", customer=f"cus_{n}", app_user_id=f"u_{n}", period=(T, T + 40 * 365 * 86400)
    )
    return event("customer.subscription.created", sub, id=f"evt_s_{n}", created=T + n)


def preload(url: str) -> None:
    store = open_store(url)
    try:
        for start in range(0, PRELOADED, 1000):
            store.append([incoming(envelope(n)) for n in range(start, start + 1000)])
    finally:
        store.db.close()


def wait_for(check: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def runner_pids(server: Server) -> list[int]:
    return [int(pid) for pid in STARTED.findall(server.output())]


def health(server: Server) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{server.url}/healthz", timeout=5).json()
    return body


def position(server: Server) -> int:
    projections = health(server)["projections"]
    return int(projections["billing"]["position"])  # type: ignore[index]


def test_the_runner_process_killed_under_serve_is_restarted_and_applies_each_event_once(
    database_url: str,
) -> None:
    preload(database_url)
    env = {"LEDGER_DATABASE_URL": database_url, "STRIPE_WEBHOOK_SECRET": SECRET}
    server = Server(env, workers=2).start()
    try:
        wait_for(lambda: runner_pids(server) and position(server) > 0)
        (first,) = runner_pids(server)
        os.kill(first, signal.SIGKILL)  # mid catch-up: a batch may be half written
        killed_at = position(server)
        assert killed_at < PRELOADED
        wait_for(lambda: len(runner_pids(server)) == 2)
        body = orjson.dumps(envelope(PRELOADED))  # and one more, through the webhook
        response = httpx.post(
            f"{server.url}/webhooks/stripe", content=body, headers={"stripe-signature": sign(body)}
        )
        assert response.status_code == 200
        head = response.json()["position"]
        # The restarted runner catches up the rest of the 20,000 first (longer than one
        # read's 5 s wait on a loaded machine): wait for it, then read as an app would.
        wait_for(lambda: position(server) >= head)
        read = httpx.get(
            f"{server.url}/v1/users/u_{PRELOADED}/entitlements",
            params={"min_position": head},
            timeout=10,
        )
        assert read.status_code == 200 and read.json()["features"] == ["core", "pro"]
        wait_for(lambda: position(server) == head)
        assert health(server)["status"] == "ok"
        assert runner_pids(server)[1] != first
    finally:
        server.stop()
    # Every batch either committed whole or not at all, and none twice: the logged batches
    # never overlap and tile (0, head], but for one gap at most: a batch the killed runner
    # committed in the instant before it could log it (the rows below show it applied once).
    batches = sorted((int(a), int(p)) for _, a, p in APPLIED.findall(server.output()))
    assert batches[0][0] == 0 and batches[-1][1] == head
    pairs = list(itertools.pairwise(batches))
    assert all(prev[1] <= nxt[0] for prev, nxt in pairs), batches
    assert sum(prev[1] != nxt[0] for prev, nxt in pairs) <= 1, batches
    store = open_store(database_url)
    try:
        live = Views(store.db)
        fresh = live.shadow("_check")
        fresh.create()
        Runner(store, fresh, livemode=False).catch_up()
        assert fresh.rows() == live.rows()
        assert len(live.rows().snapshots) == PRELOADED + 1
    finally:
        store.db.close()


def post(server: Server, body: bytes) -> None:
    response = httpx.post(
        f"{server.url}/webhooks/stripe", content=body, headers={"stripe-signature": sign(body)}
    )
    assert response.status_code == 200, response.text  # acknowledged all the same


def test_healthz_of_an_http_process_lists_what_the_runner_process_skipped(
    database_url: str,
) -> None:
    env = {"LEDGER_DATABASE_URL": database_url, "STRIPE_WEBHOOK_SECRET": SECRET}
    poison = orjson.dumps(
        {
            "id": "evt_poison",
            "object": "event",
            "type": "invoice.created",
            "created": T,
            "livemode": False,
            "data": {"object": "in_1"},
        }
    )
    server = Server(env, workers=2).start()
    try:
        post(server, poison)
        wait_for(lambda: health(server)["projections"]["billing"]["skipped_total"] == 1, 30)  # type: ignore[index]
        billing = health(server)["projections"]["billing"]  # type: ignore[index]
        assert health(server)["status"] == "ok" and billing["error"] is None
        assert [s["event_id"] for s in billing["skipped"]] == ["evt_poison"]
    finally:
        server.stop()


def test_healthz_of_an_http_process_shows_the_runner_process_failing(database_url: str) -> None:
    env = {"LEDGER_DATABASE_URL": database_url, "STRIPE_WEBHOOK_SECRET": SECRET}
    first = orjson.dumps(
        event("customer.subscription.created", subscription(), id="evt_1", created=T)
    )
    second = orjson.dumps(
        event("customer.subscription.updated", subscription(), id="evt_2", created=T + 1)
    )
    server = Server(env, workers=2).start()
    try:
        post(server, first)
        wait_for(lambda: health(server)["projections"]["billing"]["position"] >= 1, 30)  # type: ignore[index]
        store = open_store(database_url)
        try:  # an operator's mistake: the runner fails for the database, not for an event
            with store.db.transaction() as cursor:
                cursor.execute(f"DROP TABLE {Views(store.db).snapshots}")
        finally:
            store.db.close()
        post(server, second)
        wait_for(lambda: health(server)["status"] == "degraded", timeout=120)
        error = health(server)["projections"]["billing"]["error"]  # type: ignore[index]
        assert "billing_snapshots" in error
    finally:
        server.stop()
