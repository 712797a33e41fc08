"""Ingest throughput: signed ~3 KB events from 32 concurrent clients into a real uvicorn on PostgreSQL.

Prints events/s and p50/p99 beside, in the same run: the same client against a no-op endpoint,
and the same service with group commit off (one event per transaction). Then, when the peer
(@supabase/stripe-sync-engine) is installed under build/peer (the README's benchmark section
says how), alternating rounds of the peer and `billing-ledger serve` (its defaults), the same
client posting the same signed payloads to each: the ratio of events/s, how far our
projection is two seconds after each round and how soon after its last 2xx it had applied
everything (beside the round's duration: the issue's bound is a quarter of it), and the CPU
each side spent per event (the client, the server's processes, PostgreSQL's): against two
cores, what a rate would need. The one-worker runs print their CPU per event too.
Reproduce: `make bench`, or `PYTHONPATH=. .venv/bin/python bench/ingest.py` (BENCH_EVENTS=N;
BENCH_PEER_ROUNDS=R and BENCH_PEER_EVENTS=N for the peer's rounds, BENCH_PEER_ROUNDS=0 skips).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import httpx
import psycopg

from bench.common import server_role
from bench.httpload import LoadResult, post_request, run_load
from tests.support.server import Server, free_port
from tests.support.signing import SECRET, event_body, sign

PG = os.environ.get("LEDGER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/ledger_test")
EVENTS = int(os.environ.get("BENCH_EVENTS", "20000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
PEER_DIR = Path(os.environ.get("BENCH_PEER_DIR", "build/peer"))
PEER_ROUNDS = int(os.environ.get("BENCH_PEER_ROUNDS", "3"))
# Rounds of 20,000: the ledger took rounds of 5,000 in under a second, its start and warm-up
# weighed in and its rate fell round after round; at 20,000 (6-7 s a round) it did not.
PEER_EVENTS = int(os.environ.get("BENCH_PEER_EVENTS", "20000"))
PEER_PORT = 8787


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


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """Seconds of CPU (user + system) a process has used so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: its parent and its command name."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    head, tail = f.read().rsplit(")", 1)
            except OSError:
                continue
            found[int(entry)] = (int(tail.split()[1]), head.split("(", 1)[1])
    return found


def _groups(root: int) -> dict[str, list[int]]:
    """The server's processes (`root` and its descendants) and PostgreSQL's (all of them)."""
    table = _processes()
    tree, grown = {root}, True
    while grown:
        more = {pid for pid, (parent, _) in table.items() if parent in tree} - tree
        tree |= more
        grown = bool(more)
    postgres = [pid for pid, (_, name) in table.items() if name == "postgres"]
    return {"server": sorted(tree), "PostgreSQL": postgres}


def _role(pid: int, root: int) -> str:
    """What a server process is here: the projection runner, or HTTP (the rest)."""
    return "runner" if server_role(pid, root) == "runner" else "HTTP"


def _port_owners(pids: list[int]) -> dict[int, int]:
    """The local TCP port of each socket these processes hold, and which of them holds it."""
    inodes = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[int(target[8:-1])] = pid
    owners = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            inode = int(fields[9])
            if inode in inodes:
                owners[int(fields[1].rsplit(":", 1)[1], 16)] = inodes[inode]
    return owners


def _backends() -> dict[int, int | None]:
    """Each PostgreSQL client backend and its client's TCP port (None: a socket file)."""
    with psycopg.connect(PG, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE backend_type = 'client backend'"
        ).fetchall()
    return {pid: port for pid, port in rows}


@dataclass
class CpuUse:
    """CPU seconds per event of the client, the server and PostgreSQL over one load; `parts`
    splits the server's (HTTP, runner) and PostgreSQL's (its backends by the server process
    they serve, and the rest: background processes, other clients)."""

    client: float
    server: float
    postgres: float
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.client + self.server + self.postgres

    def line(self) -> str:
        rate = 2 / self.total if self.total else float("nan")
        parts = ", ".join(f"{name} {us * 1e6:.0f}" for name, us in self.parts.items() if us)
        return (
            f"CPU per event: client {self.client * 1e6:.0f} us, server {self.server * 1e6:.0f} us, "
            f"PostgreSQL {self.postgres * 1e6:.0f} us: {self.total * 1e6:.0f} us "
            f"(two cores of it: {rate:,.0f} events/s)"
            + (f"\n    of which (us): {parts}" if parts else "")
        )


def measured(root: int, port: int, requests: list[bytes]) -> tuple[LoadResult, CpuUse]:
    """The load, and the CPU each side spent on it (PostgreSQL: all its processes, so the
    figure is the service's only on a machine doing nothing else; backends that start during
    the load count from 0, those that end during it are missed)."""
    groups = _groups(root)
    server = groups["server"]
    before = {pid: _cpu(pid) for pid in server + groups["PostgreSQL"]}
    mine = resource.getrusage(resource.RUSAGE_SELF)
    result = measure(port, requests)
    after = resource.getrusage(resource.RUSAGE_SELF)
    postgres = set(groups["PostgreSQL"]) | set(_groups(root)["PostgreSQL"])
    used = {pid: _cpu(pid) - before.get(pid, 0.0) for pid in set(server) | postgres}
    owners, backends = _port_owners(server), _backends()
    serving = {"HTTP": "PostgreSQL for HTTP", "runner": "PostgreSQL for the runner"}
    parts = dict.fromkeys(["HTTP", "runner", *serving.values(), "PostgreSQL other"], 0.0)
    for pid in server:
        parts[_role(pid, root)] += used[pid]
    for pid in postgres:
        owner = owners.get(backends.get(pid) or -1)
        parts["PostgreSQL other" if owner is None else serving[_role(owner, root)]] += used[pid]
    client = after.ru_utime - mine.ru_utime + after.ru_stime - mine.ru_stime
    events = max(1, result.requests)
    per = {name: seconds / events for name, seconds in parts.items()}
    return result, CpuUse(
        client / events,
        sum(used[p] for p in server) / events,
        sum(used[p] for p in postgres) / events,
        per,
    )


def ledger_run(schema: str, batch: int, count: int) -> tuple[LoadResult, CpuUse]:
    env = {
        "LEDGER_DATABASE_URL": f"{PG}?schema={schema}",
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "LEDGER_WRITER_MAX_BATCH": str(batch),
    }
    server = Server(env).start()
    assert server.process is not None
    try:
        requests = signed_requests(f"{schema}_{batch}", count)
        return measured(server.process.pid, server.port, requests)
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


def peer_module() -> ModuleType | None:
    """The peer's own bench module (its payloads, database reset, migrations and server),
    from its installed copy; None when it is not installed."""
    if not (PEER_DIR / "node_modules").is_dir() or not (PEER_DIR / "bench_peer.py").is_file():
        return None
    sys.path.insert(0, str(PEER_DIR.resolve()))
    import bench_peer  # type: ignore[import-not-found]

    module: ModuleType = bench_peer
    # The peer's own setup steps: its role, and its migrations over TCP as the superuser.
    with psycopg.connect(PG, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'peer_sync'").fetchone():
            conn.execute("CREATE ROLE peer_sync LOGIN CREATEDB PASSWORD 'peer_sync'")
    os.environ.setdefault("MIGRATE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/peer_sync")
    return module


def peer_round(peer: ModuleType, signed: list[bytes]) -> tuple[LoadResult, CpuUse]:
    """The peer on a fresh database with its migrations, then the load."""
    peer.reset_db()
    peer.migrate()
    log = Path(tempfile.gettempdir()) / "ledger-bench-peer.log"
    server = peer.PeerServer(PEER_PORT, peer.DEFAULT_SECRET, log)
    server.start()
    try:
        return measured(server.pid, PEER_PORT, signed)
    finally:
        server.stop()


def ledger_round(secret: str, signed: list[bytes]) -> tuple[LoadResult, CpuUse, Caught]:
    """`serve` with its defaults on a fresh schema; the load, then how soon it caught up."""
    schema = f"bench_peer_{uuid.uuid4().hex[:8]}"
    env = {"LEDGER_DATABASE_URL": f"{PG}?schema={schema}", "STRIPE_WEBHOOK_SECRET": secret}
    server = Server(env, workers=None).start()
    assert server.process is not None
    try:
        result, cpu = measured(server.process.pid, server.port, signed)
        return result, cpu, caught_up(server.url)
    finally:
        server.stop()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@dataclass
class Caught:
    """How far the projection was two seconds after the load, and when it had it all."""

    position: int
    head: int
    seconds: float | None  # after the last 2xx; None: not within CATCH_UP_SECONDS


CATCH_UP_SECONDS = 30.0


def caught_up(url: str) -> Caught:
    """Poll /healthz from the last 2xx until the projection has applied the head."""
    started = time.monotonic()
    at_two: tuple[int, int] | None = None
    while True:
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        position = int(health["projections"]["billing"]["position"])
        head, waited = int(health["head"]), time.monotonic() - started
        if at_two is None and (waited >= 2 or position >= head):
            at_two = (position, head)
        if position >= head or waited >= CATCH_UP_SECONDS:
            done = waited if position >= head else None
            return Caught(at_two[0], at_two[1], done)
        time.sleep(0.02)


def side_by_side() -> None:
    """Alternating rounds: the peer, then the ledger, the same signed payloads to each."""
    peer = peer_module() if PEER_ROUNDS > 0 else None
    if peer is None:
        print(f"peer: not installed under {PEER_DIR} (see the README), rounds skipped")
        return
    payloads = [body for _, body in peer.build_bench_events(PEER_EVENTS)]
    print(f"side by side: {PEER_EVENTS} events of the peer's bench, {CONCURRENCY} in flight")
    for r in range(1, PEER_ROUNDS + 1):
        signed = [  # signed per round: rounds outlast the 5-minute tolerance
            post_request("/webhooks/stripe", body, {"Stripe-Signature": sig})
            for body, sig in peer.sign_all(payloads, peer.DEFAULT_SECRET)
        ]
        theirs, their_cpu = peer_round(peer, signed)
        ours, our_cpu, caught = ledger_round(peer.DEFAULT_SECRET, signed)
        print(line(f"round {r}: peer", theirs))
        print(f"round {r}: peer   {their_cpu.line()}")
        print(line(f"round {r}: ledger (serve defaults)", ours))
        print(f"round {r}: ledger {our_cpu.line()}")
        print(
            f"round {r}: ledger / peer {ours.rate / theirs.rate:.2f}x   "
            f"projected 2 s after: {caught.position} of {caught.head} "
            f"({caught.position / max(1, caught.head):.0%}); {_caught_line(caught, ours)}"
        )


def _caught_line(caught: Caught, load: LoadResult) -> str:
    if caught.seconds is None:
        return f"not caught up {CATCH_UP_SECONDS:.0f} s after the last 2xx"
    return (
        f"caught up {caught.seconds:.2f} s after the last 2xx "
        f"({caught.seconds / load.seconds:.2f} of the round's {load.seconds:.2f} s)"
    )


def main() -> None:
    schema = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    try:
        noop = noop_run(EVENTS)
        single, single_cpu = ledger_run(schema, batch=1, count=max(2000, EVENTS // 4))
        grouped, grouped_cpu = ledger_run(schema, batch=200, count=EVENTS)
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print(
        f"ingest: {EVENTS} signed 3 KB events, {CONCURRENCY} concurrent clients, PostgreSQL, 1 uvicorn worker"
    )
    print(line("no-op POST (same client)", noop))
    print(line("ledger, one event per transaction", single))
    print(f"  {single_cpu.line()}")
    print(line("ledger, group commit", grouped))
    print(f"  {grouped_cpu.line()}")
    print(
        f"group commit / one-per-transaction: {grouped.rate / single.rate:.2f}x   "
        f"group commit / no-op: {grouped.rate / noop.rate:.2f}"
    )
    side_by_side()


if __name__ == "__main__":
    main()
