"""Freshness: how soon an acknowledged event is visible, measured as a user would see it.

Against a real `billing-ledger serve` on PostgreSQL (a fresh schema, dropped afterwards):
first closed-loop bursts measure ingest capacity (posts alone) and the capacity of the steady
phase's own work (each 2xx read back: a read costs the server more than a post); then (a)
steady open-loop load at 25%, 50% and 80% of the latter, where every 2xx is followed at once
by the read /billing?success=true makes (`GET /v1/users/U/entitlements?min_position=P`, P
the position the 2xx named): ack p50/p99 and visible-after-ack p50/p99/max; (b) bursts of
signed ~3 KB events at full speed, 32 in flight: the time from the last 2xx until the last
event is visible, beside the burst's own duration (the goal: within a quarter of it).
Reproduce: `PYTHONPATH=. .venv/bin/python bench/freshness.py` (`--seconds 5 --burst 2000`
for a smoke run; `--help` for the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import psycopg

from bench.common import PG
from bench.httpload import get_request, post_request, read_response
from tests.support.server import Server
from tests.support.signing import SECRET, sign
from tests.unit.builders import event, subscription

T = 1767225600
BODY_BYTES = 3000
LOADS = (0.25, 0.5, 0.8)
READ_RETRIES = 20  # each min_position read waits up to 5 s on the server


def webhook(n: int, run: str) -> bytes:
    """A signed ~3 KB subscription event that gives user u_n of this run the pro plan."""
    sub = subscription(
        id=f"sub_{run}_{n}",
        customer=f"cus_{run}_{n}",
        app_user_id=f"u_{run}_{n}",
        period=(T, T + 40 * 86400 * 365),
    )
    envelope = event("customer.subscription.created", sub, id=f"evt_{run}_{n}", created=T + n)
    body = orjson.dumps(envelope)
    sub["metadata"] = {**sub.get("metadata", {}), "note": "x" * max(0, BODY_BYTES - len(body))}
    body = orjson.dumps(envelope)
    return post_request("/webhooks/stripe", body, {"Stripe-Signature": sign(body)})


def visible_read(n: int, run: str, position: int) -> bytes:
    return get_request(f"/v1/users/u_{run}_{n}/entitlements?min_position={position}")


@dataclass
class Sample:
    """What one stream measured: seconds per acknowledgement and per visibility."""

    acks: list[float] = field(default_factory=list)
    visible: list[float] = field(default_factory=list)
    errors: int = 0
    last_ack: float = 0.0
    last_position: int = 0
    last_n: int = 0


def pct(values: list[float], p: float) -> float:
    """Percentile in milliseconds."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int | None:
    """POST one event; the position its 2xx names, or None."""
    writer.write(request)
    status, body = await read_response(reader)
    return int(orjson.loads(body)["position"]) if status == 200 else None


async def _until_visible(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bool:
    for _ in range(READ_RETRIES):
        writer.write(request)
        status, _ = await read_response(reader)
        if status == 200:
            return True
    return False


Acked = asyncio.Queue[tuple[int, int, float] | None]  # (n, position, when its 2xx came); None: stop
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _burst_worker(
    port: int,
    make: Callable[[int], bytes],
    counter: list[int],
    total: int,
    sample: Sample,
    acked: Acked | None = None,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (n := counter[0]) < total:
            counter[0] += 1
            position = await _post(reader, writer, make(n))
            if position is None:
                sample.errors += 1
                continue
            sample.last_ack = time.perf_counter()
            if position > sample.last_position:
                sample.last_position, sample.last_n = position, n
            if acked is not None:
                acked.put_nowait((n, position, sample.last_ack))
    finally:
        writer.close()


def burst(port: int, run: str, total: int, concurrency: int) -> tuple[float, float, Sample]:
    """Send `total` events closed-loop; (burst seconds, last-2xx-to-visible seconds, sample)."""
    requests = [webhook(n, run) for n in range(total)]  # signed ahead: the sender's cost
    sample = Sample()

    async def main() -> tuple[float, float]:
        counter = [0]
        started = time.perf_counter()
        workers = [
            _burst_worker(port, requests.__getitem__, counter, total, sample)
            for _ in range(concurrency)
        ]
        await asyncio.gather(*workers)
        duration = sample.last_ack - started
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            read = visible_read(sample.last_n, run, sample.last_position)
            if not await _until_visible(reader, writer, read):
                return duration, float("inf")
        finally:
            writer.close()
        return duration, time.perf_counter() - sample.last_ack

    duration, lag = asyncio.run(main())
    return duration, lag, sample


async def _steady_poster(
    port: int, run: str, rate: float, counter: list[int], ends: float, acked: Acked, sample: Sample
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    try:
        while (n := counter[0]) < 10**9 and (due := started + n / rate) < ends:
            counter[0] += 1
            request = webhook(n, run)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            position = await _post(reader, writer, request)
            now = time.perf_counter()
            if position is None:
                sample.errors += 1
                continue
            sample.acks.append(now - due)  # from when it was due: no coordinated omission
            acked.put_nowait((n, position, now))
    finally:
        writer.close()


async def _steady_reads(port: int, run: str, acked: Acked, sample: Sample) -> None:
    """Each 2xx read back at once, on a connection of its own while the others are busy, as
    each user's browser reads for itself: a slow read never queues the next user's behind
    it in this client (a fixed set of reading connections had, past the rate they could
    serve, measured the client's queue instead of the server)."""
    idle: list[Connection] = []
    reading: set[asyncio.Task[None]] = set()

    async def one(n: int, position: int, at: float) -> None:
        request = visible_read(n, run, position)
        conn = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
        try:
            seen = await _until_visible(*conn, request)
        except (asyncio.IncompleteReadError, ConnectionError):
            # The server closed this keep-alive connection while it idled (uvicorn's
            # 5 s): open another, as a browser would; the time it takes is counted.
            conn[1].close()
            conn = await asyncio.open_connection("127.0.0.1", port)
            seen = await _until_visible(*conn, request)
        idle.append(conn)
        if seen:
            sample.visible.append(time.perf_counter() - at)
        else:
            sample.errors += 1

    while (item := await acked.get()) is not None:
        task = asyncio.create_task(one(*item))
        reading.add(task)
        task.add_done_callback(reading.discard)
    await asyncio.gather(*reading)
    for _, writer in idle:
        writer.close()


def steady(port: int, run: str, rate: float, seconds: float, concurrency: int) -> Sample:
    """Open-loop load at `rate` events/s for `seconds`; each 2xx is read back at once, on
    connections of their own so that a slow read never holds back the next event."""
    sample = Sample()

    async def main() -> None:
        counter = [0]
        acked: Acked = asyncio.Queue()
        ends = time.perf_counter() + seconds
        reads = asyncio.create_task(_steady_reads(port, run, acked, sample))
        await asyncio.gather(
            *(
                _steady_poster(port, run, rate, counter, ends, acked, sample)
                for _ in range(concurrency)
            )
        )
        acked.put_nowait(None)
        await reads

    asyncio.run(main())
    return sample


def read_back_capacity(port: int, run: str, total: int, concurrency: int) -> float:
    """Events/s of the steady phase's own work, closed loop: `concurrency` connections post
    as fast as they are answered and every 2xx is read back as the steady phase reads it
    (each on a connection of its own while others are busy); until the last read is answered."""
    requests = [webhook(n, run) for n in range(total)]
    sample = Sample()

    async def main() -> float:
        counter, acked = [0], Acked()
        started = time.perf_counter()
        reads = asyncio.create_task(_steady_reads(port, run, acked, sample))
        posters = (
            _burst_worker(port, requests.__getitem__, counter, total, sample, acked)
            for _ in range(concurrency)
        )
        await asyncio.gather(*posters)
        acked.put_nowait(None)
        await reads
        return time.perf_counter() - started

    seconds = asyncio.run(main())
    return len(sample.visible) / seconds  # events acknowledged and seen


def arguments() -> argparse.Namespace:
    top = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    top.add_argument("--seconds", type=float, default=60, help="each steady load's duration")
    top.add_argument("--burst", type=int, default=10_000, help="events per burst")
    top.add_argument("--bursts", type=int, default=3)
    top.add_argument("--capacity-events", type=int, default=6000)
    top.add_argument("--concurrency", type=int, default=32, help="in flight during bursts")
    top.add_argument("--workers", type=int, default=None, help="serve --workers (its default)")
    return top.parse_args()


def main() -> None:
    args = arguments()
    schema = f"bench_fresh_{uuid.uuid4().hex[:8]}"
    env = {"LEDGER_DATABASE_URL": f"{PG}?schema={schema}", "STRIPE_WEBHOOK_SECRET": SECRET}
    server = Server(env, workers=args.workers).start()
    try:
        seconds, _, capacity_sample = burst(server.port, "cap", args.capacity_events, 32)
        ingest = (args.capacity_events - capacity_sample.errors) / seconds
        capacity = read_back_capacity(server.port, "rb", args.capacity_events, 32)
        print(f"freshness: PostgreSQL, serve --workers {args.workers or 'default'}, ~3 KB events")
        print(f"ingest capacity (closed loop, 32 in flight, no reads): {ingest:.0f} events/s")
        print(f"capacity (closed loop, 32 in flight, each 2xx read back): {capacity:.0f} events/s")
        for share in LOADS:
            rate = capacity * share
            s = steady(server.port, f"s{int(share * 100)}", rate, args.seconds, 64)
            print(
                f"steady {share:>4.0%} ({rate:6.0f}/s, {args.seconds:.0f} s): "
                f"ack p50 {pct(s.acks, 50):6.1f} ms p99 {pct(s.acks, 99):7.1f} ms   "
                f"visible p50 {pct(s.visible, 50):6.1f} ms p99 {pct(s.visible, 99):7.1f} ms "
                f"max {pct(s.visible, 100):7.1f} ms   errors {s.errors}"
            )
        for i in range(args.bursts):
            duration, lag, b = burst(server.port, f"b{i}", args.burst, args.concurrency)
            print(
                f"burst {i + 1}: {args.burst} events in {duration:5.2f} s "
                f"({args.burst / duration:5.0f}/s); last 2xx -> visible {lag:5.2f} s "
                f"= {lag / duration:4.2f} of the burst (goal <= 0.25)   errors {b.errors}"
            )
    finally:
        server.stop()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        if os.environ.get("BENCH_SERVER_LOG"):
            print(server.output()[-int(os.environ["BENCH_SERVER_LOG"]) :])


if __name__ == "__main__":
    main()
