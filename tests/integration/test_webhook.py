"""POST /webhooks/stripe on SQLite and PostgreSQL: stored once, bad input stores nothing."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from billing_ledger.bootstrap import build
from billing_ledger.http.app import create_app
from tests.support.app import client_for, settings_for
from tests.support.signing import SECRET, event_body, sign


def post(client, body: bytes, header: str | None = "sign", **headers: str):  # type: ignore[no-untyped-def]
    all_headers = {"content-type": "application/json", **headers}
    if header == "sign":
        all_headers["stripe-signature"] = sign(body)
    elif header is not None:
        all_headers["stripe-signature"] = header
    return client.post("/webhooks/stripe", content=body, headers=all_headers)


def stored_ids(deps) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.event_id for e in deps.store.read(0, 10_000)]


def test_first_delivery_is_recorded_with_its_position(database_url: str) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        body = event_body("evt_first")
        response = post(client, body)
        assert response.status_code == 200
        answer = response.json()
        assert answer["event_id"] == "evt_first" and answer["status"] == "recorded"
        stored = deps.store.get("evt_first")
        assert stored is not None and stored.position == answer["position"]
        assert stored.body == body  # byte for byte
        assert stored.type == "customer.subscription.updated" and stored.created == 1767225600


@pytest.mark.parametrize("deliveries", [1, 2, 10])
def test_one_stored_copy_whatever_the_number_of_deliveries(
    database_url: str, deliveries: int
) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        body = event_body("evt_many")
        answers = [
            post(client, body, sign(body, timestamp=int(time.time()) - i)).json()
            for i in range(deliveries)
        ]
        assert [a["status"] for a in answers] == ["recorded"] + ["duplicate"] * (deliveries - 1)
        assert {a["position"] for a in answers} == {answers[0]["position"]}
        assert stored_ids(deps) == ["evt_many"]


def test_a_duplicate_answers_the_position_of_the_first_copy(database_url: str) -> None:
    with client_for(settings_for(database_url)) as (client, _):
        first = post(client, event_body("evt_a")).json()
        post(client, event_body("evt_b"))
        again = post(client, event_body("evt_a")).json()
        assert again == {"event_id": "evt_a", "status": "duplicate", "position": first["position"]}


def test_another_rendering_of_a_known_id_is_a_duplicate_kept_for_audit(database_url: str) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        first = post(
            client, event_body("evt_9", obj={"id": "sub_1", "object": "subscription"})
        ).json()
        other = event_body(
            "evt_9", obj={"id": "sub_1", "object": "subscription", "current_period_end": 5}
        )
        again = post(client, other).json()
        assert again["status"] == "duplicate" and again["position"] == first["position"]
        versions = deps.store.versions("evt_9")
        assert [v.version for v in versions] == [1, 2]
        assert versions[1].body == other
        assert deps.store.get("evt_9").body != other  # the first body stays canonical


def _bad_headers(body: bytes) -> dict[str, str | None]:
    now = int(time.time())
    good = sign(body)
    return {
        "missing": None,
        "empty": "",
        "garbage": "not-a-signature",
        "no_timestamp": "v1=" + good.split("v1=")[1],
        "no_v1": f"t={now}",
        "v0_only": f"t={now},v0=" + good.split("v1=")[1],
        "wrong_secret": sign(body, secret="whsec_someone_else"),
        "stale_timestamp": sign(body, timestamp=now - 3600),  # S53: a replayed capture
        "ten_years_ahead": sign(body, timestamp=now + 10 * 365 * 86400),  # replayable for years
        "just_past_the_tolerance_ahead": sign(body, timestamp=now + 400),
        "signature_of_other_body": sign(body + b" "),
        "non_numeric_timestamp": "t=abc,v1=" + good.split("v1=")[1],
    }


@pytest.mark.parametrize("case", list(_bad_headers(b"{}")))
def test_a_bad_signature_is_rejected_and_nothing_is_stored(database_url: str, case: str) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        body = event_body("evt_bad")
        response = post(client, body, _bad_headers(body)[case])
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_signature"
        assert stored_ids(deps) == []


def test_a_tampered_body_is_rejected(database_url: str) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        body = event_body("evt_t")
        header = sign(body)
        response = post(client, body.replace(b"active", b"canceled"), header)
        assert response.json()["error"] == "invalid_signature"
        assert stored_ids(deps) == []


def test_any_rotated_secret_may_match(database_url: str) -> None:
    settings = settings_for(database_url, webhook_secrets=("whsec_old", SECRET))
    with client_for(settings) as (client, deps):
        body = event_body("evt_rot")
        now = int(time.time())
        # During a roll Stripe sends one v1 per active secret.
        header = (
            sign(body, secret="whsec_new_unknown", timestamp=now)
            + ",v1="
            + sign(body, timestamp=now).split("v1=")[1]
        )
        assert post(client, body, header).json()["status"] == "recorded"
        assert (
            post(
                client, event_body("evt_old"), sign(event_body("evt_old"), "whsec_old")
            ).status_code
            == 200
        )
        assert stored_ids(deps) == ["evt_rot", "evt_old"]


def test_a_timestamp_ahead_within_the_tolerance_is_accepted(database_url: str) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        body = event_body("evt_clock_skew")  # a sender's clock a minute fast
        assert post(client, body, sign(body, timestamp=int(time.time()) + 60)).status_code == 200
        assert stored_ids(deps) == ["evt_clock_skew"]


def test_a_timestamp_ten_years_ahead_is_refused_with_a_clear_reason(database_url: str) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        body = event_body("evt_future")
        ahead = int(time.time()) + 10 * 365 * 86400
        answer = post(client, body, sign(body, timestamp=ahead))
        assert answer.status_code == 400
        assert answer.json() == {
            "error": "invalid_signature",
            "message": "timestamp is in the future, outside the tolerance zone",
        }
        assert stored_ids(deps) == []


def test_a_replayed_capture_with_tolerance_disabled_is_a_no_op(database_url: str) -> None:
    with client_for(settings_for(database_url, webhook_tolerance=0)) as (client, deps):
        body = event_body("evt_replayed")
        assert post(client, body).json()["status"] == "recorded"
        replay = post(client, body, sign(body, timestamp=int(time.time()) - 7200)).json()
        assert replay["status"] == "duplicate"
        assert stored_ids(deps) == ["evt_replayed"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"object": "event"}',
        b'{"id": "evt_1", "object": "charge", "type": "x"}',
        b'{"id": 5, "object": "event", "type": "x", "created": 1, "data": {}}',
        b'{"id": "evt_1", "object": "event", "type": "x", "created": "soon", "data": {}}',
        b'{"id": "evt_1", "object": "event", "type": "x", "created": 1, "data": []}',
        b'{"id": "evt_1", "object": "event", "type": "x", "created": 1, "data": {}, "livemode": "no"}',
        "\u00e9t\u00e9".encode(),
    ],
)
def test_a_signed_body_that_is_not_an_event_is_malformed(database_url: str, body: bytes) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        response = post(client, body)
        assert response.status_code == 400
        assert response.json()["error"] == "malformed_event"
        assert stored_ids(deps) == []


def test_an_oversized_body_is_rejected(database_url: str) -> None:
    with client_for(settings_for(database_url, max_body_bytes=4096)) as (client, deps):
        body = event_body("evt_big", pad_to=8000)
        response = post(client, body)
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"
        chunked = client.post(
            "/webhooks/stripe",
            content=iter([body[:3000], body[3000:]]),
            headers={"stripe-signature": sign(body)},
        )
        assert chunked.status_code == 413
        assert stored_ids(deps) == []


def test_unknown_thin_and_other_mode_events_are_stored_and_acknowledged(database_url: str) -> None:
    thin = (
        b'{"id": "evt_thin", "object": "v2.core.event", "type": "v1.billing.meter.error_report_triggered",'
        b' "created": "2026-01-01T00:00:00.000Z", "livemode": false,'
        b' "related_object": {"id": "mtr_1", "type": "billing.meter", "url": "/v1/billing/meters/mtr_1"}}'
    )
    with client_for(settings_for(database_url)) as (client, deps):
        for body in (
            event_body("evt_x", "billing.credit_grant.created"),
            event_body("evt_y", "customer.subscription.frobnicated"),
            event_body("evt_live", livemode=True),
            thin,
        ):
            assert post(client, body).json()["status"] == "recorded"
        stored = {e.event_id: e for e in deps.store.read(0)}
        assert stored["evt_thin"].thin and stored["evt_thin"].created == 1767225600
        assert stored["evt_live"].livemode is True


def test_without_a_secret_the_endpoint_is_not_configured(database_url: str) -> None:
    with client_for(settings_for(database_url, webhook_secrets=())) as (client, deps):
        response = post(client, event_body("evt_nc"))
        assert response.status_code == 503 and response.json()["error"] == "not_configured"
        assert stored_ids(deps) == []


def test_storage_failure_answers_5xx_so_stripe_retries(database_url: str) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        with deps.store.db.transaction() as cursor:
            cursor.execute(f"DROP TABLE {deps.store.db.table('ledger_events')}")
        response = post(client, event_body("evt_down"))
        assert response.status_code in (500, 503)
        assert response.json()["error"] == "storage_unavailable"


def test_a_delivery_takes_the_short_way_past_the_router_with_the_same_answers(
    database_url: str,
) -> None:
    deps = build(settings_for(database_url))
    app = create_app(deps)
    routed: list[str] = []

    class Counting:  # the app's router, noting each path it is asked to route
        routes = app.router.routes

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            routed.append(scope.get("path", scope["type"]))
            await router(scope, receive, send)

    router, app.router = app.router, Counting()  # type: ignore[assignment]
    with TestClient(app) as client:
        body = event_body("evt_short")
        assert post(client, body).json()["status"] == "recorded"
        refused = post(client, event_body("evt_forged"), header="t=1,v1=00")
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_signature"
        assert client.get("/webhooks/stripe").status_code == 405  # the general way's answer
        assert stored_ids(deps) == ["evt_short"]
    assert [p for p in routed if p == "/webhooks/stripe"] == ["/webhooks/stripe"]  # the GET
