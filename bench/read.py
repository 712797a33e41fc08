"""Entitlement reads: requests/s and p99 of GET /v1/users/{id}/entitlements on a real uvicorn.

Projects 10,000 users' 100,000 events (appended straight to the store, then caught up by the
runner) into PostgreSQL, serves the real app from one uvicorn worker on 127.0.0.1 with a
no-op route mounted by this bench, and measures both routes with the same load client in
the same run. Goals: warm reads at least 0.7 of the no-op rate, p99 <= 20 ms; first (cold)
reads, each loading the user's objects' present rows, at least 2,500/s.
Reproduce: `make bench`, or `PYTHONPATH=. .venv/bin/python bench/read.py`
(BENCH_READ_USERS=N for a quicker run; default 10,000 users, 10 events each;
BENCH_READ_WORKERS=2 serves from two uvicorn workers, serve's default on two cores).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.httpload import LoadResult, get_request, run_load
from billing_ledger.ledger.records import Incoming
from billing_ledger.ledger.store import Database, DatabaseUrl, EventStore
from billing_ledger.ledger.verify import parse_event
from billing_ledger.projections.feed import FEED, FeedTables
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views
from tests.support.server import free_port
from tests.unit.builders import DAY, M, T, checkout_session, event, invoice, subscription

PG = os.environ.get("LEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/ledger_test")
USERS = int(os.environ.get("BENCH_READ_USERS", "10000"))
REQUESTS = int(os.environ.get("BENCH_READ_REQUESTS", "30000"))
# Latency is concurrency / throughput (Little's law): 8 connections keep one worker busy
# without measuring only the queue in front of it.
CONCURRENCY = int(os.environ.get("BENCH_READ_CONCURRENCY", "8"))
# uvicorn workers: 1 by default (the warm rounds read through one cache); 2 is serve's
# default on two cores, each worker with a cache of its own (first reads are cold in any).
WORKERS = int(os.environ.get("BENCH_READ_WORKERS", "1"))
APPEND_BATCH = 1000
NOOP_PATH = "/bench/noop"

Json = dict[str, Any]


async def noop(request: Request) -> Response:
    """The baseline: the same app, middleware and server, answering without any work."""
    return Response(b'{"status":"ok"}', media_type="application/json")


def bench_app() -> Starlette:
    """The real app from the environment, plus the bench's no-op route (not a public one)."""
    from billing_ledger.bootstrap import app_from_env

    app = app_from_env()
    app.router.routes.append(Route(NOOP_PATH, noop, methods=["GET"]))
    return app


def _user_events(n: int) -> list[Json]:
    """Ten events of user u_n: Checkout, a subscription, two invoices, a renewal."""
    ids = {"customer": f"cus_{n}", "subscription": f"sub_{n}"}
    created = T + n % 86400
    price = ("price_basic", "price_pro")[n % 2]
    first = {"id": f"in_{n}_1", "billing_reason": "subscription_create", **ids}
    cycle = {
        "id": f"in_{n}_2",
        "billing_reason": "subscription_cycle",
        "created": created + M,
        **ids,
    }
    renewed = subscription(id=ids["subscription"], customer=ids["customer"], prices=(price,),
                           period=(T + M, T + 2 * M))  # fmt: skip
    sub = subscription(id=ids["subscription"], customer=ids["customer"], prices=(price,))
    session = checkout_session(id=f"cs_{n}", client_reference_id=f"u_{n}", **ids)
    steps: list[tuple[str, Json, int]] = [
        ("checkout.session.completed", session, created),
        ("customer.subscription.created", sub, created),
        ("invoice.created", invoice(status="draft", **first), created),
        ("invoice.finalized", invoice(status="open", finalized_at=created, **first), created),
        ("invoice.paid", invoice(status="paid", amount_paid=2000, attempt_count=1, **first), created + 1),
        ("customer.subscription.updated", renewed, created + M),
        ("invoice.created", invoice(status="draft", **cycle), created + M),
        ("invoice.finalized", invoice(status="open", **cycle), created + M),
        ("invoice.paid", invoice(status="paid", amount_paid=2000, attempt_count=1, **cycle), created + M + 1),
        ("customer.subscription.updated", renewed | {"cancel_at_period_end": True}, created + M + DAY),
    ]  # fmt: skip
    return [
        event(kind, obj, id=f"evt_{n}_{i}", created=at) for i, (kind, obj, at) in enumerate(steps)
    ]


def _incoming(users: int) -> Iterator[Incoming]:
    import orjson

    for n in range(users):
        for envelope in _user_events(n):
            yield parse_event(orjson.dumps(envelope))


def project(url: str, users: int) -> int:
    """Append every user's events in batches, then let a runner catch up; returns the head."""
    store = EventStore(Database(DatabaseUrl.parse(url)))
    try:
        store.create()
        batch: list[Incoming] = []
        for item in _incoming(users):
            batch.append(item)
            if len(batch) == APPEND_BATCH:
                store.append(batch)
                batch = []
        store.append(batch)
        views = Views(store.db)
        views.create()
        return Runner(store, views, livemode=False, batch=5000).catch_up()
    finally:
        store.db.close()


def serve(url: str, port: int) -> subprocess.Popen[bytes]:
    """WORKERS uvicorn workers on 127.0.0.1 serving `bench_app`."""
    env = {**os.environ, "LEDGER_DATABASE_URL": url, "PYTHONPATH": os.getcwd()}
    env.pop("LEDGER_API_TOKEN", None)
    command = [sys.executable, "-m", "uvicorn", "bench.read:bench_app", "--factory",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{NOOP_PATH}", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("uvicorn did not start")


def wait_for_feed(url: str, head: int, timeout: float = 300) -> float:
    """Seconds until the server's change feed has projected every event: its first catch-up
    loads and evaluates every user, which would compete with the first reads measured."""
    db = Database(DatabaseUrl.parse(url))
    began = time.monotonic()
    try:
        while FeedTables(db).tracked(FEED)[0] < head:
            if time.monotonic() - began > timeout:
                raise RuntimeError("the change feed did not catch up")
            time.sleep(0.2)
    finally:
        db.close()
    return time.monotonic() - began


def measure(port: int, paths: list[str]) -> LoadResult:
    requests = [get_request(p) for p in paths]
    return run_load("127.0.0.1", port, requests.__getitem__, len(requests), CONCURRENCY, 120)


def entitlement_paths(users: int, count: int, seed: int) -> list[str]:
    pick = random.Random(seed)
    return [f"/v1/users/u_{pick.randrange(users)}/entitlements" for _ in range(count)]


def report(name: str, result: LoadResult) -> None:
    print(
        f"{name:<13} {result.rate:>9,.0f} req/s  p50 {result.percentile(50):6.2f} ms  "
        f"p99 {result.percentile(99):6.2f} ms  ({result.requests:,} ok, {result.errors} errors)"
    )


def main() -> int:
    schema = f"bench_read_{uuid.uuid4().hex[:8]}"
    url = f"{PG}?schema={schema}"
    try:
        began = time.perf_counter()
        head = project(url, USERS)
        print(f"projected {USERS:,} users, {head:,} events in {time.perf_counter() - began:.1f} s")
        print(f"serving from {WORKERS} uvicorn worker(s), {CONCURRENCY} connections")
        port = free_port()
        server = serve(url, port)
        try:
            print(f"the server's change feed caught up in {wait_for_feed(url, head):.1f} s")
            # Warm both routes, every user once: the steady state of a running service.
            cold = measure(port, [f"/v1/users/u_{n}/entitlements" for n in range(USERS)])
            report("first reads", cold)  # each loads the user's rows from the database
            print(f"first reads: {cold.rate:,.0f} req/s (goal >= 2,500)")
            measure(port, [NOOP_PATH] * 2000)
            for round_ in (1, 2):
                baseline = measure(port, [NOOP_PATH] * REQUESTS)
                reads = measure(port, entitlement_paths(USERS, REQUESTS, round_))
                report("no-op", baseline)
                report("entitlements", reads)
                print(
                    f"round {round_}: ratio {reads.rate / baseline.rate:.2f} of the no-op rate "
                    f"(goal >= 0.70), entitlements p99 {reads.percentile(99):.2f} ms (goal <= 20)"
                )
        finally:
            server.terminate()
            server.wait(15)
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return 0


if __name__ == "__main__":
    sys.exit(main())
