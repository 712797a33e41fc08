"""Authentication: the bearer token on every /v1 route, the webhook's signature alone, the
pages' session cookie, and `serve` refusing to listen beyond loopback without a token."""

from __future__ import annotations

import hmac
import os
import subprocess
import sys
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from billing_ledger.bootstrap import Deps
from billing_ledger.settings import Settings
from tests.support.app import client_for, settings_for
from tests.support.databases import sqlite_url
from tests.support.signing import event_body, sign

TOKEN = "tok_security_Zx81-_/+="
ROUTES = [
    ("GET", "/v1/users/u_1/entitlements"),
    ("GET", "/v1/users/u_1/access/pro"),
    ("GET", "/v1/users/u_1/invoices"),
    ("GET", "/v1/users/u_1/history"),
    ("GET", "/v1/events/evt_1"),
    ("POST", "/v1/checkout-sessions"),
    ("POST", "/v1/portal-sessions"),
]
WRONG = {
    "missing": None,
    "empty": "",
    "wrong token": "Bearer tok_not_it",
    "token only": TOKEN,
    "basic scheme": f"Basic {TOKEN}",
    "token scheme": f"Token {TOKEN}",
    "a prefix of the token": f"Bearer {TOKEN[:-1]}",
    "the token and more": f"Bearer {TOKEN}x",
    "two spaces": f"Bearer  {TOKEN}",
    "trailing space": f"Bearer {TOKEN} ",
    "two tokens": f"Bearer {TOKEN}, Bearer {TOKEN}",
}


@pytest.fixture
def guarded(database_url: str) -> Iterator[tuple[TestClient, Deps]]:
    """The real app with LEDGER_API_TOKEN set (and no Stripe key: sessions answer 503)."""
    with client_for(settings_for(database_url, api_token=TOKEN)) as pair:
        yield pair


def call(client: TestClient, method: str, path: str, authorization: str | None) -> int:
    """The status of one request with the given Authorization header (None: without one)."""
    headers = {} if authorization is None else {"authorization": authorization}
    body = {"user_id": "u_1", "price": "price_pro"} if method == "POST" else None
    return client.request(method, path, headers=headers, json=body).status_code


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_v1_route_refuses_a_missing_or_wrong_token_and_accepts_the_right_one(
    guarded: tuple[TestClient, Deps], method: str, path: str
) -> None:
    client, deps = guarded
    head = deps.store.head()
    for name, authorization in WRONG.items():
        headers = {} if authorization is None else {"authorization": authorization}
        refused = client.request(method, path, headers=headers, json={"user_id": "u_1"})
        assert refused.status_code == 401, name
        assert refused.json()["error"] == "unauthorized", name
        assert refused.headers["www-authenticate"] == "Bearer", name
    assert call(client, method, path, f"Bearer {TOKEN}") != 401
    assert deps.store.head() == head  # a refused request reaches no handler


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/no-such-read"), ("GET", "/v1/users/u_1/no-such-read"), ("DELETE", "/v1/catalog")],
)
def test_an_unknown_v1_path_or_method_is_refused_without_the_token_and_json_with_it(
    guarded: tuple[TestClient, Deps], method: str, path: str
) -> None:
    client, _ = guarded
    refused = client.request(method, path)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    assert refused.headers["www-authenticate"] == "Bearer"
    answered = client.request(method, path, headers={"authorization": f"Bearer {TOKEN}"})
    assert answered.status_code in (404, 405)
    assert answered.headers["content-type"] == "application/json"
    assert set(answered.json()) == {"error", "message"}
    assert answered.json()["error"] in ("not_found", "method_not_allowed")


def test_the_token_is_compared_in_constant_time(
    guarded: tuple[TestClient, Deps], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = guarded
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # auth.py looks it up at each call
    assert call(client, "GET", "/v1/users/u_1/entitlements", "Bearer tok_not_it") == 401
    assert compared == [(b"tok_not_it", TOKEN.encode())]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(
    guarded: tuple[TestClient, Deps], scheme: str
) -> None:
    client, _ = guarded
    assert call(client, "GET", "/v1/users/u_1/entitlements", f"{scheme} {TOKEN}") == 200
    assert call(client, "GET", "/v1/users/u_1/entitlements", f"{scheme} tok_not_it") == 401


def test_an_encoded_path_cannot_slip_past_the_token(guarded: tuple[TestClient, Deps]) -> None:
    client, _ = guarded
    # %76%31 is "v1": the server decodes the path before the middleware sees it.
    assert client.get("/%2576%2531/users/u_1/entitlements").status_code == 401


def test_the_webhook_needs_only_its_signature_not_the_token(
    guarded: tuple[TestClient, Deps],
) -> None:
    client, deps = guarded
    body = event_body("evt_no_token_needed")
    for authorization in ({}, {"authorization": "Bearer tok_not_it"}):
        response = client.post(
            "/webhooks/stripe",
            content=body,
            headers={"stripe-signature": sign(body), **authorization},
        )
        assert response.status_code == 200, response.text
    assert deps.store.get("evt_no_token_needed") is not None
    forged = client.post(
        "/webhooks/stripe",
        content=event_body("evt_token_is_no_signature"),
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert forged.status_code == 400 and forged.json()["error"] == "invalid_signature"


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/openapi.json"])
def test_health_metrics_and_the_api_document_need_no_token(
    guarded: tuple[TestClient, Deps], path: str
) -> None:
    client, _ = guarded
    assert client.get(path).status_code == 200


# -- the pages' session cookie ----------------------------------------------------------


def session_cookie(app_url: str, folder: Path) -> tuple[SimpleCookie, str]:
    """The Set-Cookie the sign-in form sets, parsed, and its raw header."""
    settings = settings_for(sqlite_url(folder), app_url=app_url, demo_signin=True)
    with client_for(settings) as (client, _):
        raw = client.get("/login").headers["set-cookie"]
    parsed: SimpleCookie = SimpleCookie()
    parsed.load(raw)
    return parsed, raw.lower()


@pytest.mark.parametrize(
    ("app_url", "secure"), [("http://127.0.0.1:8000", False), ("https://localhost:8443", True)]
)
def test_the_session_cookie_is_httponly_lax_and_secure_over_https(
    tmp_path: Path, app_url: str, secure: bool
) -> None:
    parsed, raw = session_cookie(app_url, tmp_path)
    morsel = parsed["ledger_session"]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "lax"
    assert morsel["path"] == "/"
    assert 0 < int(morsel["max-age"]) <= 30 * 86400
    assert ("; secure" in raw) is secure


def test_a_tampered_session_cookie_signs_nobody_in(tmp_path: Path) -> None:
    with client_for(settings_for(sqlite_url(tmp_path), demo_signin=True)) as (client, _):
        form = client.get("/login").text
        csrf = form.split('name="csrf" value="')[1].split('"')[0]
        client.post("/login", data={"user_id": "u_1", "csrf": csrf}, follow_redirects=False)
        value = client.cookies["ledger_session"]
        assert client.get("/billing", follow_redirects=False).status_code == 200
        forged = value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB")
        client.cookies.clear()
        client.cookies.set("ledger_session", forged)
        assert client.get("/billing", follow_redirects=False).status_code == 303


# -- secrets stay out of reprs ----------------------------------------------------------


def test_settings_never_show_their_secrets_in_a_repr() -> None:
    settings = Settings(
        webhook_secrets=("whsec_repr_secret",),
        stripe_api_key="sk_test_repr_secret",
        api_token="tok_repr_secret",
        session_secret="repr_secret_for_cookies",
    )
    assert "repr_secret" not in repr(settings)


# -- serve beyond loopback --------------------------------------------------------------


def serve(host: str, folder: Path, token: str = "") -> subprocess.CompletedProcess[str]:
    """Run `billing-ledger serve --host HOST` with no token (or an empty one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "STRIPE_"))}
    env |= {"LEDGER_DATABASE_URL": sqlite_url(folder), "LEDGER_API_TOKEN": token}
    command = [sys.executable, "-m", "billing_ledger.cli", "serve", "--host", host, "--port", "1"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("host", "token"), [("0.0.0.0", ""), ("::", ""), ("192.0.2.7", " ")])
def test_serve_refuses_a_non_loopback_host_without_a_token_in_one_line(
    tmp_path: Path, host: str, token: str
) -> None:
    result = serve(host, tmp_path, token)
    assert result.returncode != 0
    reason = result.stderr.strip().splitlines()
    assert len(reason) == 1, result.stderr
    assert host in reason[0] and "LEDGER_API_TOKEN" in reason[0]
    assert not (tmp_path / "ledger.db").exists()  # refused before opening anything
