"""The database behind one small interface: an SQLAlchemy engine for SQLite or Postgres."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, event, inspect
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from forecasting.data import schema
from forecasting.errors import MISSING_DATABASE_FIX
from forecasting.errors import DatabaseError as DatabaseError
from forecasting.settings import SettingsError

SQLITE_BUSY_TIMEOUT_MS = 30_000

_URL_FIX = "set FORECASTING_DATABASE_URL to sqlite:///path.db or postgresql://user@host/db"


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        parsed.get_dialect()  # an unknown dialect fails here, not at the first query
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        # A URL that does not parse may still hold a password: never show what follows "user:".
        shown = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
        raise SettingsError(f"database URL {shown!r} is not usable ({exc}); {_URL_FIX}") from None
    return parsed


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with the settings this project relies on.

    SQLite gets WAL, foreign keys and a busy timeout so that a backfill and the daily run can
    share one file; ``postgresql://`` URLs use psycopg 3.

    Raises:
        SettingsError: when ``url`` is not a URL SQLAlchemy knows.
    """
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        engine = create_engine(parsed, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if parsed.database not in (None, "", ":memory:"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def init_db(engine: Engine) -> None:
    """Create the schema; idempotent.

    Raises:
        DatabaseError: when the database cannot be opened (a SQLite file in a folder that does
            not exist, a server that is down or refuses the user).
    """
    try:
        schema.create_all(engine)
    except OperationalError as exc:
        raise _cannot_open(engine, exc) from exc


def _cannot_open(engine: Engine, exc: OperationalError) -> DatabaseError:
    why = " ".join(str(exc.orig).split())  # psycopg's messages span lines
    database = engine.url.database
    if engine.url.get_backend_name() == "sqlite" and database not in (None, "", ":memory:"):
        fix = f"check that the folder {Path(database).parent.resolve()} exists and is writable"
    else:
        fix = "check FORECASTING_DATABASE_URL and that the server is running"
    return DatabaseError(f"cannot open the database {redacted_url(engine)}: {why}; {fix}")


def open_existing(url: str) -> Engine:
    """An engine on a database that already holds the schema, for commands that only read:
    unlike :func:`init_db` it creates nothing (no SQLite file, no table).

    Raises:
        DatabaseError: when there is no such database or it has no schema yet, saying to run
            ``forecasting init-db`` (or an ingest), or when it cannot be reached.
    """
    engine = make_engine(url)
    database = engine.url.database
    missing = f"no forecasting database at {redacted_url(engine)} yet"
    fix = MISSING_DATABASE_FIX
    on_file = engine.url.get_backend_name() == "sqlite" and database not in (None, "", ":memory:")
    if on_file and not Path(str(database)).exists():
        raise DatabaseError(f"{missing}; {fix}")
    try:
        with engine.connect() as conn:
            present = inspect(conn).has_table(schema.prices.name)
    except OperationalError as exc:
        raise _cannot_open(engine, exc) from exc
    if not present:
        raise DatabaseError(f"{missing} (it has no tables); {fix}")
    return engine


def redacted_url(engine_or_url: Engine | str) -> str:
    """The database URL with any password hidden, for logs and messages."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.render_as_string(hide_password=True)


def copy_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    types: Sequence[str] | None = None,
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table`` on Postgres with ``COPY``,
    in the caller's transaction: psycopg's ``executemany`` costs a protocol round per row.

    With ``types`` (Postgres type names, one per column) the rows go in binary, each float as
    its 8 bytes; without, as text, which psycopg writes as each value's literal (a float as its
    shortest exact repr)."""
    prep = conn.dialect.identifier_preparer
    names = ", ".join(prep.quote(c) for c in columns)
    binary = " (FORMAT BINARY)" if types is not None else ""
    statement = f"COPY {prep.format_table(table)} ({names}) FROM STDIN{binary}"
    raw = conn.connection.driver_connection
    assert raw is not None  # an open connection in the caller's transaction
    with raw.cursor() as cur, cur.copy(statement) as cp:
        if types is not None:
            cp.set_types(list(types))
        for row in rows:
            cp.write_row(row)
