"""What the billing pages show for one user, read from the projections (never from Stripe).

The pages trust only webhook-projected state: a Checkout redirect is a hint to wait, and
`checkout_confirmed` says when the ledger has seen that session complete for this user.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from billing_ledger.ledger.canonical import CHECKOUT_SESSION, SUBSCRIPTION, CheckoutSession
from billing_ledger.projections.fold import TERMINAL_SUBSCRIPTION, by_object, state_at
from billing_ledger.projections.invoices import InvoiceView, user_invoices
from billing_ledger.projections.plans import Plan, Plans
from billing_ledger.projections.policy import (
    Entitlements,
    SubscriptionAccess,
    UserInputs,
    evaluate,
)

if TYPE_CHECKING:
    from billing_ledger.bootstrap import Deps

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


@dataclass(frozen=True)
class Account:
    """One user's billing state at one time."""

    user_id: str
    at: int
    inputs: UserInputs
    entitlements: Entitlements
    invoices: tuple[InvoiceView, ...]

    @property
    def current(self) -> tuple[SubscriptionAccess, ...]:
        """Subscriptions that have not ended, newest period first."""
        live = [s for s in self.entitlements.subscriptions if s.status not in TERMINAL_SUBSCRIPTION]
        return tuple(sorted(live, key=lambda s: -(s.current_period_end or 0)))

    @property
    def ended(self) -> bool:
        """Whether the user had subscriptions and every one has ended."""
        return bool(self.entitlements.subscriptions) and not self.current

    def paid_plans(self, plans: Plans) -> list[Plan]:
        """The plans the user holds beyond the defaults."""
        held = set(self.entitlements.plans)
        return [p for p in plans.plans if p.id in held and not p.default]

    def has_warning(self, code: str) -> bool:
        """Whether the policy raised `code` (payment_failed, cancellation_scheduled, ...)."""
        return code in self.entitlements.warnings


async def load_account(deps: Deps, user_id: str, at: int | None = None) -> Account:
    """The user's inputs from the views, evaluated by the pure policy at `at` (default now)."""
    when = int(time.time()) if at is None else at
    inputs: UserInputs = await run_in_threadpool(deps.views.load_inputs, user_id)
    return Account(
        user_id=user_id,
        at=when,
        inputs=inputs,
        entitlements=evaluate(inputs, deps.plans, when),
        invoices=tuple(user_invoices(inputs, when)),
    )


async def caught_up(deps: Deps) -> bool:
    """Wait briefly until the projections have applied everything stored so far."""
    if deps.runner is None:
        return False
    head = await run_in_threadpool(deps.store.head)
    done: bool = await run_in_threadpool(deps.runner.wait_for, head, CONFIRM_WAIT_SECONDS)
    return done


def checkout_confirmed(account: Account, session_id: str) -> bool:
    """Whether the ledger saw this user's session complete, and its subscription too."""
    objects = by_object(account.inputs.snapshots)
    chosen = state_at(objects.get((CHECKOUT_SESSION, session_id), ()), account.at)
    if chosen is None or not isinstance(chosen.state, CheckoutSession):
        return False
    session = chosen.state
    if session.status != "complete" or session.client_reference_id != account.user_id:
        return False
    # checkout.session.completed often arrives before the subscription it created.
    return session.subscription_id is None or (SUBSCRIPTION, session.subscription_id) in objects
