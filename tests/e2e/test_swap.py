"""Events a real server acknowledges while replay swaps the tables are all projected after it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from billing_ledger.bootstrap import build
from billing_ledger.replay.rebuild import PlansFile, Rebuild
from tests.support.app import settings_for
from tests.support.databases import postgres_url
from tests.support.server import running
from tests.support.signing import SECRET, sign
from tests.unit.builders import DAY, checkout_session, event, sub_event

pytestmark = pytest.mark.e2e

DEADLINE = 60.0
NOW = int(time.time())
PERIOD = (NOW - DAY, NOW + 30 * DAY)
BEFORE, DURING = range(10), range(10, 30)  # users subscribing before and while it swaps


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_url()


def subscribe(client: httpx.Client, n: int) -> int:
    """User n checks out and their subscription starts: the position of the last event."""
    cus, sub = f"cus_{n}", f"sub_{n}"
    session = checkout_session(
        id=f"cs_{n}", customer=cus, subscription=sub, client_reference_id=f"u_{n}"
    )
    envelopes = [
        event("checkout.session.completed", session, id=f"evt_cs_{n}", created=NOW - 10),
        sub_event("created", f"evt_sub_{n}", NOW - 9, id=sub, customer=cus, period=PERIOD),
    ]
    position = 0
    for envelope in envelopes:
        body = orjson.dumps(envelope)
        response = client.post(
            "/webhooks/stripe",
            content=body,
            headers={"stripe-signature": sign(body), "content-type": "application/json"},
        )
        assert response.status_code == 200, response.text
        position = response.json()["position"]
    return position


def served_position(client: httpx.Client) -> int:
    """The projection's position as the server's /healthz tells it."""
    position: int = client.get("/healthz").json()["projections"]["billing"]["position"]
    return position


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.02)


def subscriptions(client: httpx.Client, n: int, position: int) -> list[str]:
    """The ids of user n's subscriptions, read once the server has applied `position`."""
    response = client.get(f"/v1/users/u_{n}/entitlements", params={"min_position": position})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return [s["id"] for s in body["subscriptions"]]


def swap_held_open(url: str, stage: str) -> None:
    """Replay in this process while a server runs; at `stage` the swap waits for 20 users
    to subscribe through the server. Afterwards every acknowledged event must be read back,
    and the server's position must be the tracked one."""
    env = {"LEDGER_DATABASE_URL": url, "STRIPE_WEBHOOK_SECRET": SECRET}
    with running(env) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        acknowledged = {n: subscribe(client, n) for n in BEFORE}
        for n, position in acknowledged.items():
            assert subscriptions(client, n, position) == [f"sub_{n}"]  # cached by the server

        def hold(at: str) -> None:
            if at != stage:
                return
            during = {n: subscribe(client, n) for n in DURING}
            acknowledged.update(during)
            if stage == "caught_up":  # the server applies them to the tables about to go
                last = max(during.values())
                wait_until(lambda: served_position(client) >= last, "the server applied them")

        deps = build(settings_for(url), run_projections=False)
        try:
            plans = PlansFile.read(deps.settings.plans_path, deps.plans)
            rebuild = Rebuild(deps.store, deps.views, plans, livemode=False, hold=hold)
            assert rebuild.run(dry_run=False).swapped
            assert len(acknowledged) == len(BEFORE) + len(DURING)
            for n, position in acknowledged.items():
                assert subscriptions(client, n, position) == [f"sub_{n}"], f"u_{n}"
            head = deps.store.head()
            wait_until(lambda: served_position(client) == head, "the server reached the head")
            assert deps.views.position() == head == served_position(client)
        finally:
            deps.close()


def test_events_acknowledged_between_the_rebuild_and_the_swap_are_all_read_back(
    database_url: str,
) -> None:
    swap_held_open(database_url, "caught_up")


@pytest.mark.postgres
def test_events_acknowledged_while_the_swap_holds_the_tables_are_all_read_back(
    pg_url: str,
) -> None:
    swap_held_open(pg_url, "locked")
