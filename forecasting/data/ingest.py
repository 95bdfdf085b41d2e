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

This module plans and orchestrates; the checks are :func:`forecasting.data.validation.validate_bars`
and the comparison and writes :func:`forecasting.data.prices.upsert_prices`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine

from forecasting.clock import real_clock, trading_today
from forecasting.data.calendar import DEFAULT_EXCHANGE, TradingCalendar
from forecasting.data.increment import by_date_source
from forecasting.data.prices import stored_spans, upsert_prices
from forecasting.data.provenance import DEMO, check_demo_target, record_source
from forecasting.data.schema import ingest_runs, rejected_rows, securities
from forecasting.data.sources.base import PriceSource, Security, SourceError, empty_bars
from forecasting.data.trade_cal import load_trade_cal
from forecasting.data.validation import validate_bars
from forecasting.errors import InputError

log = logging.getLogger(__name__)

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
    history_start: dt.date = DEFAULT_HISTORY_START,
    calendar: TradingCalendar | None = None,
    progress: bool | None = None,
    exchange: str = DEFAULT_EXCHANGE,
) -> IngestReport:
    """Fetch, validate and upsert bars for ``tickers`` (default: the source's universe).

    ``end`` defaults to today in Shanghai. ``calendar`` overrides the calendar used to reject
    bars on closed days (default: the database calendar after this run's calendar ingest, plus
    weekends).
    ``progress`` shows a tqdm bar (default: when stderr is a terminal and ``TQDM_DISABLE`` is
    unset); otherwise each ticker is logged. Returns the report also written to ``ingest_runs``.
    """
    end = end or trading_today(real_clock())
    names = _unique(
        t.strip().upper() for t in (tickers if tickers is not None else source.tickers())
    )
    if start is not None and start > end:
        raise InputError(f"ingest start {start} is after end {end}; swap them or drop start")
    if source.name == DEMO:
        with engine.connect() as conn:
            check_demo_target(conn)  # never synthetic bars in a real series
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
        stored = stored_spans(conn, names)
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
    # A whole-market source: reference data, and the increment by trade date when cheaper.
    source = by_date_source(engine, source, plans, calendar)

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
    bars = pd.concat(parts, ignore_index=True) if parts else empty_bars()
    tr.fetched = len(bars)
    security = source.security(tr.ticker)
    clean, rejections = validate_bars(bars, tr.ticker, calendar)
    with engine.begin() as conn:
        _upsert_security(conn, security)
        record_source(conn, tr.ticker, source.name)
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


def _upsert_security(conn: Connection, sec: Security) -> None:
    values: dict[str, object] = {
        "name": sec.name,
        "kind": sec.kind or "stock",
        "exchange": sec.exchange,
    }
    if sec.checked_through is not None:  # see forecasting.data.increment
        values["checked_through"] = sec.checked_through
    row = conn.execute(
        select(*(securities.c[k] for k in values)).where(securities.c.ticker == sec.ticker)
    ).first()
    if row is None:
        conn.execute(insert(securities).values(ticker=sec.ticker, **values))
    elif tuple(row) != tuple(values.values()):
        # A source without reference data (None name) must not erase a name another source gave.
        merged = {k: v for k, v in values.items() if v is not None}
        conn.execute(update(securities).where(securities.c.ticker == sec.ticker).values(**merged))


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
