"""The bodies of CONTRACT.md's HTTP API, declared once as msgspec Structs.

The handlers write their JSON by encoding these (`answer`), and http/openapi.py derives the
document's components from the same classes, so a field is added, renamed or limited here
and nowhere else.

Fields are written in the order declared; `X | None` is written as null, `X | UnsetType =
UNSET` is left out while unset; limits go in `Meta` and reach the document as they are.

- A field: one line in its class. `shaped(Shape, obj)` fills a Struct from the attributes
  of the same names (a projection's dataclass), so a new attribute there needs nothing more.
- A shape and a path, e.g. GET /v1/catalog: declare `class Catalog(Body): ...` here, answer
  `answer(wire.Catalog(...))` in the handler, and add one row to openapi.PATHS:
  `"/v1/catalog": Operation("get", "The plans for sale", wire.Catalog, (401, 503))`;
  its component, and those of every Struct it holds, follow from the type.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from starlette.responses import Response


class Body(Struct, forbid_unknown_fields=True):
    """A JSON object of the API: closed (no other keys), every field without a default required."""


B = TypeVar("B", bound=Body)

MAX_USER_ID = 200  # Stripe's limit on client_reference_id
MAX_REFERENCE = 255
MAX_URL = 2048
MAX_STRIPE_ID = 255
# Printable, not blank: what the session endpoints accept (they check isprintable() as well).
TEXT = r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$"

Names = tuple[str, ...]
Position = Annotated[int, Meta(ge=1)]
Natural = Annotated[int, Meta(ge=0)]  # 0 or more: a position before the first event
UserId = Annotated[str, Meta(min_length=1, max_length=MAX_USER_ID, pattern=TEXT)]
PriceReference = Annotated[str, Meta(min_length=1, max_length=MAX_REFERENCE, pattern=TEXT)]


# -- the /v1 reads ----------------------------------------------------------------------


class Subscription(Body):
    """A subscription as the entitlements read shows it."""

    id: str
    customer_id: str | None
    status: str
    price_ids: Names
    current_period_end: int | None
    cancel_at: int | None
    cancel_at_period_end: bool
    grants_access: bool
    access_until: int | None
    quantity: int | None  # the items' quantity (the largest of several), for seat-based apps


class Purchase(Body):
    """A one-time purchase as the entitlements read shows it."""

    id: str
    price_ids: Names
    status: Literal["paid", "refunded", "disputed"]
    grants_access: bool


class Entitlements(Body):
    """The user's features, plans, customers and subscriptions at `at`."""

    user_id: str
    features: Names
    plans: Names
    customer_ids: Names
    subscriptions: tuple[Subscription, ...]
    purchases: tuple[Purchase, ...]
    warnings: Names
    position: Natural
    at: Natural


class Access(Body):
    """Whether the user may use one feature, and why."""

    allowed: bool
    reason: str


class Invoice(Body):
    """One invoice of a user's customers."""

    id: str
    status: str | None
    amount_due: int | None
    amount_paid: int | None
    currency: str | None
    subscription_id: str | None
    created: int | None
    hosted_invoice_url: str | None


class Invoices(Body):
    """The invoices of the user's customers, newest first."""

    invoices: tuple[Invoice, ...]


class Change(Body):
    """One change of a user's features."""

    at: int
    event_id: str | None
    event_type: str | None
    features_before: Names
    features_after: Names
    reason: str


class History(Body):
    """Every change of the user's features, oldest first."""

    changes: tuple[Change, ...]


TimelineKind = Literal[
    "subscription_status",
    "payment_failed",
    "payment_succeeded",
    "cancellation_scheduled",
    "cancellation_unscheduled",
    "plan_changed",
    "trial_started",
    "trial_ending",
    "purchase",
    "refund",
    "rule",
    "link",
]


class TimelineEntry(Body):
    """One change of the user's billing state and what caused it."""

    at: int
    event_id: str | None  # null: a rule took effect (grace end, period end)
    event_type: str | None
    object_id: str | None
    kind: TimelineKind
    detail: str
    features_before: Names
    features_after: Names


class UpcomingChange(Body):
    """A change the rules make by themselves if no further event arrives."""

    at: int
    kind: TimelineKind
    detail: str


class Timeline(Body):
    """Every change of the user's billing state, oldest first, and the rules' changes to come."""

    entries: tuple[TimelineEntry, ...]
    upcoming: tuple[UpcomingChange, ...]


class StoredEvent(Body):
    """One stored event: its envelope and its body as Stripe sent it."""

    event_id: str
    type: str
    created: int
    livemode: bool
    received_at: int
    position: Position
    payload: Annotated[Any, Meta(extra_json_schema={"type": "object"})]  # parsed, or Raw


class CatalogPrice(Body):
    """A price as the ledger folded it from price events (archived or deleted: not active)."""

    id: str
    product: str | None
    unit_amount: int | None
    currency: str | None
    type: str | None
    interval: str | None
    lookup_key: str | None
    active: bool


class CatalogPlan(Body):
    """A plan of the plans file with every known price that selects it."""

    id: str
    name: str
    description: str | None
    features: Names
    prices: tuple[CatalogPrice, ...]


class Catalog(Body):
    """Every plan with its prices (no Stripe call)."""

    plans: tuple[CatalogPlan, ...]


# -- the change feed --------------------------------------------------------------------


class FeedChange(Body):
    """One change of the feed, in position order."""

    position: Position
    user_id: str
    at: int
    event_id: str | None
    event_type: str | None
    features_before: Names
    features_after: Names
    reason: str


class ChangesPage(Body):
    """A page of the feed; `next` is the `after` to send next."""

    changes: tuple[FeedChange, ...]
    next: Natural


class ChangesSnapshot(Body):
    """Every recorded user's features at feed position `next`, and the default features."""

    features: dict[str, Names]
    default_features: Names
    next: Natural


# -- the webhook and the sessions -------------------------------------------------------


class StripeEvent(Struct):
    """The raw Stripe event body, exactly as Stripe sends it."""

    id: Annotated[str, Meta(min_length=1, max_length=MAX_STRIPE_ID)]
    object: Literal["event", "v2.core.event"]
    type: Annotated[str, Meta(min_length=1, max_length=MAX_STRIPE_ID)]
    created: int | str
    livemode: bool | UnsetType = UNSET
    data: dict[str, Any] | UnsetType = UNSET


class WebhookAccepted(Body):
    """The webhook's answer once the event is committed."""

    event_id: str
    status: Literal["recorded", "duplicate"]
    position: Position


class CheckoutRequest(Body):
    """POST /v1/checkout-sessions: a price id or lookup key for the user."""

    user_id: UserId
    price: PriceReference
    quantity: Annotated[int, Meta(ge=1)] = 1


class CheckoutSession(Body):
    """An open Checkout Session."""

    id: str
    url: str


class PortalRequest(Body):
    """POST /v1/portal-sessions: the billing page is the return URL when none is given."""

    user_id: UserId
    return_url: (
        Annotated[str, Meta(max_length=MAX_URL, extra_json_schema={"format": "uri"})] | UnsetType
    ) = UNSET


class PortalSession(Body):
    """An open billing portal session."""

    url: str


# -- health and errors ------------------------------------------------------------------


class Skipped(Body):
    """An event a projection skipped for its content."""

    event_id: str
    position: int
    type: str
    reason: str


class ProjectionStatus(Body):
    """One projection's position and failure; the newest 100 skipped events, oldest first."""

    position: int
    error: str | None
    skipped: tuple[Skipped, ...] | UnsetType = UNSET
    skipped_total: int | UnsetType = UNSET


class ChainHead(Body):
    """The hash chain's head (billing-ledger verify proves what precedes it)."""

    position: int
    hash: str | None


class Health(Body):
    """Liveness, the store's head and each projection's position."""

    status: Literal["ok", "degraded"]
    head: int | None
    projections: dict[str, ProjectionStatus]
    chain: ChainHead | UnsetType = UNSET
    error: str | UnsetType = UNSET
    age_seconds: float | UnsetType = UNSET  # how old a stale answer's figures are


class Error(Body):
    """Every error body: a stable code and a message for people."""

    error: str
    message: str


def error_shape(status: int, codes: Iterable[str]) -> type[Struct]:
    """`Error` of one status, its code limited to `codes` (for the document: ErrorNNN)."""
    code: Any = Literal.__getitem__(tuple(codes))
    return msgspec.defstruct(f"Error{status}", [("error", code), ("message", str)], bases=(Body,))


# -- writing ----------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()


def encode(body: Struct) -> bytes:
    """The body as compact JSON."""
    return _encoder.encode(body)


def answer(body: Struct, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response holding `body`."""
    return Response(encode(body), status, headers, media_type="application/json")


@functools.cache
def _reader(shape: type[Struct]) -> Callable[[object], tuple[Any, ...]]:
    names = shape.__struct_fields__
    read = operator.attrgetter(*names)
    return read if len(names) > 1 else lambda source: (read(source),)


def shaped(shape: type[B], source: object) -> B:
    """`shape` filled from the attributes of `source` (a dataclass) with the fields' names."""
    # attrgetter and the positional constructor: twice as fast as msgspec.convert here.
    return shape(*_reader(shape)(source))


def shaped_all(shape: type[B], sources: Iterable[object]) -> tuple[B, ...]:
    """`shaped` for each of `sources`."""
    read = _reader(shape)
    return tuple([shape(*read(source)) for source in sources])
