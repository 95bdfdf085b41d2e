"""Ingest: fetch bars from a price source, validate them, upsert them into ``prices``.

The ingest is incremental and idempotent, and nothing wrong gets in, nothing right gets lost:

* a network source is asked, per ticker, for the days after the last stored one plus the
  ``reread_days`` before it (vendors revise recent bars), a ticker with no history from
  ``history_start``; an explicit ``start`` re-requests ``start..end`` and compares, or, for a
  ticker whose stored history begins later, backfills the missing earlier range. A file source
  (reading it is cheap) is compared whole, every run; rows it holds before ``start`` or after
  ``end`` are left out and counted, with how to load them;
* every row is checked at the boundary (:func:`forecasting.data.validation.validate_bars`):
  dates inside what was asked for and not after today at the exchange, finite, consistent
  values, and a one-day move the exchange allows; a bad row goes to ``rejected_rows`` with its
  raw values and a sentence saying why (once: the same row refused again is not added twice),
  and the clean rows of the same batch still land;
* rows are compared with the stored ones in bulk (:func:`forecasting.data.prices.upsert_prices`):
  new rows are inserted, a blank cell never replaces a stored value, and every changed value
  is applied and recorded in ``revisions``; unchanged rows are left alone, so running it twice
  changes nothing;
* one ticker's batch (prices, revisions, rejected rows, securities row, the run's heartbeat and
  counts so far) commits in one transaction; a ticker whose source fails, returns nothing, or a
  file that cannot be read is recorded while the others land. The ``ingest_runs`` row is written
  first (``running``) and closed at the end: ``success``, ``partial`` or ``failed``;
  ``aborted`` on SIGTERM or SIGINT (with the counts committed so far); a ``running`` row whose
  heartbeat stopped (the process died) is closed as ``abandoned`` by the next ingest. A run
  that passes its ``deadline_s`` stops, keeps what landed, and fails.

This module plans and orchestrates; the checks are :mod:`forecasting.data.validation`, the
comparison and writes :mod:`forecasting.data.prices`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from forecasting.clock import real_clock, trading_today
from forecasting.data.calendar import DEFAULT_EXCHANGE, TradingCalendar
from forecasting.data.increment import DayBatchSource, by_date_source
from forecasting.data.interrupts import Interrupted, Interrupts
from forecasting.data.listings import st_spans
from forecasting.data.prices import (
    StoredDay,
    StoredRows,
    read_stored,
    read_stored_day,
    stored_spans,
    upsert_day,
    upsert_prices,
)
from forecasting.data.provenance import DEMO, check_demo_target, record_source
from forecasting.data.schema import ingest_runs, prices, rejected_rows, securities
from forecasting.data.sources.base import (
    VALUE_COLUMNS,
    PriceSource,
    Security,
    SourceError,
    empty_bars,
)
from forecasting.data.trade_cal import load_trade_cal
from forecasting.data.validation import (
    Checks,
    Rejection,
    as_days,
    screen_day,
    st_mask,
    validate_bars,
)
from forecasting.errors import InputError
from forecasting.settings import IngestSettings

log = logging.getLogger(__name__)

DEFAULT_HISTORY_START = dt.date(2015, 1, 1)

# Forecasts need the sessions *after* the last bar, and tushare publishes the coming year's
# trade_cal in advance, so the calendar is requested this far past ``end``.
CALENDAR_AHEAD = dt.timedelta(days=366)

#: A ``running`` ingest whose heartbeat is older than this belongs to a process that is gone.
DEFAULT_ABANDON_AFTER = dt.timedelta(minutes=30)

_MAX_ERROR_CHARS = 4000
_WHOLE = (dt.date(1900, 1, 1), dt.date(9999, 12, 31))


@dataclass
class TickerReport:
    """What the ingest did for one ticker (or one file that could not be read)."""

    ticker: str
    ranges: list[tuple[dt.date, dt.date]] = field(default_factory=list)  # requested from source
    whole: bool = False  # a file source, compared whole
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejected_before: int = 0  # of ``rejected``: already on record from an earlier run
    revised: int = 0  # values changed (rows in ``revisions``)
    left_before: int = 0  # file rows before ``start``, not loaded
    left_after: int = 0  # file rows after ``end``, not loaded
    first_left: dt.date | None = None
    last_left: dt.date | None = None
    note: str | None = None
    error: str | None = None

    def line(self) -> str:
        spans = (
            "whole file"
            if self.whole
            else ", ".join(f"{a}..{b}" for a, b in self.ranges) or "up to date"
        )
        if self.error:
            return f"{self.ticker}: FAILED ({spans}): {self.error}"
        text = (
            f"{self.ticker}: {spans}: fetched {self.fetched}, inserted {self.inserted}, "
            f"updated {self.updated}, unchanged {self.unchanged}, rejected {self.rejected}"
        )
        if self.rejected_before:
            text += f" ({self.rejected_before} already on record)"
        if self.revised:
            text += f"; {self.revised} values revised"
        if self.left_before:
            text += (
                f"; {self.left_before} rows before start left out "
                f"(load them with --start {self.first_left})"
            )
        if self.left_after:
            text += (
                f"; {self.left_after} rows after end left out "
                f"(load them with --end {self.last_left})"
            )
        return text + (f"; {self.note}" if self.note else "")


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
    run_error: str | None = None  # the run itself broke off (a crash, an interrupt, a deadline)
    abandoned: list[str] = field(default_factory=list)  # earlier runs this one closed

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
    def left_out(self) -> int:
        return sum(t.left_before + t.left_after for t in self.tickers.values())

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
        """A few human lines: totals, each failure, and last the status and what to do."""
        took = ""
        if self.finished_at is not None:
            took = f" in {(self.finished_at - self.started_at).total_seconds():.1f} s"
        failed = sum(1 for t in self.tickers.values() if t.error)
        left = f", {self.left_out} left out" if self.left_out else ""
        lines = [
            f"ingest {self.run_id} from {self.source}{took}; "
            f"{len(self.tickers)} tickers ({failed} failed): {self.inserted} inserted, "
            f"{self.updated} updated, {self.unchanged} unchanged, {self.rejected} rejected"
            f"{left}; calendar {self.calendar_inserted} inserted, {self.calendar_updated} updated"
        ]
        lines.extend(f"  closed abandoned run {r}" for r in self.abandoned)
        lines.extend(f"  {k}: {v}" for k, v in self.errors.items())
        lines.extend(
            f"  {t.line()}"
            for t in self.tickers.values()
            if not t.error and (t.note or t.left_before or t.left_after)
        )
        lines.append(self.verdict())
        return "\n".join(lines)

    def verdict(self) -> str:
        """The last line: the status, and for anything but success what to do."""
        if self.status == "success":
            return f"ingest {self.status}"
        if self.status == "aborted":
            return f"ingest aborted: {self.run_error}; rerun the same command to resume"
        failed = [t for t, r in self.tickers.items() if r.error]
        which = f" ({', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''})" if failed else ""
        return (
            f"ingest {self.status}: {len(failed)} of {len(self.tickers)} failed{which}; "
            "fix what the lines above name and rerun (what landed stays)"
        )


# -- settings ----------------------------------------------------------------------------------


def ingest_options(settings: IngestSettings) -> dict[str, Any]:
    """The keyword arguments of :func:`ingest` that the ``[ingest]`` settings give."""
    return {
        "reread_days": settings.reread_days,
        "max_move": settings.max_move,
        "deadline_s": settings.deadline_s,
        "abandon_after": dt.timedelta(seconds=settings.abandon_after_s),
    }


def source_options(
    name: str, settings: IngestSettings, *, encoding: str | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``make_source(name, ...)`` that the settings (and, for files,
    ``--encoding``) give: the tushare client's timeout, retries, backoff and URL."""
    key = name.strip().lower()
    if key == "tushare":
        return {
            "timeout": settings.tushare_timeout,
            "retries": settings.tushare_retries,
            "backoff": settings.tushare_backoff,
            "http_url": settings.tushare_url,
            "calls_per_minute": settings.tushare_calls_per_minute,
        }
    if key == "csv" and encoding:
        return {"encoding": encoding}
    return {}


# -- planning ----------------------------------------------------------------------------------


def plan_ranges(
    stored: tuple[dt.date, dt.date] | None,
    *,
    start: dt.date | None,
    end: dt.date,
    history_start: dt.date,
    reread_days: int = 0,
) -> list[tuple[dt.date, dt.date]]:
    """The date ranges to ask the source for, given a ticker's stored ``(first, last)`` dates.

    No history: ``start or history_start .. end``. With history and no explicit ``start``: the
    days after the last stored one, and the ``reread_days`` calendar days up to it (vendors
    revise recent bars). With an explicit ``start`` inside the stored history: all of
    ``start..end`` again (compared row by row, so only real corrections are written). With a
    ``start`` before the stored history: the missing earlier days, plus the days after it.
    """
    one = dt.timedelta(days=1)
    if stored is None:
        ranges = [(start or history_start, end)]
    else:
        first, last = stored
        recent = max(first, last + one - dt.timedelta(days=reread_days))
        if start is None:
            ranges = [(recent, end)]
        elif start >= first:
            ranges = [(min(start, recent), end)]
        else:
            ranges = [(start, min(first - one, end)), (recent, end)]
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
    today: dt.date | None = None,
    reread_days: int = 0,
    max_move: float = 1.0,
    deadline_s: float | None = None,
    abandon_after: dt.timedelta = DEFAULT_ABANDON_AFTER,
    whole_day: bool = True,
) -> IngestReport:
    """Fetch, validate and upsert bars for ``tickers`` (default: the source's universe).

    ``today`` (default: today in Shanghai) is the last date a bar may carry; ``end`` defaults to
    it. ``reread_days`` calendar days before a ticker's last stored bar are fetched again from
    a network source. ``max_move`` bounds one day's move where no exchange limit applies
    (indices, other markets), as a fraction. ``deadline_s`` bounds the whole run: past it, the
    ingest stops, keeps what landed and fails. A ``running`` run of another process with no
    heartbeat for ``abandon_after`` is closed as ``abandoned`` first. ``calendar`` overrides
    the calendar used to reject bars on closed days (default: the database calendar after this
    run's calendar ingest, plus weekends). ``progress`` shows a tqdm bar (default: when stderr
    is a terminal and ``TQDM_DISABLE`` is unset); otherwise each ticker is logged.
    ``whole_day`` lands a by-trade-date increment for all the tickers it serves in one
    vectorized validation and one bulk write (False: each ticker on its own, as by code; the
    same rows, rejections and revisions, 10-20x slower: kept to compare the two).

    Returns the report also written to ``ingest_runs``. Raises :class:`InputError` for an empty
    ticker list and a start after the end, and :class:`~forecasting.data.interrupts.Interrupted`
    on SIGTERM or SIGINT, after recording the run as ``aborted``.
    """
    today = today or trading_today(real_clock())
    end = end or today
    if start is not None and start > end:
        raise InputError(f"ingest start {start} is after end {end}; swap them or drop start")
    if source.name == DEMO:
        with engine.connect() as conn:
            check_demo_target(conn)  # never synthetic bars in a real series
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    if deadline_s is not None and hasattr(source, "set_deadline"):
        source.set_deadline(deadline)  # network waits and retries end there too
    with Interrupts() as guard:
        names = _unique(
            t.strip().upper() for t in (tickers if tickers is not None else source.tickers())
        )
        broken = _broken_files(source)
        if not names and not broken:
            raise InputError(
                f"no tickers to ingest from {source.name}: pass --tickers (e.g. 600519.SH) or "
                "set FORECASTING_TICKERS"
            )
        report = IngestReport(run_id=str(uuid.uuid4()), source=source.name, started_at=_now())
        with guard.writing(), engine.begin() as conn:
            report.abandoned = close_abandoned(conn, report.started_at - abandon_after)
            conn.execute(
                insert(ingest_runs).values(
                    run_id=report.run_id,
                    started_at=report.started_at,
                    heartbeat_at=report.started_at,
                    source=source.name,
                    tickers=json.dumps(names),
                    status="running",
                )
            )
        plan = _Plan(
            start, end, today, history_start, reread_days, max_move, deadline, deadline_s, whole_day
        )
        try:
            for file, why in broken.items():
                report.tickers[file] = TickerReport(file, error=why)
            _run(engine, source, report, names, plan, calendar, progress, exchange, guard)
            # Broken files first, then the tickers in the order asked (the whole-day path
            # lands its tickers before the others).
            first = [k for k in report.tickers if k in broken]
            report.tickers = {k: report.tickers[k] for k in [*first, *names] if k in report.tickers}
        except BaseException as exc:
            # Even a crash, a kill or Ctrl-C leaves an honest run row, never one left "running".
            interrupted = isinstance(exc, KeyboardInterrupt)
            report.status = "aborted" if interrupted else "failed"
            why = str(exc) if isinstance(exc, Interrupted) else f"{type(exc).__name__}: {exc}"
            done = sum(1 for t in report.tickers.values() if not t.error)
            report.run_error = (
                f"{why} after {done} of {len(names)} tickers" if interrupted else f"crashed: {why}"
            )
            with guard.writing():
                _finish(engine, report)
            log.error("%s", report.summary())
            raise
        report.status = _status(report)
        with guard.writing():
            _finish(engine, report)
    log.info("%s", report.summary())
    return report


@dataclass(frozen=True)
class _Plan:
    start: dt.date | None
    end: dt.date
    today: dt.date
    history_start: dt.date
    reread_days: int
    max_move: float
    deadline: float | None
    deadline_s: float | None
    whole_day: bool = True


def close_abandoned(conn: Connection, before: dt.datetime) -> list[str]:
    """Mark ``running`` ingest runs with no heartbeat since ``before`` as ``abandoned``."""
    c = ingest_runs.c
    beat = c.heartbeat_at
    stale = and_(
        c.status == "running",
        or_(beat < before, and_(beat.is_(None), c.started_at < before)),
    )
    rows = conn.execute(select(c.run_id, c.heartbeat_at, c.started_at).where(stale)).all()
    for run_id, heartbeat, started in rows:
        conn.execute(
            update(ingest_runs)
            .where(c.run_id == run_id)
            .values(
                status="abandoned",
                finished_at=_now(),
                error=(
                    f"abandoned: no heartbeat since {heartbeat or started} (the process is gone); "
                    "the counts are what it had committed"
                ),
            )
        )
    if rows:
        log.warning("closed %d abandoned ingest run(s): %s", len(rows), [r[0] for r in rows])
    return [r[0] for r in rows]


def _run(
    engine: Engine,
    source: PriceSource,
    report: IngestReport,
    names: list[str],
    plan: _Plan,
    calendar: TradingCalendar | None,
    progress: bool | None,
    exchange: str,
    guard: Interrupts,
) -> None:
    whole = _reads_whole(source)
    with engine.connect() as conn:
        stored = stored_spans(conn, names, through=plan.today)
    # A file is read whole; what lies outside start..end is counted when it comes back.
    plans = {t: [_WHOLE] for t in names} if whole else _plans(names, stored, plan, plan.reread_days)
    starts = [a for ranges in plans.values() for a, _ in ranges if a > _WHOLE[0]]
    cal_start = min([*starts, *(s[0] for s in stored.values()), plan.end])

    try:
        cal_frame = source.trading_calendar(cal_start, plan.end + CALENDAR_AHEAD)
        if cal_frame is not None and not cal_frame.empty:
            with guard.writing():
                report.calendar_inserted, report.calendar_updated = load_trade_cal(
                    engine, cal_frame, exchange, source=source.name
                )
    except SourceError as exc:
        report.calendar_error = str(exc)
        log.error("ingest %s: trading calendar: %s", report.run_id, exc)
    if calendar is None:
        calendar = TradingCalendar.load(engine, exchange, cal_start, plan.end + CALENDAR_AHEAD)
    # A whole-market source: reference data, and the increment by trade date when cheaper. It
    # is planned on the increments; the re-read days are fetched by date too, for every
    # ticker it serves (two calls a day re-read, not two per ticker).
    increments = plans if whole or not plan.reread_days else _plans(names, stored, plan, 0)
    by_date = by_date_source(
        engine, source, increments, calendar, reread_days=0 if whole else plan.reread_days
    )
    if isinstance(by_date, DayBatchSource):
        plans = {t: by_date.ranges(t) if by_date.covers(t) else r for t, r in plans.items()}
    source = by_date

    ingested_at = _now()
    known = _known(engine, names)
    landed: dict[str, TickerReport] = {}
    if isinstance(source, DayBatchSource) and plan.whole_day:
        served = [t for t in names if source.covers(t)]
        landed = _land_whole_day(
            engine, source, served, plans, calendar, report, ingested_at, plan, stored, guard
        )
    bar = _progress_bar(names, progress)
    for n, ticker in enumerate(bar):
        if ticker in landed:
            report.tickers[ticker] = landed[ticker]
            continue
        tr = TickerReport(ticker, whole=whole)
        report.tickers[ticker] = tr
        if plan.deadline is not None and time.monotonic() > plan.deadline:
            _stop_at_deadline(report, [t for t in names[n:] if t not in landed], plan)
            return
        # A range of weekends and database holidays can hold no valid bar: don't ask.
        tr.ranges = [(a, b) for a, b in plans[ticker] if whole or calendar.may_trade_between(a, b)]
        if tr.ranges:
            try:
                _ingest_ticker(
                    engine,
                    source,
                    tr,
                    calendar,
                    report,
                    ingested_at,
                    plan,
                    stored.get(ticker),
                    guard,
                    known,
                )
            except Exception as exc:  # one ticker's failure must not lose the others
                tr.error = (
                    str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
                )
                tr.inserted = tr.updated = tr.unchanged = tr.rejected = tr.revised = 0
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
    if plan.deadline is not None and time.monotonic() > plan.deadline:
        _stop_at_deadline(report, [], plan)


def _land_whole_day(
    engine: Engine,
    source: DayBatchSource,
    served: list[str],
    plans: dict[str, list[tuple[dt.date, dt.date]]],
    calendar: TradingCalendar,
    report: IngestReport,
    ingested_at: dt.datetime,
    plan: _Plan,
    spans: dict[str, tuple[dt.date, dt.date]],
    guard: Interrupts,
) -> dict[str, TickerReport]:
    """Land the by-date increment of ``served`` in one transaction: one vectorized screen of
    every row (:func:`~forecasting.data.validation.screen_day`), one read of the stored bars
    it continues and one bulk upsert. A ticker the screen cannot pass whole (a rejection, a
    listing day, a parse problem), one whose range holds a failed day, or one with more than
    one range is left to the per-ticker path, which explains it; that path would land the
    rest exactly so (the test compares both). Returns the reports of the tickers landed.
    """
    if plan.deadline is not None and time.monotonic() > plan.deadline:
        return {}
    reports: dict[str, TickerReport] = {}
    lo_of: dict[str, dt.date] = {}
    hi_of: dict[str, dt.date] = {}
    for ticker in served:
        ranges = [(a, b) for a, b in plans[ticker] if calendar.may_trade_between(a, b)]
        if not ranges:
            reports[ticker] = TickerReport(ticker)  # up to date: nothing to ask for
        elif len(ranges) == 1 and source.failed(*ranges[0]) is None:
            lo_of[ticker], hi_of[ticker] = ranges[0]
    frame = source.bars
    names = frame["ticker"].to_numpy(dtype=object)
    lo = pd.Series(lo_of, dtype=object).reindex(names)
    asked = lo.notna().to_numpy()
    hi = pd.Series(hi_of, dtype=object).reindex(names)
    day = _days(frame)
    inside = asked & ~np.isnat(day)
    inside[asked] &= (day[asked] >= as_days(lo[asked].tolist())) & (
        day[asked] <= as_days(hi[asked].tolist())
    )
    bars = frame[inside].reset_index(drop=True)
    got = set(bars["ticker"])
    empty = [t for t in lo_of if t not in got]
    if len(bars):
        first, last = min(lo_of[t] for t in got), max(hi_of[t] for t in got)
    with guard.writing(), engine.begin() as conn:
        ok_tickers: list[str] = []
        clean = bars
        if len(bars):
            stored = read_stored_day(conn, sorted(got), first, last)
            b_names = bars["ticker"].to_numpy(dtype=object)
            st = np.zeros(len(bars), dtype=bool)  # [N] the ticker was ST that day
            day_of = _days(bars)
            for ticker, st_of in st_spans(conn, sorted(got)).items():
                mine = b_names == ticker
                st[mine] = st_mask(day_of[mine], Checks(st_spans=st_of))
            ok = screen_day(
                bars,
                lo=as_days([lo_of[t] for t in b_names]),
                hi=as_days([hi_of[t] for t in b_names]),
                calendar=calendar,
                today=plan.today,
                max_move=plan.max_move,
                st=st,
                stored=(
                    stored.tickers,
                    stored.days,
                    stored.values[:, VALUE_COLUMNS.index("close")],
                    stored.values[:, VALUE_COLUMNS.index("adj_factor")],
                ),
            )
            failing = set(b_names[~ok])
            ok_tickers = sorted(got - failing)
            clean = bars[~pd.Series(b_names).isin(failing).to_numpy()].reset_index(drop=True)
        quiet: list[str] = []  # no bar on those days: the per-ticker path says the same
        for ticker in empty:
            tr = TickerReport(ticker, ranges=[(lo_of[ticker], hi_of[ticker])])
            _nothing_back(tr, spans.get(ticker))
            reports[ticker] = tr
            if tr.error is None:
                quiet.append(ticker)
        _upsert_securities(conn, [source.security(t) for t in [*quiet, *ok_tickers]])
        _record_sources(conn, ok_tickers, source.name)
        done = upsert_day(
            conn,
            clean,
            stored=stored if len(bars) else _NO_STORED,
            source=source.name,
            ingested_at=ingested_at,
            run_id=report.run_id,
        )
        fetched = clean["ticker"].value_counts().to_dict()
        totals = [sum(u[k] for u in done.values()) for k in range(3)]
        _heartbeat(conn, report, extra=(*totals, 0))  # type: ignore[arg-type]
    # Counted once committed, as on the per-ticker path.
    for ticker in ok_tickers:
        inserted, updated, unchanged, revised = done.get(ticker, (0, 0, 0, 0))
        reports[ticker] = TickerReport(
            ticker,
            ranges=[(lo_of[ticker], hi_of[ticker])],
            fetched=int(fetched.get(ticker, 0)),
            inserted=inserted,
            updated=updated,
            unchanged=unchanged,
            revised=revised,
        )
    for tr in reports.values():
        report.tickers.setdefault(tr.ticker, tr)  # the heartbeats after this count them
    log.info(
        "ingest: %d tickers landed by trade date in one write (%d rows); %d left to the "
        "per-ticker path",
        len(reports),
        len(clean),
        len(served) - len(reports),
    )
    return reports


@dataclass(frozen=True)
class _Known:
    """What the per-ticker path looks up for every ticker, read once per run: listing dates
    (they exempt the first trading days from the limit), ST spans, and which tickers have any
    stored row (the others have nothing to compare with: no read)."""

    listed: dict[str, dt.date]
    st: dict[str, list[tuple[dt.date, dt.date | None]]]
    has_rows: set[str]


def _known(engine: Engine, names: list[str]) -> _Known:
    listed: dict[str, dt.date] = {}
    with engine.connect() as conn:
        c = securities.c
        for i in range(0, len(names), 2000):
            rows = conn.execute(
                select(c.ticker, c.list_date).where(
                    c.ticker.in_(names[i : i + 2000]), c.list_date.is_not(None)
                )
            )
            listed.update((t, d) for t, d in rows)
        return _Known(listed, st_spans(conn, names), set(stored_spans(conn, names)))


def _plans(
    names: list[str], stored: dict[str, tuple[dt.date, dt.date]], plan: _Plan, reread_days: int
) -> dict[str, list[tuple[dt.date, dt.date]]]:
    return {
        t: plan_ranges(
            stored.get(t),
            start=plan.start,
            end=plan.end,
            history_start=plan.history_start,
            reread_days=reread_days,
        )
        for t in names
    }


def _stop_at_deadline(report: IngestReport, left: list[str], plan: _Plan) -> None:
    for ticker in left:
        report.tickers[ticker] = TickerReport(
            ticker, error=f"not attempted: the run's deadline of {plan.deadline_s:g} s passed"
        )
    report.run_error = (
        f"the deadline of {plan.deadline_s:g} s passed with {len(left)} tickers left; "
        "raise the deadline (ingest_deadline_s) or ingest fewer tickers per run"
    )


def _ingest_ticker(
    engine: Engine,
    source: PriceSource,
    tr: TickerReport,
    calendar: TradingCalendar,
    report: IngestReport,
    ingested_at: dt.datetime,
    plan: _Plan,
    span: tuple[dt.date, dt.date] | None,
    guard: Interrupts,
    known: _Known,
) -> None:
    # Network first, outside any transaction: a slow source must not hold database locks.
    parts = [source.fetch_bars(tr.ticker, a, b) for a, b in tr.ranges]
    parts = [p for p in parts if p is not None and not p.empty]
    bars = (
        pd.concat(parts, ignore_index=True)
        if len(parts) > 1
        else (parts[0] if parts else empty_bars())
    )
    tr.fetched = len(bars)
    if bars.empty:
        _nothing_back(tr, span)
        if tr.error is None:  # the source answered for these days: its reference data stands
            with guard.writing(), engine.begin() as conn:
                _upsert_security(conn, source.security(tr.ticker))
                _heartbeat(conn, report, extra=(0, 0, 0, 0))
        return
    days = _days(bars)  # [N] datetime64[D]
    if tr.whole:
        bars, days = _leave_out(bars, days, tr, plan)
    security = source.security(tr.ticker)
    with guard.writing(), engine.begin() as conn:
        # The listing date (reference data in securities, where the source has it) exempts
        # the first trading days from the price limit.
        listed = known.listed.get(tr.ticker)
        checks = Checks(
            ranges=None if tr.whole else tr.ranges,
            today=plan.today,
            max_move=plan.max_move,
            listed=listed,
            st_spans=known.st.get(tr.ticker, ()),
        )
        days = days[~np.isnat(days)]
        stored = None
        if len(days) and tr.ticker not in known.has_rows:
            stored = StoredRows([], np.empty((0, len(VALUE_COLUMNS))), 0)  # nothing to read
        elif len(days):
            lo, hi = days.min().astype(dt.date), days.max().astype(dt.date)
            stored = read_stored(conn, tr.ticker, lo, hi)
        clean, rejections = validate_bars(
            bars, tr.ticker, calendar, checks, stored.context() if stored else None
        )
        if not _upsert_security(conn, security, source=source.name):
            record_source(conn, tr.ticker, source.name)
        done = upsert_prices(
            conn,
            tr.ticker,
            clean,
            source=source.name,
            ingested_at=ingested_at,
            run_id=report.run_id,
            stored=stored,
        )
        repeats = _record_rejections(conn, rejections, report.run_id)
        gap = None if tr.whole or listed is None else _gap(conn, tr, listed)
        inserted, updated, unchanged, revised = done
        _heartbeat(conn, report, extra=(inserted, updated, unchanged, len(rejections)))
    # Counted once committed: an interrupt before the commit leaves them out, as the database does.
    tr.inserted, tr.updated, tr.unchanged, tr.revised = inserted, updated, unchanged, revised
    tr.rejected, tr.rejected_before = len(rejections), repeats
    tr.note = gap


#: Stored history starting this many days after the listing (or the start asked for, if later)
#: is reported: the source may have cut it off.
GAP_DAYS = 30


def _gap(conn: Connection, tr: TickerReport, listed: dt.date) -> str | None:
    """A note when the stored history starts well after both the listing and the start asked."""
    first = conn.execute(
        select(func.min(prices.c.trade_date)).where(prices.c.ticker == tr.ticker)
    ).scalar()
    wanted = max(listed, min(a for a, _ in tr.ranges))
    if first is None or (first - wanted).days <= GAP_DAYS:
        return None
    return (
        f"gap: stored history starts {first}, {(first - wanted).days} days after {wanted} "
        f"(listed {listed}); check the source for the missing days"
    )


def _nothing_back(tr: TickerReport, span: tuple[dt.date, dt.date] | None) -> None:
    """No rows: a failure unless the request only covered days after the stored history."""
    asked = ", ".join(f"{a}..{b}" for a, b in tr.ranges)
    if span is None:
        tr.error = (
            f"the source returned no bars for {tr.ticker} in {asked}: check the ticker "
            "(is it a valid, listed code?) and the dates"
        )
    elif any(a <= span[1] for a, _ in tr.ranges):
        tr.error = (
            f"the source returned none of {tr.ticker}'s stored bars in {asked}: "
            "it may have dropped the ticker; check it at the source"
        )
    else:
        tr.note = "no new bars"


def _leave_out(
    bars: pd.DataFrame, days: np.ndarray, tr: TickerReport, plan: _Plan
) -> tuple[pd.DataFrame, np.ndarray]:
    """A whole file's rows before ``start`` or after ``end`` (up to today): counted, not loaded.
    ``days`` [N] are the rows' dates (NaT where unreadable: never left out)."""
    before = days < np.datetime64(plan.start) if plan.start else np.zeros(len(days), dtype=bool)
    after = (days > np.datetime64(plan.end)) & (days <= np.datetime64(plan.today))
    if before.any():
        tr.left_before, tr.first_left = int(before.sum()), days[before].min().astype(dt.date)
    if after.any():
        tr.left_after, tr.last_left = int(after.sum()), days[after].max().astype(dt.date)
    if before.any() or after.any():
        keep = ~(before | after)
        return bars.loc[keep].reset_index(drop=True), days[keep]
    return bars, days


def _days(bars: pd.DataFrame) -> np.ndarray:
    """``trade_date`` as ``datetime64[D]`` [N], NaT where a row has none."""
    return as_days([d if isinstance(d, dt.date) else None for d in bars["trade_date"].tolist()])


def _record_rejections(conn: Connection, rejections: list[Rejection], run_id: str) -> int:
    """Store rejections not already on record; mark the repeats with this run. Returns how many
    were repeats."""
    if not rejections:
        return 0
    rows = []
    for r in rejections:
        raw = json.dumps(r.raw, sort_keys=True)
        key = f"{r.ticker}|{r.trade_date}|{raw}|{r.reason}"
        rows.append(
            {
                "run_id": run_id,
                "last_run_id": run_id,
                "ticker": r.ticker,
                "trade_date": r.trade_date,
                "raw": raw,
                "reason": r.reason,
                "fingerprint": hashlib.sha256(key.encode()).hexdigest(),
            }
        )
    prints = list(dict.fromkeys(r["fingerprint"] for r in rows))
    known: set[str] = set()
    fp = rejected_rows.c.fingerprint
    for i in range(0, len(prints), 500):
        known.update(conn.execute(select(fp).where(fp.in_(prints[i : i + 500]))).scalars())
    if known:
        conn.execute(update(rejected_rows).where(fp.in_(sorted(known))).values(last_run_id=run_id))
    fresh = [r for r in rows if r["fingerprint"] not in known]
    if fresh:
        conn.execute(insert(rejected_rows), fresh)
    return len(rows) - len(fresh)


def _heartbeat(conn: Connection, report: IngestReport, extra: tuple[int, int, int, int]) -> None:
    """The run's counts so far (this ticker's included) and a fresh heartbeat, in the ticker's
    transaction: a process killed outright leaves true counts behind."""
    ins, upd, same, rej = extra
    conn.execute(
        update(ingest_runs)
        .where(ingest_runs.c.run_id == report.run_id)
        .values(
            heartbeat_at=_now(),
            rows_inserted=report.inserted + ins,
            rows_updated=report.updated + upd,
            rows_unchanged=report.unchanged + same,
            rows_rejected=report.rejected + rej,
        )
    )


_NO_STORED = StoredDay(
    np.empty(0, dtype=object), np.empty(0, dtype="datetime64[D]"), np.empty((0, 7))
)


def _record_sources(conn: Connection, tickers: list[str], source: str) -> None:
    """:func:`~forecasting.data.provenance.record_source` for many tickers at once."""
    for i in range(0, len(tickers), 2000):
        chunk = tickers[i : i + 2000]
        conn.execute(update(securities).where(securities.c.ticker.in_(chunk)).values(source=source))


def _security_values(sec: Security) -> dict[str, object]:
    values: dict[str, object] = {
        "name": sec.name,
        "kind": sec.kind or "stock",
        "exchange": sec.exchange,
    }
    if sec.checked_through is not None:  # see forecasting.data.increment
        values["checked_through"] = sec.checked_through
    return values


def _upsert_securities(conn: Connection, secs: list[Security]) -> None:
    """:func:`_upsert_security` for many securities: one read, then an insert and an update
    per shape of change."""
    c = securities.c
    stored: dict[str, dict[str, object]] = {}
    tickers = [s.ticker for s in secs]
    cols = ("name", "kind", "exchange", "checked_through")
    for i in range(0, len(tickers), 2000):
        rows = conn.execute(
            select(c.ticker, *(c[k] for k in cols)).where(c.ticker.in_(tickers[i : i + 2000]))
        )
        stored.update((r[0], dict(zip(cols, r[1:], strict=True))) for r in rows)
    inserts: dict[tuple[str, ...], list[dict[str, object]]] = {}
    updates: dict[tuple[str, ...], list[dict[str, object]]] = {}
    for sec in secs:
        values = _security_values(sec)
        row = stored.get(sec.ticker)
        if row is None:
            inserts.setdefault(tuple(values), []).append({"ticker": sec.ticker, **values})
        elif tuple(row[k] for k in values) != tuple(values.values()):
            merged = {k: v for k, v in values.items() if v is not None}
            updates.setdefault(tuple(merged), []).append({"b_ticker": sec.ticker, **merged})
    for group in inserts.values():
        conn.execute(insert(securities), group)
    for keys, group in updates.items():
        conn.execute(
            update(securities)
            .where(c.ticker == bindparam("b_ticker"))
            .values({k: bindparam(k) for k in keys}),
            group,
        )


def _upsert_security(conn: Connection, sec: Security, *, source: str | None = None) -> bool:
    """Insert or update the ticker's row; a new row also records ``source`` (when given).
    Returns whether it inserted the row with ``source`` (else the caller records it)."""
    values = _security_values(sec)
    row = conn.execute(
        select(*(securities.c[k] for k in values)).where(securities.c.ticker == sec.ticker)
    ).first()
    if row is None:
        extra = {} if source is None else {"source": source}
        conn.execute(insert(securities).values(ticker=sec.ticker, **values, **extra))
        return source is not None
    if tuple(row) != tuple(values.values()):
        # A source without reference data (None name) must not erase a name another source gave.
        merged = {k: v for k, v in values.items() if v is not None}
        conn.execute(update(securities).where(securities.c.ticker == sec.ticker).values(**merged))
    return False


def _status(report: IngestReport) -> str:
    failed = sum(1 for t in report.tickers.values() if t.error)
    if report.run_error or (report.tickers and failed == len(report.tickers)):
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
                heartbeat_at=report.finished_at,
                rows_inserted=report.inserted,
                rows_updated=report.updated,
                rows_unchanged=report.unchanged,
                rows_rejected=report.rejected,
                status=report.status,
                error=report.error_text,
            )
        )


def _reads_whole(source: PriceSource) -> bool:
    """Whether the source is a local file: cheap to read, so compared whole every run."""
    return bool(getattr(source, "reads_whole", False))


def _broken_files(source: PriceSource) -> dict[str, str]:
    """Files a file source could not read and whose ticker it cannot tell (each is recorded as
    failed; the other files still land)."""
    failures = getattr(source, "failures", None)
    return dict(failures()) if callable(failures) else {}


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


__all__ = [
    "IngestReport",
    "Interrupted",
    "TickerReport",
    "close_abandoned",
    "ingest",
    "plan_ranges",
]
