"""The API's one table from exception to answer, registered as the app's exception handlers.

A handler raises; the row of the exception's class (or of its nearest base) says the status
and the stable code of the `{"error": CODE, "message": TEXT}` body. The pages keep their
HTML error page (pages/errors.with_error_pages wraps these handlers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from billing_ledger.http.billing import InvalidPriceError, InvalidQuantityError
from billing_ledger.http.stripe_client import (
    BillingError,
    CardDeclinedError,
    NotConfiguredError,
    StripeCallError,
    StripeUnavailableError,
    UnknownCustomerError,
    UnknownPriceError,
)
from billing_ledger.http.wire import Error, answer
from billing_ledger.ledger.intake import (
    BusyError,
    PayloadTooLargeError,
    SecretNotSetError,
    SenderGoneError,
)
from billing_ledger.ledger.store import StorageError
from billing_ledger.ledger.user_ids import InvalidUserIdError
from billing_ledger.ledger.verify import InvalidSignatureError, MalformedEventError
from billing_ledger.projections.queries import NotCaughtUpError


class BadParameterError(ValueError):
    """A query or path parameter the reads (or the console) cannot use."""


class RequestBodyError(ValueError):
    """The request body is not what the endpoint takes."""


class NotStoredError(StorageError):
    """What a client sent could not be stored; the message says what, and to retry."""


class Answer(NamedTuple):
    """How the API answers an exception: `code` None is a BillingError's own code, `message`
    None the exception's text."""

    status: int
    code: str | None = None
    message: str | None = None
    headers: dict[str, str] | None = None


RETRY_SOON = {"Retry-After": "1"}
RETRY_LATER = {"Retry-After": "5"}

ERRORS: dict[type[Exception], Answer] = {
    # The reads and the feed.
    BadParameterError: Answer(400, "invalid_parameter"),
    InvalidUserIdError: Answer(400, "invalid_user_id"),
    NotCaughtUpError: Answer(503, "not_caught_up", headers=RETRY_SOON),
    # The driver's text stays in the log.
    StorageError: Answer(503, "storage_unavailable", "the ledger's storage is unavailable"),
    NotStoredError: Answer(503, "storage_unavailable", headers=RETRY_LATER),
    # The webhook's refusals (ledger/intake.py): nothing refused is stored.
    SecretNotSetError: Answer(503, "not_configured"),
    PayloadTooLargeError: Answer(413, "payload_too_large"),
    InvalidSignatureError: Answer(400, "invalid_signature"),
    MalformedEventError: Answer(400, "malformed_event"),
    BusyError: Answer(503, "busy", headers=RETRY_SOON),
    # The sender hung up mid-body: nothing to answer, nothing stored.
    SenderGoneError: Answer(400, "client_disconnected"),
    # The sessions: a bad body, then what Stripe or the catalog refused.
    RequestBodyError: Answer(400, "invalid_request"),
    BillingError: Answer(502),  # anything unexpected from Stripe
    NotConfiguredError: Answer(503),
    StripeUnavailableError: Answer(503, headers=RETRY_LATER),
    CardDeclinedError: Answer(402),  # Payment Required: what Stripe itself answers
    UnknownPriceError: Answer(400),
    InvalidPriceError: Answer(400),
    InvalidQuantityError: Answer(400),
    UnknownCustomerError: Answer(404),
    StripeCallError: Answer(502),
}

# Starlette answers unknown paths and methods in plain text; these give them the contract's
# shape too.
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error response in the contract's shape."""
    return answer(Error(code, message), status, headers)


def answer_for(exc: Exception) -> Answer:
    """The row of the exception's class or of its nearest base in ERRORS, code filled in."""
    row = next(ERRORS[kind] for kind in type(exc).__mro__ if kind in ERRORS)
    if isinstance(exc, BillingError):
        return row._replace(code=row.code or exc.code, message=row.message or exc.message)
    return row


def status_for(exc: BillingError) -> int:
    """The HTTP status of a billing failure (the pages answer it too)."""
    return answer_for(exc).status


async def refused(request: Request, exc: Exception) -> Response:
    """An exception of ERRORS as its row's `{"error", "message"}`."""
    status, code, message, headers = answer_for(exc)
    return error(status, code or "http_error", message or str(exc), headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """A routing error (404, 405, ...) as `{"error", "message"}`."""
    if not isinstance(exc, HTTPException):
        return await internal_error(request, exc)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return error(exc.status_code, code, exc.detail, headers=dict(exc.headers or {}) or None)


async def internal_error(request: Request, exc: Exception) -> Response:
    """An unhandled failure: a 500 in the contract's shape (the traceback is still logged)."""
    return error(500, "internal_error", "the ledger failed to answer; this is a bug")


Handler = Callable[[Request, Exception], Awaitable[Response]]

EXCEPTION_HANDLERS: dict[Any, Handler] = {
    **dict.fromkeys(ERRORS, refused),
    HTTPException: http_error,
    Exception: internal_error,
}
