"""Backfill: append what Stripe's Events API holds and the ledger lacks.

Every event goes through the store's one append path, so a known id costs nothing and
another API version's rendering of a known id is kept as an alternate (S7). Pages are
appended as they arrive (bounded memory; a crash keeps what was stored, and a rerun
skips it as duplicates), each page sorted by (created, id) because Stripe lists newest
first and localstripe oldest first: positions follow time within a page either way.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import stripe

from billing_ledger.ledger.own_events import BACKFILL_CURSOR, BACKFILL_GAP, of_type, own_event
from billing_ledger.ledger.records import RESERVED_TYPE_PREFIX, AppendResult, Incoming
from billing_ledger.ledger.store import EventStore
from billing_ledger.ledger.verify import MalformedEventError, parse_event
from billing_ledger.progress import Progress
from billing_ledger.replay import stripe_api
from billing_ledger.stripe_errors import StripeUnavailableError

log = logging.getLogger("billing_ledger.replay")

DAY = 86400
RETENTION = 30 * DAY  # "List events, going back up to 30 days" (the Events API reference)
OVERLAP = 3600  # a default run starts an hour before the last cursor: late-created events
MAX_TYPES = 20  # `types[]` takes at most 20 names; more are filtered here

Json = dict[str, Any]


@dataclass
class BackfillReport:
    """What one backfill saw and did."""

    since: int
    types: tuple[str, ...] | None
    fetched: int = 0
    recorded: int = 0
    duplicates: int = 0
    alternates: int = 0
    skipped: int = 0  # listed bodies that are not Stripe events or are of a reserved type
    newest: tuple[int, str] | None = None  # (created, id) of the newest event seen
    gap: tuple[int, int] | None = None  # [since, retention start) Stripe no longer lists
    cursor_id: str | None = None
    server_filtered: bool = True  # False when the API ignored or refused `types`
    pages: int = 0
    seconds: float = 0.0  # the whole run: fetching, appending, the cursor

    def summary(self) -> str:
        """One line of counts."""
        newest = self.newest[1] if self.newest else "none"
        return (
            f"fetched {self.fetched}, recorded {self.recorded}, duplicates {self.duplicates}, "
            f"alternates {self.alternates}, skipped {self.skipped}; cursor {newest}; "
            f"{self.pages} pages in {self.seconds:.2f}s"
        )


@dataclass(eq=False)
class Backfill(stripe_api.StripeRun):
    """Page through /v1/events and append what is missing."""

    store: EventStore
    client: stripe.StripeClient

    def run(self, since: int | None, types: Sequence[str] | None) -> BackfillReport:
        """Fetch from `since` (default: the last cursor, else 30 days ago) and append."""
        started = time.perf_counter()
        now = int(self.clock())
        wanted = tuple(dict.fromkeys(types)) if types else None
        report = BackfillReport(since=self.start(since, now), types=wanted)
        self._mark_gap(report, now)
        seen: set[str] = set()
        # The Events API gives no total: the count fetched and its rate.
        with Progress("backfill events fetched", None) as progress:
            for page in self._pages(report):
                fresh = [e for e in page if _id(e) not in seen and _wanted(e, wanted)]
                seen.update(_id(e) for e in fresh)
                self._append(report, fresh)
                progress.advance(len(page))
        self._record_cursor(report, now)
        report.seconds = time.perf_counter() - started
        return report

    def start(self, since: int | None, now: int) -> int:
        """The explicit `since`, else an hour before the last full run's newest event."""
        if since is not None:
            return since
        cursor = last_cursor(self.store)
        if cursor is not None and cursor.get("newest_created") is not None:
            return max(int(cursor["newest_created"]) - OVERLAP, now - RETENTION)
        return now - RETENTION

    def _mark_gap(self, report: BackfillReport, now: int) -> None:
        """S60: Stripe keeps 30 days; record what is out of reach so the gap stays visible."""
        retention_start = now - RETENTION
        if report.since >= retention_start:
            return
        report.gap = (report.since, retention_start)
        gap = {
            "object": BACKFILL_GAP,
            "from": report.since,
            "until": retention_start,
            "detected_at": now,
            "reason": "Stripe's Events API lists only the last 30 days",
        }
        self.store.append([own_event(BACKFILL_GAP, gap, created=now, livemode=self.livemode)])

    # -- fetching ---------------------------------------------------------------------

    def _pages(self, report: BackfillReport) -> Iterator[list[Json]]:
        """Raw event dicts, a page at a time, following `starting_after` to the end."""
        after: str | None = None
        while True:
            body = self._fetch(report, after)
            report.pages += 1
            data = [e for e in body.get("data", []) if isinstance(e, dict)]
            yield data
            if not body.get("has_more") or not data:
                return
            after = _id(data[-1])

    def _fetch(self, report: BackfillReport, after: str | None) -> Json:
        params = self._params(report, after)
        try:
            return self._list(params)
        except StripeUnavailableError as error:
            if "types" not in params or not _refused_types(error):
                raise
        # This API (localstripe, for one) does not take `types[]`: filter here instead.
        log.info("the Events API refused types[]; filtering types client-side")
        report.server_filtered = False
        return self._list(self._params(report, after))

    def _params(self, report: BackfillReport, after: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": stripe_api.PAGE, "created": {"gte": report.since}}
        if report.types and report.server_filtered and len(report.types) <= MAX_TYPES:
            params["types"] = list(report.types)
        if after is not None:
            params["starting_after"] = after
        return params

    def _list(self, params: dict[str, Any]) -> Json:
        page = stripe_api.call(
            lambda: self.client.v1.events.list(params),  # type: ignore[arg-type]
            "GET /v1/events",
            self.sleep,
        )
        # The raw JSON, not the SDK's objects: the stored body is what Stripe rendered.
        return stripe_api.raw_json(page)

    # -- appending --------------------------------------------------------------------

    def _append(self, report: BackfillReport, events: list[Json]) -> None:
        events.sort(key=lambda e: (_created(e), _id(e)))
        incoming = [i for i in map(self._incoming, events) if i is not None]
        report.fetched += len(events)
        report.skipped += len(events) - len(incoming)
        for event in events:
            report.newest = max(report.newest or (0, ""), (_created(event), _id(event)))
        for item, result in zip(incoming, self.store.append(incoming), strict=True):
            self._count(report, item, result)

    def _incoming(self, event: Json) -> Incoming | None:
        received_at = self.clock()
        try:
            parsed = parse_event(orjson.dumps(event), received_at=received_at)
        except MalformedEventError as error:
            log.warning("backfill: skipping %s: %s", event.get("id"), error)
            return None
        if parsed.type.startswith(RESERVED_TYPE_PREFIX):
            # Stripe never lists one: only the ledger records its own types.
            log.warning("backfill: skipping %s: reserved type %r", parsed.event_id, parsed.type)
            return None
        return dataclasses.replace(parsed, source="backfill")

    def _count(self, report: BackfillReport, item: Incoming, result: AppendResult) -> None:
        if result.status == "recorded":
            report.recorded += 1
        elif self._stored_now(item):
            report.alternates += 1
        else:
            report.duplicates += 1

    def _stored_now(self, item: Incoming) -> bool:
        """Whether this append stored `item` as a further rendering of a known id."""
        return any(
            v.version > 1 and v.source == "backfill" and v.received_at == item.received_at
            for v in self.store.versions(item.event_id)
        )

    def _record_cursor(self, report: BackfillReport, now: int) -> None:
        cursor = {
            "object": BACKFILL_CURSOR,
            "newest_event_id": report.newest[1] if report.newest else None,
            "newest_created": report.newest[0] if report.newest else None,
            "since": report.since,
            "types": list(report.types) if report.types else None,
            "fetched": report.fetched,
            "recorded": report.recorded,
            "duplicates": report.duplicates,
            "alternates": report.alternates,
        }
        event = own_event(BACKFILL_CURSOR, cursor, created=now, livemode=self.livemode)
        self.store.append([event])
        report.cursor_id = event.event_id


def last_cursor(store: EventStore) -> Json | None:
    """The newest cursor of a backfill that fetched every type, or None."""
    found: Json | None = None
    for event in of_type(store, BACKFILL_CURSOR):
        cursor = event.payload().get("data", {}).get("object", {})
        if isinstance(cursor, dict) and cursor.get("types") is None:
            found = cursor
    return found


def _refused_types(error: StripeUnavailableError) -> bool:
    return error.status == 400 and "types" in error.message


def _wanted(event: Json, types: tuple[str, ...] | None) -> bool:
    return types is None or event.get("type") in types


def _id(event: Json) -> str:
    return str(event.get("id", ""))


def _created(event: Json) -> int:
    created = event.get("created")
    return created if isinstance(created, int) else 0
