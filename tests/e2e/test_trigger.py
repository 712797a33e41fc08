"""`billing-ledger trigger` against a real server: /billing shows the plan it bought."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest

from tests.support.server import running
from tests.support.signing import SECRET

pytestmark = pytest.mark.e2e


def _trigger(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STRIPE_WEBHOOK_SECRET": SECRET}
    command = [sys.executable, "-m", "billing_ledger.cli", "trigger", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def _last_position(output: str) -> int:
    """The greatest ledger position the trigger's answers name."""
    return max(int(p) for p in re.findall(r'"position":(\d+)', output))


def _billing_page(url: str, user: str) -> str:
    with httpx.Client(base_url=url, timeout=10) as browser:
        form = browser.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None, form.text
        browser.post("/login", data={"csrf": csrf.group(1), "user_id": user, "next": "/billing"})
        return browser.get("/billing").text


def test_list_names_every_lifecycle() -> None:
    listed = _trigger("--list")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert names == [
        "subscribe",
        "trial",
        "renew",
        "payment-failed",
        "recover",
        "cancel-scheduled",
        "cancel",
        "one-time",
        "refund",
    ]


def test_trigger_subscribe_makes_the_billing_page_show_an_active_plan(database_url: str) -> None:
    env = {
        "LEDGER_DATABASE_URL": database_url,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "LEDGER_DEMO_SIGNIN": "true",  # the pages' sign-in, on loopback only
    }
    with running(env) as server:
        assert 'class="badge active" id="status"' not in _billing_page(server.url, "u_1")
        sent = _trigger("subscribe", "--user", "u_1", "--url", server.url)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert sent.stdout.count(" 200 ") == 4
        reads = f"{server.url}/v1/users/u_1/entitlements"
        caught_up = {"min_position": _last_position(sent.stdout)}
        entitlements = httpx.get(reads, params=caught_up, timeout=10).json()
        assert entitlements["features"] == ["core", "pro"]
        page = _billing_page(server.url, "u_1")
        assert 'class="badge active" id="status"' in page and "Pro" in page
        failed = _trigger("payment-failed", "--user", "u_1", "--url", server.url)
        assert failed.returncode == 0, failed.stdout + failed.stderr
        caught_up = {"min_position": _last_position(failed.stdout)}
        body = httpx.get(reads, params=caught_up, timeout=10).json()
        assert body["subscriptions"][0]["status"] == "past_due"
        assert "payment_failed" in body["warnings"]


def test_trigger_refuses_an_unknown_lifecycle_in_one_line() -> None:
    refused = _trigger("upgrade", "--user", "u_1")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "--list" in refused.stderr
