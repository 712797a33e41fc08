"""The group-commit writer: waiting deliveries share one append, each hears its own outcome."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any, cast

import pytest

from billing_ledger.ledger.records import AppendResult, Incoming
from billing_ledger.ledger.store import EventStore, StorageError
from billing_ledger.ledger.writer import GroupCommitWriter, _resolve_all
from tests.support.aio import run


def incoming(event_id: str) -> Incoming:
    return Incoming(event_id, "customer.created", 1767225600, False, None, b"{}", 0.0)


class GatedStore:
    """A store whose first append waits until released, so the rest queue up behind it."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batches: list[list[str]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()

    def append(self, events: Sequence[Incoming]) -> list[AppendResult]:
        self.batches.append([e.event_id for e in events])
        if len(self.batches) == 1:
            self.first_started.set()
            assert self.release.wait(10)
        if self.fail:
            raise StorageError("storage unavailable: down")
        start = sum(len(b) for b in self.batches[:-1])
        return [AppendResult(e.event_id, "recorded", start + i + 1) for i, e in enumerate(events)]


def writer_for(store: GatedStore) -> GroupCommitWriter:
    return GroupCommitWriter(cast(EventStore, store), max_batch=50)


def test_deliveries_waiting_behind_a_commit_share_the_next_and_the_loop_wakes_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = GatedStore()
    writer = writer_for(store)
    writer.start()
    wakeups: list[int] = []

    async def deliver() -> list[AppendResult]:
        loop = asyncio.get_running_loop()
        threadsafe = loop.call_soon_threadsafe

        def counted(callback: Any, *args: Any) -> Any:
            if callback is _resolve_all:  # not the executor's own hand-backs
                wakeups.append(len(args[0]))
            return threadsafe(callback, *args)

        monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
        first = asyncio.ensure_future(writer.append(incoming("evt_0")))
        await asyncio.to_thread(store.first_started.wait, 10)
        rest = [asyncio.ensure_future(writer.append(incoming(f"evt_{i}"))) for i in range(1, 11)]
        await asyncio.sleep(0)  # every put is made before the first commit ends
        store.release.set()
        return await asyncio.gather(first, *rest)

    try:
        results = run(deliver())
    finally:
        writer.stop()
    assert store.batches == [["evt_0"], [f"evt_{i}" for i in range(1, 11)]]
    assert [(r.event_id, r.position) for r in results] == [(f"evt_{i}", i + 1) for i in range(11)]
    assert wakeups == [1, 10]  # one wake-up a batch, not one a delivery


def test_a_failed_append_reaches_every_waiter_of_its_batch_and_the_writer_goes_on() -> None:
    store = GatedStore(fail=True)
    writer = writer_for(store)
    writer.start()

    async def deliver() -> list[AppendResult | BaseException]:
        first = asyncio.ensure_future(writer.append(incoming("evt_0")))
        await asyncio.to_thread(store.first_started.wait, 10)
        rest = [asyncio.ensure_future(writer.append(incoming(f"evt_{i}"))) for i in (1, 2)]
        await asyncio.sleep(0)
        store.release.set()
        outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
        store.fail = False
        outcomes.append(await writer.append(incoming("evt_3")))  # the thread still runs
        return outcomes

    try:
        outcomes = run(deliver())
    finally:
        writer.stop()
    assert [type(o) for o in outcomes[:3]] == [StorageError] * 3
    assert isinstance(outcomes[3], AppendResult) and outcomes[3].event_id == "evt_3"
