"""A real `serve` against senders that hold bodies open or hang up halfway."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.databases import sqlite_url
from tests.support.server import Server
from tests.support.signing import SECRET, event_body, sign

pytestmark = pytest.mark.e2e

PLAUSIBLE = "t=1767225600,v1=" + "0" * 64  # looks like a signature; verifies against nothing
LIMIT = 2


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """One `serve` that reads at most LIMIT unverified bodies at once."""
    env = {
        "LEDGER_DATABASE_URL": sqlite_url(tmp_path),
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "LEDGER_MAX_BODY_READS": str(LIMIT),
    }
    running = Server(env).start()
    try:
        yield running
    finally:
        running.stop()


def partial_post(server: Server, declared: int = 1024 * 1024, sent: int = 4096) -> socket.socket:
    """A webhook request whose body stops after `sent` of its `declared` bytes."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (
        "POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nStripe-Signature: {PLAUSIBLE}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"{" + b" " * (sent - 1))
    return sock


def probe(server: Server) -> httpx.Response:
    """A small unsigned-looking delivery: refused either way, but how?"""
    headers = {"stripe-signature": PLAUSIBLE, "content-type": "application/json"}
    return httpx.post(f"{server.url}/webhooks/stripe", content=b"{}", headers=headers, timeout=10)


def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Poll `check` until it holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_past_the_bound_an_unverified_body_is_refused_before_it_is_read(server: Server) -> None:
    held = [partial_post(server) for _ in range(LIMIT)]
    answers: list[httpx.Response] = []
    until(lambda: answers.append(probe(server)) or answers[-1].status_code == 503, "a 503")
    refused = answers[-1]
    assert refused.json()["error"] == "busy" and refused.headers["retry-after"] == "1"
    for sock in held:
        sock.close()
    until(lambda: probe(server).status_code == 400, "the reads to be released")
    body = event_body("evt_after_the_crowd")
    signed = {"stripe-signature": sign(body), "content-type": "application/json"}
    stored = httpx.post(f"{server.url}/webhooks/stripe", content=body, headers=signed)
    assert stored.status_code == 200 and stored.json()["status"] == "recorded"


def test_a_sender_hanging_up_mid_body_is_one_line_without_a_traceback(server: Server) -> None:
    partial_post(server, declared=100_000, sent=10).close()
    until(lambda: "client_disconnected" in server.output(), "the disconnect's log line")
    lines = [line for line in server.output().splitlines() if "client_disconnected" in line]
    assert len(lines) == 1 and "outcome=rejected" in lines[0]
    assert "Traceback" not in server.output() and "ClientDisconnect" not in server.output()
    assert probe(server).json()["error"] == "invalid_signature"  # still serving
