"""`billing-ledger backfill` against localstripe, on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from billing_ledger import cli
from billing_ledger.commands.replay import cmd_backfill
from billing_ledger.ledger.own_events import BACKFILL_CURSOR, BACKFILL_GAP
from billing_ledger.replay.backfill import Backfill, last_cursor
from billing_ledger.settings import Settings
from billing_ledger.stripe_errors import StripeUnavailableError
from tests.support.databases import open_store
from tests.support.http_stub import serving_get
from tests.support.localstripe import API_KEY, flush, list_events, stripe_client

DAY = 86400


def make_customers(url: str, count: int) -> None:
    client = stripe_client(url)
    for i in range(count):
        client.v1.customers.create({"email": f"c{i}@example.com"})


def settings(database_url: str, api_base: str) -> Settings:
    return Settings(database_url=database_url, stripe_api_key=API_KEY, stripe_api_base=api_base)


def run(
    database_url: str, api_base: str, since: str | None = None, types: str | None = None
) -> list[str]:
    lines: list[str] = []
    args = argparse.Namespace(since=since, types=types)
    assert cmd_backfill(args, settings(database_url, api_base), lines.append) == 0
    return lines


def test_backfill_appends_every_listed_event_once_and_records_the_newest_as_its_cursor(
    database_url: str, localstripe_url: str
) -> None:
    flush(localstripe_url)
    make_customers(localstripe_url, 130)  # more than one page of 100
    listed = list_events(localstripe_url)
    lines = run(database_url, localstripe_url)
    store = open_store(database_url)
    stored = [e for e in store.read(0, 10_000) if e.source == "backfill"]
    assert sorted(e.event_id for e in stored) == sorted(str(e["id"]) for e in listed)
    # Each page is appended sorted by (created, id); localstripe lists oldest first.
    page = [(e.created, e.event_id) for e in stored[:100]]
    assert page == sorted(page)
    assert "fetched 130, recorded 130, duplicates 0, alternates 0" in lines[-1]
    cursor = last_cursor(store)
    newest = max((int(e["created"]), str(e["id"])) for e in listed)
    assert cursor is not None and cursor["newest_event_id"] == newest[1]
    # The stored body is the JSON the Events API listed, not the SDK's re-rendering.
    first = stored[0]
    assert first.body == orjson.dumps(listed_by_id(listed)[first.event_id])


def listed_by_id(listed: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(e["id"]): e for e in listed}


def test_a_second_backfill_costs_nothing_but_duplicates(
    database_url: str, localstripe_url: str
) -> None:
    flush(localstripe_url)
    make_customers(localstripe_url, 5)
    run(database_url, localstripe_url)
    head = open_store(database_url).head()
    lines = run(database_url, localstripe_url)
    store = open_store(database_url)
    assert "fetched 5, recorded 0, duplicates 5, alternates 0" in lines[-1]
    new = store.read(head, 100)
    assert [e.type for e in new] == [BACKFILL_CURSOR]  # only the second run's cursor


def test_types_are_filtered_here_when_the_api_refuses_types(
    database_url: str, localstripe_url: str
) -> None:
    flush(localstripe_url)
    client = stripe_client(localstripe_url)
    customer = client.v1.customers.create({"email": "t@example.com"})
    client.v1.customers.update(customer.id, {"metadata": {"app_user_id": "u_1"}})
    lines = run(database_url, localstripe_url, types="customer.updated")
    stored = [e.type for e in open_store(database_url).read(0, 100) if e.source == "backfill"]
    assert stored == ["customer.updated"]
    assert "fetched 1, recorded 1" in lines[-1]


def test_since_beyond_stripes_retention_warns_and_records_the_gap(
    database_url: str, localstripe_url: str
) -> None:
    flush(localstripe_url)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 45 * DAY))
    lines = run(database_url, localstripe_url, since=since)
    gaps = [e for e in open_store(database_url).read(0, 100) if e.type == BACKFILL_GAP]
    assert lines[0].startswith("warning: --since") and "30-day retention" in lines[0]
    assert len(gaps) == 1
    gap = gaps[0].payload()["data"]["object"]
    assert gap["until"] - gap["from"] == pytest.approx(15 * DAY, abs=5)


def test_a_default_run_starts_an_hour_before_the_last_cursor(
    database_url: str, localstripe_url: str
) -> None:
    flush(localstripe_url)
    make_customers(localstripe_url, 1)
    run(database_url, localstripe_url)
    newest = int(list_events(localstripe_url)[-1]["created"])
    lines = run(database_url, localstripe_url)
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest - 3600)) in lines[-1]


def test_a_missing_api_key_exits_non_zero_with_one_line(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    assert cli.main(["backfill"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["billing-ledger backfill: not_configured: STRIPE_API_KEY is not set"]


def test_a_bad_since_exits_2_with_one_line(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    assert cli.main(["backfill", "--since", "last tuesday"]) == 2
    assert "--since: expected ISO 8601" in capsys.readouterr().err


# -- back-off: a proxy in front of localstripe that refuses the first requests ---------


@contextmanager
def refusing_proxy(upstream: str, statuses: list[int]) -> Iterator[tuple[str, list[int]]]:
    """Answer the given statuses to the first requests, then forward to `upstream`."""
    answered: list[int] = []

    def answer(path: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
        if len(answered) < len(statuses):
            status, body = statuses[len(answered)], b'{"error": {"message": "slow down"}}'
        else:
            auth = {"Authorization": headers["Authorization"]}
            reply = httpx.get(upstream + path, headers=auth)
            status, body = reply.status_code, reply.content
        answered.append(status)
        return status, body

    with serving_get(answer) as url:
        yield url, answered


def test_429_and_5xx_are_retried_with_exponential_bounded_delays(
    database_url: str, localstripe_url: str
) -> None:
    flush(localstripe_url)
    make_customers(localstripe_url, 3)
    slept: list[float] = []
    with refusing_proxy(localstripe_url, [429, 429, 503]) as (proxy, answered):
        client = stripe_client(proxy)
        report = Backfill(open_store(database_url), client, livemode=False, sleep=slept.append).run(
            None, None
        )
    assert answered == [429, 429, 503, 200]
    assert slept == [0.5, 1.0, 2.0]
    assert report.recorded == 3


def test_a_stripe_that_keeps_refusing_fails_in_one_line_after_bounded_tries(
    database_url: str, localstripe_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with refusing_proxy(localstripe_url, [429] * 10) as (proxy, answered):
        slept: list[float] = []
        with pytest.raises(StripeUnavailableError, match=r"^GET /v1/events: HTTP 429: "):
            Backfill(
                open_store(database_url), stripe_client(proxy), livemode=False, sleep=slept.append
            ).run(None, None)
    assert len(answered) == 6 and max(slept) <= 8.0


@pytest.mark.parametrize(
    "argv", [["backfill"], ["reconcile"], ["replay"], ["replay", "--dry-run"], ["explain", "u_1"]]
)
def test_every_operation_on_unreachable_storage_exits_2_in_one_line(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("LEDGER_DATABASE_URL", f"sqlite:///{tmp_path}/a_file/ledger.db")
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"billing-ledger {argv[0]}: storage unavailable: ")
