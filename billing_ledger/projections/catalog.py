"""The catalog: each plan of the plans file with the Stripe prices that select it, pure.

Products and prices are folded like every other object (fold.py): the state of each is the
greatest of its snapshots under one total order, so any permutation of the same `product.*`
and `price.*` events (and reconcile's observations of them) gives the same catalog. A
deleted or archived price, or a price of a deleted or archived product, stays listed with
`active` false: an old subscription may still name it, but nobody is offered it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from billing_ledger.ledger.canonical import PRICE, PRODUCT, Item, Price, Product, Snapshot
from billing_ledger.projections.fold import by_object, ordered
from billing_ledger.projections.plans import Plan, Plans
from billing_ledger.projections.shapes import json_of

CATALOG_KINDS = frozenset({PRODUCT, PRICE})
# Shorter intervals first: a monthly price is listed before the yearly one.
_INTERVALS = {"day": 0, "week": 1, "month": 2, "year": 3}


@dataclass(frozen=True)
class CatalogPrice:
    """One Stripe price as the catalog offers it."""

    id: str
    product: str | None
    unit_amount: int | None  # in the currency's smallest unit
    currency: str | None
    type: str | None  # one_time or recurring
    interval: str | None  # day, week, month or year for a recurring price
    lookup_key: str | None
    active: bool  # offered: neither the price nor its product is archived or deleted
    interval_count: int | None = None
    nickname: str | None = None
    product_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT.md catalog price."""
        return json_of(self, "id product unit_amount currency type interval lookup_key active")


@dataclass(frozen=True)
class CatalogPlan:
    """One plan of the plans file with every known price that selects it."""

    id: str
    name: str
    description: str | None
    features: tuple[str, ...]
    prices: tuple[CatalogPrice, ...]
    mode: str = "subscription"  # or one_time
    default: bool = False

    @property
    def offered(self) -> tuple[CatalogPrice, ...]:
        """The prices a customer may buy now."""
        return tuple(p for p in self.prices if p.active)

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT.md catalog plan."""
        return json_of(self, "id name description features prices")


@dataclass(frozen=True)
class Catalog:
    """Every plan with its prices, and every price and product the ledger knows."""

    plans: tuple[CatalogPlan, ...]
    prices: Mapping[str, CatalogPrice] = field(default_factory=dict)
    products: Mapping[str, Product] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The body of GET /v1/catalog."""
        return {"plans": [p.to_json() for p in self.plans]}

    def plan(self, plan_id: str) -> CatalogPlan | None:
        """The plan with this id."""
        return next((p for p in self.plans if p.id == plan_id), None)

    def price(self, price_id: str) -> CatalogPrice | None:
        """A known price by id, offered or not."""
        return self.prices.get(price_id)

    def by_lookup_key(self, lookup_key: str) -> CatalogPrice | None:
        """The offered price with this lookup key (Stripe keeps one per key among active)."""
        found = sorted(
            (p for p in self.prices.values() if p.lookup_key == lookup_key and p.active),
            key=lambda p: p.id,
        )
        return found[0] if found else None

    def index(self) -> dict[str, tuple[str | None, str | None]]:
        """Each known price's (lookup key, product): what plan matching reads (Plans)."""
        return {p.id: (p.lookup_key, p.product) for p in self.prices.values()}


def chosen(snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    """Each product's and price's chosen snapshot (the fold's greatest), by (kind, id)."""
    objects = by_object(s for s in snapshots if s.kind in CATALOG_KINDS)
    return [ordered(objects[key])[-1] for key in sorted(objects)]


def _price(price: Price, products: Mapping[str, Product]) -> CatalogPrice:
    product = products.get(price.product_id) if price.product_id else None
    product_live = product is None or (product.active and not product.deleted)
    return CatalogPrice(
        id=price.id,
        product=price.product_id,
        unit_amount=price.unit_amount,
        currency=price.currency,
        type=price.type,
        interval=price.interval,
        lookup_key=price.lookup_key,
        active=price.active and not price.deleted and product_live,
        interval_count=price.interval_count,
        nickname=price.nickname,
        product_name=product.name if product is not None else None,
    )


def _sort_key(price: CatalogPrice) -> tuple[Any, ...]:
    interval = _INTERVALS.get(price.interval or "", -1)  # one-time prices first
    return (not price.active, price.currency or "", interval, price.unit_amount or 0, price.id)


def _selects(plans: Plans, price: CatalogPrice) -> Plan | None:
    """The plan this price selects, by the same precedence as a subscription item's."""
    item = Item(price.id, price.lookup_key, price.product, None, None)
    return plans.plan_for_item(item)


def _description(
    plan: Plan, prices: Iterable[CatalogPrice], products: Mapping[str, Product]
) -> str | None:
    if plan.description is not None:
        return plan.description
    described = {
        products[p.product].description for p in prices if p.product and p.product in products
    }
    described.discard(None)
    return described.pop() if len(described) == 1 else None  # one product: its description


def build(states: Iterable[Snapshot], plans: Plans) -> Catalog:
    """The catalog from the chosen snapshots of products and prices, and the plans file."""
    chosen_states = [s.state for s in states]
    products = {s.id: s for s in chosen_states if isinstance(s, Product)}
    prices = {
        p.id: _price(p, products)
        for p in sorted((s for s in chosen_states if isinstance(s, Price)), key=lambda p: p.id)
    }
    by_plan: dict[str, list[CatalogPrice]] = {}
    for price in prices.values():
        plan = _selects(plans, price)
        if plan is not None:
            by_plan.setdefault(plan.id, []).append(price)
    listed = tuple(
        CatalogPlan(
            id=plan.id,
            name=plan.display_name,
            description=_description(plan, by_plan.get(plan.id, ()), products),
            features=plan.features,
            prices=tuple(sorted(by_plan.get(plan.id, ()), key=_sort_key)),
            mode=plan.mode,
            default=plan.default,
        )
        for plan in plans.plans
    )
    return Catalog(plans=listed, prices=prices, products=products)
