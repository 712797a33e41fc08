"""The pages' error page: an unknown page or a failing one answers HTML in the pages' style,
while every API path keeps its JSON error body whatever the client accepts (SQLite)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from billing_ledger.bootstrap import Deps, build
from billing_ledger.http.app import create_app
from tests.support.app import settings_for
from tests.support.databases import sqlite_url

BROWSER = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
INTERNAL = ("Traceback", "Exception", "starlette", "billing_ledger", "route", "Not Found")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, Deps]]:
    """The real app on SQLite; a server failure is answered, not raised into the test."""
    deps = build(settings_for(sqlite_url(tmp_path)))
    with TestClient(create_app(deps), raise_server_exceptions=False) as client:
        yield client, deps


def assert_error_page(response: httpx.Response, status: int, title: str) -> None:
    """A small HTML page in the layout, with the pages' headers, saying nothing internal."""
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert f"<h1>{title}</h1>" in response.text and 'id="message"' in response.text
    assert 'href="/pricing"' in response.text
    for text in INTERNAL:
        assert text not in response.text, text


@pytest.mark.parametrize("path", ["/nowhere", "/pricing/nowhere", "/billing/x/y", "/v1x"])
def test_an_unknown_page_answers_the_html_error_page_to_a_browser(
    app: tuple[TestClient, Deps], path: str
) -> None:
    client, _ = app
    assert_error_page(client.get(path, headers=BROWSER), 404, "Page not found")


def test_an_unknown_path_asked_for_without_html_keeps_the_json_error(
    app: tuple[TestClient, Deps],
) -> None:
    client, _ = app
    response = client.get("/nowhere", headers={"accept": "application/json"})
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": "Not Found"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1", 404),
        ("GET", "/v1/nowhere", 404),
        ("GET", "/v1/users/u_1/nowhere", 404),
        ("DELETE", "/v1/catalog", 405),
        ("GET", "/webhooks/stripe", 405),
        ("GET", "/webhooks/nowhere", 404),
        ("GET", "/healthz/nowhere", 404),
        ("GET", "/metrics/nowhere", 404),
        ("POST", "/openapi.json", 405),
    ],
)
def test_api_paths_keep_their_json_errors_when_a_browser_asks(
    app: tuple[TestClient, Deps], method: str, path: str, status: int
) -> None:
    client, _ = app
    response = client.request(method, path, headers=BROWSER)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error", "message"}


def test_a_page_asked_for_with_the_wrong_method_answers_the_error_page_with_allow(
    app: tuple[TestClient, Deps],
) -> None:
    client, _ = app
    response = client.put("/pricing", headers=BROWSER)
    assert_error_page(response, 405, "Page not found")
    assert "GET" in response.headers["allow"]


def test_a_failing_page_answers_the_error_page_and_shows_nothing_of_the_failure(
    app: tuple[TestClient, Deps], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = app

    async def failing(request: object) -> None:
        raise RuntimeError("pricing_page exploded: LEDGER_SECRET_SETTING at views.py:12")

    # The module, not the handler of the same name that pages/__init__.py re-exports.
    monkeypatch.setattr(sys.modules["billing_ledger.http.pages.pricing"], "pricing_page", failing)
    for headers in (BROWSER, {"accept": "*/*"}):  # a page is a page, however it is asked for
        response = client.get("/pricing", headers=headers)
        assert_error_page(response, 500, "Something went wrong")
        assert "exploded" not in response.text and "LEDGER_" not in response.text
    assert client.get("/healthz").status_code == 200  # the app still serves


def test_a_failing_api_read_keeps_the_json_error(
    app: tuple[TestClient, Deps], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, deps = app

    def failing(*args: object) -> None:
        raise RuntimeError("the store exploded")

    monkeypatch.setattr(deps.store, "get", failing)
    response = client.get("/v1/events/evt_1", headers=BROWSER)
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert "exploded" not in response.text
