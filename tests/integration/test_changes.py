"""The change feed in process: rule-driven rows, embedding, and notifications to the app."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from billing_ledger.bootstrap import build
from billing_ledger.http.app import create_app
from billing_ledger.notify import verify
from billing_ledger.projections.plans import DAY
from tests.support.app import client_for, settings_for
from tests.support.lifecycle import Lifecycle

NOTIFY_SECRET = "ledger_notify_test_secret"


def _until(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return found


def _poster(client: TestClient) -> Callable[[str, bytes, dict[str, str]], Any]:
    return lambda path, body, headers: client.post(path, content=body, headers=headers)


def test_a_grace_end_appears_in_the_feed_once_its_time_has_passed(database_url: str) -> None:
    with client_for(settings_for(database_url)) as (client, _):
        # The past_due episode began almost 7 days ago: its grace ends 3 seconds from now.
        life = Lifecycle(_poster(client), "u_grace", start=int(time.time()) - 7 * DAY + 2)
        life.subscribe()
        life.subscription_updated({"status": "active"}, status="past_due")
        changes = _until(
            lambda: (
                (page := client.get("/v1/changes", params={"wait": 1}).json())["changes"][1:]
                and page["changes"]
            )
        )
        assert [c["features_after"] for c in changes] == [["core", "pro"], ["core"]]
        rule = changes[1]
        assert rule["event_id"] is None and "grace" in rule["reason"]
        assert rule["at"] == life.start + life.clock + 7 * DAY  # from the past_due snapshot
        assert rule["at"] <= time.time()
        again = client.get("/v1/changes", params={"after": rule["position"], "wait": 1.5})
        assert again.json() == {"changes": [], "next": rule["position"]}


def _starlette_host(ledger: ASGIApp) -> Starlette:
    return Starlette(
        routes=[
            Route("/", lambda request: PlainTextResponse("the host app")),
            Mount("/ledger", ledger),
        ]
    )


def _fastapi_host(ledger: ASGIApp) -> FastAPI:
    app = FastAPI()

    @app.get("/", response_class=PlainTextResponse)
    def home() -> str:
        return "the host app"

    app.mount("/ledger", ledger)
    return app


@pytest.mark.parametrize("host", [_starlette_host, _fastapi_host], ids=["starlette", "fastapi"])
def test_the_app_mounted_inside_another_app_serves_and_records(
    database_url: str, host: Callable[[ASGIApp], ASGIApp]
) -> None:
    deps = build(settings_for(database_url))
    try:
        with TestClient(host(create_app(deps))) as client:
            assert client.get("/").text == "the host app"
            post = _poster(client)
            life = Lifecycle(lambda p, b, h: post(f"/ledger{p}", b, h), "u_mounted")
            life.subscribe()
            read = client.get(
                "/ledger/v1/users/u_mounted/entitlements", params={"min_position": life.last}
            )
            assert read.status_code == 200, read.text
            assert read.json()["features"] == ["core", "pro"]
            assert client.get("/ledger/healthz").json()["status"] == "ok"
            # The feed follows the views: wait for its first change, never a fixed sleep.
            feed = _until(lambda: client.get("/ledger/v1/changes").json()["changes"])
            assert feed[0]["user_id"] == "u_mounted"
    finally:
        deps.close()


def _changes(client: TestClient, count: int) -> list[dict[str, Any]] | None:
    found: list[dict[str, Any]] = client.get("/v1/changes").json()["changes"]
    return found if len(found) == count else None


class _Receiver:
    """An HTTP receiver that fails its first attempts, then goes down, then comes back."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.received: list[tuple[bytes, str]] = []
        self.server: ThreadingHTTPServer | None = None
        self.port = 0

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.attempts += 1
                status = 503 if receiver.attempts <= receiver.fail_first else 204
                if status == 204:
                    receiver.received.append((body, self.headers.get("ledger-signature", "")))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


def test_every_change_reaches_a_flaky_receiver_signed_and_in_order(database_url: str) -> None:
    receiver = _Receiver(fail_first=3)
    receiver.up()
    settings = replace(
        settings_for(database_url),
        notify_url=f"http://127.0.0.1:{receiver.port}/ledger-hook",
        notify_secret=NOTIFY_SECRET,
    )
    deps = build(settings)
    deps.notifier.backoff_max = 0.5
    users = ["u_n1", "u_n2", "u_n3"]
    with TestClient(create_app(deps)) as client:
        lives = [Lifecycle(_poster(client), u) for u in users]
        for life in lives:
            life.subscribe()
        _until(lambda: len(receiver.received) >= 2)
        receiver.down()  # the app is down for a while: changes keep coming
        for life in lives:
            life.subscription_deleted()
        feed = _until(lambda: _changes(client, 6))
        receiver.up()  # back on the same port
        _until(lambda: len(receiver.received) >= 6)
        receiver.down()
    bodies = [orjson.loads(body) for body, _ in receiver.received]
    assert all(verify(body, header, NOTIFY_SECRET) for body, header in receiver.received)
    assert bodies == feed  # every change, in position order (so in order per user), once
    assert receiver.attempts > len(bodies)  # the first attempts were refused and retried
