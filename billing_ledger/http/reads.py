"""GET /v1/users/{user_id}/... and GET /v1/events/{event_id}: the reads of CONTRACT.md.

Every read goes through the read side's one entry point (projections/queries.Reads): this
module parses parameters and shapes bodies; what a read raises is answered by the app's one
table of errors (http/errors.py).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_ledger.http import wire
from billing_ledger.http.errors import BadParameterError, error
from billing_ledger.http.wire import answer, shaped_all
from billing_ledger.ledger.user_ids import checked_user_id
from billing_ledger.projections.queries import Reads, UserRead
from billing_ledger.projections.timeline import timeline as user_timeline

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

MIN_POSITION_WAIT = 5.0
MAX_ID_LENGTH = 255
LATEST_AT = 253402300799  # 9999-12-31T23:59:59Z: later times have no ISO rendering


def parse_at(raw: str | None, now: float | None = None) -> int:
    """`at` as Unix seconds, from Unix seconds or ISO 8601 (UTC when no offset is given)."""
    if raw is None or raw == "":
        return int(time.time() if now is None else now)
    try:
        # floor, not int(): int() truncates toward zero, so "-0.5" would pass as 0
        seconds = math.floor(float(raw)) if _numeric(raw) else _iso_seconds(raw)
    except (ValueError, OverflowError):
        seconds = -1
    if not 0 <= seconds <= LATEST_AT:
        raise BadParameterError(f"at: expected Unix seconds or ISO 8601, got {raw!r}")
    return seconds


def _numeric(raw: str) -> bool:
    return raw.lstrip("-").replace(".", "", 1).isdigit()


def _iso_seconds(raw: str) -> int:
    parsed = datetime.fromisoformat(raw)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def parse_min_position(raw: str | None) -> int | None:
    """`min_position` as a non-negative whole number, or None when absent."""
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise BadParameterError(f"min_position: expected a whole number, got {raw!r}")
    return int(raw)


def _path_id(request: Request, name: str) -> str:
    value: str = request.path_params[name]
    if not value or len(value) > MAX_ID_LENGTH:
        raise BadParameterError(f"{name}: expected 1 to {MAX_ID_LENGTH} characters")
    if "\x00" in value:  # no stored id holds one, and PostgreSQL cannot even compare it
        raise BadParameterError(f"{name}: must not contain NUL")
    return value


def _reads(request: Request) -> Reads:
    deps: Services = request.state.deps
    reads: Reads = deps.reads
    return reads


def _user_query(request: Request) -> tuple[str, int, int | None]:
    """The common parameters of a user's read: (user_id, at, min_position)."""
    user_id = checked_user_id(request.path_params["user_id"])
    at = parse_at(request.query_params.get("at"))
    return user_id, at, parse_min_position(request.query_params.get("min_position"))


async def _user_read(request: Request) -> UserRead:
    """Parse the common parameters, honour min_position, load the user's inputs."""
    user_id, at, wanted = _user_query(request)
    return await _reads(request).user(user_id, at, wanted, MIN_POSITION_WAIT)


async def entitlements(request: Request) -> Response:
    """The user's features, plans, customers and subscriptions at `at`."""
    read = await _user_read(request)
    result = _reads(request).entitlements(read)
    return answer(
        wire.Entitlements(
            user_id=result.user_id,
            features=result.features,
            plans=result.plans,
            customer_ids=result.customer_ids,
            subscriptions=shaped_all(wire.Subscription, result.subscriptions),
            purchases=shaped_all(wire.Purchase, result.purchases),
            warnings=result.warnings,
            position=read.position,
            at=read.at,
        )
    )


async def feature_access(request: Request) -> Response:
    """Whether the user may use one feature at `at`, and why."""
    read = await _user_read(request)
    feature = _path_id(request, "feature")
    allowed, reason = _reads(request).access(read, feature)
    return answer(wire.Access(allowed, reason))


async def invoices(request: Request) -> Response:
    """The invoices of the user's customers as of `at`, newest first."""
    read = await _user_read(request)
    found = _reads(request).invoices(read)
    return answer(wire.Invoices(shaped_all(wire.Invoice, found)))


async def history(request: Request) -> Response:
    """Every change of the user's features up to `at`, oldest first."""
    user_id, at, wanted = _user_query(request)
    found = await _reads(request).history(user_id, at, wanted, MIN_POSITION_WAIT)
    return answer(wire.History(shaped_all(wire.Change, found)))


async def timeline(request: Request) -> Response:
    """Every change of the user's billing state up to `at`, and what the rules change next."""
    user_id, at, wanted = _user_query(request)
    reads = _reads(request)
    position = await (
        reads.wait(wanted, MIN_POSITION_WAIT) if wanted is not None else reads.position()
    )
    inputs = await reads.history_inputs(user_id, position)
    found = await run_in_threadpool(user_timeline, inputs, reads.plans, at)
    return answer(
        wire.Timeline(
            shaped_all(wire.TimelineEntry, found.entries),
            shaped_all(wire.UpcomingChange, found.upcoming),
        )
    )


async def stored_event(request: Request) -> Response:
    """One stored event: its envelope fields and the parsed first body."""
    event_id = _path_id(request, "event_id")
    deps: Services = request.state.deps
    event = await run_in_threadpool(deps.store.get, event_id)
    if event is None:
        return error(404, "unknown_event", f"no event {event_id} is stored")
    body = wire.StoredEvent(
        event_id=event.event_id,
        type=event.type,
        created=event.created,
        livemode=event.livemode,
        received_at=int(event.received_at),
        position=event.position,
        payload=event.payload(),
    )
    try:
        return answer(body)
    except RecursionError:
        # Deeper than the encoder recurses: the stored body is already that JSON.
        return answer(msgspec.structs.replace(body, payload=msgspec.Raw(event.body)))


async def catalog(request: Request) -> Response:
    """Every plan with its prices, as the ledger folded them from product and price events."""
    wanted = parse_min_position(request.query_params.get("min_position"))
    reads = _reads(request)
    position = await reads.wait(wanted, MIN_POSITION_WAIT) if wanted is not None else None
    found = await reads.catalog_now(position)
    plans = [
        wire.CatalogPlan(
            p.id, p.name, p.description, p.features, shaped_all(wire.CatalogPrice, p.prices)
        )
        for p in found.plans
    ]
    return answer(wire.Catalog(tuple(plans)))


# Paths relative to the /v1 mount (app.py).
ROUTES = [
    Route("/users/{user_id}/entitlements", entitlements, methods=["GET"]),
    Route("/users/{user_id}/access/{feature}", feature_access, methods=["GET"]),
    Route("/users/{user_id}/invoices", invoices, methods=["GET"]),
    Route("/users/{user_id}/history", history, methods=["GET"]),
    Route("/users/{user_id}/timeline", timeline, methods=["GET"]),
    Route("/events/{event_id}", stored_event, methods=["GET"]),
    Route("/catalog", catalog, methods=["GET"]),
]
