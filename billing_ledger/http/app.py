"""The Starlette application: create_app(deps) takes its dependencies, builds nothing at import."""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from billing_ledger.http import admin, changes, openapi, pages, reads, sessions
from billing_ledger.http.auth import BearerTokenMiddleware
from billing_ledger.http.errors import EXCEPTION_HANDLERS
from billing_ledger.http.health import healthz, metrics
from billing_ledger.http.signin import demo_sign_in_allowed, session_middleware
from billing_ledger.http.user_ids import ROUTE as UNROUTABLE_USER_READ
from billing_ledger.http.webhooks import receive_webhook

if TYPE_CHECKING:
    from billing_ledger.http.state import Services


class LatencyMiddleware:
    """Observe each request's latency under its route template (bounded label set)."""

    def __init__(self, app: ASGIApp, deps: Services) -> None:
        self.app = app
        self.histogram = deps.metrics.latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            self.histogram.labels(name).observe(time.perf_counter() - started)


def routes() -> list[BaseRoute]:
    """Every route of the service."""
    return [
        Route("/webhooks/stripe", receive_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *reads.ROUTES,
        *changes.ROUTES,
        *sessions.ROUTES,
        *pages.ROUTES,
        *openapi.ROUTES,
        *admin.ROUTES,
        UNROUTABLE_USER_READ,
    ]


class EmbeddedMiddleware:
    """Mounted inside another app, ours gets no lifespan (Starlette's Mount forwards none):
    start the background work on the first request, stop it at exit, and hand out deps."""

    def __init__(self, app: ASGIApp, deps: Services) -> None:
        self.app = app
        self.deps = deps
        self._started = False
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            state = scope.setdefault("state", {})
            if "deps" not in state:
                self._start()
                state["deps"] = self.deps
        await self.app(scope, receive, send)

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self.deps.start()
        atexit.register(self.deps.close)


def create_app(deps: Services, *, listen_host: str | None = None) -> Starlette:
    """The service's ASGI app; the lifespan starts the writer (and runner) and hands out deps.

    `listen_host` is the host the server's sockets are bound to; the demo sign-in serves only
    when it is a loopback host (unknown, as when mounted in another app, counts as not).

    Mounted inside another Starlette or FastAPI app, it starts on its first request instead.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        deps.start()
        try:
            yield {"deps": deps}
        finally:
            deps.close()

    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            Middleware(EmbeddedMiddleware, deps=deps),
            Middleware(LatencyMiddleware, deps=deps),
            Middleware(BearerTokenMiddleware, token=deps.settings.api_token),
            session_middleware(deps.settings),  # the pages' signed cookie; /v1 ignores it
        ],
    )
    app.state.demo_sign_in = demo_sign_in_allowed(deps.settings, listen_host)
    app.state.listen_host = listen_host  # the console without a token: loopback only
    return app
