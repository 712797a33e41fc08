"""The read cache of the views: users' inputs, least recently used first, bounded by bytes.

A cached user stays current while the views move, as long as every batch in between is in
this process's touched-batch log (committed here, or announced by the process that committed
it: projections/announce.py) and touched none of the user's customers; a gap in the log (a
batch not announced yet, or a notification lost) means the entry is loaded again.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TypeGuard

from billing_ledger.projections.policy import UserInputs

CACHE_SIZE = 100_000  # users whose inputs a process keeps loaded
# ...and snapshots in all: a user's history grows with every event, so a count of users
# alone would let the cache grow without bound.
CACHE_SNAPSHOTS = 150_000
# About what the entries take in memory (estimated), per cache: an HTTP process has two (the
# present, for reads at now, and the history, for `at` in the past and histories, empty in
# a workload of reads at now). An entry is 1.7-14 KB (one snapshot to eleven): 60 MiB holds
# the present of the 10,000 users of bench/read.py (51 MiB estimated; at 32 MiB its warm
# reads missed on every round, 0.16 of the no-op), not of 100,000; one HTTP process (about
# 90 MiB at rest) with its present cache full and the runner's process (about 100) stay
# under 300 MiB (bench/soak.py). Each of uvicorn's workers has its own caches.
CACHE_BYTES = 60 * 1024 * 1024
APPLIED_KEPT = 256  # committed batches remembered for keeping cached users current
TOUCHED_KEPT = 500  # customers listed per remembered batch
# What a cached entry keeps alive, measured with tracemalloc on filled caches (the bench's
# checkout sessions, subscriptions and invoices; the snapshots' classes have slots): a
# snapshot takes about 1.15 KB for its 380-700 bytes of JSON (nearly all of it the strings
# and numbers of its fields: 10-17 objects of 30-100 bytes each), the entry with its tuples,
# user id and one link about 750 bytes. These constants put the estimate 4-6% above the traced
# bytes for users of one snapshot, four (bench/read.py's), six (the soak's, at its end) and
# eleven; before the slots the same users held 5-17% more (a dict of fields per object).
BYTES_PER_ENTRY = 450
BYTES_PER_LINK = 300
BYTES_PER_SNAPSHOT = 550
BYTES_PER_JSON_BYTE = 1.05


@dataclass(frozen=True)
class Applied:
    """One committed batch: its range and whom it touched (None: too many to list)."""

    after: int
    position: int
    customers: frozenset[str | None] | None
    users: frozenset[str]

    def touches(self, user_id: str, customers: set[str]) -> bool:
        """Whether the batch may have changed this user's inputs."""
        if self.customers is None or user_id in self.users:
            return True
        return not self.customers.isdisjoint(customers)


@dataclass(frozen=True, slots=True)
class Entry:
    """One user's inputs, the views' position when they were current, and their cost."""

    position: int
    inputs: UserInputs
    size: int  # estimated bytes
    since: int = 0  # the inputs answer reads at `at >= since` only (0: any `at`)


@dataclass(frozen=True)
class CacheStats:
    """What /metrics reports of one cache."""

    entries: int
    snapshots: int
    bytes: int
    hits: int
    misses: int


def estimate(inputs: UserInputs, json_bytes: int) -> int:
    """Approximate bytes one entry keeps alive, from its links and snapshots and the JSON the
    snapshots were decoded from."""
    objects = BYTES_PER_LINK * len(inputs.links) + BYTES_PER_SNAPSHOT * len(inputs.snapshots)
    return BYTES_PER_ENTRY + objects + int(BYTES_PER_JSON_BYTE * json_bytes)


def listed(customers: Collection[str | None] | None) -> TypeGuard[Collection[str | None]]:
    """Whether a batch touching these customers is remembered (and announced) by whom it
    touched; else it touches every user."""
    return customers is not None and len(customers) <= TOUCHED_KEPT


class BatchLog:
    """The batches this process committed, newest last (shared by the caches of one views)."""

    def __init__(self, kept: int = APPLIED_KEPT) -> None:
        self._applied: deque[Applied] = deque(maxlen=kept)
        self._lock = threading.Lock()

    def remember(
        self, after: int, position: int, customers: set[str | None] | None, users: set[str]
    ) -> None:
        """Record one committed batch; a big one (or customers None) touches everyone. A
        batch not past the newest one remembered is skipped: this process's own batch and
        its notification (projections/announce.py) may both arrive."""
        touched = Applied(after, position, None, frozenset())
        if listed(customers):
            touched = Applied(after, position, frozenset(customers), frozenset(users))
        with self._lock:
            if self._applied and self._applied[-1].position >= position:
                return
            self._applied.append(touched)

    def clear(self) -> None:
        """Forget every batch (after a swap of the tables)."""
        with self._lock:
            self._applied.clear()

    def recent(self) -> list[Applied]:
        """The remembered batches, oldest first (the change feed's touched users)."""
        with self._lock:
            return list(self._applied)

    def untouched(self, inputs: UserInputs, since: int, position: int) -> bool:
        """Whether this process committed every batch in (since, position], none of them
        touching the user or their customers (a gap means another process applied)."""
        customers = {link.customer_id for link in inputs.links}
        reached = since
        with self._lock:
            batches = list(self._applied)
        for batch in batches:
            if batch.position <= reached:
                continue
            if batch.after > reached or batch.touches(inputs.user_id, customers):
                return False
            reached = batch.position
            if reached >= position:
                return True
        return reached >= position


class ReadCache:
    """user_id -> Entry, least recently used first, within users, snapshots and bytes."""

    def __init__(
        self,
        log: BatchLog,
        size: int = CACHE_SIZE,
        snapshots: int = CACHE_SNAPSHOTS,
        max_bytes: int = CACHE_BYTES,
    ) -> None:
        self.log = log
        self.size = size
        self.snapshots = snapshots
        self.max_bytes = max_bytes
        self._entries: dict[str, Entry] = {}
        self._snapshots = 0
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def get(self, user_id: str, position: int) -> Entry | None:
        """The user's entry if it is current at `position`, else None."""
        hit = self._entries.get(user_id)
        if hit is None:
            self.misses += 1
            return None
        if hit.position == position:
            self.hits += 1
            return hit
        with self._lock:
            if not self.log.untouched(hit.inputs, hit.position, position):
                self.misses += 1
                return None
            if self._entries.pop(user_id, None) is not None:  # to the back: recently used
                hit = Entry(position, hit.inputs, hit.size, hit.since)
                self._entries[user_id] = hit
        self.hits += 1
        return hit

    def put(self, user_id: str, entry: Entry) -> None:
        """Keep one entry, forgetting the least recently used until every bound holds."""
        with self._lock:
            self._drop(user_id)
            self._entries[user_id] = entry
            self._snapshots += len(entry.inputs.snapshots)
            self._bytes += entry.size
            while len(self._entries) > 1 and self._over():  # never the one just put
                self._drop(next(iter(self._entries)))

    def _over(self) -> bool:
        return (
            len(self._entries) > self.size
            or self._snapshots > self.snapshots
            or self._bytes > self.max_bytes
        )

    def _drop(self, user_id: str) -> None:
        gone = self._entries.pop(user_id, None)
        if gone is not None:
            self._snapshots -= len(gone.inputs.snapshots)
            self._bytes -= gone.size

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._snapshots = self._bytes = 0

    def stats(self) -> CacheStats:
        """Entries, snapshots, estimated bytes, hits and misses so far."""
        with self._lock:
            return CacheStats(
                len(self._entries), self._snapshots, self._bytes, self.hits, self.misses
            )


def total(stats: Iterable[CacheStats]) -> CacheStats:
    """Several caches' figures added up."""
    found = list(stats)
    return CacheStats(
        sum(s.entries for s in found),
        sum(s.snapshots for s in found),
        sum(s.bytes for s in found),
        sum(s.hits for s in found),
        sum(s.misses for s in found),
    )
