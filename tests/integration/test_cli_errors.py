"""Every command that opens the store ends with one line and a non-zero status when it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PASSWORD = "pw-not-for-eyes"
API_KEY = "sk_test_not_for_eyes"

# Each command that touches the configured storage, with the arguments it needs to get there.
COMMANDS = [
    ["serve", "--port", "0"],
    ["project"],
    ["replay"],
    ["backfill"],
    ["reconcile"],
    ["explain", "u_1"],
]


def run_cli(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "STRIPE_API_KEY": API_KEY}
    environment.pop("LEDGER_DEBUG", None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "billing_ledger.cli", *argv],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(done: subprocess.CompletedProcess[str], command: str) -> str:
    """The single stderr line of a failed command, checked for shape and for secrets."""
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"billing-ledger {command}: ")
    assert PASSWORD not in done.stderr and API_KEY not in done.stderr
    return lines[0]


def unreachable_urls(tmp_path: Path) -> dict[str, str]:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    return {
        "postgres-refused": f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/ledger",
        "sqlite-file-in-the-way": f"sqlite:///{in_the_way / 'ledger.db'}",
        "sqlite-path-is-a-folder": f"sqlite:///{tmp_path}",
    }


@pytest.mark.parametrize(
    "kind", ["postgres-refused", "sqlite-file-in-the-way", "sqlite-path-is-a-folder"]
)
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: argv[0])
def test_unreachable_storage_is_one_line_and_status_2(
    argv: list[str], kind: str, tmp_path: Path
) -> None:
    done = run_cli(argv, LEDGER_DATABASE_URL=unreachable_urls(tmp_path)[kind])
    line = one_line(done, argv[0])
    assert "storage unavailable" in line
    assert done.returncode == 2


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: argv[0])
def test_a_bad_database_url_never_shows_its_password(argv: list[str]) -> None:
    url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432/ledger"
    done = run_cli(argv, LEDGER_DATABASE_URL=url)
    assert "unsupported database URL scheme" in one_line(done, argv[0])
    assert done.returncode == 2


# A command that fails in a way nobody planned for (the bundled demo stands in for any).
BROKEN = """
import os, sys
from billing_ledger import cli

def broken(args, settings):
    raise RuntimeError("nobody planned this\\nkey " + os.environ["STRIPE_API_KEY"])

cli.COMMANDS["demo"] = broken
sys.exit(cli.main(["demo"]))
"""


def run_broken(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "STRIPE_API_KEY": API_KEY}
    environment.pop("LEDGER_DEBUG", None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", BROKEN], env=environment, capture_output=True, text=True, timeout=60
    )


def test_an_unexpected_error_is_one_line_and_status_1() -> None:
    done = run_broken()
    line = one_line(done, "demo")
    assert "RuntimeError" in line and "nobody planned this key ***" in line
    assert done.returncode == 1


def test_ledger_debug_shows_the_traceback_of_an_unexpected_error() -> None:
    done = run_broken(LEDGER_DEBUG="1")
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "nobody planned this" in done.stderr
