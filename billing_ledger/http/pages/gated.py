"""/protected-feature: the page an app gates on a feature."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from billing_ledger.http.account import Account, load_account
from billing_ledger.http.pages.render import (
    PROTECTED_FEATURE,
    day,
    plan_name,
    render,
    sign_in_first,
    storage_page,
)
from billing_ledger.http.signin import current_user, deps_of
from billing_ledger.ledger.store import StorageError
from billing_ledger.projections.policy import access

log = logging.getLogger("billing_ledger.pages")


def access_note(account: Account) -> str:
    """One friendly sentence on how long the user's access lasts."""
    for sub in account.current:
        if sub.status == "past_due" and sub.access_until:
            return (
                "Your last payment did not go through: access continues until "
                f"{day(sub.access_until)} while it is retried."
            )
        if sub.cancel_at or sub.cancel_at_period_end:
            return f"Your plan ends on {day(sub.cancel_at or sub.current_period_end)}."
        if sub.status == "trialing" and sub.trial_end:
            return f"You are on a free trial until {day(sub.trial_end)}."
    return "Thank you for being a customer."


def denied_note(account: Account) -> tuple[str | None, bool]:
    """Why a user without the feature lost it, in plain words, and whether billing can help."""
    if account.has_warning("payment_failed"):
        note = (
            "Your last payment did not go through. Update your payment method to get access back."
        )
        return note, True
    if account.ended:
        return "Your subscription has ended. Choose a plan to get access again.", False
    return None, False


async def protected_feature(request: Request) -> Response:
    """GET /protected-feature: served only when the entitlement check allows it."""
    user = current_user(request)
    if user is None:
        return sign_in_first(request)
    deps = deps_of(request)
    try:
        account: Account = await load_account(deps, user)
    except StorageError:
        return storage_page(request)
    allowed, reason = access(account.entitlements, PROTECTED_FEATURE)
    log.debug("protected feature: user=%s allowed=%s reason=%s", user, allowed, reason)
    context: dict[str, Any] = {"page": "feature", "feature": PROTECTED_FEATURE}
    if allowed:
        holding = [plan_name(p) for p in account.paid_plans(deps.plans)]
        note = access_note(account)
        return render(request, "protected.html", {**context, "holding": holding, "why": note})
    granting = [
        plan_name(p) for p in deps.plans.plans if PROTECTED_FEATURE in p.features and not p.default
    ]
    why, billing_link = denied_note(account)
    extra = {"granting": granting, "why": why, "billing_link": billing_link}
    return render(request, "denied.html", {**context, **extra}, 403)
