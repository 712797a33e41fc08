"""Soak: signed ~3 KB events at half the measured ingest capacity, with entitlement reads for
the users those events touch, against a real uvicorn on PostgreSQL (loopback only; a fresh
schema, dropped afterwards).

First a short closed-loop burst measures capacity (or SOAK_CAPACITY gives it); then two
open-loop streams run side by side for SOAK_SECONDS (default 600): events at half that rate
and reads at SOAK_READ_RATIO (default 0.2) reads per event. Both are bounded in count and
time. It reports errors (must be 0), events sent and stored, the read p99, whether the
projection caught up, and the server's RSS (the process and its children) at start and end,
then one summary line for the README's reliability table. Exits non-zero on any error.
Reproduce: `PYTHONPATH=. .venv/bin/python bench/soak.py` (SOAK_SECONDS=90 for a short run).
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import psycopg

from bench.common import PG, envelope
from bench.httpload import LoadResult, Paced, get_request, post_request, run_load, run_paced
from tests.support.server import Server
from tests.support.signing import SECRET, sign

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
CAPACITY = float(os.environ.get("SOAK_CAPACITY", "0"))  # 0: measure it
CAPACITY_EVENTS = int(os.environ.get("SOAK_CAPACITY_EVENTS", "6000"))
# One read per ten events: nearly every read asks for a user an event changed in the last
# minute, so it misses the cache and loads the user's rows; at one per five the single
# worker (one core, shared with ingestion and the runner) fell behind.
READ_RATIO = float(os.environ.get("SOAK_READ_RATIO", "0.1"))
# Event i touches user u_(i mod CUSTOMERS); its first event links them. With 100,000 users
# a user gets a handful of events in ten minutes; with 10,000, each history grew to ~90
# snapshots, every read of it dearer than the last.
CUSTOMERS = int(os.environ.get("SOAK_CUSTOMERS", "100000"))
BODY_BYTES = 3000
TOKEN = f"tok_soak_{secrets.token_hex(8)}"
CATCH_UP_SECONDS = 120


# -- requests ---------------------------------------------------------------------------


def event_request(index: int) -> bytes:
    """Event `index`, padded to ~3 KB and signed now (the tolerance is 5 minutes, the soak
    is longer, so nothing is signed ahead)."""
    event = envelope(index, CUSTOMERS)
    body = orjson.dumps(event)
    event["data"]["object"]["metadata"] = {"note": "x" * max(0, BODY_BYTES - len(body) - 30)}
    body = orjson.dumps(event)
    return post_request("/webhooks/stripe", body, {"Stripe-Signature": sign(body)})


def read_request(first_event: int, events_per_read: float) -> Callable[[int], bytes]:
    """Read `j` asks for a user the events due by then have touched."""

    def make(j: int) -> bytes:
        touched = max(1, min(CUSTOMERS, first_event + int(j * events_per_read)))
        user = (j * 7919) % touched
        path = f"/v1/users/u_{user}/entitlements"
        return get_request(path, {"Authorization": f"Bearer {TOKEN}"})

    return make


# -- the server's memory ----------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (uvicorn's workers, if any)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended while we looked
        if int(fields[1]) == pid:
            child = int(entry.name)
            found += [child, *children(child)]
    return found


def rss_mib(pid: int) -> float:
    """VmRSS of the process and its children, in MiB."""
    total_kib = 0
    for each in (pid, *children(pid)):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


class RssSampler:
    """Samples the server's RSS ten times over the soak: a plateau or a steady climb."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stopping.wait(SECONDS / 10):
            self.samples.append(rss_mib(self.pid))


# -- phases -----------------------------------------------------------------------------


def measure_capacity(port: int) -> tuple[float, int]:
    """Closed-loop events/s from 32 connections (the first CAPACITY_EVENTS ids), and how many
    were acknowledged."""
    if CAPACITY > 0:
        return CAPACITY, 0
    # Signed ahead (seconds before use): signing is the sender's cost, not the service's.
    requests = [event_request(i) for i in range(CAPACITY_EVENTS)]
    result = run_load("127.0.0.1", port, requests.__getitem__, len(requests), 32, max_seconds=60)
    if result.errors:
        raise SystemExit(f"soak: {result.errors} errors while measuring capacity")
    return result.rate, result.requests


@dataclass
class Soak:
    """What the open-loop phase did."""

    events: LoadResult
    reads: LoadResult
    rate: float
    read_rate: float


def connections(rate: float, most: int) -> int:
    """Enough connections for `rate`, few enough that none idles past uvicorn's 5 s
    keep-alive (the server would close it and the next request on it would fail)."""
    return max(1, min(most, int(rate)))


def soak(port: int, capacity: float, first_event: int) -> Soak:
    """Events at half `capacity` and reads beside them, bounded by SOAK_SECONDS."""
    rate = capacity / 2
    read_rate = rate * READ_RATIO
    events = Paced(
        lambda i: event_request(first_event + i),
        rate,
        int(rate * SECONDS) + 1,
        concurrency=connections(rate, 32),
    )
    reads = Paced(
        read_request(first_event, rate / read_rate),
        read_rate,
        int(read_rate * SECONDS) + 1,
        concurrency=connections(read_rate, 16),
    )
    sent, read = run_paced("127.0.0.1", port, [events, reads], max_seconds=SECONDS)
    return Soak(sent, read, rate, read_rate)


def caught_up(url: str) -> tuple[int, int]:
    """The store's head and the projection's position, once equal (or CATCH_UP_SECONDS on)."""
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while True:
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        head, position = health["head"], health["projections"]["billing"]["position"]
        if position >= head or time.monotonic() > deadline:
            return head, position
        time.sleep(0.5)


def stored(schema: str) -> int:
    """Rows in the events table."""
    with psycopg.connect(PG) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".ledger_events').fetchone()
    return int(row[0]) if row else 0


# -- report -----------------------------------------------------------------------------


@dataclass
class Report:
    """Every figure the soak prints."""

    capacity: float
    measured: bool
    run: Soak
    sent: int
    stored: int
    head: int
    position: int
    rss_start: float
    rss_end: float
    rss_samples: list[float]

    @property
    def kept_pace(self) -> bool:
        """Whether the service took events as fast as they were due (a soak, not a backlog)."""
        events = self.run.events
        return events.rate >= 0.97 * self.run.rate and events.seconds <= SECONDS + 5

    @property
    def errors(self) -> int:
        """Errors of both streams (any non-200 answer or broken connection)."""
        return self.run.events.errors + self.run.reads.errors

    def lines(self) -> list[str]:
        """The detailed report."""
        run = self.run
        how = "measured" if self.measured else "given"
        return [
            f"soak: {run.events.seconds:.0f} s on PostgreSQL, 1 uvicorn worker, loopback",
            f"capacity ({how}): {self.capacity:,.0f} events/s; target {run.rate:,.0f} events/s "
            f"and {run.read_rate:,.0f} reads/s",
            f"events: {run.events.requests:,} acknowledged at {run.events.rate:,.0f}/s, "
            f"p50 {run.events.percentile(50):.1f} ms, p99 {run.events.percentile(99):.1f} ms, "
            f"errors {run.events.errors}",
            f"reads: {run.reads.requests:,} at {run.reads.rate:,.0f}/s, "
            f"p50 {run.reads.percentile(50):.1f} ms, p99 {run.reads.percentile(99):.1f} ms, "
            f"errors {run.reads.errors}",
            f"kept pace: {'yes' if self.kept_pace else 'NO: the service fell behind'}",
            f"stored: {self.stored:,} of {self.sent:,} acknowledged in all; projection at "
            f"{self.position:,} of head {self.head:,}",
            f"server RSS: {self.rss_start:.0f} MiB at start, {self.rss_end:.0f} MiB at end "
            f"(every tenth: {', '.join(f'{m:.0f}' for m in self.rss_samples)})",
        ]

    def summary(self) -> str:
        """One line for the README's reliability table."""
        run = self.run
        return (
            f"soak {run.events.seconds:.0f} s | {run.rate:,.0f} events/s (half of "
            f"{self.capacity:,.0f}) + {run.read_rate:,.0f} reads/s | sent {self.sent:,}, "
            f"stored {self.stored:,} | errors {self.errors} | read p99 "
            f"{run.reads.percentile(99):.1f} ms | RSS {self.rss_start:.0f} -> "
            f"{self.rss_end:.0f} MiB"
        )


def run(schema: str) -> Report:
    """Start the server, measure, soak, and gather the figures."""
    env = {
        "LEDGER_DATABASE_URL": f"{PG}?schema={schema}",
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "LEDGER_API_TOKEN": TOKEN,
    }
    server = Server(env).start()
    try:
        assert server.process is not None
        capacity, warm = measure_capacity(server.port)
        rss_start = rss_mib(server.process.pid)
        first = CAPACITY_EVENTS if CAPACITY <= 0 else 0  # ids the burst may have used
        with RssSampler(server.process.pid) as sampler:
            result = soak(server.port, capacity, first_event=first)
        head, position = caught_up(server.url)
        rss_end = rss_mib(server.process.pid)
    finally:
        server.stop()
    sent = warm + result.events.requests
    return Report(
        capacity,
        CAPACITY <= 0,
        result,
        sent,
        stored(schema),
        head,
        position,
        rss_start,
        rss_end,
        sampler.samples,
    )


def main() -> int:
    """Run once on a fresh schema; drop it afterwards."""
    schema = f"soak_{uuid.uuid4().hex[:8]}"
    try:
        report = run(schema)
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print("\n".join(report.lines()))
    print(report.summary())
    intact = report.errors == 0 and report.stored == report.sent
    return 0 if intact and report.kept_pace and report.position >= report.head else 1


if __name__ == "__main__":
    sys.exit(main())
