"""GET /openapi.json: CONTRACT.md's HTTP API as an OpenAPI 3.1 document.

The document is data, written beside the routes it describes, and served as it is: the
schemathesis suite loads it from the app and checks every answer against it.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_ledger.http.reads import LATEST_AT, MAX_ID_LENGTH
from billing_ledger.http.sessions import MAX_REFERENCE, MAX_URL, MAX_USER_ID
from billing_ledger.projections.timeline import KINDS

Json = dict[str, Any]

NULLABLE_INT: Json = {"type": ["integer", "null"]}
NULLABLE_STR: Json = {"type": ["string", "null"]}
STRINGS: Json = {"type": "array", "items": {"type": "string"}}
SECURED: list[Json] = [{"bearer": []}]
# ISO 8601 in UTC, years 1970-9999. The reads take any ISO 8601 form Python parses; this is
# the part a schema can state without admitting impossible dates (days stop at 28).
ISO_UTC = (
    r"^(19[7-9]\d|[2-9]\d{3})-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])"
    r"T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?Z$"
)
EMPTY: Json = {"type": "string", "maxLength": 0}  # `?at=` is read as if absent
OPEN: list[Json] = []  # the webhook (its signature is its credential), health, metrics

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


# -- building blocks --------------------------------------------------------------------


def obj(properties: Json, required: tuple[str, ...] | None = None) -> Json:
    """A closed JSON object; every property required unless told otherwise."""
    names = tuple(properties) if required is None else required
    return {
        "type": "object",
        "properties": properties,
        "required": list(names),
        "additionalProperties": False,
    }


def json_body(schema: Json, description: str) -> Json:
    """A response with a JSON body."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*statuses: int) -> dict[str, Json]:
    """The error responses of an operation, each `{"error", "message"}`."""
    return {
        str(status): json_body({"$ref": f"#/components/schemas/Error{status}"}, "error")
        for status in statuses
    }


def error_schema(status: int) -> Json:
    """The error body, its code limited to what this status may carry."""
    return obj(
        {
            "error": {"type": "string", "enum": list(ERROR_CODES[status])},
            "message": {"type": "string"},
        }
    )


def path_id(name: str, description: str) -> Json:
    """A path parameter holding an id (1 to 255 characters, as the handlers accept)."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
    }


AT: Json = {
    "name": "at",
    "in": "query",
    "required": False,
    "description": "Evaluate as of this time: Unix seconds or ISO 8601 (UTC when no offset).",
    "schema": {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": LATEST_AT},
            {"type": "string", "pattern": r"^\d{1,11}\.\d+$"},  # fractions are cut off
            {"type": "string", "pattern": ISO_UTC},
            EMPTY,
        ]
    },
}
MIN_POSITION: Json = {
    "name": "min_position",
    "in": "query",
    "required": False,
    "description": "Wait up to 5 s until the projections have applied this position.",
    # Digits only: JSON Schema counts 5.0 as an integer, the reads do not.
    "schema": {"anyOf": [{"type": "string", "pattern": r"^\d{1,18}$"}, EMPTY]},
}


def user_read(summary: str, schema: str, extra: tuple[Json, ...] = ()) -> Json:
    """A GET /v1/users/{user_id}/... operation."""
    return {
        "get": {
            "summary": summary,
            "security": SECURED,
            "parameters": [
                path_id("user_id", "the application's user id"),
                *extra,
                AT,
                MIN_POSITION,
            ],
            "responses": {
                "200": json_body({"$ref": f"#/components/schemas/{schema}"}, summary),
                **errors(400, 401, 503),
            },
        }
    }


def session_post(summary: str, request: str, answer: str, statuses: tuple[int, ...]) -> Json:
    """A POST /v1/...-sessions operation."""
    return {
        "post": {
            "summary": summary,
            "security": SECURED,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}
                },
            },
            "responses": {
                "201": json_body({"$ref": f"#/components/schemas/{answer}"}, "created"),
                **errors(*statuses),
            },
        }
    }


# -- schemas ----------------------------------------------------------------------------


def subscription_schema() -> Json:
    """A subscription as the entitlements read shows it."""
    return obj(
        {
            "id": {"type": "string"},
            "customer_id": NULLABLE_STR,
            "status": {"type": "string"},
            "price_ids": STRINGS,
            "current_period_end": NULLABLE_INT,
            "cancel_at": NULLABLE_INT,
            "cancel_at_period_end": {"type": "boolean"},
            "grants_access": {"type": "boolean"},
            "access_until": NULLABLE_INT,
            "quantity": NULLABLE_INT,
        }
    )


def purchase_schema() -> Json:
    """A one-time purchase as the entitlements read shows it."""
    return obj(
        {
            "id": {"type": "string"},
            "price_ids": STRINGS,
            "status": {"type": "string", "enum": ["paid", "refunded", "disputed"]},
            "grants_access": {"type": "boolean"},
        }
    )


def read_schemas() -> Json:
    """The bodies of the /v1 reads."""
    return {
        "Entitlements": obj(
            {
                "user_id": {"type": "string"},
                "features": STRINGS,
                "plans": STRINGS,
                "customer_ids": STRINGS,
                "subscriptions": {"type": "array", "items": subscription_schema()},
                "purchases": {"type": "array", "items": purchase_schema()},
                "warnings": STRINGS,
                "position": {"type": "integer", "minimum": 0},
                "at": {"type": "integer", "minimum": 0},
            }
        ),
        "Access": obj({"allowed": {"type": "boolean"}, "reason": {"type": "string"}}),
        "Invoices": obj({"invoices": {"type": "array", "items": invoice_schema()}}),
        "History": obj({"changes": {"type": "array", "items": change_schema()}}),
        "Timeline": timeline_schema(),
        "StoredEvent": obj(
            {
                "event_id": {"type": "string"},
                "type": {"type": "string"},
                "created": {"type": "integer"},
                "livemode": {"type": "boolean"},
                "received_at": {"type": "integer"},
                "position": {"type": "integer", "minimum": 1},
                "payload": {"type": "object"},
            }
        ),
    }


def invoice_schema() -> Json:
    """One invoice of a user's customers."""
    return obj(
        {
            "id": {"type": "string"},
            "status": NULLABLE_STR,
            "amount_due": NULLABLE_INT,
            "amount_paid": NULLABLE_INT,
            "currency": NULLABLE_STR,
            "subscription_id": NULLABLE_STR,
            "created": NULLABLE_INT,
            "hosted_invoice_url": NULLABLE_STR,
        }
    )


def change_schema() -> Json:
    """One change of a user's features."""
    return obj(
        {
            "at": {"type": "integer"},
            "event_id": NULLABLE_STR,
            "event_type": NULLABLE_STR,
            "features_before": STRINGS,
            "features_after": STRINGS,
            "reason": {"type": "string"},
        }
    )


def catalog_schema() -> Json:
    """GET /v1/catalog: each plan with the prices folded from product and price events."""
    price = obj(
        {
            "id": {"type": "string"},
            "product": NULLABLE_STR,
            "unit_amount": NULLABLE_INT,
            "currency": NULLABLE_STR,
            "type": NULLABLE_STR,
            "interval": NULLABLE_STR,
            "lookup_key": NULLABLE_STR,
            "active": {"type": "boolean"},
        }
    )
    plan = obj(
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "description": NULLABLE_STR,
            "features": STRINGS,
            "prices": {"type": "array", "items": price},
        }
    )
    return obj({"plans": {"type": "array", "items": plan}})


def timeline_schema() -> Json:
    """Every change of a user's billing state, and the rules' changes to come."""
    kind = {"type": "string", "enum": list(KINDS)}
    entry = obj(
        {
            "at": {"type": "integer"},
            "event_id": NULLABLE_STR,
            "event_type": NULLABLE_STR,
            "object_id": NULLABLE_STR,
            "kind": kind,
            "detail": {"type": "string"},
            "features_before": STRINGS,
            "features_after": STRINGS,
        }
    )
    upcoming = obj({"at": {"type": "integer"}, "kind": kind, "detail": {"type": "string"}})
    return obj(
        {
            "entries": {"type": "array", "items": entry},
            "upcoming": {"type": "array", "items": upcoming},
        }
    )


def write_schemas() -> Json:
    """The webhook's answer and the session endpoints' bodies."""
    text = {"type": "string", "minLength": 1, "pattern": r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$"}
    return {
        "StripeEvent": {
            "type": "object",
            "description": "The raw Stripe event body, exactly as Stripe sends it.",
            "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": 255},
                "object": {"type": "string", "enum": ["event", "v2.core.event"]},
                "type": {"type": "string", "minLength": 1, "maxLength": 255},
                "created": {"type": ["integer", "string"]},
                "livemode": {"type": "boolean"},
                "data": {"type": "object"},
            },
            "required": ["id", "object", "type", "created"],
        },
        "WebhookAccepted": obj(
            {
                "event_id": {"type": "string"},
                "status": {"type": "string", "enum": ["recorded", "duplicate"]},
                "position": {"type": "integer", "minimum": 1},
            }
        ),
        "CheckoutRequest": obj(
            {
                "user_id": {**text, "maxLength": MAX_USER_ID},
                "price": {**text, "maxLength": MAX_REFERENCE},
                "quantity": {"type": "integer", "minimum": 1},
            },
            required=("user_id", "price"),
        ),
        "CheckoutSession": obj({"id": {"type": "string"}, "url": {"type": "string"}}),
        "PortalRequest": obj(
            {
                "user_id": {**text, "maxLength": MAX_USER_ID},
                "return_url": {"type": "string", "format": "uri", "maxLength": MAX_URL},
            },
            required=("user_id",),
        ),
        "PortalSession": obj({"url": {"type": "string"}}),
        "Health": obj(
            {
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "head": NULLABLE_INT,
                "projections": {
                    "type": "object",
                    "additionalProperties": obj(
                        {
                            "position": {"type": "integer"},
                            "error": NULLABLE_STR,
                            # The newest 100 events skipped for their content, oldest first.
                            "skipped": {
                                "type": "array",
                                "items": obj(
                                    {
                                        "event_id": {"type": "string"},
                                        "position": {"type": "integer"},
                                        "type": {"type": "string"},
                                        "reason": {"type": "string"},
                                    }
                                ),
                            },
                            "skipped_total": {"type": "integer"},
                        },
                        required=("position", "error"),
                    ),
                },
                "error": {"type": "string"},
                # The hash chain's head (billing-ledger verify proves what precedes it).
                "chain": obj({"position": {"type": "integer"}, "hash": NULLABLE_STR}),
            },
            required=("status", "head", "projections"),
        ),
    }


# -- paths ------------------------------------------------------------------------------


def webhook_path() -> Json:
    """POST /webhooks/stripe."""
    return {
        "post": {
            "summary": "Record a Stripe event once, after verifying its signature",
            "security": OPEN,
            "parameters": [
                {
                    "name": "Stripe-Signature",
                    "in": "header",
                    "required": True,
                    "description": "Stripe's signature header: t=TIMESTAMP,v1=HMAC[,v1=...]",
                    "schema": {"type": "string"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/StripeEvent"}}
                },
            },
            "responses": {
                "200": json_body({"$ref": "#/components/schemas/WebhookAccepted"}, "stored"),
                **errors(400, 413, 500, 503),
            },
        }
    }


def paths() -> Json:
    """Every route of CONTRACT.md."""
    users = "/v1/users/{user_id}"
    return {
        "/webhooks/stripe": webhook_path(),
        f"{users}/entitlements": user_read("The user's entitlements", "Entitlements"),
        f"{users}/access/{{feature}}": user_read(
            "Whether the user may use a feature", "Access", (path_id("feature", "a feature name"),)
        ),
        f"{users}/invoices": user_read("The user's invoices, newest first", "Invoices"),
        f"{users}/history": user_read("Every change of the user's features", "History"),
        f"{users}/timeline": user_read("Every change of the user's billing state", "Timeline"),
        "/v1/events/{event_id}": {
            "get": {
                "summary": "One stored event",
                "security": SECURED,
                "parameters": [path_id("event_id", "a Stripe event id")],
                "responses": {
                    "200": json_body({"$ref": "#/components/schemas/StoredEvent"}, "the event"),
                    **errors(400, 401, 404, 503),
                },
            }
        },
        "/v1/catalog": {
            "get": {
                "summary": "Every plan with its prices (no Stripe call)",
                "security": SECURED,
                "parameters": [MIN_POSITION],
                "responses": {
                    "200": json_body({"$ref": "#/components/schemas/Catalog"}, "the catalog"),
                    **errors(400, 401, 503),
                },
            }
        },
        "/v1/checkout-sessions": session_post(
            "Open a Checkout Session",
            "CheckoutRequest",
            "CheckoutSession",
            (400, 401, 402, 502, 503),
        ),
        "/v1/portal-sessions": session_post(
            "Open a billing portal session",
            "PortalRequest",
            "PortalSession",
            (400, 401, 404, 502, 503),
        ),
        "/healthz": {
            "get": {
                "summary": "Liveness, the store's head, each projection's position",
                "security": OPEN,
                "responses": {
                    "200": json_body(
                        {"$ref": "#/components/schemas/Health"}, "healthy or degraded"
                    ),
                    "503": json_body(
                        {"$ref": "#/components/schemas/Health"}, "storage unavailable"
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition",
                "security": OPEN,
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


@functools.cache
def document() -> bytes:
    """The whole OpenAPI document, serialised once."""
    schemas = {**read_schemas(), **write_schemas(), "Catalog": catalog_schema()}
    schemas |= {f"Error{status}": error_schema(status) for status in ERROR_CODES}
    return orjson.dumps(
        {
            "openapi": "3.1.0",
            "info": {"title": "billing-ledger", "version": "1"},
            "paths": paths(),
            "components": {
                "schemas": schemas,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
            "security": SECURED,
        }
    )


async def openapi_json(request: Request) -> Response:
    """The OpenAPI document of the service's HTTP API."""
    return Response(document(), media_type="application/json")


ROUTES = [Route("/openapi.json", openapi_json, methods=["GET"])]
