"""What every page shares: templates, money and dates, the brand, rendering, kind messages."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import jinja2
from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from billing_ledger.http.account import STATUS_LABELS
from billing_ledger.http.signin import (
    csrf_ok,
    csrf_token,
    current_user,
    demo_sign_in_enabled,
    deps_of,
    login_url,
)
from billing_ledger.http.stripe_client import BillingError
from billing_ledger.projections.plans import Plan

log = logging.getLogger("billing_ledger.pages")

PROTECTED_FEATURE = "pro"  # what /protected-feature is gated on
REFRESH_SECONDS = 2
MAX_CONFIRM_ATTEMPTS = 45  # about two minutes of refreshes, then the page stops asking
# Stripe's zero-decimal currencies: amounts are already whole units.
ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv"}
    | {"xaf", "xof", "xpf"}
)
INVOICE_LABELS = {
    "draft": "Draft",
    "open": "Due",
    "paid": "Paid",
    "uncollectible": "Unpaid",
    "void": "Void",
}
INTERVALS = ("day", "week", "month", "year")
INTERVAL_NAMES = {"day": "Daily", "week": "Weekly", "month": "Monthly", "year": "Yearly"}
DEFAULT_LOCALE = "en"
MAX_LANGUAGES = 8  # of an Accept-Language header, the first ones tried
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


def money(amount: int | None, currency: str | None, locale: str = DEFAULT_LOCALE) -> str:
    """Minor units as a person of `locale` reads them: 2000 usd -> $20.00 (en), 20,00 $ (de)."""
    if amount is None:
        return "—"
    code = (currency or "usd").lower()
    value = Decimal(amount) if code in ZERO_DECIMAL else Decimal(amount) / 100
    return format_currency(value, code.upper(), locale=locale)


def day(seconds: int | None) -> str:
    """Unix seconds as a date: 28 Dec 2026 (UTC)."""
    if seconds is None:
        return "—"
    when = datetime.fromtimestamp(seconds, UTC)
    return f"{when.day} {when:%b %Y}"


@dataclass(frozen=True)
class PriceTag:
    """A price as the pages show it (from the catalog's prices: no Stripe call per view)."""

    id: str
    unit_amount: int | None
    currency: str | None
    type: str | None  # recurring or one_time
    interval: str | None
    interval_count: int | None = None
    lookup_key: str | None = None
    active: bool = True

    @classmethod
    def of(cls, price: Any) -> PriceTag:
        """A catalog price (projections/catalog.CatalogPrice, or any object with its fields)."""
        fields = ("unit_amount", "currency", "type", "interval", "interval_count", "lookup_key")
        values = {name: getattr(price, name, None) for name in fields}
        return cls(id=str(price.id), active=bool(getattr(price, "active", True)), **values)

    @property
    def once(self) -> bool:
        """Bought once, not renewed."""
        return self.type == "one_time" or (self.type is None and self.interval is None)

    def amount(self, locale: str) -> str:
        """€19.00 (en), 19,00 € (de)."""
        return money(self.unit_amount, self.currency, locale)

    @property
    def per(self) -> str:
        """/ month, every 3 months, once."""
        if self.once or not self.interval:
            return "once"
        count = self.interval_count or 1
        return f"/ {self.interval}" if count == 1 else f"every {count} {self.interval}s"

    def text(self, locale: str) -> str:
        """€19.00 / month, $99.00 once."""
        return f"{self.amount(locale)} {self.per}"


def environment() -> jinja2.Environment:
    """A Jinja environment of the package's templates: escaped, an unknown name an error."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("billing_ledger.http", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


@functools.cache
def templates() -> Jinja2Templates:
    """The page templates (built on first use, not at import)."""
    env = environment()
    env.filters |= {"money": money, "day": day}
    env.globals["status_label"] = lambda status: STATUS_LABELS.get(status, status)
    env.globals["invoice_status"] = lambda status: INVOICE_LABELS.get(status, "Pending")
    return Jinja2Templates(env=env)


@dataclass(frozen=True)
class Brand:
    """The product's name and accent colours, as the layout uses them."""

    name: str
    accent: str  # the configured colour: borders, marks
    accent_dark: str  # the accent darkened until white text on it passes WCAG AA (4.5:1)
    wash: str  # a pale tint of the accent


def _channels(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _luminance(colour: str) -> float:
    """WCAG 2's relative luminance of a #rrggbb colour."""
    linear = [c / 255 for c in _channels(colour)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in linear)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(first: str, second: str) -> float:
    """WCAG 2's contrast ratio of two #rrggbb colours (1 to 21)."""
    high, low = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _mix(colour: str, other: str, share: float) -> str:
    pairs = zip(_channels(colour), _channels(other), strict=True)
    return "#" + "".join(f"{round(a * (1 - share) + b * share):02x}" for a, b in pairs)


def darkened_for_white_text(colour: str) -> str:
    """The colour, darkened step by step until white text on it has a ratio of 4.5:1."""
    dark = colour
    for step in range(1, 21):
        if contrast(dark, "#ffffff") >= 4.5:
            break
        dark = _mix(colour, "#000000", step / 20)
    return dark


@functools.cache
def brand_of(name: str, colour: str) -> Brand:
    """The layout's brand from the settings (LEDGER_BRAND_NAME, LEDGER_BRAND_COLOR)."""
    return Brand(name, colour, darkened_for_white_text(colour), _mix(colour, "#ffffff", 0.9))


def page_locale(request: Request) -> str:
    """The first locale of the browser's Accept-Language that babel knows, else English."""
    header = request.headers.get("accept-language", "")[:200]
    for tag in re.findall(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,4})?", header)[:MAX_LANGUAGES]:
        try:
            return str(Locale.parse(tag, sep="-"))
        except (ValueError, UnknownLocaleError):
            continue
    return DEFAULT_LOCALE


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    """A page with the layout's context (user, form token, brand) and the security headers."""
    settings = deps_of(request).settings
    locale = page_locale(request)
    base = {
        "user": current_user(request),
        "csrf": csrf_token(request),
        "demo": demo_sign_in_enabled(request),
        "brand": brand_of(settings.brand_name, settings.brand_color),
        "locale": locale,
        "locale_tag": locale.replace("_", "-"),
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


FormHandler = Callable[[Request, str, FormData], Awaitable[Response]]


def signed_post(back: str) -> Callable[[FormHandler], Callable[[Request], Awaitable[Response]]]:
    """A POST handler given the signed-in user and the form, once its token is checked; else
    the sign-in (coming back to `back`) or the expired-form page."""

    def wrap(handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def post(request: Request) -> Response:
            user = current_user(request)
            if user is None:
                return sign_in_first(request, back)
            form = await request.form()
            if not csrf_ok(request, form):
                return form_expired(request)
            return await handler(request, user, form)

        return post

    return wrap


# What a person is told when a billing call fails, by the error's code; the cause (which may
# name a setting or an id) goes to the log. Codes not listed show the error's own message,
# which stripe_client.py writes for users (a declined card, Stripe unreachable).
KIND_MESSAGES = {
    "not_configured": "Payments are not available right now, so nothing can be bought yet. "
    "Nothing was charged; please try again later.",
    "unknown_price": "This plan cannot be bought right now. Nothing was charged; "
    "please try again later or choose another plan.",
    "invalid_price": "This plan cannot be bought right now. Nothing was charged; "
    "please try again later or choose another plan.",
    "stripe_error": "Something went wrong on our side. Nothing was charged; "
    "please try again in a moment.",
}


def kind_message(e: BillingError, action: str) -> str:
    """The message a person sees for a billing failure; the cause is logged."""
    log.warning("page %s failed: code=%s cause=%s", action, e.code, e.message)
    return KIND_MESSAGES.get(e.code, e.message)


def plan_name(plan: Plan) -> str:
    """A plan's display name: the plans file's `name`, else its id, capitalised."""
    return plan.display_name
