"""The demo sign-in (/login, /logout) and the front door."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from billing_ledger.http.pages.render import form_expired, redirect, render
from billing_ledger.http.signin import (
    csrf_ok,
    demo_sign_in_enabled,
    safe_next,
    sign_in,
    sign_out,
    valid_user_id,
)


def login_disabled(request: Request) -> Response:
    """The demo sign-in is off (the default): a plain page, nothing about why or how."""
    body = "There is no sign-in page here. Please sign in through the application."
    return render(request, "message.html", {"title": "Page not found", "body": body}, 404)


async def login_form(request: Request) -> Response:
    """GET /login."""
    if not demo_sign_in_enabled(request):
        return login_disabled(request)
    target = safe_next(request.query_params.get("next"))
    return render(request, "login.html", {"next": target, "entered": ""})


async def login(request: Request) -> Response:
    """POST /login: put the user in a fresh signed session."""
    if not demo_sign_in_enabled(request):
        return login_disabled(request)
    form = await request.form()
    if not csrf_ok(request, form):
        return form_expired(request)
    target = safe_next(form.get("next"))
    user = valid_user_id(form.get("user_id"))
    if user is None:
        error = 'Enter a user id of 1 to 200 printable characters, without "/".'
        entered = str(form.get("user_id", ""))[:200]
        return render(
            request, "login.html", {"next": target, "entered": entered, "error": error}, 400
        )
    sign_in(request, user)
    return redirect(target)


async def logout(request: Request) -> Response:
    """POST /logout."""
    form = await request.form()
    if not csrf_ok(request, form):
        return form_expired(request)
    sign_out(request)
    return redirect("/pricing")


async def home(request: Request) -> Response:
    """GET /: the pricing page is the front door."""
    return redirect("/pricing")
