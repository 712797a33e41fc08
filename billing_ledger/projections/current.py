"""Each object's present: the few snapshots a read at "now" needs, out of its whole history.

A read at `at` no earlier than every snapshot of an object gives the same answer from
`present(snapshots)` as from all of them: the fold's greatest snapshot with every snapshot
of its second (their keys depend on each other), the trailing run of past_due states (where
the grace window starts) and one snapshot per payment attempt. It is a function of the set
of snapshots, so arrival order, batching and replay all give the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from billing_ledger.ledger.canonical import Snapshot
from billing_ledger.projections.fold import Attempt, Key, attempts, ordered, past_due_in, ranked
from billing_ledger.projections.links import customer_of
from billing_ledger.projections.policy import rule_witnesses
from billing_ledger.projections.purchases import attached


def _seconds_kept(order: Sequence[Snapshot]) -> int:
    """The earliest `created` whose whole second must be kept."""
    top = order[-1]
    # past_due_since(order, top.created) without keying again: dropping whole seconds leaves
    # the other snapshots' keys (and so their order) as they were.
    since = past_due_in([s for s in order if s.created <= top.created])
    # A past_due run holds no terminal state (one would be the greatest), so it is exactly
    # the snapshots of its seconds: keep them whole to keep their keys.
    return min(since, top.created) if since is not None else top.created


def _attempt_witnesses(snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    """One snapshot per payment attempt fact, the smallest event id of each."""
    found: dict[Attempt, Snapshot] = {}
    for s in sorted(snapshots, key=lambda s: (s.event_id, s.created)):
        for attempt in attempts([s], s.created):
            found.setdefault(attempt, s)
    return list(found.values())


def present(snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    """The object's snapshots a read at or after its latest `created` needs, sorted."""
    if isinstance(snapshots, Sequence) and len(snapshots) == 1:
        return [snapshots[0]]  # the one snapshot is its own present (most objects of a batch)
    order = ordered(snapshots)
    if not order:
        return []
    top = order[-1]
    since = _seconds_kept(order)
    if since == top.created:
        kept = {s.event_id: s for s in order if s.created == top.created}
    else:
        kept = {s.event_id: s for s in order if s.created >= since}
    # Lower seconds' attempts cannot outrank the greatest snapshot, whatever their keys.
    # What the precise rules read later (when a subscription stopped granting, who owns the
    # metadata now): without these a read of the present would answer by less evidence.
    for s in [*_attempt_witnesses(order), *rule_witnesses(order, in_order=True)]:
        kept.setdefault(s.event_id, s)
    return sorted(kept.values(), key=lambda s: (s.created, s.event_id))


def present_after(current: Sequence[Snapshot], batch: Sequence[Snapshot]) -> list[Snapshot] | None:
    """`present(history + batch)` from the history's present (`current`) and a batch of
    snapshots of the same object, without the history; None when that is not provably the
    same, and the whole history must decide.

    It is the same when every snapshot of the batch is of a second no earlier than the
    present's greatest snapshot (those seconds are whole in the present, so every key there
    is the history's) and the present orders its earlier snapshots as the history did
    (`_ordered_as_before`). Then the greatest snapshot, the trailing past_due run and the
    snapshot before it (the latest of its status), the latest snapshot of each status and
    naming a user, and the first snapshot of each attempt of `history + batch` are all in
    `current + batch`, in the same order.
    """
    if not batch or len({s.event_id for s in batch}) < len(batch):
        return None  # two renderings of an event id in a batch: the stored one decides
    if not current:
        return present(batch)  # the object's first snapshots (the caller knows it had none)
    if len(current) == 1:  # its one second is whole (most objects' present)
        if min(s.created for s in batch) < current[0].created:
            return None
    else:
        keyed = ranked(current)
        top = keyed[-1][1].created
        if min(s.created for s in batch) < top or not _ordered_as_before(keyed, top):
            return None
    kept = {s.event_id for s in current}
    new = [s for s in batch if s.event_id not in kept]  # applied again: the stored row stays
    return present([*current, *new]) if new else list(current)


def _ordered_as_before(keyed: Sequence[tuple[Key, Snapshot]], top: int) -> bool:
    """Whether a present (`keyed`, as `fold.ranked` orders it) orders its snapshots before
    the second `top` of its greatest as the history it was cut from did.

    An earlier second may have lost a snapshot that superseded one kept (`fold._superseded`),
    which only ever raises the kept one's key within its second. The order of two kept
    snapshots of one such second cannot have changed when their terminality or observation
    differs (decided first), or when the lower of them by the keys' later parts is
    superseded in the present too (then in the history too)."""
    seconds: dict[int, list[Key]] = {}
    for key, s in keyed:
        if s.created < top:
            seconds.setdefault(s.created, []).append(key)
    for keys in seconds.values():
        for i, one in enumerate(keys):
            for other in keys[i + 1 :]:
                if (one[0], one[2]) != (other[0], other[2]):
                    continue
                if one[4:7] == other[4:7]:
                    return False  # two renderings of an event id
                low = one if one[4:7] < other[4:7] else other
                if low[3]:  # not superseded here: it may have been in the history
                    return False
    return True


def latest(snapshots: Iterable[Snapshot]) -> int:
    """The latest `created` among an object's snapshots: reads before it need the history."""
    return max((s.created for s in snapshots), default=0)


def present_of_all(snapshots: Iterable[Snapshot]) -> tuple[list[Snapshot], int]:
    """Every object's present, object by object and customer by customer, and the latest
    `created` among all the snapshots (what the views' present table holds for them)."""
    groups: dict[tuple[str, str, str], list[Snapshot]] = {}
    for s in attached(snapshots):  # a dispute belongs to its charge's customer
        customer = customer_of(s)
        if customer is not None:
            groups.setdefault((s.kind, s.object_id, customer), []).append(s)
    kept = [s for group in groups.values() for s in present(group)]
    return kept, max((latest(group) for group in groups.values()), default=0)
