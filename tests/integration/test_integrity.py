"""The hash chain and `billing-ledger verify`: a stored event edited in the database is named."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from starlette.testclient import TestClient

from billing_ledger.cli import main
from billing_ledger.ledger.records import Incoming, encode_state
from billing_ledger.ledger.store import TABLE, Database, DatabaseUrl, EventStore
from billing_ledger.ledger.verify import parse_event
from tests.support.app import client_for, settings_for
from tests.support.databases import open_store
from tests.support.signing import SECRET, event_body, sign


def signed(event_id: str, secret: str = SECRET) -> Incoming:
    """An event as the webhook endpoint hands it to the writer: body and header together."""
    body = event_body(event_id, pad_to=600)
    return parse_event(body, signature=sign(body, secret))


@pytest.fixture
def store(database_url: str) -> Iterator[EventStore]:
    opened = open_store(database_url)
    yield opened
    opened.db.close()


def verify(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *flags: str,
) -> tuple[int, str]:
    """Run `billing-ledger verify` as an operator would; its status and what it printed."""
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    capsys.readouterr()
    status = main(["verify", *flags])
    printed = capsys.readouterr()
    return status, printed.out + printed.err


def tamper(store: EventStore, position: int, old: bytes, new: bytes) -> None:
    """Edit one stored event's state directly in the database, as an intruder would."""
    db = store.db
    column = "rowid" if db.dialect == "sqlite" else "notification_id"
    p = db.param
    with db.transaction() as cursor:
        cursor.execute(f"SELECT state FROM {db.table(TABLE)} WHERE {column} = {p}", (position,))
        state = bytes(cursor.fetchone()["state"])
        assert old in state
        cursor.execute(
            f"UPDATE {db.table(TABLE)} SET state = {p} WHERE {column} = {p}",
            (state.replace(old, new, 1), position),
        )


def test_an_untouched_ledger_verifies_and_names_its_database_and_count(
    store: EventStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = store.append([signed(f"evt_{i}") for i in range(5)])
    status, printed = verify(database_url, monkeypatch, capsys, "--signatures")
    assert status == 0, printed
    head = store.chain_head()
    assert head.position == results[-1].position
    assert f"head position {head.position} sha256 {head.hex()}" in printed
    assert "(5 events)" in printed and "signatures: 5 verify, 0 fail" in printed
    assert store.db.url.display() in printed


def test_an_edited_body_fails_verify_naming_its_position(
    store: EventStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = store.append([signed(f"evt_{i}") for i in range(5)])
    target = results[2]
    tamper(store, target.position, b'"status":"active"', b'"status":"paused"')
    status, printed = verify(database_url, monkeypatch, capsys)
    assert status == 1
    assert f"chain: broken at position {target.position} (evt_2)" in printed


def test_an_edited_header_fails_verify_and_its_signature_is_listed(
    store: EventStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = store.append([signed(f"evt_{i}") for i in range(4)])
    target = results[1]
    stored = store.get("evt_1")
    assert stored is not None and stored.signature is not None
    digest = stored.signature.split("v1=")[1][:8]
    tamper(store, target.position, digest.encode(), b"00000000")
    status, printed = verify(database_url, monkeypatch, capsys, "--signatures")
    assert status == 1
    assert f"chain: broken at position {target.position} (evt_1)" in printed
    assert f"  position {target.position} evt_1 " in printed
    assert "signatures: 3 verify, 1 fail" in printed


def test_signatures_lists_an_event_whose_stored_header_does_not_verify(
    store: EventStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = store.append([signed("evt_good")])
    (forged,) = store.append([signed("evt_forged", secret="whsec_someone_else")])
    assert verify(database_url, monkeypatch, capsys)[0] == 0  # the chain itself holds
    status, printed = verify(database_url, monkeypatch, capsys, "--signatures")
    assert status == 1
    assert f"  position {forged.position} evt_forged " in printed
    assert f"position {good[0].position} evt_good" not in printed


def test_a_deleted_last_event_is_named(
    store: EventStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = store.append([signed(f"evt_{i}") for i in range(3)])
    column = "rowid" if store.db.dialect == "sqlite" else "notification_id"
    with store.db.transaction() as cursor:
        cursor.execute(
            f"DELETE FROM {store.db.table(TABLE)} WHERE {column} = {store.db.param}",
            (results[-1].position,),
        )
    status, printed = verify(database_url, monkeypatch, capsys)
    assert status == 1
    assert f"broken at position {results[-1].position}: a hash is stored" in printed


# -- upgrading a ledger stored before the chain ----------------------------------------------


def legacy_append(database_url: str, events: list[Incoming]) -> None:
    """Store events as the ledger did before the chain: the library's own recorder, no hash."""
    db = Database(DatabaseUrl.parse(database_url))
    recorder: SQLiteApplicationRecorder | PostgresApplicationRecorder
    if db.dialect == "sqlite":
        recorder = SQLiteApplicationRecorder(db.sqlite, events_table_name=TABLE)
    else:
        db.ensure_schema()
        recorder = PostgresApplicationRecorder(db.postgres, events_table_name=TABLE)
    recorder.create_table()
    recorder.insert_events([StoredEvent(e.event_id, 1, e.type, encode_state(e)) for e in events])
    db.close()


def test_a_ledger_stored_before_the_chain_is_chained_in_place_when_opened(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy_append(database_url, [signed(f"evt_old_{i}") for i in range(30)])
    status, printed = verify(database_url, monkeypatch, capsys)
    assert status == 1 and "predates the chain" in printed  # verify itself writes nothing
    store = open_store(database_url)  # what serve, project and replay do when they start
    try:
        assert store.chain_head().position == store.head()
        store.append([signed("evt_new")])
        status, printed = verify(database_url, monkeypatch, capsys, "--signatures")
        assert status == 0, printed
        assert "signatures: 31 verify, 0 fail" in printed
    finally:
        store.db.close()


def test_events_an_older_process_stores_meanwhile_are_chained_by_the_next_append(
    store: EventStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store.append([signed("evt_first")])
    legacy_append(database_url, [signed(f"evt_unchained_{i}") for i in range(3)])
    store.append([signed("evt_after")])
    status, printed = verify(database_url, monkeypatch, capsys)
    assert status == 0, printed
    assert store.chain_head().position == store.head()


# -- concurrency: the chain stays a chain ----------------------------------------------------


def _append_many(url: str, tag: str, barrier: multiprocessing.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    store = open_store(url)
    barrier.wait(timeout=60)
    for batch in range(15):
        store.append([signed(f"evt_{tag}_{batch}_{i}") for i in range(4)])
    store.db.close()


def test_processes_threads_and_the_group_commit_writer_appending_at_once_keep_one_chain(
    store: EventStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    processes = [
        context.Process(target=_append_many, args=(database_url, f"p{n}", barrier))
        for n in range(3)
    ]
    for process in processes:
        process.start()
    backfill = threading.Thread(target=_append_many_here, args=(store, "backfill"))
    backfill.start()
    with client_for(settings_for(database_url)) as (client, _):
        _deliver_through(client, 40)  # through the group-commit writer
    backfill.join(120)
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    assert store.count() == 3 * 60 + 60 + 40
    status, printed = verify(database_url, monkeypatch, capsys, "--signatures")
    assert status == 0, printed
    assert store.chain_head().position == store.head()


def _append_many_here(store: EventStore, tag: str) -> None:
    for batch in range(15):
        store.append([signed(f"evt_{tag}_{batch}_{i}") for i in range(4)])


def _deliver_through(client: TestClient, count: int) -> None:
    """POST `count` signed webhooks from several threads at once (the writer batches them)."""

    def post(n: int) -> None:
        for i in range(count // 4):
            body = event_body(f"evt_hook_{n}_{i}", pad_to=600)
            answer = client.post(
                "/webhooks/stripe", content=body, headers={"stripe-signature": sign(body)}
            )
            assert answer.status_code == 200, answer.text

    threads = [threading.Thread(target=post, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def test_healthz_shows_the_chain_head(database_url: str) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        body = event_body("evt_health", pad_to=600)
        answer = client.post(
            "/webhooks/stripe", content=body, headers={"stripe-signature": sign(body)}
        ).json()
        health = client.get("/healthz").json()
        head = deps.store.chain_head()
    assert health["chain"] == {"position": answer["position"], "hash": head.hex()}
    assert health["head"] == answer["position"] and "projections" in health


def test_signatures_without_the_secrets_exits_2_in_one_line(
    store: EventStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    assert main(["verify", "--signatures"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("billing-ledger verify: --signatures needs STRIPE_WEBHOOK_SECRET")


def test_a_noted_head_catches_an_edit_hidden_by_a_rewritten_chain(
    store: EventStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = store.append([signed(f"evt_{i}") for i in range(6)])
    with client_for(settings_for(database_url)) as (client, _):
        noted = client.get("/healthz").json()["chain"]  # what an auditor writes down
    store.append([signed("evt_later")])
    head = f"{noted['position']}:{noted['hash']}"
    status, printed = verify(database_url, monkeypatch, capsys, "--head", head)
    assert status == 0, printed
    assert f"noted head: position {noted['position']} still holds" in printed
    tamper(store, results[2].position, b'"status":"active"', b'"status":"paused"')
    with store.db.transaction() as cursor:  # an intruder who also recomputes every hash
        cursor.execute(f"DELETE FROM {store.db.table('ledger_chain')}")
    store.chain.upgrade()
    assert verify(database_url, monkeypatch, capsys)[0] == 0  # the chain alone is fooled
    status, printed = verify(database_url, monkeypatch, capsys, "--head", head)
    assert status == 1
    assert f"chain: broken at position {noted['position']} (evt_5)" in printed
    assert "not the head noted earlier" in printed


def test_a_malformed_noted_head_exits_2(
    store: EventStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, printed = verify(database_url, monkeypatch, capsys, "--head", "12:nothex")
    assert status == 2 and "--head: expected POSITION:HASH" in printed
