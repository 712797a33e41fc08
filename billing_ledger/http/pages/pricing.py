"""/pricing and its Checkout: the plans for sale, from the catalog (no Stripe call to show them)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from billing_ledger.http.account import load_account
from billing_ledger.http.billing import CheckoutRequest, create_checkout
from billing_ledger.http.errors import status_for
from billing_ledger.http.pages.render import (
    INTERVAL_NAMES,
    INTERVALS,
    PriceTag,
    kind_message,
    plan_name,
    redirect,
    render,
    signed_post,
    storage_page,
)
from billing_ledger.http.signin import current_user, deps_of
from billing_ledger.http.state import Services
from billing_ledger.http.stripe_client import BillingError, open_stripe
from billing_ledger.ledger.store import StorageError
from billing_ledger.projections.catalog import Catalog
from billing_ledger.projections.plans import Plan, Plans


@dataclass(frozen=True)
class ShopPlan:
    """A plan as the pricing page sells it: the page-side model, fed from the catalog."""

    plan: Plan
    name: str
    description: str | None
    prices: tuple[PriceTag, ...]  # the prices offered now (neither archived nor deleted)

    @property
    def one_time(self) -> bool:
        """Bought once (the plans file's mode one_time, or only one-time prices)."""
        return self.plan.one_time or (bool(self.prices) and all(p.once for p in self.prices))

    @property
    def intervals(self) -> tuple[str, ...]:
        """The recurring intervals it is offered at, shortest first."""
        found = {p.interval for p in self.prices if not p.once and p.interval}
        return tuple(i for i in INTERVALS if i in found)

    def price_for(self, interval: str | None) -> PriceTag | None:
        """Its price for the chosen interval, else its first one."""
        chosen = [p for p in self.prices if p.interval == interval and not p.once]
        found = chosen or list(self.prices)
        return found[0] if found else None


@dataclass(frozen=True)
class Offer:
    """One card of the pricing page."""

    shop: ShopPlan
    price: PriceTag | None  # for the interval shown
    current: bool
    highlighted: bool
    addon: bool
    features: tuple[str, ...]  # as a person reads them

    @property
    def plan(self) -> Plan:
        """The plans file's plan."""
        return self.shop.plan

    @property
    def name(self) -> str:
        """The plan's display name."""
        return self.shop.name


def shop_plans(plans: Plans, catalog: Catalog) -> list[ShopPlan]:
    """The paid plans with the catalog's offered prices (matched by id, lookup key or product)."""
    shop: list[ShopPlan] = []
    for entry in (p for p in catalog.plans if not p.default):
        plan = plans.by_id(entry.id)
        if plan is not None:
            prices = tuple(PriceTag.of(p) for p in entry.offered)
            shop.append(ShopPlan(plan, entry.name, entry.description, prices))
    return shop


def feature_lines(plan: Plan, included: tuple[str, ...], base: str) -> tuple[str, ...]:
    """ "Everything in Free" and the features beyond it, as words rather than ids."""
    extra = [f.replace("_", " ").capitalize() for f in plan.features if f not in included]
    keeps_base = bool(included) and set(included) <= set(plan.features)
    return (f"Everything in {base}", *extra) if keeps_base else tuple(extra)


def is_addon(plan: Plan, included: tuple[str, ...]) -> bool:
    """An add-on does not include the free plan's features: it is bought beside a plan."""
    return bool(included) and not set(included) <= set(plan.features)


def highlighted_plan(shop: list[ShopPlan], included: tuple[str, ...], wanted: str | None) -> str:
    """The plan the page recommends: LEDGER_HIGHLIGHT_PLAN, else the plan granting most."""
    ids = {s.plan.id for s in shop}
    if wanted in ids:
        return str(wanted)
    main = [s for s in shop if not is_addon(s.plan, included)] or shop
    best = max(main, key=lambda s: (len(s.plan.features), not s.one_time), default=None)
    return best.plan.id if best is not None else ""


def chosen_interval(request: Request, shop: list[ShopPlan]) -> tuple[str | None, list[str]]:
    """The interval shown (?interval=, default the shortest) and the ones to switch between."""
    offered = sorted({i for s in shop for i in s.intervals}, key=INTERVALS.index)
    asked = request.query_params.get("interval")
    if asked in offered:
        return asked, offered
    return (offered[0] if offered else None), offered


async def offers(request: Request, held: set[str]) -> tuple[list[Offer], list[str], str | None]:
    """The pricing page's cards, the intervals to switch between and the one shown."""
    deps = deps_of(request)
    plans: Plans = deps.plans
    included = plans.default_features()
    base = next((plan_name(p) for p in plans.plans if p.default), "Free")
    shop = shop_plans(plans, await deps.reads.catalog_now())
    interval, intervals = chosen_interval(request, shop)
    top = highlighted_plan(shop, included, deps.settings.highlight_plan)
    listed = [
        Offer(
            shop=s,
            price=s.price_for(interval),
            current=s.plan.id in held,
            highlighted=s.plan.id == top,
            addon=is_addon(s.plan, included),
            features=feature_lines(s.plan, included, base),
        )
        for s in shop
    ]
    switch = intervals if any(len(s.intervals) > 1 for s in shop) else []
    return listed, switch, interval


async def pricing_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    """The pricing page for whoever is looking (signed in or not); no Stripe call."""
    user = current_user(request)
    held = set((await load_account(deps_of(request), user)).entitlements.plans) if user else set()
    notice = None
    if request.query_params.get("canceled") == "true":
        notice = "Checkout canceled — nothing was charged. Pick a plan whenever you are ready."
    listed, switch, interval = await offers(request, held)
    context = {
        "page": "pricing",
        "plans_offered": [o for o in listed if not o.addon],
        "addons": [o for o in listed if o.addon],
        "switch": switch,
        "interval": interval,
        "interval_names": INTERVAL_NAMES,
        "included": [f.replace("_", " ") for f in deps_of(request).plans.default_features()],
        "notice": notice,
        "error": error,
    }
    return render(request, "pricing.html", context, status)


async def pricing(request: Request) -> Response:
    """GET /pricing."""
    try:
        return await pricing_page(request)
    except StorageError:
        return storage_page(request)


def price_reference(plan: Plan) -> str | None:
    """A lookup key survives a price change in Stripe, so it is preferred over an id."""
    if plan.lookup_keys:
        return plan.lookup_keys[0]
    return plan.prices[0] if plan.prices else None


async def plan_for_sale(deps: Services, plan_id: str, interval: str) -> tuple[Plan, str] | None:
    """A plan the pricing page offers, with what Checkout is asked for: the catalog's price
    for the chosen interval when it knows one, else the plan's lookup key or price id."""
    plan = deps.plans.by_id(plan_id)
    if plan is None or plan.default:
        return None
    shop = shop_plans(deps.plans, await deps.reads.catalog_now())
    mine = next((s for s in shop if s.plan.id == plan.id), None)
    price = mine.price_for(interval) if mine is not None and interval in mine.intervals else None
    reference = price.id if price is not None else price_reference(plan)
    return (plan, reference) if reference is not None else None


async def checkout_url(request: Request, user: str, plan: Plan, reference: str) -> str:
    """The Checkout Session's URL, or /billing when the user already has the plan."""
    deps = deps_of(request)
    account = await load_account(deps, user)
    if plan in account.paid_plans(deps.plans):
        return "/billing"  # already theirs: no second subscription
    async with open_stripe(deps.settings) as api:
        session = await create_checkout(deps, api, CheckoutRequest(user, reference))
    return str(session["url"])


@signed_post("/pricing")
async def start_checkout(request: Request, user: str, form: FormData) -> Response:
    """POST /pricing/checkout: open a Checkout Session on the server, then go there."""
    try:
        offered = await plan_for_sale(
            deps_of(request), str(form.get("plan", "")), str(form.get("interval", ""))
        )
        if offered is None:
            return await pricing_page(request, "That plan is not available.", 400)
        return redirect(await checkout_url(request, user, *offered))
    except BillingError as e:
        return await pricing_page(request, kind_message(e, "checkout"), status_for(e))
    except StorageError:
        return storage_page(request)
