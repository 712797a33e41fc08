"""Build the real app on a given database, for in-process tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from starlette.testclient import TestClient

from billing_ledger.bootstrap import Deps, build
from billing_ledger.http.app import create_app
from billing_ledger.settings import Settings
from tests.support.signing import SECRET


def settings_for(database_url: str, **overrides: object) -> Settings:
    """Settings for a test: one webhook secret, the given database."""
    base = Settings(database_url=database_url, webhook_secrets=(SECRET,))
    return replace(base, **overrides)  # type: ignore[arg-type]


@contextmanager
def client_for(
    settings: Settings, listen_host: str = "127.0.0.1"
) -> Iterator[tuple[TestClient, Deps]]:
    """A TestClient over the real app built as `serve --host listen_host` builds it."""
    deps = build(settings)
    with TestClient(create_app(deps, listen_host=listen_host)) as client:
        yield client, deps
