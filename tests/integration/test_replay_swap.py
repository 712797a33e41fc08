"""Replay's swap beside live reads and writers: no deadlock, no hang, no record when it fails."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from billing_ledger.bootstrap import Deps, build
from billing_ledger.commands.replay import cmd_replay
from billing_ledger.ledger.own_events import REPLAY
from billing_ledger.ledger.store import DatabaseUrl, StorageError
from billing_ledger.projections.views import ShadowBehindError, Views
from billing_ledger.replay.rebuild import (
    PlansFile,
    Rebuild,
    RebuildReport,
    SwapFailedError,
    SwapLocks,
    catch_up,
)
from billing_ledger.settings import Settings
from tests.integration.test_replay import PERIOD, USERS, B, lifecycle, shadow_exists
from tests.support.app import client_for, settings_for
from tests.support.databases import postgres_url
from tests.support.ledger import Ledger
from tests.unit.builders import DAY, sub_event

DEADLINE = 60.0  # what a test waits for a condition before it fails


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_url()


@contextmanager
def populated(url: str) -> Iterator[tuple[Settings, Deps]]:
    """Three users' lifecycles stored and projected; deps without a runner of their own."""
    config = settings_for(url)
    with client_for(config) as (client, deps):
        lifecycle(Ledger(client, deps))
    deps = build(config, run_projections=False)
    try:
        yield config, deps
    finally:
        deps.close()


def rebuild_of(deps: Deps, **options: Any) -> Rebuild:
    plans = PlansFile.read(deps.settings.plans_path, deps.plans)
    return Rebuild(deps.store, deps.views, plans, livemode=False, **options)


def in_thread(run: Callable[[], RebuildReport]) -> Future[RebuildReport]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(run)
    pool.shutdown(wait=False)
    return future


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.01)


def session(url: str) -> psycopg.Connection[Any]:
    """A PostgreSQL session of the test's own, as an operator's psql would be."""
    return psycopg.connect(DatabaseUrl.parse(url).conninfo())


def someone_waits_for(url: str, table: str) -> bool:
    """Whether some session is queued for a lock on `table`."""
    with psycopg.connect(DatabaseUrl.parse(url).conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
            (table,),
        ).fetchone()
    return bool(row and row[0])


def replays(deps: Deps) -> list[str]:
    return [e.event_id for e in deps.store.read(0, 10_000) if e.type == REPLAY]


class Readers:
    """Threads loading users' rows from the views (the uncached read) until stopped."""

    def __init__(self, deps: Deps, threads: int = 4) -> None:
        self.deps = deps
        self.stop = threading.Event()
        self.answered = 0
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._read, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _read(self) -> None:
        while not self.stop.is_set():
            for user in USERS:
                try:
                    assert self.deps.views.load_inputs(user).snapshots
                    self.answered += 1
                except StorageError as e:
                    self.failed.append(str(e))

    def finish(self) -> None:
        """Stop them; every one must come back (none hangs on a lock)."""
        self.stop.set()
        for thread in self.threads:
            thread.join(DEADLINE)
        assert not any(t.is_alive() for t in self.threads), "a read hung"


@pytest.mark.postgres
def test_a_swap_never_deadlocks_with_a_reader_between_the_links_and_the_snapshots(
    pg_url: str,
) -> None:
    with populated(pg_url) as (_, deps):
        views = deps.views
        reader = session(pg_url)  # as a read statement is once it has locked the links
        reader.execute(f"SELECT count(*) FROM {views.links}")
        swap = in_thread(
            lambda: rebuild_of(deps, locks=SwapLocks(timeout=DEADLINE)).run(dry_run=False)
        )
        try:
            wait_until(lambda: someone_waits_for(pg_url, views.links), "the swap waits")
            reader.execute(f"SELECT count(*) FROM {views.snapshots}")  # then the snapshots
            reader.commit()
            assert swap.result(DEADLINE).swapped
        finally:
            reader.close()
        assert len(replays(deps)) == 1


@pytest.mark.postgres
def test_an_idle_transaction_on_a_view_table_fails_the_swap_clearly_while_reads_go_on(
    pg_url: str,
) -> None:
    with populated(pg_url) as (config, deps):
        views = deps.views
        before, position = views.rows(), views.position()
        idle = session(pg_url)  # idle in transaction, holding the snapshot table
        idle.execute(f"SELECT count(*) FROM {views.snapshots}")
        pid = idle.info.backend_pid
        readers = Readers(deps)
        locks = SwapLocks(timeout=0.2, attempts=3, backoff=0.05)
        swap = in_thread(lambda: rebuild_of(deps, locks=locks).run(dry_run=False))
        try:
            with pytest.raises(SwapFailedError) as failed:
                swap.result(DEADLINE)
        finally:
            try:
                readers.finish()  # none hung, the idle session still open
            finally:
                idle.close()
        assert str(failed.value).startswith("could not swap in 3 attempts: the live tables (")
        # Readers that waited out the attempt behind the swap may be listed too (active).
        assert "held by pid " in str(failed.value)
        assert f"pid {pid} (idle in transaction)" in str(failed.value)
        assert readers.answered > 0 and readers.failed == []
        assert replays(deps) == []  # a failed swap records nothing
        assert views.rows() == before and views.position() == position
        assert not shadow_exists(config)


def test_a_swap_that_fails_holding_the_tables_leaves_no_replay_record(database_url: str) -> None:
    def crash(stage: str) -> None:
        if stage == "locked":
            raise RuntimeError("the replay's process went away")

    with populated(database_url) as (config, deps):
        before, position = deps.views.rows(), deps.views.position()
        with pytest.raises(RuntimeError, match="went away"):
            rebuild_of(deps, hold=crash).run(dry_run=False)
        assert replays(deps) == []
        assert deps.views.rows() == before and deps.views.position() == position
        assert not shadow_exists(config)
        report = rebuild_of(deps).run(dry_run=False)  # and the next run swaps as usual
        assert report.swapped and len(replays(deps)) == 1


def test_replays_beside_readers_and_a_runner_applying_deliveries_all_swap(
    database_url: str,
) -> None:
    config = settings_for(database_url)
    with client_for(config) as (client, served):
        ledger = Ledger(client, served)
        lifecycle(ledger)
        deps = build(config, run_projections=False)
        readers = Readers(deps)
        try:
            for round_ in range(3):
                update = {"id": "sub_1", "customer": "cus_1", "period": PERIOD}
                at = B + 36 * DAY + 10 * round_
                events = [
                    sub_event("updated", f"evt_r{round_}_{n}", at + n, **update) for n in range(5)
                ]
                ledger.deliver(*events[:2])  # the app's runner applies these meanwhile
                assert rebuild_of(deps).run(dry_run=False).swapped
                ledger.deliver(*events[2:])
                assert ledger.features("u_1") == ["core", "pro"]
            readers.finish()
            assert readers.answered > 0 and readers.failed == []
            assert len(replays(deps)) == 3
            wait_until(lambda: served.runner.position == deps.store.head(), "caught up")
            assert served.views.position() == served.runner.position
        finally:
            readers.finish()  # before closing what they read through
            deps.close()


@pytest.mark.postgres
def test_a_read_behind_a_lock_held_for_ever_answers_unavailable_instead_of_hanging(
    pg_url: str,
) -> None:
    config = settings_for(pg_url)
    with client_for(config) as (client, deps):
        lifecycle(Ledger(client, deps))
        operator = session(pg_url)  # someone's ALTER TABLE, left open
        operator.execute(f"LOCK TABLE {deps.views.links} IN ACCESS EXCLUSIVE MODE")
        try:
            pool = ThreadPoolExecutor(1)
            read = pool.submit(client.get, "/v1/users/u_2/entitlements")  # not cached yet
            response = read.result(DEADLINE)
            pool.shutdown()
        finally:
            operator.close()
        assert response.status_code == 503
        assert response.json()["error"] == "storage_unavailable"
        assert client.get("/v1/users/u_2/entitlements").status_code == 200  # once it is gone


def rebuilt_without(deps: Deps, event_id: str, suffix: str = "_other") -> Views:
    """The views rebuilt from the store, less one event's rows (as a changed fold might)."""
    shadow = deps.views.shadow(suffix)
    shadow.drop()
    shadow.create()
    catch_up(deps.store, shadow, livemode=False)
    with deps.views.db.transaction() as cursor:
        cursor.execute(f"DELETE FROM {shadow.snapshots} WHERE event_id = '{event_id}'")
    return shadow


def test_a_process_whose_tables_another_process_swapped_forgets_what_it_cached(
    database_url: str,
) -> None:
    with populated(database_url) as (config, deps):
        position = deps.views.position()
        cached = deps.views.inputs("u_2", position)
        other = build(config, run_projections=False)  # another process, replaying
        try:
            other.views.promote(rebuilt_without(other, "evt_ok_2"))
        finally:
            other.close()
        assert deps.views.position() == position  # the same position: the generation tells
        again = deps.views.inputs("u_2", position)
        assert len(again.snapshots) == len(cached.snapshots) - 1


def test_a_rebuild_behind_the_live_tables_is_refused_and_changes_nothing(
    database_url: str,
) -> None:
    with populated(database_url) as (_, deps):
        views = deps.views
        shadow = rebuilt_without(deps, "evt_ok_2")
        before, position = views.rows(), views.position()
        views.apply([], position, position + 1)  # the live tables move on meanwhile
        with pytest.raises(ShadowBehindError):
            views.promote(shadow)
        assert views.rows() == before and views.position() == position + 1
        shadow.drop()


@pytest.mark.postgres
def test_replay_beside_an_idle_transaction_exits_2_in_one_line_naming_the_session(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with populated(pg_url) as (config, deps):
        idle = session(pg_url)
        idle.execute(f"SELECT count(*) FROM {deps.views.links}")
        pid = idle.info.backend_pid
        try:
            args = argparse.Namespace(projection=None, dry_run=False)
            assert cmd_replay(args, config) == 2  # after its attempts (about 11 s)
        finally:
            idle.close()
        assert capsys.readouterr().err == (
            "billing-ledger replay: could not swap in 6 attempts: the live tables "
            "(billing_links, billing_snapshots, billing_cards, billing_current, billing_tracking, "
            "billing_skipped, billing_catalog) "
            "stayed locked for 0.5 s, "
            f"held by pid {pid} (idle in transaction); nothing was changed\n"
        )
        assert replays(deps) == []
