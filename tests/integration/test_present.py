"""Each object's present beside its history, on SQLite and PostgreSQL: a function of the set
of snapshots, filled for old tables, swapped with the rest, and what a read at now loads."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from eventsourcing.sqlite import SQLiteConnection

from billing_ledger.ledger.canonical import Snapshot
from billing_ledger.ledger.store import READ_CONNECTIONS, Database, DatabaseUrl
from billing_ledger.projections.policy import UserInputs, evaluate
from billing_ledger.projections.queries import NotCaughtUpError, Reads
from billing_ledger.projections.views import PRESENT_FILLED, Views
from tests.support.aio import run
from tests.unit.builders import (
    DAY,
    T,
    checkout_session,
    event,
    example_plans,
    invoice,
    price,
    subscription,
)
from tests.unit.builders import snapshots as built

PLANS = example_plans()
LATER = T + 40 * DAY  # after every snapshot below


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(DatabaseUrl.parse(database_url))
    yield database
    database.close()


@pytest.fixture
def views(db: Database) -> Views:
    created = Views(db)
    created.create()
    return created


def renewals(count: int) -> list[Snapshot]:
    """u_1 subscribes, pays, then the subscription is updated `count` times, a day apart."""
    updates = [
        event(
            "customer.subscription.updated",
            subscription(cancel_at_period_end=n % 2 == 1),
            id=f"evt_u{n}",
            created=T + n * DAY // 4,
        )
        for n in range(1, count + 1)
    ]
    return built(
        [
            event("checkout.session.completed", checkout_session(), id="evt_cs", created=T),
            event("customer.subscription.created", subscription(), id="evt_s", created=T),
            event("invoice.paid", invoice(status="paid", amount_paid=2000), id="evt_i", created=T),
            *updates,
        ]
    )


def _present(views: Views, user_id: str, at: int) -> UserInputs | None:
    """The user's inputs from each object's present, as a read at `at` takes them (None:
    `at` is before some snapshot or link of the user, and the whole history decides)."""
    entry = views.present_read(user_id).entry
    return entry.inputs if entry is not None and at >= entry.since else None


def test_a_read_at_now_loads_each_objects_present_and_answers_like_the_history(
    views: Views,
) -> None:
    applied = renewals(30)
    views.apply(applied, 0, len(applied))
    whole = views.load_inputs("u_1")
    present = _present(views, "u_1", LATER)
    assert present is not None
    assert len(whole.snapshots) == 33 and len(present.snapshots) == 3  # session, sub, invoice
    assert evaluate(present, PLANS, LATER) == evaluate(whole, PLANS, LATER)


def test_a_read_before_the_latest_snapshot_is_left_to_the_history(views: Views) -> None:
    applied = renewals(30)
    views.apply(applied, 0, len(applied))
    assert _present(views, "u_1", T + DAY) is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_present_rows_do_not_depend_on_arrival_order_or_batching(
    views: Views, seed: int
) -> None:
    applied = renewals(12)
    views.apply(applied, 0, 1)
    shuffled = list(applied)
    random.Random(seed).shuffle(shuffled)
    other = views.shadow("_shuffled")
    other.create()
    position = 0
    while shuffled:
        size = random.Random(seed + position).randint(1, 4)
        other.apply(shuffled[:size], position, position + 1)
        shuffled, position = shuffled[size:], position + 1
    assert other.present_rows() == views.present_rows()
    assert len(views.present_rows()) == 3


def _from_history(db: Database, views: Views) -> tuple[tuple[Any, ...], ...]:
    """The present table as computed again from every object's whole history."""
    with db.transaction() as cursor:
        cursor.execute(f"DROP TABLE {views.current}")
    again = Views(db)
    again.create()  # fills the present table from the snapshots
    return again.present_rows()


HISTORY_READ = "SELECT kind, object_id, customer_id, event_id, json FROM"


def test_batches_in_order_rewrite_the_present_without_reading_the_history(
    db: Database, views: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied = renewals(12)
    seen = sent_statements(monkeypatch)
    for position in range(0, len(applied), 2):  # two snapshots a batch, in order
        views.apply(applied[position : position + 2], position, position + 2)
    assert not [q for q in seen if HISTORY_READ in q]
    rows = views.present_rows()
    assert len(rows) == 3 and rows == _from_history(db, views)


def test_a_batch_before_an_objects_present_rewrites_it_from_the_history(
    db: Database, views: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied = renewals(12)
    views.apply(applied, 0, len(applied))
    late = replace(renewals(13)[-1], created=T)  # of a second before the subscription's top
    seen = sent_statements(monkeypatch)
    views.apply([late], len(applied), len(applied) + 1)
    assert [q for q in seen if HISTORY_READ in q]
    assert views.present_rows() == _from_history(db, views)


def test_views_created_over_old_tables_compute_the_present_once(db: Database, views: Views) -> None:
    applied = renewals(5)
    views.apply(applied, 0, len(applied))
    expected = views.present_rows()
    with db.transaction() as cursor:
        cursor.execute(f"DROP TABLE {views.current}")  # as before the present existed
    again = Views(db)
    again.create()
    assert again.present_rows() == expected
    again.create()  # a no-op now
    assert again.present_rows() == expected


def test_a_fill_cut_short_is_done_again_whole_at_the_next_start(
    db: Database, views: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied = renewals(5)
    views.apply(applied, 0, len(applied))
    expected = views.present_rows()
    # As a fill of old tables that stopped part-way would leave them: some objects' present
    # rows, no mark of completion. A batch would take the others for new objects.
    with db.transaction() as cursor:
        cursor.execute(f"DELETE FROM {views.current} WHERE kind = 'subscription'")
        cursor.execute(
            f"DELETE FROM {views.tracking} WHERE application_name = {db.param}",
            (views.name + PRESENT_FILLED,),
        )
    assert views.present_rows() != expected
    seen = sent_statements(monkeypatch)
    Views(db).create()
    assert views.present_rows() == expected
    assert [q for q in seen if "NOT EXISTS (SELECT 1 FROM" in q]
    seen.clear()
    Views(db).create()  # marked complete: no scan of the snapshots
    assert not [q for q in seen if "NOT EXISTS (SELECT 1 FROM" in q]
    assert views.present_rows() == expected


def test_a_promoted_shadow_brings_its_present(views: Views) -> None:
    views.apply(renewals(2)[:2], 0, 2)
    shadow = views.shadow("_replay")
    shadow.create()
    applied = renewals(6)
    shadow.apply(applied, 0, 9)
    expected = shadow.present_rows()
    views.promote(shadow)
    assert views.present_rows() == expected
    assert _present(views, "u_1", LATER) is not None


class StandingRunner:
    """What Reads asks of a runner in process: its position, here one that stays put."""

    def __init__(self, position: int) -> None:
        self.position = position


def sent_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement the drivers are given from now on: each PostgreSQL execute (one
    message, one round trip; sync or async) and each SQLite statement but the
    transaction's own."""
    seen: list[str] = []
    execute = psycopg.Cursor.execute

    def counted(cursor: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(query))
        return execute(cursor, query, *args, **kwargs)

    execute_async = psycopg.AsyncCursor.execute

    async def counted_async(
        cursor: psycopg.AsyncCursor[Any], query: Any, *args: Any, **kwargs: Any
    ) -> Any:
        seen.append(str(query))
        return await execute_async(cursor, query, *args, **kwargs)

    cursor = SQLiteConnection.cursor

    def traced(conn: SQLiteConnection) -> Any:
        keep = ("BEGIN", "COMMIT", "ROLLBACK")
        conn._sqlite_conn.set_trace_callback(lambda q: None if q in keep else seen.append(q))
        return cursor(conn)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted)
    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counted_async)
    monkeypatch.setattr(SQLiteConnection, "cursor", traced)
    return seen


def test_a_cold_read_at_now_sends_one_statement_once_the_catalog_is_read(
    views: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied = renewals(30)
    views.apply(applied, 0, len(applied))
    reads = Reads(views, StandingRunner(len(applied)), PLANS)
    reads.catalog()  # read once per position, not once per user
    seen = sent_statements(monkeypatch)
    read = run(reads.user("u_1", LATER))  # nobody's inputs are cached yet
    assert len(seen) == 1, seen
    assert len(read.inputs.snapshots) == 3  # each object's present, not the history
    whole = views.load_inputs("u_1")
    assert reads.entitlements(read) == evaluate(whole, reads.plans, LATER)


class MovingRunner:
    """A runner in process as Reads sees it: its position, moved by the test, and the wait
    a runner that applies here wakes as it commits (Runner.wait_for)."""

    def __init__(self, position: int) -> None:
        self.position = position
        self._moved = threading.Condition()

    def move(self, position: int) -> None:
        with self._moved:
            self.position = position
            self._moved.notify_all()

    def wait_for(self, position: int, timeout: float) -> bool:
        with self._moved:
            return self._moved.wait_for(lambda: self.position >= position, timeout)


def signup(n: int) -> list[Snapshot]:
    """u_n subscribes (a batch of another user, touching neither u_1 nor the catalog)."""
    sub = subscription(id=f"sub_{n}", customer=f"cus_{n}", app_user_id=f"u_{n}")
    return built([event("customer.subscription.created", sub, id=f"evt_{n}", created=T)])


def steady(views: Views, runner: Any) -> tuple[Reads, Views, int]:
    """Reads over `views` with the catalog read once; the batches that follow are applied
    by another process (its own Views), so this one learns of them from the database."""
    applied = renewals(3)
    views.apply(applied, 0, len(applied))
    reads = Reads(views, runner, PLANS)
    run(reads.user("u_1", LATER))
    return reads, Views(views.db), len(applied)


def test_under_steady_ingest_a_cold_read_at_now_sends_one_statement(
    views: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = StandingRunner(0)
    reads, writer, position = steady(views, runner)
    seen = sent_statements(monkeypatch)
    for n in range(2, 6):
        batch = signup(n)
        writer.apply(batch, position, position + 1)
        position += 1
        runner.position = position  # the position moved, the catalog did not
        before = len(seen)
        read = run(reads.user(f"u_{n}", LATER))
        assert len(seen) - before == 1, seen[before:]
        assert (read.position, len(read.inputs.snapshots)) == (position, len(batch))
        again = run(reads.user(f"u_{n}", LATER))  # cached at the runner's position
        assert len(seen) - before == 1 and again.inputs == read.inputs


def test_a_read_whose_min_position_is_reached_sends_one_statement(
    views: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads, writer, position = steady(views, None)  # the runner applies in another process
    writer.apply(signup(2), position, position + 1)
    seen = sent_statements(monkeypatch)
    read = run(reads.user("u_2", LATER, min_position=position + 1))
    assert len(seen) == 1, seen
    assert read.position == position + 1 and read.inputs.links


def test_a_read_never_answers_before_its_min_position(views: Views) -> None:
    reads, writer, position = steady(views, None)
    with pytest.raises(NotCaughtUpError):
        run(reads.user("u_2", LATER, min_position=position + 1, timeout=0.2))
    writer.apply(signup(2), position, position + 1)
    read = run(reads.user("u_2", LATER, min_position=position + 1, timeout=5))
    assert read.position == position + 1 and read.inputs.links


def test_a_batch_that_changes_the_catalog_is_read_by_the_next_read(views: Views) -> None:
    runner = StandingRunner(0)
    reads, writer, position = steady(views, runner)
    assert "price_new" not in {s.object_id for s in views.catalog_states()}
    batch = built([event("price.created", price("price_new"), id="evt_pn", created=T)])
    writer.apply(batch, position, position + 1)
    runner.position = position + 1
    run(reads.user("u_1", LATER))
    assert views.catalog_position() == position + 1
    assert "price_new" in {s.object_id for s in views.catalog_states(position + 1)}


def test_a_wait_woken_by_the_runner_in_process_polls_no_statement(
    views: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = MovingRunner(0)
    reads, writer, position = steady(views, runner)
    runner.move(position)
    writer.apply(signup(2), position, position + 1)  # applied, not yet seen by the runner
    seen = sent_statements(monkeypatch)

    def commit_once_waited() -> None:
        deadline = time.monotonic() + 5
        while reads.watch.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # waiting for the read to wait, not for a time
        while_waiting.extend(seen)
        runner.move(position + 1)

    while_waiting: list[str] = []
    moving = threading.Thread(target=commit_once_waited)
    moving.start()
    read = run(reads.user("u_2", LATER, min_position=position + 1))
    moving.join()
    reads.close()
    assert while_waiting == [] and len(seen) == 1, seen
    assert read.position == position + 1 and read.inputs.links


# PostgreSQL only: SQLite has no server to plan statements, nor lock waits to bound.
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_read_at_now_on_postgresql_is_prepared_once_in_a_session_bounding_lock_waits(
    views: Views, db: Database
) -> None:
    assert db.dialect == "postgres"
    applied = renewals(3)
    views.apply(applied, 0, len(applied))
    first = views.present_read("u_1")
    # Past psycopg's threshold (5) on every connection the reads took turns on.
    for _ in range(6 * READ_CONNECTIONS):
        assert views.present_read("u_1") == first
    with db.read_connection() as conn:
        prepared = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            (f"%FROM {views.current}%",),
        ).fetchone()
        timeout = conn.execute("SHOW lock_timeout").fetchone()
    assert prepared == (1,)  # one statement, planned once for every later read
    assert timeout == ("2s",)  # what SET LOCAL bounded before: store.READ_LOCK_TIMEOUT


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_an_async_read_at_now_is_prepared_at_once_in_a_session_bounding_lock_waits(
    views: Views, db: Database
) -> None:
    applied = renewals(3)
    views.apply(applied, 0, len(applied))
    first = views.present_read("u_1")

    async def read() -> tuple[Any, Any]:
        for _ in range(3):  # one after another: one connection, its statement prepared once
            assert await views.present_read_async("u_1") == first
        async with db.read_connection_async() as conn:
            found = await conn.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                (f"%FROM {views.current}%",),
            )
            shown = await conn.execute("SHOW lock_timeout")
            return await found.fetchone(), await shown.fetchone()

    assert run(read()) == ((1,), ("2s",))


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_async_read_connections_close_with_their_event_loop_or_a_cancelled_read(
    views: Views, db: Database
) -> None:
    views.apply(renewals(1), 0, 2)
    held: list[psycopg.AsyncConnection[Any]] = []

    async def slow() -> None:
        async with db.read_connection_async() as conn:
            held.append(conn)
            await conn.execute("SELECT pg_sleep(10)")

    async def read() -> tuple[psycopg.AsyncConnection[Any], psycopg.AsyncConnection[Any]]:
        await views.present_read_async("u_1")
        task = asyncio.create_task(slow())
        while not held:
            await asyncio.sleep(0.001)
        task.cancel()  # a client gone mid-statement: its connection's state is unknown
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with db.read_connection_async() as conn:
            return held[-1], conn

    cancelled, used = run(read())  # each run is an event loop of its own, ended after it
    assert cancelled.closed and used is not cancelled
    held.clear()
    cancelled, again = run(read())
    assert used.closed and again is not used  # the loop that ended took its sessions along
