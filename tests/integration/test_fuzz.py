"""Hostile input, fuzzed with hypothesis through the real app on SQLite and PostgreSQL.

What must hold whatever arrives: no 500 (storage is up, so no storage_unavailable either),
every error body is exactly `{"error", "message"}`, and nothing is stored without a valid
signature. Examples are bounded so that the file runs in well under a minute.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from billing_ledger.bootstrap import Deps
from billing_ledger.http import reads
from tests.support.app import client_for, settings_for
from tests.support.databases import postgres_url
from tests.support.fake_stripe import API_KEY, FakeStripe
from tests.support.signing import SECRET, event_body, sign

TOKEN = "tok_fuzz_0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
USER_READS = ("entitlements", "access/pro", "invoices", "history")

# Values that have broken services before: traversal, SQL and format metacharacters,
# encodings, bidi and astral characters, NUL, JSON-looking and very long strings.
HOSTILE = (
    "../../../../etc/passwd",
    "..",
    ".",
    "..%2F..%2Fetc",
    "%00",
    "\x00",
    "u\x00x",
    "' OR '1'='1",
    "'; DROP TABLE ledger_events; --",
    '"; SELECT pg_sleep(10); --',
    "%s%s%s%n",
    "{0}{1}",
    "$ref",
    "null",
    "[]",
    "\\",
    "<script>alert(1)</script>",
    "\u202eevil",
    "\U0001d518ser",
    "ß\u0301",
    "\ufeff",
    " ",
    "x" * 255,
    "x" * 256,
    "é" * 4096,
)
hostile_text = st.one_of(st.sampled_from(HOSTILE), st.text(min_size=1, max_size=300))
storable_text = hostile_text.filter(lambda s: 0 < len(s) <= 255 and "\x00" not in s)
header_bytes = st.binary(max_size=300).filter(lambda b: b"\r" not in b and b"\n" not in b)
header_names = st.from_regex(r"\A[a-z][a-z0-9-]{0,24}\Z").filter(
    lambda n: n not in ("host", "content-length", "transfer-encoding", "stripe-signature")
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)


def dumps(value: Any) -> bytes:
    """JSON as any sender may write it: the standard library's, integers of any size."""
    return json.dumps(value).encode()


@pytest.fixture
def app(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Deps]]:
    """The real app with the bearer token set; a far min_position gives up at once."""
    monkeypatch.setattr(reads, "MIN_POSITION_WAIT", 0.05)
    with client_for(settings_for(database_url, api_token=TOKEN)) as pair:
        yield pair


@pytest.fixture
def first_types() -> dict[str, str]:
    """The type each event id was first stored with, across one test's examples."""
    return {}


def assert_error_shape(response: httpx2.Response, *codes: str) -> None:
    """An error body is `{"error", "message"}` with one of the expected codes."""
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] in codes, (response.status_code, body)


def webhook(client: TestClient, body: bytes, headers: dict[str, Any]) -> httpx2.Response:
    """POST a raw body to the webhook."""
    return client.post("/webhooks/stripe", content=body, headers=headers)


# -- the webhook ------------------------------------------------------------------------


def forged_signatures(body: bytes) -> st.SearchStrategy[bytes | None]:
    """Signature headers that look plausible and must not verify for `body`."""
    now = int(time.time())
    return st.one_of(
        st.none(),
        header_bytes,
        st.builds(lambda h: f"t={now},v1={h}".encode(), st.from_regex(r"\A[0-9a-f]{64}\Z")),
        st.just(stripe_header(body, "whsec_not_ours", now)),
        st.just(stripe_header(body, SECRET, now - 3600)),  # a replayed capture
        st.just(stripe_header(body + b" ", SECRET, now)),  # the signature of another body
    )


def stripe_header(body: bytes, secret: str, timestamp: int) -> bytes:
    """Stripe's scheme by hand (HMAC-SHA256 of "t.body"), for bodies that are not UTF-8."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}".encode()


webhook_bodies = st.one_of(
    st.binary(max_size=2000),
    json_values.map(dumps),
    st.builds(lambda i, t: event_body(f"evt_{i}", t), st.integers(0, 10**6), storable_text),
)


@given(data=st.data(), body=webhook_bodies)
@FUZZ
def test_unsigned_requests_of_any_shape_store_nothing(
    app: tuple[TestClient, Deps], data: st.DataObject, body: bytes
) -> None:
    client, deps = app
    head = deps.store.head()
    headers: dict[str, Any] = data.draw(st.dictionaries(header_names, header_bytes, max_size=4))
    signature = data.draw(forged_signatures(body))
    if signature is not None:
        headers["stripe-signature"] = signature
    response = webhook(client, body, headers)
    assert response.status_code == 400
    assert_error_shape(response, "invalid_signature")
    assert deps.store.head() == head


def corrupted(field: str, value: Any) -> bytes:
    """A signed-shape event with one field replaced (or removed, for Ellipsis)."""
    event = orjson.loads(event_body("evt_corrupted"))
    if value is Ellipsis:
        del event[field]
    else:
        event[field] = value
    return dumps(event)


wrong_types: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(
        st.just(...),
        st.just(""),
        st.text(min_size=256),
        json_values.filter(lambda v: not isinstance(v, str)),
        st.sampled_from(["\x00", "evt_\x00"]),
    ),
    "type": st.one_of(
        st.just(...), st.just(""), st.just("x\x00"), st.integers(), st.lists(st.text())
    ),
    "object": st.one_of(
        st.just(...), hostile_text.filter(lambda s: s not in ("event", "v2.core.event"))
    ),
    "created": st.one_of(
        st.just(...),
        st.booleans(),
        st.integers(max_value=-1),
        st.integers(min_value=2**40),
        st.floats(),
        hostile_text,
    ),
    "data": st.one_of(st.just(...), json_values.filter(lambda v: not isinstance(v, dict))),
    "livemode": json_values.filter(lambda v: not isinstance(v, bool)),
}
not_events = st.one_of(
    st.sampled_from(sorted(wrong_types)).flatmap(
        lambda f: wrong_types[f].map(lambda v: corrupted(f, v))
    ),
    json_values.filter(lambda v: not isinstance(v, dict)).map(dumps),
    st.text(max_size=500).map(str.encode),
)


@given(body=not_events)
@FUZZ
def test_signed_bodies_that_are_not_stripe_events_are_refused_and_store_nothing(
    app: tuple[TestClient, Deps], body: bytes
) -> None:
    client, deps = app
    head = deps.store.head()
    response = webhook(client, body, {"stripe-signature": sign(body)})
    assert response.status_code == 400
    assert_error_shape(response, "malformed_event")
    assert deps.store.head() == head


def segment(value: str) -> str:
    """`value` as one path segment, so that the app sees exactly `value`.

    Starlette's TestClient unquotes a path httpx has already decoded, so it decodes twice
    where uvicorn decodes once: quoting twice here makes the app see what a real client's
    single quoting makes it see behind uvicorn.
    """
    return quote(quote(value, safe=""), safe="")


def addressable(event_id: str) -> bool:
    """Whether an id can sit in one path segment (a slash or a dot segment cannot)."""
    return "/" not in event_id and event_id not in (".", "..")


def get_event(client: TestClient, event_id: str) -> httpx2.Response:
    """GET /v1/events/{event_id}, redirects not followed."""
    return client.get(f"/v1/events/{segment(event_id)}", headers=AUTH, follow_redirects=False)


def assert_unaddressable(response: httpx2.Response, event_id: str) -> None:
    """What an id that cannot sit in one path segment gets: no route, or Starlette's
    redirect dropping a trailing slash (to the route of the id without it)."""
    if response.status_code == 307:
        assert event_id.endswith("/") and addressable(event_id[:-1]), event_id
        return
    assert response.status_code == 404, response.text
    assert_error_shape(response, "not_found")


@given(event_id=storable_text, event_type=storable_text, object_id=storable_text)
@FUZZ
def test_signed_events_with_hostile_ids_are_stored_once_and_read_back(
    app: tuple[TestClient, Deps],
    first_types: dict[str, str],
    event_id: str,
    event_type: str,
    object_id: str,
) -> None:
    client, _ = app
    new = event_id not in first_types
    first_type = first_types.setdefault(event_id, event_type)  # the first copy stays canonical
    body = event_body(event_id, event_type, obj={"id": object_id, "object": "subscription"})
    first = webhook(client, body, {"stripe-signature": sign(body)})
    again = webhook(client, body, {"stripe-signature": sign(body)})
    assert first.status_code == 200 and again.status_code == 200, first.text
    assert first.json()["status"] == ("recorded" if new else "duplicate")
    assert again.json() == {**first.json(), "status": "duplicate"}
    stored = get_event(client, event_id)
    if addressable(event_id):
        assert stored.status_code == 200, stored.text
        assert (stored.json()["event_id"], stored.json()["type"]) == (event_id, first_type)
    else:
        assert_unaddressable(stored, event_id)


@pytest.mark.postgres
def test_a_signed_event_with_nul_in_an_object_id_does_not_stop_the_projection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reads, "MIN_POSITION_WAIT", 1.0)
    for url in postgres_url():
        with client_for(settings_for(url)) as (client, _):
            nul_in_object_id(client)


def nul_in_object_id(client: TestClient) -> None:
    """Deliver a signed event whose subscription id holds a NUL, then read after it."""
    obj = {"id": "sub_\x00", "object": "subscription", "status": "active"}
    body = event_body("evt_nul_object", obj=obj)
    assert webhook(client, body, {"stripe-signature": sign(body)}).status_code == 200
    response = client.get("/v1/users/u_1/entitlements?min_position=1")
    assert response.status_code == 200, response.text


# -- the /v1 reads ----------------------------------------------------------------------

# Each value fits three to a URL the client will send (httpx caps a component at 64 KiB).
query_values = st.one_of(
    hostile_text.filter(lambda v: len(quote(v)) <= 20_000),
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["", "1e309", "-0.5", "0x10", "9" * 40, "2026-13-45T99:99:99Z", "now"]),
    st.just("9" * 20_000),
)


@given(
    user_id=hostile_text,
    read=st.sampled_from(USER_READS),
    query=st.dictionaries(st.sampled_from(["at", "min_position", "x"]), query_values, max_size=3),
)
@FUZZ
def test_user_reads_answer_hostile_ids_and_parameters_without_a_server_error(
    app: tuple[TestClient, Deps], user_id: str, read: str, query: dict[str, str]
) -> None:
    client, deps = app
    head = deps.store.head()
    path = f"/v1/users/{segment(user_id)}/{read}"
    response = client.get(path, params=query, headers=AUTH)
    assert deps.store.head() == head
    if response.status_code == 200:
        assert read != "entitlements" or response.json()["user_id"] == user_id
        return
    expected: dict[int, tuple[str, ...]] = {
        400: ("invalid_parameter", "invalid_user_id"),
        404: ("not_found",),  # a dot segment in the id leaves the route
        503: ("not_caught_up",),  # a min_position past the head
    }
    assert response.status_code in expected, response.text
    assert_error_shape(response, *expected[response.status_code])
    assert response.status_code != 404 or not addressable(user_id)


@given(seconds=st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False))
@FUZZ
def test_a_time_before_1970_is_refused_however_it_is_written(
    app: tuple[TestClient, Deps], seconds: float
) -> None:
    client, _ = app
    response = client.get("/v1/users/u_1/entitlements", params={"at": repr(seconds)}, headers=AUTH)
    assert response.status_code == 400
    assert_error_shape(response, "invalid_parameter")


@given(event_id=hostile_text)
@FUZZ
def test_an_unknown_event_id_of_any_shape_is_404_or_refused(
    app: tuple[TestClient, Deps], event_id: str
) -> None:
    client, _ = app
    response = get_event(client, event_id)
    if addressable(event_id):
        assert response.status_code in (400, 404), response.text
        assert_error_shape(response, "unknown_event", "invalid_parameter")
    else:
        assert_unaddressable(response, event_id)


methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"])


@given(method=methods, tail=hostile_text)
@FUZZ
def test_unknown_paths_and_methods_answer_in_the_error_shape(
    app: tuple[TestClient, Deps], method: str, tail: str
) -> None:
    client, _ = app
    for path in (f"/v1/nowhere/x{segment(tail)}", f"/nowhere/x{segment(tail)}"):
        response = client.request(method, path, headers=AUTH)
        assert response.status_code == 404
        assert_error_shape(response, "not_found")
    wrong = client.request(method if method != "POST" else "PUT", "/webhooks/stripe")
    assert wrong.status_code == 405 and "POST" in wrong.headers["allow"]
    assert_error_shape(wrong, "method_not_allowed")


# -- the /v1 sessions -------------------------------------------------------------------


@pytest.fixture
def billing(
    fake_stripe: FakeStripe, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, Deps]]:
    """The real app with Stripe pointed at the fake, so valid bodies get a real answer."""
    settings = settings_for(
        database_url, api_token=TOKEN, stripe_api_key=API_KEY, stripe_api_base=fake_stripe.url
    )
    with client_for(settings) as pair:
        yield pair


def session_fields(names: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the endpoint's own field names holding values of any type."""
    return st.dictionaries(st.sampled_from(names) | hostile_text, json_values, max_size=4)


session_bodies: dict[str, Callable[[], st.SearchStrategy[bytes]]] = {
    "/v1/checkout-sessions": lambda: st.one_of(
        session_fields(("user_id", "price", "quantity")).map(dumps),
        st.binary(max_size=300),
        st.just(b'{"user_id": "u_1", "price": "price_pro", "quantity": 1e400}'),
    ),
    "/v1/portal-sessions": lambda: st.one_of(
        session_fields(("user_id", "return_url")).map(dumps),
        st.binary(max_size=300),
        st.just(b"x" * 20_000),
    ),
}


@given(data=st.data(), path=st.sampled_from(sorted(session_bodies)))
@settings(FUZZ, max_examples=30)
def test_session_posts_refuse_bodies_of_the_wrong_shape(
    billing: tuple[TestClient, Deps], data: st.DataObject, path: str
) -> None:
    client, _ = billing
    body = data.draw(session_bodies[path]())
    response = client.post(path, content=body, headers={**AUTH, "content-type": "application/json"})
    if response.status_code == 201:
        return  # a well-formed request for a known price or customer
    expected = {
        400: ("invalid_request", "unknown_price", "invalid_price"),
        404: ("unknown_customer",),
    }
    assert response.status_code in expected, response.text
    assert_error_shape(response, *expected[response.status_code])
