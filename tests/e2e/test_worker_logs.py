"""`serve --workers 2` logs every delivery, each line timestamped, from whichever worker."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.support.databases import sqlite_url
from tests.support.server import Server
from tests.support.signing import SECRET, event_body, sign

pytestmark = pytest.mark.e2e

EVENTS = 20
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def delivery_lines(output: str) -> dict[str, str]:
    """The webhook's log line of each event id."""
    found = re.finditer(r"^.*billing_ledger\.webhooks event=(\S+) .*$", output, re.MULTILINE)
    return {m.group(1): m.group(0) for m in found}


def test_two_workers_log_every_delivery_with_a_timestamp(tmp_path: Path) -> None:
    env = {"LEDGER_DATABASE_URL": sqlite_url(tmp_path), "STRIPE_WEBHOOK_SECRET": SECRET}
    server = Server(env, workers=2).start()
    try:
        ids = [f"evt_worker_log_{i}" for i in range(EVENTS)]
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for event_id in ids:
                body = event_body(event_id)
                headers = {"stripe-signature": sign(body), "content-type": "application/json"}
                assert client.post("/webhooks/stripe", content=body, headers=headers).is_success
        deadline = time.monotonic() + 20
        while not set(ids) <= delivery_lines(server.output()).keys():
            assert time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.1)
        output = server.output()
    finally:
        server.stop()
    lines = delivery_lines(output)
    assert all("outcome=recorded" in lines[i] for i in ids)
    logged = [line for line in output.splitlines() if line.strip()]
    assert logged and all(STAMP.match(line) for line in logged), output[-3000:]
