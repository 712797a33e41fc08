"""GET /openapi.json: CONTRACT.md's HTTP API as an OpenAPI 3.1 document.

The bodies' schemas are derived from the Structs of http/wire.py, the ones the handlers
encode; what is written here is the table of paths, their parameters and their error codes.
The schemathesis suite loads the document from the app and checks every answer against it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_ledger.http import wire
from billing_ledger.http.changes import MAX_WAIT
from billing_ledger.http.reads import LATEST_AT, MAX_ID_LENGTH

Json = dict[str, Any]
Shape = type[msgspec.Struct]

REF = "#/components/schemas/{name}"
SECURED: list[Json] = [{"bearer": []}]
OPEN: list[Json] = []  # the webhook (its signature is its credential), health, metrics
# ISO 8601 in UTC, years 1970-9999. The reads take any ISO 8601 form Python parses; this is
# the part a schema can state without admitting impossible dates (days stop at 28).
ISO_UTC = (
    r"^(19[7-9]\d|[2-9]\d{3})-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])"
    r"T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?Z$"
)
EMPTY: Json = {"type": "string", "maxLength": 0}  # an empty value is read as if absent
# Digits only: JSON Schema counts 5.0 as an integer, the handlers do not.
WHOLE: Json = {"anyOf": [{"type": "string", "pattern": r"^\d{1,18}$"}, EMPTY]}

# The stable error codes each status may carry (CONTRACT.md plus the handlers' own).
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: (
        "invalid_quantity",
        *("invalid_signature", "malformed_event", "invalid_parameter", "invalid_request"),
        *("unknown_price", "invalid_price", "invalid_user_id", "client_disconnected"),
    ),
    401: ("unauthorized",),
    402: ("card_declined",),
    404: ("unknown_event", "unknown_customer"),
    413: ("payload_too_large",),
    500: ("storage_unavailable",),
    502: ("stripe_error",),
    503: (
        *("not_configured", "not_caught_up", "storage_unavailable", "stripe_unavailable"),
        "busy",  # the webhook: too many unverified bodies being read at once
    ),
}


def parameter(where: str, name: str, about: str, schema: Json, required: bool = False) -> Json:
    """One parameter of an operation."""
    return {"name": name, "in": where, "required": required, "description": about, "schema": schema}


def query(name: str, about: str, schema: Json) -> Json:
    """An optional query parameter."""
    return parameter("query", name, about, schema)


def path_id(name: str, about: str) -> Json:
    """A path parameter holding an id (1 to 255 characters, as the handlers accept)."""
    schema = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
    return parameter("path", name, about, schema, required=True)


AT_FORMS: Json = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": LATEST_AT},
        {"type": "string", "pattern": r"^\d{1,11}\.\d+$"},  # fractions are cut off
        {"type": "string", "pattern": ISO_UTC},
        EMPTY,
    ]
}
WAIT: Json = {"anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_WAIT}, EMPTY]}
USER_ID = path_id("user_id", "the application's user id")
AT = query("at", "Evaluate as of this time: Unix seconds or ISO 8601 (UTC unless told).", AT_FORMS)
MIN_POSITION = query("min_position", "Wait up to 5 s for the projections to apply it.", WHOLE)
SIGNATURE = parameter(
    "header", "Stripe-Signature", "t=TIMESTAMP,v1=HMAC[,v1=...]", {"type": "string"}, True
)
FEED = (
    query("after", "The position the page starts after (the last page's `next`).", WHOLE),
    query("limit", "At most this many changes (default 500, at most 5000).", WHOLE),
    query("wait", f"Hold the request up to this many seconds (at most {MAX_WAIT:g}).", WAIT),
)


@dataclass(frozen=True)
class Operation:
    """One operation: its answer's shape and status, its errors, parameters and request body."""

    method: str
    summary: str
    answer: Shape | None  # None: a text/plain body
    errors: tuple[int, ...] = ()
    parameters: tuple[Json, ...] = ()
    request: Shape | None = None
    status: int = 200
    also: tuple[int, ...] = ()  # other statuses answering the same shape
    secured: bool = True


def read(summary: str, answer: Shape, *extra: Json) -> Operation:
    """A GET /v1/users/{user_id}/... read."""
    return Operation("get", summary, answer, (400, 401, 503), (USER_ID, *extra, AT, MIN_POSITION))


def create(summary: str, request: Shape, answer: Shape, *errors: int) -> Operation:
    """A POST /v1/...-sessions call."""
    return Operation(
        "post", summary, answer, (400, 401, *errors, 502, 503), request=request, status=201
    )


USER = "/v1/users/{user_id}"
PATHS: dict[str, Operation] = {
    "/webhooks/stripe": Operation(
        "post",
        "Record a Stripe event once, after verifying its signature",
        wire.WebhookAccepted,
        (400, 413, 500, 503),
        (SIGNATURE,),
        wire.StripeEvent,
        secured=False,
    ),
    f"{USER}/entitlements": read("The user's entitlements", wire.Entitlements),
    f"{USER}/access/{{feature}}": read(
        "Whether the user may use a feature", wire.Access, path_id("feature", "a feature name")
    ),
    f"{USER}/invoices": read("The user's invoices, newest first", wire.Invoices),
    f"{USER}/history": read("Every change of the user's features", wire.History),
    f"{USER}/timeline": read("Every change of the user's billing state", wire.Timeline),
    "/v1/events/{event_id}": Operation(
        "get",
        "One stored event",
        wire.StoredEvent,
        (400, 401, 404, 503),
        (path_id("event_id", "a Stripe event id"),),
    ),
    "/v1/catalog": Operation(
        "get",
        "Every plan with its prices (no Stripe call)",
        wire.Catalog,
        (400, 401, 503),
        (MIN_POSITION,),
    ),
    "/v1/changes": Operation(
        "get", "Access changes in position order", wire.ChangesPage, (400, 401, 503), FEED
    ),
    "/v1/changes/snapshot": Operation(
        "get",
        "Every recorded user's features at one feed position",
        wire.ChangesSnapshot,
        (401, 503),
    ),
    "/v1/checkout-sessions": create(
        "Open a Checkout Session", wire.CheckoutRequest, wire.CheckoutSession, 402
    ),
    "/v1/portal-sessions": create(
        "Open a billing portal session", wire.PortalRequest, wire.PortalSession, 404
    ),
    "/healthz": Operation(
        "get",
        "Liveness, the store's head, each projection's position",
        wire.Health,
        also=(503,),
        secured=False,
    ),
    "/metrics": Operation("get", "Prometheus text exposition", None, secured=False),
}


# -- the document -----------------------------------------------------------------------


def content(shape: Shape | None) -> Json:
    """The body of a request or response: JSON of `shape`, or plain text."""
    if shape is None:
        return {"text/plain": {"schema": {"type": "string"}}}
    return {"application/json": {"schema": {"$ref": REF.format(name=shape.__name__)}}}


def responses(op: Operation) -> Json:
    """What an operation may answer, each error `{"error", "message"}` of its status."""
    found = {
        str(status): {"description": op.summary, "content": content(op.answer)}
        for status in (op.status, *op.also)
    }
    for status in op.errors:
        found[str(status)] = {"description": "error", "content": content(ERROR_SHAPES[status])}
    return found


def operation(op: Operation) -> Json:
    """One operation of the document."""
    found: Json = {"summary": op.summary, "security": SECURED if op.secured else OPEN}
    if op.parameters:
        found["parameters"] = list(op.parameters)
    if op.request is not None:
        found["requestBody"] = {"required": True, "content": content(op.request)}
    return {op.method: {**found, "responses": responses(op)}}


ERROR_SHAPES = {status: wire.error_shape(status, codes) for status, codes in ERROR_CODES.items()}


def components() -> Json:
    """Every body's schema, derived from its Struct (and those it holds)."""
    shapes = [op.answer for op in PATHS.values() if op.answer is not None]
    shapes += [op.request for op in PATHS.values() if op.request is not None]
    _, schemas = msgspec.json.schema_components([*shapes, *ERROR_SHAPES.values()], ref_template=REF)
    return schemas


@functools.cache
def document() -> bytes:
    """The whole OpenAPI document, serialised once."""
    return msgspec.json.encode(
        {
            "openapi": "3.1.0",
            "info": {"title": "billing-ledger", "version": "1"},
            "paths": {path: operation(op) for path, op in PATHS.items()},
            "components": {
                "schemas": components(),
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
            "security": SECURED,
        }
    )


async def openapi_json(request: Request) -> Response:
    """The OpenAPI document of the service's HTTP API."""
    return Response(document(), media_type="application/json")


ROUTES = [Route("/openapi.json", openapi_json, methods=["GET"])]
