"""The command line as an operator meets it: a mistyped path, an unreachable server, a typo."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import orjson
import pytest

from billing_ledger.cli import READS, parser
from tests.support.databases import PG_BASE, open_store
from tests.support.ledger import incoming
from tests.support.signing import event_body

PASSWORD = "pw-not-for-eyes"


def run_cli(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    environment.pop("LEDGER_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "billing_ledger.cli", *argv],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def failure_line(done: subprocess.CompletedProcess[str], command: str) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"billing-ledger {command}: "), done.stderr
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "argv", [["explain", "u_1"], ["verify"], ["replay", "--dry-run"]], ids=lambda a: " ".join(a)
)
def test_a_read_only_command_refuses_a_missing_sqlite_file_and_creates_nothing(
    argv: list[str], tmp_path: Path
) -> None:
    typo = tmp_path / "legder" / "ledger.db"
    done = run_cli(argv, LEDGER_DATABASE_URL=f"sqlite:///{typo}")
    line = failure_line(done, argv[0])
    assert f"no SQLite database at {typo}" in line
    assert not typo.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_refused_postgres_port_names_host_port_and_refused() -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/ledger"
    line = failure_line(run_cli(["explain", "u_1"], LEDGER_DATABASE_URL=url), "explain")
    assert "PostgreSQL at 127.0.0.1:1" in line and "refused" in line


def test_a_missing_postgres_database_is_named() -> None:
    base = PG_BASE.rsplit("/", 1)[0]
    url = f"{base}/no_such_ledger_db"
    line = failure_line(run_cli(["verify"], LEDGER_DATABASE_URL=url), "verify")
    assert "no such database 'no_such_ledger_db'" in line


def test_an_unknown_feature_lists_the_known_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    open_store(url).db.close()
    line = failure_line(
        run_cli(["explain", "u_1", "--feature", "nonexistent"], LEDGER_DATABASE_URL=url), "explain"
    )
    assert "unknown feature 'nonexistent' (known: core," in line and "pro" in line


def test_version_names_the_installed_distribution() -> None:
    done = run_cli(["--version"])
    assert done.returncode == 0
    assert done.stdout.strip() == f"billing-ledger {version('billing-ledger')}"


def test_every_option_has_help_and_every_command_names_the_variables_it_reads() -> None:
    top = parser()
    (commands,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == set(READS)
    for name, command in commands.choices.items():
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        for variable in READS[name]:
            assert variable in (command.epilog or ""), (name, variable)


def test_a_command_names_its_database_masked_and_its_event_count(database_url: str) -> None:
    store = open_store(database_url)
    store.append([incoming({"id": f"evt_{i}", **_envelope(i)}) for i in range(3)])
    store.db.close()
    shown = database_url
    if database_url.startswith("postgresql://postgres@"):
        database_url = database_url.replace("postgres@", f"postgres:{PASSWORD}@", 1)
        shown = shown.replace("postgres@", "postgres:***@", 1)
    done = run_cli(["explain", "u_1"], LEDGER_DATABASE_URL=database_url)
    assert done.returncode == 0, done.stderr
    assert f"billing-ledger explain: database {shown} (3 events)" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def test_the_catch_up_before_explain_does_not_bury_the_answer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = open_store(url)
    for start in range(0, 3000, 500):
        store.append(
            [incoming({"id": f"evt_{i}", **_envelope(i)}) for i in range(start, start + 500)]
        )
    store.db.close()
    done = run_cli(["explain", "u_1"], LEDGER_DATABASE_URL=url)
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.strip().splitlines()  # no line per batch of the catch-up
    assert line.endswith(
        f"INFO billing_ledger.cli billing-ledger explain: database "
        f"sqlite:///{tmp_path / 'ledger.db'} (3,000 events)"
    )
    assert done.stdout.startswith("u_1 at ")


def _envelope(i: int) -> dict[str, object]:
    body = orjson.loads(
        event_body(
            f"evt_{i}",
            obj={"id": f"cus_{i % 50}", "object": "customer"},
            event_type="customer.updated",
        )
    )
    assert isinstance(body, dict)
    return body


def test_a_mistyped_command_names_the_nearest_one() -> None:
    done = run_cli(["expain", "u_1"])
    assert done.returncode == 2
    assert "invalid choice: 'expain'" in done.stderr and "did you mean 'explain'?" in done.stderr
