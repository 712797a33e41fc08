"""Gates on a feature: a Starlette/FastAPI dependency and endpoint wrapper, and a plain decorator.

```python
gate = requires_feature("pro", replica)          # a Replica, a LedgerClient or (user, feature) -> bool
app = FastAPI(exception_handlers=EXCEPTION_HANDLERS)
@app.get("/reports", dependencies=[Depends(gate)])  # FastAPI: 403 {"error", "message"}
Route("/reports", gate.endpoint(reports))           # Starlette: the same 403
@feature_required("pro", replica)                   # anything else: raises FeatureDeniedError
def export(user_id: str) -> bytes: ...
```
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from billing_ledger.client.ledger import AsyncLedgerClient, LedgerClient
from billing_ledger.client.replica import Replica

Checker = Replica | LedgerClient | AsyncLedgerClient | Callable[[str, str], bool]
UserOf = Callable[[Request], str | None]
P = ParamSpec("P")
R = TypeVar("R")


class FeatureDeniedError(PermissionError):
    """The user may not use the feature (or no user is signed in)."""

    status_code = 403

    def __init__(self, feature: str, user_id: str | None) -> None:
        self.feature = feature
        self.user_id = user_id
        self.code = "feature_required" if user_id else "not_signed_in"
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """What the end user reads (no internal ids)."""
        if self.user_id is None:
            return f"sign in to use {self.feature}"
        return f"your plan does not include {self.feature}"

    def to_json(self) -> dict[str, str]:
        """The ledger's error shape."""
        return {"error": self.code, "message": self.message}


async def feature_denied(request: Request, exc: Exception) -> Response:
    """Exception handler: a FeatureDeniedError as 403 `{"error", "message"}`."""
    body = exc.to_json() if isinstance(exc, FeatureDeniedError) else {"error": "forbidden"}
    return JSONResponse(body, status_code=403)


# Pass to Starlette(...) or FastAPI(...) as exception_handlers (or merge into yours).
EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    FeatureDeniedError: feature_denied
}


def default_user(request: Request) -> str | None:
    """The user id: `request.state.user_id`, an authenticated `request.user`, the session's
    `user_id`, or the path's `{user_id}`, the first that is set."""
    found = getattr(request.state, "user_id", None)
    if found is None and "user" in request.scope and request.user.is_authenticated:
        found = request.user.identity
    if found is None and "session" in request.scope:
        found = request.session.get("user_id")
    if found is None:
        found = request.path_params.get("user_id")
    return str(found) if found else None


async def check(checker: Checker, user_id: str, feature: str) -> bool:
    """Ask any kind of checker, off the event loop when it blocks on the network."""
    if isinstance(checker, Replica):
        return checker.allowed(user_id, feature)  # a dictionary look-up
    if isinstance(checker, AsyncLedgerClient):
        return await checker.allowed(user_id, feature)
    if isinstance(checker, LedgerClient):
        return await run_in_threadpool(checker.allowed, user_id, feature)
    return bool(await run_in_threadpool(checker, user_id, feature))


def check_sync(checker: Checker, user_id: str, feature: str) -> bool:
    """Ask a checker that answers without an event loop."""
    if isinstance(checker, AsyncLedgerClient):
        raise TypeError("an AsyncLedgerClient needs an async function to gate")
    if isinstance(checker, Replica | LedgerClient):
        return checker.allowed(user_id, feature)
    return bool(checker(user_id, feature))


class FeatureGate:
    """A FastAPI dependency (`Depends(gate)`) that also wraps Starlette endpoints."""

    def __init__(self, feature: str, checker: Checker, user: UserOf = default_user) -> None:
        self.feature = feature
        self.checker = checker
        self.user = user

    async def __call__(self, request: Request) -> str:
        """The signed-in user's id when they may use the feature; else FeatureDeniedError."""
        user_id = self.user(request)
        if user_id is None or not await check(self.checker, user_id, self.feature):
            raise FeatureDeniedError(self.feature, user_id)
        return user_id

    def endpoint(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A Starlette endpoint answering 403 `{"error", "message"}` unless allowed."""

        @functools.wraps(handler)
        async def gated(request: Request) -> Response:
            try:
                await self(request)
            except FeatureDeniedError as denied:
                return JSONResponse(denied.to_json(), status_code=403)
            return await handler(request)

        return gated


def requires_feature(feature: str, checker: Checker, *, user: UserOf = default_user) -> FeatureGate:
    """A gate on `feature` for Starlette and FastAPI routes."""
    return FeatureGate(feature, checker, user)


def _first_argument(*args: Any, **kwargs: Any) -> str | None:
    found = kwargs.get("user_id", args[0] if args else None)
    return str(found) if found is not None else None


def feature_required(
    feature: str, checker: Checker, *, user: Callable[..., str | None] = _first_argument
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate any function (sync or async): it runs only when the user may use `feature`,
    else raises FeatureDeniedError. `user(*args, **kwargs)` names the user (default: the
    `user_id` argument, or the first)."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def gated_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                user_id = user(*args, **kwargs)
                if user_id is None or not await check(checker, user_id, feature):
                    raise FeatureDeniedError(feature, user_id)
                return await func(*args, **kwargs)

            return cast(Callable[P, R], gated_async)

        @functools.wraps(func)
        def gated(*args: P.args, **kwargs: P.kwargs) -> R:
            user_id = user(*args, **kwargs)
            if user_id is None or not check_sync(checker, user_id, feature):
                raise FeatureDeniedError(feature, user_id)
            return func(*args, **kwargs)

        return gated

    return decorate
