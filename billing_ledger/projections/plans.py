"""The plans file: which Stripe prices grant which features, and the access policy's knobs."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from billing_ledger.ledger.canonical import Item

DAY = 86400

_TOP_KEYS = {"access", "plans"}
_ACCESS_KEYS = {"grant_statuses", "past_due_grace_days", "period_end_leeway_days"}
_PLAN_KEYS = {
    "id",
    "default",
    "prices",
    "lookup_keys",
    "products",
    "features",
    "name",
    "description",
    "mode",
    "allow_promotion_codes",
    "automatic_tax",
    "seats",
    "max_seats",
}
MAX_SEATS = 99  # Checkout's adjustable quantity allows up to 999,999; a sane default
SUBSCRIPTION_MODE = "subscription"
ONE_TIME_MODE = "one_time"  # bought once through Checkout in payment mode
_MODES = (SUBSCRIPTION_MODE, ONE_TIME_MODE)
_MATCHERS = ("prices", "lookup_keys", "products")
# past_due has its own rule (the grace window); the other statuses never grant (policy P2).
GRANTABLE_STATUSES = ("active", "trialing")


class PlansError(ValueError):
    """The plans file cannot be used; the message names the file and the key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source = source
        self.key = key


@dataclass(frozen=True)
class Plan:
    """One plan: the Stripe prices, lookup keys or products that select it, and its features."""

    id: str
    default: bool = False
    prices: tuple[str, ...] = ()
    lookup_keys: tuple[str, ...] = ()
    products: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    name: str | None = None  # the display name; `display_name` falls back to the id
    description: str | None = None
    mode: str = SUBSCRIPTION_MODE
    # Checkout options (None: the settings decide): promotion codes, Stripe Tax, and for a
    # seat plan a quantity the buyer may change at Checkout, up to max_seats.
    allow_promotion_codes: bool | None = None
    automatic_tax: bool | None = None
    seats: bool = False
    max_seats: int = MAX_SEATS

    @property
    def display_name(self) -> str:
        """The name to show: the plans file's, else the id capitalised."""
        return self.name or self.id.capitalize()

    @property
    def one_time(self) -> bool:
        """Whether the plan is bought once (Checkout in payment mode), not subscribed to."""
        return self.mode == ONE_TIME_MODE


@dataclass(frozen=True)
class Plans:
    """Every plan, plus the policy that says when a subscription grants its plan."""

    plans: tuple[Plan, ...]
    grant_statuses: tuple[str, ...] = GRANTABLE_STATUSES
    past_due_grace_days: int = 7
    period_end_leeway_days: int = 2
    # Each known price's (lookup key, product) from the catalog (projections/catalog.py):
    # an item that names only its price id still matches a plan by lookup key or product.
    catalog_prices: Mapping[str, tuple[str | None, str | None]] = field(
        default_factory=dict, compare=False, hash=False
    )

    def with_catalog(self, prices: Mapping[str, tuple[str | None, str | None]]) -> Plans:
        """These plans matching through the catalog's prices too."""
        return replace(self, catalog_prices=dict(prices))

    @property
    def grace_seconds(self) -> int:
        """How long a past_due episode keeps access."""
        return self.past_due_grace_days * DAY

    @property
    def leeway_seconds(self) -> int:
        """How long a grant may outlive the current period's end."""
        return self.period_end_leeway_days * DAY

    def plan_for_item(self, item: Item) -> Plan | None:
        """The plan an item selects: by price id, then lookup key, then product.

        What the item does not say of its price (an unexpanded price is an id alone), the
        catalog's price events do."""
        lookup_key, product = item.lookup_key, item.product_id
        known = self.catalog_prices.get(item.price_id) if item.price_id else None
        if known is not None:
            lookup_key, product = lookup_key or known[0], product or known[1]
        for value, matcher in (
            (item.price_id, "prices"),
            (lookup_key, "lookup_keys"),
            (product, "products"),
        ):
            plan = self._claimed_by(matcher, value)
            if plan is not None:
                return plan
        return None

    def _claimed_by(self, field: str, value: str | None) -> Plan | None:
        if value is None:
            return None
        return next((p for p in self.plans if value in getattr(p, field)), None)

    def default_plans(self) -> tuple[Plan, ...]:
        """The plans every user has, with or without Stripe."""
        return tuple(p for p in self.plans if p.default)

    def default_features(self) -> tuple[str, ...]:
        """The default plans' features, sorted."""
        return tuple(sorted({f for p in self.default_plans() for f in p.features}))

    def by_id(self, plan_id: str) -> Plan | None:
        """The plan with this id."""
        return next((p for p in self.plans if p.id == plan_id), None)


def load_plans(path: str | Path) -> Plans:
    """Read and validate a plans file."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise PlansError(source, "(file)", f"cannot be read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise PlansError(source, "(file)", f"is not valid TOML: {e}") from None
    return parse_plans(data, source)


def parse_plans(data: Mapping[str, Any], source: str = "<plans>") -> Plans:
    """Validate an already parsed plans document."""
    _no_unknown_keys(data, _TOP_KEYS, source, "")
    access = data.get("access", {})
    if not isinstance(access, dict):
        raise PlansError(source, "access", "must be a table")
    _no_unknown_keys(access, _ACCESS_KEYS, source, "access.")
    plans = _plans(data.get("plans"), source)
    _no_double_claims(plans, source)
    return Plans(
        plans=plans,
        grant_statuses=_grant_statuses(access, source),
        past_due_grace_days=_days(access, "past_due_grace_days", 7, source),
        period_end_leeway_days=_days(access, "period_end_leeway_days", 2, source),
    )


def _no_unknown_keys(table: Mapping[str, Any], known: set[str], source: str, prefix: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        allowed = ", ".join(sorted(known))
        raise PlansError(source, prefix + unknown[0], f"unknown key (expected one of {allowed})")


def _grant_statuses(access: Mapping[str, Any], source: str) -> tuple[str, ...]:
    key = "access.grant_statuses"
    statuses = _strings(access.get("grant_statuses", list(GRANTABLE_STATUSES)), key, source)
    for status in statuses:
        if status == "past_due":
            raise PlansError(source, key, "past_due is governed by past_due_grace_days")
        if status not in GRANTABLE_STATUSES:
            raise PlansError(source, key, f"{status!r} never grants access (policy P2)")
    return statuses


def _days(access: Mapping[str, Any], name: str, default: int, source: str) -> int:
    value = access.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PlansError(source, f"access.{name}", f"must be a whole number >= 0, got {value!r}")
    return value


def _strings(value: Any, key: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PlansError(source, key, f"must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _plans(raw: Any, source: str) -> tuple[Plan, ...]:
    if not isinstance(raw, list) or not raw:
        raise PlansError(source, "plans", "no plans: add at least one [[plans]] table")
    plans = tuple(_plan(entry, i, source) for i, entry in enumerate(raw))
    ids = [p.id for p in plans]
    for plan_id in ids:
        if ids.count(plan_id) > 1:
            raise PlansError(source, "plans.id", f"{plan_id!r} is defined twice")
    return plans


def _plan(entry: Any, index: int, source: str) -> Plan:
    where = f"plans[{index}]"
    if not isinstance(entry, dict):
        raise PlansError(source, where, "must be a table")
    _no_unknown_keys(entry, _PLAN_KEYS, source, f"{where}.")
    plan_id = entry.get("id")
    if not isinstance(plan_id, str) or not plan_id:
        raise PlansError(source, f"{where}.id", "every plan needs a non-empty string id")
    where = f"plans[{plan_id}]"
    features = _strings(entry.get("features", []), f"{where}.features", source)
    if not features:
        raise PlansError(source, f"{where}.features", "a plan needs at least one feature")
    default = entry.get("default", False)
    if not isinstance(default, bool):
        raise PlansError(source, f"{where}.default", f"must be true or false, got {default!r}")
    matchers = {m: _strings(entry.get(m, []), f"{where}.{m}", source) for m in _MATCHERS}
    if not default and not any(matchers.values()):
        raise PlansError(
            source, where, "matches no price, lookup key or product and is not default"
        )
    mode = _mode(entry, default, where, source)
    seats = _flag(entry, "seats", where, source) or False
    max_seats = _max_seats(entry, where, source)
    return Plan(
        id=plan_id,
        features=features,
        default=default,
        name=_optional_text(entry, "name", where, source),
        description=_optional_text(entry, "description", where, source),
        mode=mode,
        allow_promotion_codes=_flag(entry, "allow_promotion_codes", where, source),
        automatic_tax=_flag(entry, "automatic_tax", where, source),
        seats=seats,
        max_seats=max_seats,
        **matchers,
    )


def _mode(entry: Mapping[str, Any], default: bool, where: str, source: str) -> str:
    mode = entry.get("mode", SUBSCRIPTION_MODE)
    if mode not in _MODES:
        raise PlansError(
            source, f"{where}.mode", f"must be one of {', '.join(_MODES)}, got {mode!r}"
        )
    if mode == ONE_TIME_MODE and default:
        raise PlansError(source, f"{where}.mode", "a default plan is not bought")
    return str(mode)


def _max_seats(entry: Mapping[str, Any], where: str, source: str) -> int:
    max_seats = entry.get("max_seats", MAX_SEATS)
    if (
        isinstance(max_seats, bool)
        or not isinstance(max_seats, int)
        or not 1 <= max_seats <= 999_999
    ):
        raise PlansError(source, f"{where}.max_seats", f"must be 1 to 999999, got {max_seats!r}")
    return max_seats


def _flag(entry: Mapping[str, Any], key: str, where: str, source: str) -> bool | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, bool):
        raise PlansError(source, f"{where}.{key}", f"must be true or false, got {value!r}")
    return value


def _optional_text(entry: Mapping[str, Any], key: str, where: str, source: str) -> str | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise PlansError(source, f"{where}.{key}", f"must be a non-empty string, got {value!r}")
    return value


def _no_double_claims(plans: Iterable[Plan], source: str) -> None:
    """A price, lookup key or product selecting two plans would make matching arbitrary."""
    for matcher in _MATCHERS:
        owner: dict[str, str] = {}
        for plan in plans:
            for value in getattr(plan, matcher):
                if owner.setdefault(value, plan.id) != plan.id:
                    claim = f"{value!r} is claimed by plans {owner[value]!r} and {plan.id!r}"
                    raise PlansError(source, matcher, claim)
