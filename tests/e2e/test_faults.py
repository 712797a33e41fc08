"""Faults under load: PostgreSQL stopped and restarted, a runner killed mid-batch, two of everything.

Each test runs its own PostgreSQL cluster (tests/support/pgcluster.py), so stopping it disturbs
nothing else on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views
from tests.support.databases import open_store
from tests.support.pgcluster import Cluster, cluster
from tests.support.server import Server
from tests.support.signing import SECRET, sign
from tests.unit.builders import event, subscription

pytestmark = pytest.mark.e2e
T = 1767225600


def body_for(n: int) -> bytes:
    """A real-shaped subscription event for user n (each user has one customer and subscription)."""
    sub = subscription(
        id=f"sub_{n}", customer=f"cus_{n}", app_user_id=f"u_{n}", period=(T, T + 40 * 86400 * 365)
    )
    return orjson.dumps(event("customer.subscription.created", sub, id=f"evt_f_{n}", created=T + n))


class Stripe:
    """Delivers like Stripe: retries each event until a 2xx, remembers what was acknowledged."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.acknowledged: dict[str, int] = {}
        self.failures = 0
        self.lock = threading.Lock()

    def deliver(self, numbers: range, deadline: float) -> None:
        with httpx.Client(timeout=20) as client:
            for n in numbers:
                body = body_for(n)
                while time.monotonic() < deadline:
                    url = self.urls[n % len(self.urls)]
                    try:
                        response = client.post(
                            f"{url}/webhooks/stripe",
                            content=body,
                            headers={"stripe-signature": sign(body)},
                        )
                    except httpx.HTTPError:
                        response = None
                    if response is not None and response.status_code == 200:
                        with self.lock:
                            self.acknowledged[f"evt_f_{n}"] = response.json()["position"]
                        break
                    with self.lock:
                        self.failures += 1
                    time.sleep(0.2)

    def run(self, total: int, threads: int = 8, seconds: float = 120) -> list[threading.Thread]:
        deadline = time.monotonic() + seconds
        workers = [
            threading.Thread(target=self.deliver, args=(range(t, total, threads), deadline))
            for t in range(threads)
        ]
        for w in workers:
            w.start()
        return workers


def wait_caught_up(url: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    health: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/healthz", timeout=5).json()
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        projections = health.get("projections") or {}
        if all(
            p["position"] == health["head"] and p["error"] is None for p in projections.values()
        ):  # type: ignore[union-attr]
            return health
        time.sleep(0.2)
    raise AssertionError(f"projections did not catch up: {health}")


@pytest.fixture
def pg() -> Iterator[Cluster]:
    with cluster() as c:
        yield c


def stored_ids(url: str) -> list[str]:
    store = open_store(url)
    try:
        return [e.event_id for e in store.read(0, 100_000)]
    finally:
        store.db.close()


def test_postgres_stopped_and_restarted_under_load_loses_nothing_acknowledged(pg: Cluster) -> None:
    env = {"LEDGER_DATABASE_URL": pg.url, "STRIPE_WEBHOOK_SECRET": SECRET}
    server = Server(env).start()
    stripe = Stripe([server.url])
    try:
        workers = stripe.run(total=1500)
        while len(stripe.acknowledged) < 300:
            time.sleep(0.01)
        pg.stop("immediate")  # a crash: no clean shutdown
        down_until = time.monotonic() + 30
        while stripe.failures < 20 and time.monotonic() < down_until:
            time.sleep(0.1)
        failures_while_down = stripe.failures
        acknowledged_while_down = len(stripe.acknowledged)
        time.sleep(1)
        assert (
            len(stripe.acknowledged) == acknowledged_while_down
        )  # nothing acknowledged while down
        pg.start()
        for w in workers:
            w.join(150)
        assert failures_while_down > 0  # webhooks got 5xx (or no answer) while it was down
        assert len(stripe.acknowledged) == 1500  # everything flowed after the restart
        health = wait_caught_up(server.url)
        reads = httpx.get(f"{server.url}/v1/users/u_1499/entitlements").json()
        assert reads["features"] == ["core", "pro"]
    finally:
        server.stop()
    ids = stored_ids(pg.url)
    assert sorted(ids) == sorted(stripe.acknowledged)  # each acknowledged id stored, once
    assert health["head"] >= len(ids)


def _preload(url: str, total: int) -> None:
    store = open_store(url)
    from tests.support.ledger import incoming

    for start in range(0, total, 1000):
        store.append(
            [incoming(orjson.loads(body_for(n))) for n in range(start, min(total, start + 1000))]
        )
    store.db.close()


def _view_rows(url: str) -> tuple[int, object]:
    store = open_store(url)
    try:
        views = Views(store.db)
        return views.position(), views.rows()
    finally:
        store.db.close()


def test_a_runner_killed_mid_batch_resumes_without_loss_or_double_application(pg: Cluster) -> None:
    _preload(pg.url, 20_000)
    env = {**os.environ, "LEDGER_DATABASE_URL": pg.url}
    runner = subprocess.Popen(
        [sys.executable, "-m", "billing_ledger.cli", "project"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    position = 0
    while time.monotonic() < deadline and position < 3000:
        time.sleep(0.05)
        try:
            position = _view_rows(pg.url)[0]
        except Exception:  # tables not created yet
            position = 0
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait(10)
    killed_at = _view_rows(pg.url)[0]
    assert 0 < killed_at < 20_000  # it died mid-stream

    restarted = subprocess.Popen(
        [sys.executable, "-m", "billing_ledger.cli", "project"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _view_rows(pg.url)[0] < 20_000:
            time.sleep(0.2)
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(20)
    position, rows = _view_rows(pg.url)
    assert position == 20_000

    # A clean rebuild of the same store, in fresh tables, gives exactly the same rows.
    store = open_store(pg.url)
    try:
        fresh = Views(store.db).shadow("_check")
        fresh.create()
        Runner(store, fresh, livemode=False).catch_up()
        assert fresh.rows() == rows
        assert len(rows.snapshots) == 20_000  # type: ignore[attr-defined]
    finally:
        store.db.close()


def test_two_services_and_two_runners_on_one_postgres_store_and_apply_each_event_once(
    pg: Cluster,
) -> None:
    env = {"LEDGER_DATABASE_URL": pg.url, "STRIPE_WEBHOOK_SECRET": SECRET}
    servers = [Server(env).start(), Server(env).start()]
    extra = subprocess.Popen(
        [sys.executable, "-m", "billing_ledger.cli", "project"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        first = Stripe([s.url for s in servers])
        for w in first.run(total=600):
            w.join(120)
        # Redeliver everything through the *other* service: all duplicates, same positions.
        second = Stripe([s.url for s in reversed(servers)])
        for w in second.run(total=600):
            w.join(120)
        assert len(first.acknowledged) == 600
        assert second.acknowledged == first.acknowledged
        for server in servers:
            wait_caught_up(server.url)
        answers = [httpx.get(f"{s.url}/v1/users/u_7/entitlements").json() for s in servers]
        assert answers[0]["features"] == answers[1]["features"] == ["core", "pro"]
    finally:
        for server in servers:
            server.stop()
        os.killpg(extra.pid, signal.SIGTERM)
        extra.wait(20)
    ids = stored_ids(pg.url)
    assert sorted(ids) == sorted(first.acknowledged)
    _, rows = _view_rows(pg.url)
    assert len(rows.snapshots) == 600  # type: ignore[attr-defined]
