"""Reconcile: compare the projections with Stripe's current objects; record what differs.

Events alone cannot be complete (30-day retention, an event Stripe never generated, a
delivery that never came: STRIPE-SEMANTICS 5.4, S60), so Stripe's current subscriptions,
customers and, where the API has them, active entitlements are fetched and each one that
differs from the state the fold chooses now is appended as a `ledger.observation`. The
projections read observations like any snapshot, and replay never calls Stripe again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import stripe

from billing_ledger.ledger.canonical import CUSTOMER, ENTITLEMENT_SUMMARY, Item, Snapshot, State
from billing_ledger.ledger.normalise import normalise
from billing_ledger.ledger.own_events import observation
from billing_ledger.ledger.records import Incoming, as_stored
from billing_ledger.ledger.store import EventStore
from billing_ledger.progress import Progress
from billing_ledger.projections.fold import state_at
from billing_ledger.projections.links import customer_of, links_of
from billing_ledger.projections.plans import Plans
from billing_ledger.projections.views import Views
from billing_ledger.replay import impact, stripe_api, tables
from billing_ledger.replay.rebuild import catch_up
from billing_ledger.stripe_errors import StripeUnavailableError

Json = dict[str, Any]
SUMMARY_OBJECT = "entitlements.active_entitlement_summary"


class _Phases:
    """Seconds since the previous mark, recorded under each mark's name."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self.last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = now - self.last
        self.last = now


@dataclass(frozen=True)
class Drift:
    """One Stripe object whose current state the projections do not hold."""

    kind: str
    object_id: str
    fields: tuple[tuple[str, Any, Any], ...]  # (field, projected, observed)
    new: bool  # the ledger has no snapshot of it at all

    def line(self) -> str:
        """`sub_1 (subscription): status active -> canceled; ended_at null -> 1767312000`."""
        if self.new:
            return f"{self.object_id} ({self.kind}): unknown to the ledger"
        changes = "; ".join(f"{name} {_show(a)} -> {_show(b)}" for name, a, b in self.fields)
        return f"{self.object_id} ({self.kind}): {changes}"


@dataclass
class ReconcileReport:
    """What one reconcile observed, found different and recorded."""

    observed: dict[str, int] = field(default_factory=dict)  # kind -> count
    drifts: list[Drift] = field(default_factory=list)
    recorded: int = 0
    notes: list[str] = field(default_factory=list)
    users: list[impact.FeatureChange] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase, in order

    def summary(self) -> str:
        """One line of counts, then the time of each phase."""
        seen = ", ".join(f"{n} {kind}" for kind, n in sorted(self.observed.items()))
        times = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in self.phases.items())
        return (
            f"observed {seen or 'nothing'}; {len(self.drifts)} differ; "
            f"recorded {self.recorded} observations; {times or 'no time'}"
        )


@dataclass(eq=False)
class Reconcile(stripe_api.StripeRun):
    """List Stripe's current objects, compare, and record what differs."""

    store: EventStore
    views: Views
    plans: Plans
    client: stripe.StripeClient

    def run(self) -> ReconcileReport:
        """Observe, compare with the caught-up projections, record, and say whose access moved."""
        report = ReconcileReport()
        clock = _Phases(report.phases)
        self._catch_up()  # compare with every stored event, not a lagging view
        clock.mark("catch-up")
        now = int(self.clock())
        with Progress("reconcile objects observed", None) as progress:  # Stripe lists no total
            pending = [
                (drift, event)
                for event in self._observations(report, now, progress.advance)
                if (drift := self._drift(event, now)) is not None
            ]
        clock.mark("observe")
        report.drifts = [drift for drift, _ in pending]
        users = self._users([event for _, event in pending])
        before = {u: impact.features(self.views, self.plans, u, now) for u in users}
        self._record(report, [event for _, event in pending])
        report.users = [
            change for u in sorted(users) if (change := self._change(u, before[u], now)) is not None
        ]
        clock.mark("record")
        return report

    def _change(
        self, user_id: str, before: tuple[str, ...], at: int
    ) -> impact.FeatureChange | None:
        after = impact.features(self.views, self.plans, user_id, at)
        return impact.FeatureChange(user_id, before, after) if after != before else None

    def _catch_up(self) -> None:
        catch_up(self.store, self.views, livemode=self.livemode)

    def _record(self, report: ReconcileReport, events: list[Incoming]) -> None:
        if events:
            self.store.append(events)
            self._catch_up()
        report.recorded = len(events)

    # -- observing --------------------------------------------------------------------

    def _observations(
        self, report: ReconcileReport, now: int, seen: Callable[[int], None]
    ) -> Iterator[Incoming]:
        version = stripe_api.api_version()
        for kind, obj in self._objects(report):
            report.observed[kind] = report.observed.get(kind, 0) + 1
            seen(1)
            if "livemode" not in obj:  # a deleted customer says only id and deleted
                obj = {**obj, "livemode": self.livemode}
            yield observation(obj, now, version)

    def _objects(self, report: ReconcileReport) -> Iterator[tuple[str, Json]]:
        listed: set[str] = set()
        tagged: set[str] = set()  # customers an object names an app user for
        for sub in self._list(
            self.client.v1.subscriptions.list, {"status": "all"}, "subscriptions"
        ):
            tagged |= _tagged_customer(sub, "customer")
            yield "subscriptions", sub
        for customer in self._list(self.client.v1.customers.list, {}, "customers"):
            listed.add(str(customer.get("id")))
            tagged |= _tagged_customer(customer, "id")
            yield "customers", customer
        yield from self._unlisted_customers(report, listed)
        linked = tagged | set(tables.linked_customers(self.views))
        yield from self._summaries(report, sorted(linked))
        yield from self._catalog(report)

    def _catalog(self, report: ReconcileReport) -> Iterator[tuple[str, Json]]:
        """Products and prices, archived ones too: the catalog keeps them (not offered)."""
        yield from (
            ("products", p) for p in self._list(self.client.v1.products.list, {}, "products")
        )
        try:
            yield from (("prices", p) for p in self._list(self.client.v1.prices.list, {}, "prices"))
        except StripeUnavailableError as error:
            if error.status != 404:
                raise
            # An API without prices (localstripe) has plans: a plan's id is its price's id.
            report.notes.append("prices: not offered by this API; plans observed instead")
            yield from (("prices", p) for p in self._list(self.client.v1.plans.list, {}, "plans"))

    def _list(self, call: Callable[[Any], Any], params: Json, what: str) -> Iterator[Json]:
        return stripe_api.list_all(call, params, f"GET /v1/{what}", self.sleep)

    def _unlisted_customers(
        self, report: ReconcileReport, listed: set[str]
    ) -> Iterator[tuple[str, Json]]:
        """Customers the ledger knows that Stripe no longer lists: deleted ones (S60)."""
        for customer_id in tables.object_ids(self.views, CUSTOMER):
            if customer_id in listed:
                continue
            found = self._retrieve(self.client.v1.customers.retrieve, customer_id, report)
            if found is not None:
                yield "customers", found

    def _retrieve(
        self, call: Callable[[str], Any], object_id: str, report: ReconcileReport
    ) -> Json | None:
        try:
            return stripe_api.raw_json(
                stripe_api.call(lambda: call(object_id), f"GET {object_id}", self.sleep)
            )
        except StripeUnavailableError as error:
            if error.status != 404:
                raise
        report.notes.append(f"{object_id}: known to the ledger, not found at Stripe")
        return None

    def _summaries(
        self, report: ReconcileReport, customers: list[str]
    ) -> Iterator[tuple[str, Json]]:
        """Each user's customer's active entitlements, when this API has the endpoint."""
        for customer_id in customers:
            try:
                entries = list(self._entitlements(customer_id))
            except StripeUnavailableError as error:
                if error.status != 404:
                    raise
                report.notes.append("active entitlements: not offered by this API (skipped)")
                return
            summary = self._summary(customer_id, entries)
            if summary is not None:
                yield "entitlement summaries", summary

    def _entitlements(self, customer_id: str) -> Iterator[Json]:
        call = self.client.v1.entitlements.active_entitlements.list
        params = {"customer": customer_id}
        return self._list(call, params, "entitlements/active_entitlements")

    def _summary(self, customer_id: str, entries: list[Json]) -> Json | None:
        """The customer's entitlements in the summary's shape, when they can matter.

        An empty list for a customer the ledger has no summary of means the account does not
        use Stripe's features: recording it would replace the plans' features with nothing.
        """
        known = tables.snapshots_of(self.views, ENTITLEMENT_SUMMARY, customer_id)
        if not entries and not known:
            return None
        livemode = entries[0].get("livemode", self.livemode) if entries else self.livemode
        listing = {"object": "list", "data": entries, "has_more": False}
        return {
            "object": SUMMARY_OBJECT,
            "customer": customer_id,
            "livemode": livemode,
            "entitlements": listing,
        }

    # -- comparing --------------------------------------------------------------------

    def _drift(self, event: Incoming, now: int) -> Drift | None:
        observed = _snapshot(event)
        if observed is None:
            return None
        chosen = state_at(tables.snapshots_of(self.views, observed.kind, observed.object_id), now)
        if chosen is None:
            return Drift(observed.kind, observed.object_id, (), new=True)
        fields = _differences(chosen.state, observed.state)
        return Drift(observed.kind, observed.object_id, fields, new=False) if fields else None

    def _users(self, events: list[Incoming]) -> set[str]:
        """Users these observations may touch: linked to their customers, or named by them."""
        snapshots = [s for s in map(_snapshot, events) if s is not None]
        customers = {c for c in map(customer_of, snapshots) if c is not None}
        named = {row.user_id for s in snapshots for row in links_of(s)}
        return impact.users_of(self.views, customers) | named


def _tagged_customer(obj: Json, key: str) -> set[str]:
    """The customer of an object whose metadata names an app user (a link to come)."""
    metadata = obj.get("metadata")
    customer = obj.get(key)
    tagged = isinstance(metadata, dict) and metadata.get("app_user_id")
    return {customer} if tagged and isinstance(customer, str) else set()


def _snapshot(event: Incoming) -> Snapshot | None:
    """What the projections will read from this observation once stored (the same normalise)."""
    return normalise(as_stored(event, 0))


def _differences(projected: State, observed: State) -> tuple[tuple[str, Any, Any], ...]:
    """The canonical fields that differ, items shown by price and period."""
    if type(projected) is not type(observed):
        return (("kind", type(projected).__name__, type(observed).__name__),)
    return tuple(
        (f.name, _plain(getattr(projected, f.name)), _plain(getattr(observed, f.name)))
        for f in dataclasses.fields(projected)
        if getattr(projected, f.name) != getattr(observed, f.name)
    )


def _plain(value: Any) -> Any:
    if isinstance(value, tuple) and value and isinstance(value[0], Item):
        return [f"{i.price_id} until {i.current_period_end}" for i in value]
    return list(value) if isinstance(value, tuple) else value


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)
