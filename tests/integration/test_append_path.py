"""The PostgreSQL append path: a batch in one round trip, chained, bodies compressed by lz4."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from billing_ledger.ledger.chain import ChainError
from billing_ledger.ledger.errors import StorageError
from billing_ledger.ledger.records import Incoming
from billing_ledger.ledger.store import APPEND_FUNCTION, TABLE, EventStore
from billing_ledger.ledger.verify import parse_event
from tests.support.databases import PG_BASE, open_store, postgres_url
from tests.support.signing import event_body, sign

pytestmark = pytest.mark.postgres


@pytest.fixture
def url() -> Iterator[str]:
    yield from postgres_url()


@pytest.fixture
def store(url: str) -> Iterator[EventStore]:
    opened = open_store(url)
    yield opened
    opened.db.close()


def signed(event_id: str) -> Incoming:
    body = event_body(event_id, pad_to=3000)
    return parse_event(body, signature=sign(body))


def sent_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every execute from now on: one message, one round trip."""
    seen: list[str] = []
    execute = psycopg.Cursor.execute

    def counted(cursor: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(query))
        return execute(cursor, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted)
    return seen


def compression(store: EventStore) -> str:
    with store.db.transaction(commit=False) as cursor:
        cursor.execute(
            "SELECT attcompression AS c FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attname = 'state'",
            (store.db.table(TABLE),),
        )
        return str(cursor.fetchone()["c"])


def test_a_batch_is_appended_in_one_round_trip_chained_and_stored_once(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append([signed("evt_first")])
    seen = sent_statements(monkeypatch)
    results = store.append([signed(f"evt_{i}") for i in range(20)])
    # One statement, its own transaction: the table lock is held while the server inserts,
    # chains and commits, never across a round trip to this process.
    assert len(seen) == 1 and APPEND_FUNCTION in seen[0], seen
    assert [r.position for r in results] == list(range(2, 22))
    assert {r.status for r in results} == {"recorded"}
    assert store.chain.walk() is None  # every hash recomputes, chained after the first
    assert store.chain_head().position == 21
    # A batch holding a known id rolls back whole and falls back to one by one: the
    # connection is usable again, the known one a duplicate, the chain still one chain.
    again = store.append([signed("evt_new"), signed("evt_3")])
    assert [(r.event_id, r.status) for r in again] == [
        ("evt_new", "recorded"),
        ("evt_3", "duplicate"),
    ]
    assert again[1].position == results[3].position
    assert store.count() == 22
    assert store.chain.walk() is None
    assert store.chain_head().position == max(r.position for r in again)


def test_a_failed_batch_leaves_nothing_stored_and_the_connection_usable(
    store: EventStore,
) -> None:
    chain = store.chain.table
    with store.db.transaction() as cursor:  # the chain's insert fails after the events'
        cursor.execute(
            "CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN RAISE EXCEPTION 'chain refused'; END$$"
        )
        cursor.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {chain} "
            "FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse()"
        )
    with pytest.raises(StorageError, match="chain refused"):
        store.append([signed("evt_lost")])
    assert store.count() == 0  # rolled back: the insert before it is gone too
    with store.db.transaction() as cursor:
        cursor.execute(f"DROP TRIGGER refuse ON {chain}")
    (result,) = store.append([signed("evt_lost")])
    assert (result.status, store.chain.walk()) == ("recorded", None)


def test_a_chain_already_past_the_new_positions_refuses_the_batch(store: EventStore) -> None:
    store.append([signed("evt_first")])
    with store.db.transaction() as cursor:  # the events table altered: a hash far ahead
        cursor.execute(f"INSERT INTO {store.chain.table} VALUES (50, decode('00', 'hex'))")
    with pytest.raises(ChainError, match="position 2 is already chained \\(chain head 50\\)"):
        store.append([signed("evt_second")])
    assert store.count() == 1


class Appending:
    """An append in a thread of its own, and whether its backend waits for a lock."""

    def __init__(self, store: EventStore, event_id: str) -> None:
        self.store = store
        self.results: list[Any] = []
        self.thread = threading.Thread(
            target=lambda: self.results.extend(store.append([signed(event_id)]))
        )
        self.thread.start()

    def waiting_for_a_lock(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s",
            (f"%{self.store.db.url.schema}%{APPEND_FUNCTION}%",),
        ).fetchone()
        return bool(row and row[0])

    def settle(self, conn: psycopg.Connection[Any]) -> str:
        """'done' once it returned, 'waiting' once its backend waits for a lock."""
        deadline = time.monotonic() + 60  # a bound on a hung test, not a timing assertion
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                return "done"
            if self.waiting_for_a_lock(conn):
                return "waiting"
            self.thread.join(0.01)
        raise AssertionError("the append neither finished nor waited for a lock")


@pytest.mark.parametrize(
    ("mode", "append"),
    [
        # The lock VACUUM and ANALYZE (and autovacuum) hold on the table while they run.
        ("SHARE UPDATE EXCLUSIVE", "done"),
        # An older version's append, or Chain.upgrade: commit order stays position order.
        ("EXCLUSIVE", "waiting"),
    ],
    ids=["beside_a_vacuum_or_analyze_it_does_not_wait", "beside_the_librarys_lock_it_waits"],
)
def test_an_append_beside_a_lock_on_the_events_table(
    store: EventStore, mode: str, append: str
) -> None:
    store.append([signed("evt_first")])
    with psycopg.connect(PG_BASE) as other, psycopg.connect(PG_BASE, autocommit=True) as watch:
        other.execute(f"LOCK TABLE {store.db.table(TABLE)} IN {mode} MODE")
        appending = Appending(store, "evt_second")
        try:
            assert appending.settle(watch) == append
        finally:
            other.rollback()
            appending.thread.join()
    assert [r.position for r in appending.results] == [2]
    assert store.chain.walk() is None


def test_events_an_older_process_stored_unchained_are_chained_first_by_the_next_batch(
    store: EventStore,
) -> None:
    store.append([signed("evt_first")])
    with store.db.transaction() as cursor:  # as a process of an older version stored them
        for n in (1, 2):
            cursor.execute(
                f"INSERT INTO {store.db.table(TABLE)} "
                "(originator_id, originator_version, topic, state) VALUES (%s, 1, 'x', %s)",
                (f"00000000-0000-0000-0000-00000000000{n}", b"older body %d" % n),
            )
    assert store.chain_head().position == 1
    results = store.append([signed("evt_second"), signed("evt_third")])
    assert [r.position for r in results] == [4, 5]
    assert store.chain_head().position == 5
    assert store.chain.walk() is None  # positions 2 and 3 chained, before the batch's own


def test_the_append_function_is_created_once_and_again_when_its_text_changes(
    store: EventStore, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = sent_statements(monkeypatch)

    def created() -> list[str]:
        return [s for s in seen if "CREATE OR REPLACE FUNCTION" in s and APPEND_FUNCTION in s]

    open_store(url).db.close()  # the same text: not created again
    assert not created()
    with store.db.transaction() as cursor:  # an older text of it
        cursor.execute(
            f'CREATE OR REPLACE FUNCTION "{store.db.url.schema}".{APPEND_FUNCTION}'
            "(ids text[], versions bigint[], topics text[], states bytea[]) "
            "RETURNS TABLE (stored_position bigint, stored_id text, stored_version bigint) "
            "LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'old'; END$$"
        )
    open_store(url).db.close()
    assert created()
    (result,) = store.append([signed("evt_after")])
    assert (result.status, store.chain.walk()) == ("recorded", None)


def test_bodies_are_compressed_with_lz4_and_an_older_table_is_altered_once(
    store: EventStore, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert compression(store) == "l"
    with store.db.transaction() as cursor:  # a store created before: the server's default
        cursor.execute(
            f"ALTER TABLE {store.db.table(TABLE)} ALTER COLUMN state SET COMPRESSION pglz"
        )
    assert compression(store) == "p"
    reopened = open_store(url)
    assert compression(reopened) == "l"
    reopened.db.close()
    seen = sent_statements(monkeypatch)
    third = open_store(url)  # already lz4: no ALTER, no lock taken for it
    third.db.close()
    assert not [s for s in seen if "SET COMPRESSION" in s]
    (result,) = store.append([signed("evt_after")])
    assert store.get("evt_after") is not None and result.status == "recorded"
