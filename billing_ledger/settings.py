"""Settings, read once from the environment (CONTRACT.md, Configuration)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


class SettingsError(ValueError):
    """A configuration variable holds a value the ledger cannot use."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


# Set by `serve` for the processes it starts (each worker reads them back into its Settings);
# an operator never sets them.
SERVE_PROJECTIONS = "LEDGER_SERVE_PROJECTIONS"  # true (in process) | apart (followed) | false
LISTEN_HOST = "LEDGER_LISTEN_HOST"  # the host the workers' sockets are bound to
PROJECTION_STATUS_FILE = "LEDGER_PROJECTION_STATUS_FILE"  # the supervised runner's error
SUPERVISOR_PID = "LEDGER_SUPERVISOR_PID"  # the supervised runner stops when it is gone
PROJECTION_MODES = ("true", "apart", "false")


def _bundled_plans() -> Path:
    return Path(str(resources.files("billing_ledger") / "plans.example.toml"))


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment."""

    database_url: str = "sqlite:///ledger.db"
    # repr=False: a logged or printed Settings (or Deps) must not carry the secrets.
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_tolerance: int = 300
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    plans_path: Path = field(default_factory=_bundled_plans)
    api_token: str | None = field(default=None, repr=False)
    livemode: bool = False
    app_url: str = "http://127.0.0.1:8000"
    # The demo /login (anyone may claim any user): off unless asked for, loopback only.
    demo_signin: bool = False
    max_body_bytes: int = 1024 * 1024
    # Webhook bodies read at once before their signature is checked (per worker).
    max_body_reads: int = 64
    writer_max_batch: int = 200
    # Signs the pages' session cookie; random per process if unset.
    session_secret: str | None = field(default=None, repr=False)
    # Where every change of the feed is POSTed, signed with notify_secret (billing_ledger.notify).
    notify_url: str | None = None
    notify_secret: str | None = field(default=None, repr=False)
    # How this process runs the projections: true, the runner here; apart, a runner process
    # `serve` supervises, whose position and error this one follows; false, none at all.
    serve_projections: str = "true"
    listen_host: str | None = None  # None: not started by `serve` (mounted, or uvicorn's own)
    projection_status_file: Path | None = None
    supervisor_pid: int = 0
    # What the pages call the product, and their accent colour (a #rrggbb hex colour).
    brand_name: str = "Ledger"
    brand_color: str = "#3b5bdb"
    # The plan /pricing recommends (default: the plan that grants the most).
    highlight_plan: str | None = None
    # The operator console's token (/admin); the /v1 token serves when unset.
    admin_token: str | None = field(default=None, repr=False)
    # Checkout's defaults for every plan; a plan's own allow_promotion_codes or
    # automatic_tax in the plans file wins.
    checkout_promotion_codes: bool = False
    checkout_automatic_tax: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the CONTRACT.md variables; unset ones keep their defaults."""
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            database_url=env.get("LEDGER_DATABASE_URL") or defaults.database_url,
            webhook_secrets=_secrets(env.get("STRIPE_WEBHOOK_SECRET", "")),
            webhook_tolerance=_integer(env, "STRIPE_WEBHOOK_TOLERANCE", 300),
            stripe_api_key=env.get("STRIPE_API_KEY") or None,
            stripe_api_base=(env.get("STRIPE_API_BASE") or "").rstrip("/") or None,
            plans_path=Path(env["LEDGER_PLANS"])
            if env.get("LEDGER_PLANS")
            else defaults.plans_path,
            api_token=env.get("LEDGER_API_TOKEN", "").strip() or None,  # blank is no token
            livemode=_boolean(env, "LEDGER_LIVEMODE", False),
            app_url=(env.get("LEDGER_APP_URL") or defaults.app_url).rstrip("/"),
            demo_signin=_boolean(env, "LEDGER_DEMO_SIGNIN", False),
            max_body_bytes=_integer(env, "LEDGER_MAX_BODY_BYTES", defaults.max_body_bytes),
            max_body_reads=max(1, _integer(env, "LEDGER_MAX_BODY_READS", defaults.max_body_reads)),
            session_secret=env.get("LEDGER_SESSION_SECRET") or None,
            notify_url=env.get("LEDGER_NOTIFY_URL", "").strip() or None,
            notify_secret=env.get("LEDGER_NOTIFY_SECRET", "").strip() or None,
            brand_name=" ".join(env.get("LEDGER_BRAND_NAME", "").split())[:60]
            or defaults.brand_name,
            highlight_plan=env.get("LEDGER_HIGHLIGHT_PLAN", "").strip() or None,
            brand_color=_colour(env, "LEDGER_BRAND_COLOR", defaults.brand_color),
            admin_token=env.get("LEDGER_ADMIN_TOKEN", "").strip() or None,
            checkout_promotion_codes=_boolean(env, "LEDGER_CHECKOUT_PROMOTION_CODES", False),
            checkout_automatic_tax=_boolean(env, "LEDGER_CHECKOUT_AUTOMATIC_TAX", False),
            writer_max_batch=max(
                1, _integer(env, "LEDGER_WRITER_MAX_BATCH", defaults.writer_max_batch)
            ),
            serve_projections=_choice(env, SERVE_PROJECTIONS, PROJECTION_MODES, "true"),
            listen_host=env.get(LISTEN_HOST) or None,
            projection_status_file=Path(env[PROJECTION_STATUS_FILE])
            if env.get(PROJECTION_STATUS_FILE)
            else None,
            supervisor_pid=_integer(env, SUPERVISOR_PID, 0),
        )


def _secrets(raw: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in raw.split(",") if s.strip())


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"expected a whole number, got {raw!r}") from None
    if value < 0:
        raise SettingsError(name, f"must not be negative, got {value}")
    return value


def _boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise SettingsError(name, f"expected true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in allowed:
        raise SettingsError(name, f"expected one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _colour(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if re.fullmatch(r"#[0-9a-f]{6}", raw) is None:
        raise SettingsError(name, f"expected a colour such as #3b5bdb, got {raw!r}")
    return raw
