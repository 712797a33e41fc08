"""The errors of a call to Stripe, defined once for the HTTP side and the commands.

`code` is stable (the HTTP side answers it; handlers choose the status), `message` is what
went wrong in words fit to show, `status` Stripe's HTTP status when it answered.
"""

from __future__ import annotations


class BillingError(Exception):
    """A call to Stripe failed, or could not be made."""

    code = "stripe_error"

    def __init__(self, message: str, *, status: int | None = None, context: str = "") -> None:
        # `context` (which call, which answer) prefixes the text a command prints.
        super().__init__(f"{context}: {message}" if context else message)
        self.message = message
        self.status = status


class NotConfiguredError(BillingError):
    """STRIPE_API_KEY is not set."""

    code = "not_configured"


class StripeUnavailableError(BillingError):
    """Stripe could not be reached, kept refusing after every retry, or failed on its side."""

    code = "stripe_unavailable"
