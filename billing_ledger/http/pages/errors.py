"""The pages' error page: an unknown page or a failing one answers HTML in the pages' style.

The API (/v1, /webhooks, /healthz, /metrics, /openapi.json) keeps its JSON error bodies:
the app's handlers here choose a page only for a page route, or for an unknown path outside
the API that a browser asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute

from billing_ledger.http.pages.render import SECURITY_HEADERS, render

log = logging.getLogger("billing_ledger.pages")

Handler = Callable[[Request, Exception], Awaitable[Response]]

API_PATHS = ("/v1/", "/webhooks/", "/healthz", "/metrics", "/openapi.json")
# What a person is told, by status: nothing about routes, settings or the failure itself.
MESSAGES = {
    404: ("Page not found", "There is no page at this address."),
    405: ("Page not found", "This page cannot be reached that way."),
    500: ("Something went wrong", "This page could not be shown. Please try again in a minute."),
}
# When even the layout cannot be drawn (the failure was in what it needs): the bare message.
FALLBACK = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>'
    '<body><main><h1>{title}</h1><p>{body}</p><a href="/pricing">Back to pricing</a></main>'
    "</body></html>"
)


def _app_path(request: Request) -> str:
    """The path below the app's root (when mounted in another app, below its mount)."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def is_api_path(path: str) -> bool:
    """Whether a path below the app's root belongs to the API (JSON errors)."""
    return path == "/v1" or path.startswith(API_PATHS)


def _page_route(request: Request, pages: list[Any]) -> bool | None:
    """True on a page route, False on another route of this app, None when none matched."""
    route = request.scope.get("route")
    if route in pages:
        return True
    return False if route in list(_app_routes(request)) else None


def _app_routes(request: Request) -> Iterator[BaseRoute]:
    """The app's routes and those of its mounts (the /v1 API's, which moved the root path)."""
    for route in request.app.router.routes:
        yield route
        yield from getattr(route, "routes", ())


def wants_page(request: Request, pages: list[Any]) -> bool:
    """A page route's error, or an unknown path outside the API that a browser asked for."""
    matched = _page_route(request, pages)
    if matched is not None:
        return matched
    accepts_html = "text/html" in request.headers.get("accept", "")
    return accepts_html and not is_api_path(_app_path(request))


def error_page(request: Request, status: int) -> Response:
    """The small HTML page for an error status (message.html in the layout)."""
    title, body = MESSAGES.get(status, MESSAGES[500])
    try:
        return render(request, "message.html", {"title": title, "body": body}, status)
    except Exception:  # the layout's own parts failed (session, settings): still a page
        log.exception("the error page could not be drawn; answering the bare one")
        response = HTMLResponse(FALLBACK.format(title=title, body=body), status)
        response.headers.update(SECURITY_HEADERS)
        return response


def with_error_pages(handlers: dict[Any, Handler], pages: list[Any]) -> dict[Any, Handler]:
    """The app's exception handlers, answering the error page where a page was asked for."""

    async def routing_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and wants_page(request, pages):
            response = error_page(request, exc.status_code)
            response.headers.update(exc.headers or {})  # a 405's Allow
            return response
        return await handlers[HTTPException](request, exc)

    def on_pages(handler: Handler) -> Handler:
        async def failure(request: Request, exc: Exception) -> Response:
            if _page_route(request, pages):  # a failing page, whatever it was asked for with
                return error_page(request, 500)
            return await handler(request, exc)

        return failure

    return {**{k: on_pages(h) for k, h in handlers.items()}, HTTPException: routing_error}
