"""Monetization end to end: a real uvicorn, signed webhooks, the fake Stripe, headless Chromium.

The ledger runs as `billing-ledger serve` on 127.0.0.1 with STRIPE_API_BASE pointed at the
fake (Checkout, portal, Prices; customers proxied to localstripe). Webhooks are signed with
the real HMAC scheme. Screenshots of the pages land in build/screenshots/.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from billing_ledger.http.pages.render import day
from tests.support.browser import screenshot
from tests.support.fake_stripe import API_KEY, CARD_DECLINED, FakeStripe
from tests.support.lifecycle import Lifecycle, httpx_poster
from tests.support.localstripe import stripe_client
from tests.support.server import Server, free_port
from tests.support.signing import SECRET

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ledger(
    fake_stripe_server: FakeStripe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One `billing-ledger serve` for the module, its Stripe base pointed at the fake."""
    port = free_port()
    database = tmp_path_factory.mktemp("monetization") / "ledger.db"
    env = {
        "LEDGER_DATABASE_URL": f"sqlite:///{database}",
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": fake_stripe_server.url,
        "LEDGER_APP_URL": f"http://127.0.0.1:{port}",
        "LEDGER_DEMO_SIGNIN": "true",
    }
    server = Server(env, port=port).start()
    try:
        yield server
    finally:
        server.stop()


def new_user() -> str:
    """A user no other test has seen."""
    return f"u_{uuid.uuid4().hex[:10]}"


def lifecycle(ledger: Server, user: str, **fields: Any) -> Lifecycle:
    """Signed webhooks for one of the user's subscriptions, posted to the server."""
    return Lifecycle(httpx_poster(ledger.url), user, **fields)


def entitlements(ledger: Server, user: str, position: int = 0) -> dict[str, Any]:
    """GET /v1/users/{user}/entitlements once the projections reached `position`."""
    response = httpx.get(
        f"{ledger.url}/v1/users/{user}/entitlements", params={"min_position": position}, timeout=10
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@contextmanager
def signed_in(ledger: Server, user: str) -> Iterator[httpx.Client]:
    """An HTTP client holding the demo sign-in's session cookie."""
    with httpx.Client(base_url=ledger.url, timeout=10) as client:
        form = client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        answer = client.post(
            "/login", data={"csrf": csrf.group(1), "user_id": user, "next": "/billing"}
        )
        assert answer.status_code == 303
        yield client


def browser_sign_in(page: Page, ledger: Server, user: str, then: str = "/pricing") -> None:
    """Sign in through the demo form, landing on `then`."""
    page.goto(f"{ledger.url}/login?next={then}")
    page.fill("#user_id", user)
    page.click("#sign-in")
    page.wait_for_url(f"{ledger.url}{then}")


def upgrade_to_pro(page: Page, ledger: Server, fake: FakeStripe) -> str:
    """From /pricing, click Upgrade and arrive at the fake Checkout; returns the session id."""
    page.goto(f"{ledger.url}/pricing")
    page.click("#upgrade-pro")
    page.wait_for_url(f"{fake.url}/c/pay/cs_test_*")
    return page.url.rsplit("/", 1)[1]


# -- Checkout through the pages (browser) -----------------------------------------------


@pytest.mark.browser
def test_checkout_session_creation_from_the_pricing_page_opens_stripe_checkout(
    page: Page, ledger: Server, fake_stripe: FakeStripe
) -> None:
    user = new_user()
    life = lifecycle(ledger, user)
    for price_id, amount, key in (
        ("price_pro", 2000, "pro_monthly"),
        ("price_basic", 900, "basic_monthly"),
    ):
        price = {"id": price_id, "object": "price", "active": True, "unit_amount": amount,
                 "currency": "usd", "type": "recurring", "lookup_key": key,
                 "recurring": {"interval": "month", "interval_count": 1}}  # fmt: skip
        assert life.send("price.created", price).is_success  # /pricing reads the catalog
    entitlements(ledger, user, life.last)
    browser_sign_in(page, ledger, user)
    expect(page.locator("#plan-pro .price")).to_have_text("$20.00 / month")
    expect(page.locator("#plan-basic .price")).to_have_text("$9.00 / month")
    screenshot(page, "pricing")
    session_id = upgrade_to_pro(page, ledger, fake_stripe)
    expect(page.locator("#price")).to_have_text("price_pro")
    (sent,) = fake_stripe.seen("POST", "/v1/checkout/sessions")
    assert sent.params["mode"] == "subscription"
    assert sent.params["client_reference_id"] == user
    assert sent.params["subscription_data[metadata][app_user_id]"] == user
    assert sent.params["line_items[0][price]"] == "price_pro"
    assert sent.params["success_url"] == (
        f"{ledger.url}/billing?success=true&session_id={{CHECKOUT_SESSION_ID}}"
    )
    assert sent.params["cancel_url"] == f"{ledger.url}/pricing?canceled=true"
    assert fake_stripe.state.sessions[session_id]["customer"] == sent.params["customer"]


@pytest.mark.browser
def test_checkout_success_flow_confirms_only_once_the_webhooks_arrive(
    page: Page, ledger: Server, fake_stripe: FakeStripe
) -> None:
    user = new_user()
    browser_sign_in(page, ledger, user)
    session_id = upgrade_to_pro(page, ledger, fake_stripe)
    page.click("#pay")
    page.wait_for_url(f"{ledger.url}/billing?success=true&session_id={session_id}*")
    # The redirect alone proves nothing: no webhook yet, so no plan yet.
    expect(page.locator("#confirming")).to_contain_text("Confirming your payment")
    expect(page.locator("#plan-name")).to_have_text("Free")
    screenshot(page, "billing-confirming")
    session = fake_stripe.state.sessions[session_id]
    life = lifecycle(ledger, user, customer=session["customer"], sub=session["subscription"])
    life.subscribe(session_id)
    # The page refreshes itself until the projected state shows the session complete.
    expect(page.locator("#confirmed")).to_be_visible(timeout=20_000)
    expect(page.locator("#plan-name")).to_have_text("Pro")
    expect(page.locator("#status")).to_have_text("Active")
    expect(page.locator("#confirming")).to_have_count(0)
    screenshot(page, "billing")


@pytest.mark.browser
def test_checkout_cancel_flow_returns_to_pricing_with_nothing_charged(
    page: Page, ledger: Server, fake_stripe: FakeStripe
) -> None:
    user = new_user()
    browser_sign_in(page, ledger, user)
    upgrade_to_pro(page, ledger, fake_stripe)
    page.click("#back")
    page.wait_for_url(f"{ledger.url}/pricing?canceled=true")
    expect(page.locator("#notice")).to_contain_text("Checkout canceled — nothing was charged")
    screenshot(page, "pricing-canceled")
    denied = page.goto(f"{ledger.url}/protected-feature")
    assert denied is not None and denied.status == 403
    assert entitlements(ledger, user)["features"] == ["core"]


@pytest.mark.browser
def test_user_facing_billing_error_copy_on_the_pricing_page_for_a_declined_card(
    page: Page, ledger: Server, fake_stripe: FakeStripe
) -> None:
    browser_sign_in(page, ledger, new_user())
    fake_stripe.fail_next("POST /v1/checkout/sessions", CARD_DECLINED)
    page.click("#upgrade-pro")
    page.wait_for_url(f"{ledger.url}/pricing/checkout")
    expect(page.locator("#error")).to_have_text(
        "Your card was declined. Nothing was charged; please try another card."
    )
    expect(page.locator("body")).not_to_contain_text("Traceback")
    screenshot(page, "pricing-error")


# -- access and the billing page (browser) ----------------------------------------------


@pytest.mark.browser
def test_plan_aware_access_denies_the_protected_page_then_allows_it_then_denies_it_again(
    page: Page, ledger: Server
) -> None:
    user = new_user()
    browser_sign_in(page, ledger, user)
    denied = page.goto(f"{ledger.url}/protected-feature")
    assert denied is not None and denied.status == 403
    expect(page.locator("#denied")).to_contain_text("It comes with the Pro plan")
    screenshot(page, "protected-denied")
    life = lifecycle(ledger, user)
    life.subscribe()
    entitlements(ledger, user, life.last)
    allowed = page.goto(f"{ledger.url}/protected-feature")
    assert allowed is not None and allowed.status == 200
    expect(page.locator("#feature")).to_contain_text("your Pro plan")
    expect(page.locator("#feature")).not_to_contain_text(life.sub)
    assert life.subscription_deleted().status_code == 200
    entitlements(ledger, user, life.last)
    again = page.goto(f"{ledger.url}/protected-feature")
    assert again is not None and again.status == 403


@pytest.mark.browser
def test_invoice_payment_failed_shows_a_banner_that_opens_the_billing_portal(
    page: Page, ledger: Server, fake_stripe: FakeStripe, localstripe_url: str
) -> None:
    user = new_user()
    customer = (
        stripe_client(localstripe_url).v1.customers.create({"metadata": {"app_user_id": user}}).id
    )
    life = lifecycle(ledger, user, customer=customer)
    life.subscribe()
    assert life.invoice_payment_failed("in_renewal_" + user).status_code == 200
    assert life.subscription_updated({"status": "active"}, status="past_due").status_code == 200
    entitlements(ledger, user, life.last)
    browser_sign_in(page, ledger, user, then="/billing")
    expect(page.locator("#payment-failed")).to_contain_text("Your last payment failed")
    expect(page.locator("#status")).to_have_text("Payment overdue")
    screenshot(page, "billing-payment-failed")
    page.click("#fix-payment")
    page.wait_for_url(f"{fake_stripe.url}/p/session/bps_*")
    (sent,) = fake_stripe.seen("POST", "/v1/billing_portal/sessions")
    assert sent.params == {"customer": customer, "return_url": f"{ledger.url}/billing"}
    page.click("#return")
    page.wait_for_url(f"{ledger.url}/billing")


@pytest.mark.browser
def test_billing_page_state_shows_plan_renewal_cancellation_and_invoices(
    page: Page, ledger: Server
) -> None:
    user = new_user()
    life = lifecycle(ledger, user)
    life.subscribe()
    browser_sign_in(page, ledger, user, then="/billing")
    expect(page.locator("#plan-name")).to_have_text("Pro")
    expect(page.locator("#renewal")).to_have_text(day(life.period[1]))
    invoice_link = page.locator("#invoices a:not(.pdf)")
    expect(invoice_link).to_have_text("View invoice")
    assert (invoice_link.get_attribute("href") or "").startswith("https://invoice.stripe.com/i/in_")
    expect(page.locator("#invoices tbody tr")).to_have_count(1)
    expect(page.locator("#invoices tbody")).to_contain_text("$20.00")
    scheduled = life.subscription_updated(
        {"cancel_at_period_end": False, "cancel_at": None},
        cancel_at_period_end=True,
        cancel_at=life.period[1],
    )
    entitlements(ledger, user, scheduled.json()["position"])
    page.reload()
    expect(page.locator("#cancellation")).to_contain_text(day(life.period[1]))
    expect(page.locator("#plan")).to_contain_text("Ends on")
    expect(page.locator("#renewal")).to_have_count(0)
    expect(page.locator("#status")).to_have_text("Active")  # access holds until then (P5)


@pytest.mark.browser
def test_billing_portal_session_creation_from_the_manage_billing_button(
    page: Page, ledger: Server, fake_stripe: FakeStripe
) -> None:
    user = new_user()
    browser_sign_in(page, ledger, user)
    upgrade_to_pro(page, ledger, fake_stripe)  # creates and links the user's customer
    page.goto(f"{ledger.url}/billing")
    page.click("#portal")
    page.wait_for_url(f"{fake_stripe.url}/p/session/bps_*")
    (sent,) = fake_stripe.seen("POST", "/v1/billing_portal/sessions")
    assert (
        sent.params["customer"]
        == fake_stripe.seen("POST", "/v1/checkout/sessions")[0].params["customer"]
    )


# -- webhooks through the real server (no browser) --------------------------------------


def test_webhook_signature_verification_rejects_forged_events_and_grants_nothing(
    ledger: Server,
) -> None:
    user = new_user()
    forged = lifecycle(ledger, user, secret="whsec_not_the_endpoint_secret")
    refused = forged.checkout_completed()
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_signature")
    assert forged.subscription_created().status_code == 400
    unsigned = httpx.post(f"{ledger.url}/webhooks/stripe", content=b'{"id": "evt_x"}', timeout=10)
    assert (unsigned.status_code, unsigned.json()["error"]) == (400, "invalid_signature")
    assert entitlements(ledger, user)["plans"] == ["free"]
    with signed_in(ledger, user) as client:
        assert ">Free<" in client.get("/billing").text
    genuine = lifecycle(ledger, user)
    genuine.subscribe()
    assert entitlements(ledger, user, genuine.last)["plans"] == ["free", "pro"]


def test_subscription_created_grants_the_plan_and_shows_it_on_the_billing_page(
    ledger: Server,
) -> None:
    user = new_user()
    life = lifecycle(ledger, user)
    assert life.checkout_completed().status_code == 200
    assert life.subscription_created().status_code == 200
    state = entitlements(ledger, user, life.last)
    assert state["features"] == ["core", "pro"]
    assert state["subscriptions"][0]["status"] == "active"
    with signed_in(ledger, user) as client:
        page = client.get("/billing").text
    assert 'id="plan-name">Pro<' in page and ">Active<" in page


def test_subscription_updated_to_another_price_changes_plan_and_features(ledger: Server) -> None:
    user = new_user()
    life = lifecycle(ledger, user, price="price_basic")
    life.subscribe()
    assert entitlements(ledger, user, life.last)["plans"] == ["basic", "free"]
    life.price = "price_pro"
    upgraded = life.subscription_updated({"items": {"data": [{"price": {"id": "price_basic"}}]}})
    state = entitlements(ledger, user, upgraded.json()["position"])
    assert state["plans"] == ["free", "pro"] and state["features"] == ["core", "pro"]


def test_subscription_updated_with_a_scheduled_cancellation_keeps_access_and_warns(
    ledger: Server,
) -> None:
    user = new_user()
    life = lifecycle(ledger, user)
    life.subscribe()
    response = life.subscription_updated(
        {"cancel_at_period_end": False}, cancel_at_period_end=True, cancel_at=life.period[1]
    )
    state = entitlements(ledger, user, response.json()["position"])
    assert state["features"] == ["core", "pro"]
    assert state["warnings"] == ["cancellation_scheduled"]
    with signed_in(ledger, user) as client:
        assert "Ends on" in client.get("/billing").text


def test_subscription_canceled_ends_access_and_the_billing_page_says_so(ledger: Server) -> None:
    user = new_user()
    life = lifecycle(ledger, user)
    life.subscribe()
    deleted = life.subscription_deleted()
    state = entitlements(ledger, user, deleted.json()["position"])
    assert state["features"] == ["core"]
    assert state["subscriptions"][0]["status"] == "canceled"
    with signed_in(ledger, user) as client:
        page = client.get("/billing").text
        protected = client.get("/protected-feature")
    assert "Your subscription has ended." in page
    assert protected.status_code == 403


def test_invoice_payment_succeeded_lists_the_paid_invoice_with_its_hosted_link(
    ledger: Server,
) -> None:
    user = new_user()
    life = lifecycle(ledger, user)
    assert life.checkout_completed().status_code == 200
    assert life.subscription_created().status_code == 200
    paid = life.invoice(
        "in_ok_" + user,
        "paid",
        amount_due=2000,
        amount_paid=2000,
        attempt_count=1,
        paid_at=life.start + 5,
    )
    stored = life.send("invoice.payment_succeeded", paid)
    assert stored.status_code == 200
    entitlements(ledger, user, stored.json()["position"])
    invoices = httpx.get(f"{ledger.url}/v1/users/{user}/invoices", timeout=10).json()["invoices"]
    assert [(i["id"], i["status"], i["amount_paid"]) for i in invoices] == [
        (f"in_ok_{user}", "paid", 2000)
    ]
    with signed_in(ledger, user) as client:
        page = client.get("/billing").text
    assert f'href="https://invoice.stripe.com/i/in_ok_{user}"' in page
    assert "$20.00" in page and ">Paid<" in page


def test_invoice_payment_failed_warns_until_the_invoice_is_paid(ledger: Server) -> None:
    user = new_user()
    life = lifecycle(ledger, user)
    life.subscribe()
    renewal = "in_renewal_" + user
    assert life.invoice_payment_failed(renewal).status_code == 200
    failed = life.subscription_updated({"status": "active"}, status="past_due")
    state = entitlements(ledger, user, failed.json()["position"])
    assert state["warnings"] == ["payment_failed"]
    assert state["features"] == ["core", "pro"]  # inside the grace window
    with signed_in(ledger, user) as client:
        assert 'id="payment-failed"' in client.get("/billing").text
        life.invoice_paid(renewal)
        recovered = life.subscription_updated({"status": "past_due"}, status="active")
        assert entitlements(ledger, user, recovered.json()["position"])["warnings"] == []
        assert 'id="payment-failed"' not in client.get("/billing").text
