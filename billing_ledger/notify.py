"""Notifications to the app: every change of the feed POSTed to LEDGER_NOTIFY_URL, signed.

The body is the change object of `GET /v1/changes`; `Ledger-Signature: t=T,v1=HEX` is an
HMAC-SHA256 with LEDGER_NOTIFY_SECRET over `"{T}.{body}"` (the scheme of Stripe-Signature).
Changes go out one at a time in feed position order (so in order per user), each retried
with back-off until the receiver answers 2xx; the position delivered is tracked in the
database, so a restart resumes where it was (at least once: a change whose 2xx was lost
in a crash is sent again).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import time
from collections.abc import Callable

import httpx

from billing_ledger.background import Background
from billing_ledger.http import wire
from billing_ledger.projections.feed import FeedChange, FeedTables
from billing_ledger.settings import Settings, SettingsError

log = logging.getLogger("billing_ledger.notify")

NAME = "notify"  # the notifier's row in the feed's tracking table
BATCH = 100
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
TIMEOUT = 10.0
POLL_SECONDS = 0.1


def signature(body: bytes, secret: str, timestamp: int) -> str:
    """The Ledger-Signature header for `body` at `timestamp`."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(body: bytes, header: str, secret: str, tolerance: int = 300) -> bool:
    """Whether `header` signs `body` with `secret`, its timestamp within `tolerance` (receivers)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = signature(body, secret, timestamp).split("v1=", 1)[1]
    fresh = abs(time.time() - timestamp) <= tolerance
    return fresh and hmac.compare_digest(expected, parts.get("v1", ""))


class Notifier:
    """Delivers the feed to one URL from a durable position."""

    def __init__(
        self,
        tables: FeedTables,
        url: str,
        secret: str | None,
        *,
        clock: Callable[[], float] = time.time,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.tables = tables
        self.url = url
        self.secret = secret
        self.clock = clock
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.delivered = 0
        self.error: str | None = None
        self._background = Background("notify", self._run, join_seconds=TIMEOUT + 5)
        self._stopping = self._background.stopping
        if not secret:
            log.warning("LEDGER_NOTIFY_SECRET is not set: notifications go out unsigned")

    def start(self) -> None:
        """Deliver in a background thread until `stop()`."""
        self._background.start()

    def stop(self) -> None:
        """Stop after the current attempt."""
        self._background.stop()

    def position(self) -> int:
        """The feed position delivered so far."""
        return self.tables.tracked(NAME)[1]

    def _run(self) -> None:
        with httpx.Client(timeout=TIMEOUT) as client:
            while not self._stopping.is_set():
                try:
                    moved = self._step(client)
                except Exception as e:  # the database is away: try again shortly
                    self.error = f"{type(e).__name__}: {e}"
                    log.warning("notify: %s", self.error)
                    moved = False
                if not moved:
                    self._stopping.wait(POLL_SECONDS)

    def _step(self, client: httpx.Client) -> bool:
        """Deliver the next batch from the tracked position; True when any went out."""
        tracked = self.tables.tracked(NAME)
        found = self.tables.read(tracked[1], BATCH)
        for change in found:
            if not self.deliver(client, change):
                return False  # stopping
            new = (0, change.position)
            if not self.tables.advance(NAME, tracked, new):
                return True  # another process delivers too: read where it is
            tracked = new
        return bool(found)

    def deliver(self, client: httpx.Client, change: FeedChange) -> bool:
        """POST one change until a 2xx; False when stopped first."""
        body = wire.encode(wire.shaped(wire.FeedChange, change))
        backoff = self.backoff_first
        while not self._stopping.is_set():
            outcome = self._attempt(client, body)
            if outcome is None:
                self.delivered += 1
                self.error = None
                return True
            if outcome != self.error:
                log.warning("notify: position %d to %s: %s", change.position, self.url, outcome)
            self.error = outcome
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self.backoff_max)
        return False

    def _attempt(self, client: httpx.Client, body: bytes) -> str | None:
        """One POST; None on a 2xx, else what went wrong."""
        headers = {"content-type": "application/json", "user-agent": "billing-ledger"}
        if self.secret:
            headers["ledger-signature"] = signature(body, self.secret, int(self.clock()))
        try:
            response = client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}"
        if 200 <= response.status_code < 300:
            return None
        return f"answered {response.status_code}"

    def redeliver(self, after: int, say: Callable[[str], None] = print) -> int:
        """Deliver every change after `after` up to the head now, in the foreground (the
        tracked position is left as it is); returns how many went out."""
        head = self.tables.head()
        sent = 0
        with httpx.Client(timeout=TIMEOUT) as client:
            while after < head:
                found = [c for c in self.tables.read(after, BATCH) if c.position <= head]
                if not found:
                    break
                for change in found:
                    if not self.deliver(client, change):
                        return sent
                    sent += 1
                    after = change.position
        say(f"delivered {sent} changes up to position {after} to {self.url}")
        return sent


def cmd_notify(args: argparse.Namespace, settings: Settings) -> int:
    """`billing-ledger notify --from POS`: deliver the feed again from a position."""
    from billing_ledger.bootstrap import build

    url = args.url or settings.notify_url
    if not url:
        raise SettingsError("LEDGER_NOTIFY_URL", "names no receiver (or pass --url)")
    deps = build(settings, run_projections=False)
    try:
        Notifier(FeedTables(deps.store.db), url, settings.notify_secret).redeliver(
            args.from_position
        )
    finally:
        deps.close()
    return 0
