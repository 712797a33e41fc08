"""The one table of errors: an exception is answered by the row of its class or of its nearest
base, in the contract's `{"error", "message"}` shape."""

from __future__ import annotations

import orjson
from starlette.requests import Request

from billing_ledger.http.errors import (
    ERRORS,
    EXCEPTION_HANDLERS,
    BadParameterError,
    NotStoredError,
    answer_for,
    refused,
)
from billing_ledger.http.stripe_client import BillingError, StripeUnavailableError
from billing_ledger.ledger.intake import BusyError
from billing_ledger.ledger.store import StorageError
from tests.support.aio import run


def answered(exc: Exception) -> tuple[int, dict[str, str], dict[str, str]]:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    response = run(refused(request, exc))
    return response.status_code, orjson.loads(response.body), dict(response.headers)


def test_every_row_is_registered_as_an_exception_handler() -> None:
    assert all(EXCEPTION_HANDLERS[kind] is refused for kind in ERRORS)


def test_a_parameter_error_answers_its_text_under_its_code() -> None:
    status, body, _ = answered(BadParameterError("at: expected Unix seconds"))
    assert (status, body) == (
        400,
        {"error": "invalid_parameter", "message": "at: expected Unix seconds"},
    )


def test_a_storage_failure_hides_the_drivers_text() -> None:
    status, body, headers = answered(StorageError("connection to 10.0.0.7 refused"))
    assert status == 503 and body["error"] == "storage_unavailable"
    assert "10.0.0.7" not in body["message"] and "retry-after" not in headers


def test_what_was_not_stored_says_so_and_when_to_retry() -> None:
    status, body, headers = answered(NotStoredError("the ledger could not store the event"))
    assert (status, body["message"]) == (503, "the ledger could not store the event")
    assert headers["retry-after"] == "5"


def test_a_billing_error_answers_its_own_code_and_message() -> None:
    failure = StripeUnavailableError("Stripe could not be reached.", context="checkout")
    status, body, headers = answered(failure)
    assert (status, headers["retry-after"]) == (503, "5")
    assert body == {"error": "stripe_unavailable", "message": "Stripe could not be reached."}


def test_a_class_without_a_row_takes_its_nearest_bases() -> None:
    class NewStripeError(BillingError):
        code = "new_stripe_error"

    class SlowerBusyError(BusyError):
        pass

    assert answer_for(NewStripeError("odd")) == (502, "new_stripe_error", "odd", None)
    assert answer_for(SlowerBusyError("full")).code == "busy"
