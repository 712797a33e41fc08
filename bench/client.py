"""The client's figures: Replica.allowed checks/s in process beside a warm HTTP read of the
same answer, and the time from a webhook's 2xx to the replica's update (p50/p99) at half of
the ingest capacity measured first in the same run.

Starts a real `billing-ledger serve` with its defaults (PostgreSQL, a fresh schema dropped
afterwards; or LEDGER_BENCH_DATABASE_URL), subscribes BENCH_CLIENT_USERS users, follows the
feed with a Replica, then measures: checks/s; a closed-loop burst of BENCH_CLIENT_CAPACITY
signed ~3 KB events (32 in flight) for the capacity; then BENCH_CLIENT_SECONDS of open-loop
load at BENCH_CLIENT_SHARE (default 0.5) of it, each 2xx's user timed until the replica
reports its change. Goals: at least 1,000x the HTTP rate; p99 <= 500 ms.
Reproduce: `PYTHONPATH=. .venv/bin/python bench/client.py` (or `make bench BENCHES=client`).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid

import httpx
import psycopg

from bench.common import PG
from bench.freshness import Sample, _steady_poster, burst, pct
from billing_ledger.client import Change, Replica
from tests.support.lifecycle import Lifecycle
from tests.support.server import Server
from tests.support.signing import SECRET

USERS = int(os.environ.get("BENCH_CLIENT_USERS", "200"))
CAPACITY_EVENTS = int(os.environ.get("BENCH_CLIENT_CAPACITY", "4000"))
SHARE = float(os.environ.get("BENCH_CLIENT_SHARE", "0.5"))
SECONDS = float(os.environ.get("BENCH_CLIENT_SECONDS", "20"))
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


def update_latencies(port: int, replica: Replica, rate: float) -> tuple[list[float], int]:
    """Seconds from each webhook's 2xx to the replica's change for its user, open loop at
    `rate`; and how many requests failed."""
    acked: dict[str, float] = {}
    seen: dict[str, float] = {}
    lock = threading.Lock()

    def on_change(change: Change) -> None:
        with lock:
            seen.setdefault(change.user_id, time.perf_counter())

    replica.on_change = on_change
    sample = Sample()

    async def main() -> None:
        queue: asyncio.Queue[tuple[int, int, float] | None] = asyncio.Queue()
        ends, counter = time.perf_counter() + SECONDS, [0]

        async def record() -> None:
            while (item := await queue.get()) is not None:
                n, _, at = item
                with lock:
                    acked[f"u_lat_{n}"] = at

        recorder = asyncio.create_task(record())
        await asyncio.gather(
            *(_steady_poster(port, "lat", rate, counter, ends, queue, sample) for _ in range(64))
        )
        queue.put_nowait(None)
        await recorder

    asyncio.run(main())
    assert replica.wait_until(lambda r: set(acked) <= set(seen), timeout=60)
    return [seen[u] - at for u, at in acked.items()], sample.errors


def _database() -> tuple[str, str | None]:
    """The database URL, and the PostgreSQL schema to drop afterwards (None: given)."""
    given = os.environ.get("LEDGER_BENCH_DATABASE_URL")
    if given:
        return given, None
    schema = f"bench_client_{uuid.uuid4().hex[:8]}"
    return f"{PG}?schema={schema}", schema


def main() -> None:
    database, schema = _database()
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
            seconds, _, burst_sample = burst(server.port, "cap", CAPACITY_EVENTS, 32)
            capacity = (CAPACITY_EVENTS - burst_sample.errors) / seconds
            rate = capacity * SHARE
            # The steady load starts once the replica holds the capacity burst: its backlog
            # (the feed behind the views) is a burst's figure, not the steady state's.
            drained = time.perf_counter()
            burst_users = [f"u_cap_{n}" for n in range(CAPACITY_EVENTS)]
            assert replica.wait_until(lambda r: all(r.allowed(u, "pro") for u in burst_users), 120)
            print(f"replica held the capacity burst {time.perf_counter() - drained:.1f} s later")
            lat, errors = update_latencies(server.port, replica, rate)
            print(
                f"capacity {capacity:,.0f} events/s (closed loop, 32 in flight); "
                f"webhook 2xx -> replica update over {len(lat)} at {rate:,.0f}/s "
                f"({SHARE:.0%}): p50 {pct(lat, 50):.0f} ms, p99 {pct(lat, 99):.0f} ms, "
                f"max {pct(lat, 100):.0f} ms (goal p99 <= 500), errors {errors}"
            )
    finally:
        server.stop()
        if schema is not None:
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
