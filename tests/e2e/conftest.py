"""Fixtures of the end-to-end tests: the system Chromium, driven by Playwright."""

from __future__ import annotations

from tests.support.browser import browser, page  # noqa: F401  (fixtures)
