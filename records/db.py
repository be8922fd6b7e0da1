"""PostgreSQL connections: one small pool per process, safe across fork."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

logger = logging.getLogger(__name__)

psycopg2.extras.register_uuid()

T = TypeVar("T")

# Backoff between retries of a write while PostgreSQL is down: a restart takes seconds, a failover longer.
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 5.0

# Errors that mean the database cannot be reached right now, as opposed to a bad query.
UNAVAILABLE_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.pool.PoolError)


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL could not be reached."""


class Database:
    """A lazily created connection pool for one database URL, recreated after fork."""

    def __init__(self, url: str, max_connections: int = 8, connect_timeout: int = 5) -> None:
        self.url = url
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        """Return this process's pool, creating it on first use or after a fork."""
        with self._lock:
            if self._pool is not None and self._pid != os.getpid():
                # A forked child must never use the parent's sockets; drop them without closing.
                self._pool = None
            if self._pool is None:
                try:
                    self._pool = psycopg2.pool.ThreadedConnectionPool(
                        0, self.max_connections, self.url, connect_timeout=self.connect_timeout
                    )
                    # psycopg2 keeps only `minconn` returned connections and closes the rest, so with 0
                    # every transaction would open a new one (5x slower). Raising it after creation
                    # keeps connections for reuse without opening them all up front.
                    self._pool.minconn = self.max_connections
                except UNAVAILABLE_ERRORS as exc:
                    raise DatabaseUnavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from exc
                self._pid = os.getpid()
            return self._pool

    @contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """Yield a dict cursor inside one transaction: committed on success, rolled back on error."""
        pool = self._get_pool()
        try:
            conn = pool.getconn()
        except UNAVAILABLE_ERRORS as exc:
            raise DatabaseUnavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from exc
        broken = False
        try:
            with conn:
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    yield cur
        except UNAVAILABLE_ERRORS as exc:
            broken = True
            raise DatabaseUnavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from exc
        finally:
            pool.putconn(conn, close=broken or bool(conn.closed))

    def reset(self) -> None:
        """Forget the pool; the next transaction opens fresh connections."""
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.closeall()
            self._pool = None
            self._pid = os.getpid()

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless PostgreSQL answers."""
        with self.transaction() as cur:
            cur.execute("SELECT 1")


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
