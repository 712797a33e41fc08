"""User ids the reads can never serve (a "/", over 255 characters) are refused on both sides:
their links are not kept, and the reads answer 400 invalid_user_id saying why."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from starlette.testclient import TestClient

from billing_ledger.bootstrap import Deps, build
from billing_ledger.http.app import create_app
from billing_ledger.ledger.user_ids import checked_user_id, linkable
from tests.support.app import client_for, settings_for
from tests.support.databases import sqlite_url
from tests.support.fake_stripe import API_KEY, FakeStripe
from tests.support.inprocess import bound_socket, serving
from tests.support.lifecycle import Lifecycle

UNREADABLE = ["team/42", "/", "a" * 256, "x" * 500]
READABLE = ["u_1", "a" * 255, "user@example.com", "ü ß", "50%", "a.b", "?#"]
READS = ["entitlements", "access/pro", "invoices", "history"]


def subscribed(client: TestClient, deps: Deps, user: str) -> Lifecycle:
    """A completed checkout, an active subscription and a paid invoice for `user`."""
    life = Lifecycle(
        lambda path, body, headers: client.post(path, content=body, headers=headers), user
    )
    life.subscribe()
    assert deps.runner.wait_for(life.last, 5)
    return life


@pytest.mark.parametrize("user", UNREADABLE)
def test_an_unreadable_user_id_is_never_linked_and_its_reads_say_why(
    database_url: str, user: str
) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        life = subscribed(client, deps, user)
        assert deps.views.inputs(user, life.last).links == ()
        for read in READS:
            answer = client.get(f"/v1/users/{quote(user, safe='')}/{read}")
            assert answer.status_code == 400, (read, answer.text)
            assert answer.json()["error"] == "invalid_user_id"
            assert "never linked" in answer.json()["message"]


@pytest.mark.parametrize("user", READABLE)
def test_a_readable_user_id_is_linked_and_read_back(database_url: str, user: str) -> None:
    with client_for(settings_for(database_url)) as (client, deps):
        subscribed(client, deps, user)
        # TestClient decodes the path once more than a server does, hence quoted twice.
        path = f"/v1/users/{quote(quote(user, safe=''), safe='')}/entitlements"
        answer = client.get(path)
        assert answer.status_code == 200, answer.text
        assert answer.json()["user_id"] == user and "pro" in answer.json()["features"]


def test_a_real_server_refuses_a_percent_encoded_slash_in_the_user_id(tmp_path: Path) -> None:
    app = create_app(build(settings_for(sqlite_url(tmp_path))), listen_host="127.0.0.1")
    with serving(app, bound_socket("127.0.0.1")) as url:
        answer = httpx.get(f"{url}/v1/users/team%2F42/entitlements", timeout=10)
        readable = httpx.get(f"{url}/v1/users/team%2542/entitlements", timeout=10)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_user_id"
    assert readable.status_code == 200 and readable.json()["user_id"] == "team%42"


def test_an_unknown_route_under_users_is_still_not_found(database_url: str) -> None:
    with client_for(settings_for(database_url)) as (client, _):
        assert client.get("/v1/users/u_1/nothing-here").json()["error"] == "not_found"
        assert client.get("/v1/users/u_1").status_code == 404
        assert client.post("/v1/users/u_1/entitlements").status_code == 405


def test_checkout_refuses_a_user_id_it_could_never_link(
    database_url: str, fake_stripe: FakeStripe
) -> None:
    settings = settings_for(database_url, stripe_api_key=API_KEY, stripe_api_base=fake_stripe.url)
    with client_for(settings) as (client, _):
        answer = client.post(
            "/v1/checkout-sessions", json={"user_id": "team/42", "price": "price_pro"}
        )
    assert answer.status_code == 400 and '"/"' in answer.json()["message"], answer.text
    assert fake_stripe.state.requests == []


def test_the_rule_is_the_same_for_links_and_reads() -> None:
    for user in [*UNREADABLE, "", "\x00", ".", ".."]:
        assert not linkable(user)
        with pytest.raises(ValueError, match="never linked"):
            checked_user_id(user)
    assert all(linkable(user) and checked_user_id(user) == user for user in READABLE)
