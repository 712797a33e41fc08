"""Error bodies: `{"error": CODE, "message": TEXT}` with a stable CODE."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from billing_ledger.http.wire import Error, answer


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error response in the contract's shape."""
    return answer(Error(code, message), status, headers)


# Starlette answers unknown paths and methods, and unhandled failures, in plain text; these
# give them the contract's shape too.
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: Exception) -> Response:
    """A routing error (404, 405, ...) as `{"error", "message"}`."""
    if not isinstance(exc, HTTPException):
        return await internal_error(request, exc)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return error(exc.status_code, code, exc.detail, headers=dict(exc.headers or {}) or None)


async def internal_error(request: Request, exc: Exception) -> Response:
    """An unhandled failure: a 500 in the contract's shape (the traceback is still logged)."""
    return error(500, "internal_error", "the ledger failed to answer; this is a bug")


EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    HTTPException: http_error,
    Exception: internal_error,
}
