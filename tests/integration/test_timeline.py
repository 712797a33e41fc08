"""GET /v1/users/{id}/timeline and `explain --json | --csv` on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Iterator

import orjson
import pytest
from starlette.testclient import TestClient

from billing_ledger.commands.replay import cmd_explain
from billing_ledger.demo import USER, lifecycle
from billing_ledger.settings import Settings
from tests.support.app import client_for, settings_for
from tests.support.ledger import Ledger

T = 1767225600
DAY = 86400
M = 30 * DAY
EPISODE = T + M + DAY  # a day into the past_due episode
SCHEDULED = T + M + 9 * DAY  # the recovery and the scheduled cancellation are behind
TOKEN = "s3cret-token"


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[Ledger, Settings]]:
    settings = settings_for(database_url, api_token=TOKEN)
    with client_for(settings) as (client, deps):
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        ledger = Ledger(client, deps)
        ledger.deliver(*lifecycle(T))
        yield ledger, settings


def _timeline(ledger: Ledger, at: int) -> dict[str, object]:
    return ledger.get(f"/v1/users/{USER}/timeline", at=at)


def _explain(settings: Settings, at: int, **shape: bool) -> list[str]:
    lines: list[str] = []
    args = argparse.Namespace(
        user_id=USER, feature=None, at=str(at), json=shape.get("json", False),
        csv=shape.get("csv", False),
    )  # fmt: skip
    assert cmd_explain(args, settings, lines.append) == 0
    return lines


def test_the_demo_timeline_holds_the_failure_the_episode_the_recovery_and_the_schedule(
    served: tuple[Ledger, Settings],
) -> None:
    ledger, _ = served
    body = _timeline(ledger, SCHEDULED)
    entries = body["entries"]
    assert isinstance(entries, list)
    found = [(e["kind"], e["event_id"], e["object_id"]) for e in entries]
    assert found == [
        ("link", "evt_demo_02", "cus_demo"),
        ("subscription_status", "evt_demo_01", "sub_demo"),
        ("payment_succeeded", "evt_demo_03", "in_demo_1"),
        ("subscription_status", "evt_demo_05", "sub_demo"),
        ("payment_failed", "evt_demo_04", "in_demo_2"),
        ("subscription_status", "evt_demo_07", "sub_demo"),
        ("payment_succeeded", "evt_demo_06", "in_demo_2"),
        ("cancellation_scheduled", "evt_demo_08", "sub_demo"),
    ]
    failed = entries[4]
    assert failed["at"] == T + M and failed["event_type"] == "invoice.payment_failed"
    assert entries[3]["detail"] == "sub_demo active -> past_due"
    assert entries[5]["detail"] == "sub_demo past_due -> active"
    assert entries[1]["features_before"] == ["core"]
    assert entries[1]["features_after"] == ["core", "pro"]
    assert [u["kind"] for u in body["upcoming"]] == ["cancellation_scheduled", "rule"]  # type: ignore[union-attr]


def test_during_the_past_due_episode_the_grace_end_is_upcoming(
    served: tuple[Ledger, Settings],
) -> None:
    ledger, _ = served
    body = _timeline(ledger, EPISODE)
    assert body["upcoming"] == [
        {
            "at": T + M + 7 * DAY,
            "kind": "rule",
            "detail": "loses pro at the grace end, 7 Feb 2026, unless paid (sub_demo)",
        }
    ]


def test_explain_json_prints_the_same_body_as_the_read(served: tuple[Ledger, Settings]) -> None:
    ledger, settings = served
    for at in (EPISODE, SCHEDULED, T + 70 * DAY):
        (line,) = _explain(settings, at, json=True)
        assert orjson.loads(line) == _timeline(ledger, at)


def test_explain_csv_has_a_row_per_entry_and_per_upcoming_change(
    served: tuple[Ledger, Settings],
) -> None:
    _, settings = served
    rows = list(csv.DictReader(io.StringIO("\n".join(_explain(settings, EPISODE, csv=True)))))
    assert [r["section"] for r in rows] == ["entry"] * 5 + ["upcoming"]
    assert rows[4]["kind"] == "payment_failed" and rows[4]["event_id"] == "evt_demo_04"
    assert rows[-1]["features_before"] == "core pro" and rows[-1]["features_after"] == "core"


def test_explain_in_words_names_the_failure_and_what_comes_next(
    served: tuple[Ledger, Settings],
) -> None:
    _, settings = served
    lines = _explain(settings, EPISODE)
    assert any("payment_failed" in line and "evt_demo_04" in line for line in lines)
    assert lines[lines.index("upcoming, if no further event arrives:") + 1].endswith(
        "loses pro at the grace end, 7 Feb 2026, unless paid (sub_demo)"
    )


def test_the_timeline_needs_the_token_and_a_readable_at(served: tuple[Ledger, Settings]) -> None:
    ledger, _ = served
    bare = TestClient(ledger.client.app)
    assert bare.get(f"/v1/users/{USER}/timeline").status_code == 401
    ledger.get(f"/v1/users/{USER}/timeline", status=400, at="next week")
    unseen = ledger.get("/v1/users/u_nobody/timeline")
    assert unseen == {"entries": [], "upcoming": []}


def test_explain_refuses_a_feature_with_json_in_one_line(
    served: tuple[Ledger, Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    _, settings = served
    args = argparse.Namespace(user_id=USER, feature="pro", at=None, json=True, csv=False)
    assert cmd_explain(args, settings) == 2
    assert capsys.readouterr().err == (
        "billing-ledger explain: --feature shapes the words only: --json and --csv print it all\n"
    )
