"""The card on file: what a customer pays with, folded from payment-method events (pure).

Stripe says which payment method a customer pays with in three places, in this order of
authority: the customer's `invoice_settings.default_payment_method`, a subscription's own
`default_payment_method` (Checkout in subscription mode sets this one, not the customer's),
and otherwise the payment method attached last. Each event yields small facts; the card is a
deterministic choice over the set of facts (the latest by `(created, event_id)` of each
object), so any permutation of the same events shows the same card. Only what a page shows
is kept: the brand, the last four digits and the expiry, never a fingerprint or an address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from billing_ledger.ledger.records import Recorded

# Fact kinds.
PAYMENT_METHOD = "payment_method"  # a payment method's details and whether it is attached
CUSTOMER_DEFAULT = "customer_default"  # invoice_settings.default_payment_method
SUBSCRIPTION_DEFAULT = "subscription_default"  # a subscription's default_payment_method
SETUP = "setup"  # a SetupIntent that saved a payment method for a customer

MAX_ID = 255
BRANDS = {
    "amex": "American Express",
    "diners": "Diners Club",
    "discover": "Discover",
    "jcb": "JCB",
    "mastercard": "Mastercard",
    "unionpay": "UnionPay",
    "visa": "Visa",
    "cartes_bancaires": "Cartes Bancaires",
    "sepa_debit": "SEPA Direct Debit",
    "us_bank_account": "Bank account",
    "bacs_debit": "Bacs Direct Debit",
    "au_becs_debit": "BECS Direct Debit",
}

Json = Mapping[str, Any]


@dataclass(frozen=True)
class CardFact:
    """One thing one event says about a customer's payment methods."""

    kind: str
    object_id: str  # the payment method, customer, subscription or SetupIntent
    event_id: str
    created: int
    customer_id: str | None
    payment_method: str | None = None  # the payment method named (for PAYMENT_METHOD: itself)
    attached: bool = True  # PAYMENT_METHOD: still attached to its customer
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None

    def to_json(self) -> bytes:
        """As the view table stores it (orjson writes a dataclass's fields in order, as
        `asdict` would, without building the dict)."""
        return orjson.dumps(self)


def fact_from_json(raw: str | bytes) -> CardFact:
    """A stored fact."""
    return CardFact(**orjson.loads(raw))


@dataclass(frozen=True)
class Card:
    """The payment method a customer pays with, as the billing page shows it."""

    brand: str
    last4: str | None
    exp_month: int | None
    exp_year: int | None

    @property
    def label(self) -> str:
        """Visa ending in 4242."""
        return f"{self.brand} ending in {self.last4}" if self.last4 else self.brand

    @property
    def expires(self) -> str | None:
        """12/2030, when the card has an expiry."""
        if self.exp_month is None or self.exp_year is None:
            return None
        return f"{self.exp_month:02d}/{self.exp_year}"


# -- reading events -----------------------------------------------------------------------


def _id(value: Any) -> str | None:
    """An id, bare or expanded."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID else None


def _small_int(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10_000
    return value if ok else None


def _text(value: Any, limit: int) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def _method(event: Recorded, obj: Json, customer: str | None, attached: bool) -> CardFact:
    """A payment method object's details (a card, or a debit account's last four)."""
    kind = _text(obj.get("type"), 64) or "card"
    found = obj.get(kind)
    details: Json = found if isinstance(found, dict) else {}
    brand = _text(details.get("brand"), 64) if kind == "card" else kind
    return CardFact(
        PAYMENT_METHOD,
        _id(obj) or "",
        event.event_id,
        event.created,
        customer,
        payment_method=_id(obj),
        attached=attached,
        brand=brand,
        last4=_text(details.get("last4"), 4),
        exp_month=_small_int(details.get("exp_month")),
        exp_year=_small_int(details.get("exp_year")),
    )


def _payment_method(event: Recorded, obj: Json, previous: Json) -> list[CardFact]:
    customer = _id(obj.get("customer"))
    if event.type == "payment_method.detached":  # the customer it left is in the previous
        return [_method(event, obj, customer or _id(previous.get("customer")), False)]
    return [_method(event, obj, customer, customer is not None)]


def _default(kind: str, field: Callable[[Json], Any]) -> Reader:
    """Facts of an object naming a default payment method (bare, or expanded with details)."""

    def read(event: Recorded, obj: Json, previous: Json) -> list[CardFact]:
        customer = obj.get("id") if kind == CUSTOMER_DEFAULT else obj.get("customer")
        named = field(obj)
        fact = CardFact(
            kind,
            _id(obj) or "",
            event.event_id,
            event.created,
            _id(customer),
            payment_method=_id(named),
        )
        if isinstance(named, dict) and _id(named) is not None:
            return [fact, _method(event, named, _id(customer), True)]
        return [fact]

    return read


def _setup(event: Recorded, obj: Json, previous: Json) -> list[CardFact]:
    method = obj.get("payment_method")
    fact = CardFact(
        SETUP,
        _id(obj) or "",
        event.event_id,
        event.created,
        _id(obj.get("customer")),
        payment_method=_id(method),
    )
    if isinstance(method, dict) and _id(method) is not None:
        return [fact, _method(event, method, fact.customer_id, fact.customer_id is not None)]
    return [fact]


def _invoice_settings(obj: Json) -> Any:
    settings = obj.get("invoice_settings")
    return settings.get("default_payment_method") if isinstance(settings, dict) else None


Reader = Callable[[Recorded, Json, Json], list[CardFact]]
_CUSTOMER = _default(CUSTOMER_DEFAULT, _invoice_settings)
_SUBSCRIPTION = _default(SUBSCRIPTION_DEFAULT, lambda obj: obj.get("default_payment_method"))

READERS: dict[str, Reader] = {
    "payment_method.attached": _payment_method,
    "payment_method.updated": _payment_method,
    "payment_method.automatically_updated": _payment_method,  # the card network's new expiry
    "payment_method.detached": _payment_method,
    "customer.created": _CUSTOMER,
    "customer.updated": _CUSTOMER,
    "customer.subscription.created": _SUBSCRIPTION,
    "customer.subscription.updated": _SUBSCRIPTION,
    "setup_intent.succeeded": _setup,
}
CARD_EVENTS = frozenset(READERS)


def card_facts(event: Recorded, body: Any = None) -> tuple[CardFact, ...]:
    """What one stored event says about payment methods (nothing for other types);
    `body`: the event's parsed body, when the caller has it already."""
    reader = READERS.get(event.type)
    if reader is None:
        return ()
    if body is None:
        body = event.payload()
    data = body.get("data") if isinstance(body, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict) or _id(obj) is None:
        return ()
    previous = data.get("previous_attributes") if isinstance(data, dict) else None
    found = reader(event, obj, previous if isinstance(previous, dict) else {})
    return tuple(f for f in found if f.object_id)


# -- the fold ------------------------------------------------------------------------------


def _latest(facts: Iterable[CardFact]) -> dict[tuple[str, str], CardFact]:
    """Each object's latest fact of each kind, by (created, event_id)."""
    chosen: dict[tuple[str, str], CardFact] = {}
    for fact in facts:
        key = (fact.kind, fact.object_id)
        held = chosen.get(key)
        if held is None or (fact.created, fact.event_id) > (held.created, held.event_id):
            chosen[key] = fact
    return chosen


def card_on_file(facts: Iterable[CardFact], customers: Sequence[str]) -> Card | None:
    """The card the first of `customers` (the preferred one first) that has one pays with."""
    latest = _latest(facts)
    methods = {oid: f for (kind, oid), f in latest.items() if kind == PAYMENT_METHOD}
    for customer in customers:
        card = _card_of(customer, latest, methods)
        if card is not None:
            return card
    return None


def _card_of(
    customer: str, latest: Mapping[tuple[str, str], CardFact], methods: Mapping[str, CardFact]
) -> Card | None:
    def usable(pm: str | None) -> CardFact | None:
        found = methods.get(pm) if pm is not None else None
        return (
            found
            if found is not None and found.attached and found.customer_id == customer
            else None
        )

    mine = sorted(
        (f for f in latest.values() if f.customer_id == customer and f.kind != CUSTOMER_DEFAULT),
        key=lambda f: (f.kind == SUBSCRIPTION_DEFAULT, f.created, f.event_id),
        reverse=True,
    )  # subscriptions' defaults first, then whatever was attached or set up last
    default = latest.get((CUSTOMER_DEFAULT, customer))
    candidates = [default.payment_method if default else None] + [f.payment_method for f in mine]
    for pm in candidates:
        method = usable(pm)
        if method is not None and method.brand is not None:
            label = BRANDS.get(method.brand, method.brand.replace("_", " ").title())
            return Card(label, method.last4, method.exp_month, method.exp_year)
    return None
