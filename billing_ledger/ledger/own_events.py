"""Events of our own: what operations learn, appended to the ledger like any Stripe event.

The ledger is the source of truth, so a customer link this service learned, a backfill's
cursor, a gap in Stripe's retention, a reconcile's observation and a replay's marker are
stored as events (`source="ledger"`) with ids Stripe never
uses (`lgr_...`). Projections ignore the types they do not read; replay re-reads the
observations and never calls Stripe again.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from billing_ledger.ledger.records import Incoming, Recorded, decode_state
from billing_ledger.ledger.store import EventStore, guard

CUSTOMER_LINK = "ledger.customer_link"  # a user's customer, learned by Checkout or the portal
CHECKOUT_SALE = "ledger.checkout_sale"  # what a Checkout Session this service created sells
OBSERVATION = "ledger.observation"
BACKFILL_CURSOR = "ledger.backfill_cursor"
BACKFILL_GAP = "ledger.backfill_gap"
REPLAY = "ledger.replay"

_PREFIX = {
    CUSTOMER_LINK: "lgr_link_",
    CHECKOUT_SALE: "lgr_sale_",
    OBSERVATION: "lgr_obs_",
    BACKFILL_CURSOR: "lgr_bfc_",
    BACKFILL_GAP: "lgr_gap_",
    REPLAY: "lgr_rpl_",
}


def own_event(
    event_type: str,
    obj: Mapping[str, Any],
    *,
    created: int,
    livemode: bool,
    api_version: str | None = None,
    key: str | None = None,
    **fields: Any,
) -> Incoming:
    """An event of our own in Stripe's envelope, ready to append; `key`, when given, makes
    its id (so the same fact is stored once), else the id is random."""
    event_id = _PREFIX[event_type] + (key or uuid.uuid4().hex)
    body = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": created,
        "livemode": livemode,
        "api_version": api_version,
        **fields,
        "data": {"object": dict(obj)},
    }
    return Incoming(
        event_id=event_id,
        type=event_type,
        created=created,
        livemode=livemode,
        api_version=api_version,
        body=orjson.dumps(body),
        received_at=time.time(),
        source="ledger",
    )


def _link_key(user_id: str, customer_id: str, livemode: bool) -> str:
    return hashlib.sha256(f"{livemode}:{user_id}:{customer_id}".encode()).hexdigest()[:24]


def link_event_id(user_id: str, customer_id: str, livemode: bool) -> str:
    """The same link always gets the same id, so it is stored once."""
    return _PREFIX[CUSTOMER_LINK] + _link_key(user_id, customer_id, livemode)


def link_event(user_id: str, customer_id: str, livemode: bool, now: float) -> Incoming:
    """A `ledger.customer_link`: this service learned (or made) the user's customer."""
    obj = {"object": CUSTOMER_LINK, "user_id": user_id, "customer": customer_id}
    key = _link_key(user_id, customer_id, livemode)
    return own_event(CUSTOMER_LINK, obj, created=int(now), livemode=livemode, key=key)


def sale_event(
    session_id: str,
    user_id: str,
    customer_id: str,
    price_id: str,
    mode: str,
    livemode: bool,
    now: float,
) -> Incoming:
    """A `ledger.checkout_sale`: what one Checkout Session this service created sells (one
    event a session, whatever retries)."""
    obj = {
        "object": CHECKOUT_SALE,
        "session": session_id,
        "customer": customer_id,
        "user_id": user_id,
        "prices": [price_id],
        "mode": mode,
    }
    key = hashlib.sha256(session_id.encode()).hexdigest()[:24]
    return own_event(CHECKOUT_SALE, obj, created=int(now), livemode=livemode, key=key)


def observation(obj: Mapping[str, Any], observed_at: int, api_version: str) -> Incoming:
    """A recorded re-fetch of one Stripe object (STRIPE-SEMANTICS 6.3, layer 3)."""
    return own_event(
        OBSERVATION,
        obj,
        created=observed_at,
        livemode=obj.get("livemode") is True,
        api_version=api_version,
        observed_at=observed_at,
        source="reconcile",
    )


def of_type(store: EventStore, event_type: str, page: int = 1000) -> Iterator[Recorded]:
    """Every stored event of one type, in position order (a scan: operators only)."""
    after = 0
    while True:
        with guard():
            rows = store.recorder.select_notifications(
                start=after, limit=page, topics=[event_type], inclusive_of_start=False
            )
        for n in rows:
            yield decode_state(n.id, str(n.originator_id), n.originator_version, n.state)
        if len(rows) < page:
            return
        after = rows[-1].id
