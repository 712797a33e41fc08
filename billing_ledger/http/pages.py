"""Server-rendered pages: /pricing, /billing, /protected-feature, and the demo sign-in.

Everything shown comes from the projections; Stripe is called only to open a Checkout or
portal session (and to show prices). The Checkout redirect back to /billing is never
trusted: the page waits for the webhook-projected state. No /v1 token is involved.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from billing_ledger.http.account import (
    STATUS_LABELS,
    Account,
    caught_up,
    checkout_confirmed,
    load_account,
)
from billing_ledger.http.billing import CheckoutRequest, create_checkout, create_portal
from billing_ledger.http.sessions import status_for
from billing_ledger.http.signin import (
    csrf_ok,
    csrf_token,
    current_user,
    demo_sign_in_enabled,
    deps_of,
    login_url,
    safe_next,
    sign_in,
    sign_out,
    valid_user_id,
)
from billing_ledger.http.stripe_client import BillingError, Json, StripeApi, open_stripe
from billing_ledger.ledger.store import StorageError
from billing_ledger.projections.plans import Plan, Plans
from billing_ledger.projections.policy import access

log = logging.getLogger("billing_ledger.pages")

PROTECTED_FEATURE = "pro"  # what /protected-feature is gated on
REFRESH_SECONDS = 2
MAX_CONFIRM_ATTEMPTS = 45  # about two minutes of refreshes, then the page stops asking
# Stripe's zero-decimal currencies: amounts are already whole units.
ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv"}
    | {"xaf", "xof", "xpf"}
)
SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}
# No script anywhere; inline styles only; never framed; private pages are not cached.
# (No form-action: Chrome applies it to the redirect to Stripe's hosted pages as well.)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# -- rendering --------------------------------------------------------------------------


def money(amount: int | None, currency: str | None) -> str:
    """Minor units as a person reads them: 2000 usd -> $20.00."""
    if amount is None:
        return "—"
    code = (currency or "usd").lower()
    text = f"{amount:,}" if code in ZERO_DECIMAL else f"{amount / 100:,.2f}"
    symbol = SYMBOLS.get(code)
    return f"{symbol}{text}" if symbol else f"{text} {code.upper()}"


def day(seconds: int | None) -> str:
    """Unix seconds as a date: 28 Dec 2026 (UTC)."""
    if seconds is None:
        return "—"
    when = datetime.fromtimestamp(seconds, UTC)
    return f"{when.day} {when:%b %Y}"


def per_interval(price: Json) -> str:
    """A recurring price's amount and interval: $20.00 / month."""
    recurring = price.get("recurring") or {}
    interval, count = recurring.get("interval"), recurring.get("interval_count") or 1
    amount = money(price.get("unit_amount"), price.get("currency"))
    if not interval:
        return amount
    return f"{amount} / {interval}" if count == 1 else f"{amount} every {count} {interval}s"


@functools.cache
def templates() -> Jinja2Templates:
    """The page templates (built on first use, not at import)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("billing_ledger.http", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters |= {"money": money, "day": day, "per_interval": per_interval}
    env.globals["status_label"] = lambda status: STATUS_LABELS.get(status, status)
    return Jinja2Templates(env=env)


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    """A page with the layout's context (user, form token) and the security headers."""
    base = {
        "user": current_user(request),
        "csrf": csrf_token(request),
        "demo": demo_sign_in_enabled(request),
        "notice": None,
        "error": None,
        "page": None,
    }
    response = templates().TemplateResponse(request, name, {**base, **context}, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(url: str) -> Response:
    """303 See Other: a POST's answer becomes a GET."""
    return RedirectResponse(url, status_code=303)


def storage_page(request: Request) -> Response:
    """The ledger's database is away: say so plainly."""
    message = "Billing details are unavailable right now. Please try again in a minute."
    return render(
        request, "message.html", {"title": "Temporarily unavailable", "body": message}, 503
    )


def sign_in_first(request: Request, target: str | None = None) -> Response:
    """No signed-in user: the demo sign-in when it serves, else a page that offers none."""
    if demo_sign_in_enabled(request):
        return redirect(login_url(request) if target is None else f"/login?next={target}")
    message = "Please sign in to the application first, then come back to this page."
    return render(request, "message.html", {"title": "Sign-in needed", "body": message}, 403)


def form_expired(request: Request) -> Response:
    """A form without the session's token (stale tab, or a forged post)."""
    message = "This form has expired. Please go back, reload the page and try again."
    return render(request, "message.html", {"title": "Form expired", "body": message}, 403)


# -- pricing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """A plan on the pricing page, with its Stripe price when known."""

    plan: Plan
    reference: str | None  # what Checkout is asked for: a lookup key, else a price id
    price: Json | None
    current: bool

    @property
    def name(self) -> str:
        """The plan's display name."""
        return self.plan.id.replace("_", " ").title()


def price_reference(plan: Plan) -> str | None:
    """A lookup key survives a price change in Stripe, so it is preferred over an id."""
    if plan.lookup_keys:
        return plan.lookup_keys[0]
    return plan.prices[0] if plan.prices else None


async def price_catalogue(api: StripeApi, references: list[str]) -> dict[str, Json]:
    """The prices behind the references, by reference; what Stripe cannot say is left out."""
    keys = [r for r in references if not r.startswith("price_")]
    found = await api.prices_by_lookup_keys(keys) if keys else {}
    for reference in (r for r in references if r.startswith("price_")):
        price = await api.retrieve_price(reference)
        if price is not None:
            found[reference] = price
    return found


async def offers(request: Request, held: set[str]) -> list[Offer]:
    """The plans file's non-default plans, priced by Stripe when it answers."""
    deps = deps_of(request)
    plans: Plans = deps.plans
    paid = [p for p in plans.plans if not p.default]
    references = [r for r in map(price_reference, paid) if r is not None]
    prices: dict[str, Json] = {}
    try:
        async with open_stripe(deps.settings) as api:
            prices = await price_catalogue(api, references)
    except BillingError as e:  # the page still lists the plans, without amounts
        log.info("pricing page without prices: %s", e.code)
    return [
        Offer(p, ref, prices.get(ref) if ref else None, p.id in held)
        for p, ref in ((p, price_reference(p)) for p in paid)
    ]


async def pricing_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    """The pricing page for whoever is looking (signed in or not)."""
    user = current_user(request)
    held = set((await load_account(deps_of(request), user)).entitlements.plans) if user else set()
    notice = None
    if request.query_params.get("canceled") == "true":
        notice = "Checkout canceled — nothing was charged. Pick a plan whenever you are ready."
    context = {
        "page": "pricing",
        "offers": await offers(request, held),
        "included": deps_of(request).plans.default_features(),
        "notice": notice,
        "error": error,
    }
    return render(request, "pricing.html", context, status)


async def pricing(request: Request) -> Response:
    """GET /pricing."""
    try:
        return await pricing_page(request)
    except StorageError:
        return storage_page(request)


def plan_for_sale(plans: Plans, plan_id: str) -> tuple[Plan, str] | None:
    """A plan the pricing page offers, with the price reference Checkout is asked for."""
    plan = plans.by_id(plan_id)
    reference = price_reference(plan) if plan is not None and not plan.default else None
    return (plan, reference) if plan is not None and reference is not None else None


async def checkout_url(request: Request, user: str, plan: Plan, reference: str) -> str:
    """The Checkout Session's URL, or /billing when the user already has the plan."""
    deps = deps_of(request)
    account = await load_account(deps, user)
    if plan in account.paid_plans(deps.plans):
        return "/billing"  # already theirs: no second subscription
    async with open_stripe(deps.settings) as api:
        session = await create_checkout(deps, api, CheckoutRequest(user, reference))
    return str(session["url"])


async def start_checkout(request: Request) -> Response:
    """POST /pricing/checkout: open a Checkout Session on the server, then go there."""
    user = current_user(request)
    if user is None:
        return sign_in_first(request, "/pricing")
    form = await request.form()
    if not csrf_ok(request, form):
        return form_expired(request)
    offered = plan_for_sale(deps_of(request).plans, str(form.get("plan", "")))
    try:
        if offered is None:
            return await pricing_page(request, "That plan is not available.", 400)
        return redirect(await checkout_url(request, user, *offered))
    except BillingError as e:
        return await pricing_page(request, e.message, status_for(e))
    except StorageError:
        return storage_page(request)


# -- billing ----------------------------------------------------------------------------


def _attempt(raw: str | None) -> int:
    return int(raw) if raw is not None and raw.isdigit() and len(raw) < 4 else 0


def confirming_context(request: Request, confirming: bool) -> dict[str, Any]:
    """While Stripe's confirmation is awaited: refresh the page, a bounded number of times."""
    query = request.query_params
    attempt = _attempt(query.get("attempt"))
    refresh = None
    if confirming and attempt < MAX_CONFIRM_ATTEMPTS:
        wanted = {"success": "true", "session_id": query.get("session_id", "")}
        refresh = "/billing?" + urlencode({**wanted, "attempt": attempt + 1})
    return {"confirming": confirming, "refresh": refresh, "refresh_seconds": REFRESH_SECONDS}


async def billing_page(request: Request, user: str, error: str | None, status: int) -> Response:
    """The user's plan, status, renewal, cancellation, payment problems and invoices."""
    deps = deps_of(request)
    query = request.query_params
    session_id = query.get("session_id") if query.get("success") == "true" else None
    account = await load_account(deps, user)
    if session_id and not checkout_confirmed(account, session_id):
        await caught_up(deps)  # the webhooks may be stored but not yet projected
        account = await load_account(deps, user)
    confirming = session_id is not None and not checkout_confirmed(account, session_id)
    context = {
        "page": "billing",
        "account": account,
        "plans": account.paid_plans(deps.plans),
        "confirmed": session_id is not None and not confirming,
        "error": error,
        **confirming_context(request, confirming),
    }
    return render(request, "billing.html", context, status)


async def billing(request: Request) -> Response:
    """GET /billing (and /billing?success=true&session_id=... after Checkout)."""
    user = current_user(request)
    if user is None:
        return sign_in_first(request)
    try:
        return await billing_page(request, user, None, 200)
    except StorageError:
        return storage_page(request)


async def open_portal(request: Request) -> Response:
    """POST /billing/portal: open a portal session on the server, then go there."""
    user = current_user(request)
    if user is None:
        return sign_in_first(request, "/billing")
    form = await request.form()
    if not csrf_ok(request, form):
        return form_expired(request)
    deps = deps_of(request)
    try:
        async with open_stripe(deps.settings) as api:
            session = await create_portal(deps, api, user, f"{deps.settings.app_url}/billing")
    except BillingError as e:
        return await billing_page(request, user, e.message, status_for(e))
    except StorageError:
        return storage_page(request)
    return redirect(str(session["url"]))


# -- the gated feature ------------------------------------------------------------------


async def protected_feature(request: Request) -> Response:
    """GET /protected-feature: served only when the entitlement check allows it."""
    user = current_user(request)
    if user is None:
        return sign_in_first(request)
    deps = deps_of(request)
    try:
        account: Account = await load_account(deps, user)
    except StorageError:
        return storage_page(request)
    allowed, reason = access(account.entitlements, PROTECTED_FEATURE)
    context: dict[str, Any] = {"page": "feature", "feature": PROTECTED_FEATURE, "reason": reason}
    if allowed:
        return render(request, "protected.html", context)
    granting = [p for p in deps.plans.plans if PROTECTED_FEATURE in p.features and not p.default]
    return render(request, "denied.html", {**context, "granting": granting}, 403)


# -- demo sign-in -----------------------------------------------------------------------


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


ROUTES = [
    Route("/", home, methods=["GET"]),
    Route("/pricing", pricing, methods=["GET"]),
    Route("/pricing/checkout", start_checkout, methods=["POST"]),
    Route("/billing", billing, methods=["GET"]),
    Route("/billing/portal", open_portal, methods=["POST"]),
    Route("/protected-feature", protected_feature, methods=["GET"]),
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
