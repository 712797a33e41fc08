"""The server-rendered pages in process: sign-in, sessions, guards, and what they show."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from billing_ledger.bootstrap import Deps
from billing_ledger.http.pages.render import MAX_CONFIRM_ATTEMPTS
from billing_ledger.http.signin import use_current_user
from tests.support.app import client_for, settings_for
from tests.support.databases import sqlite_url
from tests.support.fake_stripe import API_ERROR, API_KEY, FakeStripe
from tests.support.lifecycle import Lifecycle

APP_URL = "http://127.0.0.1:8000"


@pytest.fixture
def app(fake_stripe: FakeStripe, tmp_path: Path) -> Iterator[tuple[TestClient, Deps]]:
    """The real app on SQLite with the fake Stripe, its lifespan running."""
    settings = settings_for(
        sqlite_url(tmp_path),
        stripe_api_key=API_KEY,
        stripe_api_base=fake_stripe.url,
        demo_signin=True,
    )
    with client_for(settings) as pair:
        yield pair


def new_user() -> str:
    """A user no other test has seen."""
    return f"u_{uuid.uuid4().hex[:10]}"


def token(page: httpx.Response) -> str:
    """The form token a page carries."""
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


def sign_in(client: TestClient, user: str, next_page: str = "/billing") -> httpx.Response:
    """The demo sign-in, as a browser does it."""
    form = client.get("/login")
    return client.post(
        "/login",
        data={"csrf": token(form), "user_id": user, "next": next_page},
        follow_redirects=False,
    )


def lifecycle(client: TestClient, user: str) -> Lifecycle:
    """Signed webhooks for the user, posted through the test client."""
    return Lifecycle(
        lambda path, body, headers: client.post(path, content=body, headers=headers), user
    )


def caught_up(deps: Deps, life: Lifecycle) -> None:
    """Wait until the projections applied the lifecycle's events."""
    assert deps.runner.wait_for(life.last, 5)


# -- sign-in and the session cookie -----------------------------------------------------


def test_demo_sign_in_sets_a_signed_httponly_lax_cookie_and_returns_to_the_page(
    app: tuple[TestClient, Deps],
) -> None:
    client, _ = app
    answer = sign_in(client, "u_1", "/protected-feature")
    assert answer.status_code == 303 and answer.headers["location"] == "/protected-feature"
    cookie = answer.headers["set-cookie"].lower()
    assert cookie.startswith("ledger_session=") and "httponly" in cookie
    assert "samesite=lax" in cookie and "secure" not in cookie
    assert "Signed in as <strong>u_1</strong>" in client.get("/billing").text


def test_the_session_cookie_is_secure_when_the_app_is_served_over_https(
    fake_stripe: FakeStripe, tmp_path: Path
) -> None:
    settings = settings_for(
        sqlite_url(tmp_path), app_url="https://127.0.0.1:8443", demo_signin=True
    )
    with client_for(settings) as (client, _):
        cookie = client.get("/login").headers["set-cookie"].lower()
    assert "; secure" in cookie and "httponly" in cookie


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil", "x"])
def test_demo_sign_in_never_redirects_off_the_site(
    app: tuple[TestClient, Deps], target: str
) -> None:
    client, _ = app
    assert sign_in(client, "u_1", target).headers["location"] == "/billing"


def refused_sign_in(client: TestClient) -> None:
    """/login is a plain 404 page, a posted form signs nobody in, no page offers sign-in."""
    form = client.get("/login")
    posted = client.post("/login", data={"user_id": "u_1", "csrf": "x"}, follow_redirects=False)
    assert form.status_code == posted.status_code == 404
    assert "<html" in form.text and "Please sign in through the application" in form.text
    assert "LEDGER_" not in form.text and "current_user" not in form.text
    assert "ledger_session" not in posted.headers.get("set-cookie", "")
    for path in ("/billing", "/protected-feature"):
        page = client.get(path, follow_redirects=False)
        assert page.status_code == 403 and "/login" not in page.text, path
    assert 'href="/login' not in client.get("/pricing").text


def test_demo_sign_in_is_off_unless_enabled(tmp_path: Path) -> None:
    with client_for(settings_for(sqlite_url(tmp_path))) as (client, _):
        refused_sign_in(client)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "billing.example.test", None])
def test_demo_sign_in_is_off_on_a_non_loopback_listener_even_when_enabled(
    tmp_path: Path, host: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(sqlite_url(tmp_path), demo_signin=True)
    with client_for(settings, listen_host=host) as (client, _):  # type: ignore[arg-type]
        refused_sign_in(client)
    assert "LEDGER_DEMO_SIGNIN=true ignored" in caplog.text


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_demo_sign_in_follows_the_listener_not_the_app_url(tmp_path: Path, host: str) -> None:
    settings = settings_for(
        sqlite_url(tmp_path), app_url="http://billing.example.test", demo_signin=True
    )
    with client_for(settings, listen_host=host) as (client, _):
        assert sign_in(client, "u_1").status_code == 303
        assert "Signed in as <strong>u_1</strong>" in client.get("/billing").text


def test_demo_sign_in_refuses_a_user_id_the_reads_could_never_serve(
    app: tuple[TestClient, Deps],
) -> None:
    client, _ = app
    answer = sign_in(client, "team/42")
    assert answer.status_code == 400 and "Enter a user id" in answer.text
    assert client.get("/billing", follow_redirects=False).status_code == 303


def test_a_form_without_the_session_token_is_refused(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    sign_in(client, new_user())
    refused = client.post("/pricing/checkout", data={"plan": "pro", "csrf": "forged"})
    assert refused.status_code == 403 and "Form expired" in refused.text
    assert fake_stripe.state.requests == []
    assert client.post("/logout", data={}).status_code == 403


def test_sign_out_forgets_the_user(app: tuple[TestClient, Deps]) -> None:
    client, _ = app
    sign_in(client, "u_1")
    out = client.post(
        "/logout", data={"csrf": token(client.get("/billing"))}, follow_redirects=False
    )
    assert out.headers["location"] == "/pricing"
    assert client.get("/billing", follow_redirects=False).status_code == 303


def test_pages_need_no_bearer_token_while_v1_does(fake_stripe: FakeStripe, tmp_path: Path) -> None:
    settings = settings_for(
        sqlite_url(tmp_path),
        stripe_api_key=API_KEY,
        stripe_api_base=fake_stripe.url,
        api_token="s3cret",
        demo_signin=True,
    )
    with client_for(settings) as (client, _):
        assert client.get("/pricing").status_code == 200
        assert sign_in(client, "u_1").status_code == 303
        assert client.get("/billing").status_code == 200
        assert client.get("/v1/users/u_1/entitlements").status_code == 401


def test_anonymous_visitors_are_sent_to_sign_in_and_back(app: tuple[TestClient, Deps]) -> None:
    client, _ = app
    billing = client.get("/billing?success=true&session_id=cs_1", follow_redirects=False)
    assert billing.status_code == 303
    assert (
        billing.headers["location"] == "/login?next=%2Fbilling%3Fsuccess%3Dtrue%26session_id%3Dcs_1"
    )
    feature = client.get("/protected-feature", follow_redirects=False)
    assert feature.headers["location"] == "/login?next=%2Fprotected-feature"
    assert client.get("/pricing").status_code == 200  # pricing is public
    assert "Sign in to subscribe" in client.get("/pricing").text


def test_pages_send_security_headers(app: tuple[TestClient, Deps]) -> None:
    client, _ = app
    headers = client.get("/pricing").headers
    assert "script-src" not in headers["content-security-policy"]
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"


# -- the pluggable current_user ---------------------------------------------------------


def test_plan_aware_access_follows_the_applications_own_current_user(
    app: tuple[TestClient, Deps],
) -> None:
    client, deps = app

    def from_header(request: Request) -> str | None:
        return request.headers.get("x-app-user")

    use_current_user(client.app, from_header)  # type: ignore[arg-type]
    user = new_user()
    as_user = {"x-app-user": user}
    assert client.get("/protected-feature", headers=as_user).status_code == 403
    life = lifecycle(client, user)
    life.subscribe()
    caught_up(deps, life)
    assert client.get("/protected-feature", headers=as_user).status_code == 200
    assert client.get("/protected-feature", follow_redirects=False).status_code == 303


# -- pricing and checkout through the pages ---------------------------------------------


def test_checkout_session_creation_from_the_pricing_form_redirects_to_checkout(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, _ = app
    user = new_user()
    sign_in(client, user)
    pricing = client.get("/pricing")
    answer = client.post(
        "/pricing/checkout", data={"csrf": token(pricing), "plan": "basic"}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(f"{fake_stripe.url}/c/pay/cs_test_")
    (sent,) = fake_stripe.seen("POST", "/v1/checkout/sessions")
    assert sent.params["line_items[0][price]"] == "price_basic"  # from its lookup key
    assert sent.params["client_reference_id"] == user


def test_checkout_session_creation_is_not_offered_for_a_plan_already_held(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, deps = app
    user = new_user()
    life = lifecycle(client, user)
    life.subscribe()
    caught_up(deps, life)
    sign_in(client, user)
    pricing = client.get("/pricing")
    assert "Your current plan" in pricing.text and 'id="upgrade-pro"' not in pricing.text
    again = client.post(
        "/pricing/checkout", data={"csrf": token(pricing), "plan": "pro"}, follow_redirects=False
    )
    assert again.headers["location"] == "/billing"
    assert fake_stripe.seen("POST", "/v1/checkout/sessions") == []


@pytest.mark.parametrize("plan", ["free", "gold", ""])
def test_checkout_session_creation_refuses_a_plan_that_is_not_for_sale(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe, plan: str
) -> None:
    client, _ = app
    sign_in(client, new_user())
    answer = client.post(
        "/pricing/checkout", data={"csrf": token(client.get("/pricing")), "plan": plan}
    )
    assert answer.status_code == 400 and "That plan is not available." in answer.text
    assert fake_stripe.seen("POST", "/v1/checkout/sessions") == []


def test_user_facing_billing_error_copy_on_pages_when_billing_is_not_configured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with client_for(settings_for(sqlite_url(tmp_path), demo_signin=True)) as (client, _):
        sign_in(client, "u_1")
        pricing = client.get("/pricing")
        answer = client.post("/pricing/checkout", data={"csrf": token(pricing), "plan": "pro"})
    assert answer.status_code == 503
    assert "Payments are not available right now" in answer.text
    assert "Nothing was charged" in answer.text
    for internal in ("STRIPE_API_KEY", "not configured", "Traceback", "not_configured"):
        assert internal not in answer.text, internal
    assert "STRIPE_API_KEY is not set" in caplog.text  # the cause goes to the log


def test_user_facing_billing_error_copy_on_the_billing_page_when_stripe_fails(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, deps = app
    user = new_user()
    sign_in(client, user)
    pricing = client.get("/pricing")
    client.post(
        "/pricing/checkout", data={"csrf": token(pricing), "plan": "pro"}, follow_redirects=False
    )
    assert deps.runner.wait_for(deps.store.head(), 5)
    fake_stripe.fail_next("POST /v1/billing_portal/sessions", API_ERROR)
    answer = client.post("/billing/portal", data={"csrf": token(pricing)})
    assert answer.status_code == 503
    assert "We could not reach our payment provider. Nothing was charged" in answer.text


def test_billing_portal_session_creation_without_a_customer_explains_what_to_do(
    app: tuple[TestClient, Deps],
) -> None:
    client, _ = app
    sign_in(client, new_user())
    answer = client.post("/billing/portal", data={"csrf": token(client.get("/billing"))})
    assert answer.status_code == 404
    assert "choose a plan on the pricing page first" in answer.text


# -- the billing page after Checkout ----------------------------------------------------


def test_checkout_success_flow_ignores_a_session_completed_for_another_user(
    app: tuple[TestClient, Deps],
) -> None:
    client, deps = app
    user, other = new_user(), new_user()
    life = lifecycle(client, other)
    life.subscribe("cs_test_theirs")
    caught_up(deps, life)
    sign_in(client, user)
    page = client.get("/billing?success=true&session_id=cs_test_theirs")
    assert 'id="confirming"' in page.text and 'http-equiv="refresh"' in page.text
    assert 'id="plan-name">Free<' in page.text


def test_checkout_success_flow_confirms_once_the_session_and_subscription_are_projected(
    app: tuple[TestClient, Deps],
) -> None:
    client, deps = app
    user = new_user()
    sign_in(client, user)
    life = lifecycle(client, user)
    assert life.checkout_completed("cs_test_mine").status_code == 200
    caught_up(deps, life)
    waiting = client.get("/billing?success=true&session_id=cs_test_mine")
    assert 'id="confirming"' in waiting.text  # the session alone: its subscription is unknown
    assert life.subscription_created().status_code == 200
    confirmed = client.get("/billing?success=true&session_id=cs_test_mine&attempt=3")
    assert 'id="confirmed"' in confirmed.text and 'http-equiv="refresh"' not in confirmed.text
    assert 'id="plan-name">Pro<' in confirmed.text


def test_billing_page_state_stops_refreshing_when_confirmation_takes_too_long(
    app: tuple[TestClient, Deps],
) -> None:
    client, _ = app
    sign_in(client, new_user())
    early = client.get("/billing?success=true&session_id=cs_test_late&attempt=1")
    assert (
        'content="2;url=/billing?success=true&amp;session_id=cs_test_late&amp;attempt=2"'
        in early.text
    )
    late = client.get(
        f"/billing?success=true&session_id=cs_test_late&attempt={MAX_CONFIRM_ATTEMPTS}"
    )
    assert 'http-equiv="refresh"' not in late.text
    assert "taking longer than usual" in late.text


def test_billing_page_state_escapes_what_users_control(app: tuple[TestClient, Deps]) -> None:
    client, _ = app
    sign_in(client, "<script>alert(1)<script>")  # no "/": such ids cannot sign in
    page = client.get("/billing?success=true&session_id=%22%3E%3Cscript%3E")
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;script&gt;" in page.text


# -- what the billing page states -------------------------------------------------------


def billing_as(client: TestClient, deps: Deps, life: Lifecycle) -> str:
    """The user's /billing once the projections applied the lifecycle."""
    caught_up(deps, life)
    sign_in(client, life.user)
    return client.get("/billing").text


def test_billing_page_shows_the_card_on_file_from_the_customers_default_payment_method(
    app: tuple[TestClient, Deps],
) -> None:
    client, deps = app
    life = lifecycle(client, new_user())
    life.subscribe()
    card = {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}
    pm = {"id": "pm_" + life.user, "object": "payment_method", "type": "card", "card": card}
    assert life.send("payment_method.attached", pm | {"customer": life.customer}).is_success
    settings = {"default_payment_method": pm["id"]}
    customer = {"id": life.customer, "object": "customer", "invoice_settings": settings}
    assert life.send("customer.updated", customer | {"metadata": {"app_user_id": life.user}})
    page = billing_as(client, deps, life)
    assert "Visa ending in 4242" in page and "expires 12/2030" in page
    detached = life.send(
        "payment_method.detached", pm | {"customer": None}, {"customer": life.customer}
    )
    assert detached.is_success
    caught_up(deps, life)
    assert "No card on file yet" in client.get("/billing").text


def test_billing_page_shows_invoice_number_and_pdf_and_no_renewal_while_past_due(
    app: tuple[TestClient, Deps],
) -> None:
    client, deps = app
    life = lifecycle(client, new_user())
    life.subscribe()
    pdf = "https://pay.stripe.com/invoice/acct_1/test_1/pdf"
    failed = life.invoice("in_r_" + life.user, "open", attempt_count=1, amount_due=2000)
    failed |= {"number": "ACME-0002", "invoice_pdf": pdf}
    assert life.send("invoice.payment_failed", failed).is_success
    assert life.subscription_updated({"status": "active"}, status="past_due").is_success
    page = billing_as(client, deps, life)
    assert 'id="payment-failed"' in page and "Payment overdue" in page
    assert 'id="renewal"' not in page and "Next renewal" not in page
    assert "ACME-0002" in page and f'href="{pdf}"' in page and "Download PDF" in page
    assert 'id="access-until"' in page


def test_billing_page_says_ends_on_and_no_renewal_when_cancellation_is_scheduled(
    app: tuple[TestClient, Deps],
) -> None:
    client, deps = app
    life = lifecycle(client, new_user())
    life.subscribe()
    scheduled = life.subscription_updated(
        {"cancel_at_period_end": False}, cancel_at_period_end=True, cancel_at=life.period[1]
    )
    assert scheduled.is_success
    page = billing_as(client, deps, life)
    assert 'id="cancellation-banner"' in page and "Ends on" in page
    assert "Next renewal" not in page


def test_pages_show_no_internal_ids_or_reasons_to_the_user(app: tuple[TestClient, Deps]) -> None:
    client, deps = app
    life = lifecycle(client, new_user())
    sign_in(client, life.user)
    denied = client.get("/protected-feature")
    assert denied.status_code == 403 and "Why:" not in denied.text
    assert "no plan grants" not in denied.text and "It comes with the Pro plan" in denied.text
    life.subscribe()
    caught_up(deps, life)
    allowed = client.get("/protected-feature")
    assert allowed.status_code == 200 and "your Pro plan" in allowed.text
    for page in (allowed, client.get("/billing")):
        visible = re.sub(r"<[^>]+>", " ", page.text)
        for internal in (life.sub, life.customer, "sub_", "cus_", "price_", "plan pro via"):
            assert internal not in visible, internal


# -- /pricing from the catalog ----------------------------------------------------------


def send_catalog(life: Lifecycle, *, yearly: bool = False) -> None:
    """product.created and price.created for Pro (€19.00 a month, €190.00 a year)."""
    product = {"id": "prod_pro", "object": "product", "name": "Pro", "active": True,
               "description": "For teams that ship every day"}  # fmt: skip
    assert life.send("product.created", product).is_success
    prices = [("price_pro", 1900, "month", "pro_monthly")]
    if yearly:
        prices.append(("price_pro_year", 19000, "year", "pro_yearly"))
    for price_id, amount, interval, key in prices:
        price = {"id": price_id, "object": "price", "product": "prod_pro", "active": True,
                 "unit_amount": amount, "currency": "eur", "type": "recurring",
                 "recurring": {"interval": interval, "interval_count": 1}, "lookup_key": key}  # fmt: skip
        assert life.send("price.created", price).is_success


def test_pricing_shows_the_catalogs_amount_with_no_stripe_key_and_no_stripe_call(
    tmp_path: Path,
) -> None:
    with client_for(settings_for(sqlite_url(tmp_path), demo_signin=True)) as (client, deps):
        life = lifecycle(client, new_user())
        send_catalog(life)
        caught_up(deps, life)
        page = client.get("/pricing").text
    card = page[page.index('id="plan-pro"') :]
    card = card[: card.index("</section>")]
    assert "€19.00" in card and "/ month" in card and "For teams that ship every day" in card


def test_pricing_page_makes_no_stripe_call_and_offers_a_monthly_yearly_switch(
    app: tuple[TestClient, Deps], fake_stripe: FakeStripe
) -> None:
    client, deps = app
    life = lifecycle(client, new_user())
    send_catalog(life, yearly=True)
    caught_up(deps, life)
    monthly = client.get("/pricing").text
    yearly = client.get("/pricing?interval=year").text
    assert fake_stripe.state.requests == []  # the catalog is the ledger's, not Stripe's
    assert 'id="interval-switch"' in monthly and "€19.00" in monthly
    assert "€190.00" in yearly and "/ year" in yearly
    assert 'id="addons"' in monthly and "Most popular" in monthly
