"""The operator console, /admin: projections, search, a user's timeline (table and picture),
and the stored event with its alternates. Server-rendered HTML, no script.

The console takes the service's token (LEDGER_ADMIN_TOKEN, else LEDGER_API_TOKEN), entered
once into a form; the answer is a cookie holding an HMAC of the token (HttpOnly,
SameSite=Strict, Path=/admin), so a new token signs every operator out. A bearer header
works too, for scripts. With no token configured the console serves a loopback listener
only; anywhere else it is off (404), as /v1 refuses a non-loopback host without a token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from billing_ledger.http.errors import BadParameterError
from billing_ledger.http.pages.render import environment
from billing_ledger.http.reads import parse_at
from billing_ledger.http.timeline_svg import timeline_svg
from billing_ledger.ledger.store import StorageError
from billing_ledger.ledger.user_ids import InvalidUserIdError, checked_user_id
from billing_ledger.listen import is_loopback
from billing_ledger.projections.policy import Entitlements, evaluate
from billing_ledger.projections.timeline import Timeline, timeline
from billing_ledger.replay.explain import console_path

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

COOKIE = "ledger_admin"
MAX_QUERY = 255
# No script anywhere; the picture is an <img> of our own origin; never framed or cached.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _iso(t: int | float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


@functools.cache
def _templates() -> Jinja2Templates:
    return Jinja2Templates(env=environment())


def _deps(request: Request) -> Services:
    deps: Services = request.state.deps
    return deps


def _token(request: Request) -> str | None:
    settings = _deps(request).settings
    return settings.admin_token or settings.api_token


def _cookie_value(token: str) -> str:
    """The cookie a signed-in operator holds: an HMAC of the token, never the token."""
    return hmac.new(token.encode(), b"billing-ledger admin console", hashlib.sha256).hexdigest()


def _console_on(request: Request) -> bool:
    return _token(request) is not None or is_loopback(
        getattr(request.app.state, "listen_host", None)
    )


def _signed_in(request: Request) -> bool:
    token = _token(request)
    if token is None:
        return _console_on(request)
    cookie = request.cookies.get(COOKIE, "")
    if hmac.compare_digest(cookie.encode(), _cookie_value(token).encode()):
        return True
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.encode(), token.encode())


def _render(request: Request, view: str, status: int = 200, **context: Any) -> Response:
    base: dict[str, Any] = {"view": view, "title": view, "query": "", "error": None}
    base["signed_in"] = view != "login"
    response = _templates().TemplateResponse(
        request, "admin.html", {**base, **context}, status_code=status
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def _refusal(request: Request) -> Response:
    """Not signed in: pages go to the form, anything else is refused."""
    if request.method == "GET" and not request.url.path.endswith(".svg"):
        return RedirectResponse("/admin/login", status_code=303)
    return PlainTextResponse("sign in at /admin/login", status_code=401, headers=SECURITY_HEADERS)


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    """The console's gate: off without a token off loopback; signed in, or refused."""

    async def guarded(request: Request) -> Response:
        if not _console_on(request):
            return PlainTextResponse("Not Found", status_code=404)
        if not _signed_in(request):
            return _refusal(request)
        try:
            return await handler(request)
        except (BadParameterError, InvalidUserIdError) as e:
            return _render(request, "error", 400, error=str(e), title="error")
        except StorageError:
            message = "the ledger's storage is unavailable"
            return _render(request, "error", 503, error=message, title="error")

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


# -- signing in -------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    """The token form (the console is on only where a token or loopback allows it)."""
    if not _console_on(request):
        return PlainTextResponse("Not Found", status_code=404)
    return _render(request, "login", title="sign in")


async def login(request: Request) -> Response:
    """Check the token once; the answer holds the signed cookie."""
    token = _token(request)
    if not _console_on(request):
        return PlainTextResponse("Not Found", status_code=404)
    form = await request.form()
    supplied = str(form.get("token") or "")
    if token is not None and not hmac.compare_digest(supplied.encode(), token.encode()):
        return _render(request, "login", 401, title="sign in", error="That token is not valid.")
    response = RedirectResponse("/admin", status_code=303)
    if token is not None:
        response.set_cookie(
            COOKIE,
            _cookie_value(token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/admin",
        )
    return response


async def logout(request: Request) -> Response:
    """Forget the cookie."""
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(COOKIE, path="/admin")
    return response


# -- pages ------------------------------------------------------------------------------


user_path = console_path  # the console's page of one user, as replay prints it


@_guarded
async def home(request: Request) -> Response:
    """Each projection's position and lag behind the ledger's head."""
    deps = _deps(request)
    head = await run_in_threadpool(deps.store.head)
    status: dict[str, Any] = deps.runner.status() if deps.runner is not None else {}
    projections = [
        {
            "name": name,
            "position": info["position"],
            "lag": max(0, head - info["position"]),
            "error": info.get("error"),
        }
        for name, info in sorted(status.items())
    ]
    return _render(request, "home", title="console", head=head, projections=projections)


def _users(deps: Services, query: str) -> list[str]:
    """The users a customer, subscription or invoice id leads to."""
    return deps.reads.users_of(query)


@_guarded
async def search(request: Request) -> Response:
    """An event id opens the event; a customer, subscription or invoice id lists its users;
    anything else is taken as a user id."""
    query = (request.query_params.get("q") or "").strip()
    if not query:
        return RedirectResponse("/admin", status_code=303)
    if len(query) > MAX_QUERY or "\x00" in query:
        raise BadParameterError(f"search: expected 1 to {MAX_QUERY} characters")
    deps = _deps(request)
    if query.startswith("evt_"):
        if await run_in_threadpool(deps.store.get, query) is not None:
            return RedirectResponse(f"/admin/events/{quote(query, safe='')}", status_code=303)
        users: list[str] = []
    elif query.startswith(("cus_", "sub_", "in_")):
        users = await run_in_threadpool(_users, deps, query)
    else:
        return RedirectResponse(user_path(checked_user_id(query)), status_code=303)
    found = [{"id": u, "href": user_path(u)} for u in users]
    return _render(request, "search", title="search", query=query, users=found)


async def _user_timeline(request: Request) -> tuple[Timeline, Entitlements]:
    user_id = checked_user_id(request.path_params["user_id"])
    at = parse_at(request.query_params.get("at"))
    deps = _deps(request)
    reads = deps.reads
    inputs = await reads.history_inputs(user_id, await reads.position())

    def both() -> tuple[Timeline, Entitlements]:
        return timeline(inputs, deps.plans, at), evaluate(inputs, deps.plans, at)

    return await run_in_threadpool(both)


def _features(names: tuple[str, ...]) -> str:
    return ", ".join(names) or "none"


@_guarded
async def user_page(request: Request) -> Response:
    """One user: the state now, the timeline as a picture and as a table, what comes next."""
    found, now = await _user_timeline(request)
    entries = [
        {
            "at_iso": _iso(e.at),
            "kind": e.kind,
            "detail": e.detail,
            "moved": e.features_before != e.features_after,
            "features": (
                f"{_features(e.features_before)} → {_features(e.features_after)}"
                if e.features_before != e.features_after
                else _features(e.features_after)
            ),
            "event_id": e.event_id,
            "event_type": e.event_type,
            "event_href": f"/admin/events/{quote(e.event_id, safe='')}" if e.event_id else None,
        }
        for e in found.entries
    ]
    upcoming = [{"at_iso": _iso(u.at), "kind": u.kind, "detail": u.detail} for u in found.upcoming]
    at = request.query_params.get("at")
    svg = f"{user_path(found.user_id)}/timeline.svg" + (f"?at={quote(at)}" if at else "")
    return _render(
        request,
        "user",
        title=found.user_id,
        user_id=found.user_id,
        at_iso=_iso(found.at),
        features=_features(now.features),
        customers=", ".join(now.customer_ids),
        warnings=", ".join(now.warnings),
        entries=entries,
        upcoming=upcoming,
        svg_href=svg,
        unseen=not found.entries and not now.customer_ids,
    )


@_guarded
async def user_svg(request: Request) -> Response:
    """The user's timeline drawn as SVG."""
    found, now = await _user_timeline(request)
    body = timeline_svg(found, now.subscriptions, _deps(request).plans)
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": "default-src 'none'; "
               "style-src 'unsafe-inline'"}  # fmt: skip
    return Response(body, media_type="image/svg+xml", headers=headers)


def _body(raw: bytes) -> str:
    try:
        return orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode()
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return raw.decode("utf-8", "replace")


@_guarded
async def event_page(request: Request) -> Response:
    """One stored event: its first body and every alternate rendering of the same id."""
    event_id = request.path_params["event_id"]
    if not event_id or len(event_id) > MAX_QUERY or "\x00" in event_id:
        raise BadParameterError(f"event id: expected 1 to {MAX_QUERY} characters")
    versions = await run_in_threadpool(_deps(request).store.versions, event_id)
    if not versions:
        message = f"No event {event_id} is stored."
        return _render(request, "error", 404, title="unknown event", error=message)
    first = versions[0]
    users = await run_in_threadpool(_event_users, _deps(request), first.payload())
    shown = [
        {
            "version": v.version,
            "position": v.position,
            "api_version": v.api_version,
            "received_iso": _iso(v.received_at),
            "source": v.source,
            "signature": v.signature,
            "body": _body(v.body),
        }
        for v in versions
    ]
    event = {
        "event_id": first.event_id,
        "type": first.type,
        "created_iso": _iso(first.created),
        "position": first.position,
        "source": first.source,
    }
    linked = [{"id": u, "href": user_path(u)} for u in users]
    return _render(
        request, "event", title=first.event_id, event=event, versions=shown, users=linked
    )


def _event_users(deps: Services, payload: dict[str, Any]) -> list[str]:
    """The users of the customer the event's object belongs to (or is)."""
    data = payload.get("data")
    found = data.get("object") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return []
    customer = found.get("customer")
    if isinstance(customer, dict):  # an expanded customer
        customer = customer.get("id")
    if customer is None and found.get("object") == "customer":
        customer = found.get("id")
    if not isinstance(customer, str) or not customer or len(customer) > MAX_QUERY:
        return []
    return deps.reads.users_of(customer)


ROUTES = [
    Route("/admin", home, methods=["GET"]),
    Route("/admin/login", login_form, methods=["GET"]),
    Route("/admin/login", login, methods=["POST"]),
    Route("/admin/logout", logout, methods=["POST"]),
    Route("/admin/search", search, methods=["GET"]),
    Route("/admin/users/{user_id}", user_page, methods=["GET"]),
    Route("/admin/users/{user_id}/timeline.svg", user_svg, methods=["GET"]),
    Route("/admin/events/{event_id}", event_page, methods=["GET"]),
]
