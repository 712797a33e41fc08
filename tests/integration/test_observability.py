"""Logs and metrics: one logfmt line per ingestion and per projection batch or failure,
and every Prometheus series of /metrics present and moving with what happens."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from billing_ledger.bootstrap import Deps
from billing_ledger.ledger.logfmt import fields
from tests.support.app import client_for, settings_for
from tests.support.signing import event_body, sign

PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
POISON = orjson.dumps(  # an invoice whose object is a bare id: the fold cannot read it
    {
        "id": "evt_poison",
        "object": "event",
        "type": "invoice.created",
        "created": 1767225600,
        "livemode": False,
        "data": {"object": "in_1"},
    }
)


@pytest.fixture
def app(database_url: str) -> Iterator[tuple[TestClient, Deps]]:
    """The real app on SQLite and PostgreSQL."""
    with client_for(settings_for(database_url, max_body_bytes=8192)) as pair:
        yield pair


def parse(line: str) -> dict[str, str | None]:
    """A logfmt line back into its fields ("-" is a field the line could not know)."""
    found: dict[str, str | None] = {}
    for key, raw in PAIR.findall(line):
        found[key] = None if raw == "-" else json.loads(raw) if raw.startswith('"') else raw
    assert " ".join(f"{k}={v}" for k, v in PAIR.findall(line)) == line, line  # nothing else
    return found


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[dict[str, str | None]]:
    """Every captured logfmt line of one logger, parsed (the runner's lock notes are prose)."""
    messages = [r.getMessage() for r in caplog.records if r.name == logger]
    return [parse(m) for m in messages if PAIR.match(m)]


def deliver(client: TestClient, body: bytes, signature: str | None = None) -> int:
    """POST a body signed with the test secret (or with the given header)."""
    header = sign(body) if signature is None else signature
    return client.post(
        "/webhooks/stripe", content=body, headers={"stripe-signature": header}
    ).status_code


# -- logs -------------------------------------------------------------------------------


def test_ingestion_logs_event_id_type_position_and_outcome_on_one_line(
    app: tuple[TestClient, Deps], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = app
    caplog.set_level(logging.INFO, logger="billing_ledger.webhooks")
    body = event_body("evt_logged", "invoice.paid")
    assert deliver(client, body) == deliver(client, body) == 200
    assert deliver(client, body, "t=1,v1=00") == 400
    assert deliver(client, b'{"object": "event"}') == 400
    recorded, duplicate, bad_signature, malformed = lines(caplog, "billing_ledger.webhooks")
    common = {"event": "evt_logged", "type": "invoice.paid", "livemode": "False"}
    assert recorded == {**common, "position": "1", "outcome": "recorded"}
    assert duplicate == {**common, "position": "1", "outcome": "duplicate"}
    for rejected, reason in ((bad_signature, "invalid_signature"), (malformed, "malformed_event")):
        assert rejected["event"] is rejected["type"] is rejected["position"] is None
        assert (rejected["outcome"], rejected["reason"]) == ("rejected", reason)
        assert rejected["message"]


def test_a_hostile_event_id_cannot_forge_a_log_line_or_a_field(
    app: tuple[TestClient, Deps], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = app
    caplog.set_level(logging.INFO, logger="billing_ledger.webhooks")
    hostile = 'evt_1\nevent=evt_forged outcome=recorded "x=1'
    assert deliver(client, event_body(hostile, "a type")) == 200
    (line,) = [r.getMessage() for r in caplog.records if r.name == "billing_ledger.webhooks"]
    assert "\n" not in line
    assert parse(line)["event"] == hostile and parse(line)["type"] == "a type"


def test_the_runner_logs_each_applied_batch_and_each_event_it_skipped(
    app: tuple[TestClient, Deps], caplog: pytest.LogCaptureFixture
) -> None:
    client, deps = app
    caplog.set_level(logging.INFO, logger="billing_ledger.projections")
    deps.runner.stop()  # both events wait in the store, to be applied as one batch
    assert deliver(client, event_body("evt_a")) == deliver(client, event_body("evt_b")) == 200
    deps.runner.start()
    assert deps.runner.wait_for(2, 10)
    assert deliver(client, POISON) == 200  # acknowledged all the same: the fold skips it
    assert deps.runner.wait_for(3, 10)
    logged = lines(caplog, "billing_ledger.projections")
    applied = [line for line in logged if line.get("outcome") == "applied"]
    batch = {"projection": "billing", "outcome": "applied"}
    assert applied == [
        {**batch, "events": "2", "after": "0", "position": "2"},
        {**batch, "events": "0", "after": "2", "position": "3"},
    ]
    [skipped] = [line for line in logged if line.get("outcome") == "skipped"]
    assert (skipped["projection"], skipped["event"]) == ("billing", "evt_poison")
    assert (skipped["type"], skipped["position"]) == ("invoice.created", "3")
    assert "data.object is missing" in (skipped["reason"] or "")
    assert deps.runner.status()["billing"]["error"] is None
    assert sample(scrape(client), "ledger_projection_skipped_events", projection="billing") == 1


def test_logfmt_quotes_what_is_not_plainly_safe() -> None:
    assert fields(a="evt_1", b=3, c=None, d=True, e="two words", f="-") == (
        'a=evt_1 b=3 c=- d=True e="two words" f="-"'
    )


# -- metrics ----------------------------------------------------------------------------


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(
    scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """One sample's value, 0 when the series has not appeared yet."""
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def test_ingestion_counters_move_by_outcome_and_rejection_reason(
    app: tuple[TestClient, Deps],
) -> None:
    client, deps = app
    before = scrape(client)
    body = event_body("evt_counted")
    deliver(client, body)
    deliver(client, body)
    deliver(client, body, "t=1,v1=00")
    deliver(client, b"[]")
    deliver(client, event_body("evt_big", pad_to=9000))
    with deps.store.db.transaction() as cursor:
        cursor.execute(f"DROP TABLE {deps.store.db.table('ledger_events')}")
    assert deliver(client, event_body("evt_down")) == 503
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("ledger_webhook_events_total", outcome="recorded") == 1
    assert moved("ledger_webhook_events_total", outcome="duplicate") == 1
    for reason in (
        "invalid_signature",
        "malformed_event",
        "payload_too_large",
        "storage_unavailable",
    ):
        assert moved("ledger_webhook_rejections_total", reason=reason) == 1, reason


def test_an_unconfigured_webhook_counts_as_a_rejection(database_url: str) -> None:
    with client_for(settings_for(database_url, webhook_secrets=())) as (client, _):
        assert deliver(client, event_body("evt_nc")) == 503
        scraped = scrape(client)
    assert sample(scraped, "ledger_webhook_rejections_total", reason="not_configured") == 1


def test_projection_lag_and_head_follow_the_store_and_the_runner(
    app: tuple[TestClient, Deps],
) -> None:
    client, deps = app
    deps.runner.stop()
    for i in range(3):
        deliver(client, event_body(f"evt_lag_{i}"))
    lagging = scrape(client)
    assert sample(lagging, "ledger_head_position") == 3
    assert sample(lagging, "ledger_projection_lag", projection="billing") == 3
    assert sample(lagging, "ledger_projection_position", projection="billing") == 0
    deps.runner.start()
    assert deps.runner.wait_for(3, 10)
    caught_up = scrape(client)
    assert sample(caught_up, "ledger_projection_lag", projection="billing") == 0
    assert sample(caught_up, "ledger_projection_position", projection="billing") == 3


def test_request_latency_is_observed_per_route_template(app: tuple[TestClient, Deps]) -> None:
    client, _ = app
    before = scrape(client)
    for user in ("u_1", "u_2", "u_3"):
        assert client.get(f"/v1/users/{user}/entitlements").status_code == 200
    deliver(client, event_body("evt_timed"))
    after = scrape(client)
    reads = "/v1/users/{user_id}/entitlements"
    count = "ledger_http_request_seconds_count"
    assert sample(after, count, route=reads) - sample(before, count, route=reads) == 3
    assert (
        sample(after, count, route="/webhooks/stripe")
        - sample(before, count, route="/webhooks/stripe")
        == 1
    )
    assert not any("u_1" in dict(labels).get("route", "") for _, labels in after)
    bucket = "ledger_http_request_seconds_bucket"
    assert sample(after, bucket, route=reads, le="+Inf") == sample(after, count, route=reads)
