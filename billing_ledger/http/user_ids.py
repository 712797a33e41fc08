"""A user read whose id holds `/`: the server decodes `%2F` before routing, so no read route
matches it; this last route answers why (400 invalid_user_id) instead of a bare 404."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_ledger.http.errors import error
from billing_ledger.ledger.user_ids import checked_user_id

USER_SEGMENT = 3  # "", "v1", "users", USER_ID, ...


async def unroutable_user_read(request: Request) -> Response:
    """GET /v1/users/<id with a slash>/...: the id's reason; anything else: not found."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    segments = raw.split(b"/")
    if len(segments) > USER_SEGMENT + 1:
        # An invalid id raises InvalidUserIdError: 400 invalid_user_id (http/errors.py).
        checked_user_id(unquote_to_bytes(segments[USER_SEGMENT]).decode("utf-8", "replace"))
    return error(404, "not_found", "Not Found")


# Registered after every other /v1 route (relative to the mount): it only sees what none of
# them matched.
# GET only: a full match for other methods would turn a read route's 405 into a 404.
ROUTE = Route("/users/{rest:path}", unroutable_user_read, methods=["GET"])
