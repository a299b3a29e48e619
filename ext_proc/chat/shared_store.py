"""What the rate limits (ratelimit.py) and the response cache (cache.py) share about ``shared_store``:
how a Redis connection is opened, and what counts as Redis failing; and, for ``type: memory`` with
``ext_proc.workers`` > 1, where the SQLite files every worker of one ``sidegate up`` shares are, and
how one is opened.

Both bound every call by ``shared_store.timeout`` and treat a failure the same way (count it, then
fall back: count locally, or bypass the cache), so a slow Redis is a failing one; a SQLite file
locked longer than that, or unusable, too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ext_proc.config import SharedStore
from ext_proc.names import BUCKETS_FILE, CACHE_FILE, STATE_FILE, WORKERS_STATE_ENV

__all__ = ["FailureLog", "SharedFile", "in_transaction", "open_sqlite", "prepare_workers_state", "redis_client", "redis_errors",
           "workers_file"]

T = TypeVar("T")


def workers_file(name: str) -> str | None:
    """The file ``name`` in the directory the ext_proc workers of one ``sidegate up`` share (the
    supervisor names it in the environment), or None for an ext_proc process on its own."""
    shared = os.environ.get(WORKERS_STATE_ENV)
    return os.path.join(shared, name) if shared else None


def prepare_workers_state(directory: str | os.PathLike[str]) -> None:
    """Put the workers' shared files in WAL mode before any worker opens them (the supervisor does
    it, once): switching a file to WAL takes an exclusive lock that SQLite does not wait for, so
    workers opening a new file at once got "database is locked" right away, whatever the timeout
    (seen in CI: one worker then counted a request in its own budget). A file already in WAL mode
    opens while another process writes."""
    for name in (BUCKETS_FILE, CACHE_FILE, STATE_FILE):
        db = sqlite3.connect(os.path.join(directory, name))
        try:
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()


def open_sqlite(path: str, timeout_s: float, schema: str) -> sqlite3.Connection:
    """A connection to a SQLite file several processes use at once: autocommit (callers take the
    write lock with ``BEGIN IMMEDIATE``), a lock held by another process waited for at most
    ``timeout_s``, WAL without fsync (budgets and cached answers are not worth a disk flush: a
    crash of the host forgets them, as a process's memory would). Several processes opening one
    new file at once: :func:`prepare_workers_state` first."""
    db = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        db.execute(schema)
    except sqlite3.Error:
        db.close()
        raise
    return db


def redis_client(store: SharedStore) -> Any:
    """An asyncio Redis client for ``store.url`` whose connects and reads time out after ``store.timeout``."""
    import redis.asyncio as aioredis  # only with shared_store.type: redis

    assert store.url is not None
    return aioredis.Redis.from_url(store.url, socket_timeout=store.timeout_s, socket_connect_timeout=store.timeout_s)


def redis_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean Redis is unavailable: its own errors, the socket's, and our call deadline."""
    import redis

    return (redis.RedisError, OSError, asyncio.TimeoutError)


def in_transaction(db: sqlite3.Connection, change: Callable[[sqlite3.Connection], T]) -> T:
    """``change`` under SQLite's write lock (``BEGIN IMMEDIATE``: no read-modify-write race between
    processes), committed, or rolled back when it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        out = change(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return out


class SharedFile:
    """One SQLite file of the workers' shared state (:func:`open_sqlite` with ``schema``), opened on
    first use and again after a failure: the budgets' and the response cache's common part."""

    def __init__(self, path: str | os.PathLike[str], schema: str, *, timeout_s: float, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self.schema = schema
        self.timeout_s = timeout_s
        self._clock = clock
        self._db: sqlite3.Connection | None = None

    def run(self, change: Callable[[sqlite3.Connection, float], T]) -> T:
        """``change(db, now)`` in one write transaction (:func:`in_transaction`), on the wall clock;
        a ``sqlite3.Error`` closes the connection (opened again on the next call) and propagates."""
        try:
            if self._db is None:
                self._db = open_sqlite(self.path, self.timeout_s, self.schema)
            now = self._clock()
            return in_transaction(self._db, lambda db: change(db, now))
        except sqlite3.Error:
            self.close()
            raise

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


class FailureLog:
    """Warnings about a shared store that keeps failing: one line per ``every_s`` seconds, not one
    per request (the failures themselves are counted by the caller)."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._last = 0.0

    def warning(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last > self.every_s:
            self._last = now
            self.logger.warning(msg, *args)
