"""GET /healthz and GET /metrics: no token needed, and an answer within a second always.

The status is read in a thread of its own (never the request threadpool, which reads may
fill) and awaited briefly; when the database does not answer in time, the last known status
is served as degraded, with its age. A check still running is joined, not started again.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from billing_ledger.ledger.chain import describe
from billing_ledger.ledger.store import StorageError

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

ANSWER_WITHIN = 0.8  # seconds a check may take before the last known status is served

Status = tuple[int, dict[str, Any]]


def _health(deps: Services) -> Status:
    projections: dict[str, Any] = deps.runner.status() if deps.runner is not None else {}
    try:
        head = deps.store.head()
        chain = describe(deps.store.chain_head())
    except StorageError as e:
        return 503, {
            "status": "degraded",
            "head": None,
            "projections": projections,
            "error": str(e),
        }
    deps.metrics.head.set(head)
    for name, info in projections.items():
        deps.metrics.projection_position.labels(name).set(info["position"])
        deps.metrics.projection_lag.labels(name).set(max(0, head - info["position"]))
        deps.metrics.projection_skipped.labels(name).set(info.get("skipped_total", 0))
    failing = any(info.get("error") for info in projections.values())
    return 200, {
        "status": "degraded" if failing else "ok",
        "head": head,
        "projections": projections,
        "chain": chain,  # the hash chain's head: note it, and `verify` proves what precedes it
    }


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
            return 503, {"status": "degraded", "head": None, "projections": {}, "error": message}
        read_at, (_, body) = self._last
        age = time.monotonic() - read_at
        return 503, {
            **body,
            "status": "degraded",
            "error": f"{message}; head and positions as read {age:.1f} s ago",
            "age_seconds": round(age, 1),
        }


def _checker(request: Request) -> HealthCheck:
    state = request.app.state
    if not hasattr(state, "health"):
        state.health = HealthCheck(request.state.deps)
    checker: HealthCheck = state.health
    return checker


async def healthz(request: Request) -> Response:
    """Liveness plus the store's head and each projection's position and error."""
    status, body = await _checker(request).status()
    return JSONResponse(body, status_code=status)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    deps: Services = request.state.deps
    await _checker(request).status()  # refresh the head and lag gauges
    if deps.reads is not None:
        deps.metrics.observe_reads(deps.reads.cache_stats(), deps.reads.watch.waiting)
    return Response(generate_latest(deps.metrics.registry), media_type=CONTENT_TYPE_LATEST)
