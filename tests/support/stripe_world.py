"""Billing objects made in localstripe through the official SDK (it emits real events)."""

from __future__ import annotations

import uuid

import stripe

from tests.support.localstripe import stripe_client


class StripeWorld:
    """A product, its monthly plans, and helpers that subscribe users with a card."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: stripe.StripeClient = stripe_client(url)

    def plan(self, product_id: str, price_id: str, amount: int = 2000) -> None:
        """A product and a monthly plan (localstripe has plans, not prices; ids match ours)."""
        self.client.v1.products.create({"id": product_id, "name": product_id})
        self.client.v1.plans.create(
            {
                "id": price_id,
                "product": product_id,
                "amount": amount,
                "currency": "usd",
                "interval": "month",
            }
        )

    def customer(self, user_id: str) -> str:
        """A customer tagged with the app user, with a card as its default payment method."""
        customer = self.client.v1.customers.create(
            {
                "email": f"{user_id}-{uuid.uuid4().hex[:6]}@example.com",
                "metadata": {"app_user_id": user_id},
            }
        )
        card = self.client.v1.payment_methods.create(
            {
                "type": "card",
                "card": {
                    "number": "4242424242424242",
                    "exp_month": 12,
                    "exp_year": 2034,
                    "cvc": "123",
                },
            }
        )
        self.client.v1.payment_methods.attach(card.id, {"customer": customer.id})
        self.client.v1.customers.update(
            customer.id, {"invoice_settings": {"default_payment_method": card.id}}
        )
        return customer.id

    def subscribe(self, customer_id: str, price_id: str) -> str:
        """An active subscription (localstripe charges the card at once)."""
        sub = self.client.v1.subscriptions.create(
            {"customer": customer_id, "items": [{"plan": price_id}]}
        )
        return sub.id

    def cancel(self, subscription_id: str) -> None:
        """Cancel now (Stripe emits customer.subscription.deleted)."""
        self.client.v1.subscriptions.cancel(subscription_id)
