"""A lock per lineage, so that two runs of one lineage (a backfill and the scheduled run, or
the same command started twice) never interleave: the second waits until the first is done.

Postgres: a session-level advisory lock, held on a dedicated connection for the whole run. If
that connection drops (a failover, a restart, ``pg_terminate_backend``) the server releases the
lock and a second run may start; so a run checks, in the transaction that publishes it, that
its lock is still held (:func:`verify`), and aborts before publishing when it is not.

SQLite: the database file serializes single writes, not runs (a run is many transactions), so
the lock is a POSIX record lock (``fcntl.lockf``) on one byte of a lock file next to the
database (``forecasting.db-lock``), one byte per lock name. The kernel releases it when the
process dies, so a killed run never leaves it behind. POSIX record locks belong to a process,
not to a file descriptor, so threads of one process also take a process-local lock first.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from forecasting.errors import ForecastingError

log = logging.getLogger(__name__)

#: Byte offsets in the SQLite lock file: a name maps to one of these many bytes (a collision
#: only makes two lineages wait for each other, never lets two runs of one lineage in).
_SQLITE_SLOTS = 1 << 20

_local_locks: dict[tuple[str, int], threading.Lock] = {}
_local_guard = threading.Lock()


class LockLostError(ForecastingError, RuntimeError):
    """The run's lineage lock was released under it (its database connection dropped)."""


@dataclass(frozen=True)
class LockToken:
    """What proves a run still holds its lock; picklable, so a publish task on another worker
    can check it. ``pid`` is the Postgres backend that holds the advisory lock (``None`` on
    SQLite, where the lock lives as long as the process that took it)."""

    name: str
    key: int
    pid: int | None = None


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``."""
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big", signed=True)


def sqlite_lock_path(engine: Engine) -> Path | None:
    """The lock file of a SQLite database file (``None`` for an in-memory database)."""
    database = engine.url.database
    if database in (None, "", ":memory:") or str(database).startswith("file:"):
        return None
    return Path(f"{database}-lock")


@contextmanager
def scope_lock(engine: Engine, name: str) -> Iterator[LockToken]:
    """Hold the lock ``name`` (waiting for it) for the body; yields the token
    :func:`verify` checks."""
    if engine.dialect.name == "postgresql":
        with _pg_lock(engine, name) as token:
            yield token
    else:
        with _sqlite_lock(engine, name) as token:
            yield token


@contextmanager
def _pg_lock(engine: Engine, name: str) -> Iterator[LockToken]:
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    key: int | None = None
    try:
        # The schema is part of the key: two schemas of one database are two databases here.
        schema = conn.execute(text("SELECT current_schema()")).scalar()
        wanted = lock_key(f"{schema}:{name}")
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": wanted})
        key = wanted
        pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        log.debug("acquired lock %s (backend %d)", name, pid)
        yield LockToken(name, key, pid)
    finally:
        try:
            if key is not None:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        except Exception as exc:  # the connection is gone, and the lock with it
            log.warning("lock %s: could not unlock (%s); the server has released it", name, exc)
        finally:
            try:
                conn.close()
            except Exception:  # a dead connection may fail to close; it holds nothing
                log.debug("lock %s: closing its dead connection failed", name)


@contextmanager
def _sqlite_lock(engine: Engine, name: str) -> Iterator[LockToken]:
    path = sqlite_lock_path(engine)
    key = lock_key(name)
    if path is None:  # an in-memory database belongs to one process
        yield LockToken(name, key)
        return
    offset = key % _SQLITE_SLOTS
    with _local_guard:
        local = _local_locks.setdefault((str(path.resolve()), offset), threading.Lock())
    with local:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0, os.SEEK_CUR)  # waits for the holder
            log.debug("acquired lock %s (%s byte %d)", name, path, offset)
            try:
                yield LockToken(name, key)
            finally:
                os.lseek(fd, offset, os.SEEK_SET)
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0, os.SEEK_CUR)
        finally:
            os.close(fd)


def verify(conn: Connection, token: LockToken | None) -> None:
    """Raise :class:`LockLostError` unless the lock behind ``token`` is still held. Call it in
    the transaction that publishes a run: a run whose lock was lost must not publish, since
    another run of its lineage may be under way."""
    if token is None or token.pid is None or conn.dialect.name != "postgresql":
        return
    unsigned = token.key & 0xFFFF_FFFF_FFFF_FFFF
    held = conn.execute(
        text(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = :pid AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1"
        ),
        {"pid": token.pid, "hi": unsigned >> 32, "lo": unsigned & 0xFFFF_FFFF},
    ).first()
    if held is None:
        raise LockLostError(
            f"the lock {token.name!r} was lost while the run held it (its database connection "
            "dropped); nothing was published; rerun the day"
        )
