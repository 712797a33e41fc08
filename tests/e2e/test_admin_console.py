"""The operator console in the browser: sign in with the token once, search a customer,
open the user's page, and see the timeline drawn as SVG. Screenshots land in
build/screenshots/ (the README shows docs/admin-timeline.png, one of them)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from playwright.sync_api import Page

from billing_ledger.demo import CUSTOMER, USER, lifecycle
from tests.support.browser import SCREENSHOTS, screenshot
from tests.support.server import Server
from tests.support.signing import SECRET, sign

pytestmark = pytest.mark.e2e

TOKEN = "console-browser-token"
DAY = 86400


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A served ledger holding the demo lifecycle, begun 40 days ago: the failed renewal,
    the recovery and the scheduled cancellation are behind, the period's end ahead."""
    database = tmp_path_factory.mktemp("console") / "ledger.db"
    env = {
        "LEDGER_DATABASE_URL": f"sqlite:///{database}",
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "LEDGER_API_TOKEN": TOKEN,
    }
    server = Server(env).start()
    try:
        last = 0
        for envelope in lifecycle(int(time.time()) - 40 * DAY):
            body = orjson.dumps(envelope)
            answer = httpx.post(
                f"{server.url}/webhooks/stripe",
                content=body,
                headers={"stripe-signature": sign(body), "content-type": "application/json"},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            last = max(last, answer.json()["position"])
        caught = httpx.get(
            f"{server.url}/v1/users/{USER}/entitlements",
            params={"min_position": last},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert caught.status_code == 200, caught.text
        yield server
    finally:
        server.stop()


def _sign_in(page: Page, ledger: Server) -> None:
    page.goto(f"{ledger.url}/admin")
    page.wait_for_url(f"{ledger.url}/admin/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{ledger.url}/admin")


@pytest.mark.browser
def test_the_console_finds_a_customers_user_and_draws_their_timeline(
    page: Page, ledger: Server
) -> None:
    _sign_in(page, ledger)
    assert page.locator("table td", has_text="billing").count() >= 1  # the projection's row
    screenshot(page, "admin-home")
    page.fill("input[name=q]", CUSTOMER)
    page.click("header button[type=submit]")
    page.click(f"a[href='/admin/users/{USER}']")
    page.wait_for_url(f"{ledger.url}/admin/users/{USER}")
    picture = page.locator("img.timeline")
    picture.wait_for()
    page.wait_for_function(
        "() => { const i = document.querySelector('img.timeline'); "
        "return i.complete && i.naturalWidth > 0; }"
    )
    assert page.get_by_role("cell", name="payment_failed", exact=True).count() == 1
    assert page.locator("a[href='/admin/events/evt_demo_04']").count() == 1
    assert page.locator("td", has_text="unless the cancellation is withdrawn").count() == 1
    screenshot(page, "admin-timeline")
    page.click("a[href='/admin/events/evt_demo_04']")
    page.wait_for_url(f"{ledger.url}/admin/events/evt_demo_04")
    assert "invoice.payment_failed" in page.inner_text("main")
    screenshot(page, "admin-event")


@pytest.mark.browser
def test_the_svg_renders_its_bands_ticks_and_windows_in_the_browser(
    page: Page, ledger: Server
) -> None:
    _sign_in(page, ledger)
    page.goto(f"{ledger.url}/admin/users/{USER}/timeline.svg")
    assert page.locator("rect.band").count() == 3  # active, past_due, active again
    assert page.locator("line.tick").count() == 8
    assert page.locator("rect.grace").count() == 1 and page.locator("rect.leeway").count() == 1
    box = page.locator("rect.band").first.bounding_box()
    assert box is not None and box["width"] > 10
    # A full-page capture waits forever on a bare SVG document: capture the drawing itself.
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("svg").first.screenshot(path=str(SCREENSHOTS / "admin-timeline-svg.png"))


@pytest.mark.browser
def test_a_browser_without_the_token_sees_only_the_sign_in_form(page: Page, ledger: Server) -> None:
    page.goto(f"{ledger.url}/admin/users/{USER}")
    page.wait_for_url(f"{ledger.url}/admin/login")
    page.fill("input[name=token]", "not-the-token")
    page.click("button[type=submit]")
    assert "That token is not valid." in page.inner_text("main")
    answer = page.goto(f"{ledger.url}/admin/users/{USER}/timeline.svg")
    assert answer is not None and answer.status == 401
