"""Process-wide tuning of the long-running commands."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from billing_ledger.process import GC_THRESHOLDS, default_workers, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_tune_gc_collects_rarely_and_freezes_what_startup_allocated(restored_gc: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # above the interpreter's default first generation
    assert gc.get_freeze_count() > 0


def test_the_long_running_commands_tune_the_collector(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from billing_ledger import cli

    called: list[str] = []
    monkeypatch.setattr(cli, "tune_gc", lambda: called.append("tuned"))
    for command in ("project", "explain"):
        monkeypatch.setitem(cli.COMMANDS, command, lambda args, settings: 0)
    database = tmp_path / "ledger.db"
    database.touch()  # explain only reads: it refuses a database that is not there
    monkeypatch.setenv("LEDGER_DATABASE_URL", f"sqlite:///{database}")
    assert cli.main(["explain", "u_1"]) == 0
    assert called == []
    assert cli.main(["project"]) == 0
    assert called == ["tuned"]


@pytest.mark.parametrize(("cores", "expected"), [(None, 1), (1, 1), (2, 2), (4, 4), (64, 4)])
def test_serve_defaults_to_the_machines_cores_at_most_four(
    monkeypatch: pytest.MonkeyPatch, cores: int | None, expected: int
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_workers() == expected
