"""Ingest throughput: signed ~3 KB events from 32 concurrent clients into a real uvicorn on PostgreSQL.

Prints events/s and p50/p99 beside, in the same run: the same client against a no-op endpoint,
and the same service with group commit off (one event per transaction).
Reproduce: `make bench`, or `PYTHONPATH=. .venv/bin/python bench/ingest.py` (BENCH_EVENTS=N).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import httpx
import psycopg

from bench.httpload import LoadResult, post_request, run_load
from tests.support.server import Server, free_port
from tests.support.signing import SECRET, event_body, sign

PG = os.environ.get("LEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/ledger_test")
EVENTS = int(os.environ.get("BENCH_EVENTS", "20000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))


def signed_requests(prefix: str, count: int) -> list[bytes]:
    """Pre-built signed POSTs (signing is the sender's cost, not the service's)."""
    requests = []
    for i in range(count):
        body = event_body(f"evt_{prefix}_{i}", pad_to=3000)
        requests.append(post_request("/webhooks/stripe", body, {"Stripe-Signature": sign(body)}))
    return requests


def measure(port: int, requests: list[bytes]) -> LoadResult:
    make: Callable[[int], bytes] = requests.__getitem__
    return run_load("127.0.0.1", port, make, len(requests), CONCURRENCY, max_seconds=120)


def ledger_run(schema: str, batch: int, count: int) -> LoadResult:
    env = {
        "LEDGER_DATABASE_URL": f"{PG}?schema={schema}",
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "LEDGER_WRITER_MAX_BATCH": str(batch),
    }
    server = Server(env).start()
    try:
        return measure(server.port, signed_requests(f"{schema}_{batch}", count))
    finally:
        server.stop()


def noop_run(count: int) -> LoadResult:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.noop_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    )
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/noop", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = event_body("evt_noop", pad_to=3000)
        request = post_request("/noop", body, {"Stripe-Signature": sign(body)})
        return measure(port, [request] * count)
    finally:
        process.terminate()
        process.wait(10)


def line(name: str, result: LoadResult) -> str:
    return (
        f"{name:<34} {result.rate:>9.0f} req/s   p50 {result.percentile(50):6.1f} ms   "
        f"p99 {result.percentile(99):6.1f} ms   errors {result.errors}"
    )


def main() -> None:
    schema = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    try:
        noop = noop_run(EVENTS)
        single = ledger_run(schema, batch=1, count=max(2000, EVENTS // 4))
        grouped = ledger_run(schema, batch=200, count=EVENTS)
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print(
        f"ingest: {EVENTS} signed 3 KB events, {CONCURRENCY} concurrent clients, PostgreSQL, 1 uvicorn worker"
    )
    print(line("no-op POST (same client)", noop))
    print(line("ledger, one event per transaction", single))
    print(line("ledger, group commit", grouped))
    print(
        f"group commit / one-per-transaction: {grouped.rate / single.rate:.2f}x   "
        f"group commit / no-op: {grouped.rate / noop.rate:.2f}"
    )


if __name__ == "__main__":
    main()
