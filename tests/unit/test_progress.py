"""The progress of a long command: a line every few seconds when not on a terminal, a bar on one."""

from __future__ import annotations

import io

from billing_ledger.progress import Progress, line


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr in an operator's shell does."""

    def isatty(self) -> bool:
        return True


def test_a_line_names_the_count_of_the_total_the_percentage_the_rate_and_the_time_left() -> None:
    assert line("replay rebuild", 45_000, 100_000, 5.0) == (
        "replay rebuild: 45,000/100,000 (45%), 9,000/s, ETA 6s"
    )
    assert line("replay rebuild", 100_000, 100_000, 8.0).endswith("(100%), 12,500/s, done in 8.0s")
    assert line("backfill", 300, None, 3.0) == "backfill: 300 done, 100/s, 3s so far"


def test_off_a_terminal_a_long_run_prints_one_line_every_interval_and_its_last() -> None:
    clock, out = Clock(), io.StringIO()
    with Progress("rebuild", 1000, stream=out, interval=5.0, clock=clock) as progress:
        for _ in range(10):
            clock.now += 1.0
            progress.advance(100)
    lines = out.getvalue().splitlines()
    assert lines == [
        "rebuild: 500/1,000 (50%), 100/s, ETA 5s",
        "rebuild: 1,000/1,000 (100%), 100/s, done in 10.0s",
    ]


def test_a_short_run_off_a_terminal_says_nothing() -> None:
    clock, out = Clock(), io.StringIO()
    with Progress("compare", 10, stream=out, clock=clock) as progress:
        progress.advance(10)
    assert out.getvalue() == ""


def test_on_a_terminal_a_bar_shows_the_total_and_the_percentage() -> None:
    out = Terminal()
    with Progress("replay rebuild", 200, stream=out) as progress:
        progress.advance(200)
    drawn = out.getvalue()
    assert "replay rebuild" in drawn and "200/200" in drawn and "100%" in drawn


def test_following_samples_a_count_kept_elsewhere_until_the_block_ends() -> None:
    clock, out = Clock(), io.StringIO()
    count = [0]
    with (
        Progress("catch-up", 50, stream=out, interval=0.0, clock=clock) as progress,
        progress.following(lambda: count[0]),
    ):
        count[0] = 50
        clock.now += 1.0
    assert progress.done == 50
    assert "catch-up: 50/50 (100%)" in out.getvalue()
