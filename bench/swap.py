"""Replay's swap under reads on PostgreSQL: replays beside reading clients and deliveries,
then one replay against an idle transaction holding a view table.

Fills a fresh schema with N events (default 20,000: 2,000 users), starts a real server,
and while C clients (default 8) read random users' entitlements and one sender delivers
signed events, runs `billing-ledger replay` K times (default 6). Prints how many replays
swapped or failed (and why), the reads answered, those that were not 200, those over a
second, and their p50/p99/max; then, with a session idle in a transaction on the snapshot
table, one more replay (which must exit 2 naming that session) and the reads meanwhile.
Reproduce: `PYTHONPATH=. .venv/bin/python bench/swap.py [--events N --clients C --replays K]`.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import orjson
import psycopg

from bench.common import PG, fill, fresh_store
from tests.support.server import Server
from tests.support.signing import SECRET, sign
from tests.unit.builders import T, event, subscription

REPLAY_LIMIT = 180.0  # a replay still running then is reported as hung (and killed)


@dataclass
class Reads:
    """What the reading clients saw."""

    seconds: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            self.seconds.append(seconds)

    def line(self) -> str:
        with self.lock:
            ordered = sorted(self.seconds) or [0.0]
            bad = sum(n for s, n in self.statuses.items() if s != 200)
            slow = sum(1 for s in ordered if s > 1.0)

            def pick(q: float) -> float:
                return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

            return (
                f"{len(self.seconds):,} reads, {bad} not 200 {dict(self.statuses)}, "
                f"{slow} over 1 s; p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, "
                f"max {ordered[-1] * 1000:.0f} ms"
            )


def read_loop(url: str, users: int, reads: Reads, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status = client.get(f"/v1/users/u_{random.randrange(users)}/entitlements")
                code = status.status_code
            except httpx.HTTPError:
                code = 0
            reads.add(code, time.perf_counter() - started)


def send_loop(url: str, customers: int, stop: threading.Event) -> None:
    """About 20 signed subscription updates a second, so the server's runner applies."""
    with httpx.Client(base_url=url, timeout=60) as client:
        n = 0
        while not stop.is_set():
            c = n % customers
            sub = subscription(id=f"sub_{c}", customer=f"cus_{c}", period=(T, T + 86400 * 30))
            body = orjson.dumps(
                event("customer.subscription.updated", sub, id=f"evt_live_{n}", created=T + n)
            )
            client.post("/webhooks/stripe", content=body, headers={"stripe-signature": sign(body)})
            n += 1
            stop.wait(0.05)


def replay(env: dict[str, str]) -> tuple[int, float, str]:
    """`billing-ledger replay` as an operator runs it: exit status, seconds, last line."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "billing_ledger.cli", "replay"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
            timeout=REPLAY_LIMIT,
        )
    except subprocess.TimeoutExpired:
        return -1, time.perf_counter() - started, f"did not finish in {REPLAY_LIMIT:.0f} s"
    said = done.stdout if done.returncode == 0 else done.stderr  # stderr also has the logs
    return done.returncode, time.perf_counter() - started, (said.strip().splitlines() or [""])[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--replays", type=int, default=6)
    args = parser.parse_args()
    with fresh_store("bench_swap") as store:
        fill(store, args.events)
        users = max(1, args.events // 10)
        url = f"{PG}?schema={store.db.url.schema}"
        env = {"LEDGER_DATABASE_URL": url, "STRIPE_WEBHOOK_SECRET": SECRET}
        server = Server(env).start()
        try:
            while (
                httpx.get(f"{server.url}/healthz").json()["projections"]["billing"]["position"]
                < store.head()
            ):
                time.sleep(0.1)
            reads, stop = Reads(), threading.Event()
            threads = [
                threading.Thread(target=read_loop, args=(server.url, users, reads, stop))
                for _ in range(args.clients)
            ] + [threading.Thread(target=send_loop, args=(server.url, users, stop))]
            for thread in threads:
                thread.start()
            outcomes = Counter[str]()
            for _ in range(args.replays):
                status, seconds, last = replay(env)
                outcomes["swapped" if status == 0 else f"exit {status}: {last}"] += 1
                print(f"replay: exit {status} in {seconds:.1f} s: {last}")
            print(f"{args.replays} replays: {dict(outcomes)}")
            print(f"reads during them: {reads.line()}")
            reads.seconds.clear()
            reads.statuses.clear()
            with psycopg.connect(PG) as idle:  # an operator's psql, left in a transaction
                idle.execute(f'SELECT count(*) FROM "{store.db.url.schema}".billing_snapshots')
                status, seconds, last = replay(env)
                print(
                    f"replay beside an idle transaction: exit {status} in {seconds:.1f} s: {last}"
                )
            print(f"reads during it: {reads.line()}")
            stop.set()
            for thread in threads:
                thread.join(60)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
