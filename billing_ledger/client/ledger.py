"""`LedgerClient` and `AsyncLedgerClient`: the /v1 reads and sessions, one request each."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar
from urllib.parse import quote

import httpx

Json = dict[str, Any]
_T = TypeVar("_T")


class LedgerError(RuntimeError):
    """The ledger answered an error (`code` and `message` from its body) or could not be reached."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Access(TypedDict):
    """`GET /v1/users/{user_id}/access/{feature}`."""

    allowed: bool
    reason: str


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def _params(at: int | str | None, min_position: int | None) -> dict[str, str]:
    found = {"at": str(at) if at is not None else None, "min_position": min_position}
    return {k: str(v) for k, v in found.items() if v is not None}


def _user(user_id: str, tail: str) -> str:
    return f"/v1/users/{quote(user_id, safe='')}/{tail}"


def _answer(response: httpx.Response) -> Json:
    """The JSON body of a 2xx, else a LedgerError carrying the contract's code."""
    if response.is_success:
        body: Json = response.json()
        return body
    try:
        body = response.json()
        code, message = str(body["error"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200]
    raise LedgerError(response.status_code, code, message)


def _whole(body: Json) -> Json:
    return body


@dataclass(frozen=True)
class _Call(Generic[_T]):
    """One request of the API and how its answer reads: what both clients send."""

    method: str
    path: str
    read: Callable[[Json], _T]
    params: dict[str, str] | None = None
    body: Json | None = None

    @property
    def args(self) -> dict[str, Any]:
        """The request's query and JSON body, as httpx takes them."""
        return {"params": self.params, "json": self.body}


@contextmanager
def _reaching() -> Iterator[None]:
    """A failure to reach the ledger as the LedgerError `unreachable`."""
    try:
        yield
    except httpx.HTTPError as e:
        raise LedgerError(0, "unreachable", f"{type(e).__name__}: {e}") from e


def _access(body: Json) -> Access:
    return Access(allowed=bool(body["allowed"]), reason=str(body["reason"]))


def _listed(key: str) -> Callable[[Json], list[Json]]:
    def read(body: Json) -> list[Json]:
        found: list[Json] = body[key]
        return found

    return read


# -- the calls, one function each (the clients' methods say what they return) -----------


def _entitlements(user_id: str, at: int | str | None, min_position: int | None) -> _Call[Json]:
    return _Call("GET", _user(user_id, "entitlements"), _whole, _params(at, min_position))


def _access_of(
    user_id: str, feature: str, at: int | str | None, min_position: int | None
) -> _Call[Access]:
    path = _user(user_id, f"access/{quote(feature, safe='')}")
    return _Call("GET", path, _access, _params(at, min_position))


def _list(user_id: str, tail: str, key: str, at: int | str | None) -> _Call[list[Json]]:
    return _Call("GET", _user(user_id, tail), _listed(key), _params(at, None))


def _event(event_id: str) -> _Call[Json]:
    return _Call("GET", f"/v1/events/{quote(event_id, safe='')}", _whole)


def _changes(after: int, limit: int, wait: float) -> _Call[Json]:
    params = {"after": str(after), "limit": str(limit), "wait": f"{wait:g}"}
    return _Call("GET", "/v1/changes", _whole, params)


def _checkout(user_id: str, price: str, quantity: int) -> _Call[Json]:
    body = {"user_id": user_id, "price": price, "quantity": quantity}
    return _Call("POST", "/v1/checkout-sessions", _whole, body=body)


def _portal(user_id: str, return_url: str) -> _Call[Json]:
    body = {"user_id": user_id, "return_url": return_url}
    return _Call("POST", "/v1/portal-sessions", _whole, body=body)


def _client_args(base_url: str, token: str | None, timeout: float) -> dict[str, Any]:
    return {"base_url": base_url.rstrip("/"), "headers": _headers(token), "timeout": timeout}


class LedgerClient:
    """Synchronous client of the ledger's /v1 API."""

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout: float = 10.0, **httpx_args: Any
    ) -> None:
        self.http = httpx.Client(**_client_args(base_url, token, timeout), **httpx_args)

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def _send(self, call: _Call[_T]) -> _T:
        with _reaching():
            response = self.http.request(call.method, call.path, **call.args)
        return call.read(_answer(response))

    def entitlements(
        self, user_id: str, *, at: int | str | None = None, min_position: int | None = None
    ) -> Json:
        """The user's features, plans, customers and subscriptions."""
        return self._send(_entitlements(user_id, at, min_position))

    def access(
        self,
        user_id: str,
        feature: str,
        *,
        at: int | str | None = None,
        min_position: int | None = None,
    ) -> Access:
        """Whether the user may use `feature`, and why."""
        return self._send(_access_of(user_id, feature, at, min_position))

    def allowed(self, user_id: str, feature: str) -> bool:
        """`access(...)["allowed"]`."""
        return self.access(user_id, feature)["allowed"]

    def invoices(self, user_id: str, *, at: int | str | None = None) -> list[Json]:
        """The user's invoices, newest first."""
        return self._send(_list(user_id, "invoices", "invoices", at))

    def history(self, user_id: str, *, at: int | str | None = None) -> list[Json]:
        """Every change of the user's features, oldest first."""
        return self._send(_list(user_id, "history", "changes", at))

    def event(self, event_id: str) -> Json:
        """One stored event."""
        return self._send(_event(event_id))

    def changes(self, after: int = 0, *, limit: int = 500, wait: float = 0) -> Json:
        """One page of the change feed: `{"changes": [...], "next": POS}`."""
        return self._send(_changes(after, limit, wait))

    def checkout_session(self, user_id: str, price: str, quantity: int = 1) -> Json:
        """A Checkout Session for the user: `{"id", "url"}`."""
        return self._send(_checkout(user_id, price, quantity))

    def portal_session(self, user_id: str, return_url: str) -> Json:
        """A billing portal session: `{"url"}`."""
        return self._send(_portal(user_id, return_url))


class AsyncLedgerClient:
    """The asynchronous twin of LedgerClient."""

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout: float = 10.0, **httpx_args: Any
    ) -> None:
        self.http = httpx.AsyncClient(**_client_args(base_url, token, timeout), **httpx_args)

    async def __aenter__(self) -> AsyncLedgerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def _send(self, call: _Call[_T]) -> _T:
        with _reaching():
            response = await self.http.request(call.method, call.path, **call.args)
        return call.read(_answer(response))

    async def entitlements(
        self, user_id: str, *, at: int | str | None = None, min_position: int | None = None
    ) -> Json:
        """The user's features, plans, customers and subscriptions."""
        return await self._send(_entitlements(user_id, at, min_position))

    async def access(
        self,
        user_id: str,
        feature: str,
        *,
        at: int | str | None = None,
        min_position: int | None = None,
    ) -> Access:
        """Whether the user may use `feature`, and why."""
        return await self._send(_access_of(user_id, feature, at, min_position))

    async def allowed(self, user_id: str, feature: str) -> bool:
        """`(await access(...))["allowed"]`."""
        return (await self.access(user_id, feature))["allowed"]

    async def invoices(self, user_id: str, *, at: int | str | None = None) -> list[Json]:
        """The user's invoices, newest first."""
        return await self._send(_list(user_id, "invoices", "invoices", at))

    async def history(self, user_id: str, *, at: int | str | None = None) -> list[Json]:
        """Every change of the user's features, oldest first."""
        return await self._send(_list(user_id, "history", "changes", at))

    async def event(self, event_id: str) -> Json:
        """One stored event."""
        return await self._send(_event(event_id))

    async def changes(self, after: int = 0, *, limit: int = 500, wait: float = 0) -> Json:
        """One page of the change feed."""
        return await self._send(_changes(after, limit, wait))

    async def checkout_session(self, user_id: str, price: str, quantity: int = 1) -> Json:
        """A Checkout Session for the user: `{"id", "url"}`."""
        return await self._send(_checkout(user_id, price, quantity))

    async def portal_session(self, user_id: str, return_url: str) -> Json:
        """A billing portal session: `{"url"}`."""
        return await self._send(_portal(user_id, return_url))
