"""The plans file: matching items to plans, and clear errors for files that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing_ledger.ledger.canonical import Item
from billing_ledger.projections.plans import Plans, PlansError, load_plans

EXAMPLE = Path(__file__).parents[3] / "billing_ledger" / "plans.example.toml"

VALID = """
[access]
grant_statuses = ["active", "trialing"]
past_due_grace_days = 7
period_end_leeway_days = 2

[[plans]]
id = "free"
default = true
features = ["core"]

[[plans]]
id = "pro"
prices = ["price_pro"]
lookup_keys = ["pro_monthly"]
products = ["prod_pro"]
features = ["core", "pro"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(text)
    return path


def item(price: str | None = None, lookup: str | None = None, product: str | None = None) -> Item:
    return Item(price, lookup, product, None, None)


def matched(plans: Plans, it: Item) -> str | None:
    plan = plans.plan_for_item(it)
    return plan.id if plan is not None else None


@pytest.fixture
def plans(tmp_path: Path) -> Plans:
    return load_plans(write(tmp_path, VALID))


def test_example_plans_file_loads() -> None:
    plans = load_plans(EXAMPLE)
    assert [p.id for p in plans.plans] == ["free", "basic", "pro", "addon"]
    assert plans.default_features() == ("core",)
    assert (plans.grace_seconds, plans.leeway_seconds) == (7 * 86400, 2 * 86400)


def test_item_matches_by_price_then_lookup_key_then_product(plans: Plans) -> None:
    assert matched(plans, item(price="price_pro")) == "pro"
    assert matched(plans, item(lookup="pro_monthly")) == "pro"
    assert matched(plans, item(product="prod_pro")) == "pro"
    assert matched(plans, item(price="price_other", product="prod_other")) is None


def test_price_id_wins_over_a_product_claimed_by_another_plan(tmp_path: Path) -> None:
    text = VALID + '\n[[plans]]\nid = "legacy"\nproducts = ["prod_legacy"]\nfeatures = ["old"]\n'
    plans = load_plans(write(tmp_path, text))
    assert matched(plans, item(price="price_pro", product="prod_legacy")) == "pro"


def test_access_section_is_optional_and_defaults_to_policy_p(tmp_path: Path) -> None:
    plans = load_plans(write(tmp_path, VALID[VALID.index("[[plans]]") :]))
    assert plans.grant_statuses == ("active", "trialing")
    assert (plans.past_due_grace_days, plans.period_end_leeway_days) == (7, 2)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (VALID.replace("past_due_grace_days", "grace_days"), "access.grace_days", "unknown key"),
        (VALID + "\n[extra]\n", "extra", "unknown key"),
        (VALID.replace('features = ["core"]', 'feature = ["core"]'), "plans[0].feature", "unknown"),
        (
            VALID.replace('features = ["core"]', "features = []"),
            "plans[free].features",
            "at least one",
        ),
        (
            VALID.replace('features = ["core", "pro"]', 'features = "pro"'),
            "plans[pro].features",
            "list",
        ),
        (
            VALID.replace("past_due_grace_days = 7", 'past_due_grace_days = "7"'),
            "past_due",
            "whole",
        ),
        (VALID.replace("past_due_grace_days = 7", "past_due_grace_days = -1"), "past_due", "whole"),
        (
            VALID.replace("default = true", 'default = "yes"'),
            "plans[free].default",
            "true or false",
        ),
        (VALID.replace('"active", "trialing"', '"active", "unpaid"'), "grant_statuses", "never"),
        (VALID.replace('"active", "trialing"', '"past_due"'), "grant_statuses", "grace"),
        ("[access]\npast_due_grace_days = 7\n", "plans", "no plans"),
        (
            VALID + '\n[[plans]]\nid = "pro"\nprices = ["p2"]\nfeatures = ["x"]\n',
            "plans.id",
            "twice",
        ),
        (
            VALID + '\n[[plans]]\nid = "pro2"\nprices = ["price_pro"]\nfeatures = ["x"]\n',
            "prices",
            "claimed",
        ),
        (
            VALID + '\n[[plans]]\nid = "p2"\nproducts = ["prod_pro"]\nfeatures = ["x"]\n',
            "products",
            "claimed",
        ),
        (VALID + '\n[[plans]]\nid = "orphan"\nfeatures = ["x"]\n', "plans[orphan]", "matches no"),
        (VALID + "\n[[plans]]\nfeatures = ['x']\n", "plans[2].id", "id"),
        ("not = [toml", "(file)", "not valid TOML"),
    ],
)
def test_bad_plans_file_names_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PlansError) as raised:
        load_plans(path)
    message = str(raised.value)
    assert str(path) in message
    assert key in message
    assert words in message


def test_missing_plans_file_is_a_plans_error(tmp_path: Path) -> None:
    with pytest.raises(PlansError, match="cannot be read"):
        load_plans(tmp_path / "absent.toml")
