"""Explain: the timeline of why a user's access is what it is, for a person to read.

Every line names its cause: a stored event (its id and type, fetchable at
`GET /v1/events/{id}`) or a time rule (grace end, period end), with what changed (a status,
a payment, a scheduled cancellation, a link) and the features before and after when they
moved. The policy and timeline are the projections' own (`policy.evaluate`,
`timeline.timeline`), so this says exactly what the reads answer; `--json` prints the
timeline read's body and `--csv` the same rows for a spreadsheet.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from urllib.parse import quote

import orjson

from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import (
    Entitlements,
    SubscriptionAccess,
    UserInputs,
    access,
    evaluate,
)
from billing_ledger.projections.timeline import Entry, Upcoming, timeline


def console_path(user_id: str) -> str:
    """The user's page in the operator console (http/admin.py serves it)."""
    return f"/admin/users/{quote(user_id, safe='')}"


def iso(t: int) -> str:
    """Unix seconds as ISO 8601 in UTC."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _features(names: tuple[str, ...]) -> str:
    return "{" + ", ".join(names) + "}"


def _delta(before: tuple[str, ...], after: tuple[str, ...]) -> str:
    added = [f"+{f}" for f in sorted(set(after) - set(before))]
    removed = [f"-{f}" for f in sorted(set(before) - set(after))]
    return " ".join(added + removed)


def _cause(entry: Entry) -> str:
    if entry.event_id is None:
        return "rule"
    return f"event {entry.event_id} ({entry.event_type})"


def entry_line(entry: Entry) -> str:
    """`  2026-01-01T00:00:00Z  kind  detail; {core} -> {core, pro} (+pro)  event evt_1 (type)`."""
    before, after = entry.features_before, entry.features_after
    moved = (
        f"; {_features(before)} -> {_features(after)} ({_delta(before, after)})"
        if before != after
        else ""
    )
    return f"  {iso(entry.at)}  {entry.kind:<24} {entry.detail}{moved}  {_cause(entry)}"


def upcoming_line(upcoming: Upcoming) -> str:
    """`  2026-02-07T00:00:00Z  rule  loses pro at the grace end, 7 Feb 2026, unless paid`."""
    return f"  {iso(upcoming.at)}  {upcoming.kind:<24} {upcoming.detail}"


def _subscription_line(sub: SubscriptionAccess) -> str:
    where = f"{sub.id} ({sub.customer_id}, {', '.join(sub.price_ids) or 'no prices'})"
    if sub.grants_access:
        until = iso(sub.access_until) if sub.access_until is not None else "no end"
        return f"  {where}: {sub.status}, grants {_features(sub.features)} until {until}"
    return f"  {where}: {sub.status}, grants nothing: {sub.denied}"


def _now_lines(now: Entitlements, feature: str | None) -> list[str]:
    lines = [f"customers: {', '.join(now.customer_ids)}"]
    lines += [_subscription_line(s) for s in now.subscriptions]
    if now.warnings:
        lines.append(f"warnings: {', '.join(now.warnings)}")
    for name in [feature] if feature else now.features:
        allowed, reason = access(now, name)
        lines.append(f"{name}: {'allowed' if allowed else 'denied'}: {reason}")
    return lines


def _unknown(user_id: str, plans: Plans, at: int, feature: str | None) -> list[str]:
    defaults = [p.id for p in plans.default_plans()]
    lines = [
        f"{user_id} at {iso(at)}: features {_features(plans.default_features())}",
        f"the ledger has never seen {user_id}: no Stripe customer is linked to this user, "
        f"so only the default plans apply ({', '.join(defaults) or 'none'})",
    ]
    if feature:
        allowed = feature in plans.default_features()
        lines.append(f"{feature}: {'allowed' if allowed else 'denied'} (default plans)")
    return lines


def _touches(entry: Entry, feature: str | None) -> bool:
    if feature is None:
        return True
    return (feature in entry.features_before) != (feature in entry.features_after)


def _ahead(upcoming: Upcoming, features: tuple[str, ...], feature: str | None) -> bool:
    if feature is None:
        return True
    after = upcoming.features_after
    return after is not None and (feature in after) != (feature in features)


def explain(inputs: UserInputs, plans: Plans, at: int, feature: str | None = None) -> list[str]:
    """The lines of `billing-ledger explain`: the state at `at`, then each change of the
    user's billing state and why, then what the rules will change if no event arrives."""
    if not inputs.links and not inputs.snapshots:
        return _unknown(inputs.user_id, plans, at, feature)
    now = evaluate(inputs, plans, at)
    found = timeline(inputs, plans, at)
    entries = [e for e in found.entries if _touches(e, feature)]
    upcoming = [u for u in found.upcoming if _ahead(u, now.features, feature)]
    subject = f" ({feature} only)" if feature else ""
    return [
        f"{inputs.user_id} at {iso(at)}: features {_features(now.features)}",
        f"timeline{subject}, oldest first (events: GET /v1/events/{{id}}):",
        *([entry_line(e) for e in entries] or ["  no change: the default plans throughout"]),
        "upcoming, if no further event arrives:",
        *([upcoming_line(u) for u in upcoming] or ["  nothing: no rule changes anything"]),
        *_now_lines(now, feature),
    ]


def timeline_json(inputs: UserInputs, plans: Plans, at: int) -> bytes:
    """`explain --json`: the body `GET /v1/users/{user_id}/timeline?at=` answers."""
    return orjson.dumps(timeline(inputs, plans, at).to_json())


CSV_COLUMNS = (
    "section",
    "at",
    "at_iso",
    "kind",
    "object_id",
    "event_id",
    "event_type",
    "detail",
    "features_before",
    "features_after",
)


def timeline_csv(inputs: UserInputs, plans: Plans, at: int) -> str:
    """`explain --csv`: one row per entry, then one per upcoming change (features joined
    by spaces; an upcoming row leaves the event columns empty)."""
    found = timeline(inputs, plans, at)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in found.entries:
        writer.writerow(
            (
                "entry",
                e.at,
                iso(e.at),
                e.kind,
                e.object_id or "",
                e.event_id or "",
                e.event_type or "",
                e.detail,
                " ".join(e.features_before),
                " ".join(e.features_after),
            )
        )
    for u in found.upcoming:
        after = " ".join(u.features_after) if u.features_after is not None else ""
        row = ("upcoming", u.at, iso(u.at), u.kind, u.object_id or "", "", "", u.detail)
        writer.writerow((*row, " ".join(found.features), after))
    return buffer.getvalue()
