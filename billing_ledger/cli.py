"""billing-ledger serve | project | replay | backfill | reconcile | explain | demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from billing_ledger.ledger.store import DatabaseUrlError, StorageError
from billing_ledger.listen import LISTEN_HOST_VARIABLE, is_loopback
from billing_ledger.logs import configure_logging, log_config
from billing_ledger.process import Supervised, default_workers, tune_gc
from billing_ledger.settings import Settings, SettingsError


class UsageError(ValueError):
    """The command line asks for something the ledger will not do."""


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the HTTP service in `--workers` processes and the projection runner in a
    supervised process of its own (none with `--no-projections`)."""
    import uvicorn

    if not settings.api_token and not is_loopback(args.host):
        raise UsageError(
            f"refusing to serve on non-loopback host {args.host} without LEDGER_API_TOKEN"
        )
    if settings.demo_signin and not is_loopback(args.host):
        raise UsageError(
            f"refusing to serve on non-loopback host {args.host} with LEDGER_DEMO_SIGNIN=true "
            "(the demo sign-in lets anyone claim any user)"
        )
    from billing_ledger.bootstrap import build

    apart = not args.no_projections and os.environ.get("LEDGER_SERVE_PROJECTIONS") != "false"
    # Read by app_from_env in each HTTP process: none runs the projections itself.
    os.environ["LEDGER_SERVE_PROJECTIONS"] = "apart" if apart else "false"
    os.environ[LISTEN_HOST_VARIABLE] = args.host  # where the workers listen (listen.py)
    # Fail fast (one line) when storage is unreachable; creates the tables once.
    build(settings, run_projections=False).close()
    with _projections_apart(apart):
        uvicorn.run(
            "billing_ledger.http.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers or default_workers(),
            log_level="info",
            log_config=log_config(),  # applied in every worker process, not just this one
            access_log=False,
        )
    return 0


@contextmanager
def _projections_apart(wanted: bool) -> Iterator[None]:
    """`billing-ledger project` as a supervised child while the block runs."""
    if not wanted:
        yield
        return
    from billing_ledger.projections.commands import STATUS_FILE, SUPERVISOR
    from billing_ledger.projections.follower import write_status

    with tempfile.TemporaryDirectory(prefix="billing-ledger-") as folder:
        status = Path(folder) / "projections.json"
        os.environ[STATUS_FILE] = str(status)  # the HTTP processes read it
        env = {**os.environ, SUPERVISOR: str(os.getpid())}
        runner = Supervised(
            "projection runner",
            [sys.executable, "-m", "billing_ledger.cli", "project"],
            env,
            on_exit=lambda code: write_status(
                status, f"projection runner exited with status {code}; restarting"
            ),
        ).start()
        try:
            yield
        finally:
            runner.stop()


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Run the bundled, signed lifecycle through the real pipeline and print the result."""
    from billing_ledger.demo import run_demo

    logging.getLogger().setLevel(logging.WARNING)  # the demo prints its own story
    return run_demo(print)


def _delegate(module: str, name: str) -> Callable[[argparse.Namespace, Settings], int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        imported = __import__(module, fromlist=[name])
        result: int = getattr(imported, name)(args, settings)
        return result

    return run


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "serve": cmd_serve,
    "project": _delegate("billing_ledger.projections.commands", "cmd_project"),
    "replay": _delegate("billing_ledger.replay.commands", "cmd_replay"),
    "backfill": _delegate("billing_ledger.replay.commands", "cmd_backfill"),
    "reconcile": _delegate("billing_ledger.replay.commands", "cmd_reconcile"),
    "explain": _delegate("billing_ledger.replay.commands", "cmd_explain"),
    "demo": cmd_demo,
    "notify": _delegate("billing_ledger.notify", "cmd_notify"),
    "trigger": _delegate("billing_ledger.trigger", "cmd_trigger"),
}


# Commands that fold many events or serve for long: the collector runs rarely in them.
LONG_RUNNING = frozenset({"serve", "project", "replay", "backfill", "reconcile"})


def parser() -> argparse.ArgumentParser:
    """The command line of CONTRACT.md."""
    top = argparse.ArgumentParser(prog="billing-ledger", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="the HTTP service, with the projection runner in a process of its own"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=0,
        help="HTTP processes (default: the machine's cores, at most 4)",
    )
    serve.add_argument(
        "--no-projections",
        action="store_true",
        help="serve without the projection runner (run `billing-ledger project` apart)",
    )
    sub.add_parser("project", help="the projection runner alone")
    replay = sub.add_parser("replay", help="rebuild projections from the store")
    replay.add_argument("--projection", default=None)
    replay.add_argument("--dry-run", action="store_true")
    backfill = sub.add_parser("backfill", help="append missing events from Stripe's Events API")
    backfill.add_argument("--since", default=None)
    backfill.add_argument("--types", default=None)
    sub.add_parser("reconcile", help="record Stripe's current objects as observations")
    explain = sub.add_parser("explain", help="why a user's access is what it is")
    explain.add_argument("user_id")
    explain.add_argument("--feature", default=None)
    explain.add_argument("--at", default=None)
    sub.add_parser("demo", help="a signed lifecycle through the real pipeline")
    notify = sub.add_parser("notify", help="deliver the change feed to LEDGER_NOTIFY_URL again")
    notify.add_argument("--from", dest="from_position", type=int, default=0, metavar="POS")
    notify.add_argument("--url", default=None, help="another receiver than LEDGER_NOTIFY_URL")
    trigger = sub.add_parser("trigger", help="send a signed test lifecycle to a running service")
    trigger.add_argument("lifecycle", nargs="?", default=None)
    trigger.add_argument("--user", default=None)
    trigger.add_argument("--url", default="http://127.0.0.1:8000")
    trigger.add_argument("--list", action="store_true", help="name the lifecycles")
    return top


# The secrets a one-line reason must never show: the database password and the keys.
_SECRET_SETTINGS = (
    "STRIPE_API_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "LEDGER_API_TOKEN",
    "LEDGER_NOTIFY_SECRET",
)


def _secrets(env: Mapping[str, str]) -> set[str]:
    found = {s.strip() for name in _SECRET_SETTINGS for s in env.get(name, "").split(",")}
    try:
        password = urlsplit(env.get("LEDGER_DATABASE_URL", "")).password
    except ValueError:
        password = None
    if password:
        found |= {password, unquote(password)}
    return {s for s in found if s}


def one_line(error: BaseException, env: Mapping[str, str]) -> str:
    """An error as one line of text, with the configured secrets masked."""
    text = " ".join(str(error).split())
    for secret in sorted(_secrets(env), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `billing-ledger` console script.

    Every failure ends as one line on stderr: status 2 for a bad command line, bad
    configuration or unreachable storage, 1 for anything unexpected (LEDGER_DEBUG=1 shows
    its traceback instead).
    """
    args = parser().parse_args(argv)
    configure_logging()
    try:
        settings = Settings.from_env()
        if args.command in LONG_RUNNING:
            tune_gc()
        return COMMANDS[args.command](args, settings)
    except (UsageError, SettingsError, DatabaseUrlError, StorageError) as e:
        print(f"billing-ledger {args.command}: {one_line(e, os.environ)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if os.environ.get("LEDGER_DEBUG", "").strip().lower() in ("1", "true", "yes"):
            raise
        reason = one_line(e, os.environ)
        print(
            f"billing-ledger {args.command}: unexpected {type(e).__name__}: {reason} "
            "(LEDGER_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
