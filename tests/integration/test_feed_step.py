"""What one step of the change feed costs, on SQLite and PostgreSQL: the transactions and
statements it sends for a batch the runner applied, and for nothing applied."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from eventsourcing.sqlite import SQLiteConnection
from psycopg.pq import TransactionStatus

from billing_ledger.ledger.errors import StorageError
from billing_ledger.ledger.store import TABLE, Database, DatabaseUrl, EventStore
from billing_ledger.projections.cache import Applied
from billing_ledger.projections.feed import FeedProjector, FeedTables, _logged, observe
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views
from tests.support.ledger import incoming
from tests.unit.builders import M, T, event, example_plans, subscription

PLANS = example_plans()
NOW = T + M // 2  # within every period below


@dataclass
class Sent:
    """Transactions and statements the drivers were given while counting."""

    transactions: int = 0
    statements: list[str] = field(default_factory=list)

    def sent(self, statement: str) -> None:
        """One statement; the rows of one executemany count once (SQLite traces each row)."""
        if not self.statements or _kind(self.statements[-1]) != _kind(statement):
            self.statements.append(statement)


def _kind(statement: str) -> str:
    return statement.split(" VALUES ")[0]


def counting(monkeypatch: pytest.MonkeyPatch) -> Sent:
    """Count from now on each transaction (each one a connection opens, and on PostgreSQL each
    statement sent while the connection is idle: it begins one, implicit or not) and each
    statement (an executemany once)."""
    sent = Sent()
    execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany
    cursor = SQLiteConnection.cursor

    def counted(original: Any) -> Any:
        def call(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
            idle = self.connection.info.transaction_status == TransactionStatus.IDLE
            sent.transactions += idle
            sent.statements.append(str(query))
            return original(self, query, *args, **kwargs)

        return call

    def traced(conn: SQLiteConnection) -> Any:
        keep = ("BEGIN", "COMMIT", "ROLLBACK")
        trace = conn._sqlite_conn.set_trace_callback
        trace(lambda q: None if q in keep else sent.sent(q))
        return cursor(conn)

    def begun(original: Any) -> Any:
        def transaction(self: Any, *args: Any, **kwargs: Any) -> Any:
            sent.transactions += 1
            return original(self, *args, **kwargs)

        return transaction

    monkeypatch.setattr(psycopg.Cursor, "execute", counted(execute))
    monkeypatch.setattr(psycopg.Cursor, "executemany", counted(executemany))
    monkeypatch.setattr(SQLiteConnection, "cursor", traced)
    monkeypatch.setattr(psycopg.Connection, "transaction", begun(psycopg.Connection.transaction))
    monkeypatch.setattr(SQLiteConnection, "transaction", begun(SQLiteConnection.transaction))
    return sent


@pytest.fixture
def parts(database_url: str) -> Iterator[tuple[EventStore, Runner, FeedProjector]]:
    store = EventStore(Database(DatabaseUrl.parse(database_url)))
    store.create()
    views = Views(store.db)
    views.create()
    FeedTables(store.db).create()
    feed = FeedProjector(store, views, PLANS, livemode=False, clock=lambda: NOW)
    yield store, Runner(store, views, livemode=False), feed
    store.db.close()


def subscribe(store: EventStore, *users: int) -> None:
    """Each user subscribes to pro: one event each."""
    store.append(
        [
            incoming(
                event(
                    "customer.subscription.created",
                    subscription(id=f"sub_{n}", customer=f"cus_{n}", app_user_id=f"u_{n}"),
                    id=f"evt_{n}",
                    created=T + n,
                )
            )
            for n in users
        ]
    )


def test_a_step_reads_once_writes_once_and_needs_no_empty_step_after_it(
    parts: tuple[EventStore, Runner, FeedProjector], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, runner, feed = parts
    subscribe(store, 1)
    runner.catch_up()
    assert not feed.step() and feed.head == 1  # the first step reads the tracking once more
    subscribe(store, 2, 3, 4)
    runner.catch_up()
    sent = counting(monkeypatch)
    # Done in one step, which says so: no second one is needed to find nothing left.
    assert not feed.step()
    transactions, statements = sent.transactions, list(sent.statements)
    assert [c.user_id for c in feed.tables.read(1, 10)] == ["u_2", "u_3", "u_4"]
    # The views' position, the users of the batch's customers, the feed's own reads (one
    # transaction), the users' inputs, the commit: whatever the number of users. The events
    # are not read again: the views' batch log says whom the batch touched.
    assert transactions == 5, statements
    assert not [s for s in statements if TABLE in s], statements
    # The commit: its tracking, then its rows and users (one executemany each on SQLite, one
    # statement with all three on PostgreSQL).
    writes = 3 if feed.tables.db.dialect == "sqlite" else 1
    assert len(statements) == 6 + writes, statements


def test_a_stretch_another_process_applied_is_read_from_the_events(
    parts: tuple[EventStore, Runner, FeedProjector], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, feed = parts
    other = Runner(store, Views(store.db), livemode=False)  # its batches are not in our log
    subscribe(store, 1)
    other.catch_up()
    subscribe(store, 2, 3)
    other.catch_up()
    sent = counting(monkeypatch)
    assert not feed.step()
    assert [s for s in sent.statements if TABLE in s]
    assert [(c.position, c.user_id) for c in feed.tables.read(0, 10)] == [
        (1, "u_1"),
        (2, "u_2"),
        (3, "u_3"),
    ]
    assert feed.tables.tracked("changes") == (3, 3)


def test_a_step_with_nothing_applied_sends_two_reads_and_writes_nothing(
    parts: tuple[EventStore, Runner, FeedProjector], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, runner, feed = parts
    subscribe(store, 1, 2)
    runner.catch_up()
    feed.catch_up()
    sent = counting(monkeypatch)
    assert not feed.step()
    assert sent.transactions == 2, sent.statements  # the views' position, the feed's tables
    assert not [s for s in sent.statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
    assert feed.head == 2


def test_a_feed_whose_tracking_another_process_moved_reads_again_from_there(
    parts: tuple[EventStore, Runner, FeedProjector],
) -> None:
    store, runner, feed = parts
    other = FeedProjector(store, feed.views, PLANS, livemode=False, clock=lambda: NOW)
    subscribe(store, 1)
    runner.catch_up()
    assert not feed.step()
    subscribe(store, 2, 3)
    runner.catch_up()
    assert not other.step()  # the other process records u_2 and u_3 first
    subscribe(store, 4)
    runner.catch_up()
    assert not feed.step()  # from where the other left the tracking, not from its own
    assert [(c.position, c.user_id) for c in feed.tables.read(0, 10)] == [
        (1, "u_1"),
        (2, "u_2"),
        (3, "u_3"),
        (4, "u_4"),
    ]
    assert feed.head == 4 and feed.tables.tracked("changes") == (4, 4)


def test_a_commit_from_a_stale_tracking_writes_nothing(
    parts: tuple[EventStore, Runner, FeedProjector],
) -> None:
    store, runner, feed = parts
    subscribe(store, 1, 2)
    runner.catch_up()
    feed.catch_up()
    subscribe(store, 3)
    runner.catch_up()
    seen = observe("u_3", feed.views.load_inputs("u_3"), PLANS, ("core",), 0, NOW)
    assert seen.changes  # a change it would write
    assert feed.tables.commit((1, 1), 3, [seen]) is None  # the tracking stands at (2, 2)
    assert feed.tables.tracked("changes") == (2, 2)
    assert [c.user_id for c in feed.tables.read(0, 10)] == ["u_1", "u_2"]
    assert feed.tables.last_features(["u_3"]) == {}
    assert feed.tables.commit((2, 2), 3, [seen]) is not None
    assert [c.user_id for c in feed.tables.read(0, 10)] == ["u_1", "u_2", "u_3"]
    assert feed.tables.last_features(["u_3"]) == {"u_3": (("core", "pro"), seen.last_at)}


def test_the_batch_log_covers_a_stretch_only_without_a_gap() -> None:
    def batch(after: int, position: int, *users: str) -> Applied:
        return Applied(after, position, frozenset({f"cus_{u}" for u in users}), frozenset(users))

    log = [batch(0, 2, "u_1"), batch(2, 5, "u_2"), batch(7, 9, "u_3")]  # (5, 7] elsewhere
    assert _logged(log, 0, 9) == (5, {"u_1", "u_2"}, {"cus_u_1", "cus_u_2"})
    assert _logged(log, 2, 4) is None  # the next batch reaches past what the views applied
    assert _logged(log, 5, 9) is None  # applied by another process: read from the events
    assert _logged(log, 1, 9) == (5, {"u_1", "u_2"}, {"cus_u_1", "cus_u_2"})  # whole batches
    too_many = Applied(5, 7, None, frozenset())
    assert _logged([*log[:2], too_many, log[2]], 2, 9) == (5, {"u_2"}, {"cus_u_2"})


def test_a_feed_whose_wait_loses_the_database_keeps_following_once_it_is_back(
    parts: tuple[EventStore, Runner, FeedProjector],
) -> None:
    """The wait between steps reads the views' position; the database going away there (seen
    when PostgreSQL stopped under `serve`) is said once and tried again, the thread lives on."""
    store, runner, feed = parts
    waits: list[int] = []

    def wake(position: int, timeout: float) -> bool:
        waits.append(position)
        if len(waits) == 1:
            raise StorageError("storage unavailable: the server closed the connection")
        return runner.wait_for(position, timeout)

    feed.wake = wake
    feed.start()
    try:
        deadline = time.monotonic() + 20
        while feed.error is None and time.monotonic() < deadline:
            time.sleep(0.001)  # said for the second the thread waits before trying again
        assert feed.error is not None and "storage unavailable" in feed.error
        subscribe(store, 1)
        runner.catch_up()
        while not feed.tables.read(0, 10) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [c.user_id for c in feed.tables.read(0, 10)] == ["u_1"]
        assert feed.error is None and len(waits) >= 2
    finally:
        feed.stop()
