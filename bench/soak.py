"""Soak: signed ~3 KB events at half the measured capacity, with entitlement reads for the
users those events touch, against a real uvicorn on PostgreSQL (loopback only; a fresh
schema, dropped afterwards).

Capacity is the capacity of the soak's own work, not of posts alone. A short closed-loop
burst of posts only is measured first and printed, but it is not what the soak halves: it is
over before the runner process and the change feed take their share of the CPU (they start
applying after the first batches are in), and it has no reads. Then a closed-loop phase of
SOAK_CAPACITY_SECONDS (default 30) sends the soak's mix, events with SOAK_READ_RATIO reads
per event beside them, from 32 connections, while the runner applies and the feed follows;
its capacity is the lesser of the events acknowledged per second and the events the
projection applied per second over the same phase (a rate the webhook takes but the
projection cannot follow is not sustained: the backlog grows for as long as it runs). The
soak waits for the projection to catch up, then runs two open-loop streams side by side for
SOAK_SECONDS (default 600): events at half that capacity and reads at SOAK_READ_RATIO reads
per event (SOAK_CAPACITY gives the capacity instead). Both are bounded in count and time. It
reports errors (must be 0), events sent and stored, the webhook and read p99, whether the
projection caught up, and the server's RSS per process (the serving process, uvicorn's
workers if more than one, the runner process) sampled twenty times, with the spread of the
last half (flat: a plateau, not a climb), and the read caches' estimated bytes from
/metrics; then one summary line for the README's reliability table. Exits non-zero on any
error. Reproduce: `PYTHONPATH=. .venv/bin/python bench/soak.py` (SOAK_SECONDS=90 for a short
run; SOAK_WORKERS=2 for two uvicorn workers, serve's default on two cores). A short run ends
where the full one does in memory when its users get as many events: SOAK_SECONDS=300
SOAK_CAPACITY=1890 SOAK_CUSTOMERS=40000 gives each about seven, the present cache fills to
its bound with users of six snapshots (at 96 MiB: 14,212 entries, against the full run's
14,148) and the RSS ends about 20 MiB below the full run's (318 against 337 MiB: the capacity
phase is skipped).
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
CAPACITY_EVENTS = int(os.environ.get("SOAK_CAPACITY_EVENTS", "6000"))  # the posts-only burst
CAPACITY_SECONDS = float(os.environ.get("SOAK_CAPACITY_SECONDS", "30"))  # the mixed phase
WORKERS = int(os.environ.get("SOAK_WORKERS", "1"))
SAMPLES = 20
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


def _vm_rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None  # it ended while we looked
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def _role(pid: int, server: int) -> str:
    """What a process of the server is: serve's own, the runner, or one of uvicorn's."""
    if pid == server:
        return "serve"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if b"project" in argv:
        return "runner"
    return "worker" if any(b"spawn_main" in a for a in argv) else "helper"


def rss_by_process(pid: int) -> dict[str, float]:
    """VmRSS in MiB of the server's process and each descendant, by role (workers numbered
    in pid order)."""
    found: dict[str, float] = {}
    for each in sorted((pid, *children(pid))):
        mib = _vm_rss_mib(each)
        if mib is None:
            continue
        role = _role(each, pid)
        name, n = role, 1
        while name in found:
            n += 1
            name = f"{role} {n}"
        found[name] = mib
    return found


class RssSampler:
    """Samples the server's RSS, per process, SAMPLES times over the soak: a plateau or a
    steady climb."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[dict[str, float]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stopping.wait(SECONDS / SAMPLES):
            self.samples.append(rss_by_process(self.pid))


def cache_figures(url: str) -> dict[str, dict[str, float]]:
    """The read caches' figures from /metrics (of the process that answered), by cache:
    estimated bytes, entries, hits and misses."""
    found: dict[str, dict[str, float]] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("ledger_read_cache_"):
            figure = line.removeprefix("ledger_read_cache_").split("{", 1)[0]
            name = line.split('cache="', 1)[1].split('"', 1)[0]
            found.setdefault(name, {})[figure] = float(line.rsplit(" ", 1)[1])
    return found


def _caches(caches: dict[str, dict[str, float]]) -> str:
    return "; ".join(
        f"{name} {f.get('bytes', 0) / 2**20:.0f} MiB estimated, {f.get('entries', 0):,.0f} "
        f"entries, {f.get('hits', 0):,.0f} hits, {f.get('misses', 0):,.0f} misses"
        for name, f in caches.items()
    )


# -- phases -----------------------------------------------------------------------------


@dataclass
class Capacity:
    """What the capacity phases measured (all 0 when SOAK_CAPACITY gives it)."""

    posts_only: float  # events/s of the closed-loop burst of posts alone
    acked: float  # events/s acknowledged in the mixed closed-loop phase
    applied: float  # events/s the projection applied over that phase
    events: int  # events sent in both phases (their ids come first)

    @property
    def rate(self) -> float:
        """The capacity of the soak's work: what is both acknowledged and applied."""
        return min(self.acked, self.applied)


def applied_position(url: str) -> int:
    """The projection's applied position, as /healthz says."""
    return int(httpx.get(f"{url}/healthz", timeout=10).json()["projections"]["billing"]["position"])


def mixed_request(first_event: int, sent: list[int]) -> Callable[[int], bytes]:
    """Request `i` of the mixed closed loop: SOAK_READ_RATIO reads per event, interleaved;
    each read asks for a user the events sent so far touched. `sent[0]` counts events."""
    every = max(2, round(1 + 1 / READ_RATIO)) if READ_RATIO > 0 else 0

    def make(i: int) -> bytes:
        if every and i % every == every - 1:
            touched = max(1, min(CUSTOMERS, first_event + sent[0]))
            user = (i * 7919) % touched
            path = f"/v1/users/u_{user}/entitlements"
            return get_request(path, {"Authorization": f"Bearer {TOKEN}"})
        sent[0] += 1
        return event_request(first_event + sent[0] - 1)

    return make


def measure_capacity(url: str, port: int) -> Capacity:
    """The posts-only burst (the first CAPACITY_EVENTS ids, signed ahead: signing is the
    sender's cost, not the service's), then the soak's mix in a closed loop for
    CAPACITY_SECONDS from 32 connections with the runner and the feed working beside it."""
    if CAPACITY > 0:
        return Capacity(0, CAPACITY, CAPACITY, 0)
    requests = [event_request(i) for i in range(CAPACITY_EVENTS)]
    burst = run_load("127.0.0.1", port, requests.__getitem__, len(requests), 32, max_seconds=60)
    del requests
    if burst.errors:
        raise SystemExit(f"soak: {burst.errors} errors while measuring capacity")
    caught_up(url)  # the mixed phase starts with no backlog
    sent = [0]
    before = applied_position(url)
    make = mixed_request(burst.requests, sent)
    mixed = run_load("127.0.0.1", port, make, 10**9, 32, max_seconds=CAPACITY_SECONDS)
    applied = applied_position(url) - before
    if mixed.errors:
        raise SystemExit(f"soak: {mixed.errors} errors while measuring capacity")
    seconds = mixed.seconds
    return Capacity(burst.rate, sent[0] / seconds, applied / seconds, burst.requests + sent[0])


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


def _mib(rss: dict[str, float]) -> str:
    return ", ".join(f"{name} {mib:.0f}" for name, mib in rss.items())


@dataclass
class Report:
    """Every figure the soak prints."""

    capacity: Capacity
    run: Soak
    sent: int
    stored: int
    head: int
    position: int
    rss_start: dict[str, float]
    rss_end: dict[str, float]
    rss_samples: list[dict[str, float]]
    caches: dict[str, dict[str, float]]

    @property
    def kept_pace(self) -> bool:
        """Whether the service took events as fast as they were due (a soak, not a backlog)."""
        events = self.run.events
        return events.rate >= 0.97 * self.run.rate and events.seconds <= SECONDS + 5

    @property
    def errors(self) -> int:
        """Errors of both streams (any non-200 answer or broken connection)."""
        return self.run.events.errors + self.run.reads.errors

    @property
    def totals(self) -> list[float]:
        """The whole server's RSS at each sample, MiB."""
        return [sum(sample.values()) for sample in self.rss_samples]

    @property
    def last_half_spread(self) -> float:
        """Greatest minus least total RSS over the last half of the samples, MiB."""
        half = self.totals[len(self.totals) // 2 :]
        return max(half) - min(half) if half else float("nan")

    def lines(self) -> list[str]:
        """The detailed report."""
        run, c = self.run, self.capacity
        measured = (
            f"measured: posts alone {c.posts_only:,.0f}/s (a short burst); the soak's mix "
            f"in a closed loop for {CAPACITY_SECONDS:.0f} s: {c.acked:,.0f} events/s "
            f"acknowledged, {c.applied:,.0f}/s applied by the projection"
            if c.events
            else "given (SOAK_CAPACITY)"
        )
        return [
            f"soak: {run.events.seconds:.0f} s on PostgreSQL, {WORKERS} uvicorn worker(s), "
            "the runner in its own process, loopback",
            f"capacity {c.rate:,.0f} events/s, {measured}",
            f"target {run.rate:,.0f} events/s and {run.read_rate:,.0f} reads/s",
            f"events: {run.events.requests:,} acknowledged at {run.events.rate:,.0f}/s, "
            f"p50 {run.events.percentile(50):.1f} ms, p99 {run.events.percentile(99):.1f} ms, "
            f"errors {run.events.errors}",
            f"reads: {run.reads.requests:,} at {run.reads.rate:,.0f}/s, "
            f"p50 {run.reads.percentile(50):.1f} ms, p99 {run.reads.percentile(99):.1f} ms, "
            f"errors {run.reads.errors}",
            f"kept pace: {'yes' if self.kept_pace else 'NO: the service fell behind'}",
            f"stored: {self.stored:,} of {self.sent:,} acknowledged in all; projection at "
            f"{self.position:,} of head {self.head:,}",
            f"server RSS (MiB) at start: {_mib(self.rss_start)}; at end: {_mib(self.rss_end)}",
            f"server RSS in all, every {SECONDS / SAMPLES:.0f} s: "
            f"{', '.join(f'{m:.0f}' for m in self.totals)} (last half spread "
            f"{self.last_half_spread:.0f} MiB)",
            f"read caches at end (the answering process): {_caches(self.caches)}",
        ]

    def summary(self) -> str:
        """One line for the README's reliability table."""
        run, c = self.run, self.capacity
        return (
            f"soak {run.events.seconds:.0f} s | {run.rate:,.0f} events/s (half of "
            f"{c.rate:,.0f}; posts alone {c.posts_only:,.0f}) + {run.read_rate:,.0f} reads/s | "
            f"sent {self.sent:,}, stored {self.stored:,} | errors {self.errors} | webhook p99 "
            f"{run.events.percentile(99):.1f} ms | read p99 {run.reads.percentile(99):.1f} ms | "
            f"RSS {sum(self.rss_start.values()):.0f} -> {sum(self.rss_end.values()):.0f} MiB, "
            f"last half spread {self.last_half_spread:.0f} MiB"
        )


def run(schema: str) -> Report:
    """Start the server, measure, soak, and gather the figures."""
    env = {
        "LEDGER_DATABASE_URL": f"{PG}?schema={schema}",
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "LEDGER_API_TOKEN": TOKEN,
    }
    server = Server(env, workers=WORKERS).start()
    try:
        assert server.process is not None
        capacity = measure_capacity(server.url, server.port)
        caught_up(server.url)  # the soak starts with no backlog
        rss_start = rss_by_process(server.process.pid)
        with RssSampler(server.process.pid) as sampler:
            result = soak(server.port, capacity.rate, first_event=capacity.events)
        head, position = caught_up(server.url)
        rss_end = rss_by_process(server.process.pid)
        caches = cache_figures(server.url)
    finally:
        server.stop()
    sent = capacity.events + result.events.requests
    return Report(
        capacity,
        result,
        sent,
        stored(schema),
        head,
        position,
        rss_start,
        rss_end,
        sampler.samples,
        caches,
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
