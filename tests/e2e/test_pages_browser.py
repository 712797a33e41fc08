"""The pages in headless Chromium at 1280 and 390 px, in every billing state.

A real `billing-ledger serve` with no STRIPE_API_KEY (nothing on these pages may need
Stripe), signed webhooks for each state, the demo sign-in. Each page, at each width: no
horizontal overflow (the header included), no internal text (Stripe ids, tracebacks,
setting names), the amounts shown; a screenshot of each under build/screenshots/.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from billing_ledger import trigger
from billing_ledger.http.pages.render import day
from tests.support.browser import screenshot
from tests.support.lifecycle import Lifecycle, httpx_poster
from tests.support.server import Server, free_port
from tests.support.signing import SECRET
from tests.unit.builders import EXAMPLE_PLANS, LIFETIME

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

WIDTHS = {"desktop": 1280, "phone": 390}
# What a person must never read on a page: Stripe's ids, a stack trace, our settings.
INTERNAL = re.compile(
    r"\b(?:sub|cus|in|price|prod|pm|evt|cs|seti|pi|ch)_[A-Za-z0-9]|Traceback|STRIPE_|LEDGER_"
)
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > width + 0.5 && e.offsetParent !== null)
    .map(e => e.tagName + '.' + e.className);
  return {page: document.documentElement.scrollWidth - width, header:
          document.querySelector('header').scrollWidth - width, wide: wide.slice(0, 5)};
}"""


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`billing-ledger serve` without a Stripe key, a brand of its own, the demo sign-in."""
    port = free_port()
    folder = tmp_path_factory.mktemp("pages")
    database = folder / "ledger.db"
    plans = folder / "plans.toml"
    plans.write_text(EXAMPLE_PLANS.read_text() + LIFETIME)  # and a one-time "lifetime" plan
    env = {
        "LEDGER_PLANS": str(plans),
        "LEDGER_DATABASE_URL": f"sqlite:///{database}",
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "STRIPE_API_KEY": "",
        "LEDGER_APP_URL": f"http://127.0.0.1:{port}",
        "LEDGER_DEMO_SIGNIN": "true",
        "LEDGER_BRAND_NAME": "Acme Notes",
        "LEDGER_BRAND_COLOR": "#0f9d7a",  # too light for white text: the pages darken it
    }
    server = Server(env, port=port).start()
    try:
        yield server
    finally:
        server.stop()


def new_user() -> str:
    """A user no other test has seen."""
    return f"u_{uuid.uuid4().hex[:8]}"


def applied(ledger: Server, life: Lifecycle) -> None:
    """Wait until the projections applied the lifecycle's events."""
    response = httpx.get(
        f"{ledger.url}/v1/users/{life.user}/entitlements",
        params={"min_position": life.last},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def looked_at(
    browser: Browser, ledger: Server, user: str | None, path: str, name: str
) -> Iterator[Page]:
    """The page at each width, signed in as `user`, checked for overflow and internal text,
    screenshotted as `{name}-desktop` and `{name}-phone`; yields each page for more checks."""
    for label, width in WIDTHS.items():
        context = browser.new_context(viewport={"width": width, "height": 900})
        context.set_default_timeout(15_000)
        try:
            page = context.new_page()
            if user is not None:
                page.goto(f"{ledger.url}/login?next={path}")
                page.fill("#user_id", user)
                page.click("#sign-in")
                page.wait_for_url(f"{ledger.url}{path}")
            else:
                page.goto(f"{ledger.url}{path}")
            measured = page.evaluate(OVERFLOW)
            assert measured["page"] <= 0 and measured["header"] <= 0, (label, measured)
            text = page.inner_text("body")
            found = INTERNAL.search(text)
            assert found is None, (label, found.group(0) if found else None, text)
            screenshot(page, f"{name}-{label}")
            yield page
        finally:
            context.close()


def check(
    browser: Browser, ledger: Server, user: str | None, path: str, name: str
) -> Callable[[Callable[[Page], None]], None]:
    """Run `assertions` on the page at each width (see `looked_at`)."""

    def run(assertions: Callable[[Page], None]) -> None:
        for page in looked_at(browser, ledger, user, path, name):
            assertions(page)

    return run


def with_card_and_numbered_invoice(ledger: Server, life: Lifecycle) -> None:
    """A Visa on file as the customer's default, and a paid invoice with number and PDF."""
    card = {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}
    pm = {"id": f"pm_{life.user}", "object": "payment_method", "type": "card", "card": card}
    assert life.send("payment_method.attached", pm | {"customer": life.customer}).is_success
    settings = {"default_payment_method": pm["id"]}
    customer = {"id": life.customer, "object": "customer", "invoice_settings": settings}
    assert life.send("customer.updated", customer | {"metadata": {"app_user_id": life.user}})
    paid = life.invoice(f"in_n_{life.user}", "paid", amount_due=2000, amount_paid=2000)
    paid |= {
        "number": "ACME-0001",
        "invoice_pdf": f"https://pay.stripe.com/invoice/acct_1/{life.user}/pdf",
        "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_1/{life.user}",
    }
    assert life.send("invoice.paid", paid).is_success


def subscribed(ledger: Server, **fields: object) -> Lifecycle:
    """A user with an active Pro subscription, a card on file and a numbered invoice."""
    life = Lifecycle(httpx_poster(ledger.url), new_user())
    life.subscribe()
    with_card_and_numbered_invoice(ledger, life)
    return life


# -- /billing, every state ----------------------------------------------------------------


def test_billing_page_active_shows_plan_card_invoice_number_and_next_renewal(
    browser: Browser, ledger: Server
) -> None:
    life = subscribed(ledger)
    applied(ledger, life)

    def assertions(page: Page) -> None:
        expect(page.locator("#plan-name")).to_have_text("Pro")
        expect(page.locator("#status")).to_have_text("Active")
        expect(page.locator("#renewal")).to_have_text(day(life.period[1]))
        expect(page.locator("#card")).to_contain_text("Visa ending in 4242")
        expect(page.locator("#invoices")).to_contain_text("ACME-0001")
        expect(page.locator("#invoices")).to_contain_text("$20.00")
        expect(page.locator("#invoices a.pdf").first).to_have_text("Download PDF")
        expect(page.locator("header .brand")).to_have_text("Acme Notes")

    check(browser, ledger, life.user, "/billing", "billing-active")(assertions)


def test_billing_page_trialing_shows_when_the_trial_ends_and_no_renewal(
    browser: Browser, ledger: Server
) -> None:
    life = Lifecycle(httpx_poster(ledger.url), new_user())
    assert life.checkout_completed().is_success
    trial = (life.start, life.start + 14 * 86400)
    obj = life.subscription("trialing", trial=trial)
    assert life.send("customer.subscription.created", obj).is_success
    applied(ledger, life)

    def assertions(page: Page) -> None:
        expect(page.locator("#status")).to_have_text("Trial")
        expect(page.locator("#trial-end")).to_contain_text(day(trial[1]))
        expect(page.locator("#renewal")).to_have_count(0)

    check(browser, ledger, life.user, "/billing", "billing-trialing")(assertions)


def test_billing_page_past_due_shows_the_banner_and_no_next_renewal(
    browser: Browser, ledger: Server
) -> None:
    life = subscribed(ledger)
    assert life.invoice_payment_failed(f"in_r_{life.user}").is_success
    assert life.subscription_updated({"status": "active"}, status="past_due").is_success
    applied(ledger, life)

    def assertions(page: Page) -> None:
        expect(page.locator("#payment-failed")).to_contain_text("Your last payment failed")
        expect(page.locator("#status")).to_have_text("Payment overdue")
        expect(page.locator("#renewal")).to_have_count(0)
        expect(page.locator("body")).not_to_contain_text("Next renewal")
        expect(page.locator("#access-until")).to_be_visible()

    check(browser, ledger, life.user, "/billing", "billing-past-due")(assertions)


def test_billing_page_cancellation_scheduled_says_ends_on_and_no_renewal(
    browser: Browser, ledger: Server
) -> None:
    life = subscribed(ledger)
    scheduled = life.subscription_updated(
        {"cancel_at_period_end": False}, cancel_at_period_end=True, cancel_at=life.period[1]
    )
    assert scheduled.is_success
    applied(ledger, life)

    def assertions(page: Page) -> None:
        expect(page.locator("#cancellation-banner")).to_contain_text(
            f"Your plan ends on {day(life.period[1])}"
        )
        expect(page.locator("#cancellation")).to_contain_text(day(life.period[1]))
        expect(page.locator("body")).not_to_contain_text("Next renewal")
        expect(page.locator("#status")).to_have_text("Active")

    check(browser, ledger, life.user, "/billing", "billing-cancellation-scheduled")(assertions)


def test_billing_page_canceled_says_the_subscription_ended(
    browser: Browser, ledger: Server
) -> None:
    life = subscribed(ledger)
    assert life.subscription_deleted().is_success
    applied(ledger, life)

    def assertions(page: Page) -> None:
        expect(page.locator("#plan-name")).to_have_text("Free")
        expect(page.locator("#no-subscription")).to_contain_text("Your subscription has ended")
        expect(page.locator("#invoices")).to_contain_text("ACME-0001")

    check(browser, ledger, life.user, "/billing", "billing-canceled")(assertions)


def test_billing_page_free_user_sees_the_free_plan_and_no_invoices(
    browser: Browser, ledger: Server
) -> None:
    def assertions(page: Page) -> None:
        expect(page.locator("#plan-name")).to_have_text("Free")
        expect(page.locator("#no-subscription")).to_contain_text("You are on the free plan")
        expect(page.locator("#payment-method")).to_have_count(0)

    check(browser, ledger, new_user(), "/billing", "billing-free")(assertions)


LIFETIME_PRICE = {
    "id": trigger.LIFETIME_PRICE,
    "object": "price",
    "active": True,
    "currency": "usd",
    "unit_amount": 9900,
    "type": "one_time",
    "recurring": None,
    "product": "prod_lifetime",
    "lookup_key": None,
    "livemode": False,
}


def lifecycle(life: Lifecycle, name: str) -> None:
    """One of `billing-ledger trigger`'s lifecycles, through the lifecycle's signed poster."""
    for type_, obj, previous in trigger.LIFECYCLES[name](trigger.Ids.of(life.user), 0):
        assert life.send(type_, obj, previous).is_success


def test_billing_page_one_time_owner_sees_the_purchase_then_its_refund(
    browser: Browser, ledger: Server
) -> None:
    life = Lifecycle(httpx_poster(ledger.url), new_user())
    assert life.send("price.created", LIFETIME_PRICE).is_success
    lifecycle(life, "one-time")
    applied(ledger, life)

    def owner(page: Page) -> None:
        expect(page.locator("#plan-name")).to_have_text("Lifetime")
        expect(page.locator("#purchases")).to_contain_text("Lifetime")
        expect(page.locator("#purchases")).to_contain_text("$99.00 once. Paid once")
        expect(page.locator("#no-subscription")).to_have_count(0)

    check(browser, ledger, life.user, "/billing", "billing-one-time-owner")(owner)
    lifecycle(life, "refund")
    applied(ledger, life)

    def refunded(page: Page) -> None:
        expect(page.locator("#plan-name")).to_have_text("Free")
        expect(page.locator("#purchases")).to_contain_text("Refunded")
        expect(page.locator("#no-subscription")).to_contain_text("You are on the free plan")

    check(browser, ledger, life.user, "/billing", "billing-one-time-refunded")(refunded)


# -- the gated page -----------------------------------------------------------------------


def test_protected_feature_pages_speak_plainly_denied_then_allowed(
    browser: Browser, ledger: Server
) -> None:
    life = Lifecycle(httpx_poster(ledger.url), new_user())

    def denied(page: Page) -> None:
        expect(page.locator("#denied")).to_contain_text("It comes with the Pro or Lifetime plan")

    check(browser, ledger, life.user, "/protected-feature", "protected-denied")(denied)
    life.subscribe()
    applied(ledger, life)

    def allowed(page: Page) -> None:
        expect(page.locator("#feature")).to_contain_text("your Pro plan")

    check(browser, ledger, life.user, "/protected-feature", "protected-allowed")(allowed)


def test_keyboard_focus_is_visible_on_links_and_buttons(browser: Browser, ledger: Server) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{ledger.url}/pricing")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")  # past the skip link, onto the brand
        style = page.evaluate(
            "() => { const s = getComputedStyle(document.activeElement);"
            " return [s.outlineStyle, s.outlineWidth]; }"
        )
        assert style[0] != "none" and style[1] != "0px", style
    finally:
        context.close()


# -- /pricing from the catalog --------------------------------------------------------------


def test_pricing_page_from_the_catalog_at_both_widths_with_the_interval_switch(
    browser: Browser, ledger: Server
) -> None:
    life = Lifecycle(httpx_poster(ledger.url), new_user())
    for product_id, name, description in (
        ("prod_basic", "Basic", "The essentials for one person"),
        ("prod_pro", "Pro", "For teams that ship every day"),
        ("prod_addon", "Export", "Send your notes anywhere"),
    ):
        product = {"id": product_id, "object": "product", "name": name, "active": True,
                   "description": description}  # fmt: skip
        assert life.send("product.created", product).is_success
    for price_id, product_id, amount, interval, key in (
        ("price_basic", "prod_basic", 900, "month", "basic_monthly"),
        ("price_pro", "prod_pro", 1900, "month", "pro_monthly"),
        ("price_pro_year", "prod_pro", 19000, "year", "pro_yearly"),
        ("price_addon", "prod_addon", 300, "month", "addon_monthly"),
    ):
        price = {"id": price_id, "object": "price", "product": product_id, "active": True,
                 "unit_amount": amount, "currency": "eur", "type": "recurring",
                 "recurring": {"interval": interval, "interval_count": 1}, "lookup_key": key}  # fmt: skip
        assert life.send("price.created", price).is_success
    applied(ledger, life)

    def monthly(page: Page) -> None:
        expect(page.locator("#plan-pro .price")).to_have_text("€19.00 / month")
        expect(page.locator("#plan-basic .price")).to_have_text("€9.00 / month")
        expect(page.locator("#addons #plan-addon .price")).to_have_text("€3.00 / month")
        expect(page.locator("#plan-pro .ribbon")).to_have_text("Most popular")

    check(browser, ledger, None, "/pricing", "pricing")(monthly)

    def yearly(page: Page) -> None:
        expect(page.locator("#plan-pro .price")).to_have_text("€190.00 / year")
        expect(page.locator("#interval-year")).to_have_attribute("aria-current", "true")

    check(browser, ledger, life.user, "/pricing?interval=year", "pricing-yearly")(yearly)
