"""`billing-ledger demo` runs the signed lifecycle through the real pipeline and tells the story."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from billing_ledger.demo import run_demo

pytestmark = pytest.mark.e2e


def test_the_demo_records_each_event_once_and_prints_entitlements_and_history(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    assert run_demo(lines.append, folder=tmp_path) == 0
    text = "\n".join(lines)
    assert len(re.findall(r"-> recorded at position \d+", text)) == 8
    assert "redelivered by Stripe            -> duplicate (position 3)" in text
    assert "-> 400 invalid_signature" in text
    entitlements = json.loads(text.split("Entitlements of u_demo now:\n", 1)[1].split("\n\n", 1)[0])
    assert entitlements["features"] == ["core", "pro"]
    assert entitlements["warnings"] == ["cancellation_scheduled"]
    assert entitlements["subscriptions"][0]["cancel_at_period_end"] is True
    assert "May u_demo use 'pro'? True: plan pro via sub_demo (active)" in text
    assert "['core'] -> ['core', 'pro']  by evt_demo_01" in text
    assert "if nothing else arrives: features ['core']" in text
    assert (tmp_path / "ledger.db").exists()
