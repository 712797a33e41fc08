"""The one composition root: build(settings) -> Deps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from billing_ledger.http.metrics import Metrics
from billing_ledger.ledger.store import Database, DatabaseUrl, EventStore
from billing_ledger.ledger.writer import GroupCommitWriter
from billing_ledger.settings import Settings


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

    def close(self) -> None:
        """Stop background work and release connections."""
        if self.runner is not None:
            self.runner.stop()
        self.writer.stop()
        self.store.db.close()


def build(settings: Settings, *, run_projections: bool = True) -> Deps:
    """Open the store (creating its tables) and wire the write and read sides."""
    store = EventStore(Database(DatabaseUrl.parse(settings.database_url)))
    store.create()
    deps = Deps(settings=settings, store=store, writer=GroupCommitWriter(store))
    return deps
