"""Target dates on each ticker's own calendar, recorded in calendar_source."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from sqlalchemy import insert
from sqlalchemy.engine import Engine

from forecasting.data.calendar import TradingCalendar, ticker_calendar
from forecasting.data.schema import securities
from forecasting.pipeline.forecast import bars_missed, target_dates, ticker_calendars


def test_the_ticker_or_its_exchange_names_its_calendar() -> None:
    """A-shares follow XSHG, US listings XNYS, anything else its own bars."""
    assert ticker_calendar("600519.SH") == ticker_calendar("000001.SZ") == "XSHG"
    assert ticker_calendar("AAPL.US") == ticker_calendar("^GSPC") == "XNYS"
    assert ticker_calendar("SPX", "NYSE") == "XNYS"
    assert ticker_calendar("WTI") == "SERIES"


def test_us_tickers_get_xnys_target_dates_and_others_their_own(sqlite_engine: Engine) -> None:
    """From Wednesday 2026-11-25 a US ticker's next two days skip Thanksgiving (an A-share
    trading day) and are recorded as from the XNYS calendar; the A-share ticker keeps the
    run's calendar; a crude-oil series with no known exchange that trades Sundays to Thursdays
    gets its history's days, then weekdays, and says so."""
    with sqlite_engine.begin() as conn:
        conn.execute(insert(securities), [{"ticker": "SPX", "exchange": "NYSE"}])
    days = pd.bdate_range("2026-10-01", "2026-11-25")
    sun_thu = [
        d.date()
        for d in pd.date_range("2026-10-01", "2026-11-25")
        if d.weekday() in (6, 0, 1, 2, 3)
    ]
    series = {
        "600519.SH": pd.Series(1.0, index=[d.date() for d in days]),
        "SPX": pd.Series(1.0, index=[d.date() for d in days]),
        "WTI": pd.Series(1.0, index=sun_thu),
    }
    a_shares = TradingCalendar.from_rows({})
    with sqlite_engine.connect() as conn:
        cals = ticker_calendars(conn, series, a_shares)
    as_of = dt.date(2026, 11, 25)
    assert cals["600519.SH"] is a_shares
    us = target_dates(cals["SPX"], as_of, 2)
    assert us == [(dt.date(2026, 11, 27), "xnys"), (dt.date(2026, 11, 30), "xnys")]
    assert [d for d, _ in target_dates(a_shares, as_of, 2)] == [
        dt.date(2026, 11, 26),
        dt.date(2026, 11, 27),
    ]
    assert cals["WTI"].source_for(dt.date(2026, 11, 20)) == "series"
    assert not cals["WTI"].is_trading_day(dt.date(2026, 11, 20))  # a Friday: no bar in history
    assert target_dates(cals["WTI"], as_of, 1) == [(dt.date(2026, 11, 26), "weekdays")]


def test_bars_missed_counts_the_ticker_calendar_days_after_its_last_bar() -> None:
    """A price two trading days older than the as-of day missed two bars; on time, none."""
    cal = TradingCalendar.from_rows({}, use_xshg=False)
    assert bars_missed(cal, dt.date(2026, 11, 23), dt.date(2026, 11, 25)) == 2
    assert bars_missed(cal, dt.date(2026, 11, 25), dt.date(2026, 11, 25)) == 0
