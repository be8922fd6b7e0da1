"""PostgreSQL connections: one small pool per process, safe across fork."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

logger = logging.getLogger(__name__)

psycopg2.extras.register_uuid()
_decode_json = json.JSONDecoder().decode


def _load_jsonb(text: str) -> Any:
    """json.loads of a jsonb value as PostgreSQL writes it."""
    # An empty object (metadata, progress and metrics of most jobs until they run) needs no decoder; the rest
    # go straight to the decoder json.loads itself calls for a str.
    return {} if text == "{}" else _decode_json(text)


# A page of 20 jobs parses 84 jsonb values.
psycopg2.extras.register_default_jsonb(globally=True, loads=_load_jsonb)

T = TypeVar("T")

# Backoff between retries of a write while PostgreSQL is down: a restart takes seconds, a failover longer.
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 5.0

# Errors that mean the database cannot be reached right now, as opposed to a bad query. psycopg2's PoolError is
# not one of them: it is this process running out of connections (see DatabaseBusy), not PostgreSQL being down.
UNAVAILABLE_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)
DEFAULT_POOL_TIMEOUT = 10.0


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL could not be reached."""


class DatabaseBusy(DatabaseUnavailable):
    """Every connection of this process's pool stayed in use for the whole wait; PostgreSQL itself may be fine.

    A subclass so that workers' retries of DatabaseUnavailable also wait out a busy pool; the API reports it
    apart (503 database_busy), never as PostgreSQL being down.
    """

    def __init__(self, pool_size: int, waited: float) -> None:
        super().__init__(f"All {pool_size} database connections of this process stayed in use for {waited:g} s")
        self.pool_size = pool_size
        self.waited = waited


@dataclass
class PoolStats:
    """What a process's pool has done, for /metrics."""

    in_use: int = 0
    waits: int = 0
    """Checkouts that found every connection in use and had to wait."""
    timeouts: int = 0
    """Checkouts that waited the whole pool timeout and got DatabaseBusy."""


class Database:
    """A lazily created connection pool for one database URL, recreated after fork.

    psycopg2's pool refuses at once when every connection is taken; a semaphore in front of it makes a checkout
    wait up to pool_timeout seconds for one to come back instead, and then raise DatabaseBusy.
    """

    def __init__(self, url: str, max_connections: int = 8, connect_timeout: int = 5,
                 pool_timeout: float = DEFAULT_POOL_TIMEOUT) -> None:
        self.url = url
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.pool_timeout = pool_timeout
        self.stats = PoolStats()
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._free: threading.BoundedSemaphore | None = None
        self._pid = os.getpid()
        self._ready: tuple[psycopg2.pool.ThreadedConnectionPool, threading.BoundedSemaphore, int] | None = None
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()

    def _get_pool(self) -> tuple[psycopg2.pool.ThreadedConnectionPool, threading.BoundedSemaphore]:
        """Return this process's pool and its free-connection count, creating them on first use or after a fork."""
        # Every checkout asks; once the pool exists, one read of an attribute (set and cleared as a whole)
        # answers without taking the lock that all of the process's threads would queue on.
        ready = self._ready
        if ready is not None and ready[2] == os.getpid():
            return ready[0], ready[1]
        with self._lock:
            if self._pool is not None and self._pid != os.getpid():
                # A forked child must never use the parent's sockets; drop them without closing.
                self._pool = None
                self.stats = PoolStats()
                self._stats_lock = threading.Lock()  # a parent's thread may have held it at fork time.
            if self._pool is None:
                try:
                    self._pool = psycopg2.pool.ThreadedConnectionPool(
                        0, self.max_connections, self.url, connect_timeout=self.connect_timeout,
                        connection_factory=PreparingConnection,
                    )
                    # psycopg2 keeps only `minconn` returned connections and closes the rest, so with 0
                    # every transaction would open a new one (5x slower). Raising it after creation
                    # keeps connections for reuse without opening them all up front.
                    self._pool.minconn = self.max_connections
                except UNAVAILABLE_ERRORS as exc:
                    raise DatabaseUnavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from exc
                self._free = threading.BoundedSemaphore(self.max_connections)
                self._pid = os.getpid()
                self._ready = (self._pool, self._free, self._pid)
            assert self._free is not None
            return self._pool, self._free

    def _count(self, **changes: int) -> None:
        """Add to the pool's counters; += on an attribute is not atomic across threads."""
        with self._stats_lock:
            for name, change in changes.items():
                setattr(self.stats, name, getattr(self.stats, name) + change)

    @contextmanager
    def _connection(self, autocommit: bool, wait: float | None = None) -> Iterator[psycopg2.extensions.connection]:
        """Check a connection out for the block, waiting up to `wait` (default pool_timeout) s for a free one."""
        pool, free = self._get_pool()
        if not free.acquire(blocking=False):
            wait = self.pool_timeout if wait is None else wait
            self._count(waits=1)
            if not free.acquire(timeout=wait):
                self._count(timeouts=1)
                logger.warning("Database pool exhausted: all %s connections stayed in use for %s s.",
                               self.max_connections, wait)
                raise DatabaseBusy(self.max_connections, wait)
        self._count(in_use=1)
        conn = None
        broken = False
        try:
            try:
                conn = pool.getconn()
            except UNAVAILABLE_ERRORS as exc:
                raise DatabaseUnavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from exc
            except psycopg2.pool.PoolError as exc:
                # Only "pool is closed": reset() ran meanwhile. The semaphore rules out "exhausted".
                raise DatabaseBusy(self.max_connections, 0) from exc
            conn.autocommit = autocommit
            yield conn
        except UNAVAILABLE_ERRORS as exc:
            broken = True
            raise DatabaseUnavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from exc
        finally:
            if conn is not None:
                broken = broken or bool(conn.closed)
                if not broken and autocommit:
                    conn.autocommit = False
                try:
                    pool.putconn(conn, close=broken)
                except psycopg2.pool.PoolError:
                    conn.close()  # The pool was reset while the connection was out.
            self._count(in_use=-1)
            free.release()

    @contextmanager
    def transaction(self, wait: float | None = None) -> Iterator[psycopg2.extensions.cursor]:
        """Yield a dict cursor inside one transaction: committed on success, rolled back on error.

        `wait` bounds the wait for a free connection (default pool_timeout); then DatabaseBusy.
        """
        with self._connection(autocommit=False, wait=wait) as conn:
            with conn:
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    yield cur

    @contextmanager
    def read(self, wait: float | None = None) -> Iterator[psycopg2.extensions.cursor]:
        """Yield a dict cursor for reads where each statement is its own transaction (autocommit).

        A single SELECT sees the same as in transaction() and saves the BEGIN and COMMIT round trips.
        `wait` bounds the wait for a free connection (default pool_timeout).
        """
        with self._connection(autocommit=True, wait=wait) as conn:
            with conn.cursor(cursor_factory=DictRowCursor) as cur:
                yield cur

    def reset(self) -> None:
        """Forget the pool; the next transaction opens fresh connections."""
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.closeall()
            self._ready = None
            self._pool = None
            self._free = None
            self._pid = os.getpid()

    def ping(self, wait: float | None = None) -> None:
        """Raise DatabaseUnavailable unless PostgreSQL answers; DatabaseBusy if no connection frees within `wait` s."""
        with self._connection(autocommit=True, wait=wait) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")


class DictRowCursor(psycopg2.extensions.cursor):
    """Rows as plain dicts by column name, as RealDictCursor gives them, at half its cost on a page of jobs.

    RealDictCursor fills each row value by value through a Python __setitem__; zipping the names with the
    tuples the C cursor returns does the same work in one call per row.
    """

    def _names(self) -> list[str]:
        return [column.name for column in self.description]

    def fetchone(self) -> dict[str, Any] | None:
        """The next row as a dict, or None."""
        row = super().fetchone()
        return None if row is None else dict(zip(self._names(), row, strict=True))

    def fetchone_with_names(self) -> tuple[list[str], tuple[Any, ...] | None]:
        """The column names and the next row as a tuple (or None), for results whose names repeat."""
        return self._names(), super().fetchone()

    def fetchall_with_names(self) -> tuple[list[str], list[tuple[Any, ...]]]:
        """The column names and the remaining rows as tuples, for results whose names repeat."""
        return self._names(), super().fetchall()

    def fetchall(self) -> list[dict[str, Any]]:
        """The remaining rows as dicts."""
        names = self._names()
        return [dict(zip(names, row, strict=True)) for row in super().fetchall()]

    def fetchmany(self, size: int | None = None) -> list[dict[str, Any]]:
        """Up to size more rows as dicts."""
        names = self._names()
        rows = super().fetchmany(size) if size is not None else super().fetchmany()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = self._names()
        for row in super().__iter__():
            yield dict(zip(names, row, strict=True))


class PreparingConnection(psycopg2.extensions.connection):
    """A connection that remembers which statements it has prepared on its server session."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: set[str] = set()


def execute_prepared(cur: psycopg2.extensions.cursor, statement: str, params: Sequence[Any] = ()) -> None:
    """Run a statement written with $1, $2... as a server-side prepared statement of the cursor's connection.

    PostgreSQL then parses and plans it once per connection instead of on every call, which for the job
    queries is most of their cost. Only on a read() cursor: outside a transaction a failed PREPARE spoils
    nothing. (Behind PgBouncer in transaction mode this needs its max_prepared_statements.)
    """
    conn = cur.connection
    if not isinstance(conn, PreparingConnection) or not conn.autocommit:
        raise TypeError("execute_prepared needs a cursor of Database.read()")
    name = "clara_" + hashlib.blake2b(statement.encode(), digest_size=8).hexdigest()
    execute = f"EXECUTE {name}" + (f" ({', '.join(['%s'] * len(params))})" if params else "")
    for attempt in range(2):
        if name not in conn.prepared:
            try:
                cur.execute(f"PREPARE {name} AS {statement}")
            except psycopg2.errors.DuplicatePreparedStatement:
                pass  # Prepared by someone who did not note it; use it.
            conn.prepared.add(name)
        try:
            cur.execute(execute, params)
            return
        except (psycopg2.errors.InvalidSqlStatementName, psycopg2.errors.FeatureNotSupported) as exc:
            # Gone (DISCARD ALL), or its result type changed under a migration: prepare it afresh, once.
            conn.prepared.discard(name)
            if isinstance(exc, psycopg2.errors.FeatureNotSupported):
                cur.execute(f"DEALLOCATE {name}")
            if attempt:
                raise


def retry_unavailable(operation: Callable[[], T], *, give_up_after: float, what: str) -> T:
    """Run operation, retrying with backoff while PostgreSQL is unavailable, for at most give_up_after seconds.

    Only for writes that are safe to repeat: a retry after a lost commit reply runs the write again.
    """
    deadline = time.monotonic() + give_up_after
    delay = RETRY_FIRST_DELAY
    while True:
        try:
            return operation()
        except DatabaseUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                logger.error("Giving up on %s after %.0f seconds: %s", what, give_up_after, exc)
                raise
            logger.warning("Could not %s (%s); trying again in %.1f seconds.", what, exc, min(delay, left))
            time.sleep(min(delay, left))
            delay = min(delay * 2, RETRY_MAX_DELAY)


def _first_line(exc: BaseException) -> str:
    """The first line of a driver error, which carries the useful part."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
