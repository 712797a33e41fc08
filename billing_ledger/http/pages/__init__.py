"""Server-rendered pages: /pricing, /billing, /protected-feature, and the demo sign-in.

Everything shown comes from the projections; Stripe is called only to open a Checkout or
portal session. No /v1 token is involved. One module a page; render.py is what they share.
"""

from __future__ import annotations

from starlette.routing import Route

from billing_ledger.http.pages.account import billing, open_portal
from billing_ledger.http.pages.gated import protected_feature
from billing_ledger.http.pages.login import home, login, login_form, logout
from billing_ledger.http.pages.pricing import pricing, start_checkout

ROUTES = [
    Route("/", home, methods=["GET"]),
    Route("/pricing", pricing, methods=["GET"]),
    Route("/pricing/checkout", start_checkout, methods=["POST"]),
    Route("/billing", billing, methods=["GET"]),
    Route("/billing/portal", open_portal, methods=["POST"]),
    Route("/protected-feature", protected_feature, methods=["GET"]),
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
