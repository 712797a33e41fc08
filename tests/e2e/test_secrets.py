"""A real `billing-ledger serve`, fed good and bad requests: no secret reaches its output."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest

from tests.support.databases import open_store
from tests.support.server import Server, free_port
from tests.support.signing import event_body, sign

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = f"whsec_{secrets.token_hex(16)}"
ROTATED_SECRET = f"whsec_{secrets.token_hex(16)}"
API_KEY = f"sk_test_{secrets.token_hex(16)}"
API_TOKEN = f"tok_{secrets.token_hex(16)}"
SESSION_SECRET = secrets.token_hex(16)
SECRETS = (WEBHOOK_SECRET, ROTATED_SECRET, API_KEY, API_TOKEN, SESSION_SECRET)


def environment(database_url: str) -> dict[str, str]:
    """Every secret set; Stripe's API base a closed port, so Stripe calls fail and log."""
    return {
        "LEDGER_DATABASE_URL": database_url,
        "STRIPE_WEBHOOK_SECRET": f"{ROTATED_SECRET},{WEBHOOK_SECRET}",
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}",
        "LEDGER_API_TOKEN": API_TOKEN,
        "LEDGER_SESSION_SECRET": SESSION_SECRET,
    }


class Sender:
    """Posts to the server and remembers every Stripe-Signature header it sent."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.signatures: list[str] = []

    def webhook(self, body: bytes, signature: str) -> int:
        """POST one body with one signature header; the status."""
        self.signatures.append(signature)
        headers = {"stripe-signature": signature}
        return self.client.post("/webhooks/stripe", content=body, headers=headers).status_code


def deliver_good_and_bad_events(sender: Sender) -> None:
    """One good delivery, its duplicate, and every kind of refusal."""
    body = event_body("evt_secrets_good")
    assert sender.webhook(body, sign(body, WEBHOOK_SECRET)) == 200
    assert sender.webhook(body, sign(body, ROTATED_SECRET)) == 200
    assert sender.webhook(body, sign(body, "whsec_not_configured")) == 400
    assert sender.webhook(body + b" ", sign(body, WEBHOOK_SECRET)) == 400
    assert sender.webhook(body, sign(body, WEBHOOK_SECRET, int(time.time()) - 7200)) == 400
    assert sender.webhook(body, f"t={int(time.time())},v1={WEBHOOK_SECRET}") == 400
    malformed = b'{"object": "event"}'
    assert sender.webhook(malformed, sign(malformed, WEBHOOK_SECRET)) == 400


def read_with_good_and_bad_tokens(client: httpx.Client) -> None:
    """/v1 with no token, wrong tokens (one of them a secret), the right one; a Stripe call."""
    path = "/v1/users/u_1/entitlements"
    for wrong in ("", "Bearer tok_wrong", f"Bearer {WEBHOOK_SECRET}", f"Basic {API_TOKEN}"):
        assert client.get(path, headers={"authorization": wrong}).status_code == 401
    right = {"authorization": f"Bearer {API_TOKEN}"}
    assert client.get(path, headers=right).status_code == 200
    checkout = client.post(
        "/v1/checkout-sessions", json={"user_id": "u_1", "price": "price_pro"}, headers=right
    )
    assert checkout.status_code == 503  # Stripe is unreachable


def take_storage_away(database_url: str, sender: Sender) -> None:
    """Drop the events table under the running server; a delivery then fails to store."""
    store = open_store(database_url)
    try:
        with store.db.transaction() as cursor:
            cursor.execute(f"DROP TABLE {store.db.table('ledger_events')}")
    finally:
        store.db.close()
    body = event_body("evt_secrets_storage_down")
    assert sender.webhook(body, sign(body, WEBHOOK_SECRET)) in (500, 503)


def test_no_secret_or_signature_reaches_the_server_output(database_url: str) -> None:
    server = Server(environment(database_url)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            sender = Sender(client)
            deliver_good_and_bad_events(sender)
            read_with_good_and_bad_tokens(client)
            take_storage_away(database_url, sender)
    finally:
        server.stop()
    output = server.output()
    # The requests were logged at all (else the test below would hold vacuously).
    for expected in ("outcome=recorded", "reason=invalid_signature", "storage_unavailable"):
        assert expected in output, output[-3000:]
    for secret in SECRETS:
        assert secret not in output
    for signature in sender.signatures:
        assert signature not in output
        for part in signature.split(","):
            assert part.startswith("t=") or part not in output
