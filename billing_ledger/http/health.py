"""GET /healthz and GET /metrics: no token needed, and an answer within a second always.

The status is read in a thread of its own (never the request threadpool, which reads may
fill) and awaited briefly; when the database does not answer in time, the last known status
is served as degraded, with its age. A check still running is joined, not started again.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from billing_ledger.http import wire
from billing_ledger.http.wire import answer
from billing_ledger.ledger.chain import describe
from billing_ledger.ledger.store import StorageError

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

ANSWER_WITHIN = 0.8  # seconds a check may take before the last known status is served

Status = tuple[int, wire.Health]


def _projections(deps: Services) -> dict[str, wire.ProjectionStatus]:
    found = deps.runner.status() if deps.runner is not None else {}
    return msgspec.convert(found, dict[str, wire.ProjectionStatus])


def _health(deps: Services) -> Status:
    projections = _projections(deps)
    try:
        head = deps.store.head()
        chain = msgspec.convert(describe(deps.store.chain_head()), wire.ChainHead)
    except StorageError as e:
        return 503, wire.Health("degraded", None, projections, error=str(e))
    _observe(deps, head, projections)
    failing = any(info.error for info in projections.values())
    # The hash chain's head: note it, and `verify` proves what precedes it.
    return 200, wire.Health("degraded" if failing else "ok", head, projections, chain)


def _observe(deps: Services, head: int, projections: dict[str, wire.ProjectionStatus]) -> None:
    deps.metrics.head.set(head)
    for name, info in projections.items():
        skipped = info.skipped_total if isinstance(info.skipped_total, int) else 0
        deps.metrics.projection_position.labels(name).set(info.position)
        deps.metrics.projection_lag.labels(name).set(max(0, head - info.position))
        deps.metrics.projection_skipped.labels(name).set(skipped)


class HealthCheck:
    """The last status read from the database, and the one check that may be running."""

    def __init__(self, deps: Services, within: float = ANSWER_WITHIN) -> None:
        self.deps = deps
        self.within = within
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="healthz")
        self._running: asyncio.Future[Status] | None = None
        self._last: tuple[float, Status] | None = None

    async def status(self) -> Status:
        """A fresh status, or the last known one marked degraded when none comes in time."""
        loop = asyncio.get_running_loop()
        running = self._running
        if running is None or running.done() or running.get_loop() is not loop:
            running = loop.run_in_executor(self._pool, _health, self.deps)
            self._running = running
        try:
            found = await asyncio.wait_for(asyncio.shield(running), self.within)
        except TimeoutError:
            return self._stale()
        self._last = (time.monotonic(), found)
        return found

    def _stale(self) -> Status:
        message = f"storage did not answer within {self.within:g} s"
        if self._last is None:
            return 503, wire.Health("degraded", None, {}, error=message)
        read_at, (_, body) = self._last
        age = time.monotonic() - read_at
        return 503, msgspec.structs.replace(
            body,
            status="degraded",
            error=f"{message}; head and positions as read {age:.1f} s ago",
            age_seconds=round(age, 1),
        )


def _checker(request: Request) -> HealthCheck:
    state = request.app.state
    if not hasattr(state, "health"):
        state.health = HealthCheck(request.state.deps)
    checker: HealthCheck = state.health
    return checker


async def healthz(request: Request) -> Response:
    """Liveness plus the store's head and each projection's position and error."""
    status, body = await _checker(request).status()
    return answer(body, status)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    deps: Services = request.state.deps
    await _checker(request).status()  # refresh the head and lag gauges
    deps.metrics.observe_reads(deps.reads.cache_stats(), deps.reads.watch.waiting)
    return Response(generate_latest(deps.metrics.registry), media_type=CONTENT_TYPE_LATEST)
