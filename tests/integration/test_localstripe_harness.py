"""The localstripe harness: a private fake Stripe on 127.0.0.1, driven by the official SDK."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import orjson
import pytest

from billing_ledger.ledger.verify import verify
from tests.support.localstripe import (
    flush,
    list_events,
    register_webhook,
    stripe_client,
    unregister_webhook,
)
from tests.support.signing import SECRET


def test_a_customer_created_through_the_sdk_is_listed_with_its_event(localstripe_url: str) -> None:
    flush(localstripe_url)
    client = stripe_client(localstripe_url)
    customer = client.v1.customers.create({"email": "a@example.com"})
    events = list_events(localstripe_url)
    assert customer.id.startswith("cus_")
    assert [(e["type"], e["data"]["object"]["id"]) for e in events] == [
        ("customer.created", customer.id)
    ]


def test_the_sdk_lists_events_through_its_own_pagination(localstripe_url: str) -> None:
    flush(localstripe_url)
    client = stripe_client(localstripe_url)
    ids = {client.v1.customers.create({"email": f"{i}@example.com"}).id for i in range(12)}
    listed = client.v1.events.list({"limit": 5})
    seen = {event.data.object["id"] for event in listed.auto_paging_iter()}
    assert seen == ids


def test_flush_empties_the_store(localstripe_url: str) -> None:
    stripe_client(localstripe_url).v1.customers.create({"email": "b@example.com"})
    flush(localstripe_url)
    assert list_events(localstripe_url) == []


def test_the_server_listens_on_loopback_only(localstripe_url: str) -> None:
    assert localstripe_url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{localstripe_url}/v1/customers").status_code == 401


class _Sink(BaseHTTPRequestHandler):
    received: list[tuple[bytes, str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers["Stripe-Signature"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def sink() -> Iterator[tuple[str, list[tuple[bytes, str]]]]:
    """A tiny HTTP server on 127.0.0.1 that keeps every POST it receives."""
    received: list[tuple[bytes, str]] = []
    handler = type("Sink", (_Sink,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/webhooks/stripe", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_registered_webhook_receives_signed_events(
    localstripe_url: str, sink: tuple[str, list[tuple[bytes, str]]]
) -> None:
    target, received = sink
    flush(localstripe_url)
    register_webhook(localstripe_url, target, SECRET, hook_id="harness")
    try:
        customer = stripe_client(localstripe_url).v1.customers.create({"email": "c@example.com"})
        # localstripe sends each event a second after making it, to every webhook registered
        # by then: events of earlier tests may arrive too, so look for this one by id.
        _wait_for(lambda: any(customer.id.encode() in body for body, _ in received))
    finally:
        unregister_webhook(localstripe_url, hook_id="harness")
    body, header = next((b, h) for b, h in received if customer.id.encode() in b)
    verify(body, header, [SECRET], tolerance=300)
    assert orjson.loads(body)["type"] == "customer.created"


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
