"""The operator console /admin on SQLite and PostgreSQL: sign-in, refusals, search, the
user's page and its SVG picture, the stored event with its alternates."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import quote

import orjson
import pytest
from starlette.testclient import TestClient

from billing_ledger.demo import CUSTOMER, SUBSCRIPTION, USER, lifecycle
from tests.support.app import client_for, settings_for
from tests.support.ledger import Ledger, incoming
from tests.unit.builders import checkout_session, event, sub_event

T = 1767225600
DAY = 86400
M = 30 * DAY
EPISODE = T + M + DAY
TOKEN = "console-token"
HOSTILE = "<u&\"1'>"  # a user id is any text without "/" or NUL: every byte of it is escaped
HOSTILE_SUB = "sub_<script>alert(1)</script>"
SVG = "{http://www.w3.org/2000/svg}"


def _deliver(ledger: Ledger) -> None:
    ledger.deliver(*lifecycle(T))
    ledger.deliver(
        event(
            "checkout.session.completed",
            checkout_session(
                id="cs_h", customer="cus_h", subscription=HOSTILE_SUB, client_reference_id=HOSTILE
            ),
            id="evt_h_checkout",
            created=T,
        ),
        sub_event("created", "evt_h_created", T, id=HOSTILE_SUB, customer="cus_h"),
    )
    ledger.features()


@pytest.fixture
def console(database_url: str) -> Iterator[tuple[TestClient, Ledger]]:
    settings = settings_for(database_url, api_token=TOKEN)
    with client_for(settings, listen_host="0.0.0.0") as (client, deps):
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        ledger = Ledger(client, deps)
        _deliver(ledger)
        del client.headers["Authorization"]
        yield client, ledger


def _signed_in(client: TestClient) -> TestClient:
    answer = client.post("/admin/login", data={"token": TOKEN}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/admin"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
    assert TOKEN not in cookie
    return client


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        f"/admin/users/{USER}",
        "/admin/search?q=cus_demo",
        "/admin/events/evt_demo_04",
    ],
)
def test_every_page_sends_a_stranger_to_the_sign_in_form(
    console: tuple[TestClient, Ledger], path: str
) -> None:
    client, _ = console
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/login"


def test_the_picture_and_a_wrong_token_are_refused(console: tuple[TestClient, Ledger]) -> None:
    client, _ = console
    assert client.get(f"/admin/users/{USER}/timeline.svg").status_code == 401
    wrong = client.post("/admin/login", data={"token": "guess"}, follow_redirects=False)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    client.cookies.set("ledger_admin", "forged")
    assert client.get("/admin", follow_redirects=False).status_code == 303


def test_the_token_once_opens_every_page_and_signing_out_closes_them(
    console: tuple[TestClient, Ledger],
) -> None:
    client = _signed_in(console[0])
    home = client.get("/admin")
    assert home.status_code == 200 and "position" in home.text and "lag" in home.text
    assert "script" not in home.headers["content-security-policy"]
    client.post("/admin/logout", follow_redirects=False)
    assert client.get("/admin", follow_redirects=False).status_code == 303


def test_the_admin_token_replaces_the_api_token_for_the_console(database_url: str) -> None:
    settings = settings_for(database_url, api_token=TOKEN, admin_token="admin-only")
    with client_for(settings, listen_host="0.0.0.0") as (client, _):
        refused = client.post("/admin/login", data={"token": TOKEN}, follow_redirects=False)
        assert refused.status_code == 401
        taken = client.post("/admin/login", data={"token": "admin-only"}, follow_redirects=False)
        assert taken.status_code == 303
        assert client.get("/admin").status_code == 200


def test_without_a_token_the_console_is_off_off_loopback_and_open_on_it(
    database_url: str,
) -> None:
    settings = settings_for(database_url)
    with client_for(settings, listen_host="0.0.0.0") as (client, _):
        assert client.get("/admin", follow_redirects=False).status_code == 404
        assert client.get("/admin/login").status_code == 404
    with client_for(settings, listen_host="127.0.0.1") as (client, _):
        assert client.get("/admin").status_code == 200


def test_search_finds_users_by_customer_and_subscription_and_opens_events(
    console: tuple[TestClient, Ledger],
) -> None:
    client = _signed_in(console[0])
    for query in (CUSTOMER, SUBSCRIPTION, "in_demo_2"):
        page = client.get("/admin/search", params={"q": query})
        assert f'href="/admin/users/{USER}"' in page.text, query
    found = client.get("/admin/search", params={"q": "evt_demo_04"}, follow_redirects=False)
    assert found.headers["location"] == "/admin/events/evt_demo_04"
    user = client.get("/admin/search", params={"q": USER}, follow_redirects=False)
    assert user.headers["location"] == f"/admin/users/{USER}"
    stranger = client.get("/admin/search", params={"q": "u_stranger"})  # redirects there
    assert "The ledger has never seen u_stranger" in stranger.text
    assert "The ledger has never seen" not in client.get(f"/admin/users/{USER}").text
    nothing = client.get("/admin/search", params={"q": "evt_nowhere"})
    assert "Nothing stored matches evt_nowhere" in nothing.text


def test_the_users_page_holds_the_timeline_table_and_its_picture(
    console: tuple[TestClient, Ledger],
) -> None:
    client = _signed_in(console[0])
    page = client.get(f"/admin/users/{USER}", params={"at": EPISODE})
    assert page.status_code == 200
    assert f'src="/admin/users/{USER}/timeline.svg?at={EPISODE}"' in page.text
    assert '<a href="/admin/events/evt_demo_04">evt_demo_04</a>' in page.text
    assert "payment_failed" in page.text
    assert "loses pro at the grace end, 7 Feb 2026, unless paid (sub_demo)" in page.text


def test_the_picture_is_well_formed_svg_with_bands_ticks_and_windows(
    console: tuple[TestClient, Ledger],
) -> None:
    client = _signed_in(console[0])
    answer = client.get(f"/admin/users/{USER}/timeline.svg", params={"at": EPISODE})
    assert answer.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(answer.content)
    assert root.tag == f"{SVG}svg"
    classes = [el.get("class") for el in root.iter()]
    assert classes.count("tick") == 5  # one per entry of the timeline at EPISODE
    assert classes.count("band") == 2  # sub_demo active, then past_due
    assert "grace" in classes and "leeway" in classes and "upcoming" in classes
    titles = [el.text or "" for el in root.iter(f"{SVG}title")]
    assert any("evt_demo_04" in t and "payment_failed" in t for t in titles)


def test_user_text_in_the_picture_and_the_page_is_escaped(
    console: tuple[TestClient, Ledger],
) -> None:
    client = _signed_in(console[0])
    path = f"/admin/users/{quote(HOSTILE, safe='')}"
    svg = client.get(f"{path}/timeline.svg")
    assert svg.status_code == 200
    root = ET.fromstring(svg.content)  # well-formed despite the markup in the ids
    assert b"<script>" not in svg.content and not list(root.iter(f"{SVG}script"))
    texts = [el.text for el in root.iter(f"{SVG}text")]
    assert HOSTILE in texts and HOSTILE_SUB in texts
    page = client.get(path)
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text


def test_the_event_page_shows_the_stored_body_and_its_alternates(
    console: tuple[TestClient, Ledger],
) -> None:
    client, ledger = console
    original = lifecycle(T)[3]
    again = {**original, "api_version": "2025-01-27.acacia"}
    ledger.deps.store.append([incoming(again)])
    page = _signed_in(client).get("/admin/events/evt_demo_04")
    assert page.status_code == 200
    assert "Stored body (canonical)" in page.text and "Alternate 1" in page.text
    assert "2025-01-27.acacia" in page.text
    assert f'<a href="/admin/users/{USER}">{USER}</a>' in page.text
    assert orjson.dumps(original["id"]).decode() in page.text.replace("&#34;", '"')
    unknown = client.get("/admin/events/evt_nowhere")
    assert unknown.status_code == 404


def test_a_bad_time_or_search_is_refused_in_words(console: tuple[TestClient, Ledger]) -> None:
    client = _signed_in(console[0])
    bad = client.get(f"/admin/users/{USER}", params={"at": "soon"})
    assert bad.status_code == 400 and "at: expected Unix seconds or ISO 8601" in bad.text
    long = client.get("/admin/search", params={"q": "x" * 300})
    assert long.status_code == 400 and "search: expected 1 to 255 characters" in long.text
    unknown = client.get("/admin/events/evt_nowhere")
    assert "No event evt_nowhere is stored." in unknown.text
