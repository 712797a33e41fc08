"""`billing-ledger verify [--signatures]`: the ledger proves it is what was received.

The chain (ledger/chain.py) is recomputed from the first event; the first position whose
stored hash differs is named, with exit status 1. `--signatures` re-checks every stored
Stripe-Signature header against the configured secrets, the timestamp tolerance ignored
(an old delivery is still Stripe's), and lists the events that fail.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from billing_ledger.ledger.chain import Break, Head
from billing_ledger.ledger.records import Recorded
from billing_ledger.ledger.store import Database, DatabaseUrl, EventStore, guard
from billing_ledger.ledger.verify import InvalidSignatureError, verify
from billing_ledger.progress import Progress
from billing_ledger.settings import Settings

Print = Callable[[str], None]
PAGE = 1000

log = logging.getLogger("billing_ledger.cli")


class BadHeadError(ValueError):
    """--head is not POSITION:HASH."""


@dataclass
class SignatureReport:
    """How many stored headers verify, fail, or were never there (events not from a webhook)."""

    verified: int = 0
    unsigned: int = 0
    failures: list[tuple[Recorded, str]] = field(default_factory=list)


def check_signature(event: Recorded, secrets: tuple[str, ...]) -> str | None:
    """Why the stored header does not verify the stored body, or None when it does."""
    try:
        verify(event.body, event.signature, secrets, 0)  # 0: the tolerance ignored
    except InvalidSignatureError as error:
        return str(error)
    return None


def signatures(
    store: EventStore, secrets: tuple[str, ...], progress: Progress | None = None
) -> SignatureReport:
    """Re-check every stored Stripe-Signature header; events not delivered by webhook have none."""
    report = SignatureReport()
    after = 0
    while page := store.read(after, PAGE):
        for event in page:
            _check(report, event, secrets)
        after = page[-1].position
        if progress is not None:
            progress.advance(len(page))
    return report


def _check(report: SignatureReport, event: Recorded, secrets: tuple[str, ...]) -> None:
    if event.source != "webhook":
        report.unsigned += 1  # backfill, reconcile, the ledger's own records
        return
    reason = check_signature(event, secrets)
    if reason is None:
        report.verified += 1
    else:
        report.failures.append((event, reason))


def break_line(found: Break) -> str:
    """`chain: broken at position 17 (evt_1): reason; positions before it hold`."""
    where = f"position {found.position}" + (f" ({found.event_id})" if found.event_id else "")
    after = "; every position before it holds" if found.earlier_hold else ""
    return f"chain: broken at {where}: {found.reason}{after}"


def cmd_verify(args: argparse.Namespace, settings: Settings, out: Print = print) -> int:
    """Recompute the chain (and with --signatures re-check the headers); 0 when all hold."""
    try:
        noted = parse_head(args.head) if getattr(args, "head", None) else None
    except BadHeadError as error:
        print(f"billing-ledger verify: {error}", file=sys.stderr)
        return 2
    if args.signatures and not settings.webhook_secrets:
        print(
            "billing-ledger verify: --signatures needs STRIPE_WEBHOOK_SECRET (the secrets "
            "that signed the deliveries)",
            file=sys.stderr,
        )
        return 2
    with _reading(settings) as store:
        total = store.count()
        out(f"verify: {store.db.url.display()} ({total:,} events)")
        failed = _verify_chain(store, total, out, noted)
        if args.signatures:
            failed |= _verify_signatures(store, settings.webhook_secrets, total, out)
    return 1 if failed else 0


def parse_head(text: str) -> Head:
    """`POSITION:HASH`, as /healthz showed the chain head (64 hex digits)."""
    position, _, digest = text.strip().partition(":")
    try:
        head = Head(int(position), bytes.fromhex(digest))
    except ValueError:
        head = Head(0, b"")
    if head.position <= 0 or len(head.hash) != 32:
        raise BadHeadError(f"--head: expected POSITION:HASH (64 hex digits), got {text!r}")
    return head


def _verify_chain(store: EventStore, total: int, out: Print, noted: Head | None) -> bool:
    if not store.chain.exists():
        out(
            "chain: none stored: this ledger predates the chain; any command that writes to it "
            "(serve, project, replay) chains what is stored"
        )
        return True
    with Progress("verify chain", total) as progress:
        found = store.chain.walk(progress.advance, noted)
    if found is not None:
        out(break_line(found))
        return True
    head = store.chain_head()
    out(f"chain: {total:,} events hold; head position {head.position} sha256 {head.hex()}")
    if noted is not None:
        out(f"noted head: position {noted.position} still holds (nothing at or before it changed)")
    return False


def _verify_signatures(store: EventStore, secrets: tuple[str, ...], total: int, out: Print) -> bool:
    with Progress("verify signatures", total) as progress:
        report = signatures(store, secrets, progress)
    out(
        f"signatures: {report.verified:,} verify, {len(report.failures):,} fail, "
        f"{report.unsigned:,} not from a webhook (backfill, reconcile, the ledger's own)"
    )
    for event, reason in report.failures:
        out(f"  position {event.position} {event.event_id} ({event.type}): {reason}")
    return bool(report.failures)


def announce(command: str, store: EventStore, total: int | None = None) -> int:
    """Log the database a command read (password masked) and its event count; the count."""
    total = store.count() if total is None else total
    log.info(
        "billing-ledger %s: database %s (%s events)", command, store.db.url.display(), f"{total:,}"
    )
    return total


@contextmanager
def _reading(settings: Settings) -> Iterator[EventStore]:
    """The store as it is: no table created, nothing upgraded (verify only reads)."""
    with guard():
        store = EventStore(Database(DatabaseUrl.parse(settings.database_url)))
    try:
        yield store
    finally:
        store.db.close()
