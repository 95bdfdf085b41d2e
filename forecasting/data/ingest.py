"""Ingest: fetch bars from a price source, validate them, upsert them into ``prices``.

The ingest is incremental and idempotent:

* each ticker is fetched from its last stored date + 1 to ``end`` (a ticker with no history from
  ``history_start``); an explicit ``start`` re-requests ``start..end`` and compares, or, for a
  ticker whose stored history begins later, backfills only the missing earlier range;
* incoming rows are compared with the stored rows in bulk (one query per ticker, compared in
  numpy with a float tolerance): new rows are inserted, changed rows updated, unchanged rows
  counted and left alone, so running it twice changes nothing;
* bad rows (NaN or non-positive close, high below low, conflicting duplicate dates, bars on a day
  the exchange is certainly closed) go to ``rejected_rows`` with a sentence saying why; the clean
  rows of the same batch still land;
* one ticker's batch (prices, rejected rows, securities row) commits in one transaction, and a
  ticker whose source fails is recorded while the others land. The ``ingest_runs`` row is written
  first (status ``running``) and completed at the end: ``success``, ``partial`` or ``failed``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from forecasting.data.calendar import DEFAULT_EXCHANGE, TradingCalendar, load_trade_cal
from forecasting.data.schema import ingest_runs, prices, rejected_rows, securities
from forecasting.data.sources.base import BAR_COLUMNS, PriceSource, Security, SourceError

log = logging.getLogger(__name__)

VALUE_COLUMNS: tuple[str, ...] = BAR_COLUMNS[2:]  # a bar's values, after ticker and trade_date

# Prices are stored as 8-byte floats on both backends, so a value read back equals the value
# written; any difference beyond rounding noise is a real correction from the source.
RTOL = 1e-9
ATOL = 1e-12

DEFAULT_HISTORY_START = dt.date(2015, 1, 1)

# Forecasts need the sessions *after* the last bar, and tushare publishes the coming year's
# trade_cal in advance, so the calendar is requested this far past ``end``.
CALENDAR_AHEAD = dt.timedelta(days=366)

_MAX_ERROR_CHARS = 4000


@dataclass
class TickerReport:
    """What the ingest did for one ticker."""

    ticker: str
    ranges: list[tuple[dt.date, dt.date]] = field(default_factory=list)  # requested from source
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    error: str | None = None

    def line(self) -> str:
        spans = ", ".join(f"{a}..{b}" for a, b in self.ranges) or "up to date"
        if self.error:
            return f"{self.ticker}: FAILED ({spans}): {self.error}"
        return (
            f"{self.ticker}: {spans}: fetched {self.fetched}, inserted {self.inserted}, "
            f"updated {self.updated}, unchanged {self.unchanged}, rejected {self.rejected}"
        )


@dataclass
class IngestReport:
    """The outcome of one :func:`ingest` call, as also recorded in ``ingest_runs``."""

    run_id: str
    source: str
    started_at: dt.datetime
    status: str = "running"
    finished_at: dt.datetime | None = None
    tickers: dict[str, TickerReport] = field(default_factory=dict)
    calendar_inserted: int = 0
    calendar_updated: int = 0
    calendar_error: str | None = None
    run_error: str | None = None  # the run itself broke off (a crash or an interrupt)

    @property
    def inserted(self) -> int:
        return sum(t.inserted for t in self.tickers.values())

    @property
    def updated(self) -> int:
        return sum(t.updated for t in self.tickers.values())

    @property
    def unchanged(self) -> int:
        return sum(t.unchanged for t in self.tickers.values())

    @property
    def rejected(self) -> int:
        return sum(t.rejected for t in self.tickers.values())

    @property
    def errors(self) -> dict[str, str]:
        """Error text per failed ticker (``"calendar"`` for a failed calendar fetch)."""
        out = {t: r.error for t, r in self.tickers.items() if r.error}
        if self.calendar_error:
            out["calendar"] = self.calendar_error
        if self.run_error:
            out["run"] = self.run_error
        return out

    @property
    def error_text(self) -> str | None:
        if not self.errors:
            return None
        text = "\n".join(f"{k}: {v}" for k, v in self.errors.items())
        return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."

    def summary(self) -> str:
        """A few human lines: status, totals, and each failure."""
        took = ""
        if self.finished_at is not None:
            took = f" in {(self.finished_at - self.started_at).total_seconds():.1f} s"
        failed = sum(1 for t in self.tickers.values() if t.error)
        lines = [
            f"ingest {self.run_id} from {self.source}: {self.status}{took}; "
            f"{len(self.tickers)} tickers ({failed} failed): {self.inserted} inserted, "
            f"{self.updated} updated, {self.unchanged} unchanged, {self.rejected} rejected; "
            f"calendar {self.calendar_inserted} inserted, {self.calendar_updated} updated"
        ]
        lines.extend(f"  {k}: {v}" for k, v in self.errors.items())
        return "\n".join(lines)


# -- validation (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """One row the ingest refused, with the values the source sent and the reason."""

    ticker: str
    trade_date: dt.date | None
    raw: dict[str, Any]
    reason: str


def validate_bars(
    bars: pd.DataFrame, ticker: str, calendar: TradingCalendar | None = None
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Split a source's bars into clean rows (one per date, oldest first) and rejections.

    Rejected: a missing date; bars for another ticker; NaN, zero or negative close; high below
    low; every copy of a date whose copies disagree (exact copies collapse to one); a date that
    is a weekend or closed per the calendar's database rows. Fallback calendars only guess, so a
    weekday they call closed is not grounds for refusing a real bar.
    """
    missing = set(BAR_COLUMNS) - set(bars.columns)
    if missing:
        raise SourceError(
            f"{ticker}: the source returned bars without columns {sorted(missing)}; "
            "a source must return forecasting.data.sources.base.BAR_COLUMNS"
        )
    if bars.empty:
        return _empty_clean(), []
    raw = bars.loc[:, list(BAR_COLUMNS)].reset_index(drop=True)
    frame = raw.copy()
    frame["trade_date"] = _as_dates(frame["trade_date"])
    for col in VALUE_COLUMNS:
        if frame[col].dtype != "float64":  # the protocol promises floats; coerce the rest
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")

    # Reasons only for flagged rows: most batches are clean, and this runs once per ticker.
    reasons: dict[int, list[str]] = {}

    def flag(mask: np.ndarray, make: Any) -> None:
        for i in np.flatnonzero(mask):
            reasons.setdefault(int(i), []).append(make(int(i)))

    no_date = frame["trade_date"].isna().to_numpy()
    dates: list[dt.date | None] = frame["trade_date"].tolist()
    if no_date.any():
        dates = [None if missing else d for d, missing in zip(dates, no_date, strict=True)]
    flag(no_date, lambda i: "the row has no trade_date")
    other = (frame["ticker"].astype("object") != ticker).to_numpy()
    flag(other, lambda i: f"the source returned it for ticker {frame['ticker'].iat[i]!r}")

    # Duplicates: exact copies collapse to one; a date whose copies disagree loses every
    # version, since nothing says which one is right.
    key_cols = ["trade_date", *VALUE_COLUMNS]
    exact_dup = frame.duplicated(subset=key_cols, keep="first").to_numpy()
    distinct = frame.loc[~exact_dup & ~no_date, "trade_date"]
    versions: dict[Any, int] = distinct.value_counts().to_dict()
    conflict_dates = {d for d, n in versions.items() if n > 1}
    conflict = (
        np.array([d in conflict_dates for d in dates], dtype=bool)
        if conflict_dates
        else np.zeros(len(frame), dtype=bool)
    )
    flag(
        conflict,
        lambda i: f"the source sent {versions[dates[i]]} different rows for this date",
    )

    close = frame["close"].to_numpy()
    flag(np.isnan(close), lambda i: "close is missing (NaN)")
    flag(~np.isnan(close) & (close <= 0), lambda i: f"close is {close[i]:g}, not a positive price")
    high, low = frame["high"].to_numpy(), frame["low"].to_numpy()
    flag(high < low, lambda i: f"high {high[i]:g} is below low {low[i]:g}")

    has_date = ~no_date
    if has_date.any():
        cal = calendar or TradingCalendar(use_xshg=False)
        closed = np.zeros(len(frame), dtype=bool)
        closed[has_date] = cal.known_closed_mask([d for d in dates if d is not None])
        flag(closed, lambda i: _closed_reason(cal, dates[i]))

    bad = np.zeros(len(frame), dtype=bool)
    bad[list(reasons)] = True
    # Exact copies of a bad row are recorded once, like exact copies of a good one are stored once.
    rejections = [
        Rejection(
            ticker=ticker,
            trade_date=dates[i],
            raw=_raw_json(raw.iloc[i]),
            reason=_sentence(ticker, dates[i], reasons[i]),
        )
        for i in np.flatnonzero(bad & ~exact_dup).tolist()
    ]
    clean = frame[~bad & ~exact_dup].sort_values("trade_date", ignore_index=True)
    clean["ticker"] = ticker
    return clean, rejections


def _closed_reason(cal: TradingCalendar, d: dt.date | None) -> str:
    assert d is not None  # only dated rows are checked against the calendar
    if d.weekday() >= 5:
        return f"{d:%A} {d} is a weekend and the exchange does not trade"
    return f"the {cal.exchange} trading calendar in the database marks {d} as closed"


def _sentence(ticker: str, d: dt.date | None, reasons: list[str]) -> str:
    when = f"on {d}" if d is not None else "with no date"
    return (
        f"{ticker} {when}: rejected because {'; and '.join(reasons)}. The row was not stored; "
        f"correct it at the source and re-ingest {ticker}"
        + (f" with start={d}." if d is not None else ".")
    )


def _raw_json(row: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dt.date | pd.Timestamp):
            out[str(k)] = v.isoformat()
        elif isinstance(v, float | np.floating):
            out[str(k)] = None if math.isnan(v) else float(v)
        elif isinstance(v, np.integer):
            out[str(k)] = int(v)
        elif v is None or (not isinstance(v, str) and pd.isna(v)):
            out[str(k)] = None
        else:
            out[str(k)] = v if isinstance(v, str | int | bool) else str(v)
    return out


def _as_dates(col: pd.Series) -> pd.Series:
    """``datetime.date`` objects (None where missing) from whatever the source sent."""
    values = col.astype("object")
    if all(type(v) is dt.date for v in values.tolist()):  # what the protocol promises
        return values
    as_str = values.map(lambda v: v if isinstance(v, str) else None)
    if as_str.notna().all() and as_str.str.fullmatch(r"\d{8}").all():
        parsed = pd.to_datetime(as_str, format="%Y%m%d", errors="coerce")
    else:
        parsed = pd.to_datetime(values, errors="coerce")
    return pd.Series(
        [None if pd.isna(t) else t.date() for t in parsed], index=col.index, dtype="object"
    )


def _empty_clean() -> pd.DataFrame:
    return pd.DataFrame(
        {
            c: pd.Series(dtype="object" if c in ("ticker", "trade_date") else "float64")
            for c in BAR_COLUMNS
        }
    )


# -- planning ----------------------------------------------------------------------------------


def plan_ranges(
    stored: tuple[dt.date, dt.date] | None,
    *,
    start: dt.date | None,
    end: dt.date,
    history_start: dt.date,
) -> list[tuple[dt.date, dt.date]]:
    """The date ranges to ask the source for, given a ticker's stored ``(first, last)`` dates.

    No history: ``start or history_start .. end``. With history and no explicit ``start``: the
    days after the last stored one. With an explicit ``start`` inside the stored history: all of
    ``start..end`` again (compared row by row, so only real corrections are written). With a
    ``start`` before the stored history: only the missing earlier days, plus the new days.
    """
    one = dt.timedelta(days=1)
    if stored is None:
        ranges = [(start or history_start, end)]
    else:
        first, last = stored
        if start is None:
            ranges = [(last + one, end)]
        elif start >= first:
            ranges = [(start, end)]
        else:
            ranges = [(start, min(first - one, end)), (last + one, end)]
    return [(a, b) for a, b in ranges if a <= b]


# -- the ingest --------------------------------------------------------------------------------


def ingest(
    engine: Engine,
    source: PriceSource,
    *,
    tickers: Sequence[str] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    history_start: dt.date | str = DEFAULT_HISTORY_START,
    calendar: TradingCalendar | None = None,
    progress: bool | None = None,
    exchange: str = DEFAULT_EXCHANGE,
) -> IngestReport:
    """Fetch, validate and upsert bars for ``tickers`` (default: the source's universe).

    ``end`` defaults to today. ``calendar`` overrides the calendar used to reject bars on closed
    days (default: the database calendar after this run's calendar ingest, plus weekends).
    ``progress`` shows a tqdm bar (default: when stderr is a terminal and ``TQDM_DISABLE`` is
    unset); otherwise each ticker is logged. Returns the report also written to ``ingest_runs``.
    """
    end = end or dt.date.today()
    if isinstance(history_start, str):
        history_start = dt.date.fromisoformat(history_start)
    names = _unique(
        t.strip().upper() for t in (tickers if tickers is not None else source.tickers())
    )
    if start is not None and start > end:
        raise ValueError(f"ingest start {start} is after end {end}; swap them or drop start")
    report = IngestReport(run_id=str(uuid.uuid4()), source=source.name, started_at=_now())
    with engine.begin() as conn:
        conn.execute(
            insert(ingest_runs).values(
                run_id=report.run_id,
                started_at=report.started_at,
                source=source.name,
                tickers=json.dumps(names),
                status="running",
            )
        )
    try:
        _run(engine, source, report, names, start, end, history_start, calendar, progress, exchange)
    except BaseException as exc:
        # Even a crash or Ctrl-C leaves an honest run row behind, never one stuck at "running".
        report.status = "failed"
        report.run_error = f"aborted: {type(exc).__name__}: {exc}"
        _finish(engine, report)
        raise
    report.status = _status(report)
    _finish(engine, report)
    log.info("%s", report.summary())
    return report


def _run(
    engine: Engine,
    source: PriceSource,
    report: IngestReport,
    names: list[str],
    start: dt.date | None,
    end: dt.date,
    history_start: dt.date,
    calendar: TradingCalendar | None,
    progress: bool | None,
    exchange: str,
) -> None:
    with engine.connect() as conn:
        stored = _stored_spans(conn, names)
    plans = {
        t: plan_ranges(stored.get(t), start=start, end=end, history_start=history_start)
        for t in names
    }
    starts = [a for ranges in plans.values() for a, _ in ranges]
    cal_start = min([*starts, end])

    try:
        cal_frame = source.trading_calendar(cal_start, end + CALENDAR_AHEAD)
        if cal_frame is not None and not cal_frame.empty:
            report.calendar_inserted, report.calendar_updated = load_trade_cal(
                engine, cal_frame, exchange, source=source.name
            )
    except SourceError as exc:
        report.calendar_error = str(exc)
        log.error("ingest %s: trading calendar: %s", report.run_id, exc)
    if calendar is None:
        calendar = TradingCalendar.load(engine, exchange, cal_start, end + CALENDAR_AHEAD)

    ingested_at = _now()
    bar = _progress_bar(names, progress)
    for ticker in bar:
        tr = TickerReport(ticker)
        report.tickers[ticker] = tr
        # A range of weekends and database holidays can hold no valid bar: don't ask.
        tr.ranges = [(a, b) for a, b in plans[ticker] if calendar.may_trade_between(a, b)]
        if tr.ranges:
            try:
                _ingest_ticker(engine, source, tr, calendar, report.run_id, ingested_at)
            except Exception as exc:  # one ticker's failure must not lose the others
                tr.error = (
                    str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
                )
                tr.inserted = tr.updated = tr.unchanged = tr.rejected = 0
                log.error(
                    "ingest %s: %s",
                    report.run_id,
                    tr.error,
                    exc_info=not isinstance(exc, SourceError),
                )
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(ticker)
        else:
            log.info("ingest %s", tr.line())


def _ingest_ticker(
    engine: Engine,
    source: PriceSource,
    tr: TickerReport,
    calendar: TradingCalendar,
    run_id: str,
    ingested_at: dt.datetime,
) -> None:
    # Network first, outside any transaction: a slow source must not hold database locks.
    parts = [source.fetch_bars(tr.ticker, a, b) for a, b in tr.ranges]
    parts = [p for p in parts if p is not None and not p.empty]
    bars = pd.concat(parts, ignore_index=True) if parts else _empty_clean()
    tr.fetched = len(bars)
    security = source.security(tr.ticker)
    clean, rejections = validate_bars(bars, tr.ticker, calendar)
    with engine.begin() as conn:
        _upsert_security(conn, security)
        tr.inserted, tr.updated, tr.unchanged = upsert_prices(
            conn, tr.ticker, clean, source=source.name, ingested_at=ingested_at
        )
        if rejections:
            conn.execute(
                insert(rejected_rows),
                [
                    {
                        "run_id": run_id,
                        "ticker": r.ticker,
                        "trade_date": r.trade_date,
                        "raw": json.dumps(r.raw, sort_keys=True),
                        "reason": r.reason,
                    }
                    for r in rejections
                ],
            )
    tr.rejected = len(rejections)


def upsert_prices(
    conn: Connection,
    ticker: str,
    clean: pd.DataFrame,
    *,
    source: str,
    ingested_at: dt.datetime,
) -> tuple[int, int, int]:
    """Write validated bars (one per date) for ``ticker``; returns (inserted, updated, unchanged).

    Stored rows for the batch's date range are read in one query and compared in numpy; rows
    within :data:`RTOL` of what is stored are not written at all. The caller owns the
    transaction.
    """
    if clean.empty:
        return 0, 0, 0
    lo, hi = clean["trade_date"].iloc[0], clean["trade_date"].iloc[-1]
    c = prices.c
    rows = conn.execute(
        select(c.trade_date, *(c[k] for k in VALUE_COLUMNS)).where(
            and_(c.ticker == ticker, c.trade_date >= lo, c.trade_date <= hi)
        )
    ).all()
    pos = np.full(len(clean), -1)
    if rows:
        # Plain columns, not a DataFrame of Row objects: building one costs more than the query.
        stored_dates, *stored_values = zip(*rows, strict=True)
        stored = np.array(stored_values, dtype="float64").T  # [n_stored, 7]; NULL -> NaN
        pos = pd.Index(stored_dates).get_indexer(clean["trade_date"].tolist())
    is_new = pos < 0
    same = np.zeros(len(clean), dtype=bool)
    if rows and (~is_new).any():
        old = stored[pos[~is_new]]  # [n_matched, 7]
        new = clean[list(VALUE_COLUMNS)].to_numpy(dtype="float64")[~is_new]  # [n_matched, 7]
        same[~is_new] = np.isclose(new, old, rtol=RTOL, atol=ATOL, equal_nan=True).all(axis=1)
    changed = ~is_new & ~same

    inserts = clean[is_new]
    if not inserts.empty:
        _bulk_insert(conn, ticker, inserts, source, ingested_at)
    if changed.any():
        params = _records(clean.loc[changed, ["trade_date", *VALUE_COLUMNS]])
        for p in params:
            p["b_date"] = p.pop("trade_date")
            p["source"] = source
            p["ingested_at"] = ingested_at
        conn.execute(
            update(prices)
            .where(and_(c.ticker == ticker, c.trade_date == bindparam("b_date")))
            .values({k: bindparam(k) for k in (*VALUE_COLUMNS, "source", "ingested_at")}),
            params,
        )
    return int(is_new.sum()), int(changed.sum()), int(same.sum())


def _bulk_insert(
    conn: Connection, ticker: str, rows: pd.DataFrame, source: str, ingested_at: dt.datetime
) -> None:
    """Insert rows known to be new, below SQLAlchemy's per-row parameter handling.

    Building a parameter dict per row and running it through the compiled statement costs more
    than the database's own work, so tuples go straight to the driver inside the caller's
    transaction: ``COPY`` on Postgres, ``executemany`` on SQLite.
    """
    columns = ["ticker", "trade_date", *VALUE_COLUMNS, "source", "ingested_at"]
    floats = [_nullable(rows[c].to_numpy(dtype="float64")) for c in VALUE_COLUMNS]
    n = len(rows)
    prep = conn.dialect.identifier_preparer
    table = prep.format_table(prices)
    names = ", ".join(prep.quote(c) for c in columns)
    if conn.dialect.name == "postgresql":
        # The rows were just found missing in this transaction; a concurrent writer inserting
        # the same key makes this ticker fail with a unique violation (and the run say so).
        dates = rows["trade_date"].tolist()
        tuples = zip([ticker] * n, dates, *floats, [source] * n, [ingested_at] * n, strict=True)
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as cp:  # type: ignore[union-attr]
            for row in tuples:
                cp.write_row(row)
        return
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
    tuples = zip([ticker] * n, dates, *floats, [source] * n, [stamp] * n, strict=True)
    marks = ", ".join("?" for _ in columns)
    conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(tuples))


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


def _upsert_security(conn: Connection, sec: Security) -> None:
    values = {"name": sec.name, "kind": sec.kind or "stock", "exchange": sec.exchange}
    row = conn.execute(
        select(securities.c.name, securities.c.kind, securities.c.exchange).where(
            securities.c.ticker == sec.ticker
        )
    ).first()
    if row is None:
        conn.execute(insert(securities).values(ticker=sec.ticker, **values))
    elif tuple(row) != (values["name"], values["kind"], values["exchange"]):
        # A source without reference data (None name) must not erase a name another source gave.
        merged = {k: v for k, v in values.items() if v is not None}
        conn.execute(update(securities).where(securities.c.ticker == sec.ticker).values(**merged))


def _stored_spans(conn: Connection, tickers: list[str]) -> dict[str, tuple[dt.date, dt.date]]:
    if not tickers:
        return {}
    c = prices.c
    rows = conn.execute(
        select(c.ticker, func.min(c.trade_date), func.max(c.trade_date))
        .where(c.ticker.in_(tickers))
        .group_by(c.ticker)
    ).all()
    return {t: (lo, hi) for t, lo, hi in rows}


def _status(report: IngestReport) -> str:
    failed = sum(1 for t in report.tickers.values() if t.error)
    if report.tickers and failed == len(report.tickers):
        return "failed"
    if failed or report.calendar_error:
        return "failed" if not report.tickers else "partial"
    return "success"


def _finish(engine: Engine, report: IngestReport) -> None:
    report.finished_at = _now()
    with engine.begin() as conn:
        conn.execute(
            update(ingest_runs)
            .where(ingest_runs.c.run_id == report.run_id)
            .values(
                finished_at=report.finished_at,
                rows_inserted=report.inserted,
                rows_updated=report.updated,
                rows_unchanged=report.unchanged,
                rows_rejected=report.rejected,
                status=report.status,
                error=report.error_text,
            )
        )


def _progress_bar(names: list[str], progress: bool | None) -> Iterable[str]:
    if progress is None:
        progress = sys.stderr.isatty() and "TQDM_DISABLE" not in os.environ
    if not progress:
        return names
    from tqdm import tqdm

    return tqdm(names, desc="ingest", unit="ticker", file=sys.stderr)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
