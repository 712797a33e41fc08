"""The Starlette application: create_app(deps) takes its dependencies, builds nothing at import."""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from billing_ledger.http import admin, changes, openapi, pages, reads, sessions
from billing_ledger.http.auth import BearerTokenMiddleware
from billing_ledger.http.errors import EXCEPTION_HANDLERS
from billing_ledger.http.health import healthz, metrics
from billing_ledger.http.pages.errors import is_api_path, with_error_pages
from billing_ledger.http.signin import demo_sign_in_allowed, session_middleware
from billing_ledger.http.user_ids import ROUTE as UNROUTABLE_USER_READ
from billing_ledger.http.webhooks import receive_webhook

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

WEBHOOK_PATH = "/webhooks/stripe"


class LatencyMiddleware:
    """Observe each request's latency under its full route template (bounded label set)."""

    def __init__(self, app: ASGIApp, deps: Services) -> None:
        self.app = app
        self.histogram = deps.metrics.latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = scope.get("root_path", "")
        try:
            await self.app(scope, receive, send)
        finally:
            name = route_template(scope, root_path)
            self.histogram.labels(name).observe(time.perf_counter() - started)


def route_template(scope: Scope, root_path: str) -> str:
    """The matched route's template from this app's root: /v1/users/{user_id}/entitlements.

    Routing updates the scope in place; a mount adds its prefix to the root path and leaves
    the route inside it in `route` (or itself, when nothing inside matched or it refused).
    """
    route = scope.get("route")
    if route is None or isinstance(route, Mount):
        return "unmatched"
    mounts = scope.get("root_path", "")[len(root_path) :]
    return f"{mounts}{route.path}"


def app_path(scope: Scope) -> str:
    """The request's path below this app's root (when mounted in another app, below its mount)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class ApiMount(Mount):
    """/v1 matched by its prefix: every path under `/v1/`, a line break in it too.

    Starlette's pattern for a mount, `/v1/{path:path}`, ends in `.*`, which stops at a line
    break: an id holding a decoded %0A would miss the mount (a 404) instead of reaching its
    route's answer. A string test also costs a read less than the pattern and its converter.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """A full match for any path under the prefix, with the prefix added to the root path."""
        if scope["type"] not in ("http", "websocket") or not app_path(scope).startswith(
            f"{self.path}/"
        ):
            return Match.NONE, {}
        root_path = scope.get("root_path", "")
        return Match.FULL, {
            "path_params": dict(scope.get("path_params", {})),
            "app_root_path": scope.get("app_root_path", root_path),
            "root_path": root_path + self.path,
            "endpoint": self.app,
        }


class OutsideApi:
    """A middleware for every path but the API's (pages/errors.is_api_path), which skip it.

    The pages' session is one: /v1 never reads it, and decoding its cookie and wrapping each
    send cost a warm read a tenth of its time.
    """

    def __init__(self, app: ASGIApp, middleware: Middleware) -> None:
        self.app = app
        cls, args, kwargs = middleware
        self.wrapped: ASGIApp = cls(app, *args, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_api_path(app_path(scope)):
            await self.app(scope, receive, send)
        else:
            await self.wrapped(scope, receive, send)


async def not_found(request: Request) -> Response:
    """A path that names nothing: the app's 404 answer."""
    raise HTTPException(404)


def api(token: str | None) -> list[BaseRoute]:
    """/v1: the reads, the change feed and the sessions, all behind the bearer token."""
    routes = [*reads.ROUTES, *changes.ROUTES, *sessions.ROUTES, UNROUTABLE_USER_READ]
    # Its 404s and 405s are answered as JSON, whatever the client accepts, by the app's
    # handlers (pages/errors.wants_page): no second exception layer wraps each read.
    mount = ApiMount(
        "/v1", routes=routes, middleware=[Middleware(BearerTokenMiddleware, token=token)]
    )
    # Bare /v1 names nothing: a 404 here, not the router's redirect to /v1/ (which the mount
    # would match); so a dot segment resolving to it stays a 404, as for any unknown path.
    return [mount, Route("/v1", not_found)]


def routes(token: str | None) -> list[BaseRoute]:
    """Every route of the service."""
    return [
        *api(token),  # first: the warm read tries no other route's pattern
        Route(WEBHOOK_PATH, receive_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *pages.ROUTES,
        *openapi.ROUTES,
        *admin.ROUTES,
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


class Timed:
    """One route's latency observed around it (the label bound once)."""

    def __init__(self, app: ASGIApp, observe: Any) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.observe(time.perf_counter() - started)


class LedgerApp(Starlette):
    """Starlette, with each webhook delivery taken the short way to its endpoint.

    A delivery (POST /webhooks/stripe, the lifespan's deps in its scope) goes through the
    app's two error layers and handlers and its latency is observed under its route, as on
    the general way; it skips the router and the middleware that do nothing for it (the
    embedded start, the pages' session, matching the API's routes first): about a sixth of
    the worker's instructions per webhook. Mounted in another app (no deps in the scope) or
    asked any other way, a request takes the general way.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._webhook: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The delivery's short way, or Starlette's."""
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and "deps" in scope.get("state", ())
            and app_path(scope) == WEBHOOK_PATH
        ):
            scope["app"] = self
            await self._webhook_stack(scope["state"]["deps"])(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _webhook_stack(self, deps: Services) -> ASGIApp:
        """The webhook endpoint inside the app's error layers, as build_middleware_stack
        puts them (the 500 handler outermost, the others around the route)."""
        if self._webhook is None:
            handlers = dict(self.exception_handlers)
            failures = [handlers.pop(key) for key in (500, Exception) if key in handlers]
            on_failure = failures[-1] if failures else None
            timed = Timed(
                ExceptionMiddleware(receive_webhook, handlers=handlers),
                deps.metrics.latency.labels(WEBHOOK_PATH).observe,
            )
            self._webhook = ServerErrorMiddleware(timed, handler=on_failure)
        return self._webhook


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

    app = LedgerApp(
        routes=routes(deps.settings.api_token),
        lifespan=lifespan,
        exception_handlers=with_error_pages(EXCEPTION_HANDLERS, pages.ROUTES),
        middleware=[
            Middleware(EmbeddedMiddleware, deps=deps),
            Middleware(LatencyMiddleware, deps=deps),
            Middleware(OutsideApi, middleware=session_middleware(deps.settings)),
        ],
    )
    app.state.demo_sign_in = demo_sign_in_allowed(deps.settings, listen_host)
    app.state.listen_host = listen_host  # the console without a token: loopback only
    return app
