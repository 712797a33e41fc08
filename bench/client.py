"""The client's figures: Replica.allowed checks/s in process beside a warm HTTP read of the
same answer, and the time from a webhook's 2xx to the replica's update (p50/p99).

Starts a real `billing-ledger serve` (SQLite in a temporary folder, or LEDGER_BENCH_DATABASE_URL),
subscribes BENCH_CLIENT_USERS users, follows the feed with a Replica, then measures in one run.
The latency part sends BENCH_CLIENT_WEBHOOKS subscriptions at BENCH_CLIENT_RATE per second
(set it to half of bench/ingest.py's figure for the issue's "50% of ingest capacity").
Goals: at least 1,000x the HTTP rate; p99 <= 500 ms.
Reproduce: `PYTHONPATH=. .venv/bin/python bench/client.py` (or `make bench BENCHES=client`).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time

import httpx

from billing_ledger.client import Change, Replica
from tests.support.lifecycle import Lifecycle
from tests.support.server import Server
from tests.support.signing import SECRET

USERS = int(os.environ.get("BENCH_CLIENT_USERS", "200"))
WEBHOOKS = int(os.environ.get("BENCH_CLIENT_WEBHOOKS", "200"))
RATE = float(os.environ.get("BENCH_CLIENT_RATE", "50"))
CHECKS = int(os.environ.get("BENCH_CLIENT_CHECKS", "2000000"))
HTTP_SECONDS = float(os.environ.get("BENCH_CLIENT_HTTP_SECONDS", "3"))


def _poster(http: httpx.Client) -> object:
    return lambda path, body, headers: http.post(path, content=body, headers=headers)


def checks_per_second(replica: Replica, users: list[str]) -> float:
    """Replica.allowed calls per second, one thread."""
    allowed = replica.allowed
    n = len(users)
    started = time.perf_counter()
    for i in range(CHECKS):
        allowed(users[i % n], "pro")
    return CHECKS / (time.perf_counter() - started)


def http_reads_per_second(url: str, user: str) -> float:
    """GET /v1/users/{user}/access/pro per second, one warm keep-alive connection."""
    with httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(50):
            http.get(f"/v1/users/{user}/access/pro")
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < HTTP_SECONDS:
            assert http.get(f"/v1/users/{user}/access/pro").json()["allowed"]
            done += 1
        return done / (time.perf_counter() - started)


def update_latencies(url: str, replica: Replica) -> list[float]:
    """Seconds from each webhook's 2xx to the replica's change for that user."""
    acked: dict[str, float] = {}
    seen: dict[str, float] = {}
    lock = threading.Lock()

    def on_change(change: Change) -> None:
        with lock:
            seen.setdefault(change.user_id, time.perf_counter())

    replica.on_change = on_change
    with httpx.Client(base_url=url, timeout=10) as http:
        for i in range(WEBHOOKS):
            user = f"u_lat_{i}"
            response = Lifecycle(_poster(http), user).subscription_created()  # type: ignore[arg-type]
            assert response.status_code == 200, response.text
            with lock:
                acked[user] = time.perf_counter()
            time.sleep(1 / RATE)
    assert replica.wait_until(lambda r: len(seen) >= WEBHOOKS, timeout=60)
    return [seen[u] - acked[u] for u in acked]


def main() -> None:
    folder = tempfile.mkdtemp(prefix="bench-client-")
    database = os.environ.get("LEDGER_BENCH_DATABASE_URL", f"sqlite:///{folder}/ledger.db")
    server = Server({"LEDGER_DATABASE_URL": database, "STRIPE_WEBHOOK_SECRET": SECRET}).start()
    try:
        users = [f"u_{i}" for i in range(USERS)]
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for user in users:
                Lifecycle(_poster(http), user).subscription_created()  # type: ignore[arg-type]
        with Replica(server.url, wait=5) as replica:
            assert replica.wait_ready(10)
            assert replica.wait_until(lambda r: all(r.allowed(u, "pro") for u in users), 60)
            local = checks_per_second(replica, users)
            remote = http_reads_per_second(server.url, users[0])
            print(f"Replica.allowed: {local:,.0f} checks/s in process")
            print(f"HTTP access read (warm, same answer): {remote:,.0f} reads/s")
            print(f"ratio: {local / remote:,.0f}x (goal >= 1,000x)")
            lat = sorted(update_latencies(server.url, replica))
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(
                f"webhook 2xx -> replica update over {len(lat)} at {RATE:g}/s: "
                f"p50 {statistics.median(lat) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (goal <= 500)"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
