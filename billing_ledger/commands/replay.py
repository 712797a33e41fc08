"""`billing-ledger replay | backfill | reconcile | explain`: parse, run, print, exit code."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from billing_ledger.bootstrap import Deps, build
from billing_ledger.ledger.store import Database, DatabaseUrl, EventStore, guard
from billing_ledger.projections.plans import Plans, PlansError, load_plans
from billing_ledger.projections.policy import RULES_VERSION, UserInputs
from billing_ledger.replay import stripe_api
from billing_ledger.replay.backfill import Backfill
from billing_ledger.replay.explain import console_path, explain, timeline_csv, timeline_json
from billing_ledger.replay.integrity import announce
from billing_ledger.replay.rebuild import (
    PlansFile,
    Rebuild,
    RebuildReport,
    RecordNotStoredError,
    ReplayRunningError,
    SwapFailedError,
    catch_up,
)
from billing_ledger.replay.reconcile import Reconcile
from billing_ledger.settings import Settings
from billing_ledger.stripe_errors import NotConfiguredError, StripeUnavailableError

Print = Callable[[str], None]


class BadInputError(ValueError):
    """An argument the command cannot use."""


# The one-line reasons a command exits 2 with (storage errors are the CLI's own).
_FAILURES = (
    BadInputError,
    ReplayRunningError,
    SwapFailedError,
    RecordNotStoredError,
    NotConfiguredError,
    StripeUnavailableError,
)


def parse_time(text: str, option: str) -> int:
    """Unix seconds, or ISO 8601 (a date, or a date and time; UTC unless it says otherwise)."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInputError(f"{option}: expected ISO 8601 or Unix seconds, got {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def parse_types(text: str | None) -> tuple[str, ...] | None:
    """`--types a,b` as a tuple of names, None when absent."""
    if text is None:
        return None
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise BadInputError("--types: expected event types separated by commas")
    return names


@contextmanager
def _deps(settings: Settings, command: str) -> Iterator[Deps]:
    """The store, views and plans, without a background runner."""
    # Opening connects (PostgreSQL) or creates a folder (SQLite) before the store's own
    # guard is in place: translate those failures into the StorageError the CLI reports.
    with guard():
        deps = build(settings, run_projections=False)
    try:
        total = deps.store.count()
        yield deps
        announce(command, deps.store, total)  # after the answer: a refusal stays one line
    finally:
        deps.close()


@contextmanager
def _store(settings: Settings, command: str) -> Iterator[EventStore]:
    with guard():
        store = EventStore(Database(DatabaseUrl.parse(settings.database_url)))
    try:
        store.create()
        total = store.count()
        yield store
        announce(command, store, total)
    finally:
        store.db.close()


def _failing(name: str, run: Callable[[], int]) -> int:
    """Run a command body; a known failure becomes one line on stderr and exit status 2."""
    try:
        return run()
    except _FAILURES as error:
        print(f"billing-ledger {name}: {error}", file=sys.stderr)
        return 2


def cmd_backfill(args: argparse.Namespace, settings: Settings, out: Print = print) -> int:
    """Append what Stripe's Events API holds and the ledger lacks; print the counts."""
    return _failing("backfill", lambda: _backfill(args, settings, out))


def _backfill(args: argparse.Namespace, settings: Settings, out: Print) -> int:
    since = parse_time(args.since, "--since") if args.since else None
    types = parse_types(args.types)
    client = stripe_api.client(settings)
    with _store(settings, "backfill") as store:
        report = Backfill(store, client, livemode=settings.livemode).run(since, types)
    if report.gap is not None:
        out(
            f"warning: --since {_iso(report.gap[0])} is beyond Stripe's 30-day retention; "
            f"events before {_iso(report.gap[1])} cannot be fetched (gap recorded); "
            "run `billing-ledger reconcile` to record current state"
        )
    out(f"backfill since {_iso(report.since)}: {report.summary()}")
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings, out: Print = print) -> int:
    """Record Stripe's current objects where the projections differ; print the drift."""
    return _failing("reconcile", lambda: _reconcile(settings, out))


def _reconcile(settings: Settings, out: Print) -> int:
    client = stripe_api.client(settings)
    with _deps(settings, "reconcile") as deps:
        reconcile = Reconcile(
            deps.store, deps.views, deps.plans, client, livemode=settings.livemode
        )
        report = reconcile.run()
    out(f"reconcile: {report.summary()}")
    for drift in report.drifts:
        out(f"  {drift.line()}")
    if report.users:
        out("users whose features changed:")
        out_lines(out, (f"  {change.line()}" for change in report.users))
    out_lines(out, (f"note: {note}" for note in report.notes))
    return 0


def out_lines(out: Print, lines: Iterable[str]) -> None:
    """Print each line."""
    for line in lines:
        out(line)


def cmd_replay(args: argparse.Namespace, settings: Settings, out: Print = print) -> int:
    """Rebuild a projection beside the live one, print what differs, swap unless --dry-run."""
    return _failing("replay", lambda: _replay(args, settings, out))


def _replay(args: argparse.Namespace, settings: Settings, out: Print) -> int:
    with _deps(settings, "replay") as deps:
        known = deps.views.name
        if args.projection not in (None, known):
            raise BadInputError(f"unknown projection {args.projection!r} (known: {known})")
        plans = PlansFile.read(settings.plans_path, deps.plans)
        rebuild = Rebuild(deps.store, deps.views, plans, livemode=settings.livemode)
        report = rebuild.run(dry_run=args.dry_run)
    out_lines(out, replay_lines(report))
    return 0


def replay_lines(report: RebuildReport) -> Iterator[str]:
    """What `billing-ledger replay` prints."""
    yield (
        f"replay {report.projection}: rebuilt {report.events} positions in "
        f"{report.seconds:.2f}s ({report.rate:,.0f}/s)"
    )
    phases = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in report.phases.items())
    yield f"  times: {phases}; total {sum(report.phases.values()):.2f}s"
    for d in report.diffs:
        yield f"  {d.table}: {d.added} added, {d.changed} changed, {d.removed} removed"
    yield _plans_line(report)
    if report.rules_before != RULES_VERSION:
        yield f"rules: {report.rules_before} (recorded by the last replay, or none) -> {RULES_VERSION}"
    if report.users:
        yield "users whose features would change now:"
        yield from (f"  {change.line()}  {console_path(change.user_id)}" for change in report.users)
    else:
        yield "users whose features would change now: none"
    if report.swapped:
        yield f"swapped: the live tables now hold the rebuild (position {report.position})"
    else:
        yield "dry run: nothing swapped"


def _plans_line(report: RebuildReport) -> str:
    after = report.plans_after
    before = report.plans_before
    if after is None:
        return "plans: none"
    if before is None:
        return f"plans: {after.sha} (no earlier replay recorded plans to compare with)"
    if before.plans == after.plans:
        return f"plans: unchanged since the last replay ({after.sha})"
    return f"plans: {before.sha} (recorded by the last replay) -> {after.sha} (LEDGER_PLANS)"


def cmd_explain(args: argparse.Namespace, settings: Settings, out: Print = print) -> int:
    """Print the timeline of why a user's access is what it is."""
    return _failing("explain", lambda: _explain(args, settings, out))


def _explain(args: argparse.Namespace, settings: Settings, out: Print) -> int:
    at = parse_time(args.at, "--at") if args.at else int(time.time())
    if not args.user_id.strip():
        raise BadInputError("USER_ID must not be empty")
    if args.feature and (getattr(args, "json", False) or getattr(args, "csv", False)):
        raise BadInputError("--feature shapes the words only: --json and --csv print it all")
    known_feature(args.feature, settings)  # before opening anything
    with _deps(settings, "explain") as deps:
        # The views may lag when no runner is serving: answer from every stored event.
        catch_up(deps.store, deps.views, livemode=settings.livemode)
        inputs = deps.views.load_inputs(args.user_id)
        lines = _explained(args, inputs, deps.plans, at)
    out_lines(out, lines)
    return 0


def _explained(args: argparse.Namespace, inputs: UserInputs, plans: Plans, at: int) -> list[str]:
    """The words, or with --json the timeline read's body, or with --csv its rows."""
    if getattr(args, "json", False):
        return [timeline_json(inputs, plans, at).decode()]
    if getattr(args, "csv", False):
        return timeline_csv(inputs, plans, at).splitlines()
    return explain(inputs, plans, at, args.feature)


def known_feature(feature: str | None, settings: Settings) -> None:
    """BadInputError naming the known features when `feature` is none of the plans'."""
    if feature is None:
        return
    try:
        plans = load_plans(settings.plans_path)
    except PlansError:
        return  # opening the ledger reports a bad plans file in its own words
    known = sorted({f for plan in plans.plans for f in plan.features})
    if feature not in known:
        raise BadInputError(
            f"--feature: unknown feature {feature!r} (known: {', '.join(known) or 'none'})"
        )


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
