"""Server-rendered pages: /pricing, /billing, /protected-feature, and the demo sign-in.

Everything shown comes from the projections; Stripe is called only to open a Checkout or
portal session (and to show prices). The Checkout redirect back to /billing is never
trusted: the page waits for the webhook-projected state. No /v1 token is involved.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency
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
from billing_ledger.http.stripe_client import BillingError, open_stripe
from billing_ledger.ledger.store import StorageError
from billing_ledger.projections.cards import Card, card_on_file
from billing_ledger.projections.catalog import Catalog
from billing_ledger.projections.plans import Plan, Plans
from billing_ledger.projections.policy import SubscriptionAccess, access
from billing_ledger.projections.queries import preferred_customer

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

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


@functools.cache
def templates() -> Jinja2Templates:
    """The page templates (built on first use, not at import)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("billing_ledger.http", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
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


# -- pricing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShopPlan:
    """A plan as the pricing page sells it: the page-side model, fed from the catalog."""

    plan: Plan
    name: str
    description: str | None
    prices: tuple[PriceTag, ...]  # the prices offered now (neither archived nor deleted)

    @property
    def one_time(self) -> bool:
        """Bought once (the plans file's mode one_time, or only one-time prices)."""
        return self.plan.one_time or (bool(self.prices) and all(p.once for p in self.prices))

    @property
    def intervals(self) -> tuple[str, ...]:
        """The recurring intervals it is offered at, shortest first."""
        found = {p.interval for p in self.prices if not p.once and p.interval}
        return tuple(i for i in INTERVALS if i in found)

    def price_for(self, interval: str | None) -> PriceTag | None:
        """Its price for the chosen interval, else its first one."""
        chosen = [p for p in self.prices if p.interval == interval and not p.once]
        found = chosen or list(self.prices)
        return found[0] if found else None


@dataclass(frozen=True)
class Offer:
    """One card of the pricing page."""

    shop: ShopPlan
    price: PriceTag | None  # for the interval shown
    current: bool
    highlighted: bool
    addon: bool
    features: tuple[str, ...]  # as a person reads them

    @property
    def plan(self) -> Plan:
        """The plans file's plan."""
        return self.shop.plan

    @property
    def name(self) -> str:
        """The plan's display name."""
        return self.shop.name


def shop_plans(plans: Plans, catalog: Catalog) -> list[ShopPlan]:
    """The paid plans with the catalog's offered prices (matched by id, lookup key or product)."""
    shop: list[ShopPlan] = []
    for entry in (p for p in catalog.plans if not p.default):
        plan = plans.by_id(entry.id)
        if plan is not None:
            prices = tuple(PriceTag.of(p) for p in entry.offered)
            shop.append(ShopPlan(plan, entry.name, entry.description, prices))
    return shop


def feature_lines(plan: Plan, included: tuple[str, ...], base: str) -> tuple[str, ...]:
    """ "Everything in Free" and the features beyond it, as words rather than ids."""
    extra = [f.replace("_", " ").capitalize() for f in plan.features if f not in included]
    keeps_base = bool(included) and set(included) <= set(plan.features)
    return (f"Everything in {base}", *extra) if keeps_base else tuple(extra)


def is_addon(plan: Plan, included: tuple[str, ...]) -> bool:
    """An add-on does not include the free plan's features: it is bought beside a plan."""
    return bool(included) and not set(included) <= set(plan.features)


def highlighted_plan(shop: list[ShopPlan], included: tuple[str, ...], wanted: str | None) -> str:
    """The plan the page recommends: LEDGER_HIGHLIGHT_PLAN, else the plan granting most."""
    ids = {s.plan.id for s in shop}
    if wanted in ids:
        return str(wanted)
    main = [s for s in shop if not is_addon(s.plan, included)] or shop
    best = max(main, key=lambda s: (len(s.plan.features), not s.one_time), default=None)
    return best.plan.id if best is not None else ""


def chosen_interval(request: Request, shop: list[ShopPlan]) -> tuple[str | None, list[str]]:
    """The interval shown (?interval=, default the shortest) and the ones to switch between."""
    offered = sorted({i for s in shop for i in s.intervals}, key=INTERVALS.index)
    asked = request.query_params.get("interval")
    if asked in offered:
        return asked, offered
    return (offered[0] if offered else None), offered


async def offers(request: Request, held: set[str]) -> tuple[list[Offer], list[str], str | None]:
    """The pricing page's cards, the intervals to switch between and the one shown."""
    deps = deps_of(request)
    plans: Plans = deps.plans
    included = plans.default_features()
    base = next((plan_name(p) for p in plans.plans if p.default), "Free")
    shop = shop_plans(plans, await deps.reads.catalog_now())
    interval, intervals = chosen_interval(request, shop)
    top = highlighted_plan(shop, included, deps.settings.highlight_plan)
    listed = [
        Offer(
            shop=s,
            price=s.price_for(interval),
            current=s.plan.id in held,
            highlighted=s.plan.id == top,
            addon=is_addon(s.plan, included),
            features=feature_lines(s.plan, included, base),
        )
        for s in shop
    ]
    switch = intervals if any(len(s.intervals) > 1 for s in shop) else []
    return listed, switch, interval


async def pricing_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    """The pricing page for whoever is looking (signed in or not); no Stripe call."""
    user = current_user(request)
    held = set((await load_account(deps_of(request), user)).entitlements.plans) if user else set()
    notice = None
    if request.query_params.get("canceled") == "true":
        notice = "Checkout canceled — nothing was charged. Pick a plan whenever you are ready."
    listed, switch, interval = await offers(request, held)
    context = {
        "page": "pricing",
        "plans_offered": [o for o in listed if not o.addon],
        "addons": [o for o in listed if o.addon],
        "switch": switch,
        "interval": interval,
        "interval_names": INTERVAL_NAMES,
        "included": [f.replace("_", " ") for f in deps_of(request).plans.default_features()],
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


def price_reference(plan: Plan) -> str | None:
    """A lookup key survives a price change in Stripe, so it is preferred over an id."""
    if plan.lookup_keys:
        return plan.lookup_keys[0]
    return plan.prices[0] if plan.prices else None


async def plan_for_sale(deps: Services, plan_id: str, interval: str) -> tuple[Plan, str] | None:
    """A plan the pricing page offers, with what Checkout is asked for: the catalog's price
    for the chosen interval when it knows one, else the plan's lookup key or price id."""
    plan = deps.plans.by_id(plan_id)
    if plan is None or plan.default:
        return None
    shop = shop_plans(deps.plans, await deps.reads.catalog_now())
    mine = next((s for s in shop if s.plan.id == plan.id), None)
    price = mine.price_for(interval) if mine is not None and interval in mine.intervals else None
    reference = price.id if price is not None else price_reference(plan)
    return (plan, reference) if reference is not None else None


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
    try:
        offered = await plan_for_sale(
            deps_of(request), str(form.get("plan", "")), str(form.get("interval", ""))
        )
        if offered is None:
            return await pricing_page(request, "That plan is not available.", 400)
        return redirect(await checkout_url(request, user, *offered))
    except BillingError as e:
        return await pricing_page(request, kind_message(e, "checkout"), status_for(e))
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


@dataclass(frozen=True)
class SubscriptionRow:
    """One subscription as the billing page states it: only dates that will happen."""

    sub: SubscriptionAccess
    price: str | None  # the plan's price, when the catalog knows it
    ends: int | None  # a scheduled cancellation: the plan ends then and does not renew
    trial_end: int | None  # a trial that will turn into a paid period
    renews: int | None  # the next renewal, only when one will happen
    overdue_until: int | None  # past_due: access kept until then, unless the payment succeeds


def subscription_row(sub: SubscriptionAccess, price: str | None) -> SubscriptionRow:
    """What will happen next to a subscription that has not ended."""
    ends = (sub.cancel_at or sub.current_period_end) if sub.cancel_at_period_end else sub.cancel_at
    trial = sub.trial_end if sub.status == "trialing" and not ends else None
    # past_due, unpaid, incomplete, paused: no renewal until the payment problem is solved.
    renews = sub.current_period_end if sub.status == "active" and not ends else None
    overdue = sub.access_until if sub.status == "past_due" and sub.grants_access else None
    return SubscriptionRow(sub, price, ends, trial, renews, overdue)


def price_label(prices: Mapping[str, PriceTag], sub: SubscriptionAccess, locale: str) -> str | None:
    """The price the subscription's items are billed at, when the catalog knows them."""
    known = [prices[p] for p in sub.price_ids if p in prices]
    return " + ".join(tag.text(locale) for tag in known) or None


async def price_tags(deps: Services) -> dict[str, PriceTag]:
    """Every price the ledger knows, by id, from the catalog's read model (no Stripe call)."""
    catalog = await deps.reads.catalog_now()
    return {p.id: PriceTag.of(p) for p in catalog.prices.values()}


async def card_of(deps: Services, account: Account) -> Card | None:
    """The card the user's preferred customer pays with, from the card facts view."""
    customers = list(account.entitlements.customer_ids)
    preferred = preferred_customer(account.inputs, account.at)
    if preferred in customers:
        customers = [preferred, *[c for c in customers if c != preferred]]
    facts = await deps.reads.card_facts(customers)
    return card_on_file(facts, customers)


async def billing_page(request: Request, user: str, error: str | None, status: int) -> Response:
    """The user's plan, price, status, renewal, cancellation, card and invoices."""
    deps = deps_of(request)
    query = request.query_params
    session_id = query.get("session_id") if query.get("success") == "true" else None
    account = await load_account(deps, user)
    if session_id and not checkout_confirmed(account, session_id):
        await caught_up(deps)  # the webhooks may be stored but not yet projected
        account = await load_account(deps, user)
    confirming = session_id is not None and not checkout_confirmed(account, session_id)
    locale = page_locale(request)
    prices = await price_tags(deps)
    rows = [subscription_row(s, price_label(prices, s, locale)) for s in account.current]
    context = {
        "page": "billing",
        "account": account,
        "plan_names": [plan_name(p) for p in account.paid_plans(deps.plans)],
        "subscriptions": rows,
        "ending": min((r.ends for r in rows if r.ends), default=None),
        "overdue_until": min((r.overdue_until for r in rows if r.overdue_until), default=None),
        "card": await card_of(deps, account),
        "purchases": [],
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
        return await billing_page(request, user, kind_message(e, "portal"), status_for(e))
    except StorageError:
        return storage_page(request)
    return redirect(str(session["url"]))


# -- the gated feature ------------------------------------------------------------------


def plan_name(plan: Plan) -> str:
    """A plan's display name: the plans file's `name`, else its id, capitalised."""
    return plan.display_name


def access_note(account: Account) -> str:
    """One friendly sentence on how long the user's access lasts."""
    for sub in account.current:
        if sub.status == "past_due" and sub.access_until:
            return (
                "Your last payment did not go through: access continues until "
                f"{day(sub.access_until)} while it is retried."
            )
        if sub.cancel_at or sub.cancel_at_period_end:
            return f"Your plan ends on {day(sub.cancel_at or sub.current_period_end)}."
        if sub.status == "trialing" and sub.trial_end:
            return f"You are on a free trial until {day(sub.trial_end)}."
    return "Thank you for being a customer."


def denied_note(account: Account) -> tuple[str | None, bool]:
    """Why a user without the feature lost it, in plain words, and whether billing can help."""
    if account.has_warning("payment_failed"):
        note = (
            "Your last payment did not go through. Update your payment method to get access back."
        )
        return note, True
    if account.ended:
        return "Your subscription has ended. Choose a plan to get access again.", False
    return None, False


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
    log.debug("protected feature: user=%s allowed=%s reason=%s", user, allowed, reason)
    context: dict[str, Any] = {"page": "feature", "feature": PROTECTED_FEATURE}
    if allowed:
        holding = [plan_name(p) for p in account.paid_plans(deps.plans)]
        note = access_note(account)
        return render(request, "protected.html", {**context, "holding": holding, "why": note})
    granting = [
        plan_name(p) for p in deps.plans.plans if PROTECTED_FEATURE in p.features and not p.default
    ]
    why, billing_link = denied_note(account)
    extra = {"granting": granting, "why": why, "billing_link": billing_link}
    return render(request, "denied.html", {**context, **extra}, 403)


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
