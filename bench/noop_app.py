"""The baseline: the same uvicorn and Starlette answering a POST without doing anything."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def noop(request: Request) -> Response:
    """Read the body, answer 200: what every endpoint pays before its own work."""
    await request.body()
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/noop", noop, methods=["POST", "GET"])])
