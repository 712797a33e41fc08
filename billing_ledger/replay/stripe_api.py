"""The Stripe API client for operations, and the bounded back-off every call goes through."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import stripe

from billing_ledger.settings import Settings
from billing_ledger.stripe_errors import NotConfiguredError, StripeUnavailableError

log = logging.getLogger("billing_ledger.replay")

_T = TypeVar("_T")
Json = dict[str, Any]

PAGE = 100  # the largest page Stripe's list endpoints give

# Back-off for 429 and 5xx: 0.5 s, 1 s, 2 s, ... capped at 8 s, six tries in all (~16 s).
ATTEMPTS = 6
BASE_DELAY = 0.5
MAX_DELAY = 8.0

Sleep = Callable[[float], None]


@dataclass(eq=False, kw_only=True)
class StripeRun:
    """What a run against Stripe's API takes besides its parts: the mode, how it waits
    between attempts and how it reads the time (tests pass their own)."""

    livemode: bool
    sleep: Sleep = time.sleep
    clock: Callable[[], float] = time.time


def client(settings: Settings) -> stripe.StripeClient:
    """The official SDK's client for these settings; its own retries are off (ours are bounded)."""
    if not settings.stripe_api_key:
        raise NotConfiguredError("STRIPE_API_KEY is not set", context="not_configured")
    base = settings.stripe_api_base
    # The SDK logs every request at INFO; an operator's command prints its own summary.
    logging.getLogger("stripe").setLevel(logging.WARNING)
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": base} if base else None,
        max_network_retries=0,
    )


def api_version() -> str:
    """The API version the SDK pins, which renders every object it fetches."""
    return str(stripe.api_version)


def _retryable(error: stripe.StripeError) -> bool:
    if isinstance(error, stripe.RateLimitError | stripe.APIConnectionError):
        return True
    return error.http_status is not None and error.http_status >= 500


def delay(attempt: int) -> float:
    """The wait before retry number `attempt` (0-based): exponential, bounded."""
    return float(min(MAX_DELAY, BASE_DELAY * 2**attempt))


def call(action: Callable[[], _T], what: str, sleep: Sleep = time.sleep) -> _T:
    """Run one API call, backing off on 429, 5xx and connection failures."""
    for attempt in range(ATTEMPTS):
        try:
            return action()
        except stripe.StripeError as error:
            if not _retryable(error) or attempt == ATTEMPTS - 1:
                raise StripeUnavailableError(
                    _message(error),
                    status=error.http_status,
                    context=f"{what}: {_status(error.http_status)}",
                ) from None
            log.warning(
                "%s: %s %s; retrying in %.1fs",
                what,
                _status(error.http_status),
                _message(error),
                delay(attempt),
            )
            sleep(delay(attempt))
    raise AssertionError("unreachable")


def _status(status: int | None) -> str:
    return f"HTTP {status}" if status else "no answer"


def _message(error: stripe.StripeError) -> str:
    """The first line of Stripe's message (a command's error is one line)."""
    text = (error.user_message or str(error) or type(error).__name__).strip()
    # The SDK's messages go on to name remedies for its own users: keep the first clause.
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""


def raw_json(obj: Any) -> Json:
    """The JSON Stripe sent for a call's result, not the SDK's objects built from it."""
    response = getattr(obj, "last_response", None)
    parsed = orjson.loads(response.body) if response is not None else obj.to_dict()
    if not isinstance(parsed, dict):
        raise StripeUnavailableError(
            "answered with something not a JSON object", context="Stripe: no answer"
        )
    return parsed


def list_all(
    list_call: Callable[[dict[str, Any]], Any],
    params: Mapping[str, Any],
    what: str,
    sleep: Sleep = time.sleep,
) -> Iterator[Json]:
    """Every object of a list endpoint, as raw JSON, following `starting_after`."""
    after: str | None = None
    while True:
        query = {**params, "limit": PAGE, **({"starting_after": after} if after else {})}
        page = raw_json(call(functools.partial(list_call, query), what, sleep))
        data = [item for item in page.get("data", []) if isinstance(item, dict)]
        yield from data
        if not page.get("has_more") or not data:
            return
        after = str(data[-1].get("id"))
