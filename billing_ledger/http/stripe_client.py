"""A thin wrapper over the official Stripe SDK: the few calls Checkout, the portal and pages make.

Every SDK error is translated here, once, into a `BillingError` with a stable code and a
message a user may read; handlers choose the HTTP status. The SDK's synchronous client runs
in Starlette's thread pool: its httpx client posts bodies through an argument httpx
deprecates (a DeprecationWarning per call), its requests client does not. One requests
session per request, closed after it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import requests
import stripe
from starlette.concurrency import run_in_threadpool

from billing_ledger.settings import Settings

# Defined once for the HTTP side and the commands; the handlers import them from here.
from billing_ledger.stripe_errors import BillingError as BillingError
from billing_ledger.stripe_errors import NotConfiguredError as NotConfiguredError
from billing_ledger.stripe_errors import StripeUnavailableError as StripeUnavailableError

log = logging.getLogger("billing_ledger.stripe")

Json = dict[str, Any]
_T = TypeVar("_T")

TIMEOUT_SECONDS = 20  # a user is waiting on the other side of these calls
NETWORK_RETRIES = 2  # the SDK retries only what is safe: POSTs carry idempotency keys
SCAN_LIMIT = 10_000  # the customer listing fallback gives up after this many customers


class CardDeclinedError(BillingError):
    """Stripe declined the card."""

    code = "card_declined"


class UnknownPriceError(BillingError):
    """No active, recurring price has this id or lookup key."""

    code = "unknown_price"


class UnknownCustomerError(BillingError):
    """The user has no Stripe customer yet."""

    code = "unknown_customer"


class StripeCallError(BillingError):
    """Any other Stripe failure."""

    code = "stripe_error"


UNAVAILABLE = (
    "We could not reach our payment provider. Nothing was charged; please try again in a moment."
)
DECLINED = "Your card was declined. Nothing was charged; please try another card."
FAILED = "Our payment provider could not complete the request. Nothing was charged."


def is_live_key(api_key: str) -> bool:
    """Whether a secret or restricted key belongs to live mode (its prefix says so)."""
    return api_key.startswith(("sk_live_", "rk_live_"))


def customer_idempotency_key(user_id: str) -> str:
    """One key per user: a retried creation returns the first customer, never a second."""
    return "ledger-customer-" + hashlib.sha256(user_id.encode()).hexdigest()[:40]


def search_query(user_id: str) -> str:
    """Stripe's search language for customers tagged with this user (quotes escaped)."""
    quoted = user_id.replace("\\", "\\\\").replace("'", "\\'")
    return f"metadata['app_user_id']:'{quoted}'"


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn the SDK's errors into BillingErrors, logging what Stripe said."""
    try:
        yield
    except stripe.StripeError as error:
        log.warning(
            "stripe call failed: action=%s error=%s status=%s code=%s request=%s message=%s",
            action,
            type(error).__name__,
            error.http_status,
            error.code,
            error.request_id,
            error.user_message or str(error),
        )
        raise _billing_error(error) from None


def _billing_error(error: stripe.StripeError) -> BillingError:
    if isinstance(error, stripe.CardError):
        return CardDeclinedError(DECLINED)
    if isinstance(error, stripe.APIConnectionError | stripe.RateLimitError):
        return StripeUnavailableError(UNAVAILABLE)
    if isinstance(error, stripe.APIError) and (error.http_status or 500) >= 500:
        return StripeUnavailableError(UNAVAILABLE)
    if isinstance(error, stripe.InvalidRequestError) and _names_price(error):
        return UnknownPriceError("That price does not exist or is no longer for sale.")
    return StripeCallError(FAILED)


def _names_price(error: stripe.InvalidRequestError) -> bool:
    return error.code == "resource_missing" and "price" in (error.param or "")


class StripeApi:
    """The calls the ledger makes, each answering plain dicts (`to_dict()`)."""

    def __init__(self, client: stripe.StripeClient, livemode: bool) -> None:
        self.client = client
        self.livemode = livemode

    async def _call(self, method: Callable[..., _T], *args: Any) -> _T:
        """One blocking SDK call, off the event loop."""
        return await run_in_threadpool(functools.partial(method, *args))

    async def search_customer(self, user_id: str) -> str | None:
        """The oldest live customer whose metadata names the user, by the Search API."""
        with translated("customers.search"):
            found = await self._call(
                self.client.v1.customers.search, {"query": search_query(user_id), "limit": 10}
            )
        return _oldest([c.to_dict() for c in found.data], user_id)

    async def scan_customers(self, user_id: str) -> str | None:
        """The same answer by listing customers: for fakes without the Search API."""
        matches: list[Json] = []
        scanned = 0
        with translated("customers.list"):
            page = await self._call(self.client.v1.customers.list, {"limit": 100})
            while True:
                matches += _tagged([c.to_dict() for c in page.data], user_id)
                scanned += len(page.data)
                if not page.has_more or not page.data or scanned >= SCAN_LIMIT:
                    break
                page = await self._call(
                    self.client.v1.customers.list,
                    {"limit": 100, "starting_after": page.data[-1].id},
                )
        return _oldest(matches, user_id)

    async def create_customer(self, user_id: str) -> str:
        """A new customer tagged with the user; the idempotency key makes retries harmless."""
        with translated("customers.create"):
            customer = await self._call(
                self.client.v1.customers.create,
                {"metadata": {"app_user_id": user_id}},
                {"idempotency_key": customer_idempotency_key(user_id)},
            )
        return str(customer.id)

    async def retrieve_price(self, price_id: str) -> Json | None:
        """A price by id, or None when Stripe has no such price."""
        with translated("prices.retrieve"):
            try:
                price = await self._call(self.client.v1.prices.retrieve, price_id)
            except stripe.InvalidRequestError as error:
                if error.http_status == 404:
                    return None
                raise
        return price.to_dict()

    async def prices_by_lookup_keys(self, keys: list[str]) -> dict[str, Json]:
        """Active prices keyed by their lookup key (Stripe takes at most 10 keys a call)."""
        found: dict[str, Json] = {}
        for start in range(0, len(keys), 10):
            with translated("prices.list"):
                page = await self._call(
                    self.client.v1.prices.list,
                    {"lookup_keys": keys[start : start + 10], "active": True, "limit": 100},
                )
            found |= {p["lookup_key"]: p for p in (x.to_dict() for x in page.data)}
        return found

    async def create_checkout_session(self, params: Json, idempotency_key: str) -> Json:
        """A Checkout Session (Stripe hosts the page; the webhooks tell us the outcome)."""
        with translated("checkout.sessions.create"):
            session = await self._call(
                self.client.v1.checkout.sessions.create,
                params,
                {"idempotency_key": idempotency_key},
            )
        return session.to_dict()

    async def create_portal_session(self, customer_id: str, return_url: str) -> Json:
        """A billing portal session for one customer."""
        with translated("billing_portal.sessions.create"):
            session = await self._call(
                self.client.v1.billing_portal.sessions.create,
                {"customer": customer_id, "return_url": return_url},
            )
        return session.to_dict()


def _tagged(customers: list[Json], user_id: str) -> list[Json]:
    return [
        c
        for c in customers
        if not c.get("deleted") and (c.get("metadata") or {}).get("app_user_id") == user_id
    ]


def _oldest(customers: list[Json], user_id: str) -> str | None:
    """The earliest-created customer tagged with the user (several exist only by accident)."""
    mine = _tagged(customers, user_id)
    mine.sort(key=lambda c: (c.get("created") or 0, c["id"]))
    return str(mine[0]["id"]) if mine else None


@contextlib.asynccontextmanager
async def open_stripe(settings: Settings) -> AsyncIterator[StripeApi]:
    """A StripeApi for one request (STRIPE_API_BASE points it at a fake); closed afterwards."""
    if not settings.stripe_api_key:
        raise NotConfiguredError("Billing is not configured: STRIPE_API_KEY is not set.")
    session = requests.Session()
    client = stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        http_client=stripe.RequestsClient(timeout=TIMEOUT_SECONDS, session=session),
        max_network_retries=NETWORK_RETRIES,
    )
    try:
        yield StripeApi(client, livemode=is_live_key(settings.stripe_api_key))
    finally:
        session.close()
