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
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from billing_ledger.http.stripe_client import (
    BillingError,
    Json,
    StripeApi,
    StripeCallError,
    UnknownCustomerError,
    UnknownPriceError,
)
from billing_ledger.ledger.own_events import link_event, link_event_id

# The rule lives in projections/queries; re-exported for the flows' callers.
from billing_ledger.projections.queries import preferred_customer as preferred_customer

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

CHECKOUT_SESSION_ID = "{CHECKOUT_SESSION_ID}"  # Stripe fills in the session id on redirect


class InvalidPriceError(BillingError):
    """The price exists but cannot start a subscription (one-time, or no longer sold)."""

    code = "invalid_price"


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


def checkout_params(app_url: str, request: CheckoutRequest, price_id: str, customer: str) -> Json:
    """The Checkout Session parameters: the user id travels on the session and subscription."""
    return {
        "mode": "subscription",
        "customer": customer,
        "client_reference_id": request.user_id,
        "line_items": [{"price": price_id, "quantity": request.quantity}],
        # Session metadata is not copied to the subscription: subscription_data is (Stripe docs,
        # "metadata"), and it is the fallback link should checkout.session.completed be lost.
        "subscription_data": {"metadata": {"app_user_id": request.user_id}},
        "metadata": {"app_user_id": request.user_id},
        "success_url": success_url(app_url),
        "cancel_url": cancel_url(app_url),
    }


async def create_checkout(deps: Services, api: StripeApi, request: CheckoutRequest) -> Json:
    """Resolve the price, find or create the customer, and open a Checkout Session."""
    price = await resolve_price(api, request.price)
    customer = await ensure_customer(deps, api, request.user_id)
    params = checkout_params(deps.settings.app_url, request, str(price["id"]), customer)
    # A fresh key per request: a retry is safe, yet a later purchase is a new session.
    return await api.create_checkout_session(params, f"ledger-checkout-{uuid.uuid4().hex}")


async def create_portal(deps: Services, api: StripeApi, user_id: str, return_url: str) -> Json:
    """A billing portal session for the user's customer; never creates a customer."""
    customer = await find_customer(deps, api, user_id)
    if customer is None:
        raise UnknownCustomerError(
            "There is no billing account for you yet: choose a plan on the pricing page first."
        )
    return await api.create_portal_session(customer, return_url)


async def resolve_price(api: StripeApi, reference: str) -> Json:
    """A `price_...` id, or a lookup key (falling back to an id: legacy plan ids have any form)."""
    if reference.startswith("price_"):
        price = await api.retrieve_price(reference)
    else:
        found = await api.prices_by_lookup_keys([reference])
        price = found.get(reference) or await api.retrieve_price(reference)
    if price is None:
        raise UnknownPriceError(f"There is no price {reference!r}.")
    if price.get("active") is False:
        raise InvalidPriceError(f"The price {reference!r} is no longer for sale.")
    if price.get("type") == "one_time":
        raise InvalidPriceError(f"The price {reference!r} is not a subscription price.")
    return price


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
    if deps.reads is None or livemode != deps.settings.livemode:
        return None
    found: str | None = await deps.reads.preferred_customer(user_id)
    return found


# -- our own link events ----------------------------------------------------------------


async def record_link(deps: Services, user_id: str, customer_id: str, livemode: bool) -> int:
    """Append the link (once) and return its position; raises StorageError when it cannot."""
    event_id = link_event_id(user_id, customer_id, livemode)
    stored = await run_in_threadpool(deps.store.get, event_id)
    if stored is not None:
        return stored.position
    result = await deps.writer.append(link_event(user_id, customer_id, livemode, time.time()))
    return result.position
