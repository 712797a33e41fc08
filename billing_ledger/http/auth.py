"""Bearer-token check (constant-time), as pure ASGI middleware on the /v1 mount."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from billing_ledger.http.errors import error


class BearerTokenMiddleware:
    """Require `Authorization: Bearer TOKEN` on every request it wraps, when a token is set.

    It wraps the /v1 mount, so it sees every /v1/ path, routed or not (a 401, never a 404).
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(b"authorization", b"")
        # The scheme is case-insensitive (RFC 9110 11.1); the token is compared in constant time.
        scheme, _, credentials = supplied.partition(b" ")
        matches = hmac.compare_digest(credentials, self.expected)
        if not (matches and scheme.lower() == b"bearer"):
            response = error(
                401,
                "unauthorized",
                "a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
