"""billing-ledger serve | project | replay | backfill | reconcile | explain | verify | demo."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from billing_ledger import notify, trigger
from billing_ledger.bootstrap import build
from billing_ledger.commands.project import cmd_project
from billing_ledger.commands.replay import cmd_backfill, cmd_explain, cmd_reconcile, cmd_replay
from billing_ledger.demo import run_demo
from billing_ledger.ledger.store import DatabaseUrl, DatabaseUrlError, StorageError
from billing_ledger.listen import is_loopback
from billing_ledger.logs import configure_logging, log_config
from billing_ledger.process import Supervised, default_workers, tune_gc
from billing_ledger.projections.follower import write_status
from billing_ledger.replay.integrity import announce, cmd_verify
from billing_ledger.settings import (
    LISTEN_HOST,
    PROJECTION_STATUS_FILE,
    SERVE_PROJECTIONS,
    SUPERVISOR_PID,
    Settings,
    SettingsError,
)


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
    apart = not args.no_projections and settings.serve_projections != "false"
    # The worker processes uvicorn starts read their Settings from the environment they
    # inherit: none runs the projections itself, and each knows where it listens.
    os.environ[SERVE_PROJECTIONS] = "apart" if apart else "false"
    os.environ[LISTEN_HOST] = args.host
    # Fail fast (one line) when storage is unreachable; creates the tables once.
    opened = build(settings, run_projections=False)
    announce("serve", opened.store)
    opened.close()
    with _projections_apart(apart):
        uvicorn.run(
            "billing_ledger.bootstrap:app_from_env",
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
    with tempfile.TemporaryDirectory(prefix="billing-ledger-") as folder:
        status = Path(folder) / "projections.json"
        os.environ[PROJECTION_STATUS_FILE] = str(status)  # the HTTP processes read it
        env = {**os.environ, SUPERVISOR_PID: str(os.getpid())}
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
    logging.getLogger().setLevel(logging.WARNING)  # the demo prints its own story
    return run_demo(print)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "serve": cmd_serve,
    "project": cmd_project,
    "replay": cmd_replay,
    "backfill": cmd_backfill,
    "reconcile": cmd_reconcile,
    "explain": cmd_explain,
    "verify": cmd_verify,
    "demo": cmd_demo,
    "notify": notify.cmd_notify,
    "trigger": trigger.cmd_trigger,
}


# Commands that fold many events or serve for long: the collector runs rarely in them.
LONG_RUNNING = frozenset({"serve", "project", "replay", "backfill", "reconcile", "verify"})


# Each variable of CONTRACT.md, as the help names it.
ENVIRONMENT = {
    "LEDGER_DATABASE_URL": "sqlite:///PATH or postgresql://USER@HOST:PORT/DB (default "
    "sqlite:///ledger.db)",
    "STRIPE_WEBHOOK_SECRET": "whsec_... secrets, comma-separated",
    "STRIPE_WEBHOOK_TOLERANCE": "seconds a signature may be old (default 300)",
    "STRIPE_API_KEY": "secret key for Checkout, portal, backfill, reconcile",
    "STRIPE_API_BASE": "another Stripe API base (a local fake)",
    "LEDGER_PLANS": "the plans file (default: the bundled example)",
    "LEDGER_API_TOKEN": "bearer token for /v1 (required off loopback)",
    "LEDGER_LIVEMODE": "true or false: which mode's events are projected (default false)",
    "LEDGER_APP_URL": "base URL for Checkout and portal return URLs",
    "LEDGER_DEMO_SIGNIN": "true: the demo sign-in on a loopback listener (default false)",
    "LEDGER_NOTIFY_URL": "where each access change is POSTed (default: none)",
    "LEDGER_NOTIFY_SECRET": "signs those POSTs (Ledger-Signature)",
    "LEDGER_ADMIN_TOKEN": "the operator console's token (default: LEDGER_API_TOKEN)",
    "LEDGER_CHECKOUT_PROMOTION_CODES": "true: Checkout takes promotion codes (default false)",
    "LEDGER_CHECKOUT_AUTOMATIC_TAX": "true: Checkout computes tax (default false)",
}
_STORE = ("LEDGER_DATABASE_URL", "LEDGER_PLANS", "LEDGER_LIVEMODE")
READS = {
    "serve": tuple(ENVIRONMENT),
    "project": _STORE,
    "replay": _STORE,
    "backfill": ("LEDGER_DATABASE_URL", "STRIPE_API_KEY", "STRIPE_API_BASE", "LEDGER_LIVEMODE"),
    "reconcile": (*_STORE, "STRIPE_API_KEY", "STRIPE_API_BASE"),
    "explain": _STORE,
    "verify": ("LEDGER_DATABASE_URL", "STRIPE_WEBHOOK_SECRET"),
    "demo": (),
    "notify": ("LEDGER_DATABASE_URL", "LEDGER_NOTIFY_URL", "LEDGER_NOTIFY_SECRET"),
    "trigger": ("STRIPE_WEBHOOK_SECRET",),
}


def _environment(names: Sequence[str]) -> str:
    if not names:
        return "environment: none read (a fresh embedded database in a temporary folder)"
    return "environment:\n" + "\n".join(f"  {n:<33}{ENVIRONMENT[n]}" for n in names)


def _version() -> str:
    try:
        return version("billing-ledger")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _command(sub: argparse._SubParsersAction[_Parser], name: str, summary: str) -> _Parser:
    return sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=_environment(READS[name]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


class _Parser(argparse.ArgumentParser):
    """argparse, naming the nearest command when one is mistyped."""

    def error(self, message: str) -> NoReturn:
        wrong = re.search(r"invalid choice: '([^']*)'", message)
        if wrong:
            near = difflib.get_close_matches(wrong.group(1), COMMANDS, n=1)
            message += f"; did you mean {near[0]!r}?" if near else ""
        super().error(message)


def _option(*flags: str, **spec: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One option of a command, as argparse's add_argument takes it."""
    return flags, spec


# Every command: its help line and its options (CONTRACT.md, Command line).
COMMAND_LINE: dict[str, tuple[str, tuple[tuple[tuple[str, ...], dict[str, Any]], ...]]] = {
    "serve": (
        "the HTTP service, with the projection runner in a process of its own",
        (
            _option("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)"),
            _option("--port", type=int, default=8000, help="port to bind (default 8000)"),
            _option(
                "--workers",
                type=int,
                default=0,
                help="HTTP processes (default: the machine's cores, at most 4)",
            ),
            _option(
                "--no-projections",
                action="store_true",
                help="serve without the projection runner (run `billing-ledger project` apart)",
            ),
        ),
    ),
    "project": ("the projection runner alone", ()),
    "replay": (
        "rebuild projections from the store; prints what changed",
        (
            _option(
                "--projection",
                default=None,
                help="the projection to rebuild (default: the only one)",
            ),
            _option(
                "--dry-run",
                action="store_true",
                help="rebuild and compare only: swap nothing (reads an existing database only)",
            ),
        ),
    ),
    "backfill": (
        "append missing events from Stripe's Events API",
        (
            _option(
                "--since",
                default=None,
                help="ISO 8601 or Unix seconds (default: an hour before the last run, "
                "else 30 days ago)",
            ),
            _option(
                "--types",
                default=None,
                help="only these event types, comma-separated (default: all)",
            ),
        ),
    ),
    "reconcile": ("record Stripe's current objects where the projections differ", ()),
    "explain": (
        "why a user's access is what it is (reads only)",
        (
            _option("user_id", help="the application's user id"),
            _option(
                "--feature", default=None, help="only changes of this feature (one the plans name)"
            ),
            _option(
                "--at",
                default=None,
                help="evaluate at this time: ISO 8601 or Unix seconds (default now)",
            ),
            _option(
                "--json",
                action="store_true",
                exclusive="shape",
                help="print the timeline as GET /v1/users/USER_ID/timeline answers it",
            ),
            _option(
                "--csv",
                action="store_true",
                exclusive="shape",
                help="print the timeline's entries and upcoming as CSV",
            ),
        ),
    ),
    "verify": (
        "recompute the hash chain of every stored event (reads only)",
        (
            _option(
                "--signatures",
                action="store_true",
                help="also re-check each stored Stripe-Signature against STRIPE_WEBHOOK_SECRET "
                "(tolerance ignored)",
            ),
            _option(
                "--head",
                default=None,
                metavar="POSITION:HASH",
                help="a chain head noted earlier (from /healthz): also prove nothing at or "
                "before it changed, even with the chain rewritten",
            ),
        ),
    ),
    "demo": ("a signed lifecycle through the real pipeline", ()),
    "notify": (
        "deliver the change feed to LEDGER_NOTIFY_URL again",
        (
            _option(
                "--from",
                dest="from_position",
                type=int,
                default=0,
                metavar="POS",
                help="deliver again every change after this feed position (default 0)",
            ),
            _option("--url", default=None, help="another receiver than LEDGER_NOTIFY_URL"),
        ),
    ),
    "trigger": (
        "send a signed test lifecycle to a running service",
        (
            _option("lifecycle", nargs="?", default=None, help="one of --list"),
            _option("--user", default=None, help="the app user id the events name"),
            _option(
                "--url",
                default="http://127.0.0.1:8000",
                help="the running service (signed with STRIPE_WEBHOOK_SECRET)",
            ),
            _option("--list", action="store_true", help="name the lifecycles"),
        ),
    ),
}


def parser() -> argparse.ArgumentParser:
    """The command line of CONTRACT.md."""
    top = _Parser(
        prog="billing-ledger",
        description=__doc__,
        epilog=_environment(tuple(ENVIRONMENT)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"billing-ledger {_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (text, options) in COMMAND_LINE.items():
        command = _command(sub, name, text)
        groups: dict[str, Any] = {}
        for flags, spec in options:
            # `exclusive`: options of one name that may not be given together.
            exclusive = spec.get("exclusive")
            if exclusive and exclusive not in groups:
                groups[exclusive] = command.add_mutually_exclusive_group()
            target = groups[exclusive] if exclusive else command
            target.add_argument(*flags, **{k: v for k, v in spec.items() if k != "exclusive"})
    return top


# Commands that only read: they never create a database where none is.
READ_ONLY = frozenset({"explain", "verify"})


def refuse_missing_file(args: argparse.Namespace, settings: Settings) -> None:
    """StorageError when a read-only command names a SQLite file that does not exist (a
    mistyped path must not answer from a new, empty ledger)."""
    if args.command not in READ_ONLY and not (
        args.command == "replay" and getattr(args, "dry_run", False)
    ):
        return
    url = DatabaseUrl.parse(settings.database_url)
    if url.dialect == "sqlite" and not Path(url.path).exists():
        raise StorageError(
            f"storage unavailable: no SQLite database at {url.path} (LEDGER_DATABASE_URL); "
            "this command only reads and creates nothing"
        )


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
        refuse_missing_file(args, settings)
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
