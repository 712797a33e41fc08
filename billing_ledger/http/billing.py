"""The monetization flows: the user's Stripe customer, then a Checkout or portal session.

A customer is looked up in the ledger's own links first (consistent the moment they are
projected), then by Stripe's Search API (eventually consistent), then by listing (fakes
without search); only then created, with an idempotency key derived from the user id. A
customer learned from Stripe is recorded as a `ledger.customer_link` event of our own
before anyone is answered, so replay knows the link without calling Stripe.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from billing_ledger.http.stripe_client import (
    BillingError,
    Json,
    StripeApi,
    StripeCallError,
    UnknownCustomerError,
    UnknownPriceError,
)
from billing_ledger.ledger.canonical import Item
from billing_ledger.ledger.own_events import link_event, link_event_id, sale_event
from billing_ledger.projections.catalog import Catalog
from billing_ledger.projections.plans import MAX_SEATS, Plan, Plans

# The rule lives in projections/queries; re-exported for the flows' callers.
from billing_ledger.projections.queries import preferred_customer as preferred_customer

if TYPE_CHECKING:
    from billing_ledger.http.state import Services
    from billing_ledger.settings import Settings

CHECKOUT_SESSION_ID = "{CHECKOUT_SESSION_ID}"  # Stripe fills in the session id on redirect


class InvalidPriceError(BillingError):
    """The price exists but cannot be sold here (one-time without a one-time plan, a recurring
    price of a one-time plan, or no longer sold)."""

    code = "invalid_price"


class InvalidQuantityError(BillingError):
    """More seats than the plan sells at once."""

    code = "invalid_quantity"


SUBSCRIPTION_MODE = "subscription"
PAYMENT_MODE = "payment"  # a one-time purchase (a one_time plan's price)


@dataclass(frozen=True)
class CheckoutOptions:
    """How the Checkout Session sells: its mode, and the options of the plan or settings."""

    mode: str = SUBSCRIPTION_MODE
    allow_promotion_codes: bool = False
    automatic_tax: bool = False
    seats: bool = False  # the buyer may change the quantity at Checkout
    max_seats: int = MAX_SEATS


def checkout_options(settings: Settings, plan: Plan | None, mode: str) -> CheckoutOptions:
    """The plan's Checkout options, each falling back to the settings' default."""

    def chosen(own: bool | None, default: bool) -> bool:
        return default if own is None else own

    return CheckoutOptions(
        mode=mode,
        allow_promotion_codes=chosen(
            plan.allow_promotion_codes if plan else None, settings.checkout_promotion_codes
        ),
        automatic_tax=chosen(plan.automatic_tax if plan else None, settings.checkout_automatic_tax),
        seats=bool(plan and plan.seats),
        max_seats=plan.max_seats if plan else MAX_SEATS,
    )


@dataclass(frozen=True)
class CheckoutRequest:
    """What POST /v1/checkout-sessions (and the pricing page) asks for."""

    user_id: str
    price: str  # a price id or a lookup key
    quantity: int = 1


def success_url(app_url: str) -> str:
    """Where Checkout sends the user after paying; the page waits for the webhooks."""
    return f"{app_url}/billing?success=true&session_id={CHECKOUT_SESSION_ID}"


def cancel_url(app_url: str) -> str:
    """Where Checkout sends the user who backs out."""
    return f"{app_url}/pricing?canceled=true"


def checkout_params(
    app_url: str,
    request: CheckoutRequest,
    price_id: str,
    customer: str,
    options: CheckoutOptions = CheckoutOptions(),
) -> Json:
    """The Checkout Session parameters: the user id travels on the session and subscription
    (or payment), the price on the session (a one-time grant reads it there)."""
    line: Json = {"price": price_id, "quantity": request.quantity}
    if options.seats:
        line["adjustable_quantity"] = {"enabled": True, "minimum": 1, "maximum": options.max_seats}
    params: Json = {
        "mode": options.mode,
        "customer": customer,
        "client_reference_id": request.user_id,
        "line_items": [line],
    }
    if options.mode == SUBSCRIPTION_MODE:
        # Session metadata is not copied to the subscription: subscription_data is (Stripe
        # docs, "metadata"), the fallback link should checkout.session.completed be lost.
        params["subscription_data"] = {"metadata": {"app_user_id": request.user_id}}
    else:
        params["payment_intent_data"] = {"metadata": {"app_user_id": request.user_id}}
    params["metadata"] = {"app_user_id": request.user_id, "price": price_id}
    if options.allow_promotion_codes:
        params["allow_promotion_codes"] = True
    if options.automatic_tax:
        params["automatic_tax"] = {"enabled": True}
        # Stripe Tax needs the existing customer's address: Checkout asks and saves it.
        params["customer_update"] = {"address": "auto"}
    params["success_url"] = success_url(app_url)
    params["cancel_url"] = cancel_url(app_url)
    return params


async def create_checkout(deps: Services, api: StripeApi, request: CheckoutRequest) -> Json:
    """Resolve the price (the catalog first), choose the mode and options from its plan,
    find or create the customer, open a Checkout Session and record what it sells."""
    catalog = await deps.reads.catalog_now()
    price = await resolve_price(api, request.price, catalog)
    plan = _plan_of(deps, price)
    mode = checkout_mode(price, plan, request.price)
    options = checkout_options(deps.settings, plan, mode)
    if options.seats and request.quantity > options.max_seats:
        raise InvalidQuantityError(f"At most {options.max_seats} seats can be bought at once.")
    customer = await ensure_customer(deps, api, request.user_id)
    price_id = str(price["id"])
    params = checkout_params(deps.settings.app_url, request, price_id, customer, options)
    # A fresh key per request: a retry is safe, yet a later purchase is a new session.
    session = await api.create_checkout_session(params, f"ledger-checkout-{uuid.uuid4().hex}")
    await record_sale(deps, session, request.user_id, customer, price_id, mode, api.livemode)
    return session


def _plan_of(deps: Services, price: Json) -> Plan | None:
    plans: Plans = deps.reads.plans
    product = price.get("product")
    item = Item(
        str(price["id"]),
        price.get("lookup_key"),
        product.get("id") if isinstance(product, dict) else product,
        None,
        None,
    )
    return plans.plan_for_item(item)


def checkout_mode(price: Json, plan: Plan | None, reference: str) -> str:
    """Payment mode for a one_time plan's one-time price, subscription mode for the rest."""
    one_time_price = price.get("type") == "one_time"
    if plan is not None and plan.one_time:
        if not one_time_price:
            raise InvalidPriceError(f"The price {reference!r} is not a one-time price.")
        return PAYMENT_MODE
    if one_time_price:
        raise InvalidPriceError(f"The price {reference!r} is not a subscription price.")
    return SUBSCRIPTION_MODE


async def create_portal(deps: Services, api: StripeApi, user_id: str, return_url: str) -> Json:
    """A billing portal session for the user's customer; never creates a customer."""
    customer = await find_customer(deps, api, user_id)
    if customer is None:
        raise UnknownCustomerError(
            "There is no billing account for you yet: choose a plan on the pricing page first."
        )
    return await api.create_portal_session(customer, return_url)


async def resolve_price(api: StripeApi, reference: str, catalog: Catalog) -> Json:
    """A `price_...` id, or a lookup key (falling back to an id: legacy plan ids have any form).
    The catalog answers first (no Stripe call for a price the ledger knows)."""
    price = _catalog_price(catalog, reference)
    if price is None and reference.startswith("price_"):
        price = await api.retrieve_price(reference)
    elif price is None:
        found = await api.prices_by_lookup_keys([reference])
        price = found.get(reference) or await api.retrieve_price(reference)
    if price is None:
        raise UnknownPriceError(f"There is no price {reference!r}.")
    if price.get("active") is False:
        raise InvalidPriceError(f"The price {reference!r} is no longer for sale.")
    return price


def _catalog_price(catalog: Catalog, reference: str) -> Json | None:
    """The catalog's price by id or lookup key, in the shape of Stripe's Price object."""
    known = catalog.price(reference) or catalog.by_lookup_key(reference)
    if known is None or known.type is None:
        return None  # too little known (a legacy plan's type): ask Stripe
    fields: dict[str, Any] = known.to_json()
    return fields


# -- the user's customer ----------------------------------------------------------------


async def ensure_customer(deps: Services, api: StripeApi, user_id: str) -> str:
    """The user's customer, created (once, whatever the retries) when there is none."""
    found = await find_customer(deps, api, user_id)
    if found is not None:
        return found
    created = await api.create_customer(user_id)
    await record_link(deps, user_id, created, api.livemode)
    return created


async def find_customer(deps: Services, api: StripeApi, user_id: str) -> str | None:
    """The ledger's link first; then Stripe's, which is recorded in the ledger."""
    known = await ledger_customer(deps, user_id, api.livemode)
    if known is not None:
        return known
    found = await stripe_customer(api, user_id)
    if found is not None:
        await record_link(deps, user_id, found, api.livemode)
    return found


async def stripe_customer(api: StripeApi, user_id: str) -> str | None:
    """Search by metadata; list when the Search API is missing (localstripe has none)."""
    try:
        return await api.search_customer(user_id)
    except StripeCallError:
        return await api.scan_customers(user_id)


async def ledger_customer(deps: Services, user_id: str, livemode: bool) -> str | None:
    """The customer the ledger links to the user, when its mode matches the API key's."""
    if livemode != deps.settings.livemode:
        return None
    found: str | None = await deps.reads.preferred_customer(user_id)
    return found


# -- our own link events ----------------------------------------------------------------


async def record_sale(
    deps: Services,
    session: Json,
    user_id: str,
    customer_id: str,
    price_id: str,
    mode: str,
    livemode: bool,
) -> int:
    """Append the session's sale before answering; raises StorageError when it cannot (the
    session's metadata.price still names the price)."""
    event = sale_event(
        str(session["id"]), user_id, customer_id, price_id, mode, livemode, time.time()
    )
    result = await deps.writer.append(event)
    return result.position


async def record_link(deps: Services, user_id: str, customer_id: str, livemode: bool) -> int:
    """Append the link (once) and return its position; raises StorageError when it cannot."""
    event_id = link_event_id(user_id, customer_id, livemode)
    stored = await run_in_threadpool(deps.store.get, event_id)
    if stored is not None:
        return stored.position
    result = await deps.writer.append(link_event(user_id, customer_id, livemode, time.time()))
    return result.position
