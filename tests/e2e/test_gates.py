"""An app's own routes gated on a feature, as a FastAPI or Starlette app would write them, with
the answers coming from a real server: a Replica, the sync and async clients, the decorator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billing_ledger.client import AsyncLedgerClient, LedgerClient, Replica
from billing_ledger.client.gate import (
    EXCEPTION_HANDLERS,
    FeatureDeniedError,
    feature_required,
    requires_feature,
)
from tests.support.aio import run
from tests.support.lifecycle import Lifecycle, httpx_poster
from tests.support.server import Server

pytestmark = pytest.mark.e2e


def _user(request: Request) -> str | None:
    return request.headers.get("x-user")  # how this host app knows who is signed in


def _fastapi(replica: Replica, client: LedgerClient, aclient: AsyncLedgerClient) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await aclient.aclose()  # on the loop that used it

    app = FastAPI(exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)

    @app.get("/reports", dependencies=[Depends(requires_feature("pro", replica, user=_user))])
    def reports() -> dict[str, str]:
        return {"report": "ready"}

    @app.get("/export")
    def export(
        user_id: str = Depends(requires_feature("pro", client, user=_user)),
    ) -> dict[str, str]:
        return {"export": user_id}

    @app.get("/insights", dependencies=[Depends(requires_feature("pro", aclient, user=_user))])
    async def insights() -> dict[str, str]:
        return {"insights": "ready"}

    return app


def _starlette(replica: Replica) -> Starlette:
    async def reports(request: Request) -> Response:
        return JSONResponse({"report": "ready"})

    gate = requires_feature("pro", replica, user=_user)
    return Starlette(routes=[Route("/reports", gate.endpoint(reports))])


def _statuses(client: TestClient, user: str | None) -> dict[str, int]:
    headers = {"x-user": user} if user else {}
    return {path: client.get(path, headers=headers).status_code for path in _PATHS}


_PATHS = ("/reports", "/export", "/insights")


def test_fastapi_routes_gated_on_pro_answer_403_until_the_user_subscribes(server: Server) -> None:
    with (
        Replica(server.url, wait=2) as replica,
        LedgerClient(server.url) as client,
        TestClient(_fastapi(replica, client, AsyncLedgerClient(server.url))) as app,
    ):
        assert replica.wait_ready(timeout=10)
        denied = app.get("/reports", headers={"x-user": "u_gated"})
        assert denied.status_code == 403
        assert denied.json() == {
            "error": "feature_required",
            "message": "your plan does not include pro",
        }
        assert app.get("/export").json()["error"] == "not_signed_in"
        assert _statuses(app, "u_gated") == dict.fromkeys(_PATHS, 403)
        Lifecycle(httpx_poster(server.url), "u_gated").subscribe()
        assert replica.wait_until(lambda r: r.allowed("u_gated", "pro"), timeout=10)
        assert _statuses(app, "u_gated") == dict.fromkeys(_PATHS, 200)
        assert app.get("/export", headers={"x-user": "u_gated"}).json() == {"export": "u_gated"}
        assert _statuses(app, "u_other") == dict.fromkeys(_PATHS, 403)


def test_a_starlette_endpoint_wrapped_by_the_gate_answers_the_same_403(server: Server) -> None:
    with Replica(server.url, wait=2) as replica, TestClient(_starlette(replica)) as app:
        assert replica.wait_ready(timeout=10)
        assert app.get("/reports", headers={"x-user": "u_star"}).status_code == 403
        Lifecycle(httpx_poster(server.url), "u_star").subscribe()
        assert replica.wait_until(lambda r: r.allowed("u_star", "pro"), timeout=10)
        assert app.get("/reports", headers={"x-user": "u_star"}).json() == {"report": "ready"}


def test_the_decorator_gates_plain_and_async_functions(server: Server) -> None:
    with LedgerClient(server.url) as client:

        @feature_required("pro", client)
        def export(user_id: str) -> str:
            return f"csv for {user_id}"

        with pytest.raises(FeatureDeniedError) as denied:
            export("u_deco")
        assert denied.value.code == "feature_required"
        life = Lifecycle(httpx_poster(server.url), "u_deco")
        life.subscribe()
        read = client.entitlements("u_deco", min_position=life.last)  # waits for the event
        assert read["features"] == ["core", "pro"]
        assert export("u_deco") == "csv for u_deco"
        assert run(_summaries(server.url)) == ["summary for u_deco", "denied u_nobody"]


async def _summaries(url: str) -> list[str]:
    async with AsyncLedgerClient(url) as client:

        @feature_required("pro", client)
        async def summarise(user_id: str) -> str:
            return f"summary for {user_id}"

        found = [await summarise(user_id="u_deco")]
        try:
            await summarise(user_id="u_nobody")
        except FeatureDeniedError as denied:
            found.append(f"denied {denied.user_id}")
        return found
