"""`LedgerClient` and `AsyncLedgerClient`: the /v1 reads and sessions, one request each."""

from __future__ import annotations

from typing import Any, TypedDict
from urllib.parse import quote

import httpx

Json = dict[str, Any]


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


class LedgerClient:
    """Synchronous client of the ledger's /v1 API."""

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout: float = 10.0, **httpx_args: Any
    ) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=_headers(token), timeout=timeout, **httpx_args
        )

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> Json:
        try:
            return _answer(self.http.get(path, params=params))
        except httpx.HTTPError as e:
            raise LedgerError(0, "unreachable", f"{type(e).__name__}: {e}") from e

    def _post(self, path: str, body: Json) -> Json:
        try:
            return _answer(self.http.post(path, json=body))
        except httpx.HTTPError as e:
            raise LedgerError(0, "unreachable", f"{type(e).__name__}: {e}") from e

    def entitlements(
        self, user_id: str, *, at: int | str | None = None, min_position: int | None = None
    ) -> Json:
        """The user's features, plans, customers and subscriptions."""
        return self._get(_user(user_id, "entitlements"), _params(at, min_position))

    def access(
        self,
        user_id: str,
        feature: str,
        *,
        at: int | str | None = None,
        min_position: int | None = None,
    ) -> Access:
        """Whether the user may use `feature`, and why."""
        body = self._get(
            _user(user_id, f"access/{quote(feature, safe='')}"), _params(at, min_position)
        )
        return Access(allowed=bool(body["allowed"]), reason=str(body["reason"]))

    def allowed(self, user_id: str, feature: str) -> bool:
        """`access(...)["allowed"]`."""
        return self.access(user_id, feature)["allowed"]

    def invoices(self, user_id: str, *, at: int | str | None = None) -> list[Json]:
        """The user's invoices, newest first."""
        found: list[Json] = self._get(_user(user_id, "invoices"), _params(at, None))["invoices"]
        return found

    def history(self, user_id: str, *, at: int | str | None = None) -> list[Json]:
        """Every change of the user's features, oldest first."""
        found: list[Json] = self._get(_user(user_id, "history"), _params(at, None))["changes"]
        return found

    def event(self, event_id: str) -> Json:
        """One stored event."""
        return self._get(f"/v1/events/{quote(event_id, safe='')}")

    def changes(self, after: int = 0, *, limit: int = 500, wait: float = 0) -> Json:
        """One page of the change feed: `{"changes": [...], "next": POS}`."""
        params = {"after": str(after), "limit": str(limit), "wait": f"{wait:g}"}
        return self._get("/v1/changes", params)

    def checkout_session(self, user_id: str, price: str, quantity: int = 1) -> Json:
        """A Checkout Session for the user: `{"id", "url"}`."""
        return self._post(
            "/v1/checkout-sessions", {"user_id": user_id, "price": price, "quantity": quantity}
        )

    def portal_session(self, user_id: str, return_url: str) -> Json:
        """A billing portal session: `{"url"}`."""
        return self._post("/v1/portal-sessions", {"user_id": user_id, "return_url": return_url})


class AsyncLedgerClient:
    """The asynchronous twin of LedgerClient."""

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout: float = 10.0, **httpx_args: Any
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=_headers(token), timeout=timeout, **httpx_args
        )

    async def __aenter__(self) -> AsyncLedgerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Json:
        try:
            return _answer(await self.http.get(path, params=params))
        except httpx.HTTPError as e:
            raise LedgerError(0, "unreachable", f"{type(e).__name__}: {e}") from e

    async def _post(self, path: str, body: Json) -> Json:
        try:
            return _answer(await self.http.post(path, json=body))
        except httpx.HTTPError as e:
            raise LedgerError(0, "unreachable", f"{type(e).__name__}: {e}") from e

    async def entitlements(
        self, user_id: str, *, at: int | str | None = None, min_position: int | None = None
    ) -> Json:
        """The user's features, plans, customers and subscriptions."""
        return await self._get(_user(user_id, "entitlements"), _params(at, min_position))

    async def access(
        self,
        user_id: str,
        feature: str,
        *,
        at: int | str | None = None,
        min_position: int | None = None,
    ) -> Access:
        """Whether the user may use `feature`, and why."""
        path = _user(user_id, f"access/{quote(feature, safe='')}")
        body = await self._get(path, _params(at, min_position))
        return Access(allowed=bool(body["allowed"]), reason=str(body["reason"]))

    async def allowed(self, user_id: str, feature: str) -> bool:
        """`(await access(...))["allowed"]`."""
        return (await self.access(user_id, feature))["allowed"]

    async def invoices(self, user_id: str, *, at: int | str | None = None) -> list[Json]:
        """The user's invoices, newest first."""
        found: list[Json] = (await self._get(_user(user_id, "invoices"), _params(at, None)))[
            "invoices"
        ]
        return found

    async def history(self, user_id: str, *, at: int | str | None = None) -> list[Json]:
        """Every change of the user's features, oldest first."""
        found: list[Json] = (await self._get(_user(user_id, "history"), _params(at, None)))[
            "changes"
        ]
        return found

    async def event(self, event_id: str) -> Json:
        """One stored event."""
        return await self._get(f"/v1/events/{quote(event_id, safe='')}")

    async def changes(self, after: int = 0, *, limit: int = 500, wait: float = 0) -> Json:
        """One page of the change feed."""
        params = {"after": str(after), "limit": str(limit), "wait": f"{wait:g}"}
        return await self._get("/v1/changes", params)

    async def checkout_session(self, user_id: str, price: str, quantity: int = 1) -> Json:
        """A Checkout Session for the user: `{"id", "url"}`."""
        return await self._post(
            "/v1/checkout-sessions", {"user_id": user_id, "price": price, "quantity": quantity}
        )

    async def portal_session(self, user_id: str, return_url: str) -> Json:
        """A billing portal session: `{"url"}`."""
        return await self._post(
            "/v1/portal-sessions", {"user_id": user_id, "return_url": return_url}
        )
