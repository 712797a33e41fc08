"""POST /v1/checkout-sessions and POST /v1/portal-sessions: validate, ask Stripe, answer 201.

Neither grants anything: access follows only from the webhooks the ledger records.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_ledger.http import wire
from billing_ledger.http.billing import CheckoutRequest, create_checkout, create_portal
from billing_ledger.http.errors import NotStoredError, RequestBodyError
from billing_ledger.http.stripe_client import NotConfiguredError, StripeApi, open_stripe
from billing_ledger.http.wire import MAX_REFERENCE, MAX_URL, MAX_USER_ID, answer
from billing_ledger.ledger.store import StorageError
from billing_ledger.ledger.user_ids import RULE, user_id_problem

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

log = logging.getLogger("billing_ledger.sessions")
_Wanted = TypeVar("_Wanted")

MAX_BODY_BYTES = 16 * 1024

# -- validation -------------------------------------------------------------------------


async def json_object(request: Request) -> Mapping[str, Any]:
    """The body as a JSON object, or a RequestBodyError saying what is wrong with it."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise RequestBodyError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RequestBodyError("the body must be JSON") from None
    if not isinstance(parsed, dict):
        raise RequestBodyError("the body must be a JSON object")
    return parsed


def text_field(body: Mapping[str, Any], name: str, limit: int) -> str:
    """A required string field: non-empty, at most `limit` characters, no control characters."""
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RequestBodyError(f"{name} is required and must be a non-empty string")
    if len(value) > limit or not value.isprintable():
        raise RequestBodyError(f"{name} must be at most {limit} printable characters")
    return value


def user_id_field(body: Mapping[str, Any]) -> str:
    """`user_id`: printable, at most 200 characters, and one the reads can serve."""
    value = text_field(body, "user_id", MAX_USER_ID)
    problem = user_id_problem(value)
    if problem is not None:  # a customer linked to it could never be read back
        raise RequestBodyError(f"user_id {problem}: a user id is {RULE}")
    return value


def quantity_field(body: Mapping[str, Any]) -> int:
    """`quantity`: a whole number >= 1, 1 when absent."""
    value = body.get("quantity", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestBodyError("quantity must be a whole number of at least 1")
    return value


def parse_checkout(body: Mapping[str, Any]) -> CheckoutRequest:
    """`{"user_id", "price", "quantity"}` as a CheckoutRequest."""
    return CheckoutRequest(
        user_id=user_id_field(body),
        price=text_field(body, "price", MAX_REFERENCE),
        quantity=quantity_field(body),
    )


def return_url_field(body: Mapping[str, Any], default: str) -> str:
    """An absolute http(s) URL; the billing page when absent."""
    if body.get("return_url") is None:
        return default
    value = text_field(body, "return_url", MAX_URL)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RequestBodyError("return_url must be an absolute http or https URL")
    return value


# -- handlers ---------------------------------------------------------------------------


async def checkout_session(request: Request) -> Response:
    """Open a Checkout Session for the user: subscription mode, or payment mode for a
    one_time plan's price; it records what the session sells and grants nothing."""
    return await _with_stripe(request, lambda _, body: parse_checkout(body), _open_checkout)


async def portal_session(request: Request) -> Response:
    """Open a billing portal session for the user's customer."""
    return await _with_stripe(request, _parse_portal, _open_portal)


async def _open_checkout(deps: Services, api: StripeApi, wanted: CheckoutRequest) -> Response:
    session = await create_checkout(deps, api, wanted)
    log.info("checkout session=%s user=%s price=%s", session["id"], wanted.user_id, wanted.price)
    return answer(wire.CheckoutSession(session["id"], session["url"]), 201)


def _parse_portal(deps: Services, body: Mapping[str, Any]) -> tuple[str, str]:
    return user_id_field(body), return_url_field(body, f"{deps.settings.app_url}/billing")


async def _open_portal(deps: Services, api: StripeApi, wanted: tuple[str, str]) -> Response:
    session = await create_portal(deps, api, *wanted)
    return answer(wire.PortalSession(session["url"]), 201)


async def _with_stripe(
    request: Request,
    parse: Callable[[Services, Mapping[str, Any]], _Wanted],
    send: Callable[[Services, StripeApi, _Wanted], Awaitable[Response]],
) -> Response:
    """Parse the body, then send what it asks with a Stripe client of this request; a bad
    body or a billing error is raised to the app's table of errors (http/errors.py)."""
    deps: Services = request.state.deps
    if not deps.settings.stripe_api_key:
        raise NotConfiguredError("STRIPE_API_KEY is not set")
    wanted = parse(deps, await json_object(request))
    try:
        async with open_stripe(deps.settings) as api:
            return await send(deps, api, wanted)
    except StorageError:
        # The customer link could not be recorded, so nothing is answered: a retry finds the
        # customer again (search or idempotency key) and records the link then.
        raise NotStoredError("the ledger's storage is unavailable; retry later") from None


# Paths relative to the /v1 mount (app.py).
ROUTES = [
    Route("/checkout-sessions", checkout_session, methods=["POST"]),
    Route("/portal-sessions", portal_session, methods=["POST"]),
]
