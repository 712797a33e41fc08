"""`billing-ledger demo`: a bundled, signed lifecycle through the real pipeline, then the result.

It starts the real service (uvicorn, SQLite in a temporary folder), posts each event signed
with Stripe's HMAC scheme, shows a forged and a redelivered event being handled, and prints
what the ledger recorded, the demo user's entitlements now and the history of their access.
"""

from __future__ import annotations

import json
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import stripe
import uvicorn

from billing_ledger.bootstrap import build
from billing_ledger.http.app import create_app
from billing_ledger.settings import Settings

USER, CUSTOMER, SUBSCRIPTION = "u_demo", "cus_demo", "sub_demo"
DAY = 86400
Json = dict[str, Any]


def _price() -> Json:
    return {
        "id": "price_pro",
        "object": "price",
        "product": "prod_pro",
        "lookup_key": "pro_monthly",
        "unit_amount": 2000,
        "currency": "usd",
        "recurring": {"interval": "month"},
    }


def _subscription(
    status: str,
    start: int,
    end: int,
    *,
    ids: tuple[str, str, str] = (USER, CUSTOMER, SUBSCRIPTION),
    price: Json | None = None,
    **extra: Any,
) -> Json:
    user, customer, subscription = ids  # trigger's lifecycles pass their own
    item = {
        "id": f"si_{subscription.removeprefix('sub_')}",
        "object": "subscription_item",
        "price": price or _price(),
        "quantity": 1,
        "current_period_start": start,
        "current_period_end": end,
    }
    sub = {
        "id": subscription,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "items": {"object": "list", "data": [item], "has_more": False},
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "ended_at": None,
        "trial_end": None,
        "metadata": {"app_user_id": user},
        "livemode": False,
    }
    return sub | extra


def _invoice(
    invoice_id: str,
    status: str,
    created: int,
    attempt: int,
    paid: bool,
    ids: tuple[str, str] = (CUSTOMER, SUBSCRIPTION),
) -> Json:
    customer, subscription = ids
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "status": status,
        "amount_due": 2000,
        "amount_paid": 2000 if paid else 0,
        "amount_remaining": 0 if paid else 2000,
        "currency": "usd",
        "attempt_count": attempt,
        "created": created,
        "billing_reason": "subscription_cycle",
        "hosted_invoice_url": f"https://invoice.stripe.com/i/{invoice_id}",
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": subscription, "metadata": {}},
        },
        "status_transitions": {"paid_at": created if paid else None},
        "livemode": False,
    }


def _event(n: int | str, type_: str, created: int, obj: Json, previous: Json | None = None) -> Json:
    data: Json = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": n if isinstance(n, str) else f"evt_demo_{n:02d}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }


def _checkout_session() -> Json:
    return {
        "id": "cs_demo",
        "object": "checkout.session",
        "mode": "subscription",
        "status": "complete",
        "payment_status": "paid",
        "client_reference_id": USER,
        "customer": CUSTOMER,
        "subscription": SUBSCRIPTION,
        "livemode": False,
    }


def lifecycle(t: int) -> list[Json]:
    """Checkout, a renewal that fails then recovers inside the grace period, a scheduled cancel."""
    session = _checkout_session()
    m = 30 * DAY
    return [
        _event(1, "customer.subscription.created", t, _subscription("active", t, t + m)),
        _event(2, "checkout.session.completed", t, session),
        _event(3, "invoice.paid", t + 1, _invoice("in_demo_1", "paid", t, 1, True)),
        _event(4, "invoice.payment_failed", t + m, _invoice("in_demo_2", "open", t + m, 1, False)),
        _event(
            5,
            "customer.subscription.updated",
            t + m,
            _subscription("past_due", t + m, t + 2 * m),
            {"status": "active"},
        ),
        _event(6, "invoice.paid", t + m + 3 * DAY, _invoice("in_demo_2", "paid", t + m, 2, True)),
        _event(
            7,
            "customer.subscription.updated",
            t + m + 3 * DAY,
            _subscription("active", t + m, t + 2 * m),
            {"status": "past_due"},
        ),
        _event(
            8,
            "customer.subscription.updated",
            t + m + 8 * DAY,
            _subscription(
                "active",
                t + m,
                t + 2 * m,
                cancel_at_period_end=True,
                cancel_at=t + 2 * m,
                canceled_at=t + m + 8 * DAY,
            ),
            {"cancel_at_period_end": False, "cancel_at": None, "canceled_at": None},
        ),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(settings: Settings, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(build(settings)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            return server, thread
        time.sleep(0.05)
    raise RuntimeError("the demo service did not start")


def _post(client: httpx.Client, body: bytes, secret: str, age: int = 0) -> httpx.Response:
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, int(time.time()) - age
    )
    return client.post("/webhooks/stripe", content=body, headers={"stripe-signature": header})


def run_demo(say: Callable[[str], None], folder: Path | None = None) -> int:
    """Run the demo; every line goes through `say`."""
    secret = "whsec_demo_" + secrets.token_hex(8)
    folder = folder or Path(tempfile.mkdtemp(prefix="billing-ledger-demo-"))
    settings = Settings(database_url=f"sqlite:///{folder / 'ledger.db'}", webhook_secrets=(secret,))
    port = _free_port()
    server, thread = _serve(settings, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            last = _deliver(client, secret, say)
            _show(client, last, say)
    finally:
        server.should_exit = True
        thread.join(10)
    say(f"ledger kept at {folder / 'ledger.db'}")
    return 0


def _deliver(client: httpx.Client, secret: str, say: Callable[[str], None]) -> int:
    start = int(time.time()) - 40 * DAY
    events = lifecycle(start)
    say(
        f"Delivering {len(events)} signed Stripe events for {USER} (one delivered twice, one forged):"
    )
    position = 0
    for event in events:
        body = orjson.dumps(event)
        answer = _post(client, body, secret).json()
        position = max(position, answer["position"])
        say(
            f"  {event['id']}  {event['type']:<32} -> {answer['status']} at position {answer['position']}"
        )
    again = _post(client, orjson.dumps(events[2]), secret, age=60).json()
    say(
        f"  {events[2]['id']}  redelivered by Stripe            -> {again['status']} (position {again['position']})"
    )
    forged = _post(client, orjson.dumps(events[0] | {"id": "evt_forged"}), "whsec_not_ours")
    say(
        f"  evt_forged    signed with the wrong secret     -> {forged.status_code} {forged.json()['error']}"
    )
    return position


def _show(client: httpx.Client, position: int, say: Callable[[str], None]) -> None:
    reads = f"/v1/users/{USER}"
    entitlements = client.get(f"{reads}/entitlements", params={"min_position": position}).json()
    say(f"\nEntitlements of {USER} now:")
    say(json.dumps(entitlements, indent=2))
    access = client.get(f"{reads}/access/pro", params={"min_position": position}).json()
    say(f"\nMay {USER} use 'pro'? {access['allowed']}: {access['reason']}")
    history = client.get(f"{reads}/history", params={"min_position": position}).json()
    say(f"\nHistory of {USER}'s access:")
    for change in history["changes"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(change["at"]))
        cause = change["event_id"] or "rule"
        say(
            f"  {when}  {sorted(change['features_before'])} -> {sorted(change['features_after'])}"
            f"  by {cause} ({change['event_type'] or '-'}): {change['reason']}"
        )
    cancel_at = entitlements["subscriptions"][0]["access_until"]
    later = client.get(f"{reads}/entitlements", params={"at": cancel_at}).json()
    say(
        f"\nAt the scheduled cancellation ({time.strftime('%Y-%m-%d', time.gmtime(cancel_at))}), "
        f"if nothing else arrives: features {later['features']}"
    )
    invoices = client.get(f"{reads}/invoices").json()["invoices"]
    say("\nInvoices: " + ", ".join(f"{i['id']} {i['status']} {i['amount_paid']}" for i in invoices))
