"""GET /v1/changes (the change feed, as JSON pages, long-poll or server-sent events) and
GET /v1/changes/snapshot (every recorded user's features at one feed position: a replica's
initial load).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from billing_ledger.http import wire
from billing_ledger.http.errors import BadParameterError
from billing_ledger.http.wire import answer, encode, shaped, shaped_all
from billing_ledger.ledger.store import StorageError
from billing_ledger.projections.feed import FeedChange, FeedTables

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
MAX_WAIT = 30.0
HEAD_POLL = 0.02  # how often one process reads the feed's head while someone waits
KEEPALIVE = 10.0  # seconds between comments on an idle event stream


def _whole(raw: str | None, name: str, default: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise BadParameterError(f"{name}: expected a whole number, got {raw!r}")
    return int(raw)


def _wait(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT:
        raise BadParameterError(f"wait: expected 0 to {MAX_WAIT:g} seconds, got {raw!r}")
    return seconds


class FeedHead:
    """The feed's head as one process sees it: read at most every HEAD_POLL, shared by waiters."""

    def __init__(self, tables: FeedTables) -> None:
        self.tables = tables
        self._read_at = -1.0
        self._head = 0
        self._lock = asyncio.Lock()

    async def current(self) -> int:
        async with self._lock:
            if time.monotonic() - self._read_at >= HEAD_POLL:
                self._head = await run_in_threadpool(self.tables.head)
                self._read_at = time.monotonic()
            return self._head

    async def beyond(self, position: int, timeout: float) -> bool:
        """Wait until the head passes `position`; False when `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while await self.current() <= position:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(HEAD_POLL, left))
        return True


def _head(request: Request) -> FeedHead:
    state = request.app.state
    if not hasattr(state, "feed_head"):
        deps: Services = request.state.deps
        state.feed_head = FeedHead(FeedTables(deps.store.db))
    head: FeedHead = state.feed_head
    return head


def _page(found: list[FeedChange], after: int) -> wire.ChangesPage:
    nxt = found[-1].position if found else after
    return wire.ChangesPage(shaped_all(wire.FeedChange, found), nxt)


async def changes(request: Request) -> Response:
    """Position-ordered access changes after `after`, as a page, a long poll or a stream."""
    query = request.query_params
    after = _whole(query.get("after"), "after", 0)
    limit = min(max(_whole(query.get("limit"), "limit", DEFAULT_LIMIT), 1), MAX_LIMIT)
    wait = _wait(query.get("wait"))
    resumed = request.headers.get("last-event-id")
    if resumed is not None:
        after = _whole(resumed.strip(), "Last-Event-ID", after)
    head = _head(request)
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(
            _stream(head, after, limit),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
    found = await run_in_threadpool(head.tables.read, after, limit)
    if not found and wait > 0 and await head.beyond(after, wait):
        found = await run_in_threadpool(head.tables.read, after, limit)
    return answer(_page(found, after))


async def _stream(head: FeedHead, after: int, limit: int) -> AsyncIterator[bytes]:
    """Server-sent events: one per change (`id:` its position), a comment while idle."""
    yield b"retry: 1000\n\n"
    while True:
        try:
            found = await run_in_threadpool(head.tables.read, after, limit)
        except StorageError:
            yield b": storage unavailable\n\n"
            await asyncio.sleep(1.0)
            continue
        for change in found:
            data = encode(shaped(wire.FeedChange, change))
            yield b"id: %d\nevent: change\ndata: %s\n\n" % (change.position, data)
            after = change.position
        if len(found) < limit and not await head.beyond(after, KEEPALIVE):
            yield b": idle\n\n"


async def snapshot(request: Request) -> Response:
    """Every recorded user's features at one feed position, and the default features."""
    deps: Services = request.state.deps
    position, users = await run_in_threadpool(_head(request).tables.snapshot)
    return answer(wire.ChangesSnapshot(users, deps.plans.default_features(), position))


# Paths relative to the /v1 mount (app.py).
ROUTES = [
    Route("/changes", changes, methods=["GET"]),
    Route("/changes/snapshot", snapshot, methods=["GET"]),
]
