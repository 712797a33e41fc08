"""Held bodies: N unauthenticated webhook requests, each with a plausible Stripe-Signature and
all but the last byte of a 1 MiB body, held open against a real `serve` (SQLite, loopback).

Prints the server's RSS before, while the bodies are held, and after they are dropped, and
how the held requests were answered (503 busy past the bound; the rest are never answered
while held). A short run; it needs no PostgreSQL.
Reproduce: `PYTHONPATH=. .venv/bin/python bench/held_bodies.py` (HELD_BODIES=400 by default).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

from bench.soak import rss_mib
from tests.support.server import Server
from tests.support.signing import SECRET

HELD = int(os.environ.get("HELD_BODIES", "400"))
BODY = 1024 * 1024
HEADER = "t=1767225600,v1=" + "0" * 64  # plausible, verifies against nothing
SETTLE_SECONDS = 5.0


def hold(port: int) -> socket.socket | None:
    """One request with all but the last byte of its body sent; None if the server hung up."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        "POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {HEADER}\r\nContent-Length: {BODY}\r\n\r\n"
    )
    try:
        sock.sendall(head.encode() + b"{" + b" " * (BODY - 2))
    except OSError:
        sock.close()
        return None
    return sock


def answered(sock: socket.socket) -> str:
    """The status line the server sent on a held request, if any yet."""
    sock.setblocking(False)
    try:
        return sock.recv(200).split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
    except BlockingIOError:
        return "no answer"
    except OSError:
        return "reset"


def main() -> None:
    """Hold the bodies, sample RSS, let them go, sample again."""
    folder = Path(tempfile.mkdtemp(prefix="ledger-held-"))
    env = {"LEDGER_DATABASE_URL": f"sqlite:///{folder}/ledger.db", "STRIPE_WEBHOOK_SECRET": SECRET}
    server = Server(env).start()
    assert server.process is not None
    try:
        before = rss_mib(server.process.pid)
        held = [hold(server.port) for _ in range(HELD)]
        time.sleep(SETTLE_SECONDS)  # a bench, not a test: let the server take what it takes
        during = rss_mib(server.process.pid)
        outcomes: dict[str, int] = {}
        for sock in held:
            outcome = "hung up" if sock is None else answered(sock)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        for sock in held:
            if sock is not None:
                sock.close()
        time.sleep(SETTLE_SECONDS)
        after = rss_mib(server.process.pid)
    finally:
        server.stop()
    print(f"held bodies: {HELD} x 1 MiB unauthenticated, 1 worker, SQLite, loopback")
    print(f"  RSS {before:.0f} MiB before, {during:.0f} MiB held, {after:.0f} MiB after")
    print("  answers while held: " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))


if __name__ == "__main__":
    main()
