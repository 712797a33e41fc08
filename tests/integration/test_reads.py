"""The /v1 reads through the real app on SQLite and PostgreSQL: shapes, `at`, min_position."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from starlette.testclient import TestClient

from billing_ledger.bootstrap import build
from billing_ledger.http import reads
from billing_ledger.http.app import create_app
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import Views
from tests.support.app import client_for, settings_for
from tests.support.ledger import Ledger
from tests.unit.builders import DAY, M, T, checkout_session, event, invoice, subscription

ENTITLEMENT_FIELDS = {
    "user_id",
    "features",
    "plans",
    "customer_ids",
    "subscriptions",
    "purchases",
    "warnings",
    "position",
    "at",
}
SUBSCRIPTION_FIELDS = {
    "id",
    "customer_id",
    "status",
    "price_ids",
    "current_period_end",
    "cancel_at",
    "cancel_at_period_end",
    "grants_access",
    "access_until",
    "quantity",
}
INVOICE_FIELDS = {
    "id",
    "status",
    "amount_due",
    "amount_paid",
    "currency",
    "subscription_id",
    "created",
    "hosted_invoice_url",
}
LEEWAY = 2 * DAY
PRO_FEATURES = ["core", "pro"]
NOW = T + 10 * DAY  # inside the first period


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    with client_for(settings_for(database_url)) as (client, deps):
        yield Ledger(client, deps)


def subscribe(ledger: Ledger) -> None:
    """u_1 buys pro through Checkout and pays the first invoice."""
    ledger.deliver(
        event("checkout.session.completed", checkout_session(), id="evt_1", created=T),
        event("customer.subscription.created", subscription(), id="evt_2", created=T),
        event(
            "invoice.paid",
            invoice(status="paid", amount_paid=2000, attempt_count=1, paid_at=T + 1),
            id="evt_5",
            created=T + 1,
        ),
    )


def test_entitlements_have_exactly_the_contract_fields(ledger: Ledger) -> None:
    subscribe(ledger)
    body = ledger.entitlements(at=NOW)
    assert set(body) == ENTITLEMENT_FIELDS
    assert body["user_id"] == "u_1" and body["at"] == NOW
    assert body["features"] == ["core", "pro"] and body["plans"] == ["free", "pro"]
    assert body["customer_ids"] == ["cus_1"] and body["warnings"] == []
    assert body["position"] >= ledger.last
    (sub,) = body["subscriptions"]
    assert set(sub) == SUBSCRIPTION_FIELDS
    assert sub == {
        "id": "sub_1",
        "customer_id": "cus_1",
        "status": "active",
        "price_ids": ["price_pro"],
        "current_period_end": T + M,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "grants_access": True,
        "access_until": T + M + LEEWAY,
        "quantity": 1,
    }
    assert body["purchases"] == []


def test_a_user_never_seen_gets_the_default_plans(ledger: Ledger) -> None:
    subscribe(ledger)
    body = ledger.entitlements("u_stranger")
    assert body["features"] == ["core"] and body["plans"] == ["free"]
    assert body["customer_ids"] == [] and body["subscriptions"] == []
    assert ledger.invoices("u_stranger") == [] and ledger.history("u_stranger") == []


def test_at_accepts_unix_seconds_and_iso_8601(ledger: Ledger) -> None:
    subscribe(ledger)
    assert ledger.features(at=T - 1) == ["core"]
    by_seconds = ledger.entitlements(at=NOW)
    client = ledger.client
    for iso in ("2026-01-11T00:00:00Z", "2026-01-11T00:00:00+00:00", "2026-01-11T01:00:00+01:00"):
        body = client.get("/v1/users/u_1/entitlements", params={"at": iso}).json()
        assert body == by_seconds
    naive = client.get("/v1/users/u_1/entitlements", params={"at": "2026-01-11T00:00:00"})
    assert naive.json()["at"] == NOW  # no offset: UTC
    assert ledger.features(at=T + M + LEEWAY) == ["core"]  # access holds while at < access_until


def test_at_defaults_to_now(ledger: Ledger) -> None:
    before = int(time.time())
    body = ledger.entitlements()
    assert before <= body["at"] <= int(time.time()) + 1


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("at", "yesterday"),
        ("at", "2026-13-01"),
        ("at", "-5"),
        ("at", "1e99"),
        ("min_position", "-1"),
        ("min_position", "abc"),
        ("min_position", "1.5"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(ledger: Ledger, param: str, value: str) -> None:
    for path in ("entitlements", "access/pro", "invoices", "history"):
        response = ledger.client.get(f"/v1/users/u_1/{path}", params={param: value})
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_parameter"
        assert param in response.json()["message"]


def test_min_position_answers_once_the_projections_have_applied_it(ledger: Ledger) -> None:
    subscribe(ledger)
    response = ledger.client.get(
        "/v1/users/u_1/entitlements", params={"min_position": ledger.last, "at": NOW}
    )
    assert response.status_code == 200
    assert response.json()["position"] >= ledger.last
    assert response.json()["features"] == ["core", "pro"]


def test_min_position_never_reached_is_503_not_caught_up(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reads, "MIN_POSITION_WAIT", 0.5)  # the contract's 5 s, shortened
    subscribe(ledger)
    for path in ("entitlements", "access/pro", "invoices", "history"):
        response = ledger.client.get(
            f"/v1/users/u_1/{path}", params={"min_position": ledger.last + 1000}
        )
        assert response.status_code == 503
        assert response.json()["error"] == "not_caught_up"


def test_access_answers_allowed_with_a_reason(ledger: Ledger) -> None:
    subscribe(ledger)
    assert ledger.access("pro", at=NOW) == {
        "allowed": True,
        "reason": "plan pro via sub_1 (active)",
    }
    assert ledger.access("pro", at=T - 1)["allowed"] is False
    denied = ledger.access("export", at=NOW)
    assert denied["allowed"] is False and denied["reason"]


def test_invoices_have_the_contract_fields_newest_first(ledger: Ledger) -> None:
    subscribe(ledger)
    ledger.deliver(
        event(
            "invoice.finalized",
            invoice(id="in_2", status="open", billing_reason="subscription_cycle", created=T + M),
            id="evt_6",
            created=T + M,
        )
    )
    found = ledger.invoices(at=T + M + 1)
    assert [i["id"] for i in found] == ["in_2", "in_1"]
    assert all(set(i) == INVOICE_FIELDS for i in found)
    assert found[1] == {
        "id": "in_1",
        "status": "paid",
        "amount_due": 2000,
        "amount_paid": 2000,
        "currency": "usd",
        "subscription_id": "sub_1",
        "created": T,
        "hosted_invoice_url": "https://invoice.stripe.com/i/in_1",
    }
    assert [i["id"] for i in ledger.invoices(at=T + 1)] == ["in_1"]


def test_history_lists_each_change_oldest_first(ledger: Ledger) -> None:
    subscribe(ledger)
    changes = ledger.history(at=T + M + LEEWAY + 1)
    assert [set(c) for c in changes] == [
        {"at", "event_id", "event_type", "features_before", "features_after", "reason"}
    ] * 2
    grant, lapse = changes
    assert grant["at"] == T and grant["features_after"] == ["core", "pro"]
    assert grant["event_id"] in ("evt_1", "evt_2")
    assert lapse["at"] == T + M + LEEWAY and lapse["event_id"] is None
    assert lapse["features_after"] == ["core"] and lapse["reason"]
    assert len(ledger.history(at=NOW)) == 1  # history with `at` stops there


def test_a_stored_event_is_returned_with_its_first_body(ledger: Ledger) -> None:
    envelope = event("customer.subscription.created", subscription(), id="evt_2", created=T)
    answer = ledger.deliver(envelope)[0]
    other = dict(envelope, api_version="2025-02-24.acacia")
    assert ledger.deliver(other)[0]["status"] == "duplicate"
    body = ledger.get("/v1/events/evt_2")
    assert set(body) == {
        "event_id",
        "type",
        "created",
        "livemode",
        "received_at",
        "position",
        "payload",
    }
    assert body["event_id"] == "evt_2" and body["type"] == "customer.subscription.created"
    assert body["created"] == T and body["livemode"] is False
    assert isinstance(body["received_at"], int) and body["position"] == answer["position"]
    assert body["payload"] == orjson.loads(orjson.dumps(envelope))  # the first body, parsed


def test_an_unknown_event_is_404_unknown_event(ledger: Ledger) -> None:
    response = ledger.client.get("/v1/events/evt_missing")
    assert response.status_code == 404 and response.json()["error"] == "unknown_event"


@pytest.fixture
def guarded(database_url: str) -> Iterator[TestClient]:
    with client_for(settings_for(database_url, api_token="s3cret")) as (client, _):
        yield client


@pytest.mark.parametrize(
    "path",
    [
        "/v1/users/u_1/entitlements",
        "/v1/users/u_1/access/pro",
        "/v1/users/u_1/invoices",
        "/v1/users/u_1/history",
        "/v1/events/evt_1",
    ],
)
def test_every_read_needs_the_bearer_token_when_one_is_set(guarded: TestClient, path: str) -> None:
    response = guarded.get(path)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    wrong = guarded.get(path, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = guarded.get(path, headers={"authorization": "Bearer s3cret"})
    assert right.status_code in (200, 404)


def test_healthz_shows_the_projection_and_the_events_it_skipped(ledger: Ledger) -> None:
    subscribe(ledger)
    ledger.get("/v1/users/u_1/entitlements")  # caught up
    health = ledger.client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["projections"] == {
        "billing": {"position": ledger.last, "error": None, "skipped": [], "skipped_total": 0}
    }
    poison = orjson.dumps(
        {
            "id": "evt_poison",
            "object": "event",
            "type": "invoice.created",
            "created": T,
            "livemode": False,
            "data": {"object": "in_1"},
        }
    )
    assert ledger.post(poison)["status"] == "recorded"  # S61: acknowledged all the same
    ledger.get("/v1/users/u_1/entitlements")  # the projection goes on past it
    health = ledger.client.get("/healthz").json()
    billing = health["projections"]["billing"]
    assert health["status"] == "ok" and billing["error"] is None
    assert [(s["event_id"], s["position"]) for s in billing["skipped"]] == [
        ("evt_poison", ledger.last)
    ]


def test_without_a_runner_in_process_reads_follow_the_tracked_position(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reads, "MIN_POSITION_WAIT", 1.0)
    deps = build(settings_for(database_url), run_projections=False)
    with TestClient(create_app(deps)) as client:
        ledger = Ledger(client, deps)
        subscribe(ledger)  # stored; nobody in this process projects it
        late = client.get("/v1/users/u_1/entitlements", params={"min_position": ledger.last})
        assert late.status_code == 503 and late.json()["error"] == "not_caught_up"
        assert client.get("/healthz").json()["projections"] == {}
        Runner(deps.store, Views(deps.store.db), livemode=False).catch_up()  # `project` elsewhere
        assert ledger.features(at=NOW) == PRO_FEATURES
