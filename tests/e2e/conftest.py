"""Fixtures of the end-to-end tests: a served ledger, and the system Chromium driven by
Playwright."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.browser import browser, page  # noqa: F401  (fixtures)
from tests.support.server import Server
from tests.support.signing import SECRET


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    """`billing-ledger serve` on the test's database (a module may define its own)."""
    started = Server({"LEDGER_DATABASE_URL": database_url, "STRIPE_WEBHOOK_SECRET": SECRET}).start()
    try:
        yield started
    finally:
        started.stop()
