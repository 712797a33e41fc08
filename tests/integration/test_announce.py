"""Batches one process commits keep another process's read cache current (PostgreSQL's
notifications, projections/announce.py): untouched users stay hits, touched ones and any
batch not heard of are misses, and a wait for a position wakes as the batch commits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from billing_ledger.ledger.canonical import Snapshot
from billing_ledger.ledger.store import Database, DatabaseUrl
from billing_ledger.projections.announce import Listener
from billing_ledger.projections.queries import Reads
from billing_ledger.projections.views import Views
from tests.support.aio import run
from tests.support.databases import postgres_url
from tests.unit.builders import DAY, T, event, example_plans, subscription
from tests.unit.builders import snapshots as built

pytestmark = pytest.mark.postgres

PLANS = example_plans()
LATER = T + 40 * DAY


def wait_until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def url() -> Iterator[str]:
    yield from postgres_url()


@pytest.fixture
def applier(url: str) -> Iterator[Views]:
    """The views as the runner's process holds them: the one that applies."""
    db = Database(DatabaseUrl.parse(url))
    views = Views(db)
    views.create()
    yield views
    db.close()


@pytest.fixture
def reader(url: str, applier: Views) -> Iterator[Reads]:
    """An HTTP process's reads over the same tables, listening to what the applier commits."""
    db = Database(DatabaseUrl.parse(url))
    reads = Reads(Views(db), None, PLANS)
    reads.listen()
    assert listener(reads).wait_connected(20)
    yield reads
    reads.close()
    db.close()


def listener(reads: Reads) -> Listener:
    found = reads.watch.listener
    assert found is not None
    return found


def signup(n: int, sub: int = 0) -> list[Snapshot]:
    """u_n on cus_n subscribes (sub: another of their subscriptions)."""
    created = subscription(id=f"sub_{n}_{sub}", customer=f"cus_{n}", app_user_id=f"u_{n}")
    return built([event("customer.subscription.created", created, id=f"evt_{n}_{sub}", created=T)])


def heard(reads: Reads, position: int) -> None:
    """Wait until the reader's batch log has the batch ending at `position`."""
    wait_until(lambda: any(b.position == position for b in reads.views.batches.recent()))


def cached(reads: Reads, *users: str) -> int:
    """Read each user at now (filling the present cache); the position they were read at."""
    for user_id in users:
        run(reads.user(user_id, LATER))
    return reads.views.position()


def hit(reads: Reads, user_id: str, position: int) -> bool:
    return reads.views.present_cache.get(user_id, position) is not None


def test_a_batch_of_another_process_keeps_untouched_users_cached(
    applier: Views, reader: Reads
) -> None:
    applier.apply(signup(1) + signup(2), 0, 2)
    wait_until(lambda: reader.views.position() == 2)
    assert cached(reader, "u_1", "u_2") == 2
    applier.apply(signup(1, 1), 2, 3)  # touches cus_1 only
    heard(reader, 3)
    assert reader.views.position() == 3
    hits = reader.views.present_cache.stats().hits
    assert hit(reader, "u_2", 3)  # untouched: still current at the new position
    assert not hit(reader, "u_1", 3)  # touched: loaded again
    assert reader.views.present_cache.stats().hits == hits + 1
    assert len(run(reader.user("u_1", LATER, min_position=3)).inputs.snapshots) == 2


def test_a_position_seen_before_its_notification_is_a_miss(applier: Views, reader: Reads) -> None:
    applier.apply(signup(1) + signup(2), 0, 2)
    wait_until(lambda: reader.views.position() == 2)
    cached(reader, "u_2")
    listener(reader).stop()  # as if the notification were still on its way
    applier.apply(signup(1, 1), 2, 3)
    assert reader.views.position() == 3
    assert not hit(reader, "u_2", 3)  # untouched, but not heard of: never assumed


def test_a_lost_notification_makes_entries_miss_never_stale(applier: Views, reader: Reads) -> None:
    applier.apply(signup(1) + signup(2), 0, 2)
    wait_until(lambda: reader.views.position() == 2)
    cached(reader, "u_1", "u_2")
    listener(reader).stop()
    applier.apply(signup(2, 1), 2, 3)  # u_2 changes while nobody listens
    reader.listen()
    assert listener(reader).wait_connected(20)
    applier.apply(signup(3), 3, 4)  # heard, after the gap
    heard(reader, 4)
    assert not hit(reader, "u_2", 4)  # would be stale: the batch (2, 3] is a gap
    assert not hit(reader, "u_1", 4)  # untouched, but the gap is everyone's
    assert len(run(reader.user("u_2", LATER, min_position=4)).inputs.snapshots) == 2
    applier.apply(signup(4), 4, 5)
    heard(reader, 5)
    assert hit(reader, "u_2", 5)  # loaded at 4, heard since: current again


def test_a_shadow_announces_to_nobody_reading_the_live_views(applier: Views, reader: Reads) -> None:
    shadow = applier.shadow("_shadow")
    shadow.create()
    applier.apply(signup(1), 0, 1)
    shadow.apply(signup(2), 0, 5)
    heard(reader, 1)
    assert [b.position for b in reader.views.batches.recent()] == [1]
    shadow.drop()


def test_a_wait_for_a_position_wakes_on_the_notification_not_a_poll(
    applier: Views, reader: Reads
) -> None:
    applier.apply(signup(1), 0, 1)
    polls: list[int] = []
    polled = threading.Event()
    read = reader.watch._read

    def counted() -> int:
        position = read()
        polls.append(position)
        polled.set()  # after the read: a commit from now on is not in what it returned
        return position

    reader.watch._read = counted
    reader.watch.interval = reader.watch.heard_interval = 3600.0  # no second poll in time

    def commit_once_polled() -> None:
        if polled.wait(20):
            applier.apply(signup(2), 1, 2)

    committing = threading.Thread(target=commit_once_polled)
    committing.start()
    reached = run(reader.wait(2, timeout=20))
    committing.join()
    assert reached == 2 and polls == [1]
