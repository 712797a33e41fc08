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
projection cannot follow is not sustained: the backlog grows for as long as it runs). That
closed loop overstates what an open loop sustains: measured on the first events of a fresh
store (checkouts: cheaper to apply than the subscription updates and invoices that follow)
for 30 s, with 32 requests always waiting (the largest batches at every stage). So open-loop
probes of the same mix follow, SOAK_PROBE_SECONDS each (default 60; 0: none), at 80%, 70%,
... of the closed loop's rate, until one is sustained (acknowledged and applied within 3% of
its rate, p99 at most 1 s, no error); the capacity is that probe's rate. The soak waits for
the projection to catch up, then runs two open-loop streams side by side for SOAK_SECONDS
(default 600): events at half that capacity and reads at SOAK_READ_RATIO reads per event
(SOAK_CAPACITY gives the capacity instead). Both are bounded in count and time. It
reports errors (must be 0), events sent and stored, the webhook and read p99, whether the
projection caught up, and the server's RSS per process (the serving process, uvicorn's
workers if more than one, the runner process) sampled twenty times, with the spread of the
last half (flat: a plateau, not a climb), and the read caches' estimated bytes from
/metrics. A timeline follows, one line per SOAK_INTERVAL seconds (10): the webhook's p50,
p99 and max by when each request was due, events acknowledged and applied a second, the
WAL's bytes a second and per event and its full-page images, PostgreSQL's checkpoints (begun,
writing or syncing) and the buffers written by the checkpointer and by backends, the
writer's transactions and events per transaction, autovacuum at work, the cores used by each
process (serve, the runner, this client, PostgreSQL, anything else on the machine) and the
kernel's CPU and I/O pressure: whether a slow interval is a checkpoint, a vacuum, a batch
growing, or the cores taken. Then the CPU per event in the closed loop and in the soak, the
rows written per table, and what the WAL of the soak's last SOAK_WAL_SECONDS (20; 0: skip)
consists of, by relation (pg_walinspect, in a scratch database of its own); and one summary
line for the README's reliability table. Exits non-zero on any
error. Reproduce: `PYTHONPATH=. .venv/bin/python bench/soak.py` (SOAK_SECONDS=90 for a short
run; SOAK_WORKERS=2 for two uvicorn workers, serve's default on two cores). A short run ends
where the full one does in memory when its users get as many events: SOAK_SECONDS=300
SOAK_CAPACITY=1890 SOAK_CUSTOMERS=40000 gives each about seven, the present cache fills to
its bound with users of six snapshots (at 96 MiB: 14,212 entries, against the full run's
14,148) and the RSS ends about 20 MiB below the full run's (318 against 337 MiB: the capacity
phase is skipped).
"""

from __future__ import annotations

import itertools
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import orjson
import psycopg

from bench.common import PG, envelope, server_role
from bench.httpload import LoadResult, Paced, get_request, post_request, run_load, run_paced
from tests.support.server import Server
from tests.support.signing import SECRET, sign

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
CAPACITY = float(os.environ.get("SOAK_CAPACITY", "0"))  # 0: measure it
CAPACITY_EVENTS = int(os.environ.get("SOAK_CAPACITY_EVENTS", "6000"))  # the posts-only burst
CAPACITY_SECONDS = float(os.environ.get("SOAK_CAPACITY_SECONDS", "30"))  # the mixed phase
# Then open-loop probes of the same mix at these shares of the closed loop's rate, each for
# SOAK_PROBE_SECONDS (0: none, the closed loop's rate is the capacity), until one is
# sustained: the capacity is that probe's rate.
PROBE_SECONDS = float(os.environ.get("SOAK_PROBE_SECONDS", "60"))
PROBE_SHARES = (0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
PROBE_P99_MS = 1000.0
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
INTERVAL = int(os.environ.get("SOAK_INTERVAL", "10"))  # seconds per line of the timeline
# The WAL of the soak's last SOAK_WAL_SECONDS is read back record by record (pg_walinspect)
# to say what it consists of; older WAL may already be recycled. 0: skip it.
WAL_SECONDS = float(os.environ.get("SOAK_WAL_SECONDS", "20"))
SETTINGS = (
    "max_wal_size",
    "checkpoint_timeout",
    "checkpoint_completion_target",
    "shared_buffers",
    "wal_buffers",
    "wal_compression",
    "full_page_writes",
    "synchronous_commit",
    "commit_delay",
    "autovacuum",  # off on some CI servers: then no vacuum or analyze runs beside the soak
    "deadlock_timeout",
)


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


def rss_by_process(pid: int) -> dict[str, float]:
    """VmRSS in MiB of the server's process and each descendant, by role (workers numbered
    in pid order)."""
    found: dict[str, float] = {}
    for each in sorted((pid, *children(pid))):
        mib = _vm_rss_mib(each)
        if mib is None:
            continue
        role = server_role(each, pid)
        name, n = role, 1
        while name in found:
            n += 1
            name = f"{role} {n}"
        found[name] = mib
    return found


class Sampling:
    """A thread running `_run` for the length of a `with` block (`stopping` set at its end)."""

    name = "sampling"

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        raise NotImplementedError


class RssSampler(Sampling):
    """Samples the server's RSS, per process, SAMPLES times over the soak: a plateau or a
    steady climb."""

    name = "rss-sampler"

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[dict[str, float]] = []
        super().__init__()

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


# -- the timeline -------------------------------------------------------------------------

# Sampled every second from PostgreSQL (one connection of the bench's own) and /healthz;
# printed per INTERVAL seconds beside the latencies of the requests due in it.
_SAMPLE_SQL = """
SELECT extract(epoch FROM clock_timestamp()),
       pg_current_wal_lsn() - '0/0'::pg_lsn,
       w.wal_records, w.wal_fpi, w.wal_bytes, w.wal_buffers_full,
       b.checkpoints_timed, b.checkpoints_req, b.buffers_checkpoint, b.buffers_clean,
       b.buffers_backend, b.checkpoint_write_time, b.checkpoint_sync_time,
       (SELECT coalesce(max(wait_event), '') FROM pg_stat_activity
         WHERE backend_type = 'checkpointer'),
       (SELECT coalesce(string_agg(DISTINCT regexp_replace(query,
                 '^autovacuum: (VACUUM|ANALYZE|VACUUM ANALYZE) ([^ ]+\\.)?([^ ]+).*$',
                 '\\1 \\3'), ', '), '')
          FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND query <> '')
  FROM pg_stat_wal w, pg_stat_bgwriter b
"""
# The checkpointer's wait events while it is not between checkpoints: spreading its writes
# (CheckpointWriteDelay or none) or syncing the files it wrote (the fsyncs at its end).
_CHECKPOINTER_IDLE = {"CheckpointerMain"}
_CHECKPOINTER_SYNC = {"DataFileSync", "DataFileFlush", "DataFileImmediateSync", "WALSync"}
_TABLES_SQL = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, autovacuum_count,
       autoanalyze_count
  FROM pg_stat_user_tables WHERE schemaname = %s
"""


def _stalled(resource: str) -> float:
    try:
        some = Path(f"/proc/pressure/{resource}").read_text().split("\n", 1)[0]
    except OSError:
        return 0.0
    return int(some.rsplit("total=", 1)[1]) / 1e6


def cpu_seconds(server: int) -> dict[str, float]:
    """CPU seconds used so far: the machine's busy time in all (/proc/stat), this client,
    each process of the server by role, and every PostgreSQL process together (theirs are
    anyone's: the bench's backends and others')."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    found = {
        "machine": (user + nice + system + irq + softirq) / tick,
        "iowait": iowait / tick,
        "steal": steal / tick,  # time the hypervisor gave another guest
        # Pressure stall information: time some runnable task waited for a core, and some
        # task waited for I/O (seconds; 0 where the kernel has none).
        "cpu_stall": _stalled("cpu"),
        "io_stall": _stalled("io"),
        "client": 0.0,
        "postgres": 0.0,
    }
    ours = {server: "serve", os.getpid(): "client"}
    for pid in children(server):
        ours[pid] = server_role(pid, server)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name, rest = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        used = sum(int(f) for f in rest.split()[11:13]) / tick  # utime, stime
        role = ours.get(int(entry.name))
        if role is None and name.endswith("(postgres"):
            role = "postgres"
        if role is not None:
            found[role] = found.get(role, 0.0) + used
    return found


@dataclass
class Sample:
    """One second's counters (cumulative ones as read) and point observations."""

    at: float  # time.perf_counter()
    wall: float  # the server's clock, seconds since the epoch
    wal: int  # pg_current_wal_lsn() in bytes
    wal_records: int
    wal_fpi: int
    wal_bytes: int
    wal_buffers_full: int
    checkpoints_timed: int
    checkpoints_req: int
    buffers_checkpoint: int
    buffers_clean: int
    buffers_backend: int
    checkpoint_write_ms: float
    checkpoint_sync_ms: float
    checkpointer: str  # its wait event
    autovacuum: str  # what the autovacuum workers run, by table
    head: int
    applied: int
    cpu: dict[str, float]  # cpu_seconds()

    @property
    def checkpoint_phase(self) -> str:
        """'' between checkpoints, 'write' while it spreads its writes, 'sync' at its end."""
        if self.checkpointer in _CHECKPOINTER_IDLE:
            return ""
        return "sync" if self.checkpointer in _CHECKPOINTER_SYNC else "write"


class Timeline(Sampling):
    """Samples PostgreSQL's checkpoint, WAL and autovacuum activity and the store's head and
    the projection's position every second, and each table's row counters every INTERVAL,
    while the soak runs."""

    name = "timeline"

    def __init__(self, url: str, schema: str, server: int) -> None:
        self.url = url
        self.schema = schema
        self.server = server
        self.samples: list[Sample] = []
        self.tables: list[tuple[float, dict[str, tuple[int, ...]]]] = []
        super().__init__()

    def _run(self) -> None:
        with psycopg.connect(PG, autocommit=True) as conn, httpx.Client(timeout=10) as http:
            tick = 0
            while True:
                self.samples.append(self._sample(conn, http))
                if tick % INTERVAL == 0:
                    rows = conn.execute(_TABLES_SQL, (self.schema,)).fetchall()
                    self.tables.append((time.perf_counter(), {r[0]: tuple(r[1:]) for r in rows}))
                tick += 1
                if self.stopping.wait(max(0.0, self.samples[0].at + tick - time.perf_counter())):
                    break
            rows = conn.execute(_TABLES_SQL, (self.schema,)).fetchall()
            self.tables.append((time.perf_counter(), {r[0]: tuple(r[1:]) for r in rows}))

    def _sample(self, conn: psycopg.Connection[Any], http: httpx.Client) -> Sample:
        at = time.perf_counter()
        row = conn.execute(_SAMPLE_SQL).fetchone()
        assert row is not None
        health = http.get(f"{self.url}/healthz").json()
        counts = [int(v) for v in row[1:11]]
        return Sample(
            at=at,
            wall=float(row[0]),
            wal=counts[0],
            wal_records=counts[1],
            wal_fpi=counts[2],
            wal_bytes=counts[3],
            wal_buffers_full=counts[4],
            checkpoints_timed=counts[5],
            checkpoints_req=counts[6],
            buffers_checkpoint=counts[7],
            buffers_clean=counts[8],
            buffers_backend=counts[9],
            checkpoint_write_ms=float(row[11]),
            checkpoint_sync_ms=float(row[12]),
            checkpointer=row[13],
            autovacuum=row[14],
            head=int(health["head"] or 0),
            applied=int(health["projections"]["billing"]["position"]),
            cpu=cpu_seconds(self.server),
        )


def batches_between(schema: str, bounds: list[tuple[int, int]]) -> list[int]:
    """The writer's transactions that stored positions (a, b], for each bound: the distinct
    xmin of those rows (one append call is one transaction)."""
    sql = (
        f'SELECT count(DISTINCT xmin::text) FROM "{schema}".ledger_events '
        "WHERE notification_id > %s AND notification_id <= %s"
    )
    with psycopg.connect(PG) as conn:
        return [int(conn.execute(sql, (a, b)).fetchone()[0]) for a, b in bounds]  # type: ignore[index]


@dataclass
class Interval:
    """One INTERVAL of the timeline."""

    start: float  # seconds from the soak's start
    acked: float  # events/s acknowledged (by when their requests were due)
    applied: float  # events/s the projection's position moved
    p50: float  # webhook latency, ms
    p99: float
    most: float
    read_p99: float
    wal_mb: float  # WAL MB/s
    fpi: float  # full-page images a second
    wal_per_event: float  # WAL bytes per event acknowledged in the interval
    checkpoint: str  # 'started' / write seconds / sync seconds
    buffers: int  # buffers the checkpointer wrote
    backend_buffers: int  # buffers backends had to write themselves
    batches: int  # the writer's transactions
    autovacuum: str
    cpu: dict[str, float]  # cores used, by role (cpu_seconds)
    kinds: str  # the events stored in it (event i's kind turns on i // CUSTOMERS)


def _kind(position: int) -> str:
    """The kind of the event stored at `position` (positions follow ids in the soak)."""
    step = (position - 1) // CUSTOMERS
    return "checkout" if step == 0 else "sub.updated" if step % 3 == 1 else "invoice"


_NOT_PROCESSES = ("machine", "iowait", "steal", "cpu_stall", "io_stall")


def _cores(a: dict[str, float], b: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores used between two cpu_seconds() readings, by role, and 'other': the machine's
    busy time not accounted for by the bench's processes or PostgreSQL's."""
    used = {r: (b.get(r, 0) - a.get(r, 0)) / seconds for r in b}
    ours = sum(v for r, v in used.items() if r not in _NOT_PROCESSES)
    used["other"] = max(0.0, used["machine"] - ours)
    return used


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def intervals(
    timeline: Timeline, events: LoadResult, reads: LoadResult, started: float
) -> list[Interval]:
    """The timeline cut into INTERVALs from `started` (the soak's perf_counter start)."""
    samples = [s for s in timeline.samples if s.at >= started - 1]
    if len(samples) < 2:
        return []
    span = samples[-1].at - started
    count = max(1, int(span // INTERVAL))
    lat: list[list[float]] = [[] for _ in range(count)]
    rlat: list[list[float]] = [[] for _ in range(count)]
    for source, into in ((events, lat), (reads, rlat)):
        for due, latency in zip(source.started, source.latencies, strict=True):
            k = int((due - started) // INTERVAL)
            if 0 <= k < count:
                into[k].append(latency)
    edges = []
    for k in range(count + 1):
        t = started + k * INTERVAL
        edges.append(min(samples, key=lambda s: abs(s.at - t)))
    batches = batches_between(
        timeline.schema, [(a.head, b.head) for a, b in itertools.pairwise(edges)]
    )
    found = []
    for k in range(count):
        a, b = edges[k], edges[k + 1]
        inside = [s for s in samples if a.at <= s.at < b.at]
        seconds = max(1e-9, b.at - a.at)
        phases = [s.checkpoint_phase for s in inside]
        began = (b.checkpoints_timed + b.checkpoints_req) - (
            a.checkpoints_timed + a.checkpoints_req
        )
        checkpoint = " ".join(
            part
            for part in (
                f"start x{began}" if began else "",
                f"write {phases.count('write')}s" if "write" in phases else "",
                f"SYNC {phases.count('sync')}s" if "sync" in phases else "",
            )
            if part
        )
        vacuums = sorted({v for s in inside for v in s.autovacuum.split(", ") if v})
        acked = len(lat[k])
        found.append(
            Interval(
                start=a.at - started,
                acked=acked / seconds,
                applied=(b.applied - a.applied) / seconds,
                p50=_pct(lat[k], 50),
                p99=_pct(lat[k], 99),
                most=max(lat[k], default=float("nan")) * 1000,
                read_p99=_pct(rlat[k], 99),
                wal_mb=(b.wal - a.wal) / seconds / 1e6,
                fpi=(b.wal_fpi - a.wal_fpi) / seconds,
                wal_per_event=(b.wal - a.wal) / max(1, b.head - a.head),
                checkpoint=checkpoint,
                buffers=b.buffers_checkpoint - a.buffers_checkpoint,
                backend_buffers=b.buffers_backend - a.buffers_backend,
                batches=batches[k],
                autovacuum=", ".join(vacuums),
                cpu=_cores(a.cpu, b.cpu, seconds),
                kinds="/".join(
                    dict.fromkeys(_kind(p) for p in (a.head + 1, b.head) if a.head < b.head)
                ),
            )
        )
    return found


def timeline_lines(found: list[Interval]) -> list[str]:
    """The per-interval table."""
    lines = [
        f"timeline, every {INTERVAL} s (latencies by when the request was due; checkpoint: "
        "'start xN' checkpoints begun, seconds sampled writing / SYNCing its files; "
        "ckpt/backend buf: buffers written by the checkpointer / by backends; batches: the "
        "writer's transactions, ev/b events per batch; FPI/s: full-page images written; "
        "cores: the machine's busy / serve's / the runner's / this client's / PostgreSQL's "
        "(anyone's) / other processes' / iowait / steal; stall: share of the time some "
        "runnable task waited for a core / for I/O):",
        "    t  ack/s  appl/s   p50 ms   p99 ms   max ms  read p99  WAL MB/s  FPI/s  "
        "WAL B/ev  ckpt buf  bkend buf  batches  ev/b  cores: all serve run clnt pg oth iow stl  stall: cpu io  "
        "events  checkpoint / autovacuum",
    ]
    for i in found:
        events = i.acked * INTERVAL
        lines.append(
            f"{i.start:5.0f}  {i.acked:5.0f}  {i.applied:6.0f}  {i.p50:7.1f}  {i.p99:7.1f}  "
            f"{i.most:7.1f}  {i.read_p99:8.1f}  {i.wal_mb:8.1f}  {i.fpi:5.0f}  "
            f"{i.wal_per_event:8.0f}  {i.buffers:8d}  {i.backend_buffers:9d}  {i.batches:7d}  "
            f"{events / max(1, i.batches):4.1f}  "
            + " ".join(
                f"{i.cpu.get(r, 0):.2f}"
                for r in (
                    "machine",
                    "serve",
                    "runner",
                    "client",
                    "postgres",
                    "other",
                    "iowait",
                    "steal",
                )
            )
            + f"  {i.cpu.get('cpu_stall', 0):4.0%} {i.cpu.get('io_stall', 0):4.0%}"
            + f"  {i.kinds}  {i.checkpoint}"
            + (f" | av: {i.autovacuum}" if i.autovacuum else "")
        )
    return lines


def table_lines(timeline: Timeline, events: int, applied: int) -> list[str]:
    """Rows written per table over the soak, per acknowledged and per applied event."""
    if len(timeline.tables) < 2:
        return []
    first, last = timeline.tables[0][1], timeline.tables[-1][1]
    lines = [
        "rows written over the soak, per table (per acknowledged event for the store's, "
        "per applied event for the rest): inserted / updated (HOT) / deleted; autovacuums, "
        "autoanalyzes"
    ]
    for name in sorted(last):
        before = first.get(name, (0,) * 6)
        d = [x - y for x, y in zip(last[name], before, strict=True)]
        if not any(d):
            continue
        per = events if name.startswith("ledger_") else applied
        per = max(1, per)
        lines.append(
            f"  {name}: {d[0] / per:.2f} / {d[1] / per:.2f} ({d[3] / per:.2f}) / "
            f"{d[2] / per:.2f}; {d[4]}, {d[5]}"
        )
    return lines


_WAL_SQL = """
SELECT coalesce(substring(block_ref FROM 'rel \\d+/(\\d+)/\\d+'), '0'),
       coalesce(substring(block_ref FROM 'rel \\d+/\\d+/(\\d+)'), '0'),
       resource_manager, count(*), sum(record_length), sum(fpi_length)
  FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn) GROUP BY 1, 2, 3
"""
_RELATIONS_SQL = """
SELECT c.relfilenode, c.relname, c.reltoastrelid, i.indexrelid
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_index i ON i.indrelid = c.reltoastrelid
 WHERE n.nspname = %s AND c.relkind IN ('r', 'i')
"""


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def wal_composition(schema: str, start: Sample, end: Sample) -> list[str]:
    """What the WAL between two samples consists of, by relation of the soak's schema and
    record kind (pg_walinspect, in a scratch database of the bench's own, dropped after):
    bytes per acknowledged event for the store's tables, per applied event for the rest."""
    scratch = f"soakwal_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        dboid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
        ours = str(dboid.fetchone()[0])  # type: ignore[index]
        names: dict[str, str] = {}
        for node, name, toast, toast_index in conn.execute(_RELATIONS_SQL, (schema,)):
            names[str(node)] = name
            if toast:
                row = conn.execute(
                    "SELECT relfilenode FROM pg_class WHERE oid = %s", (toast,)
                ).fetchone()
                names[str(row[0])] = f"{name} (toast)"  # type: ignore[index]
            if toast_index:
                row = conn.execute(
                    "SELECT relfilenode FROM pg_class WHERE oid = %s", (toast_index,)
                ).fetchone()
                names[str(row[0])] = f"{name} (toast index)"  # type: ignore[index]
        conn.execute(f'CREATE DATABASE "{scratch}"')
    try:
        with psycopg.connect(PG.rsplit("/", 1)[0] + f"/{scratch}", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_walinspect")
            rows = conn.execute(_WAL_SQL, (_lsn(start.wal), _lsn(end.wal))).fetchall()
    except psycopg.Error as error:
        return [f"WAL composition: not read ({error})".strip()]
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{scratch}"')
    acked = max(1, end.head - start.head)
    applied = max(1, end.applied - start.applied)
    by: dict[str, list[int]] = {}
    for db, node, manager, count, size, fpi in rows:
        if node == "0":
            name = f"({manager}: no relation)"
        elif db == ours and node in names:
            name = names[node]
        else:
            name = f"(other: {manager})"
        into = by.setdefault(name, [0, 0, 0])
        into[0] += int(count)
        into[1] += int(size)
        into[2] += int(fpi)
    total = sum(v[1] for v in by.values())
    seconds = end.at - start.at
    lines = [
        f"WAL composition over {seconds:.0f} s ({total / 1e6:.1f} MB, {acked:,} events stored, "
        f"{applied:,} applied; {total / acked:,.0f} bytes per stored event): by relation, "
        "records, bytes, of which full-page images, bytes per event"
    ]
    for name, (count, size, fpi) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        per = acked if name.startswith("ledger_") else applied
        lines.append(
            f"  {name}: {count:,} records, {size / 1e6:.1f} MB ({size / total:.0%}), FPI "
            f"{fpi / 1e6:.1f} MB; {size / per:,.0f} B/event"
        )
    return lines


# -- phases -----------------------------------------------------------------------------


@dataclass
class Capacity:
    """What the capacity phases measured (all 0 when SOAK_CAPACITY gives it)."""

    posts_only: float  # events/s of the closed-loop burst of posts alone
    acked: float  # events/s acknowledged in the mixed closed-loop phase
    applied: float  # events/s the projection applied over that phase
    events: int  # events sent in every phase (their ids come first)
    cpu: dict[str, float] = field(default_factory=dict)  # cores used in the mixed phase
    probes: list[Probe] = field(default_factory=list)  # the open-loop probes, in order

    @property
    def closed(self) -> float:
        """What the closed loop both acknowledged and applied a second."""
        return min(self.acked, self.applied)

    @property
    def rate(self) -> float:
        """The capacity of the soak's work: the greatest open-loop rate a probe sustained
        (the closed loop's when no probe ran)."""
        held = [p.rate for p in self.probes if p.sustained]
        if self.probes:
            return max(held) if held else min(p.rate for p in self.probes)
        return self.closed


@dataclass
class Probe:
    """One open-loop probe of the soak's mix at `rate` for SOAK_PROBE_SECONDS."""

    rate: float
    run: Soak
    applied: float  # events/s the projection applied over the probe
    cores: dict[str, float]

    @property
    def sustained(self) -> bool:
        """Taken as fast as due, applied as fast, no error, and no queue growing through
        it (a queue that grows for the whole probe puts its p99 past PROBE_P99_MS)."""
        events = self.run.events
        return (
            events.errors == 0
            and self.run.reads.errors == 0
            and events.rate >= 0.97 * self.rate
            and self.applied >= 0.97 * self.rate
            and events.percentile(99) <= PROBE_P99_MS
        )

    def line(self) -> str:
        """What the probe saw."""
        e = self.run.events
        return (
            f"  probe {self.rate:,.0f}/s for {e.seconds:.0f} s: acknowledged {e.rate:,.0f}/s, "
            f"applied {self.applied:,.0f}/s, p50 {e.percentile(50):.1f} ms, p99 "
            f"{e.percentile(99):.1f} ms, reads p99 {self.run.reads.percentile(99):.1f} ms, "
            f"cores busy {self.cores.get('machine', 0):.2f} (other processes "
            f"{self.cores.get('other', 0):.2f}), a task waiting for a core "
            f"{self.cores.get('cpu_stall', 0):.0%} of the time: "
            f"{'sustained' if self.sustained else 'not'}"
        )


def probe(url: str, port: int, server: int, rate: float, first_event: int) -> Probe:
    """The soak's mix open loop at `rate` for SOAK_PROBE_SECONDS, from no backlog."""
    caught_up(url)
    before, cpu_before, started = applied_position(url), cpu_seconds(server), time.perf_counter()
    run = paced_mix(port, rate, first_event, PROBE_SECONDS)
    seconds = time.perf_counter() - started
    applied = (applied_position(url) - before) / seconds
    return Probe(rate, run, applied, _cores(cpu_before, cpu_seconds(server), seconds))


def sustained_probes(url: str, port: int, server: int, closed: float, first: int) -> list[Probe]:
    """Open-loop probes at falling shares of the closed loop's rate until one is sustained."""
    found: list[Probe] = []
    for share in PROBE_SHARES:
        found.append(probe(url, port, server, closed * share, first))
        first += found[-1].run.events.requests + found[-1].run.events.errors
        if found[-1].sustained:
            break
    return found


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


def measure_capacity(url: str, port: int, server: int) -> Capacity:
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
    before, cpu_before = applied_position(url), cpu_seconds(server)
    make = mixed_request(burst.requests, sent)
    mixed = run_load("127.0.0.1", port, make, 10**9, 32, max_seconds=CAPACITY_SECONDS)
    applied = applied_position(url) - before
    cores = _cores(cpu_before, cpu_seconds(server), mixed.seconds)
    if mixed.errors:
        raise SystemExit(f"soak: {mixed.errors} errors while measuring capacity")
    seconds = mixed.seconds
    found = Capacity(
        burst.rate, sent[0] / seconds, applied / seconds, burst.requests + sent[0], cores
    )
    if PROBE_SECONDS > 0:
        found.probes = sustained_probes(url, port, server, found.closed, found.events)
        found.events += sum(p.run.events.requests + p.run.events.errors for p in found.probes)
    return found


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


def paced_mix(port: int, rate: float, first_event: int, seconds: float) -> Soak:
    """Events at `rate` from id `first_event` and reads beside them, open loop, bounded by
    `seconds`."""
    read_rate = rate * READ_RATIO
    events = Paced(
        lambda i: event_request(first_event + i),
        rate,
        int(rate * seconds) + 1,
        concurrency=connections(rate, 32),
    )
    reads = Paced(
        read_request(first_event, rate / read_rate),
        read_rate,
        int(read_rate * seconds) + 1,
        concurrency=connections(read_rate, 16),
    )
    sent, read = run_paced("127.0.0.1", port, [events, reads], max_seconds=seconds)
    return Soak(sent, read, rate, read_rate)


def soak(port: int, capacity: float, first_event: int) -> Soak:
    """Events at half `capacity` and reads beside them, bounded by SOAK_SECONDS."""
    return paced_mix(port, capacity / 2, first_event, SECONDS)


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
    settings: dict[str, str]
    timeline: list[str]

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
            + (
                f"; the greatest rate an open-loop probe of the mix sustained "
                f"({c.rate / c.closed:.0%} of the closed loop's):"
                if c.probes
                else ""
            )
            if c.events
            else "given (SOAK_CAPACITY)"
        )
        return [
            f"soak: {run.events.seconds:.0f} s on PostgreSQL, {WORKERS} uvicorn worker(s), "
            "the runner in its own process, loopback",
            f"capacity {c.rate:,.0f} events/s, {measured}",
            *(p.line() for p in c.probes),
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
            "PostgreSQL: " + ", ".join(f"{k} {v}" for k, v in self.settings.items()),
            *self.timeline,
        ]

    def summary(self) -> str:
        """One line for the README's reliability table."""
        run, c = self.run, self.capacity
        return (
            f"soak {run.events.seconds:.0f} s | {run.rate:,.0f} events/s (half of "
            f"{c.rate:,.0f} sustained open loop; closed loop {c.closed:,.0f}; posts alone "
            f"{c.posts_only:,.0f}) + {run.read_rate:,.0f} reads/s | "
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
        capacity = measure_capacity(server.url, server.port, server.process.pid)
        caught_up(server.url)  # the soak starts with no backlog
        rss_start = rss_by_process(server.process.pid)
        with (
            RssSampler(server.process.pid) as sampler,
            Timeline(server.url, schema, server.process.pid) as timeline,
        ):
            started = time.perf_counter()
            result = soak(server.port, capacity.rate, first_event=capacity.events)
        head, position = caught_up(server.url)
        timeline_text = describe_timeline(timeline, result, started, capacity)
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
        settings(),
        timeline_text,
    )


def settings() -> dict[str, str]:
    """PostgreSQL's settings that shape checkpoints and commits, as the server has them."""
    with psycopg.connect(PG) as conn:
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in SETTINGS}  # type: ignore[index]


def _per_event(cores: dict[str, float], rate: float) -> str:
    roles = ("machine", "serve", "runner", "client", "postgres", "other")
    return ", ".join(f"{r} {cores.get(r, 0) / max(rate, 1e-9) * 1e6:,.0f}" for r in roles)


def describe_timeline(
    timeline: Timeline, result: Soak, started: float, capacity: Capacity
) -> list[str]:
    """The timeline, the CPU per event, the rows written per table, the WAL per event and
    its composition."""
    events, reads = result.events, result.reads
    if events.started:
        started = events.started[0]  # request 0 was due at the soak's start
    found = intervals(timeline, events, reads, started)
    samples = [s for s in timeline.samples if s.at >= started - 1]
    lines = timeline_lines(found)
    if capacity.cpu:
        lines.append(
            f"CPU per event (us; reads included) in the closed loop at {capacity.closed:,.0f}/s: "
            f"{_per_event(capacity.cpu, capacity.acked)}"
        )
    if len(samples) >= 2:
        a, b = samples[0], samples[-1]
        soaked = _cores(a.cpu, b.cpu, b.at - a.at)
        lines.append(
            f"CPU per event (us; reads included) in the soak at {result.rate:,.0f}/s: "
            f"{_per_event(soaked, (b.head - a.head) / (b.at - a.at))}"
        )
        stored_events, applied = max(1, b.head - a.head), max(1, b.applied - a.applied)
        lines.append(
            f"WAL over the soak: {(b.wal - a.wal) / 1e9:.2f} GB, {(b.wal - a.wal) / stored_events:,.0f} "
            f"bytes per stored event ({stored_events:,} stored, {applied:,} applied), "
            f"{(b.wal_fpi - a.wal_fpi) / max(1, b.wal_records - a.wal_records):.0%} of records "
            f"with a full-page image; checkpoints begun {b.checkpoints_req - a.checkpoints_req} "
            f"on WAL, {b.checkpoints_timed - a.checkpoints_timed} on time; WAL buffers full "
            f"{b.wal_buffers_full - a.wal_buffers_full} times"
        )
        lines += table_lines(timeline, stored_events, applied)
        if WAL_SECONDS > 0:
            window = [s for s in samples if s.at >= b.at - WAL_SECONDS]
            lines += wal_composition(timeline.schema, window[0], b)
    return lines


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
