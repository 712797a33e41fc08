"""A real uvicorn killed with SIGKILL mid-stream loses nothing it acknowledged."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.support.databases import open_store
from tests.support.server import Server
from tests.support.signing import SECRET, event_body, sign

pytestmark = pytest.mark.e2e


def _sender(url: str, ids: list[str], acknowledged: list[str], stop: threading.Event) -> None:
    with httpx.Client(timeout=5) as client:
        for event_id in ids:
            if stop.is_set():
                return
            body = event_body(event_id, pad_to=3000)
            try:
                response = client.post(
                    f"{url}/webhooks/stripe", content=body, headers={"stripe-signature": sign(body)}
                )
            except httpx.HTTPError:
                return  # the server died under us: this one was never acknowledged
            if response.status_code == 200:
                acknowledged.append(event_id)


def test_every_acknowledged_event_survives_a_sigkill(database_url: str) -> None:
    env = {"LEDGER_DATABASE_URL": database_url, "STRIPE_WEBHOOK_SECRET": SECRET}
    server = Server(env).start()
    acknowledged: list[str] = []
    stop = threading.Event()
    senders = [
        threading.Thread(
            target=_sender,
            args=(server.url, [f"evt_k{t}_{i}" for i in range(400)], acknowledged, stop),
        )
        for t in range(8)
    ]
    for sender in senders:
        sender.start()
    while len(acknowledged) < 200:
        time.sleep(0.01)
    server.kill()  # mid-stream: requests are in flight
    stop.set()
    for sender in senders:
        sender.join(10)
    assert 200 <= len(acknowledged) < 3200

    restarted = Server(env).start()
    try:
        # Stripe retries what was never acknowledged: send everything again.
        retried: list[str] = []
        _sender(
            restarted.url,
            [f"evt_k{t}_{i}" for t in range(8) for i in range(400)],
            retried,
            threading.Event(),
        )
        assert len(retried) == 3200
    finally:
        restarted.stop()
    store = open_store(database_url)
    stored = [e.event_id for e in store.read(0, 10_000)]
    store.db.close()
    assert set(acknowledged) <= set(stored)
    assert len(stored) == len(set(stored)) == 3200  # each id once, acknowledged or retried
