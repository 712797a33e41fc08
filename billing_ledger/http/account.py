"""What the billing pages show for one user, read through the read side's one entry point.

The pages trust only webhook-projected state: a Checkout redirect is a hint to wait, and
`checkout_confirmed` says when the ledger has seen that session complete for this user
(the rule itself lives in projections/queries).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from billing_ledger.projections.queries import Account as Account  # the pages import it here

if TYPE_CHECKING:
    from billing_ledger.http.state import Services

CONFIRM_WAIT_SECONDS = 2.0  # how long one page view waits for the projections

STATUS_LABELS = {
    "active": "Active",
    "trialing": "Trial",
    "past_due": "Payment overdue",
    "unpaid": "Unpaid",
    "incomplete": "Awaiting first payment",
    "incomplete_expired": "Expired",
    "paused": "Paused",
    "canceled": "Canceled",
}


async def load_account(deps: Services, user_id: str, at: int | None = None) -> Account:
    """The user's billing state at `at` (default now), as /v1 reads it."""
    account: Account = await deps.reads.account(user_id, at)
    return account


async def caught_up(deps: Services) -> bool:
    """Wait briefly until the projections have applied everything stored so far."""
    done: bool = await deps.reads.caught_up(CONFIRM_WAIT_SECONDS)
    return done


def checkout_confirmed(account: Account, session_id: str) -> bool:
    """Whether the ledger saw this user's session complete, and its subscription too."""
    return account.checkout_confirmed(session_id)
