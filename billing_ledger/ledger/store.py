"""The event store: each Stripe event id stored once, on SQLite or PostgreSQL.

Built on the eventsourcing library's application recorders: one stream per Stripe event
id (the originator id is the event id itself), version 1 the first body received, later
versions alternate renderings of the same id (another API version, from backfill). The
recorder's notification id is the ledger position.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import psycopg
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from psycopg import Cursor
from psycopg.conninfo import make_conninfo
from psycopg.rows import DictRow, TupleRow, tuple_row
from psycopg.sql import Composable
from psycopg_pool import ConnectionPool, PoolTimeout

from billing_ledger.ledger.chain import CHAIN_AHEAD, Chain, ChainError, Head, link_sql
from billing_ledger.ledger.errors import StorageError as StorageError
from billing_ledger.ledger.errors import guard as guard
from billing_ledger.ledger.records import (
    AppendResult,
    Incoming,
    Recorded,
    decode_state,
    encode_state,
)

TABLE = "ledger_events"
# How long a read waits for a table lock before answering "unavailable": a swap holds the
# tables for milliseconds, an idle transaction of someone else's could hold them for ever.
READ_LOCK_TIMEOUT = 2.0
READ_CONNECTIONS = 8  # the most one process's read pool opens (PostgreSQL)
APPEND_FUNCTION = "ledger_append"  # PostgreSQL: a batch's transaction (LedgerPostgresRecorder)
APPEND_LOCK = "ledger_events.append"  # PostgreSQL: the appends' advisory lock, per schema
CHAIN_AHEAD_STATE = "LC001"  # the append function's SQLSTATE for chain.CHAIN_AHEAD
READ_IDLE_SECONDS = 60.0  # a read connection idle this long is closed, not used again
log = logging.getLogger("billing_ledger.ledger")
_T = TypeVar("_T")


class DatabaseUrlError(ValueError):
    """LEDGER_DATABASE_URL is not a URL the ledger understands."""


class ConnectArgs(TypedDict):
    """What reaches the server: psycopg's connection keywords, which the datastore shares."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    connect_timeout: int


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed LEDGER_DATABASE_URL."""

    dialect: str  # sqlite | postgres
    path: str = ""
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = ""
    dbname: str = "postgres"
    schema: str = "public"

    @classmethod
    def parse(cls, url: str) -> DatabaseUrl:
        """Parse `sqlite:///relative.db`, `sqlite:////absolute.db` or `postgresql://...`."""
        parts = urlsplit(url)
        if parts.scheme == "sqlite":
            # sqlite:///x.db -> "x.db"; sqlite:////tmp/x.db -> "/tmp/x.db" (the URL convention)
            path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
            if not path or parts.netloc:
                raise DatabaseUrlError(f"expected sqlite:///PATH, got {url!r}")
            return cls(dialect="sqlite", path=path)
        if parts.scheme in ("postgresql", "postgres"):
            query = parse_qs(parts.query)
            return cls(
                dialect="postgres",
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 5432,
                user=unquote(parts.username or "postgres"),
                password=unquote(parts.password or ""),
                dbname=parts.path.lstrip("/") or "postgres",
                schema=query.get("schema", ["public"])[0],
            )
        raise DatabaseUrlError(f"unsupported database URL scheme {parts.scheme!r} in {url!r}")

    def display(self) -> str:
        """The URL with its password masked, as a command names the database it reads."""
        if self.dialect == "sqlite":
            return f"sqlite:///{self.path}"
        secret = ":***" if self.password else ""
        schema = f"?schema={self.schema}" if self.schema != "public" else ""
        return f"postgresql://{self.user}{secret}@{self.host}:{self.port}/{self.dbname}{schema}"

    def connect_args(self) -> ConnectArgs:
        """The keywords that open a PostgreSQL connection to this database (connect_timeout
        in seconds), for a connection of one's own and for the datastore's pool alike."""
        return ConnectArgs(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname,
            connect_timeout=5,
        )

    def conninfo(self) -> str:
        """A libpq connection string for a PostgreSQL connection of one's own (locks, LISTEN)."""
        return make_conninfo(**self.connect_args())

    def lock_key(self, name: str) -> int:
        """A bigint advisory-lock key for `name` in this schema (tests and tenants share a
        database, so the schema is part of it)."""
        digest = hashlib.blake2b(f"{self.schema}.{name}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)


class SessionLock:
    """An exclusive lock by name, held until released or until its holder's process ends.

    PostgreSQL: a session-level advisory lock on a connection of its own (which the holder
    may also use to LISTEN). SQLite: an flock on a file beside the database, kept there
    between runs (SQLite's own locks would stop ingestion, and a lock row would outlive a
    holder that crashed).
    """

    def __init__(self, url: DatabaseUrl, name: str, *, per_schema: bool = True) -> None:
        self.url = url
        self.name = name
        self.key = url.lock_key(name) if per_schema else DatabaseUrl(url.dialect).lock_key(name)
        self.connection: psycopg.Connection[Any] | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this holder has the lock now."""
        return self.connection is not None or self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False when another holder has it."""
        return self._take(wait=False)

    def acquire(self) -> None:
        """Take the lock, waiting for it."""
        self._take(wait=True)

    def release(self) -> None:
        """Let go (closing the session or the descriptor is what releases it)."""
        connection, fd, self.connection, self._fd = self.connection, self._fd, None, None
        if connection is not None:
            connection.close()
        if fd is not None:
            os.close(fd)

    def _take(self, *, wait: bool) -> bool:
        if self.held:
            return True
        with guard():
            return self._flock(wait) if self.url.dialect == "sqlite" else self._advisory(wait)

    def _advisory(self, wait: bool) -> bool:
        connection = psycopg.connect(self.url.conninfo(), autocommit=True)
        try:
            if wait:
                connection.execute("SELECT pg_advisory_lock(%s)", (self.key,))
            else:
                row = connection.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                if not (row and row[0]):
                    connection.close()
                    return False
        except BaseException:
            connection.close()
            raise
        self.connection = connection
        return True

    def _flock(self, wait: bool) -> bool:
        fd = os.open(f"{self.url.path}.{self.name}-lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True


class Database:
    """One datastore shared by the event store and the views, with its SQL dialect."""

    def __init__(self, url: DatabaseUrl) -> None:
        self.url = url
        self.dialect = url.dialect
        if url.dialect == "sqlite":
            Path(url.path).parent.mkdir(parents=True, exist_ok=True)
            self.sqlite = SQLiteDatastore(url.path, originator_id_type="text", lock_timeout=30)
            self.datastore: SQLiteDatastore | PostgresDatastore = self.sqlite
        else:
            probe(url)  # fails fast, naming host:port and the cause, not the pool's timeout
            self.postgres = PostgresDatastore(
                **url.connect_args(),
                # One connection held open; more only while requests need them: several
                # processes share the server's max_connections.
                pool_size=1,
                max_overflow=15,
                schema=url.schema,
                originator_id_type="text",
            )
            self.datastore = self.postgres
            # The reads' own connections: each session waits at most READ_LOCK_TIMEOUT for
            # a lock, so a read is one statement, prepared once per connection (no SET
            # LOCAL beside it), its rows plain tuples. Opened at the first read.
            self.read_pool: ConnectionPool[psycopg.Connection[TupleRow]] = ConnectionPool(
                make_conninfo(**url.connect_args()),
                kwargs={
                    "autocommit": True,
                    "options": f"-c lock_timeout={round(READ_LOCK_TIMEOUT * 1000)}",
                },
                min_size=1,
                max_size=READ_CONNECTIONS,
                max_idle=READ_IDLE_SECONDS,
                timeout=url.connect_args()["connect_timeout"],  # as the store's pool
                open=False,
            )
            # The same sessions for async reads, one set per event loop (see LoopReads).
            self._loop_reads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopReads] = (
                weakref.WeakKeyDictionary()
            )
            self._loop_lock = threading.Lock()

    @property
    def param(self) -> str:
        """The driver's placeholder for one parameter."""
        return "?" if self.dialect == "sqlite" else "%s"

    def table(self, name: str) -> str:
        """A table name qualified by the configured schema (PostgreSQL) or as it is (SQLite)."""
        return name if self.dialect == "sqlite" else f'"{self.url.schema}"."{name}"'

    @contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[Any]:
        """A cursor inside one transaction, committed on success when `commit`."""
        with guard(), self.datastore.transaction(commit=commit) as cursor:
            yield cursor

    def session_lock(self, name: str, *, per_schema: bool = True) -> SessionLock:
        """The one way to take an exclusive lock between processes (see SessionLock)."""
        return SessionLock(self.url, name, per_schema=per_schema)

    @contextmanager
    def schema_lock(self) -> Iterator[None]:
        """Serialise DDL between processes starting together (PostgreSQL raises
        "tuple concurrently updated" when two run CREATE ... IF NOT EXISTS at once)."""
        if self.dialect != "postgres":
            yield
            return
        # Across schemas: CREATE SCHEMA IF NOT EXISTS races with other tenants' too.
        lock = self.session_lock("billing_ledger.schema", per_schema=False)
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def ensure_schema(self) -> None:
        """Create the configured PostgreSQL schema when it is missing."""
        if self.dialect == "postgres" and self.url.schema != "public":
            with guard(), self.postgres.get_connection() as conn:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.url.schema}"')

    @contextmanager
    def read_connection(self) -> Iterator[psycopg.Connection[TupleRow]]:
        """A connection of the read pool (PostgreSQL): autocommit, tuple rows, its lock
        waits bounded by READ_LOCK_TIMEOUT; for statements that only read."""
        with guard():
            self.read_pool.open(wait=False)
            with self.read_pool.connection() as conn:
                yield conn

    def read_connection_async(self) -> AbstractAsyncContextManager[AsyncReadConnection]:
        """`read_connection` for a coroutine (PostgreSQL): one of the running event loop's
        async connections, in the same sessions; awaited on the loop, it takes no thread."""
        loop = asyncio.get_running_loop()
        found = self._loop_reads.get(loop)
        return (found or self._loop_reads_of(loop)).connection()

    def _loop_reads_of(self, loop: asyncio.AbstractEventLoop) -> LoopReads:
        with self._loop_lock:
            for other, reads in list(self._loop_reads.items()):
                if other.is_closed():  # a loop that ended (a test client's): its sessions go
                    reads.close()
                    del self._loop_reads[other]
            found = self._loop_reads.get(loop)
            if found is None:
                connect = self.url.connect_args()
                found = self._loop_reads[loop] = LoopReads(
                    make_conninfo(**connect), float(connect["connect_timeout"])
                )
                weakref.finalize(loop, found.close)  # collected before anyone saw it close
            return found

    def close(self) -> None:
        """Release every connection."""
        if self.dialect == "postgres":
            self.read_pool.close()
            with self._loop_lock:
                for reads in self._loop_reads.values():
                    reads.close()
                self._loop_reads.clear()
        self.datastore.close()


AsyncReadConnection = psycopg.AsyncConnection[TupleRow]


class LoopReads:
    """One event loop's read connections (PostgreSQL): psycopg's async connections, so a
    read at now is awaited on the loop itself, with no hop to a thread and no GIL handed
    between threads (under load that hand-off, not the work, bounded the cold reads).

    Sessions as the read pool's: autocommit, lock waits bounded by READ_LOCK_TIMEOUT, at
    most READ_CONNECTIONS, closed after READ_IDLE_SECONDS idle. An async connection serves
    the loop it was opened on only, hence one set per loop; used from that loop alone."""

    def __init__(self, conninfo: str, timeout: float) -> None:
        self._conninfo = conninfo
        self._timeout = timeout  # to wait for a free connection, as the read pool's
        self._idle: list[tuple[float, AsyncReadConnection]] = []  # (since, connection)
        self._opened: set[AsyncReadConnection] = set()
        self._slots = asyncio.Semaphore(READ_CONNECTIONS)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncReadConnection]:
        """A connection of this loop's, given back idle or closed when it is not."""
        await self._slot()
        try:
            conn = await self._take()
            try:
                yield conn
            except BaseException:  # a failure or a cancel mid-statement: its state is unknown
                self._drop(conn)
                raise
            self._give_back(conn)
        finally:
            self._slots.release()

    async def _slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # free: no wait, no timer
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), self._timeout)
        except TimeoutError:
            raise PoolTimeout(f"no read connection free after {self._timeout} s") from None

    async def _take(self) -> AsyncReadConnection:
        stale = time.monotonic() - READ_IDLE_SECONDS
        while self._idle:
            since, conn = self._idle.pop()
            if since > stale and not conn.closed:
                return conn
            self._drop(conn)
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            options=f"-c lock_timeout={round(READ_LOCK_TIMEOUT * 1000)}",
        )
        self._opened.add(conn)
        return conn

    def _give_back(self, conn: AsyncReadConnection) -> None:
        if conn.closed or conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._drop(conn)
        else:
            self._idle.append((time.monotonic(), conn))

    def _drop(self, conn: AsyncReadConnection) -> None:
        self._opened.discard(conn)
        conn.pgconn.finish()  # what AsyncConnection.close does, without a loop to await on

    def close(self) -> None:
        """Close every connection (from any thread, once the loop no longer reads)."""
        for conn in list(self._opened):
            self._drop(conn)
        self._idle.clear()


# What libpq says (lower case), and the cause an operator reads.
_CAUSES = (
    ("connection refused", "connection refused (is the server running and listening there?)"),
    ("password authentication failed", "authentication failed"),
    ("authentication failed", "authentication failed"),
    ("no password supplied", "authentication failed: no password supplied"),
    ("no pg_hba.conf entry", "authentication failed: no pg_hba.conf entry for this client"),
    ("timeout expired", "no answer within the 5 s connect timeout"),
    ("could not translate host name", "unknown host"),
    ("failed to resolve host", "unknown host"),
    ("name or service not known", "unknown host"),
)


def connect_cause(message: str, url: DatabaseUrl) -> str:
    """The cause of a failed connection in a few words."""
    text = message.lower()
    if "does not exist" in text and "database" in text:
        return f"no such database {url.dbname!r}"
    if "does not exist" in text and "role" in text:
        return f"authentication failed: no such role {url.user!r}"
    for found, cause in _CAUSES:
        if found in text:
            return cause
    return " ".join(message.split())


def probe(url: DatabaseUrl) -> None:
    """Connect once; StorageError naming host:port and the cause when that fails."""
    try:
        psycopg.connect(url.conninfo()).close()
    except psycopg.Error as error:
        raise StorageError(
            f"storage unavailable: PostgreSQL at {url.host}:{url.port} "
            f"(database {url.dbname}, user {url.user}): {connect_cause(str(error), url)}"
        ) from None


class LedgerSQLiteRecorder(SQLiteApplicationRecorder):
    """The library's recorder and table, each insert chained in its own transaction.

    The insert comes first, so the transaction holds SQLite's one write lock (and a current
    snapshot) when the chain head is read."""

    def __init__(self, datastore: SQLiteDatastore, *, events_table_name: str, chain: Chain) -> None:
        self.chain = chain
        super().__init__(datastore, events_table_name=events_table_name)

    def _create_table(self, c: SQLiteCursor) -> None:
        super()._create_table(c)
        self.chain.create(c)

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        if ids:
            self.chain.extend(c, _rows(ids, stored_events))
        return ids


def _rows(ids: Sequence[int], events: Sequence[StoredEvent]) -> list[tuple[int, str, int, bytes]]:
    return [
        (i, str(e.originator_id), e.originator_version, e.state)
        for i, e in zip(ids, events, strict=True)
    ]


class LedgerPostgresRecorder(PostgresApplicationRecorder):
    """The library's recorder and table, a batch appended in one round trip: one call of a
    function of the ledger's own (`append_function`), four binary arrays in, the positions
    out, in one implicit transaction.

    The stock recorder sends one array of a composite type in text format, which escapes
    every byte of every 3 KB body (about 160 us per event in Python), and runs the
    transaction in pipeline mode, which here spent about 1 ms of CPU per transaction
    polling the socket. Here the function takes the appends' lock (commit order = position
    order), sends the library's NOTIFY, inserts, and chains in SQL what it inserted, so the
    lock is held for the server's own work and the commit alone: no round trip to this
    process, no wait for its GIL, while it is held. (Three round trips held it before, eight
    before that.) Bodies are compressed with lz4 where the server has it (pglz cost
    PostgreSQL about twice the CPU of the rest of the insert).

    The appends' lock is a transaction advisory lock of the schema's (APPEND_LOCK) with the
    table in ROW EXCLUSIVE mode, not the library's EXCLUSIVE table lock: EXCLUSIVE conflicts
    with the SHARE UPDATE EXCLUSIVE lock that VACUUM and ANALYZE hold, so every append waited
    behind (auto)vacuum or (auto)analyze of the events table: an autovacuum for
    deadlock_timeout (1 s by default) until the server cancelled it (leaving the table
    unvacuumed and its statistics stale), one against wraparound, which is not cancelled,
    for the whole vacuum. ROW EXCLUSIVE still conflicts with EXCLUSIVE, so an
    append waits for, and is waited for by, a process taking the library's lock (an older
    version during an upgrade, `Chain.upgrade`).
    """

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str, chain: Chain
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.chain = chain
        self._qualified = f'"{datastore.schema}"."{events_table_name}"'
        self._function = f'"{datastore.schema}"."{APPEND_FUNCTION}"'
        self._call = (
            f"SELECT * FROM {self._function}(%b::text[], %b::bigint[], %b::text[], %b::bytea[])"
        )
        self._append_key = DatabaseUrl("postgres", schema=datastore.schema).lock_key(APPEND_LOCK)

    def _create_table(self, curs: Cursor[DictRow]) -> None:
        super()._create_table(curs)
        self.chain.create(curs)
        self._compress_with_lz4(curs)
        self._create_append_function(curs)

    def _compress_with_lz4(self, curs: Cursor[DictRow]) -> None:
        """New bodies compressed with lz4 (PostgreSQL 14+ built with it); kept as they are
        elsewhere. Altered once: a store already set to lz4 takes no lock here."""
        curs.execute(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attname = 'state'",
            (self._qualified,),
        )
        row = curs.fetchone()
        if row is None or row["attcompression"] == "l":
            return
        try:
            with curs.connection.transaction():  # a savepoint: an older server says no
                curs.execute(
                    f"ALTER TABLE {self._qualified} ALTER COLUMN state SET COMPRESSION lz4"
                )
        except psycopg.Error as error:
            log.info("bodies stay compressed by the server's default (no lz4): %s", error)

    def _create_append_function(self, curs: Cursor[DictRow]) -> None:
        """The append function, (re)created only when the server's text of it differs."""
        body = self.append_function(curs.connection)
        curs.execute(
            "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure(%s)",
            (f"{self._function}(text[], bigint[], text[], bytea[])",),
        )
        row = curs.fetchone()
        if row is not None and row["prosrc"] == body:
            return
        curs.execute(
            f"CREATE OR REPLACE FUNCTION {self._function}"
            "(ids text[], versions bigint[], topics text[], states bytea[]) "
            "RETURNS TABLE (stored_position bigint, stored_id text, stored_version bigint) "
            f"LANGUAGE plpgsql AS $ledger${body}$ledger$"
        )

    def append_function(self, conn: psycopg.Connection[Any]) -> str:
        """The body of the append function: the library's lock statements and NOTIFY, the
        insert, then the chain from its head over every event stored after it, as
        Chain.following does: any an older process stored unchained (between the head and
        this call's first position, rare), then this call's own, from the arrays it was
        given. The table is never read by a range open at the top: the planner, with
        statistics that lag a growing table, took `notification_id > head` for a large part
        of it and compiled the statement with JIT, about 3 ms a batch (seen in the soak)."""
        chain, events = self.chain.table, self._qualified
        # The library's statements but its table lock: its lock_timeout bounds these waits.
        locks = "".join(
            f"  {text};\n"
            for text in (_text(q, conn) for q in self.lock_table_statements)
            if not text.startswith("LOCK TABLE")
        )
        locks += (
            f"  PERFORM pg_advisory_xact_lock({self._append_key});\n"
            f"  LOCK TABLE {events} IN ROW EXCLUSIVE MODE;\n"
        )
        link = link_sql(
            "head_hash",
            "stored.notification_id",
            "stored.originator_id",
            "stored.originator_version",
            "stored.state",
        )
        return f"""
DECLARE
  zero CONSTANT bytea := decode('00', 'hex');
  head_position bigint;
  head_hash bytea;
  first_position bigint;
  stored record;
  chained bigint[] := '{{}}';
  hashes bytea[] := '{{}}';
  positions bigint[];
  stored_ids text[];
  stored_versions bigint[];
BEGIN
{locks}  NOTIFY "{self.channel_name}";
  SELECT c.position, c.hash INTO head_position, head_hash
    FROM {chain} c ORDER BY c.position DESC LIMIT 1;
  IF NOT FOUND THEN
    head_position := 0;
    head_hash := decode(repeat('00', 32), 'hex');
  END IF;
  WITH inserted AS (
    INSERT INTO {events} (originator_id, originator_version, topic, state)
    SELECT * FROM unnest(ids, versions, topics, states)
    RETURNING notification_id, originator_id, originator_version)
  SELECT array_agg(i.notification_id), array_agg(i.originator_id),
         array_agg(i.originator_version)
    INTO positions, stored_ids, stored_versions FROM inserted i;
  first_position := (SELECT min(p) FROM unnest(positions) p);
  IF first_position <= head_position THEN
    RAISE EXCEPTION USING ERRCODE = '{CHAIN_AHEAD_STATE}', MESSAGE = format(
      '{CHAIN_AHEAD.format(position="%s", head="%s")}', first_position, head_position);
  END IF;
  IF first_position > head_position + 1 THEN
    FOR stored IN EXECUTE 'SELECT e.notification_id, e.originator_id, '
        'e.originator_version, e.state FROM {events} e '
        'WHERE e.notification_id > $1 AND e.notification_id < $2 ORDER BY e.notification_id'
        USING head_position, first_position
    LOOP
      head_hash := {link};
      chained := chained || stored.notification_id;
      hashes := hashes || head_hash;
    END LOOP;
  END IF;
  FOR stored IN SELECT r.notification_id, r.originator_id, r.originator_version, s.state
      FROM unnest(positions, stored_ids, stored_versions)
        AS r(notification_id, originator_id, originator_version)
      JOIN unnest(ids, versions, states) AS s(originator_id, originator_version, state)
        ON s.originator_id = r.originator_id AND s.originator_version = r.originator_version
      ORDER BY r.notification_id
  LOOP
    head_hash := {link};
    chained := chained || stored.notification_id;
    hashes := hashes || head_hash;
  END LOOP;
  INSERT INTO {chain} (position, hash) SELECT * FROM unnest(chained, hashes);
  RETURN QUERY SELECT * FROM unnest(positions, stored_ids, stored_versions);
END
"""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert and chain in one call holding the appends' lock; IntegrityError when any
        id/version is already stored (nothing of the batch is then)."""
        params = (
            [str(e.originator_id) for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )
        with self.datastore.get_connection() as conn:
            try:
                rows = conn.execute(self._call, params).fetchall()
            except psycopg.Error as error:
                if error.sqlstate == CHAIN_AHEAD_STATE:
                    raise ChainError(error.diag.message_primary or str(error)) from None
                raise
        found = {(r["stored_id"], r["stored_version"]): r["stored_position"] for r in rows}
        return [found[(str(e.originator_id), e.originator_version)] for e in stored_events]


def _text(query: Any, conn: psycopg.Connection[Any]) -> str:
    """One of the library's statements as the text it sends."""
    return query.as_string(conn) if isinstance(query, Composable) else str(query)


class EventStore:
    """Append Stripe events once; read them back in position order."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.chain = Chain(db, TABLE)
        self.recorder: SQLiteApplicationRecorder | PostgresApplicationRecorder
        if db.dialect == "sqlite":
            self.recorder = LedgerSQLiteRecorder(
                db.sqlite, events_table_name=TABLE, chain=self.chain
            )
        else:
            self.recorder = LedgerPostgresRecorder(
                db.postgres, events_table_name=TABLE, chain=self.chain
            )
        p = db.param
        self._versions_sql = (
            f"SELECT {'rowid' if db.dialect == 'sqlite' else 'notification_id'} AS position, "
            f"originator_version, state FROM {db.table(TABLE)} "
            f"WHERE originator_id = {p} ORDER BY originator_version"
        )
        self._read_sql = (
            "SELECT notification_id, originator_id, originator_version, state "
            f"FROM {db.table(TABLE)} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        )

    def create(self) -> None:
        """Create the store's tables (idempotent, safe when several processes start at once)."""
        with self.db.schema_lock():
            self.db.ensure_schema()
            with guard():
                self.recorder.create_table()
            self._upgrade()

    def _upgrade(self) -> None:
        """Chain in place what a ledger stored before the chain holds (once, when opened)."""
        waiting = self.chain.unchained()
        if not waiting:
            return
        from billing_ledger.progress import Progress  # rich, only when there is work

        log.info("chaining %d events stored before the hash chain", waiting)
        with Progress("chain upgrade", waiting) as progress:
            self.chain.upgrade(progress.advance)

    def append(self, events: Sequence[Incoming]) -> list[AppendResult]:
        """Append a batch in one transaction; fall back to one by one when any id is known."""
        if not events:
            return []
        try:
            positions = self._insert(events, version=1)
        except IntegrityError:
            return [self._append_one(event) for event in events]
        return [
            AppendResult(e.event_id, "recorded", p) for e, p in zip(events, positions, strict=True)
        ]

    def _append_one(self, event: Incoming) -> AppendResult:
        try:
            (position,) = self._insert([event], version=1)
        except IntegrityError:
            return self._append_known(event)
        return AppendResult(event.event_id, "recorded", position)

    def _append_known(self, event: Incoming) -> AppendResult:
        """A known id: a duplicate. A different rendering is kept as a further version."""
        for _ in range(10):
            versions = self.versions(event.event_id)
            if not versions:
                continue  # the conflicting writer rolled back: the id is free again
            if any(_same_json(v.body, event.body) for v in versions):
                return AppendResult(event.event_id, "duplicate", versions[0].position)
            try:
                self._insert([event], version=versions[-1].version + 1)
            except IntegrityError:
                continue  # a concurrent alternate took that version: look again
            return AppendResult(event.event_id, "duplicate", versions[0].position)
        raise StorageError(f"could not settle concurrent appends of {event.event_id}")

    def _insert(self, events: Sequence[Incoming], version: int) -> list[int]:
        stored = [StoredEvent(e.event_id, version, e.type, encode_state(e)) for e in events]
        with guard():
            ids = self.recorder.insert_events(stored)
        if ids is None or len(ids) != len(events):
            raise StorageError("the recorder did not return a position for every event")
        return list(ids)

    def versions(self, event_id: str) -> list[Recorded]:
        """Every stored rendering of one event id, the canonical first."""
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(self._versions_sql, (event_id,))
            rows = cursor.fetchall()
        return [
            decode_state(r["position"], event_id, r["originator_version"], r["state"]) for r in rows
        ]

    def get(self, event_id: str) -> Recorded | None:
        """The canonical (first stored) copy of one event, or None."""
        versions = self.versions(event_id)
        return versions[0] if versions else None

    def read(self, after: int, limit: int = 1000) -> list[Recorded]:
        """Up to `limit` stored events with positions greater than `after`, in position order.

        On PostgreSQL the rows come in binary format: the bodies arrive as their bytes, where
        the text format's bytea escaping cost libpq about 11% of a catch-up's instructions to
        undo (PQunescapeBytea)."""
        if self.db.dialect == "postgres":
            with (
                guard(),
                self.db.postgres.get_connection() as conn,
                conn.cursor(binary=True, row_factory=tuple_row) as cursor,
            ):
                cursor.execute(self._read_sql, (after, limit), prepare=True)
                found = cursor.fetchall()
            return [decode_state(p, i, v, s) for p, i, v, s in found]  # ids are text
        with guard():
            rows = self.recorder.select_notifications(
                start=after, limit=limit, inclusive_of_start=False
            )
        return [
            decode_state(n.id, str(n.originator_id), n.originator_version, n.state) for n in rows
        ]

    def head(self) -> int:
        """The greatest position stored, 0 when empty."""
        with guard():
            return self.recorder.max_notification_id() or 0

    def chain_head(self) -> Head:
        """The last chained position and its hash."""
        return self.chain.current_head()

    def count(self) -> int:
        """How many events are stored (every rendering counts)."""
        with self.db.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT COUNT(*) AS n FROM {self.db.table(TABLE)}")
            return int(cursor.fetchone()["n"])


def _same_json(a: bytes, b: bytes) -> bool:
    if a == b:
        return True
    try:
        return bool(orjson.loads(a) == orjson.loads(b))
    except orjson.JSONDecodeError:
        return False


def retrying(attempts: int, action: Callable[[], _T]) -> _T:
    """Run `action`, trying again on StorageError up to `attempts` times."""
    for attempt in range(attempts):
        try:
            return action()
        except StorageError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
