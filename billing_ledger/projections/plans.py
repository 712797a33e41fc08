"""The plans file: which Stripe prices grant which features, and the access policy's knobs."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billing_ledger.ledger.canonical import Item

DAY = 86400

_TOP_KEYS = {"access", "plans"}
_ACCESS_KEYS = {"grant_statuses", "past_due_grace_days", "period_end_leeway_days"}
_PLAN_KEYS = {"id", "default", "prices", "lookup_keys", "products", "features"}
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


@dataclass(frozen=True)
class Plans:
    """Every plan, plus the policy that says when a subscription grants its plan."""

    plans: tuple[Plan, ...]
    grant_statuses: tuple[str, ...] = GRANTABLE_STATUSES
    past_due_grace_days: int = 7
    period_end_leeway_days: int = 2

    @property
    def grace_seconds(self) -> int:
        """How long a past_due episode keeps access."""
        return self.past_due_grace_days * DAY

    @property
    def leeway_seconds(self) -> int:
        """How long a grant may outlive the current period's end."""
        return self.period_end_leeway_days * DAY

    def plan_for_item(self, item: Item) -> Plan | None:
        """The plan an item selects: by price id, then lookup key, then product."""
        for value, field in (
            (item.price_id, "prices"),
            (item.lookup_key, "lookup_keys"),
            (item.product_id, "products"),
        ):
            plan = self._claimed_by(field, value)
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
    return Plan(id=plan_id, features=features, default=default, **matchers)


def _no_double_claims(plans: Iterable[Plan], source: str) -> None:
    """A price, lookup key or product selecting two plans would make matching arbitrary."""
    for field in _MATCHERS:
        owner: dict[str, str] = {}
        for plan in plans:
            for value in getattr(plan, field):
                if owner.setdefault(value, plan.id) != plan.id:
                    claim = f"{value!r} is claimed by plans {owner[value]!r} and {plan.id!r}"
                    raise PlansError(source, field, claim)
