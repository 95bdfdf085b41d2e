"""The trading calendar, with one defined fallback chain.

Which days the exchange trades is answered, for each date, by the strongest source that knows it:

1. ``"database"``: rows in ``trading_calendar`` (tushare ``trade_cal``, written by the ingest
   through :mod:`forecasting.data.trade_cal`).
   A date with a row there is authoritative, open or closed.
2. ``"xshg"`` (``"xnys"`` for a US calendar): the ``exchange_calendars`` sessions of the
   exchange, which stop at the library's last known session (2026-12-31 for XSHG in 4.x) and
   start at :data:`_LIBRARY_START`. A calendar built from a series' own bars
   (:meth:`TradingCalendar.from_series`, for a ticker on an exchange nobody publishes a
   calendar for) answers ``"series"`` within its bars' span.
3. ``"weekdays"``: Monday to Friday. Always an answer, never a certain one; a warning is logged
   the first time a calendar falls back to it, and callers record the weakest source they used
   (``forecasts.calendar_source``) so a forecast made on a guessed calendar says so.

All A-share exchanges (SSE, SZSE, BSE) share one calendar; it is stored under the key
:data:`DEFAULT_EXCHANGE` (``"XSHG"``) whatever name the source used, see :func:`calendar_exchange`.
Which calendar a ticker's target dates follow is :func:`ticker_calendar`: XSHG for A-shares,
XNYS for US listings, the series' own trading days for anything else.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from forecasting.data.schema import trading_calendar
from forecasting.errors import ForecastingError

log = logging.getLogger(__name__)

CalendarSource = Literal["database", "xshg", "xnys", "series", "weekdays"]

DEFAULT_EXCHANGE = "XSHG"

# Strongest first; the "weakest source used" of a query is the one with the highest rank.
SOURCE_RANK: dict[str, int] = {"database": 0, "xshg": 1, "xnys": 1, "series": 1, "weekdays": 2}

#: Calendars of exchange_calendars this project reads, by stored key.
LIBRARY_CALENDARS: dict[str, CalendarSource] = {"XSHG": "xshg", "XNYS": "xnys"}
SERIES_CALENDAR = "SERIES"  # the key of a calendar made from a series' own bars

# Every mainland A-share venue trades on the same days; one stored calendar serves them all.
_EXCHANGE_KEYS = {
    "SSE": "XSHG",
    "SH": "XSHG",
    "XSHG": "XSHG",
    "SZSE": "XSHG",
    "SZ": "XSHG",
    "XSHE": "XSHG",
    "BSE": "XSHG",
    "BJ": "XSHG",
    "NYSE": "XNYS",
    "NASDAQ": "XNYS",
    "XNAS": "XNYS",
    "XNYS": "XNYS",
    "US": "XNYS",
}

# exchange_calendars holds XSHG holidays from 1991 on; asking for earlier raises.
_LIBRARY_START = "1991-01-01"

# The longest run of closed days the exchange has had is about two weeks (Spring Festival plus
# weekends); a search that walks further than this has found a broken calendar, not a holiday.
_MAX_CLOSED_RUN = 366


class CalendarError(ForecastingError, ValueError):
    """The calendar could not answer; the message says which date and why."""


def calendar_exchange(exchange: str | None) -> str:
    """The key a calendar is stored under: ``"SSE"``, ``"SZSE"``, ``None`` -> ``"XSHG"``.

    Unknown names are kept (upper-cased) so that a foreign calendar never silently merges into
    the A-share one.
    """
    if exchange is None or not exchange.strip():
        return DEFAULT_EXCHANGE
    key = exchange.strip().upper()
    return _EXCHANGE_KEYS.get(key, key)


def ticker_calendar(ticker: str, exchange: str | None = None) -> str:
    """The calendar key a ticker's trading days follow: ``"XSHG"`` for A-shares (``.SH``,
    ``.SZ``, ``.BJ`` or an A-share exchange), ``"XNYS"`` for US listings (``.US``, ``.N``,
    ``.O``, a ``^`` index, or the exchange NYSE/NASDAQ), else :data:`SERIES_CALENDAR`: the
    series' own trading days (a CSV of crude oil, an exchange nobody publishes a calendar
    for). ``exchange`` is what ``securities`` records, when it does."""
    if exchange and exchange.strip():
        key = calendar_exchange(exchange)
        if key in LIBRARY_CALENDARS:
            return key
    t = ticker.strip().upper()
    suffix = t.rsplit(".", 1)[-1] if "." in t else ""
    if suffix in ("SH", "SZ", "BJ"):
        return DEFAULT_EXCHANGE
    if suffix in ("US", "N", "O", "OQ") or t.startswith("^"):
        return "XNYS"
    return SERIES_CALENDAR


@functools.lru_cache(maxsize=4)
def _library_sessions(code: str = DEFAULT_EXCHANGE) -> tuple[frozenset[dt.date], dt.date, dt.date]:
    """An exchange_calendars calendar's sessions as dates, with the first and last date the
    library knows.

    Cached: building the calendar takes most of a second and it never changes within a process.
    """
    import exchange_calendars as xc  # imported lazily: the ingest validates without it

    cal = xc.get_calendar(code, start=_LIBRARY_START)
    sessions = frozenset(pd.DatetimeIndex(cal.sessions).date.tolist())
    # The library knows every date from the requested start (closed ones included) through its
    # last session; past that it raises, so the bound is read from it rather than hard-coded.
    return sessions, dt.date.fromisoformat(_LIBRARY_START), cal.last_session.date()


def _xshg_sessions() -> tuple[frozenset[dt.date], dt.date, dt.date]:
    return _library_sessions(DEFAULT_EXCHANGE)


@dataclass(frozen=True)
class CoverageRange:
    """A span of dates answered by one source; ``None`` ends are open (no bound)."""

    source: CalendarSource
    start: dt.date | None
    end: dt.date | None
    open_days: int | None = None  # trading days in the span; None for an unbounded span

    def __str__(self) -> str:
        start = self.start.isoformat() if self.start else "..."
        end = self.end.isoformat() if self.end else "..."
        days = f" ({self.open_days} trading days)" if self.open_days is not None else ""
        return f"{start} to {end}: {self.source}{days}"


class Coverage(list[CoverageRange]):
    """The ranges of :meth:`TradingCalendar.coverage`; prints one range per line."""

    def __str__(self) -> str:
        return "\n".join(f"  {r}" for r in self)


@dataclass(frozen=True)
class TargetDates:
    """Trading days found by a query and the weakest calendar source that decided them."""

    dates: list[dt.date]
    source: CalendarSource


class TradingCalendar:
    """Answers trading-day questions for one exchange from database rows and fallbacks.

    Build one with :meth:`load` (from the database) or :meth:`from_rows` (from a mapping, for
    pure code and tests). Only database rows read at construction count as ``"database"``: a
    calendar loaded for a window falls back outside it.
    """

    def __init__(
        self,
        rows: Mapping[dt.date, bool] | None = None,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        use_xshg: bool = True,
    ) -> None:
        self.exchange = calendar_exchange(exchange)
        self._db: dict[dt.date, bool] = dict(rows or {})
        self._db_closed = frozenset(d for d, is_open in self._db.items() if not is_open)
        # The library fallback: the exchange's own calendar there, if the library has one.
        self._library: CalendarSource | None = (
            LIBRARY_CALENDARS.get(self.exchange) if use_xshg else None
        )
        self._use_xshg = self._library is not None
        self._db_source: CalendarSource = (
            "series" if self.exchange == SERIES_CALENDAR else "database"
        )
        self._warned_weekdays = False

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        conn_or_engine: Connection | Engine,
        exchange: str = DEFAULT_EXCHANGE,
        start: dt.date | None = None,
        end: dt.date | None = None,
    ) -> TradingCalendar:
        """Read ``trading_calendar`` rows for ``exchange`` (optionally only ``start..end``)."""
        key = calendar_exchange(exchange)
        query = select(trading_calendar.c.cal_date, trading_calendar.c.is_open).where(
            trading_calendar.c.exchange == key
        )
        if start is not None:
            query = query.where(trading_calendar.c.cal_date >= start)
        if end is not None:
            query = query.where(trading_calendar.c.cal_date <= end)
        if isinstance(conn_or_engine, Engine):
            with conn_or_engine.connect() as conn:
                rows = conn.execute(query).all()
        else:
            rows = conn_or_engine.execute(query).all()
        return cls({d: bool(o) for d, o in rows}, exchange=key)

    @classmethod
    def from_rows(
        cls,
        rows: Mapping[dt.date, bool] | None = None,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        use_xshg: bool = True,
    ) -> TradingCalendar:
        """A calendar whose ``"database"`` rows are ``rows`` (date -> open);
        ``use_xshg=False`` skips straight to the weekday fallback."""
        return cls(rows, exchange=exchange, use_xshg=use_xshg)

    @classmethod
    def from_series(cls, dates: Iterable[dt.date]) -> TradingCalendar:
        """A calendar of a series' own trading days: open on each bar's date, closed on the
        other days between its first and last bar (source ``"series"``), weekdays after."""
        days = sorted({_as_date(d) for d in dates})
        rows: dict[dt.date, bool] = {}
        if days:
            opened = set(days)
            cur = days[0]
            while cur <= days[-1]:
                rows[cur] = cur in opened
                cur += dt.timedelta(days=1)
        return cls(rows, exchange=SERIES_CALENDAR, use_xshg=False)

    def _library_sessions(self) -> tuple[frozenset[dt.date], dt.date, dt.date]:
        code = next(k for k, v in LIBRARY_CALENDARS.items() if v == self._library)
        return _library_sessions(code)

    # -- per-date answers ---------------------------------------------------------------------

    def source_for(self, d: dt.date) -> CalendarSource:
        """Which source answers for ``d``: ``"database"`` (``"series"``), the library's
        (``"xshg"``, ``"xnys"``) or ``"weekdays"``."""
        d = _as_date(d)
        if d in self._db:
            return self._db_source
        if self._library is not None:
            _, first, last = self._library_sessions()
            if first <= d <= last:
                return self._library
        return "weekdays"

    def is_trading_day(self, d: dt.date) -> bool:
        """Whether the exchange trades on ``d``, by the strongest source that knows."""
        d = _as_date(d)
        source = self.source_for(d)
        if source in ("database", "series"):
            return self._db[d]
        if source == self._library:
            return d in self._library_sessions()[0]
        self._warn_weekdays(d)
        return d.weekday() < 5

    def is_known_closed(self, d: dt.date) -> bool:
        """True only when ``d`` is certainly closed: a weekend, or a closed day in the database.

        The ingest rejects bars on such days; a weekday with no database row is given the
        benefit of the doubt, since fallbacks guess.
        """
        d = _as_date(d)
        return d.weekday() >= 5 or d in self._db_closed

    def known_closed_mask(self, dates: Iterable[dt.date]) -> np.ndarray:
        """Vectorized :meth:`is_known_closed` over many dates (for validating a batch)."""
        idx = pd.DatetimeIndex(pd.to_datetime(pd.Series(list(dates), dtype="object")))
        weekend = np.asarray(idx.day_of_week >= 5)
        if not self._db_closed:
            return weekend
        closed = pd.DatetimeIndex(sorted(self._db_closed))
        return weekend | np.asarray(idx.isin(closed))

    # -- walking the calendar -----------------------------------------------------------------

    def next_trading_day(self, d: dt.date) -> dt.date:
        """The first trading day strictly after ``d``."""
        return self.next_trading_days(d, 1).dates[0]

    def previous_trading_day(self, d: dt.date) -> dt.date:
        """The last trading day strictly before ``d``."""
        d = _as_date(d)
        cur = d
        for _ in range(_MAX_CLOSED_RUN):
            cur -= dt.timedelta(days=1)
            if self.is_trading_day(cur):
                return cur
        raise CalendarError(
            f"no trading day in the {_MAX_CLOSED_RUN} days before {d} on {self.exchange}; "
            "the trading_calendar rows look wrong (all closed?): re-ingest the calendar"
        )

    def nth_trading_day_after(self, d: dt.date, n: int) -> dt.date:
        """The ``n``-th trading day strictly after ``d`` (``n=1`` is the next trading day)."""
        return self.next_trading_days(d, n).dates[-1]

    def next_trading_days(self, d: dt.date, n: int) -> TargetDates:
        """The ``n`` trading days after ``d`` and the weakest source used to find them.

        Every date walked over counts towards the source, skipped ones included: a holiday
        guessed by the weekday rule moves every later target date as much as a guessed open day.
        This is what a forecast records as its ``calendar_source``.
        """
        if n < 1:
            raise CalendarError(f"n must be at least 1 (got {n}) for the trading days after {d}")
        d = _as_date(d)
        out: list[dt.date] = []
        weakest: CalendarSource = "database"
        cur = d
        gap = 0
        while len(out) < n:
            cur += dt.timedelta(days=1)
            source = self.source_for(cur)
            if SOURCE_RANK[source] > SOURCE_RANK[weakest]:
                weakest = source
            if self.is_trading_day(cur):
                out.append(cur)
                gap = 0
            else:
                gap += 1
                if gap >= _MAX_CLOSED_RUN:
                    raise CalendarError(
                        f"no trading day in the {_MAX_CLOSED_RUN} days after {cur - dt.timedelta(days=gap)}"
                        f" on {self.exchange}; the trading_calendar rows look wrong (all closed?): "
                        "re-ingest the calendar"
                    )
        return TargetDates(out, weakest)

    def trading_days(self, start: dt.date, end: dt.date) -> list[dt.date]:
        """Trading days with ``start <= day <= end``, oldest first."""
        return self.trading_days_with_source(start, end).dates

    def trading_days_with_source(self, start: dt.date, end: dt.date) -> TargetDates:
        """Like :meth:`trading_days`, plus the weakest source over every date in the range."""
        start, end = _as_date(start), _as_date(end)
        out: list[dt.date] = []
        weakest: CalendarSource = "database"
        cur = start
        while cur <= end:
            source = self.source_for(cur)
            if SOURCE_RANK[source] > SOURCE_RANK[weakest]:
                weakest = source
            if self.is_trading_day(cur):
                out.append(cur)
            cur += dt.timedelta(days=1)
        return TargetDates(out, weakest)

    def may_trade_between(self, start: dt.date, end: dt.date) -> bool:
        """False only when every day in ``start..end`` is certainly closed (see
        :meth:`is_known_closed`); the ingest then has nothing to ask the source for."""
        cur, end = _as_date(start), _as_date(end)
        while cur <= end:
            if not self.is_known_closed(cur):
                return True
            cur += dt.timedelta(days=1)
        return False

    # -- description --------------------------------------------------------------------------

    def coverage(self) -> Coverage:
        """Which date ranges each source answers, oldest first (for the ``calendar`` command).

        Database rows are grouped into runs of consecutive dates; the fallbacks fill the gaps.
        """
        spans: list[tuple[dt.date | None, dt.date | None, CalendarSource]] = []
        db_runs = _runs(sorted(self._db))
        if self._library is not None:
            _, first, last = self._library_sessions()
            fallback = [
                (None, first - dt.timedelta(days=1), "weekdays"),
                (first, last, self._library),
                (last + dt.timedelta(days=1), None, "weekdays"),
            ]
        else:
            fallback = [(None, None, "weekdays")]
        for fb_start, fb_end, fb_source in fallback:
            pieces: list[tuple[dt.date | None, dt.date | None]] = [(fb_start, fb_end)]
            for run_start, run_end in db_runs:
                pieces = [p for piece in pieces for p in _subtract(piece, run_start, run_end)]
            spans.extend((s, e, fb_source) for s, e in pieces)
        spans.extend((s, e, self._db_source) for s, e in db_runs)
        spans.sort(key=lambda sp: sp[0] or dt.date.min)
        out = Coverage()
        for s, e, source in spans:
            days = None
            if s is not None and e is not None:
                days = self._count_open(s, e, source)
            out.append(CoverageRange(source, s, e, days))
        return out

    def _count_open(self, start: dt.date, end: dt.date, source: CalendarSource) -> int:
        if source in ("database", "series"):
            return sum(1 for d, o in self._db.items() if o and start <= d <= end)
        if source == self._library:
            return sum(1 for d in self._library_sessions()[0] if start <= d <= end)
        return int(np.busday_count(start, end + dt.timedelta(days=1)))

    def _warn_weekdays(self, d: dt.date) -> None:
        if not self._warned_weekdays:
            self._warned_weekdays = True
            log.warning(
                "trading calendar %s: %s is outside the database calendar and the XSHG calendar "
                "of exchange_calendars; treating Monday-Friday as trading days. Ingest the "
                "tushare trade_cal (`forecasting ingest` with the tushare source) to make it "
                "authoritative.",
                self.exchange,
                d,
            )


def _as_date(d: dt.date | dt.datetime | pd.Timestamp) -> dt.date:
    if isinstance(d, pd.Timestamp):
        return d.date()
    if isinstance(d, dt.datetime):
        return d.date()
    return d


def _runs(dates: list[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Consecutive calendar-day runs in sorted ``dates``."""
    runs: list[tuple[dt.date, dt.date]] = []
    for d in dates:
        if runs and d - runs[-1][1] == dt.timedelta(days=1):
            runs[-1] = (runs[-1][0], d)
        else:
            runs.append((d, d))
    return runs


def _subtract(
    piece: tuple[dt.date | None, dt.date | None], cut_start: dt.date, cut_end: dt.date
) -> list[tuple[dt.date | None, dt.date | None]]:
    """``piece`` minus the closed range ``cut_start..cut_end``; ``None`` ends are unbounded."""
    start, end = piece
    lo = start or dt.date.min
    hi = end or dt.date.max
    if cut_end < lo or cut_start > hi:
        return [piece]
    out: list[tuple[dt.date | None, dt.date | None]] = []
    if cut_start > lo:
        out.append((start, cut_start - dt.timedelta(days=1)))
    if cut_end < hi:
        out.append((cut_end + dt.timedelta(days=1), end))
    return out
