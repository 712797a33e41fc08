"""What the HTTP side needs of the service it runs in: a Protocol http/ owns, so that no
handler imports the composition root (bootstrap builds the object that satisfies it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from billing_ledger.http.metrics import Metrics
    from billing_ledger.ledger.store import EventStore
    from billing_ledger.ledger.writer import GroupCommitWriter
    from billing_ledger.projections.plans import Plans
    from billing_ledger.projections.queries import Reads
    from billing_ledger.settings import Settings


class Projections(Protocol):
    """The projection runner of this process, or the follower of one running elsewhere."""

    def status(self) -> dict[str, dict[str, Any]]: ...


class Services(Protocol):
    """The service as the handlers see it (handed out by the lifespan as `request.state.deps`)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def store(self) -> EventStore: ...
    @property
    def writer(self) -> GroupCommitWriter: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def plans(self) -> Plans: ...
    @property
    def reads(self) -> Reads: ...
    @property
    def runner(self) -> Projections | None: ...

    def start(self) -> None:
        """Start the background work (idempotent)."""

    def close(self) -> None:
        """Stop the background work and release connections."""
