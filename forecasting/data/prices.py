"""The ``prices`` table: validated bars written in, closes read back point in time.

:func:`upsert_prices` compares a batch with the stored rows in one query and writes only what is
new or really changed, so writing the same bars twice changes nothing; a blank never replaces a
stored value, and every change is recorded in ``revisions``. :func:`load_closes` never reads a row after ``through``: the cutoff is in the SQL, so nothing a
model or a scaler sees can come from the future of its as-of date. Split adjustment is computed
at read time from ``adj_factor`` (forward-adjusted as of ``through``), never stored, because a
forward-adjusted history changes every time a new split arrives.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import (
    ARRAY,
    String,
    and_,
    bindparam,
    func,
    insert,
    select,
    type_coerce,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from forecasting.data.db import copy_rows
from forecasting.data.inventory import PriceSummaryRow as PriceSummaryRow
from forecasting.data.inventory import price_summary as price_summary
from forecasting.data.price_limits import NO_LIMIT_DAYS
from forecasting.data.schema import prices, revisions
from forecasting.data.sources.base import VALUE_COLUMNS
from forecasting.data.validation import Stored, as_days


def load_closes(
    conn: Connection,
    *,
    tickers: Sequence[str] | None = None,
    through: dt.date | None = None,
    start: dt.date | None = None,
) -> dict[str, pd.Series]:
    """Closing prices per ticker with ``start <= trade_date <= through``, oldest first.

    Each value is a float Series indexed by ``datetime.date``. Where ``adj_factor`` is stored,
    the series is ``close * adj_factor / adj_factor_last``: split-free, and equal to the raw
    close on the last day read (qfq as of ``through``), so the last price is a real price.
    Rows with a NULL ``adj_factor`` next to rows with one take the nearest known factor
    (earlier, else later). Tickers without rows in the window are absent from the result.
    One query for all tickers, then a split on ticker boundaries.
    """
    frames = _load(conn, ("close",), tickers=tickers, through=through, start=start)
    return {t: f["close"].rename(t) for t, f in frames.items()}


def load_bars(
    conn: Connection,
    *,
    tickers: Sequence[str] | None = None,
    through: dt.date | None = None,
    start: dt.date | None = None,
) -> dict[str, pd.DataFrame]:
    """Like :func:`load_closes`, but each ticker's bars: a frame with ``close``, ``high``,
    ``low`` (forward-adjusted like the close) and ``vol`` (the volume, in shares of the last
    day's split basis), NaN where the source gave none. The model reads the high/low range
    and the volume change from them (:mod:`forecasting.model.features`)."""
    return _load(
        conn, ("close", "high", "low", "volume"), tickers=tickers, through=through, start=start
    )


def _load(
    conn: Connection,
    columns: Sequence[str],
    *,
    tickers: Sequence[str] | None,
    through: dt.date | None,
    start: dt.date | None,
) -> dict[str, pd.DataFrame]:
    """``columns`` of ``prices`` per ticker, forward-adjusted (see :func:`load_closes`): prices
    times ``adj_factor / adj_factor_last``, ``volume`` (returned as ``vol``) divided by it."""
    c = prices.c
    # SQLite stores dates as ISO text; parsing them in one vectorized numpy call is ~10x faster
    # than SQLAlchemy's per-row Date processing, which dominated the daily run's reads.
    raw_dates = conn.dialect.name == "sqlite"
    date_col = type_coerce(c.trade_date, String) if raw_dates else c.trade_date
    query = select(c.ticker, date_col, c.adj_factor, *(c[name] for name in columns))
    conditions: list[ColumnElement[bool]] = []
    if tickers is not None:
        if not tickers:
            return {}
        conditions.append(c.ticker.in_(sorted(set(tickers))))
    if through is not None:
        conditions.append(c.trade_date <= through)
    if start is not None:
        conditions.append(c.trade_date >= start)
    if conditions:
        query = query.where(and_(*conditions))
    rows = conn.execute(query.order_by(c.ticker, c.trade_date)).all()
    if not rows:
        return {}
    names, date_values, factor, *values = zip(*rows, strict=True)
    dates: Any = (
        np.asarray(date_values, dtype="datetime64[D]").astype(object) if raw_dates else date_values
    )
    arrays = [
        np.asarray([np.nan if v is None else v for v in col], dtype="float64") for col in values
    ]
    factor_arr = np.asarray([np.nan if f is None else f for f in factor], dtype="float64")  # [N]
    name_arr = np.asarray(names, dtype=object)
    # Rows arrive sorted by ticker: each ticker is one contiguous slice.
    cuts = np.flatnonzero(name_arr[1:] != name_arr[:-1]) + 1
    bounds = zip(np.r_[0, cuts], np.r_[cuts, len(rows)], strict=True)
    out: dict[str, pd.DataFrame] = {}
    for lo, hi in bounds:
        ticker = str(name_arr[lo])
        rel = _qfq(np.ones(hi - lo), factor_arr[lo:hi])  # [T] factor / last factor
        frame = {
            ("vol" if name == "volume" else name): (
                a[lo:hi] / rel if name == "volume" else a[lo:hi] * rel
            )
            for name, a in zip(columns, arrays, strict=True)
        }
        out[ticker] = pd.DataFrame(frame, index=pd.Index(list(dates[lo:hi]), dtype="object"))
    return out


def _qfq(close: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Forward-adjust ``close`` [T] by ``factor`` [T] so the last value is the last raw close."""
    known = ~np.isnan(factor)
    if not known.any():
        return close
    if not known.all():
        factor = pd.Series(factor).ffill().bfill().to_numpy()
    adjusted: np.ndarray = close * (factor / factor[-1])  # [T] * [T] -> [T]
    return adjusted


def last_price_dates(conn: Connection) -> dict[str, dt.date]:
    """The last stored trade date of every ticker."""
    c = prices.c
    rows = conn.execute(select(c.ticker, func.max(c.trade_date)).group_by(c.ticker)).all()
    return {t: d for t, d in rows}


# -- writing -----------------------------------------------------------------------------------

# Prices are stored as 8-byte floats on both backends, so a value read back equals the value
# written; any difference beyond rounding noise is a real correction from the source.
RTOL = 1e-9
ATOL = 1e-12
#: New rows go to the driver this many at a time, so a million-row file needs no million tuples.
INSERT_CHUNK = 20_000


class StoredRows(NamedTuple):
    """A ticker's stored bars from a few before ``lo`` through ``hi``, oldest first."""

    dates: list[dt.date]
    values: np.ndarray  # [n, len(VALUE_COLUMNS)] float64, NULL as NaN
    n_before: int  # stored bars before ``dates[0]``: 0, or at least NO_LIMIT_DAYS

    def context(self) -> Stored:
        """What the plausibility check needs: dates, closes and factors."""
        close = VALUE_COLUMNS.index("close")
        factor = VALUE_COLUMNS.index("adj_factor")
        bars = pd.DataFrame(
            {
                "trade_date": pd.Series(self.dates, dtype=object),
                "close": self.values[:, close] if len(self.dates) else np.empty(0),
                "adj_factor": self.values[:, factor] if len(self.dates) else np.empty(0),
            }
        )
        return Stored(bars, self.n_before)


def read_stored(conn: Connection, ticker: str, lo: dt.date, hi: dt.date) -> StoredRows:
    """The stored bars of ``ticker`` in ``lo..hi``, and the few before ``lo`` that the
    plausibility check compares the first of them with (listing days included)."""
    c = prices.c
    cols = (c.trade_date, *(c[k] for k in VALUE_COLUMNS))
    before = conn.execute(
        select(*cols)
        .where(and_(c.ticker == ticker, c.trade_date < lo))
        .order_by(c.trade_date.desc())
        .limit(NO_LIMIT_DAYS + 1)
    ).all()
    n_before = 0
    if len(before) > NO_LIMIT_DAYS:  # there is history before these: bar numbers are >= 2
        before, n_before = before[:NO_LIMIT_DAYS], NO_LIMIT_DAYS
    inside = conn.execute(
        select(*cols)
        .where(and_(c.ticker == ticker, c.trade_date >= lo, c.trade_date <= hi))
        .order_by(c.trade_date)
    ).all()
    rows = [*reversed(before), *inside]
    if not rows:
        return StoredRows([], np.empty((0, len(VALUE_COLUMNS))), 0)
    # Plain columns, not a DataFrame of Row objects: building one costs more than the query.
    dates, *values = zip(*rows, strict=True)
    return StoredRows(list(dates), np.array(values, dtype="float64").T, n_before)


class Upserted(NamedTuple):
    inserted: int
    updated: int
    unchanged: int
    revisions: int


def upsert_prices(
    conn: Connection,
    ticker: str,
    clean: pd.DataFrame,
    *,
    source: str,
    ingested_at: dt.datetime,
    run_id: str,
    stored: StoredRows | None = None,
) -> Upserted:
    """Write validated bars (one per date) for ``ticker``; never overwrite good with worse.

    New dates are inserted. For a stored date, a blank (NaN) incoming value keeps the stored
    one; values within :data:`RTOL` of what is stored count as unchanged and are not written
    at all; every other change is applied and recorded in ``revisions`` (column, old value,
    new value, ``run_id``). ``stored`` (from :func:`read_stored`) saves reading them again.
    The caller owns the transaction. :func:`upsert_day` is the same for many tickers at once.
    """
    if clean.empty:
        return Upserted(0, 0, 0, 0)
    if stored is None:
        lo, hi = clean["trade_date"].iloc[0], clean["trade_date"].iloc[-1]
        stored = read_stored(conn, ticker, lo, hi)
    day = StoredDay(
        np.full(len(stored.dates), ticker, dtype=object), as_days(stored.dates), stored.values
    )
    rows = clean.assign(ticker=ticker) if "ticker" not in clean.columns else clean
    done = upsert_day(conn, rows, stored=day, source=source, ingested_at=ingested_at, run_id=run_id)
    return done.get(ticker, Upserted(0, 0, 0, 0))


class StoredDay(NamedTuple):
    """Stored bars of many tickers: ``tickers`` [M] (object), ``days`` [M] (datetime64[D]),
    ``values`` [M, len(VALUE_COLUMNS)] float64 with NULL as NaN; one row per (ticker, day)."""

    tickers: np.ndarray
    days: np.ndarray
    values: np.ndarray


#: IN lists are sent this many tickers at a time (far below SQLite's 32,766 parameters).
_IN_CHUNK = 2000


def read_stored_day(
    conn: Connection, tickers: Sequence[str], lo: dt.date, hi: dt.date
) -> StoredDay:
    """The stored bars of ``tickers`` in ``lo..hi``, and each one's last bar before ``lo`` (the
    previous close that the plausibility check compares the first new bar with): per 2,000
    tickers one range query, and one index seek per ticker for its previous bar."""
    c = prices.c
    sqlite = conn.dialect.name == "sqlite"
    # SQLite stores dates as ISO text: parsed in one numpy call (see load_closes).
    date_col = type_coerce(c.trade_date, String) if sqlite else c.trade_date
    cols = (c.ticker, date_col, *(c[k] for k in VALUE_COLUMNS))
    names = sorted(set(tickers))
    rows: list[Any] = []
    for i in range(0, len(names), _IN_CHUNK):
        chunk = names[i : i + _IN_CHUNK]
        rows.extend(
            conn.execute(
                select(*cols).where(
                    and_(c.ticker.in_(chunk), c.trade_date >= lo, c.trade_date <= hi)
                )
            ).all()
        )
        wanted, ticker = _wanted(conn, chunk)
        q = prices.alias("q").c
        previous = (
            select(func.max(q.trade_date))
            .where(and_(q.ticker == ticker, q.trade_date < lo))
            .scalar_subquery()
        )
        rows.extend(
            conn.execute(
                select(*cols).select_from(
                    wanted.join(prices, and_(c.ticker == ticker, c.trade_date == previous))
                )
            ).all()
        )
    if not rows:
        return StoredDay(
            np.empty(0, dtype=object),
            np.empty(0, dtype="datetime64[D]"),
            np.empty((0, len(VALUE_COLUMNS))),
        )
    ticker, day, *vals = zip(*rows, strict=True)
    days = np.asarray(day, dtype="datetime64[D]") if sqlite else as_days(list(day))
    return StoredDay(np.asarray(ticker, dtype=object), days, np.array(vals, dtype="float64").T)


def _wanted(conn: Connection, tickers: Sequence[str]) -> tuple[Any, Any]:
    """``tickers`` as a one-column table ``wanted`` (and that column) to drive an index seek
    per ticker, bound as one parameter: a JSON array on SQLite (``json_each``), an array on
    Postgres (``unnest``). A VALUES list of 2,000 rows took SQLAlchemy ~0.3 s to compile."""
    if conn.dialect.name == "postgresql":
        arr = bindparam("wanted_tickers", list(tickers), type_=ARRAY(String))
        table = func.unnest(arr).table_valued("ticker").render_derived(name="wanted")
        return table, table.c.ticker
    table = func.json_each(json.dumps(list(tickers))).table_valued("value").alias("wanted")
    return table, table.c.value


#: (ticker, day) as one integer: ticker number times this, plus the day number shifted to >= 0.
_KEY_SHIFT = 1 << 21
_DAY_OFFSET = 1 << 20


def upsert_day(
    conn: Connection,
    clean: pd.DataFrame,
    *,
    stored: StoredDay,
    source: str,
    ingested_at: dt.datetime,
    run_id: str,
) -> dict[str, Upserted]:
    """:func:`upsert_prices` for the validated bars of many tickers at once (``clean`` holds
    ``ticker, trade_date`` and the values, one row per ticker and date), compared with
    ``stored`` (from :func:`read_stored_day`, or any superset of the stored rows of those
    dates): one insert, one update and one revisions insert for all of them. Returns the
    counts per ticker."""
    if clean.empty:
        return {}
    names = clean["ticker"].to_numpy(dtype=object)  # [n]
    dates = clean["trade_date"].tolist()
    day = as_days(dates)  # [n]
    pos = np.full(len(clean), -1)
    if len(stored.tickers):
        codes, _ = pd.factorize(np.concatenate([stored.tickers, names]))  # [M + n]
        ordinal = np.concatenate([stored.days, day]).astype("int64") + _DAY_OFFSET
        keys = codes.astype("int64") * _KEY_SHIFT + ordinal  # [M + n]
        m = len(stored.tickers)
        pos = pd.Index(keys[:m]).get_indexer(keys[m:])
    is_new = pos < 0
    incoming = clean[list(VALUE_COLUMNS)].to_numpy(dtype="float64", copy=True)  # [n, 7]
    same = np.zeros(len(clean), dtype=bool)
    revised: list[dict[str, Any]] = []
    revised_rows = np.empty(0, dtype=np.int64)
    if (~is_new).any():
        matched = np.flatnonzero(~is_new)  # [n_matched] rows of clean
        old = stored.values[pos[matched]]  # [n_matched, 7]
        new = incoming[matched]  # [n_matched, 7]
        new = np.where(np.isnan(new), old, new)  # a blank never replaces a stored value
        close = np.isclose(new, old, rtol=RTOL, atol=ATOL, equal_nan=True)  # [n_matched, 7]
        same[matched] = close.all(axis=1)
        incoming[matched] = new
        at, col = np.nonzero(~close)
        revised_rows = matched[at]
        for i, j, r in zip(at.tolist(), col.tolist(), revised_rows.tolist(), strict=True):
            revised.append(
                {
                    "run_id": run_id,
                    "ticker": names[r],
                    "trade_date": dates[r],
                    "column_name": VALUE_COLUMNS[j],
                    "old_value": None if np.isnan(old[i, j]) else float(old[i, j]),
                    "new_value": float(new[i, j]),
                    "source": source,
                    "revised_at": ingested_at,
                }
            )
    changed = ~is_new & ~same

    if is_new.any():
        inserts = clean.loc[is_new]
        new_names = names[is_new].tolist()
        for lo_row in range(0, len(inserts), INSERT_CHUNK):  # bounded memory for big batches
            _bulk_insert(
                conn,
                new_names[lo_row : lo_row + INSERT_CHUNK],
                inserts.iloc[lo_row : lo_row + INSERT_CHUNK],
                source,
                ingested_at,
            )
    if changed.any():
        merged = pd.DataFrame(incoming[changed], columns=list(VALUE_COLUMNS))
        params = _records(merged)
        for p, t, d in zip(
            params, names[changed].tolist(), clean["trade_date"].to_numpy()[changed], strict=True
        ):
            p["b_ticker"], p["b_date"] = t, d
            p["source"] = source
            p["ingested_at"] = ingested_at
        c = prices.c
        conn.execute(
            update(prices)
            .where(and_(c.ticker == bindparam("b_ticker"), c.trade_date == bindparam("b_date")))
            .values({k: bindparam(k) for k in (*VALUE_COLUMNS, "source", "ingested_at")}),
            params,
        )
        conn.execute(insert(revisions), revised)
    codes, tickers = pd.factorize(names)  # [n]
    k = len(tickers)

    def count(mask: np.ndarray) -> list[int]:
        out: list[int] = np.bincount(codes[mask], minlength=k).tolist()
        return out

    n_revised = np.bincount(codes[revised_rows], minlength=k).tolist()
    return {
        str(t): Upserted(i, u, s, r)
        for t, i, u, s, r in zip(
            tickers, count(is_new), count(changed), count(same), n_revised, strict=True
        )
    }


def _bulk_insert(
    conn: Connection,
    tickers: list[str],
    rows: pd.DataFrame,
    source: str,
    ingested_at: dt.datetime,
) -> None:
    """Insert rows known to be new (``tickers[i]`` is row i's ticker), below SQLAlchemy's
    per-row parameter handling.

    Building a parameter dict per row and running it through the compiled statement costs more
    than the database's own work, so tuples go straight to the driver inside the caller's
    transaction: ``COPY`` on Postgres, ``executemany`` on SQLite.
    """
    columns = ["ticker", "trade_date", *VALUE_COLUMNS, "source", "ingested_at"]
    floats = [_nullable(rows[c].to_numpy(dtype="float64")) for c in VALUE_COLUMNS]
    n = len(rows)
    if conn.dialect.name == "postgresql":
        # The rows were just found missing in this transaction; a concurrent writer inserting
        # the same key makes this ticker fail with a unique violation (and the run say so).
        dates = rows["trade_date"].tolist()
        tuples = zip(tickers, dates, *floats, [source] * n, [ingested_at] * n, strict=True)
        # Binary COPY: each float goes as its 8 bytes, not printed and parsed back (exact,
        # and ~6x cheaper to encode than COPY's text rows).
        copy_rows(conn, prices, columns, tuples, types=_COPY_TYPES)
        return
    prep = conn.dialect.identifier_preparer
    table = prep.format_table(prices)
    names = ", ".join(prep.quote(c) for c in columns)
    # Bind values exactly as SQLAlchemy would store them, so reads through it see no difference.
    dialect = conn.dialect
    to_date = prices.c.trade_date.type.dialect_impl(dialect).bind_processor(dialect) or _same
    to_stamp = prices.c.ingested_at.type.dialect_impl(dialect).bind_processor(dialect) or _same
    dates = rows["trade_date"].tolist()
    # SQLite stores a DATE as its ISO string; isoformat() is that, several times faster than
    # the generic processor. Checked on the first row, so another storage format still works.
    if dates and to_date(dates[0]) == dates[0].isoformat():
        dates = [d.isoformat() for d in dates]
    else:
        dates = [to_date(d) for d in dates]
    stamp = to_stamp(ingested_at)
    tuples = zip(tickers, dates, *floats, [source] * n, [stamp] * n, strict=True)
    marks = ", ".join("?" for _ in columns)
    conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(tuples))


#: Postgres types of the COPY columns: ticker, trade_date, the values, source, ingested_at.
_COPY_TYPES = ["varchar", "date", *["float8"] * len(VALUE_COLUMNS), "varchar", "timestamptz"]


def _same(value: Any) -> Any:
    return value


def _nullable(values: np.ndarray) -> list[float | None]:
    """Floats with NaN as None: missing values must land as NULL, not as a NaN float."""
    out: list[float | None] = values.tolist()
    if np.isnan(values).any():
        for i in np.flatnonzero(np.isnan(values)):
            out[i] = None
    return out


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Row dicts with NaN as None (NULL), the way the database must receive missing values."""
    obj = frame.astype("object")
    return obj.where(frame.notna(), None).to_dict("records")  # type: ignore[return-value]


def stored_spans(
    conn: Connection, tickers: list[str], *, through: dt.date | None = None
) -> dict[str, tuple[dt.date, dt.date]]:
    """The first and last stored trade date of each of ``tickers`` that has rows (on or before
    ``through``: a future row stored by an older version must not stop new days coming in).

    Two index seeks per ticker (a correlated ``min`` and ``max``), not a scan of the history:
    a ``GROUP BY`` over 5,000 tickers x 10 years read 12.6M index entries on SQLite.
    """
    if not tickers:
        return {}
    c = prices.c
    out: dict[str, tuple[dt.date, dt.date]] = {}
    names = sorted(set(tickers))
    for i in range(0, len(names), _IN_CHUNK):
        wanted, ticker = _wanted(conn, names[i : i + _IN_CHUNK])
        where: ColumnElement[bool] = c.ticker == ticker
        if through is not None:
            where = and_(where, c.trade_date <= through)
        first = select(func.min(c.trade_date)).where(where).scalar_subquery()
        last = select(func.max(c.trade_date)).where(where).scalar_subquery()
        rows = conn.execute(select(ticker, first, last).select_from(wanted)).all()
        out.update((t, (lo, hi)) for t, lo, hi in rows if lo is not None)
    return out
