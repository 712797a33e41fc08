"""The projection runner on SQLite and PostgreSQL: batches, skips, failures, one leader."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg
import pytest

from billing_ledger.ledger import normalise
from billing_ledger.ledger.records import Incoming, Recorded
from billing_ledger.ledger.store import Database, DatabaseUrl, EventStore, StorageError, guard
from billing_ledger.ledger.verify import parse_event
from billing_ledger.projections import runner as runner_module
from billing_ledger.projections.runner import Runner, _content_failure
from billing_ledger.projections.views import Views
from tests.support.databases import postgres_url
from tests.support.ledger import incoming
from tests.support.pgcluster import cluster
from tests.unit.builders import T, event, invoice, subscription

Json = dict[str, Any]


@pytest.fixture
def store(database_url: str) -> Iterator[EventStore]:
    opened = EventStore(Database(DatabaseUrl.parse(database_url)))
    opened.create()
    yield opened
    opened.db.close()


@pytest.fixture
def views(store: EventStore) -> Views:
    created = Views(store.db)
    created.create()
    return created


def subscription_events(count: int, prefix: str = "evt") -> list[Json]:
    return [
        event(
            "customer.subscription.updated",
            subscription(id=f"sub_{i}", customer=f"cus_{i}"),
            id=f"{prefix}_{i}",
            created=T + i,
        )
        for i in range(count)
    ]


def append(store: EventStore, envelopes: list[Json]) -> int:
    results = store.append([incoming(e) for e in envelopes])
    return max(r.position for r in results)


def poisoned(event_id: str) -> Incoming:
    """Stored fine (the webhook checks only the envelope), but no subscription inside."""
    body = orjson.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "customer.subscription.updated",
            "created": T,
            "livemode": False,
            "data": {"object": "sub_1"},
        }
    )
    return parse_event(body)


def wait_until(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_catch_up_applies_everything_in_batches(store: EventStore, views: Views) -> None:
    head = append(store, subscription_events(10))
    runner = Runner(store, views, livemode=False, batch=3)
    assert runner.catch_up() == head
    assert runner.position == head == views.position()
    assert runner.applied == 10
    assert len(views.rows().snapshots) == 10
    assert runner.status() == {
        "billing": {"position": head, "error": None, "skipped": [], "skipped_total": 0}
    }


def test_an_event_read_for_its_snapshot_and_its_card_facts_is_parsed_once(
    store: EventStore, views: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    envelopes = subscription_events(3)  # each a subscription snapshot and a card fact
    append(store, envelopes)
    parsed: list[str] = []
    payload = Recorded.payload

    def counted(recorded: Recorded) -> dict[str, Any]:
        parsed.append(recorded.event_id)
        return payload(recorded)

    monkeypatch.setattr(Recorded, "payload", counted)
    Runner(store, views, livemode=False).catch_up()
    assert sorted(parsed) == [e["id"] for e in envelopes]
    assert len(views.rows().snapshots) == len(views.card_rows()) == 3


def test_a_second_catch_up_applies_nothing(store: EventStore, views: Views) -> None:
    head = append(store, subscription_events(5))
    Runner(store, views, livemode=False).catch_up()
    rows = views.rows()
    again = Runner(store, views, livemode=False)
    assert again.catch_up() == head
    assert again.applied == 0 and views.rows() == rows


def test_a_runner_resumes_from_the_tracked_position(store: EventStore, views: Views) -> None:
    append(store, subscription_events(4, "evt_a"))
    Runner(store, views, livemode=False).catch_up()
    head = append(store, subscription_events(3, "evt_b"))
    later = Runner(store, views, livemode=False)
    assert later.catch_up() == head
    assert later.applied == 3


def test_other_mode_thin_unknown_and_alternate_renderings_are_skipped(
    store: EventStore, views: Views, caplog: pytest.LogCaptureFixture
) -> None:
    live = event(
        "customer.subscription.updated", subscription(id="sub_live"), id="evt_live", created=T
    )
    live["livemode"] = True
    thin = parse_event(
        b'{"id": "evt_thin", "object": "v2.core.event", "type": "v1.billing.meter.error_report_triggered",'
        b' "created": "2026-01-01T00:00:00.000Z", "livemode": false,'
        b' "related_object": {"id": "mtr_1", "type": "billing.meter", "url": "/v1/billing/meters/mtr_1"}}'
    )
    good = event("customer.subscription.updated", subscription(), id="evt_good", created=T)
    alternate = dict(good, api_version="2025-02-24.acacia")
    store.append(
        [
            incoming(live),
            thin,
            incoming(event("billing.credit_grant.created", {"id": "cg_1"}, id="evt_x", created=T)),
            incoming(
                event("customer.subscription.frobnicated", subscription(), id="evt_y", created=T)
            ),
            incoming(event("invoice.upcoming", invoice(id="upcoming"), id="evt_up", created=T)),
            incoming(good),
        ]
    )
    assert store.append([incoming(alternate)])[0].status == "duplicate"  # version 2 of evt_good
    runner = Runner(store, views, livemode=False)
    with caplog.at_level(logging.WARNING, "billing_ledger.projections"):
        assert runner.catch_up() == store.head()
    assert [row[3] for row in views.rows().snapshots] == ["evt_good"]
    assert runner.applied == 1
    flagged = [r.getMessage() for r in caplog.records if "evt_live" in r.getMessage()]
    assert len(flagged) == 1 and "livemode=True" in flagged[0]


def test_a_live_deployment_projects_only_live_events(store: EventStore, views: Views) -> None:
    live = event(
        "customer.subscription.updated", subscription(id="sub_live"), id="evt_live", created=T
    )
    live["livemode"] = True
    test = event("customer.subscription.updated", subscription(), id="evt_test", created=T)
    append(store, [live, test])
    Runner(store, views, livemode=True).catch_up()
    assert [row[3] for row in views.rows().snapshots] == ["evt_live"]


def skipped_ids(runner: Runner) -> list[str]:
    return [s["event_id"] for s in runner.status()["billing"]["skipped"]]


def test_an_event_that_cannot_be_normalised_is_skipped_logged_and_listed(
    store: EventStore, views: Views, caplog: pytest.LogCaptureFixture
) -> None:
    append(store, subscription_events(2, "evt_before"))
    bad = store.append([poisoned("evt_bad")])[0].position
    head = append(store, subscription_events(2, "evt_after"))
    runner = Runner(store, views, livemode=False)
    with caplog.at_level(logging.WARNING, "billing_ledger.projections"):
        assert runner.catch_up() == head == views.position()
    assert runner.applied == 4 and len(views.rows().snapshots) == 4
    status = runner.status()["billing"]
    assert status["error"] is None and status["skipped_total"] == 1
    [skip] = status["skipped"]
    assert (skip["event_id"], skip["position"]) == ("evt_bad", bad)
    assert "data.object is missing" in skip["reason"]
    lines = [r.getMessage() for r in caplog.records if "outcome=skipped" in r.getMessage()]
    assert (
        len(lines) == 1
        and f"event=evt_bad type=customer.subscription.updated position={bad}" in lines[0]
    )
    restarted = Runner(store, Views(store.db), livemode=False)  # the skip is durable
    assert restarted.catch_up() == head and skipped_ids(restarted) == ["evt_bad"]


def test_the_thread_goes_past_a_failing_event_while_appends_go_on(
    store: EventStore, views: Views
) -> None:
    store.append([poisoned("evt_bad")])
    runner = Runner(store, views, livemode=False)
    runner.start()
    try:
        head = append(store, subscription_events(3))
        assert runner.wait_for(head, 10)
        assert runner.status()["billing"]["error"] is None
        assert skipped_ids(runner) == ["evt_bad"]
    finally:
        runner.stop()


def deep(levels: int) -> Json:
    nested: Json = {}
    for _ in range(levels):
        nested = {"a": nested}
    return nested


def test_with_the_bounds_lifted_a_batch_failing_to_write_skips_only_the_failing_event(
    store: EventStore, views: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner's own guard, alone: without the normaliser's depth bound, the snapshot of
    # the deep event cannot be serialised inside the views' transaction.
    monkeypatch.setattr(normalise, "MAX_DEPTH", 10_000)
    events = subscription_events(5)
    events[2]["data"]["previous_attributes"] = deep(300)
    # The standard library's encoder: orjson refuses to write what a sender may well send.
    head = max(
        r.position for r in store.append([parse_event(json.dumps(e).encode()) for e in events])
    )
    runner = Runner(store, views, livemode=False, batch=10)
    assert runner.catch_up() == head == views.position()
    assert sorted(r[3] for r in views.rows().snapshots) == ["evt_0", "evt_1", "evt_3", "evt_4"]
    [skip] = runner.status()["billing"]["skipped"]
    assert skip["event_id"] == "evt_2" and skip["position"] == head - 2
    assert "Recursion limit" in skip["reason"]
    rebuilt = Views(store.db, suffix="_again")  # a rebuild skips it the same way
    rebuilt.create()
    Runner(store, rebuilt, livemode=False, batch=3).catch_up()
    assert rebuilt.rows() == views.rows() and rebuilt.skipped() == views.skipped()


def reaches(runner: Runner, head: int) -> bool:
    try:
        return runner.catch_up() == head
    except StorageError:  # the server is still starting
        return False


@pytest.mark.postgres
def test_views_whose_database_is_down_stop_the_projection_and_skip_nothing(pg_url: str) -> None:
    store = EventStore(Database(DatabaseUrl.parse(pg_url)))
    store.create()
    with cluster() as away:
        views = Views(Database(DatabaseUrl.parse(away.url)))
        views.create()
        runner = Runner(store, views, livemode=False)
        try:
            runner.catch_up()
            head = append(store, subscription_events(3))
            away.stop()
            with pytest.raises(StorageError):
                runner.catch_up()
            assert runner.position == 0 and "storage unavailable" in (runner.error or "")
            away.start()
            assert wait_until(lambda: reaches(runner, head), timeout=30)
            assert runner.error is None  # what `project` publishes to the HTTP processes
            assert runner.status()["billing"]["skipped"] == []
            assert len(views.rows().snapshots) == 3
        finally:
            runner.stop()
            views.db.close()
            store.db.close()


def test_the_thread_applies_new_events_and_wait_for_sees_them(
    store: EventStore, views: Views
) -> None:
    runner = Runner(store, views, livemode=False, batch=2)
    runner.start()
    try:
        head = append(store, subscription_events(5))
        assert runner.wait_for(head, 10)
        assert views.position() == head
        assert not runner.wait_for(head + 1000, 0.2)
        later = append(store, subscription_events(2, "evt_later"))
        assert runner.wait_for(later, 10)
    finally:
        runner.stop()
    assert runner.applied == 7


def test_wait_for_follows_a_runner_in_another_process(store: EventStore, views: Views) -> None:
    reader = Runner(store, views, livemode=False)  # never started: it only reads positions
    head = append(store, subscription_events(2))
    assert not reader.wait_for(head, 0.2)
    Runner(store, Views(store.db), livemode=False).catch_up()
    assert reader.wait_for(head, 2)


class CommitsWhileApplying(Views):
    """Views that append more events to the store while their first batch is applied."""

    def __init__(self, store: EventStore, more: list[Json]) -> None:
        super().__init__(store.db)
        self.store = store
        self.more = more
        self.appended: int | None = None  # the head once the extra events are committed

    def apply(self, snapshots: Any, after: int, position: int, *more: Any) -> None:
        if self.appended is None:
            self.appended = append(self.store, self.more)
        super().apply(snapshots, after, position, *more)


def _applied_with_more_during_the_first_batch(store: EventStore, **options: Any) -> int:
    """Two events, then three more committed while the first batch is applied; the runner
    (never polling within the test's time) must apply all five."""
    views = CommitsWhileApplying(store, subscription_events(3, "evt_during"))
    views.create()
    append(store, subscription_events(2))
    runner = Runner(store, views, livemode=False, poll=3600, **options)
    runner.start()
    try:
        assert wait_until(lambda: views.appended is not None)
        assert views.appended is not None and runner.wait_for(views.appended, 10)
    finally:
        runner.stop()
    assert len(views.rows().snapshots) == 5
    return runner.applied


@pytest.mark.parametrize("listen", [False, True])
def test_what_commits_while_a_batch_is_applied_is_read_without_another_wake_up(
    store: EventStore, listen: bool
) -> None:
    # With listen=False no notification either.
    assert _applied_with_more_during_the_first_batch(store, listen=listen) == 5


def test_a_full_batch_committed_while_one_is_applied_is_read_without_settling(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A settle longer than the test: only a backlog read at once lets the runner finish.
    monkeypatch.setattr(runner_module, "SETTLE_SECONDS", 3600)
    assert _applied_with_more_during_the_first_batch(store, listen=False, batch=3) == 5


def test_stop_releases_quickly_when_idle(store: EventStore, views: Views) -> None:
    runner = Runner(store, views, livemode=False)
    runner.start()
    time.sleep(0.2)
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 2


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_url()


def _runner_on(url: str) -> Runner:
    """A runner with its own connections, as a second process would have."""
    store = EventStore(Database(DatabaseUrl.parse(url)))
    store.create()
    views = Views(store.db)
    views.create()
    return Runner(store, views, livemode=False, batch=7)


def test_two_runners_one_applies_each_event_once_and_the_other_takes_over(
    database_url: str,
) -> None:
    first, second = _runner_on(database_url), _runner_on(database_url)
    try:
        first.start()
        assert wait_until(lambda: first._leader.held)
        second.start()
        head = append(first.store, subscription_events(40))
        assert first.wait_for(head, 10) and second.wait_for(head, 10)
        assert (first.applied, second.applied) == (40, 0)
        first.stop()  # the lock goes with its session: the other takes over
        later = append(second.store, subscription_events(10, "evt_later"))
        assert second.wait_for(later, 10)
        assert (first.applied, second.applied) == (40, 10)
        assert len(second.views.rows().snapshots) == 50
    finally:
        for runner in (first, second):
            runner.stop()
            runner.store.db.close()


@pytest.mark.postgres
def test_two_runners_racing_without_the_lock_never_apply_a_batch_twice(pg_url: str) -> None:
    first, second = _runner_on(pg_url), _runner_on(pg_url)
    try:
        head = append(first.store, subscription_events(60))
        threads = [threading.Thread(target=r.catch_up) for r in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert first.views.position() == head
        assert len(first.views.rows().snapshots) == 60
        # Both read the same batches: each is committed by one and refused to the other.
        assert first.applied + second.applied == 60
    finally:
        for runner in (first, second):
            runner.store.db.close()


def real_error(run: Callable[[], Any]) -> BaseException:
    try:
        run()
    except Exception as e:  # the point is to keep it
        return e
    raise AssertionError("expected an error")


def test_only_a_value_the_database_refuses_counts_as_the_events_fault(store: EventStore) -> None:
    def execute(sql: str, *params: Any) -> Callable[[], None]:
        def run() -> None:
            with store.db.transaction(commit=False) as cursor:
                cursor.execute(sql, params)

        return run

    def connect_to_nothing() -> None:
        with guard():
            psycopg.connect("host=127.0.0.1 port=1 connect_timeout=2").close()

    p = store.db.param
    assert not _content_failure(real_error(execute("SELECT * FROM no_such_table")))
    assert not _content_failure(real_error(connect_to_nothing))
    assert _content_failure(real_error(lambda: orjson.dumps(deep(300))))
    if store.db.dialect == "postgres":
        too_big = execute(f"SELECT CAST({p} AS bigint) + 1", 2**63 - 1)
    else:
        too_big = execute(f"SELECT {p}", 2**70)  # SQLite would turn the sum into a float
    assert _content_failure(real_error(too_big))
