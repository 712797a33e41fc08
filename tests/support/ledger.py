"""Drive the real app as a client would: signed webhooks in, /v1 reads out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import orjson
from starlette.testclient import TestClient

from billing_ledger.bootstrap import Deps
from billing_ledger.ledger.records import Incoming
from billing_ledger.ledger.verify import parse_event
from billing_ledger.projections.runner import Runner
from billing_ledger.projections.views import ViewRows, Views
from tests.support.signing import sign

Json = dict[str, Any]


def incoming(envelope: Mapping[str, Any], *, source: str = "webhook") -> Incoming:
    """An envelope as the webhook endpoint would hand it to the store."""
    return replace(parse_event(orjson.dumps(envelope)), source=source)


class Ledger:
    """One test's service: deliver events through POST /webhooks/stripe, read through /v1."""

    def __init__(self, client: TestClient, deps: Deps) -> None:
        self.client = client
        self.deps = deps
        self.last = 0  # the greatest position delivered: reads wait for it

    def deliver(self, *envelopes: Mapping[str, Any]) -> list[Json]:
        """POST each envelope signed, as Stripe would; every one must be acknowledged."""
        answers = []
        for envelope in envelopes:
            answers.append(self.post(orjson.dumps(envelope)))
        return answers

    def post(self, body: bytes, signature: str | None = None) -> Json:
        """POST one raw body; asserts a 200 and remembers its position."""
        header = signature if signature is not None else sign(body)
        response = self.client.post(
            "/webhooks/stripe",
            content=body,
            headers={"stripe-signature": header, "content-type": "application/json"},
        )
        assert response.status_code == 200, response.text
        answer: Json = response.json()
        self.last = max(self.last, answer["position"])
        return answer

    def record(self, *envelopes: Mapping[str, Any]) -> None:
        """Append events of our own (observations, links) as the live pipeline does."""
        results = self.deps.store.append([incoming(e, source="ledger") for e in envelopes])
        self.last = max([self.last, *(r.position for r in results)])

    def get(self, path: str, status: int = 200, **params: Any) -> Json:
        """GET a /v1 read once the projections have applied everything delivered."""
        query = {"min_position": self.last, **{k: v for k, v in params.items() if v is not None}}
        response = self.client.get(path, params=query)
        assert response.status_code == status, response.text
        body: Json = response.json()
        return body

    def entitlements(self, user_id: str = "u_1", at: int | None = None) -> Json:
        """GET /v1/users/{user_id}/entitlements."""
        return self.get(f"/v1/users/{user_id}/entitlements", at=at)

    def features(self, user_id: str = "u_1", at: int | None = None) -> list[str]:
        """The user's features at `at` (default now)."""
        features: list[str] = self.entitlements(user_id, at)["features"]
        return features

    def subscription(self, sub_id: str, user_id: str = "u_1", at: int | None = None) -> Json:
        """One subscription of the user's entitlements."""
        subs = self.entitlements(user_id, at)["subscriptions"]
        found = [s for s in subs if s["id"] == sub_id]
        assert found, f"{sub_id} not among {[s['id'] for s in subs]}"
        return found[0]

    def invoices(self, user_id: str = "u_1", at: int | None = None) -> list[Json]:
        """GET /v1/users/{user_id}/invoices."""
        invoices: list[Json] = self.get(f"/v1/users/{user_id}/invoices", at=at)["invoices"]
        return invoices

    def invoice(self, invoice_id: str, user_id: str = "u_1", at: int | None = None) -> Json:
        """One invoice of the user's list."""
        found = [i for i in self.invoices(user_id, at) if i["id"] == invoice_id]
        assert found, f"{invoice_id} not among the user's invoices"
        return found[0]

    def history(self, user_id: str = "u_1", at: int | None = None) -> list[Json]:
        """GET /v1/users/{user_id}/history."""
        changes: list[Json] = self.get(f"/v1/users/{user_id}/history", at=at)["changes"]
        return changes

    def access(self, feature: str, user_id: str = "u_1", at: int | None = None) -> Json:
        """GET /v1/users/{user_id}/access/{feature}."""
        return self.get(f"/v1/users/{user_id}/access/{feature}", at=at)

    def rebuilt(self, suffix: str = "_rebuilt") -> Views:
        """The store applied again from position 0 into fresh views (replay's first step)."""
        fresh = self.deps.views.shadow(suffix)
        fresh.drop()
        fresh.create()
        Runner(self.deps.store, fresh, livemode=self.deps.settings.livemode).catch_up()
        return fresh

    def live_rows(self) -> ViewRows:
        """Every row of the live views."""
        rows: ViewRows = self.deps.views.rows()
        return rows


def reads_of(ledger: Ledger, users: Iterable[str], times: Iterable[int | None]) -> list[Json]:
    """Every user read at every time: what must not change when the views are rebuilt."""
    found = []
    for user in users:
        for at in times:
            found.append(ledger.entitlements(user, at))
            found.append({"invoices": ledger.invoices(user, at)})
            found.append({"history": ledger.history(user, at)})
    return found
