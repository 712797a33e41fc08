"""The one composition root: build(settings) -> Deps."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from billing_ledger.http.metrics import Metrics
from billing_ledger.ledger.store import Database, DatabaseUrl, EventStore, guard
from billing_ledger.ledger.writer import GroupCommitWriter
from billing_ledger.projections.follower import Follower
from billing_ledger.projections.plans import Plans, PlansError, load_plans
from billing_ledger.projections.queries import Reads
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views
from billing_ledger.settings import Settings, SettingsError


@dataclass
class Deps:
    """Everything handlers and commands need, built once."""

    settings: Settings
    store: EventStore
    writer: GroupCommitWriter
    metrics: Metrics = field(default_factory=Metrics)
    # The read side, wired by `billing_ledger.projections` (views, runner, plans).
    views: Any = None
    runner: Any = None
    plans: Any = None
    reads: Any = None  # projections/queries.Reads: every read of the read side
    feed: Any = None  # the change feed's projector (billing_ledger.projections.feed)
    notifier: Any = None  # LEDGER_NOTIFY_URL's deliveries (billing_ledger.notify)

    def close(self) -> None:
        """Stop background work and release connections."""
        for follower in (self.notifier, self.feed):
            if follower is not None:
                follower.stop()
        if self.reads is not None:
            self.reads.close()
        if self.runner is not None:
            self.runner.stop()
        self.writer.stop()
        self.store.db.close()


def build(settings: Settings, *, run_projections: bool = True, follow: bool = False) -> Deps:
    """Open the store (creating its tables) and wire the write and read sides; `follow`:
    the projections run in another process, whose position and error this one follows."""
    plans = _plans(settings)
    store = _open_store(settings)
    deps = Deps(
        settings=settings, store=store, writer=GroupCommitWriter(store, settings.writer_max_batch)
    )
    _wire_read_side(deps, plans, run_projections)
    if follow and not run_projections:
        status = os.environ.get("LEDGER_PROJECTION_STATUS_FILE")
        deps.runner = Follower(deps.views, Path(status) if status else None)
    return deps


def _open_store(settings: Settings) -> EventStore:
    """The store with its tables; failing to connect, create its folder or its tables is a
    StorageError (the driver's own errors escape otherwise: the store's guard is not yet in place)."""
    url = DatabaseUrl.parse(settings.database_url)
    with guard():
        db = Database(url)
    try:
        with guard():  # the PostgreSQL recorder connects as it is built
            store = EventStore(db)
            store.create()
    except BaseException:
        db.close()
        raise
    return store


def _plans(settings: Settings) -> Plans:
    try:
        return load_plans(settings.plans_path)
    except PlansError as e:
        raise SettingsError("LEDGER_PLANS", str(e)) from None


def _wire_read_side(deps: Deps, plans: Plans, run_projections: bool) -> None:
    """The plans, the views (tables created) and, when asked, the projection runner."""
    deps.plans = plans
    deps.views = Views(deps.store.db)
    try:
        with deps.store.db.schema_lock():
            deps.views.create()
    except BaseException:
        deps.store.db.close()
        raise
    if run_projections:
        deps.runner = Runner(deps.store, deps.views, livemode=deps.settings.livemode)
    deps.reads = Reads(deps.views, deps.runner, plans, deps.store)
    _wire_feed(deps, run_projections)


def _wire_feed(deps: Deps, run_projections: bool) -> None:
    """The change feed's tables and, beside the runner, its projector and notifications."""
    from billing_ledger.projections.feed import FeedProjector, FeedTables

    with deps.store.db.schema_lock():
        FeedTables(deps.store.db).create()
    if not run_projections:
        return
    deps.feed = FeedProjector(
        deps.store,
        deps.views,
        deps.plans,
        deps.settings.livemode,
        wake=deps.runner.wait_for,
        plans_now=deps.reads.current_plans,
    )
    if deps.settings.notify_url:
        from billing_ledger.notify import Notifier

        deps.notifier = Notifier(
            deps.feed.tables, deps.settings.notify_url, deps.settings.notify_secret
        )


def start_background(deps: Deps) -> None:
    """Start the writer, the runner and the feed's followers (each start is idempotent)."""
    deps.writer.start()
    for part in (deps.runner, deps.feed, deps.notifier):
        if part is not None:
            part.start()
