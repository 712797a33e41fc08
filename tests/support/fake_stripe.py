"""An HTTP-level fake of the Stripe endpoints localstripe lacks: Checkout, portal, Prices.

One STRIPE_API_BASE serves every call, so the fake answers Checkout Sessions, billing portal
sessions, Prices (and, when asked, the customer Search API) itself and proxies everything
else to localstripe. Like Stripe it checks what the SDK sends (required parameters, that
the price and customer exist, idempotency keys replayed with the same parameters) and
answers real-shaped objects whose `url`s lead to small hosted pages: a Checkout page whose
Pay button redirects to the success URL, and a portal page with a return link.
It records every request (`requests`) for the tests to inspect.
"""

from __future__ import annotations

import html
import re
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

Json = dict[str, Any]
Handler = Callable[["Request", "Seen"], Awaitable["Response"]]

API_KEY = "sk_test_fake_stripe"


def recurring_price(
    price_id: str, lookup_key: str | None, product: str, amount: int, currency: str = "usd"
) -> Json:
    """A recurring monthly Price object as Stripe renders it."""
    return {
        "id": price_id,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": 1767225600,
        "currency": currency,
        "livemode": False,
        "lookup_key": lookup_key,
        "metadata": {},
        "nickname": None,
        "product": product,
        "recurring": {
            "interval": "month",
            "interval_count": 1,
            "meter": None,
            "usage_type": "licensed",
        },
        "tax_behavior": "unspecified",
        "type": "recurring",
        "unit_amount": amount,
        "unit_amount_decimal": str(amount),
    }


# The example plans file's prices, plus a one-time price and a retired one.
CATALOGUE = [
    recurring_price("price_basic", "basic_monthly", "prod_basic", 900),
    recurring_price("price_pro", "pro_monthly", "prod_pro", 2000),
    recurring_price("price_addon", "addon_monthly", "prod_addon", 500),
    {
        **recurring_price("price_setup", "setup_fee", "prod_setup", 5000),
        "type": "one_time",
        "recurring": None,
    },
    {**recurring_price("price_retired", "retired_monthly", "prod_pro", 1500), "active": False},
    {
        **recurring_price("price_lifetime", "lifetime_once", "prod_lifetime", 9900),
        "type": "one_time",
        "recurring": None,
    },
]


@dataclass(frozen=True)
class Seen:
    """One request as the fake received it: form or query parameters flattened as sent."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class _Failure:
    status: int
    body: Json
    times: int


@dataclass
class FakeState:
    """Everything the fake remembers; `reset()` between tests."""

    requests: list[Seen] = field(default_factory=list)
    sessions: dict[str, Json] = field(default_factory=dict)
    sent: dict[str, dict[str, str]] = field(default_factory=dict)  # session id -> its params
    portals: dict[str, Json] = field(default_factory=dict)
    idempotent: dict[str, tuple[dict[str, str], int, bytes]] = field(default_factory=dict)
    failures: dict[str, _Failure] = field(default_factory=dict)
    search: str | None = None  # None: no Search API (like localstripe); "live"; "lagging"


def stripe_error(status: int, type_: str, message: str, **extra: Any) -> tuple[int, Json]:
    """An error body in Stripe's shape."""
    return status, {"error": {"type": type_, "message": message, **extra}}


CARD_DECLINED = stripe_error(
    402,
    "card_error",
    "Your card was declined.",
    code="card_declined",
    decline_code="generic_decline",
)
API_ERROR = stripe_error(500, "api_error", "Something went wrong on Stripe's end.")


class FakeStripe:
    """The fake, served by uvicorn in a thread on 127.0.0.1."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.state = FakeState()
        self.prices = {p["id"]: p for p in CATALOGUE}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.webhook: tuple[str, str] | None = None
        config = uvicorn.Config(
            self.app(),
            lifespan="off",
            ws="none",
            http="h11",
            loop="asyncio",
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="fake-stripe", daemon=True
        )

    # -- control ------------------------------------------------------------------------

    def start(self) -> FakeStripe:
        """Serve until `stop()`."""
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake Stripe did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def reset(self) -> None:
        """Forget every request, session, idempotency key and pending failure."""
        self.state = FakeState()

    def fail_next(self, route: str, failure: tuple[int, Json], times: int = 1) -> None:
        """Answer the next `times` calls of `route` ("POST /v1/checkout/sessions") with an error."""
        self.state.failures[route] = _Failure(failure[0], failure[1], times)

    def enable_search(self, lagging: bool = False) -> None:
        """Answer GET /v1/customers/search; `lagging` finds nothing, as Stripe's index may
        right after a write ("don't use search in read-after-write flows")."""
        self.state.search = "lagging" if lagging else "live"

    def seen(self, method: str, path: str) -> list[Seen]:
        """The requests received for one route, oldest first."""
        return [r for r in self.state.requests if r.method == method and r.path == path]

    # -- the app ------------------------------------------------------------------------

    def app(self) -> Starlette:
        """The Starlette app the fake serves."""
        return Starlette(
            routes=[
                Route("/v1/checkout/sessions", self._api(self.create_session), methods=["POST"]),
                Route("/v1/checkout/sessions/{id}", self._api(self.get_session), methods=["GET"]),
                Route(
                    "/v1/billing_portal/sessions", self._api(self.create_portal), methods=["POST"]
                ),
                Route("/v1/prices", self._api(self.list_prices), methods=["GET"]),
                Route("/v1/prices/{id}", self._api(self.get_price), methods=["GET"]),
                Route("/v1/customers/search", self._api(self.search_customers), methods=["GET"]),
                Route("/v1/{path:path}", self._api(self.proxy), methods=["GET", "POST", "DELETE"]),
                Route("/c/pay/{id}", self.checkout_page, methods=["GET"]),
                Route("/c/pay/{id}/complete", self.complete, methods=["POST"]),
                Route("/p/session/{id}", self.portal_page, methods=["GET"]),
            ]
        )

    def _api(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Record the request; answer an injected failure or an idempotent replay; else
        the handler (remembering a POST's answer under its idempotency key)."""

        async def endpoint(request: Request) -> Response:
            seen = await self._seen(request)
            post = request.method == "POST"
            early = (self._replayed(seen) if post else None) or self._failure(seen)
            if early is not None:
                return early
            response = await handler(request, seen)
            return self._remember(seen, response) if post else response

        return endpoint

    async def _seen(self, request: Request) -> Seen:
        raw = (await request.body()).decode() if request.method == "POST" else request.url.query
        seen = Seen(
            request.method,
            request.url.path,
            dict(parse_qsl(raw, keep_blank_values=True)),
            {k.lower(): v for k, v in request.headers.items()},
        )
        self.state.requests.append(seen)
        return seen

    def _failure(self, seen: Seen) -> Response | None:
        failure = self.state.failures.get(f"{seen.method} {seen.path}")
        if failure is None or failure.times <= 0:
            return None
        failure.times -= 1
        # As Stripe does for errors a retry cannot fix: the SDK then answers at once.
        response = _json(failure.body, failure.status)
        response.headers["stripe-should-retry"] = "false"
        return response

    async def _customer_exists(self, customer: str, seen: Seen) -> bool:
        auth = {"authorization": seen.headers.get("authorization", "")}
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{self.upstream}/v1/customers/{customer}", headers=auth)
        return answer.status_code == 200 and not answer.json().get("deleted")

    def _replayed(self, seen: Seen) -> Response | None:
        """Stripe's idempotency: the same key answers the first response, or refuses."""
        key = seen.headers.get("idempotency-key")
        if key is None or key not in self.state.idempotent:
            return None
        params, status, body = self.state.idempotent[key]
        if params != seen.params:
            return _error(
                400,
                "idempotency_error",
                "Keys for idempotent requests "
                "can only be used with the same parameters they were "
                "first used with.",
            )
        return Response(
            body, status, media_type="application/json", headers={"idempotent-replayed": "true"}
        )

    def _remember(self, seen: Seen, response: Response) -> Response:
        key = seen.headers.get("idempotency-key")
        if key is not None and response.status_code < 500:
            self.state.idempotent[key] = (seen.params, response.status_code, bytes(response.body))
        return response

    # -- Checkout -----------------------------------------------------------------------

    async def create_session(self, request: Request, seen: Seen) -> Response:
        """POST /v1/checkout/sessions."""
        problem = await self._session_problem(seen)
        if problem is not None:
            return _json(problem[1], problem[0])
        session = self._session(seen.params)
        self.state.sessions[session["id"]] = session
        self.state.sent[session["id"]] = seen.params
        return _json(session)

    async def _session_problem(self, seen: Seen) -> tuple[int, Json] | None:
        p = seen.params
        for name in ("mode", "success_url"):
            if not p.get(name):
                return stripe_error(
                    400,
                    "invalid_request_error",
                    f"Missing required param: {name}.",
                    code="parameter_missing",
                    param=name,
                )
        prices = [v for k, v in sorted(p.items()) if re.fullmatch(r"line_items\[\d+\]\[price\]", k)]
        if not prices:
            return stripe_error(
                400,
                "invalid_request_error",
                "line_items is required.",
                code="parameter_missing",
                param="line_items",
            )
        for index, price_id in enumerate(prices):
            price = self.prices.get(price_id)
            if price is None or not price["active"]:
                return stripe_error(
                    400,
                    "invalid_request_error",
                    f"No such price: '{price_id}'",
                    code="resource_missing",
                    param=f"line_items[{index}][price]",
                )
            if p["mode"] == "subscription" and price["type"] != "recurring":
                return stripe_error(
                    400,
                    "invalid_request_error",
                    "You must provide at least one recurring price in `subscription` mode.",
                    param=f"line_items[{index}][price]",
                )
            if p["mode"] == "payment" and price["type"] == "recurring":
                return stripe_error(
                    400,
                    "invalid_request_error",
                    "You specified `payment` mode but passed a recurring price.",
                    param=f"line_items[{index}][price]",
                )
        if (
            p.get("automatic_tax[enabled]") == "true"
            and p.get("customer")
            and (p.get("customer_update[address]") != "auto")
        ):
            # Stripe's rule: an existing customer without an address needs Checkout to ask.
            return stripe_error(
                400,
                "invalid_request_error",
                "Automatic tax calculation in Checkout requires a valid address on the "
                "Customer. Set `customer_update[address]` to 'auto'.",
                param="automatic_tax[enabled]",
            )
        if p.get("mode") == "payment" and p.get("subscription_data[metadata][app_user_id]"):
            return stripe_error(
                400,
                "invalid_request_error",
                "You can not pass `subscription_data` in `payment` mode.",
                param="subscription_data",
            )
        customer = p.get("customer")
        if customer and not await self._customer_exists(customer, seen):
            return stripe_error(
                400,
                "invalid_request_error",
                f"No such customer: '{customer}'",
                code="resource_missing",
                param="customer",
            )
        return None

    def _session(self, p: dict[str, str]) -> Json:
        session_id = f"cs_test_{secrets.token_hex(12)}"
        metadata = {k[9:-1]: v for k, v in p.items() if k.startswith("metadata[")}
        return {
            "id": session_id,
            "object": "checkout.session",
            "cancel_url": p.get("cancel_url"),
            "client_reference_id": p.get("client_reference_id"),
            "created": int(time.time()),
            "currency": "usd",
            "customer": p.get("customer"),
            "expires_at": int(time.time()) + 86400,
            "livemode": False,
            "metadata": metadata,
            "mode": p["mode"],
            "payment_status": "unpaid",
            "status": "open",
            "subscription": None,
            "success_url": p["success_url"],
            "url": f"{self.url}/c/pay/{session_id}",
        }

    async def get_session(self, request: Request, seen: Seen) -> Response:
        """GET /v1/checkout/sessions/{id}."""
        session = self.state.sessions.get(request.path_params["id"])
        if session is None:
            return _error(
                404,
                "invalid_request_error",
                "No such checkout.session",
                code="resource_missing",
                param="id",
            )
        return _json(session)

    async def checkout_page(self, request: Request) -> Response:
        """The hosted Checkout page: Pay (redirect to success_url) or go back (cancel_url)."""
        session = self.state.sessions.get(request.path_params["id"])
        if session is None:
            return HTMLResponse("<h1>Checkout session not found</h1>", 404)
        price = self.state.sent[session["id"]].get("line_items[0][price]", "")
        cancel = html.escape(session["cancel_url"] or "/")
        return HTMLResponse(
            "<!doctype html><title>Fake Checkout</title><h1>Fake Stripe Checkout</h1>"
            f"<p id='price'>{html.escape(price)}</p>"
            f"<form method='post' action='/c/pay/{session['id']}/complete'>"
            "<button id='pay'>Pay</button></form>"
            f"<a id='back' href='{cancel}'>Back</a>"
        )

    async def complete(self, request: Request) -> Response:
        """Pay: the session completes and the browser goes to the success URL (no webhooks:
        the test sends those, as Stripe does, independently of the redirect)."""
        session = self.state.sessions[request.path_params["id"]]
        session.update(status="complete", payment_status="paid")
        if session["mode"] == "payment":  # a one-time payment: a PaymentIntent, no subscription
            session["payment_intent"] = f"pi_{secrets.token_hex(8)}"
        else:
            session["subscription"] = f"sub_{secrets.token_hex(8)}"
        target = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
        return RedirectResponse(target, status_code=303)

    # -- billing portal -----------------------------------------------------------------

    async def create_portal(self, request: Request, seen: Seen) -> Response:
        """POST /v1/billing_portal/sessions."""
        customer = seen.params.get("customer")
        if not customer:
            return _error(
                400,
                "invalid_request_error",
                "Missing required param: customer.",
                code="parameter_missing",
                param="customer",
            )
        if not await self._customer_exists(customer, seen):
            return _error(
                400,
                "invalid_request_error",
                f"No such customer: '{customer}'",
                code="resource_missing",
                param="customer",
            )
        portal_id = f"bps_{secrets.token_hex(12)}"
        portal = {
            "id": portal_id,
            "object": "billing_portal.session",
            "configuration": "bpc_fake_default",
            "created": int(time.time()),
            "customer": customer,
            "flow": None,
            "livemode": False,
            "locale": None,
            "on_behalf_of": None,
            "return_url": seen.params.get("return_url"),
            "url": f"{self.url}/p/session/{portal_id}",
        }
        self.state.portals[portal_id] = portal
        return _json(portal)

    async def portal_page(self, request: Request) -> Response:
        """The hosted portal page, with its return link."""
        portal = self.state.portals.get(request.path_params["id"])
        if portal is None:
            return HTMLResponse("<h1>Portal session not found</h1>", 404)
        back = html.escape(portal["return_url"] or "/")
        return HTMLResponse(
            "<!doctype html><title>Fake portal</title><h1>Fake billing "
            f"portal</h1><p>{html.escape(portal['customer'])}</p>"
            f"<a id='return' href='{back}'>Return</a>"
        )

    # -- prices -------------------------------------------------------------------------

    async def list_prices(self, request: Request, seen: Seen) -> Response:
        """GET /v1/prices with lookup_keys[] and active filters."""
        keys = {v for k, v in seen.params.items() if k.startswith("lookup_keys")}
        active = seen.params.get("active")
        found = [
            p
            for p in self.prices.values()
            if (not keys or p["lookup_key"] in keys)
            and (active is None or str(p["active"]).lower() == active)
        ]
        return _json({"object": "list", "data": found, "has_more": False, "url": "/v1/prices"})

    async def get_price(self, request: Request, seen: Seen) -> Response:
        """GET /v1/prices/{id}."""
        price = self.prices.get(request.path_params["id"])
        if price is None:
            return _error(
                404,
                "invalid_request_error",
                f"No such price: '{request.path_params['id']}'",
                code="resource_missing",
                param="id",
            )
        return _json(price)

    # -- customers: search on request, the rest proxied ---------------------------------

    async def search_customers(self, request: Request, seen: Seen) -> Response:
        """GET /v1/customers/search, when enabled; else a 404 like localstripe's."""
        if self.state.search is None:
            return _error(404, "invalid_request_error", "Not Found")
        match = re.fullmatch(
            r"metadata\['app_user_id'\]:'((?:[^'\\]|\\.)*)'", seen.params.get("query", "")
        )
        if match is None:
            return _error(400, "invalid_request_error", "Unsupported query")
        wanted = re.sub(r"\\(.)", r"\1", match.group(1))
        customers = await self._all_customers(seen.headers.get("authorization", ""))
        data = [c for c in customers if c["metadata"].get("app_user_id") == wanted]
        if self.state.search == "lagging":
            data = []
        return _json(
            {
                "object": "search_result",
                "data": data,
                "has_more": False,
                "next_page": None,
                "url": "/v1/customers/search",
            }
        )

    async def _all_customers(self, authorization: str) -> list[Json]:
        found: list[Json] = []
        params: dict[str, str | int] = {"limit": 100}
        async with httpx.AsyncClient(headers={"authorization": authorization}) as client:
            while True:
                page = (await client.get(f"{self.upstream}/v1/customers", params=params)).json()
                found += page["data"]
                if not page["has_more"] or not page["data"]:
                    return found
                params["starting_after"] = page["data"][-1]["id"]

    async def proxy(self, request: Request, seen: Seen) -> Response:
        """Everything else goes to localstripe, with Stripe's idempotency added on top."""
        headers = {
            k: v
            for k, v in seen.headers.items()
            if k in ("authorization", "content-type", "stripe-version")
        }
        async with httpx.AsyncClient() as client:
            answer = await client.request(
                request.method,
                f"{self.upstream}{request.url.path}",
                params=request.query_params.multi_items(),
                content=await request.body(),
                headers=headers,
            )
        return Response(answer.content, answer.status_code, media_type="application/json")


def _json(body: Json, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _error(status: int, type_: str, message: str, **extra: Any) -> Response:
    return _json(stripe_error(status, type_, message, **extra)[1], status)


@pytest.fixture(scope="session")
def fake_stripe_server(localstripe_url: str) -> Iterator[FakeStripe]:
    """One fake for the session, in front of the session's localstripe."""
    fake = FakeStripe(localstripe_url).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_stripe(fake_stripe_server: FakeStripe) -> FakeStripe:
    """The session's fake, with nothing remembered from earlier tests."""
    fake_stripe_server.reset()
    return fake_stripe_server
