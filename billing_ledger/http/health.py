"""GET /healthz and GET /metrics: no token needed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from billing_ledger.ledger.chain import describe
from billing_ledger.ledger.store import StorageError

if TYPE_CHECKING:
    from billing_ledger.bootstrap import Deps


def _health(deps: Deps) -> tuple[int, dict[str, Any]]:
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
    failing = any(info.get("error") for info in projections.values())
    return 200, {
        "status": "degraded" if failing else "ok",
        "head": head,
        "projections": projections,
        "chain": chain,  # the hash chain's head: note it, and `verify` proves what precedes it
    }


async def healthz(request: Request) -> Response:
    """Liveness plus the store's head and each projection's position and error."""
    status, body = await run_in_threadpool(_health, request.state.deps)
    return JSONResponse(body, status_code=status)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    deps: Deps = request.state.deps
    await run_in_threadpool(_health, deps)  # refresh the head and lag gauges
    return Response(generate_latest(deps.metrics.registry), media_type=CONTENT_TYPE_LATEST)
