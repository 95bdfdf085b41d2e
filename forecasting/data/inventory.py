"""What the database holds, per ticker: the ``forecasting prices`` listing.

A module of its own, with no pandas or numpy, so that ``forecasting prices`` answers without
loading them (they take a second or more to import); :mod:`forecasting.data.prices` re-exports
it. On a SQLite file, :func:`inventory` reads with the standard library's ``sqlite3`` and
imports no SQLAlchemy either: importing it alone costs ~0.25 s, half of the 0.5 s in which the
command should answer. The query is one SQL text that both drivers run.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from forecasting.errors import MISSING_DATABASE_FIX, DatabaseError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

#: The columns of :func:`inventory`'s rows, in order.
INVENTORY_COLUMNS = (
    "ticker",
    "kind",
    "first_date",
    "last_date",
    "rows",
    "name",
    "board",
    "industry",
    "list_date",
    "delist_date",
)
_DATES = ("first_date", "last_date", "list_date", "delist_date")

#: Per ticker with prices: its ``securities`` row (kind and reference data) and its span.
INVENTORY_SQL = """
SELECT p.ticker, s.kind, MIN(p.trade_date), MAX(p.trade_date), COUNT(*),
       s.name, s.board, s.industry, s.list_date, s.delist_date
FROM prices p LEFT JOIN securities s ON s.ticker = p.ticker
GROUP BY p.ticker, s.kind, s.name, s.board, s.industry, s.list_date, s.delist_date
ORDER BY p.ticker
"""


class PriceSummaryRow(NamedTuple):
    """One line of the ``prices`` command: what is stored for a ticker."""

    ticker: str
    kind: str | None
    first_date: dt.date
    last_date: dt.date
    rows: int


def price_summary(conn: Connection) -> list[PriceSummaryRow]:
    """Per ticker: kind (from ``securities``), first and last stored date, row count (the
    first columns of :data:`INVENTORY_SQL`)."""
    from sqlalchemy import text

    rows = _records(tuple(r) for r in conn.execute(text(INVENTORY_SQL)))
    return [PriceSummaryRow(*(r[c] for c in PriceSummaryRow._fields)) for r in rows]


def inventory(database_url: str) -> list[dict[str, Any]]:
    """What ``forecasting prices`` lists: one dict per ticker with :data:`INVENTORY_COLUMNS`.

    Reads only: a missing database is a :class:`DatabaseError` that says how to make one, and
    nothing is created. A SQLite file named by a plain ``sqlite:///PATH`` URL is read through
    ``sqlite3``; any other URL through SQLAlchemy (:func:`forecasting.data.db.open_existing`).
    """
    path = _sqlite_file(database_url)
    if path is None:
        from sqlalchemy import text

        from forecasting.data.db import open_existing

        engine = open_existing(database_url)
        try:
            with engine.connect() as conn:
                rows = [tuple(r) for r in conn.execute(text(INVENTORY_SQL))]
        finally:
            engine.dispose()
    else:
        rows = _read_sqlite(path, database_url)
    return _records(rows)


def _records(rows: Iterable[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """:data:`INVENTORY_SQL` rows as dicts, with dates as ``datetime.date``."""
    out = []
    for row in rows:
        record = dict(zip(INVENTORY_COLUMNS, row, strict=True))
        for name in _DATES:  # ISO text from sqlite3, dates from the drivers SQLAlchemy uses
            if isinstance(record[name], str):
                record[name] = dt.date.fromisoformat(record[name])
        record["rows"] = int(record["rows"])
        out.append(record)
    return out


def _sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL with no driver or query options, else ``None``."""
    match = re.fullmatch(r"sqlite:///([^?]+)", url.strip())
    if match is None or match[1] == ":memory:":
        return None
    return Path(match[1])


def _read_sqlite(path: Path, url: str) -> list[tuple[Any, ...]]:
    import sqlite3

    missing = f"no forecasting database at {url} yet"
    if not path.exists():
        raise DatabaseError(f"{missing}; {MISSING_DATABASE_FIX}")
    try:
        # mode=rw opens the file as it is and never creates one (nor does a read here write).
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open the database {url}: {exc}") from None
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"prices", "securities"} <= tables:
            raise DatabaseError(f"{missing} (it has no tables); {MISSING_DATABASE_FIX}")
        return conn.execute(INVENTORY_SQL).fetchall()
    except sqlite3.DatabaseError as exc:  # not a database file, or locked past the timeout
        raise DatabaseError(f"cannot read the database {url}: {exc}") from None
    finally:
        conn.close()
