"""A user's invoices as of a time, with each invoice's payment attempts (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from billing_ledger.ledger.canonical import INVOICE, SUBSCRIPTION, Invoice, Snapshot, Subscription
from billing_ledger.projections.fold import Attempt, ObjectKey, attempts, by_object, state_at
from billing_ledger.projections.links import customer_of
from billing_ledger.projections.policy import UserInputs, customers_at
from billing_ledger.projections.shapes import json_of


@dataclass(frozen=True)
class InvoiceView:
    """One invoice as the user's invoice list shows it."""

    id: str
    status: str | None
    amount_due: int
    amount_paid: int
    currency: str | None
    subscription_id: str | None
    created: int
    hosted_invoice_url: str | None
    attempts: tuple[Attempt, ...] = ()
    # S31: a delayed payment (ACH) failed after the subscription went active; Stripe voids
    # the invoice and keeps the subscription active, so operations must hear of it.
    payment_reversed_after_activation: bool = False
    number: str | None = None  # what the pages show (not in the contract's invoice object)
    invoice_pdf: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT.md invoice object, plus attempts and the S31 flag."""
        return json_of(
            self,
            "id status amount_due amount_paid currency subscription_id created hosted_invoice_url "
            "attempts payment_reversed_after_activation",
        )


def _reversed_after_activation(
    invoice: Invoice, snaps: list[Snapshot], objects: Mapping[ObjectKey, list[Snapshot]], at: int
) -> bool:
    if invoice.status != "void" or invoice.subscription_id is None:
        return False
    was_open = any(
        isinstance(s.state, Invoice) and s.state.status == "open" and s.created <= at for s in snaps
    )
    sub = state_at(objects.get((SUBSCRIPTION, invoice.subscription_id), ()), at)
    return (
        was_open
        and sub is not None
        and isinstance(sub.state, Subscription)
        and (sub.state.status == "active")
    )


def _view(
    chosen: Snapshot, snaps: list[Snapshot], objects: Mapping[ObjectKey, list[Snapshot]], at: int
) -> InvoiceView | None:
    inv = chosen.state
    if not isinstance(inv, Invoice) or inv.deleted:
        return None
    return InvoiceView(
        id=inv.id,
        status=inv.status,
        amount_due=inv.amount_due,
        amount_paid=inv.amount_paid,
        currency=inv.currency,
        subscription_id=inv.subscription_id,
        created=inv.created if inv.created is not None else chosen.created,
        hosted_invoice_url=inv.hosted_invoice_url,
        attempts=attempts(snaps, at),
        payment_reversed_after_activation=_reversed_after_activation(inv, snaps, objects, at),
        number=inv.number,
        invoice_pdf=inv.invoice_pdf,
    )


def user_invoices(inputs: UserInputs, at: int) -> list[InvoiceView]:
    """The invoices of the user's linked customers as of `at`, newest first."""
    linked = set(customers_at(inputs, at))
    objects = by_object(s for s in inputs.snapshots if customer_of(s) in linked)
    views = [
        view
        for (kind, _), snaps in objects.items()
        if kind == INVOICE
        and (chosen := state_at(snaps, at)) is not None
        and (view := _view(chosen, snaps, objects, at)) is not None
    ]
    return sorted(views, key=lambda v: (v.created, v.id), reverse=True)
