"""The one composition root: build(settings) -> Deps, and the uvicorn factory built on it.
No part of the package imports this module; the commands and the factory start here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.applications import Starlette

from billing_ledger.http.app import create_app
from billing_ledger.http.metrics import Metrics
from billing_ledger.ledger.store import Database, DatabaseUrl, EventStore, guard
from billing_ledger.ledger.writer import GroupCommitWriter
from billing_ledger.process import tune_gc
from billing_ledger.projections.follower import Follower
from billing_ledger.projections.plans import Plans, PlansError, load_plans
from billing_ledger.projections.queries import Reads
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views
from billing_ledger.settings import Settings, SettingsError

if TYPE_CHECKING:
    from billing_ledger.notify import Notifier
    from billing_ledger.projections.feed import FeedProjector


@dataclass
class Deps:
    """Everything handlers and commands need, built once."""

    settings: Settings
    store: EventStore
    writer: GroupCommitWriter
    plans: Plans
    views: Views
    reads: Reads  # every read of the read side
    # The runner of this process, the follower of one elsewhere, or none (replay, explain).
    runner: Runner | Follower | None = None
    feed: FeedProjector | None = None  # the change feed's projector, beside a runner
    notifier: Notifier | None = None  # LEDGER_NOTIFY_URL's deliveries
    metrics: Metrics = field(default_factory=Metrics)

    def start(self) -> None:
        """Start the writer, the runner and the feed's followers (each start is idempotent)."""
        self.writer.start()
        self.reads.listen()  # other processes' batches keep this one's read caches current
        for part in (self.runner, self.feed, self.notifier):
            if part is not None:
                part.start()

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
    views = _views(store)
    runner: Runner | Follower | None = None
    if run_projections:
        runner = Runner(store, views, livemode=settings.livemode)
    elif follow:
        runner = Follower(views, settings.projection_status_file)
    deps = Deps(
        settings=settings,
        store=store,
        writer=GroupCommitWriter(store, settings.writer_max_batch),
        plans=plans,
        views=views,
        # Reads waits on the runner of this process only; a follower's position comes later.
        reads=Reads(views, runner if isinstance(runner, Runner) else None, plans, store),
        runner=runner,
    )
    _wire_feed(deps)
    return deps


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` (one per worker process; `serve` uses it)."""
    tune_gc()  # each worker is a fresh interpreter when --workers > 1
    settings = Settings.from_env()
    mode = settings.serve_projections
    deps = build(settings, run_projections=mode == "true", follow=mode == "apart")
    return create_app(deps, listen_host=settings.listen_host)


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


def _views(store: EventStore) -> Views:
    """The views, their tables created (the store's connections closed on failure)."""
    views = Views(store.db)
    try:
        with store.db.schema_lock():
            views.create()
    except BaseException:
        store.db.close()
        raise
    return views


def _wire_feed(deps: Deps) -> None:
    """The change feed's tables and, beside the runner, its projector and notifications."""
    from billing_ledger.projections.feed import FeedProjector, FeedTables

    with deps.store.db.schema_lock():
        FeedTables(deps.store.db).create()
    runner = deps.runner
    if not isinstance(runner, Runner):
        return
    deps.feed = FeedProjector(
        deps.store,
        deps.views,
        deps.plans,
        deps.settings.livemode,
        wake=runner.wait_for,
        plans_now=deps.reads.current_plans,
        applied=lambda: runner.position,
    )
    if deps.settings.notify_url:
        from billing_ledger.notify import Notifier

        deps.notifier = Notifier(
            deps.feed.tables, deps.settings.notify_url, deps.settings.notify_secret
        )
