"""The read side's one entry point: every read of a user, the Stripe rules of the pages and
the monetization flows, and the one wait for a position.

A read takes the views' position first, then the user's inputs as of that position (each
object's present for a read at "now", the whole history for `at` in the past or history),
then evaluates the pure policy at `at`. A read at now that misses the cache sends one
statement: the position, the catalog's version and the user's present together (awaited on
the event loop on PostgreSQL, in a thread of the reads on SQLite). Waits for
a position run on the event loop: one poller per process, only while anyone waits, in a
thread of its own (woken by the runner in process as it commits, else reading the tracked
position), so a thousand waiting requests hold no worker thread and delay no other read.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from billing_ledger.ledger.canonical import (
    CHECKOUT_SESSION,
    CUSTOMER,
    SUBSCRIPTION,
    CheckoutSession,
    Customer,
    Subscription,
)
from billing_ledger.ledger.store import READ_CONNECTIONS
from billing_ledger.projections import catalog as catalog_fold
from billing_ledger.projections.announce import Listener
from billing_ledger.projections.answers import Answers
from billing_ledger.projections.cache import CacheStats
from billing_ledger.projections.cards import CardFact
from billing_ledger.projections.catalog import Catalog
from billing_ledger.projections.fold import TERMINAL_SUBSCRIPTION, by_object, state_at
from billing_ledger.projections.history import Change, changes
from billing_ledger.projections.invoices import InvoiceView, user_invoices
from billing_ledger.projections.plans import Plan, Plans
from billing_ledger.projections.policy import (
    Entitlements,
    SubscriptionAccess,
    UserInputs,
    access,
    customers_at,
)
from billing_ledger.projections.views import PresentRead, Views

POLL_SECONDS = 0.02  # how often the poller reads the position while anyone waits
# ...while the views' notifications are heard (projections/announce.py): they wake the
# waits, the poll only catches what a lost connection missed.
HEARD_POLL_SECONDS = 0.5
RECENT_SECONDS = 0.1  # without a runner in process, a position this old is still used


class NotCaughtUpError(RuntimeError):
    """The projections did not reach a position in time."""


# -- the Stripe rules of the read side ----------------------------------------------------


def deleted_customers(inputs: UserInputs, at: int) -> frozenset[str]:
    """The user's customers deleted at or before `at`."""
    objects = by_object(s for s in inputs.snapshots if s.kind == CUSTOMER)
    return frozenset(
        cid
        for cid in customers_at(inputs, at)
        if (chosen := state_at(objects.get((CUSTOMER, cid), ()), at)) is not None
        and isinstance(chosen.state, Customer)
        and chosen.state.deleted
    )


def _subscribed(inputs: UserInputs, customers: tuple[str, ...], at: int) -> set[str | None]:
    """Customers with a subscription that has not ended at `at`."""
    mine = set(customers)
    objects = by_object(s for s in inputs.snapshots if s.kind == SUBSCRIPTION)
    return {
        chosen.state.customer_id
        for snaps in objects.values()
        if (chosen := state_at(snaps, at)) is not None
        and isinstance(chosen.state, Subscription)
        and chosen.state.customer_id in mine
        and chosen.state.status not in TERMINAL_SUBSCRIPTION
    }


def preferred_customer(inputs: UserInputs, at: int) -> str | None:
    """A live customer: one with a subscription that has not ended, else the latest linked."""
    customers = customers_at(inputs, at)  # a customer moved to another user is not ours
    deleted = deleted_customers(inputs, at)
    subscribed = _subscribed(inputs, customers, at)
    latest = sorted(inputs.links, key=lambda link: (link.created, link.event_id), reverse=True)
    ranked = sorted(
        (
            link.customer_id
            for link in latest
            if link.customer_id in customers and link.customer_id not in deleted
        ),
        key=lambda cid: cid not in subscribed,  # stable: the latest link wins among equals
    )
    return ranked[0] if ranked else None


def checkout_confirmed(inputs: UserInputs, session_id: str, at: int) -> bool:
    """Whether the ledger saw this user's session complete, and its subscription too."""
    objects = by_object(inputs.snapshots)
    chosen = state_at(objects.get((CHECKOUT_SESSION, session_id), ()), at)
    if chosen is None or not isinstance(chosen.state, CheckoutSession):
        return False
    session = chosen.state
    if session.status != "complete" or session.client_reference_id != inputs.user_id:
        return False
    # checkout.session.completed often arrives before the subscription it created.
    return session.subscription_id is None or (SUBSCRIPTION, session.subscription_id) in objects


@dataclass(frozen=True)
class Account:
    """One user's billing state at one time, as the pages show it."""

    user_id: str
    at: int
    inputs: UserInputs
    entitlements: Entitlements
    invoices: tuple[InvoiceView, ...]

    @property
    def current(self) -> tuple[SubscriptionAccess, ...]:
        """Subscriptions that have not ended, newest period first."""
        live = [s for s in self.entitlements.subscriptions if s.status not in TERMINAL_SUBSCRIPTION]
        return tuple(sorted(live, key=lambda s: -(s.current_period_end or 0)))

    @property
    def ended(self) -> bool:
        """Whether the user had subscriptions and every one has ended."""
        return bool(self.entitlements.subscriptions) and not self.current

    def paid_plans(self, plans: Plans) -> list[Plan]:
        """The plans the user holds beyond the defaults."""
        held = set(self.entitlements.plans)
        return [p for p in plans.plans if p.id in held and not p.default]

    def has_warning(self, code: str) -> bool:
        """Whether the policy raised `code` (payment_failed, cancellation_scheduled, ...)."""
        return code in self.entitlements.warnings

    def checkout_confirmed(self, session_id: str) -> bool:
        """Whether this user's Checkout session is confirmed by the webhooks."""
        return checkout_confirmed(self.inputs, session_id, self.at)


# -- the one wait --------------------------------------------------------------------------


class PositionWatch:
    """Waiters for a position, woken by one poller that reads it in a thread of its own.

    With `wait_for` (a runner in process: `Runner.wait_for`), the poller waits on it for
    the lowest position wanted instead of reading the database: a runner that applies here
    wakes it as it commits, with no query; one that follows another process reads the
    position itself as often as the poller would. `read` then gives the runner's position.
    """

    def __init__(
        self,
        read: Callable[[], int],
        interval: float = POLL_SECONDS,
        wait_for: Callable[[int, float], bool] | None = None,
    ) -> None:
        self._read = read
        self.interval = interval
        self.heard_interval = HEARD_POLL_SECONDS
        self._wait_for = wait_for
        self.listener: Listener | None = None  # while it is connected, `wake` is called
        self._lock = threading.Lock()  # `wake` comes from the listener's thread
        # Per event loop (each TestClient block, each server has its own): its poller and
        # its waiters, so a loop that ended leaves nothing behind for the next one.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waiters] = (
            weakref.WeakKeyDictionary()
        )
        # Its own thread: a database that hangs holds it, never the request threadpool.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="reads-position")

    @property
    def waiting(self) -> int:
        """How many reads wait now."""
        return sum(len(w.waiters) for w in list(self._loops.values()))

    async def wait(self, wanted: int, timeout: float) -> int | None:
        """The position once it reaches `wanted`; None when `timeout` passes first."""
        loop = asyncio.get_running_loop()
        with self._lock:
            mine = self._loops.setdefault(loop, _Waiters())
        waiter = (wanted, loop.create_future())
        mine.waiters.append(waiter)
        if mine.task is None or mine.task.done():
            mine.task = loop.create_task(self._poll(mine))
        try:
            return await asyncio.wait_for(waiter[1], timeout)
        except TimeoutError:
            return None
        finally:
            if waiter in mine.waiters:
                mine.waiters.remove(waiter)

    async def _poll(self, mine: _Waiters) -> None:
        loop = asyncio.get_running_loop()
        while mine.waiters:
            lowest = min(w[0] for w in mine.waiters)
            try:
                position = await loop.run_in_executor(self._pool, self._next, lowest)
            except Exception:  # the database is away: the waiters time out by themselves
                position = -1
            self._reached(mine, position)
            if mine.waiters and (self._wait_for is None or position < 0):
                heard = self.listener is not None and self.listener.connected
                await asyncio.sleep(self.heard_interval if heard else self.interval)

    @staticmethod
    def _reached(mine: _Waiters, position: int) -> None:
        """Wake the waiters `position` satisfies (on their loop)."""
        for waiter in [w for w in mine.waiters if w[0] <= position]:
            mine.waiters.remove(waiter)
            if not waiter[1].done():
                waiter[1].set_result(position)

    def wake(self, position: int) -> None:
        """The views committed `position` (a notification; any thread): wake its waiters
        without waiting for the next poll."""
        with self._lock:
            loops = [(loop, mine) for loop, mine in self._loops.items() if mine.waiters]
        for loop, mine in loops:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
                loop.call_soon_threadsafe(self._reached, mine, position)

    def _next(self, lowest: int) -> int:
        """The position, once it reaches `lowest` or after at most `interval` (wait_for)."""
        if self._wait_for is not None:
            self._wait_for(lowest, self.interval)
        return self._read()

    def close(self) -> None:
        """Let the poller's thread go (it ends once a hung read returns)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.listener is not None:
            self.listener.stop()


@dataclass
class _Waiters:
    """One event loop's waiters and its poller."""

    waiters: list[tuple[int, asyncio.Future[int]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


# -- the reads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UserRead:
    """What every user read works from: the inputs, the time, the views' position."""

    inputs: UserInputs
    at: int
    position: int


class Reads:
    """Every read of the projections: /v1, the pages and the monetization flows."""

    def __init__(self, views: Views, runner: Any, plans: Plans, store: Any = None) -> None:
        self.views = views
        self.runner = runner
        self.base_plans = plans  # the plans file; `plans` also matches through the catalog
        self.plans = plans
        self.store = store
        self.answers = Answers(plans)
        follow = getattr(runner, "wait_for", None)  # a runner in process wakes the waits
        read = views.position if follow is None else lambda: int(runner.position)
        self.watch = PositionWatch(read, wait_for=follow)
        if views.db.dialect == "postgres":  # the batches other processes commit, heard
            self.watch.listener = Listener(
                views.db.url.conninfo(), views.channel, views.batches, self.watch.wake
            )
        self._catalog: tuple[tuple[Any, ...], Catalog] | None = None
        # The threads of the reads at now that block (SQLite; on PostgreSQL only those that
        # must read again, see `_read_off`): a plain executor hop costs a read less than half
        # of starlette's (anyio's) threadpool; as many as the read pool has connections
        # (store.READ_CONNECTIONS), more would wait for one.
        self._threads = ThreadPoolExecutor(READ_CONNECTIONS, thread_name_prefix="reads")
        self._seen = 0  # the highest position a read or a wait saw (a hint, never trusted)

    # -- the catalog --

    def catalog(self, position: int | None = None) -> Catalog:
        """The catalog as the views hold it at `position` (default: now), without any Stripe
        call: each plan with its prices (projections/catalog.py). Blocking (a small query
        when the views moved since the last call): from async code, use `catalog_now`."""
        if position is None:
            position = self.runner.position if self.runner is not None else None
        return self._built(self.views.catalog_states(position))

    def _built(self, states: tuple[Any, ...]) -> Catalog:
        """The catalog of `states`, folded again only when they are not the ones last seen."""
        known = self._catalog
        if known is not None and known[0] is states:
            return known[1]
        built = catalog_fold.build(states, self.base_plans)
        self._catalog = (states, built)
        # Plan matching by lookup key or product reads the catalog's prices too.
        self.plans = self.base_plans.with_catalog(built.index())
        self.answers = Answers(self.plans)
        return built

    def current_plans(self) -> Plans:
        """The plans as the reads match them now (through the catalog); blocking."""
        self.catalog()
        return self.plans

    async def catalog_now(self, position: int | None = None) -> Catalog:
        """`catalog`, off the event loop when it must read the database."""
        if position is None:
            position = await self.position()
        if self._catalog is not None and self.views.catalog_position() == position:
            return self._catalog[1]
        found: Catalog = await run_in_threadpool(self.catalog, position)
        return found

    # -- the pages' card on file --

    async def card_facts(self, customers: Sequence[str]) -> list[CardFact]:
        """What the customers' payment method events said of their cards (projections/cards)."""
        found: list[CardFact] = await run_in_threadpool(self.views.card_facts, customers)
        return found

    # -- the console's search --

    def users_of(self, object_id: str) -> list[str]:
        """The users a customer, subscription or invoice id leads to (blocking)."""
        if object_id.startswith("cus_"):
            found: list[str] = self.views.users_of(object_id)
            return found
        customers = self.views.customers_of_object(object_id)
        return sorted(self.views.users_of_customers(customers)) if customers else []

    # -- positions --

    async def position(self) -> int:
        """The views' position now (the runner's in this process, else a recent read)."""
        if self.runner is not None:
            position: int = self.runner.position
            return position
        return int(await run_in_threadpool(self.views.recent_position, RECENT_SECONDS))

    async def wait(self, position: int, timeout: float) -> int:
        """The views' position once it is at least `position`; NotCaughtUpError after
        `timeout` seconds. Waits on the event loop, holding no worker thread."""
        now = await self.position()
        if now >= position:
            return now
        return await self._reach(position, timeout)

    async def _reach(self, position: int, timeout: float) -> int:
        """`wait` without asking the position first: the poll the waits share asks."""
        reached = await self.watch.wait(position, timeout)
        if reached is None:
            raise NotCaughtUpError(f"the projections have not reached position {position}")
        self._seen = max(self._seen, reached)
        return reached

    async def caught_up(self, timeout: float) -> bool:
        """Wait up to `timeout` until everything stored so far is projected."""
        head = int(await run_in_threadpool(self.store.head))
        try:
            await self.wait(head, timeout)
        except NotCaughtUpError:
            return False
        return True

    # -- one user --

    async def user(self, user_id: str, at: int, min_position: int | None = None,
                   timeout: float = 5.0) -> UserRead:  # fmt: skip
        """The user's inputs for a read at `at`, once the views reach `min_position`.

        A user cached at the runner's position, with the catalog checked there, costs no
        query; otherwise one statement reads the position, the catalog's version and the
        user's present together (the catalog itself is read only when its version moved)."""
        known = await self._known(min_position)
        if known is not None and self.views.catalog_position() == known:
            entry = self.views.present_cache.get(user_id, known)
            if entry is not None and at >= entry.since:
                return UserRead(inputs=entry.inputs, at=at, position=known)
        found = None
        if known is not None or self._ask_first(min_position):
            found = await self._read_off(user_id, at, min_position)
        if found is None and min_position is not None:
            await self._reach(min_position, timeout)
            found = await self._read_off(user_id, at, min_position)
        if found is None:  # the position went back: a swap by replay (rare)
            raise NotCaughtUpError(f"the projections have not reached position {min_position}")
        return found

    async def _read_off(self, user_id: str, at: int, min_position: int | None) -> UserRead | None:
        """`_read_now` without blocking the event loop. On PostgreSQL its one statement is
        awaited on the loop (async driver) and the rest done there, unless it must read again
        (the catalog moved, `at` before the present): then in one of the reads' threads, as
        every read on SQLite."""
        loop = asyncio.get_running_loop()
        if self.views.db.dialect != "postgres":
            return await loop.run_in_executor(
                self._threads, self._read_now, user_id, at, min_position
            )
        read = await self.views.present_read_async(user_id)
        if self._reads_again(read, at):
            return await loop.run_in_executor(
                self._threads, self._read_from, read, user_id, at, min_position
            )
        return self._read_from(read, user_id, at, min_position)

    def _reads_again(self, read: PresentRead, at: int) -> bool:
        """Whether `_read_from` would query again: the catalog moved since it was loaded, or
        the present does not answer `at` (the history does)."""
        entry = read.entry
        moved = self.views.catalog_current(read.position, read.catalog_version) is None
        return moved or entry is None or at < entry.since

    async def _known(self, min_position: int | None) -> int | None:
        """A position the views reached, known without a query of our own (the runner's,
        or the recent one without a `min_position`); None when it does not satisfy it."""
        if self.runner is None:
            return await self.position() if min_position is None else None
        position: int = self.runner.position
        return position if min_position is None or position >= min_position else None

    def _ask_first(self, min_position: int | None) -> bool:
        """Without a runner in process, whether to read before waiting: when the position
        seen last satisfies `min_position`, or when no wait polls (the read checks the
        position itself). While others wait, a read joins them: their one poll is shared,
        a read short of its position would be a statement of its own."""
        seen = min_position is None or self._seen >= min_position
        return self.runner is None and (seen or not self.watch.waiting)

    def _read_now(self, user_id: str, at: int, min_position: int | None) -> UserRead | None:
        """One statement for the user at the views' position now (the history's too when
        `at` is before their latest change); None when it is short of `min_position`."""
        return self._read_from(self.views.present_read(user_id), user_id, at, min_position)

    def _read_from(
        self, read: PresentRead, user_id: str, at: int, min_position: int | None
    ) -> UserRead | None:
        """`_read_now` once its statement is read (blocking when the catalog moved or the
        history decides)."""
        self._seen = max(self._seen, read.position)
        if min_position is not None and read.position < min_position:
            return None
        states = self.views.catalog_current(read.position, read.catalog_version)
        self._built(states if states is not None else self.views.catalog_states(read.position))
        entry = read.entry
        if entry is not None:
            self.views.present_cache.put(user_id, entry)
            if at >= entry.since:
                return UserRead(inputs=entry.inputs, at=at, position=read.position)
        inputs = self.views.inputs(user_id, read.position)
        return UserRead(inputs=inputs, at=at, position=read.position)

    async def history_inputs(self, user_id: str, position: int) -> UserInputs:
        """The user's whole history at `position`."""
        found = self.views.cached_inputs(user_id, position)
        if found is not None:
            return found
        return await run_in_threadpool(self.views.inputs, user_id, position)

    def entitlements(self, read: UserRead) -> Entitlements:
        """The user's entitlements at the read's `at`."""
        return self.answers.entitlements(read.inputs, read.at)

    def access(self, read: UserRead, feature: str) -> tuple[bool, str]:
        """Whether the user may use `feature`, and why."""
        return access(self.entitlements(read), feature)

    def invoices(self, read: UserRead) -> list[InvoiceView]:
        """The invoices of the user's customers as of `at`, newest first."""
        return user_invoices(read.inputs, read.at)

    async def history(self, user_id: str, at: int, min_position: int | None = None,
                      timeout: float = 5.0) -> list[Change]:  # fmt: skip
        """Every change of the user's features up to `at`, oldest first."""
        position = await (
            self.wait(min_position, timeout) if min_position is not None else self.position()
        )
        await self.catalog_now(position)
        inputs = await self.history_inputs(user_id, position)
        found: list[Change] = await run_in_threadpool(changes, inputs, self.plans, at)
        return found

    async def account(self, user_id: str, at: int | None = None) -> Account:
        """The pages' view of one user at `at` (default now)."""
        when = int(time.time()) if at is None else at
        read = await self.user(user_id, when)
        return Account(
            user_id=user_id,
            at=when,
            inputs=read.inputs,
            entitlements=self.entitlements(read),
            invoices=tuple(self.invoices(read)),
        )

    async def preferred_customer(self, user_id: str) -> str | None:
        """The customer the ledger links to the user, now (projections/queries rules)."""
        read = await self.user(user_id, int(time.time()))
        return preferred_customer(read.inputs, read.at)

    def cache_stats(self) -> Mapping[str, CacheStats]:
        """The read caches' figures, by name."""
        return self.views.cache_stats()

    def listen(self) -> None:
        """Hear the batches other processes commit (PostgreSQL; idempotent): cached users
        they did not touch stay hits, waits wake as they commit."""
        if self.watch.listener is not None:
            self.watch.listener.start()

    def close(self) -> None:
        """Release the poller's thread, the listener and the reads' threads."""
        self.watch.close()
        self._threads.shutdown(wait=False)
