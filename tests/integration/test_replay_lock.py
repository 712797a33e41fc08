"""Two replays of one database never run together: the second fails at once, in one line,
and changes nothing (the first one's shadow tables included), on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from billing_ledger.bootstrap import Deps, build
from billing_ledger.commands.replay import cmd_replay
from billing_ledger.projections.views import ViewRows
from billing_ledger.replay import rebuild
from billing_ledger.replay.rebuild import SHADOW_SUFFIX, catch_up, replay_lock
from billing_ledger.settings import Settings
from tests.support.app import settings_for
from tests.support.ledger import incoming
from tests.unit.builders import T, sub_event

REFUSAL = "billing-ledger replay: another replay is running on this database; nothing was changed"


@pytest.fixture
def deps(database_url: str) -> Iterator[Deps]:
    """A projected ledger whose live rows a replay would change (one row lost)."""
    deps = build(settings_for(database_url), run_projections=False)
    events = [sub_event("updated", f"evt_{i}", T + i, id=f"sub_{i}") for i in range(3)]
    deps.store.append([incoming(e) for e in events])
    catch_up(deps.store, deps.views, livemode=False)
    with deps.views.db.transaction() as cursor:
        cursor.execute(f"DELETE FROM {deps.views.snapshots} WHERE event_id = 'evt_1'")
    yield deps
    deps.close()


def state(deps: Deps) -> tuple[ViewRows, int, int, ViewRows]:
    """Live rows, tracked position, the store's head, and the shadow's rows."""
    shadow = deps.views.shadow(SHADOW_SUFFIX)
    return deps.views.rows(), deps.views.position(), deps.store.head(), shadow.rows()


def run_replay(config: Settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEDGER_DATABASE_URL": config.database_url}
    return subprocess.run(
        [sys.executable, "-m", "billing_ledger.cli", "replay"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_replay_while_another_process_holds_the_lock_refuses_and_changes_nothing(
    deps: Deps,
) -> None:
    shadow = deps.views.shadow(SHADOW_SUFFIX)
    with replay_lock(deps.store.db):  # a first replay, midway: its shadow half built
        shadow.create()
        catch_up(deps.store, shadow, livemode=False)
        before = state(deps)
        done = run_replay(deps.settings)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.strip().splitlines() == [REFUSAL]
        assert state(deps) == before
    shadow.drop()
    done = run_replay(deps.settings)  # the lock went with its holder
    assert done.returncode == 0, done.stdout + done.stderr
    assert "billing_snapshots: 1 added, 0 changed, 0 removed" in done.stdout


def test_two_replays_at_once_in_two_threads_the_second_refuses(
    deps: Deps, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    inside, proceed = threading.Event(), threading.Event()
    compare = rebuild.Rebuild.compare

    def paused_compare(self: rebuild.Rebuild, report: rebuild.RebuildReport) -> None:
        compare(self, report)
        if threading.current_thread() is thread:  # only the first replay pauses here,
            inside.set()  # its shadow built, holding the lock
            assert proceed.wait(60)

    monkeypatch.setattr(rebuild.Rebuild, "compare", paused_compare)
    args = argparse.Namespace(projection=None, dry_run=False)
    first: list[str] = []
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(cmd_replay(args, deps.settings, first.append))
    )
    thread.start()
    try:
        assert inside.wait(60)
        before = state(deps)
        second: list[str] = []
        assert cmd_replay(args, deps.settings, second.append) == 2
        assert second == []
        assert capsys.readouterr().err.strip().splitlines() == [REFUSAL]
        assert state(deps) == before
    finally:
        proceed.set()
        thread.join(60)
    assert results == [0]
    assert "  billing_snapshots: 1 added, 0 changed, 0 removed" in first
    assert first[-1].startswith("swapped: ")
