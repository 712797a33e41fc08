"""/billing and the portal: the plan, its price, status, renewal, card and invoices.

The Checkout redirect back to /billing is never trusted: the page waits for the
webhook-projected state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from billing_ledger.http.account import Account, caught_up, checkout_confirmed, load_account
from billing_ledger.http.billing import create_portal
from billing_ledger.http.errors import status_for
from billing_ledger.http.pages.render import (
    MAX_CONFIRM_ATTEMPTS,
    REFRESH_SECONDS,
    PriceTag,
    kind_message,
    page_locale,
    plan_name,
    redirect,
    render,
    sign_in_first,
    signed_post,
    storage_page,
)
from billing_ledger.http.signin import current_user, deps_of
from billing_ledger.http.state import Services
from billing_ledger.http.stripe_client import BillingError, open_stripe
from billing_ledger.ledger.store import StorageError
from billing_ledger.projections.cards import Card, card_on_file
from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import SubscriptionAccess
from billing_ledger.projections.queries import preferred_customer


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


def price_label(
    prices: Mapping[str, PriceTag], price_ids: Iterable[str], locale: str
) -> str | None:
    """What these prices (a subscription's items, a purchase's) cost, when the catalog knows
    them."""
    known = [prices[p] for p in price_ids if p in prices]
    return " + ".join(tag.text(locale) for tag in known) or None


# What a one-time purchase's status means to its owner.
PURCHASE_WORDS = {
    "paid": "Paid once; yours to keep.",
    "refunded": "Refunded; it no longer gives access.",
    "disputed": "The payment was disputed; it no longer gives access.",
}


@dataclass(frozen=True)
class PurchaseRow:
    """A one-time purchase as /billing shows it."""

    name: str
    detail: str
    grants: bool


def purchase_rows(
    account: Account, plans: Plans, prices: Mapping[str, PriceTag], locale: str
) -> list[PurchaseRow]:
    """The user's one-time purchases: the plan bought, its price and what it gives now."""
    rows = []
    for bought in account.entitlements.purchases:
        names = [plan_name(p) for p in plans.plans if p.id in bought.plan_ids]
        price = price_label(prices, bought.price_ids, locale)
        words = PURCHASE_WORDS.get(bought.status, "")
        detail = f"{price}. {words}" if price else words
        rows.append(
            PurchaseRow(", ".join(names) or "One-time purchase", detail, bought.grants_access)
        )
    return rows


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
    rows = [subscription_row(s, price_label(prices, s.price_ids, locale)) for s in account.current]
    purchases = purchase_rows(account, deps.plans, prices, locale)
    context = {
        "page": "billing",
        "account": account,
        "plan_names": [plan_name(p) for p in account.paid_plans(deps.plans)],
        "subscriptions": rows,
        "ending": min((r.ends for r in rows if r.ends), default=None),
        "overdue_until": min((r.overdue_until for r in rows if r.overdue_until), default=None),
        "card": await card_of(deps, account),
        "purchases": purchases,
        "owner": any(p.grants for p in purchases),
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


@signed_post("/billing")
async def open_portal(request: Request, user: str, form: FormData) -> Response:
    """POST /billing/portal: open a portal session on the server, then go there."""
    deps = deps_of(request)
    try:
        async with open_stripe(deps.settings) as api:
            session = await create_portal(deps, api, user, f"{deps.settings.app_url}/billing")
    except BillingError as e:
        return await billing_page(request, user, kind_message(e, "portal"), status_for(e))
    except StorageError:
        return storage_page(request)
    return redirect(str(session["url"]))
