"""The timeline as a picture: server-side SVG for the operator console (no script).

A band per subscription coloured by its status, a tick per event, the user's features as
bars above, the past_due grace windows and the period-end leeway windows shaded, and the
upcoming rule-driven changes as dashed marks. Every text is escaped: ids and details come
from Stripe payloads, which anyone with a test key can fill.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from html import escape

from billing_ledger.projections.plans import Plans
from billing_ledger.projections.policy import SubscriptionAccess
from billing_ledger.projections.timeline import Entry, Timeline, day

WIDTH = 1000
LEFT = 150  # the labels' column
RIGHT = 20
ROW = 26
GAP = 8
STATUS_COLOURS = {
    "active": "#2b8a3e",
    "trialing": "#74b816",
    "past_due": "#e8590c",
    "unpaid": "#c92a2a",
    "incomplete": "#f59f00",
    "paused": "#868e96",
    "canceled": "#adb5bd",
    "incomplete_expired": "#adb5bd",
}
FEATURE_COLOUR = "#3b5bdb"
GRACE_COLOUR = "#ffd8a8"
LEEWAY_COLOUR = "#d0ebff"


def _text(value: object) -> str:
    return escape(str(value), quote=True)


@dataclass(frozen=True)
class _Axis:
    start: int
    end: int

    def x(self, t: int) -> float:
        span = max(1, self.end - self.start)
        return round(LEFT + (WIDTH - LEFT - RIGHT) * (t - self.start) / span, 1)


def _axis(found: Timeline) -> _Axis:
    times = [e.at for e in found.entries] + [u.at for u in found.upcoming] + [found.at]
    start, end = min(times), max(times)
    pad = max(86400, (end - start) // 20)
    return _Axis(start - pad, end + pad)


def _spans(entries: Iterable[Entry], end: int) -> list[tuple[int, int, str]]:
    """(from, to, status) of one subscription, from its status entries."""
    marks = [(e.at, e.status) for e in entries if e.status is not None]
    return [
        (at, marks[i + 1][0] if i + 1 < len(marks) else end, status)
        for i, (at, status) in enumerate(marks)
        if status is not None
    ]


def _feature_spans(found: Timeline, feature: str, end: int) -> list[tuple[int, int]]:
    """When the user held `feature`, from the entries' features after each change."""
    held: list[tuple[int, int]] = []
    since: int | None = None
    for e in found.entries:
        has = feature in e.features_after
        if has and since is None:
            since = e.at
        elif not has and since is not None:
            held.append((since, e.at))
            since = None
    if since is not None:
        held.append((since, end))
    return held


def _rect(x1: float, x2: float, y: float, h: float, fill: str, title: str, **extra: str) -> str:
    attrs = "".join(f' {k.rstrip("_").replace("_", "-")}="{_text(v)}"' for k, v in extra.items())
    return (
        f'<rect x="{x1}" y="{y}" width="{max(1.0, round(x2 - x1, 1))}" height="{h}" '
        f'fill="{fill}"{attrs}><title>{_text(title)}</title></rect>'
    )


def _label(y: float, text: str) -> str:
    return f'<text x="8" y="{y + ROW / 2 + 4}" class="label">{_text(text)}</text>'


def timeline_svg(found: Timeline, subscriptions: Iterable[SubscriptionAccess], plans: Plans) -> str:
    """The picture of one user's timeline, as an SVG document."""
    axis = _axis(found)
    periods = {s.id: s for s in subscriptions}
    parts: list[str] = []
    y = 30.0
    for feature in sorted({f for e in found.entries for f in e.features_after} | {*found.features}):
        parts += _feature_row(axis, found, feature, y)
        y += ROW
    y += GAP
    for sid in sorted({e.object_id for e in found.entries if e.status and e.object_id}):
        parts += _subscription_row(axis, found, sid, periods.get(sid), plans, y)
        y += ROW
    y += GAP
    parts += _event_row(axis, found, y)
    y += ROW
    parts += _now_and_axis(axis, found.at, y)
    parts += _legend(y + 34)
    return _document(found.user_id, parts, y + 58)


def _document(user_id: str, parts: list[str], height: float) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{_text("timeline of " + user_id)}">'
        "<style>.label{font:12px system-ui,sans-serif;fill:#1c2330}"
        ".axis{font:11px system-ui,sans-serif;fill:#5d6878}</style>"
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>'
        f'<text x="8" y="16" class="label">{_text(user_id)}</text>' + "".join(parts) + "</svg>"
    )


def _feature_row(axis: _Axis, found: Timeline, feature: str, y: float) -> list[str]:
    """When the user held one feature, and, faded, how long they keep it."""
    parts = [_label(y, f"feature {feature}")]
    for start, end in _feature_spans(found, feature, found.at):
        title = f"{feature}: {day(start)} to {day(end)}"
        parts.append(_rect(axis.x(start), axis.x(end), y + 4, ROW - 8, FEATURE_COLOUR, title))
    kept = _kept_until(found, feature, axis.end)
    if kept is not None:
        title = f"{feature} kept until {day(kept)} if no further event arrives"
        parts.append(
            _rect(axis.x(found.at), axis.x(kept), y + 4, ROW - 8, FEATURE_COLOUR, title,
                  fill_opacity="0.3", class_="expected")
        )  # fmt: skip
    return parts


def _subscription_row(
    axis: _Axis,
    found: Timeline,
    sid: str,
    sub: SubscriptionAccess | None,
    plans: Plans,
    y: float,
) -> list[str]:
    """One subscription's band, coloured by status, over its shaded windows."""
    mine = [e for e in found.entries if e.object_id == sid]
    parts = [_label(y, sid), *_windows(axis, mine, sub, plans, y)]
    spans = _spans(mine, found.at)
    for start, end, status in spans:
        colour = STATUS_COLOURS.get(status, "#495057")
        title = f"{sid} {status}: {day(start)} to {day(end)}"
        parts.append(
            _rect(axis.x(start), axis.x(end), y + 6, ROW - 12, colour, title, class_="band")
        )
    return parts + _ahead(axis, sid, spans, sub, found.at, y)


def _event_row(axis: _Axis, found: Timeline, y: float) -> list[str]:
    """A tick per entry (red: a failed payment or a rule), a dashed line per upcoming one."""
    parts = [_label(y, "events")]
    for e in found.entries:
        x = axis.x(e.at)
        title = f"{day(e.at)} {e.kind}: {e.detail} [{e.event_id or 'rule'}]"
        colour = "#c92a2a" if e.kind in ("payment_failed", "rule") else "#1c2330"
        parts.append(
            f'<line x1="{x}" y1="{y + 3}" x2="{x}" y2="{y + ROW - 3}" stroke="{colour}" '
            f'stroke-width="2" class="tick"><title>{_text(title)}</title></line>'
        )
    for u in found.upcoming:
        x = axis.x(u.at)
        parts.append(
            f'<line x1="{x}" y1="20" x2="{x}" y2="{y + ROW}" stroke="#c92a2a" '
            f'stroke-dasharray="4 3" class="upcoming"><title>{_text(u.detail)}</title></line>'
        )
    return parts


def _windows(
    axis: _Axis, mine: list[Entry], sub: SubscriptionAccess | None, plans: Plans, y: float
) -> list[str]:
    """The shaded windows of one subscription: each past_due grace, the period's leeway."""
    found = [
        _rect(
            axis.x(e.at),
            axis.x(e.at + plans.grace_seconds),
            y + 1,
            ROW - 2,
            GRACE_COLOUR,
            f"grace window to {day(e.at + plans.grace_seconds)}",
            class_="grace",
        )
        for e in mine
        if e.status == "past_due"
    ]
    end = sub.current_period_end if sub is not None else None
    if end is not None:
        found.append(
            _rect(
                axis.x(end),
                axis.x(end + plans.leeway_seconds),
                y + 1,
                ROW - 2,
                LEEWAY_COLOUR,
                f"leeway after the period end, to {day(end + plans.leeway_seconds)}",
                class_="leeway",
            )
        )
    return found


def _kept_until(found: Timeline, feature: str, end: int) -> int | None:
    """How long the user keeps `feature` after `at` if no further event arrives (`end`:
    past the picture's edge)."""
    if feature not in found.features:
        return None
    for u in found.upcoming:
        if u.features_after is not None and feature not in u.features_after:
            return u.at
    return end


def _ahead(
    axis: _Axis,
    sid: str,
    spans: list[tuple[int, int, str]],
    sub: SubscriptionAccess | None,
    now: int,
    y: float,
) -> list[str]:
    """The current status, faded, from `at` to the period's end: what it is paid up to."""
    if not spans or sub is None or sub.current_period_end is None:
        return []
    status = spans[-1][2]
    end = sub.current_period_end
    if status not in ("active", "trialing", "past_due") or end <= now:
        return []
    colour = STATUS_COLOURS.get(status, "#495057")
    title = f"{sid} {status} until the period ends, {day(end)}"
    return [
        _rect(axis.x(now), axis.x(end), y + 6, ROW - 12, colour, title,
              fill_opacity="0.3", class_="expected")
    ]  # fmt: skip


_LEGEND = (
    ("active", STATUS_COLOURS["active"]),
    ("trialing", STATUS_COLOURS["trialing"]),
    ("past_due", STATUS_COLOURS["past_due"]),
    ("canceled", STATUS_COLOURS["canceled"]),
    ("grace window", GRACE_COLOUR),
    ("period-end leeway", LEEWAY_COLOUR),
)


def _legend(y: float) -> list[str]:
    parts: list[str] = []
    x = float(LEFT)
    for name, colour in _LEGEND:
        parts.append(f'<rect x="{x}" y="{y}" width="14" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 18}" y="{y + 9}" class="axis">{_text(name)}</text>')
        x += 30 + 7 * len(name)
    parts.append(
        f'<line x1="{x}" y1="{y - 2}" x2="{x}" y2="{y + 12}" stroke="#c92a2a" '
        'stroke-dasharray="4 3"/>'
    )
    parts.append(f'<text x="{x + 6}" y="{y + 9}" class="axis">upcoming rule</text>')
    return parts


def _now_and_axis(axis: _Axis, now: int, y: float) -> list[str]:
    x = axis.x(now)
    marks = [
        f'<line x1="{LEFT}" y1="{y + 4}" x2="{WIDTH - RIGHT}" y2="{y + 4}" stroke="#adb5bd"/>',
        f'<line x1="{x}" y1="20" x2="{x}" y2="{y + 4}" stroke="#1c2330" stroke-width="1" '
        'class="now"><title>at</title></line>',
        f'<text x="{x}" y="16" text-anchor="middle" class="axis">{_text(day(now))}</text>',
    ]
    steps = 6
    for i in range(steps + 1):
        t = axis.start + (axis.end - axis.start) * i // steps
        anchor = "start" if i == 0 else "end" if i == steps else "middle"
        marks.append(
            f'<text x="{axis.x(t)}" y="{y + 20}" text-anchor="{anchor}" class="axis">'
            f"{_text(day(t))}</text>"
        )
    return marks
