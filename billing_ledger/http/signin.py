"""Who the user is: one pluggable `current_user(request)`, and a demo sign-in behind it.

An application with its own accounts installs its function with `use_current_user(app,
fn)`; the pages ask nothing else. Without one, a signed session cookie (Starlette's
SessionMiddleware: HttpOnly, SameSite=Lax, Secure when LEDGER_APP_URL is https) holds the
user a demo `/login` form set. That form lets anyone claim any user id, so it is served
only when LEDGER_DEMO_SIGNIN=true and the service listens on a loopback host (listen.py).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request

from billing_ledger.ledger.user_ids import linkable
from billing_ledger.listen import is_loopback
from billing_ledger.settings import Settings

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

log = logging.getLogger("billing_ledger.pages")

SESSION_COOKIE = "ledger_session"
SESSION_MAX_AGE = 14 * 86400
SECRET_VARIABLE = "LEDGER_SESSION_SECRET"
USER_KEY = "user_id"
CSRF_KEY = "csrf"
MAX_USER_ID = 200

CurrentUser = Callable[[Request], "str | None"]


def session_user(request: Request) -> str | None:
    """The user the demo sign-in put in the session cookie."""
    value = request.session.get(USER_KEY)
    return value if isinstance(value, str) and value else None


def current_user(request: Request) -> str | None:
    """The signed-in user: the app's own function when installed, else the session's."""
    custom: CurrentUser | None = getattr(request.app.state, "current_user", None)
    return (custom or session_user)(request)


def use_current_user(app: Starlette, find: CurrentUser) -> None:
    """Install the application's own `current_user(request) -> str | None`."""
    app.state.current_user = find


def session_middleware(settings: Settings) -> Middleware:
    """The signed-cookie session the pages use, secured for LEDGER_APP_URL's scheme."""
    secret = settings.session_secret
    if not secret:
        # Random per process: sessions end at a restart and do not span --workers.
        secret = secrets.token_urlsafe(32)
        log.info("%s is not set: page sessions use a random per-process key", SECRET_VARIABLE)
    return Middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        same_site="lax",
        https_only=settings.app_url.startswith("https://"),
    )


def demo_sign_in_allowed(settings: Settings, listen_host: str | None) -> bool:
    """Whether the demo /login may serve: asked for, on a loopback listener (never unknown)."""
    if not settings.demo_signin:
        return False
    if is_loopback(listen_host):
        return True
    log.warning(
        "LEDGER_DEMO_SIGNIN=true ignored: the service listens on %s, not a loopback host, "
        "so the demo sign-in is off",
        listen_host or "an unknown host",
    )
    return False


def demo_sign_in_enabled(request: Request) -> bool:
    """Whether this app serves the demo /login (decided once, in create_app)."""
    return bool(getattr(request.app.state, "demo_sign_in", False))


def sign_in(request: Request, user_id: str) -> None:
    """Start a fresh session for the user (a new CSRF token too)."""
    request.session.clear()
    request.session[USER_KEY] = user_id
    request.session[CSRF_KEY] = secrets.token_urlsafe(24)


def sign_out(request: Request) -> None:
    """Forget the session."""
    request.session.clear()


def csrf_token(request: Request) -> str:
    """The session's form token, made on first use."""
    token = request.session.get(CSRF_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(24)
        request.session[CSRF_KEY] = token
    return token


def csrf_ok(request: Request, form: Mapping[str, Any]) -> bool:
    """Whether a posted form carries the session's token (SameSite=Lax is the first guard)."""
    expected = request.session.get(CSRF_KEY)
    supplied = form.get("csrf")
    if not isinstance(expected, str) or not isinstance(supplied, str):
        return False
    return hmac.compare_digest(expected.encode(), supplied.encode())


def valid_user_id(raw: object) -> str | None:
    """A user id as the API accepts it (1 to 200 printable characters, readable), or None."""
    if not isinstance(raw, str):
        return None
    value = raw.strip()
    fits = 0 < len(value) <= MAX_USER_ID and value.isprintable()
    return value if fits and linkable(value) else None


def safe_next(raw: object, default: str = "/billing") -> str:
    """A local path to return to after sign-in; anything else (an open redirect) is dropped."""
    if not isinstance(raw, str) or not raw.startswith("/") or raw.startswith(("//", "/\\")):
        return default
    return raw if raw.isprintable() else default


def login_url(request: Request) -> str:
    """/login, remembering where the user was going."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?" + urlencode({"next": target})


def deps_of(request: Request) -> Services:
    """The dependencies the lifespan handed out."""
    deps: Services = request.state.deps
    return deps
