"""The hash chain: every stored event's SHA-256 over the previous hash and the event itself.

`hash(n) = SHA-256(hash(previous position) || "\\0" position "\\0" event id "\\0" version
"\\0" || stored record)`, where the stored record is the header line (type, created,
livemode, the Stripe-Signature header...) and the raw body exactly as received. The first
event chains from 32 zero bytes. Hashes live in a side table keyed by position, written in
the transaction that inserts the events, while that transaction holds the store's write
lock (PostgreSQL: the appends' advisory lock with the table in ROW EXCLUSIVE mode, which
also waits for the EXCLUSIVE lock of an older process or `Chain.upgrade`; SQLite: the
database's one writer),
so the previous hash read there is the one committed just before: the chain stays a chain
with any number of writers and processes. A transaction finding stored events with no hash
before its own (a ledger written before the chain existed, or by an older process during an
upgrade) chains them first; `Chain.upgrade` does the same for a whole ledger when it opens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from billing_ledger.ledger.errors import StorageError, guard

if TYPE_CHECKING:
    from billing_ledger.ledger.store import Database

CHAIN_TABLE = "ledger_chain"
GENESIS = bytes(32)
UPGRADE_BATCH = 2000

# (position, event id, version, stored state) of one stored event.
Row = tuple[int, str, int, bytes]


class ChainError(StorageError):
    """An append found the chain already past its position: the events table was altered."""


def link(previous: bytes, position: int, event_id: str, version: int, state: bytes) -> bytes:
    """The hash of one stored event, chained over the previous one."""
    digest = hashlib.sha256(previous)
    digest.update(f"\0{position}\0{event_id}\0{version}\0".encode())
    digest.update(state)
    return digest.digest()


# Why a batch is refused when the chain is already past its first position (Chain.following,
# and the PostgreSQL append function, which fills it in with format()).
CHAIN_AHEAD = (
    "storage unavailable: position {position} is already chained (chain head {head}): "
    "the events table was altered; run `billing-ledger verify`"
)


def link_sql(previous: str, position: str, event_id: str, version: str, state: str) -> str:
    """`link` as a PostgreSQL expression over the SQL expressions given (the same bytes:
    the decimal position and version, the id in UTF-8, `zero` a variable holding one NUL)."""
    parts = [
        f"convert_to({x}, 'UTF8')" for x in (f"{position}::text", event_id, f"{version}::text")
    ]
    return f"sha256({previous} || zero || {' || zero || '.join(parts)} || zero || {state})"


@dataclass(frozen=True)
class Head:
    """The last chained position and its hash (position 0 and zeros when nothing is)."""

    position: int
    hash: bytes

    def hex(self) -> str:
        """The hash as 64 hex digits."""
        return self.hash.hex()


@dataclass(frozen=True)
class Break:
    """The first position where the stored chain and the recomputed one part."""

    position: int
    event_id: str | None
    reason: str
    earlier_hold: bool = True  # False when a noted head shows the earlier events changed


class Chain:
    """The chain table of one database and its SQL."""

    def __init__(self, db: Database, events_table: str) -> None:
        self.db = db
        self.table = db.table(CHAIN_TABLE)
        self.events = db.table(events_table)
        self.pos = "rowid" if db.dialect == "sqlite" else "notification_id"
        p = db.param
        blob, integer = ("BLOB", "INTEGER") if db.dialect == "sqlite" else ("BYTEA", "BIGINT")
        self.create_sql = (
            f"CREATE TABLE IF NOT EXISTS {self.table} "
            f"(position {integer} PRIMARY KEY, hash {blob} NOT NULL)"
        )
        self.head_sql = f"SELECT position, hash FROM {self.table} ORDER BY position DESC LIMIT 1"
        self.rows_sql = (
            f"SELECT {self.pos} AS position, originator_id, originator_version, state "
            f"FROM {self.events} WHERE {self.pos} > {p} AND {self.pos} < {p} "
            f"ORDER BY {self.pos} LIMIT {p}"
        )
        self.walk_sql = (
            f"SELECT e.{self.pos} AS position, e.originator_id, e.originator_version, e.state, "
            f"c.hash FROM {self.events} e LEFT JOIN {self.table} c ON c.position = e.{self.pos} "
            f"WHERE e.{self.pos} > {p} ORDER BY e.{self.pos} LIMIT {p}"
        )
        self.orphan_sql = (
            f"SELECT MIN(c.position) AS position FROM {self.table} c WHERE NOT EXISTS "
            f"(SELECT 1 FROM {self.events} e WHERE e.{self.pos} = c.position)"
        )
        if db.dialect == "sqlite":
            self.insert_sql = f"INSERT INTO {self.table} (position, hash) VALUES (?, ?)"
        else:
            self.insert_sql = (
                f"INSERT INTO {self.table} (position, hash) "
                "SELECT * FROM unnest(%s::bigint[], %b::bytea[])"
            )

    def create(self, cursor: Any) -> None:
        """Create the chain table (idempotent)."""
        cursor.execute(self.create_sql)

    # -- in the inserting transaction ---------------------------------------------------

    def extend(self, cursor: Any, rows: Sequence[Row]) -> None:
        """Chain `rows`, just inserted by this transaction, after whatever is chained already.

        Call it holding the store's write lock, after the insert (positions assigned)."""
        self._insert(cursor, self.following(cursor, self.head(cursor), rows))

    def following(self, cursor: Any, head: Head, rows: Sequence[Row]) -> list[tuple[int, bytes]]:
        """The hashes of `rows`, just inserted, chained after `head` (read under the same
        write lock); events stored between them with no hash are chained first."""
        ordered = sorted(rows)
        if ordered[0][0] <= head.position:
            raise ChainError(CHAIN_AHEAD.format(position=ordered[0][0], head=head.position))
        if ordered[0][0] > head.position + 1:  # a gap, or events stored before the chain
            ordered = self._unchained(cursor, head.position, ordered[0][0]) + ordered
        return _hashes(head.hash, ordered)

    def head(self, cursor: Any) -> Head:
        """The last chained position and its hash."""
        cursor.execute(self.head_sql)
        return self.head_of(cursor.fetchone())

    @staticmethod
    def head_of(row: Any) -> Head:
        """The head from a row of `head_sql` (None: nothing is chained)."""
        return Head(int(row["position"]), bytes(row["hash"])) if row else Head(0, GENESIS)

    def _unchained(self, cursor: Any, after: int, before: int) -> list[Row]:
        found: list[Row] = []
        while True:
            cursor.execute(self.rows_sql, (after, before, UPGRADE_BATCH))
            page = [_row(r) for r in cursor.fetchall()]
            found += page
            if len(page) < UPGRADE_BATCH:
                return found
            after = page[-1][0]

    def _insert(self, cursor: Any, hashes: list[tuple[int, bytes]]) -> None:
        if self.db.dialect == "sqlite":
            cursor.executemany(self.insert_sql, hashes)
        else:
            cursor.execute(self.insert_sql, ([p for p, _ in hashes], [h for _, h in hashes]))

    # -- upgrading and reading ------------------------------------------------------------

    def upgrade(self, progress: Callable[[int], None] | None = None) -> int:
        """Chain every stored event that has no hash yet, a batch per transaction; how many."""
        chained = 0
        while True:
            with self._locked() as cursor:
                head = self.head(cursor)
                cursor.execute(self.rows_sql, (head.position, 2**62, UPGRADE_BATCH))
                rows = [_row(r) for r in cursor.fetchall()]
                if rows:
                    self._insert(cursor, _hashes(head.hash, rows))
            chained += len(rows)
            if progress is not None and rows:
                progress(len(rows))
            if len(rows) < UPGRADE_BATCH:
                return chained

    def unchained(self) -> int:
        """How many stored events wait for a hash (0 once upgraded)."""
        with self.db.transaction(commit=False) as cursor:
            head = self.head(cursor)
            cursor.execute(
                f"SELECT COUNT(*) AS n FROM {self.events} WHERE {self.pos} > {self.db.param}",
                (head.position,),
            )
            return int(cursor.fetchone()["n"])

    def exists(self) -> bool:
        """Whether the chain table is there (a ledger not yet upgraded has none)."""
        if self.db.dialect == "sqlite":
            sql, name = (
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
                CHAIN_TABLE,
            )
        else:
            sql, name = "SELECT to_regclass(%s) AS name", self.table
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(sql, (name,))
            row = cursor.fetchone()
        return row is not None and row["name"] is not None

    def current_head(self) -> Head:
        """The chain head, read in a transaction of its own."""
        with self.db.transaction(commit=False) as cursor:
            return self.head(cursor)

    def walk(
        self, progress: Callable[[int], None] | None = None, noted: Head | None = None
    ) -> Break | None:
        """Recompute the chain from the first event; the first position that does not hold
        (with `noted`, a head seen earlier, also where the recomputed chain departs from it)."""
        previous, after = GENESIS, 0
        while True:
            with self.db.transaction(commit=False) as cursor:
                cursor.execute(self.walk_sql, (after, UPGRADE_BATCH))
                page = cursor.fetchall()
            for record in page:
                (position, event_id, version, state), stored = _row(record), record["hash"]
                previous = link(previous, position, event_id, version, state)
                found = _check(position, event_id, stored, previous)
                if found is None and noted is not None and position >= noted.position:
                    found = _against(noted, position, event_id, previous)
                    noted = None  # checked once, where the walk reaches it
                if found is not None:
                    return found
            if progress is not None and page:
                progress(len(page))
            if len(page) < UPGRADE_BATCH:
                return self._missing(noted, after if not page else int(page[-1]["position"]))
            after = int(page[-1]["position"])

    def _missing(self, noted: Head | None, last: int) -> Break | None:
        if noted is not None and noted.position > last:
            return Break(
                noted.position, None, "the noted head's position is no longer stored", False
            )
        return self._orphan()

    def _orphan(self) -> Break | None:
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(self.orphan_sql)
            row = cursor.fetchone()
        if row is None or row["position"] is None:
            return None
        return Break(int(row["position"]), None, "a hash is stored but the event is gone")

    @contextmanager
    def _locked(self) -> Iterator[Any]:
        """A transaction holding the store's write lock before it reads the chain head."""
        if self.db.dialect == "postgres":
            with self.db.transaction() as cursor:
                cursor.execute(f"LOCK TABLE {self.events} IN EXCLUSIVE MODE")
                yield cursor
            return
        with guard(), self.db.sqlite.get_connection(commit=True) as conn:
            cursor = conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")  # the write lock first: the head read is current
            try:
                yield cursor
            except BaseException:
                conn.rollback()
                raise
            conn.commit()


_MISMATCH = (
    "the stored hash does not match the recomputed one: this event's stored record "
    "(body or header) or its position changed"
)


def _check(position: int, event_id: str, stored: Any, recomputed: bytes) -> Break | None:
    if stored is None:
        return Break(position, event_id, "no hash stored for this event")
    if bytes(stored) != recomputed:
        return Break(position, event_id, _MISMATCH)
    return None


def _against(noted: Head, position: int, event_id: str, recomputed: bytes) -> Break | None:
    """The first event at or past a noted head: it must be that head, with that hash."""
    if position != noted.position:
        return Break(noted.position, None, "the noted head's position is no longer stored", False)
    if recomputed != noted.hash:
        return Break(position, event_id, _REWRITTEN, False)
    return None


_REWRITTEN = (
    "the chain recomputes and matches its stored hashes, but not the head noted earlier: "
    "events at or before it were changed and the chain rewritten"
)


def _row(record: Any) -> Row:
    return (
        int(record["position"]),
        str(record["originator_id"]),
        int(record["originator_version"]),
        bytes(record["state"]),
    )


def _hashes(previous: bytes, rows: Sequence[Row]) -> list[tuple[int, bytes]]:
    out = []
    for position, event_id, version, state in rows:
        previous = link(previous, position, event_id, version, state)
        out.append((position, previous))
    return out


def describe(head: Head) -> dict[str, Any]:
    """The chain head as /healthz shows it."""
    return {"position": head.position, "hash": head.hex() if head.position else None}
