"""`billing-ledger project`: the runner alone, in the foreground, until SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from billing_ledger.ledger.store import Database, DatabaseUrl, EventStore
from billing_ledger.projections.views import Views
from tests.support.ledger import incoming
from tests.unit.builders import T, sub_event


def test_project_applies_the_store_and_stops_cleanly_on_sigterm(database_url: str) -> None:
    store = EventStore(Database(DatabaseUrl.parse(database_url)))
    store.create()
    views = Views(store.db)
    views.create()
    try:
        store.append([incoming(sub_event("updated", f"evt_{i}", T + i)) for i in range(5)])
        head = store.head()
        env = {**os.environ, "LEDGER_DATABASE_URL": database_url}
        process = subprocess.Popen(
            [sys.executable, "-m", "billing_ledger.cli", "project"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while views.position() < head and time.monotonic() < deadline:
                time.sleep(0.05)
            assert views.position() == head
            assert len(views.rows().snapshots) == 5
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output.decode()
    finally:
        store.db.close()


def test_project_with_a_bad_plans_file_exits_with_one_line(
    database_url: str, tmp_path: Path
) -> None:
    plans = tmp_path / "plans.toml"
    plans.write_text("[[plans]]\nid = 5\n")
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url, "LEDGER_PLANS": str(plans)}
    done = subprocess.run(
        [sys.executable, "-m", "billing_ledger.cli", "project"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "LEDGER_PLANS" in lines[0]
